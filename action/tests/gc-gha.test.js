'use strict';
// The gc action on the GitHub Actions cache (gha://), end to end: a real storesync against
// the test service of tests/servers/ghacache (the twirp control plane and the REST API in
// front of Azurite), run as a runner runs the action. The `github-token` input reaches
// storesync as GITHUB_TOKEN and GITHUB_REF names the ref whose entries are collected; without
// a token the step fails saying which variable and permission are missing.
//
// Needs the service's npm packages in $STORESYNC_GHA_NODE (default target/gha-node, as
// .ci/run installs them); without them the test is skipped, unless STORESYNC_GHA_REQUIRED=1.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const test = require('node:test');
const { spawn } = require('node:child_process');

const { REPO, Job } = require('./support/runner');
const store = require('./support/store');

const { tmpdir } = store;

/** Start the test service; resolves to {url} or undefined (with the reason) when it cannot. */
async function ghaService(t, dir) {
  const node = process.env.STORESYNC_GHA_NODE
    || path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'gha-node');
  const azurite = path.join(node, 'node_modules', '.bin', 'azurite-blob');
  if (!fs.existsSync(azurite)) return { missing: `${azurite} is missing (npm install tests/servers/ghacache/package.json there)` };
  const args = [path.join(REPO, 'tests/servers/ghacache/server.mjs'), '--azurite', azurite, '--data', dir];
  if (process.env.STORESYNC_GHA_RUN_DIR) {
    args.push('--pid-file', path.join(process.env.STORESYNC_GHA_RUN_DIR, `action-gc.${process.pid}.pids`));
  }
  const child = spawn(process.execPath, args, {
    env: { ...process.env, NODE_PATH: path.join(node, 'node_modules') },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  t.after(() => new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.on('exit', resolve);
    child.stdin.end();
  }));
  const line = await new Promise((resolve) => {
    readline.createInterface({ input: child.stdout }).once('line', resolve);
    child.on('exit', () => resolve(''));
  });
  return { url: JSON.parse(line).url };
}

async function admin(svc, p) {
  const r = await fetch(`${svc.url}_admin/${p}`);
  return r.json();
}

