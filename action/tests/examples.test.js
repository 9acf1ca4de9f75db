'use strict';
// examples/guix-ci.yml and examples/nix-ci.yml, run as a runner runs them (support/runner.js)
// against real stores (support/store.js) and a directory cache: each job's steps in order,
// the storesync action's main where the workflow uses it and its post at the end. Every
// `run:` step is executed as written, except those listed in NEEDS_NETWORK, which download
// and install the daemon (impossible here, and nothing of storesync's); the test fails if
// that list names a step the workflow no longer has.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const test = require('node:test');

const { REPO, Job, condition, loadYaml } = require('./support/runner');
const store = require('./support/store');

const { tmpdir } = store;

const NEEDS_NETWORK = {
  'examples/guix-ci.yml': {
    'Install Guix from the binary tarball (the daemon is not started yet)': 'downloads the tarball, installs into /',
    'Start guix-daemon': 'needs the Guix the previous step installs, and systemd',
    "make check in the manifest's environment": 'guix shell needs the daemon and substitutes',
  },
  'examples/nix-ci.yml': {
    'Install Nix (nix-bin; the daemon starts on first use)': 'apt-get install',
    'make check in the dev shell': 'nix develop needs the daemon and the flake inputs',
  },
};

/** The local directory of an action the examples use, or null for one to skip. */
function localAction(uses) {
  if (uses.startsWith('actions/checkout@')) return null; // the test lays out the workspace
  const m = /^[^/]+\/storesync(?:\/(restore|save|gc))?@v[0-9.]+$/.exec(uses);
  if (!m) throw new Error(`the examples use an action this test does not know: ${uses}`);
  return m[1] ? path.join(REPO, m[1]) : REPO;
}

/**
 * Run job `name` of workflow `file`. `with` adds inputs to the storesync steps (where the
 * cache is, the store's root, the binary); `instead` maps a skipped step's name to what the
 * test does in its place.
 */
function runJob(file, name, { job, extraWith = {}, instead = {} }) {
  const wf = loadYaml(path.join(REPO, file));
  const spec = wf.jobs[name];
  Object.assign(job.env, wf.env || {}, spec.env || {});
  if (!condition(spec.if, job.ctx())) return { ran: false, executed: [], skipped: [] };
  const executed = [];
  const skipped = [];
  for (const step of spec.steps) {
    const label = step.name || step.uses;
    if (!condition(step.if, job.ctx(step.env))) continue;
    if (step.uses) {
      const dir = localAction(step.uses);
      if (dir === null) continue;
      const withValues = { ...(step.with || {}), ...extraWith };
      if (dir.endsWith('/gc')) {
        for (const k of ['root', 'flavor']) delete withValues[k];
      }
      const r = job.uses(dir, withValues, { id: step.id, stepEnv: step.env || {} });
      assert.equal(r.status, 0, `${file}: ${label}:\n${r.out}`);
      executed.push(label);
    } else if (label in NEEDS_NETWORK[file]) {
      skipped.push(label);
      if (instead[label]) instead[label]();
    } else {
      const r = job.run(step.run, { id: step.id, env: step.env || {}, name: label });
      assert.equal(r.status, 0, `${file}: ${label}:\n${r.out}`);
      executed.push(label);
    }
  }
  const posts = job.finish();
  for (const p of posts) assert.ok(p.skipped || p.status === 0, `${file}: post:\n${p.out}`);
  return { ran: true, executed, skipped, posts };
}

function lastLog(job, name) {
  const e = [...job.log].reverse().find((l) => l.name === name);
  return e ? e.out : '';
}

