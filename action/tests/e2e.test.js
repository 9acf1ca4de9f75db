'use strict';
// The action end to end, as a runner runs it: `main` (restore) then, when the job ends,
// `post` (save), with a locally built storesync (the binary input, so nothing is
// downloaded), real stores made by storesync, and a directory cache (or gha://, see
// support/store.js). Three runs of one job:
//  1. a store as an installer leaves it and an empty cache: a miss, nothing restored; post
//     saves every path;
//  2. a fresh, empty store: the exact key is hit, every path restored; post finds nothing new
//     and does not save;
//  3. a fresh store again, hit, then the job adds paths (as a build would): post saves, reading
//     only the new ones.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const test = require('node:test');

const { REPO, Job } = require('./support/runner');
const store = require('./support/store');

const { tmpdir } = store;

test('main then post, three runs: a miss saves, a hit skips the save, new paths are saved incrementally', (t) => {
  const tmp = tmpdir(t, 'action-e2e-');
  const bin = store.storesyncBin();
  const demo = store.demoFixture();
  const loc = store.cacheLocation(tmp);
  const workspace = path.join(tmp, 'ws');
  fs.mkdirSync(workspace);
  const key = 'guix-e2e-abc123';
  const inputs = (root) => ({
    key,
    'restore-keys': 'guix-e2e-\nguix-',
    cache: loc.cache,
    binary: bin,
    root,
    'keep-last': '2',
  });

  // Run 1: the store has generation 1 (6 paths); the cache is empty.
  const root1 = path.join(tmp, 'root1');
  store.restoreGeneration(root1, 1);
  const job1 = new Job({ workspace, env: loc.env, tmp: path.join(tmp, 'job1') });
  const m1 = job1.uses(REPO, inputs(root1));
  assert.equal(m1.status, 0, m1.out);
  assert.deepEqual(
    { hit: m1.outputs['cache-hit'], matched: m1.outputs['matched-key'], restored: m1.outputs['restored-paths'] },
    { hit: 'false', matched: '', restored: '0' },
  );
  assert.equal(m1.outputs.binary, bin);
  assert.match(m1.out, /cache miss/);
  assert.match(m1.out, /::group::storesync restore guix-e2e-abc123/);
  assert.equal(m1.state['cache-hit'], 'false');
  const [p1] = job1.finish();
  assert.equal(p1.status, 0, p1.out);
  assert.equal(p1.outputs.saved, 'true', p1.out);
  assert.match(p1.out, /saved snapshot [0-9a-f]{12} under `guix-e2e-abc123`: 6 paths, 6 new/);
  // The runner's github.token is the github-token input's default: gha:// is pruned too.
  assert.match(p1.out, /--prune --keep-last 2/);
  const s1 = job1.summary();
  assert.match(s1, /### storesync restore: cache miss/);
  assert.match(s1, /\| matched \| none: cache miss, nothing restored \|/);
  assert.match(s1, /### storesync save/);
  assert.match(s1, /6 in the snapshot, \*\*6 new\*\*/);
  if (loc.listable) {
    const snaps = store.snapshots(loc.cache);
    assert.deepEqual(snaps.map((s) => [s.key, s.paths]), [[key, 6]]);
  }

  // Run 2: a fresh runner, an empty store: the exact key restores all 6 paths.
  const root2 = path.join(tmp, 'root2');
  const job2 = new Job({ workspace, env: loc.env, tmp: path.join(tmp, 'job2') });
  const m2 = job2.uses(REPO, inputs(root2));
  assert.equal(m2.status, 0, m2.out);
  assert.equal(m2.outputs['cache-hit'], 'true');
  assert.equal(m2.outputs['matched-key'], key);
  assert.equal(m2.outputs['restored-paths'], '6');
  assert.ok(Number(m2.outputs.bytes) > 0, m2.outputs.bytes);
  assert.deepEqual(store.validPaths(root2), store.validPaths(root1));
  const [p2] = job2.finish();
  assert.equal(p2.status, 0, p2.out);
  assert.equal(p2.outputs.saved, 'false');
  assert.match(p2.out, /not saving: the exact key `guix-e2e-abc123` was restored and the store holds no path the cache lacks \(6 paths\)/);
  assert.doesNotMatch(p2.out, /\[command\][^\n]* save --cache [^\n]*--prune/);
  const s2 = job2.summary();
  assert.match(s2, /### storesync restore: exact key hit/);
  assert.match(s2, /6 in the snapshot: \*\*6 restored\*\*, 0 already valid, 0 failed, 0 not registered/);
  assert.match(s2, /\| result \| not saved: the exact key/);
  if (loc.listable) assert.equal(store.snapshots(loc.cache).length, 1);

  // Run 3: hit again, then the job builds something: generation 2 adds 2 paths.
  const root3 = path.join(tmp, 'root3');
  const job3 = new Job({ workspace, env: loc.env, tmp: path.join(tmp, 'job3') });
  const m3 = job3.uses(REPO, inputs(root3));
  assert.equal(m3.outputs['cache-hit'], 'true', m3.out);
  store.restoreGeneration(root3, 2);
  const [p3] = job3.finish();
  assert.equal(p3.status, 0, p3.out);
  assert.equal(p3.outputs.saved, 'true');
  assert.match(p3.out, /2 new paths since the restore: saving/);
  assert.match(p3.out, /saved snapshot [0-9a-f]{12} under `guix-e2e-abc123`: 8 paths, 2 new/);
  assert.match(job3.summary(), /8 in the snapshot, \*\*2 new\*\*/);
  if (loc.listable) {
    const snaps = store.snapshots(loc.cache);
    assert.deepEqual(snaps.map((s) => [s.key, s.paths]), [[key, 6], [key, 8]]);
    assert.equal(snaps[1].nar_bytes, demo.gen2.nar_bytes);
  }
});

test('post does nothing when main did not get as far as running storesync', (t) => {
  const tmp = tmpdir(t, 'action-e2e-');
  const workspace = path.join(tmp, 'ws');
  fs.mkdirSync(workspace);
  const job = new Job({ workspace, tmp: path.join(tmp, 'job') });
  // A binary that does not exist: main fails before storesync runs; with the job failed,
  // post-if: success() skips post; forced, post finds no state and saves nothing.
  const m = job.uses(REPO, { key: 'k', cache: path.join(tmp, 'c'), binary: path.join(tmp, 'nope') });
  assert.equal(m.status, 1);
  assert.match(m.out, /::error::input binary: .*nope is not an executable file/);
  assert.deepEqual(m.state, {});
  assert.deepEqual(job.finish(), [{ skipped: true }]);
  job.failed = false;
  job.posts = [];
  job.uses(REPO, { key: 'k', cache: path.join(tmp, 'c'), binary: path.join(tmp, 'nope') });
  job.failed = false;
  const [p] = job.finish();
  assert.equal(p.status, 0, p.out);
  assert.match(p.out, /the restore step did not run storesync: nothing to save/);
  assert.equal(fs.existsSync(path.join(tmp, 'c')), false);
});