test('gc on gha://: github-token lists and deletes this ref\'s entries; without one, a clear failure', async (t) => {
  const tmp = tmpdir(t, 'gc-gha-');
  const svc = await ghaService(t, path.join(tmp, 'azurite'));
  if (svc.missing) {
    assert.notEqual(process.env.STORESYNC_GHA_REQUIRED, '1', svc.missing);
    t.skip(svc.missing);
    return;
  }
  const bin = store.storesyncBin();
  const scope = `act-gc-${crypto.randomBytes(4).toString('hex')}`;
  const cache = `gha://${scope}`;
  const env = {
    ACTIONS_RESULTS_URL: svc.url,
    ACTIONS_RUNTIME_TOKEN: `token-${scope}`,
    ACTIONS_CACHE_SERVICE_V2: 'true',
  };
  // Two saves under one key: generation 1 (6 paths), then 2 (8 paths).
  const src = path.join(tmp, 'src');
  for (const gen of [1, 2]) {
    store.restoreGeneration(src, gen);
    store.storesync(['--root', src, '--json', 'save', '--cache', cache, '--key', 'k'], {
      env: { ...process.env, ...env },
    });
  }
  const workspace = path.join(tmp, 'ws');
  fs.mkdirSync(workspace);
  const job = (github) => new Job({
    workspace,
    env: { ...env, GITHUB_API_URL: svc.url.replace(/\/$/, '') },
    github: { ...github, api_url: svc.url.replace(/\/$/, '') },
    tmp: fs.mkdtempSync(path.join(tmp, 'job-')),
  });
  const inputs = { cache, 'keep-last': '1', grace: '0', binary: bin };

  // No token (a job without one): the step fails, naming the variable and the permission.
  const bare = job({ token: '' }).uses(path.join(REPO, 'gc'), inputs);
  assert.equal(bare.status, 1, bare.out);
  assert.match(bare.out, /GITHUB_TOKEN/);
  assert.match(bare.out, /actions: write/);

  // A token without `actions: write` (the job's token when the workflow grants only
  // `contents: read`): the step fails, and its error annotation, which the run's summary
  // shows without the collapsed log, says which permission is missing.
  const ro = job({ token: 'read-only-act-gc' }).uses(path.join(REPO, 'gc'), inputs);
  assert.equal(ro.status, 1, ro.out);
  const annotation = ro.out.split('\n').find((l) => l.startsWith('::error::'));
  assert.match(annotation || '', /HTTP 403.*actions: write/, ro.out);

  // The job's token (the input's default): the older snapshot goes, with what only it
  // needed (its index, replaced by one naming every live object).
  const j = job({ token: 'gh-act-gc' });
  const r = j.uses(path.join(REPO, 'gc'), inputs);
  assert.equal(r.status, 0, r.out);
  assert.equal(r.outputs.dropped, '1', r.out);
  assert.ok(Number(r.outputs['bytes-freed']) > 0, r.out);
  assert.match(r.out, new RegExp(`\\[command\\][^\\n]* gc --cache ${cache} --keep-last 1 --grace 0`));
  assert.match(j.summary(), /### storesync gc\n/);
  const calls = await admin(svc, 'rest_calls?token=gh-act-gc');
  const listed = calls.filter((c) => c.method === 'GET');
  assert.ok(listed.length > 0 && listed.every((c) => c.path.includes('ref=refs%2Fheads%2Fmain')), JSON.stringify(calls));
  assert.ok(calls.some((c) => c.method === 'DELETE' && c.status === 204), JSON.stringify(calls));

  // The kept snapshot restores whole.
  const dst = path.join(tmp, 'dst');
  const restored = JSON.parse(store.storesync(['--root', dst, '--json', 'restore', '--cache', cache, '--key', 'k'], {
    env: { ...process.env, ...env },
  }));
  assert.equal(restored.restored, 8, JSON.stringify(restored));
  assert.deepEqual(store.validPaths(dst), store.validPaths(src));
});

/**
 * A gha:// cache holding generation 2 of the sample under key `k`, its packs then evicted
 * (as GitHub evicts entries idle for 7 days, or least recently used above 10 GB), and a
 * job whose storesync step restores from it into `dst` (partly: every path fails).
 */
async function evictedCacheJob(t, prefix) {
  const tmp = tmpdir(t, prefix);
  const svc = await ghaService(t, path.join(tmp, 'azurite'));
  if (svc.missing) {
    assert.notEqual(process.env.STORESYNC_GHA_REQUIRED, '1', svc.missing);
    t.skip(svc.missing);
    return undefined;
  }
  const scope = `act-partial-${crypto.randomBytes(4).toString('hex')}`;
  const cache = `gha://${scope}`;
  const env = {
    ACTIONS_RESULTS_URL: svc.url,
    ACTIONS_RUNTIME_TOKEN: `token-${scope}`,
    ACTIONS_CACHE_SERVICE_V2: 'true',
  };
  const src = path.join(tmp, 'src');
  store.restoreGeneration(src, 2);
  store.storesync(['--root', src, '--json', 'save', '--cache', cache, '--key', 'k'], { env: { ...process.env, ...env } });
  const r = await fetch(`${svc.url}_admin/evict`, { method: 'POST', body: JSON.stringify({ prefix: `${scope}/packs/` }) });
  assert.ok((await r.json()).evicted.length > 0);
  const workspace = path.join(tmp, 'ws');
  fs.mkdirSync(workspace);
  const dst = path.join(tmp, 'dst');
  const job = new Job({ workspace, env, tmp: fs.mkdtempSync(path.join(tmp, 'job-')) });
  const main = job.uses(REPO, { key: 'k', cache, root: dst, binary: store.storesyncBin() });
  return { tmp, env, cache, dst, job, main };
}

test('an exact hit that restored only partly (an evicted pack) is no cache-hit: the post step saves, not skipping after a dry run', async (t) => {
  const w = await evictedCacheJob(t, 'partial-gha-');
  if (!w) return;
  const { dst, job, main } = w;
  assert.equal(main.status, 0, main.out);
  assert.match(main.out, /::warning::8 paths failed verification/);
  // The exact key matched, but the snapshot was not restored whole: no hit.
  assert.equal(main.outputs['cache-hit'], 'false', main.out);
  assert.equal(main.outputs['matched-key'], 'k', main.out);
  // The daemon substitutes or builds what was not restored.
  store.restoreGeneration(dst, 2);
  const [post] = job.finish();
  assert.equal(post.status, 0, post.out);
  assert.doesNotMatch(post.out, /--dry-run|not saving/, post.out);
  assert.match(post.out, /\[command\][^\n]* save --cache [^\n]* --key k\n/);
  assert.equal(post.outputs.saved, 'true', post.out);
});

// storesync's save decides what the cache holds from its index, without probing for
// evicted packs, so the save above reports the snapshot unchanged and uploads nothing;
// docs/REMOTE.md says the next save saves those paths again. Not the action's to fix.
test('after that save, the next run restores every path', { todo: 'save does not notice an evicted pack (src/save)' }, async (t) => {
  const w = await evictedCacheJob(t, 'partial-gha-mend-');
  if (!w) return;
  const { tmp, env, cache, dst, job } = w;
  store.restoreGeneration(dst, 2);
  job.finish();
  const again = JSON.parse(store.storesync(['--root', path.join(tmp, 'dst2'), '--json', 'restore', '--cache', cache, '--key', 'k'], {
    env: { ...process.env, ...env },
  }));
  assert.deepEqual([again.restored, again.failed.length], [8, 0], JSON.stringify(again));
});