test('examples/guix-ci.yml: miss and save on main, hit, a new manifest from the old store, a pull request, the weekly gc', (t) => {
  const file = 'examples/guix-ci.yml';
  const tmp = tmpdir(t, 'examples-');
  const workspace = path.join(tmp, 'ws');
  fs.mkdirSync(workspace);
  fs.writeFileSync(path.join(workspace, 'manifest.scm'), '(specifications->manifest (list "make" "gcc-toolchain"))\n');
  const loc = store.cacheLocation(tmp);
  const bin = store.storesyncBin();
  let n = 0;
  // A directory cache stands for one of your own (vars.STORESYNC_CACHE, as an S3 bucket
  // would be): the weekly gc job collects it (gha://, the default, is collected by
  // action/tests/gc-gha.test.js).
  const vars = loc.listable ? { STORESYNC_CACHE: loc.cache } : {};
  const newJob = (github = {}) => new Job({ workspace, env: { ...loc.env }, github, vars, tmp: path.join(tmp, `job${++n}`) });
  const withRoot = (root) => ({ ...(loc.listable ? {} : { cache: loc.cache }), binary: bin, root });

  // 1. main, the store as the tarball leaves it, an empty cache: a miss; post saves.
  const root1 = path.join(tmp, 'root1');
  store.restoreGeneration(root1, 1);
  const job1 = newJob();
  const r1 = runJob(file, 'check', { job: job1, extraWith: withRoot(root1) });
  assert.deepEqual(r1.executed, ['Cache key', 'Restore the store (before the daemon starts)', 'What the cache gave']);
  assert.deepEqual(r1.skipped, Object.keys(NEEDS_NETWORK[file]));
  const key1 = job1.steps.key.outputs.key;
  assert.match(key1, /^guix-1\.4\.0-Linux-X64-[0-9a-f]{16}$/);
  assert.equal(job1.steps.key.outputs.prefix, 'guix-1.4.0-Linux-X64-');
  assert.equal(job1.steps.store.outputs['cache-hit'], 'false');
  assert.match(lastLog(job1, 'What the cache gave'), /^cache-hit=false matched-key=none restored-paths=0 bytes=0$/m);
  assert.equal(r1.posts[0].outputs.saved, 'true');
  assert.match(job1.summary(), /6 in the snapshot, \*\*6 new\*\*/);

  // 2. main again, a fresh runner: the exact key restores everything; nothing to save.
  const job2 = newJob();
  const r2 = runJob(file, 'check', { job: job2, extraWith: withRoot(path.join(tmp, 'root2')) });
  assert.equal(job2.steps.key.outputs.key, key1);
  assert.equal(job2.steps.store.outputs['cache-hit'], 'true');
  assert.match(lastLog(job2, 'What the cache gave'), new RegExp(`^cache-hit=true matched-key=${key1} restored-paths=6 bytes=[1-9][0-9]*$`, 'm'));
  assert.equal(r2.posts[0].outputs.saved, 'false');

  // 3. main with a new manifest: a new key, restored from the old one by prefix; the build
  // adds paths; post saves under the new key, reading only those.
  fs.appendFileSync(path.join(workspace, 'manifest.scm'), ';; and python\n');
  const root3 = path.join(tmp, 'root3');
  const job3 = newJob();
  const r3 = runJob(file, 'check', {
    job: job3,
    extraWith: withRoot(root3),
    instead: { "make check in the manifest's environment": () => store.restoreGeneration(root3, 2) },
  });
  const key3 = job3.steps.key.outputs.key;
  assert.notEqual(key3, key1);
  assert.equal(job3.steps.store.outputs['cache-hit'], 'false');
  assert.equal(job3.steps.store.outputs['matched-key'], key1);
  assert.match(lastLog(job3, 'What the cache gave'), new RegExp(`::notice::new key: started from ${key1}; the post step saves the difference`));
  assert.equal(r3.posts[0].outputs.saved, 'true');
  assert.match(r3.posts[0].out, new RegExp(`saved snapshot [0-9a-f]{12} under \`${key3}\`: 8 paths, 2 new`));

  // 4. a pull request: restores main's snapshot, saves nothing.
  const job4 = newJob({ event_name: 'pull_request', ref: 'refs/pull/7/merge' });
  const r4 = runJob(file, 'check', { job: job4, extraWith: withRoot(path.join(tmp, 'root4')) });
  assert.equal(job4.steps.store.outputs['cache-hit'], 'true');
  assert.equal(job4.steps.store.outputs['restored-paths'], '8');
  assert.match(r4.posts[0].out, /save: false: not saving the store/);
  if (loc.listable) assert.deepEqual(store.snapshots(loc.cache).map((s) => [s.key, s.paths]), [[key1, 6], [key3, 8]]);

  // 5. the schedule: check does not run; gc does, for a cache of one's own.
  const job5 = newJob({ event_name: 'schedule' });
  assert.equal(runJob(file, 'check', { job: job5 }).ran, false);
  const r5 = runJob(file, 'gc', { job: job5, extraWith: { ...(loc.listable ? {} : { cache: loc.cache }), binary: bin } });
  assert.equal(r5.ran, true);
  if (loc.listable) {
    assert.deepEqual(r5.executed, ['Keep the cache within its budget']);
    assert.match(job5.summary(), /### storesync gc\n/);
    assert.match(lastLog(job5, `${REPO}/gc main`), /--key-prefix guix- --grace 1h/);
  }
  assert.equal(runJob(file, 'gc', { job: newJob({ event_name: 'push' }) }).ran, false);
});

test('examples/nix-ci.yml: a Nix store, miss and save, then a hit that saves nothing', (t) => {
  const file = 'examples/nix-ci.yml';
  const tmp = tmpdir(t, 'examples-');
  const workspace = path.join(tmp, 'ws');
  fs.mkdirSync(workspace);
  fs.writeFileSync(path.join(workspace, 'flake.nix'), '{ outputs = { self, nixpkgs }: { }; }\n');
  fs.writeFileSync(path.join(workspace, 'flake.lock'), '{ "nodes": {}, "version": 7 }\n');
  const loc = store.cacheLocation(tmp);
  const bin = store.storesyncBin();
  const root1 = path.join(tmp, 'root1');
  store.restoreGeneration(root1, 1, 'nix');

  const vars = loc.listable ? { STORESYNC_CACHE: loc.cache } : {};
  const withRoot = (root) => ({ ...(loc.listable ? {} : { cache: loc.cache }), binary: bin, root });
  const job1 = new Job({ workspace, env: { ...loc.env }, vars, tmp: path.join(tmp, 'job1') });
  const r1 = runJob(file, 'check', { job: job1, extraWith: withRoot(root1) });
  assert.deepEqual(r1.skipped, Object.keys(NEEDS_NETWORK[file]));
  assert.match(job1.steps.key.outputs.key, /^nix-Linux-X64-[0-9a-f]{16}$/);
  assert.match(r1.posts[0].out, /--flavor nix/);
  assert.equal(r1.posts[0].outputs.saved, 'true');

  const root2 = path.join(tmp, 'root2');
  const job2 = new Job({ workspace, env: { ...loc.env }, vars, tmp: path.join(tmp, 'job2') });
  const r2 = runJob(file, 'check', { job: job2, extraWith: withRoot(root2) });
  assert.equal(job2.steps.store.outputs['cache-hit'], 'true');
  assert.equal(job2.steps.store.outputs['restored-paths'], '6');
  assert.deepEqual(store.validPaths(root2, 'nix'), store.validPaths(root1, 'nix'));
  assert.ok(fs.existsSync(path.join(root2, 'nix', 'var', 'nix', 'db', 'db.sqlite')));
  assert.equal(r2.posts[0].outputs.saved, 'false');
});

test('the steps the example tests skip are steps the examples have', () => {
  for (const [file, skipped] of Object.entries(NEEDS_NETWORK)) {
    const wf = loadYaml(path.join(REPO, file));
    const names = Object.values(wf.jobs).flatMap((j) => j.steps.map((s) => s.name));
    for (const name of Object.keys(skipped)) assert.ok(names.includes(name), `${file}: no step "${name}"`);
  }
});
