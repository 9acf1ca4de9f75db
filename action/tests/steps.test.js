'use strict';
// The restore, save and gc steps with a real storesync and real stores, for what the
// end-to-end runs do not reach: sudo when not root, a partial restore (a damaged cache)
// with and without strict, fail-on-miss, signed snapshots, gc-roots on a storesync without
// it, a usage error, gc.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const test = require('node:test');

const { Actions, parseFileCommands } = require('../src/lib/core');
const { readConfig } = require('../src/lib/inputs');
const steps = require('../src/lib/steps');
const { commands } = require('./support/commands');
const store = require('./support/store');

const { tmpdir } = store;

/** A step's world: inputs as INPUT_* variables, its files, its log. */
function stepEnv(dir, inputs, extra = {}) {
  const env = { PATH: process.env.PATH, HOME: dir, GITHUB_WORKSPACE: dir, ...extra };
  for (const f of ['GITHUB_OUTPUT', 'GITHUB_STATE', 'GITHUB_STEP_SUMMARY']) {
    env[f] = path.join(dir, f.toLowerCase());
    fs.writeFileSync(env[f], '');
  }
  for (const [k, v] of Object.entries(inputs)) env[`INPUT_${k.toUpperCase()}`] = v;
  const log = [];
  const actions = new Actions({ env, write: (s) => log.push(s) });
  const outputs = () => parseFileCommands(fs.readFileSync(env.GITHUB_OUTPUT, 'utf8'));
  return { actions, env, log, outputs, text: () => log.join('') };
}

/** A directory cache holding generation 2 of the sample store under `key`. */
function savedCache(dir, key) {
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 2);
  const cache = path.join(dir, 'cache');
  store.storesync(['--root', root, '--json', 'save', '--cache', cache, '--key', key]);
  return { root, cache };
}

test('not root: storesync runs through sudo -n -E, the cache service variables named in --preserve-env', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const { cache } = savedCache(dir, 'k');
  const fake = path.join(dir, 'fakebin');
  fs.mkdirSync(fake);
  const sudoLog = path.join(dir, 'sudo.log');
  // A sudo that records its arguments, checks what it was given, and runs the command.
  fs.writeFileSync(
    path.join(fake, 'sudo'),
    `#!/bin/sh\nprintf '%s\\n' "$@" > "${sudoLog}"\n[ "$ACTIONS_RUNTIME_TOKEN" = rt ] || exit 99\n` +
      'while [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n',
    { mode: 0o755 },
  );
  const s = stepEnv(dir, { key: 'k', cache, root: path.join(dir, 'target') }, {
    PATH: `${fake}:${process.env.PATH}`,
    ACTIONS_RUNTIME_TOKEN: 'rt',
    ACTIONS_RESULTS_URL: 'http://127.0.0.1:9/',
    AWS_REGION: 'eu-west-1',
    UNRELATED: 'x',
  });
  const cfg = readConfig(s.actions, { required: ['key'] });
  const r = await steps.restoreStep(s.actions, cfg, store.storesyncBin(), { uid: 1001 });
  assert.equal(r.status, 'hit', s.text());
  assert.equal(s.outputs()['restored-paths'], '8');
  const args = fs.readFileSync(sudoLog, 'utf8').split('\n');
  assert.deepEqual(args.slice(0, 5), [
    '-n',
    '-E',
    '--preserve-env=ACTIONS_RESULTS_URL,ACTIONS_RUNTIME_TOKEN,AWS_REGION',
    '--',
    store.storesyncBin(),
  ]);
  assert.match(s.text(), /\[command\]sudo -n -E --preserve-env=ACTIONS_RESULTS_URL,ACTIONS_RUNTIME_TOKEN,AWS_REGION -- /);
});

test('a partial restore (damaged cache) is a warning, or with strict a failure; outputs and summary say what failed', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const { cache } = savedCache(dir, 'k');
  const pack = fs.readdirSync(path.join(cache, 'packs')).map((f) => path.join(cache, 'packs', f))[0];
  const b = fs.readFileSync(pack);
  b.fill(0, b.length >> 1, (b.length >> 1) + 64);
  fs.writeFileSync(pack, b);
  for (const strict of ['false', 'true']) {
    const s = stepEnv(dir, { key: 'k', cache, root: path.join(dir, `target-${strict}`), strict });
    const cfg = readConfig(s.actions);
    const r = await steps.restoreStep(s.actions, cfg, store.storesyncBin(), { uid: 0 });
    assert.equal(r.status, 'partial');
    // The exact key matched, but not all of it was restored: no hit, so that the post
    // step saves what the cache lacks.
    assert.equal(s.outputs()['cache-hit'], 'false');
    assert.equal(s.outputs()['matched-key'], 'k');
    assert.equal(s.outputs()['restored-paths'], '5');
    const level = strict === 'true' ? 'error' : 'warning';
    assert.match(s.text(), new RegExp(`::${level}::1 paths failed verification and were not registered, 2 more not registered`));
    assert.equal(s.actions.failed, strict === 'true');
    const summary = fs.readFileSync(s.env.GITHUB_STEP_SUMMARY, 'utf8');
    assert.match(summary, /### storesync restore: some paths not restored/);
    assert.match(summary, /<summary>1 paths failed<\/summary>/);
    assert.match(summary, /content does not match its id/);
  }
});

test('fail-on-miss fails the step on a miss; without it a miss is a note', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const cache = path.join(dir, 'empty-cache');
  for (const failOnMiss of ['true', 'false']) {
    const s = stepEnv(dir, { key: 'guix-x', 'restore-keys': 'guix-', cache, 'fail-on-miss': failOnMiss, root: path.join(dir, 'r') });
    const r = await steps.restoreStep(s.actions, readConfig(s.actions), store.storesyncBin(), { uid: 0 });
    assert.equal(r.status, 'miss');
    assert.equal(s.actions.failed, failOnMiss === 'true');
    if (failOnMiss === 'true') assert.match(s.text(), /::error::cache miss: no snapshot matches key `guix-x` or a restore-keys prefix \(fail-on-miss\)/);
    else assert.match(s.text(), /^cache miss: no snapshot matches key `guix-x` or a restore-keys prefix; nothing restored$/m);
  }
});

test('sign-key signs the save (through the environment, not argv); trusted-keys accept it, other keys refuse it', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 1);
  const cache = path.join(dir, 'cache');
  store.storesync(['key', 'generate', '--secret', path.join(dir, 'ci.sec'), '--public', path.join(dir, 'ci.pub'), '--name', 'ci-1']);
  store.storesync(['key', 'generate', '--secret', path.join(dir, 'o.sec'), '--public', path.join(dir, 'o.pub'), '--name', 'other']);
  const secret = fs.readFileSync(path.join(dir, 'ci.sec'), 'utf8').trim();
  const save = stepEnv(dir, { key: 'k', cache, root, 'sign-key': secret });
  const saved = await steps.saveStep(save.actions, readConfig(save.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(saved.json.signed_by, 'ci-1');
  assert.ok(save.log.includes(`::add-mask::${secret}\n`));
  const commandLines = save.text().split('\n').filter((l) => l.startsWith('[command]'));
  assert.ok(commandLines.every((l) => !l.includes(secret.split(':')[1])), commandLines.join('\n'));
  assert.match(fs.readFileSync(save.env.GITHUB_STEP_SUMMARY, 'utf8'), /\| signed by \| `ci-1` \|/);

  const pub = fs.readFileSync(path.join(dir, 'ci.pub'), 'utf8').trim();
  const ok = stepEnv(dir, { key: 'k', cache, root: path.join(dir, 't1'), 'trusted-keys': `${pub}\n` });
  assert.equal((await steps.restoreStep(ok.actions, readConfig(ok.actions), store.storesyncBin(), { uid: 0 })).status, 'hit', ok.text());
  const other = fs.readFileSync(path.join(dir, 'o.pub'), 'utf8').trim();
  const refused = stepEnv(dir, { key: 'k', cache, root: path.join(dir, 't2'), 'trusted-keys': other });
  const r = await steps.restoreStep(refused.actions, readConfig(refused.actions), store.storesyncBin(), { uid: 0 });
  // A snapshot refused by the signature check is passed over: for a key lookup, a miss.
  assert.equal(r.status, 'miss', refused.text());
  assert.equal(refused.outputs()['restored-paths'], '0');
  assert.match(refused.text(), /passed over: snapshot [0-9a-f]{12} \(k\): .*signed only by keys not trusted here \(ci-1\)/);
});

test('gc-roots: passed when this storesync offers save --gc-roots (the roots\' closure is saved), a warning otherwise', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 1);
  // One GC root, as a profile link is: the closure of one path of the sample.
  const all = store.validPaths(root);
  const gcroots = path.join(root, 'var', 'guix', 'gcroots');
  fs.mkdirSync(gcroots, { recursive: true });
  fs.symlinkSync(all.find((p) => p.endsWith('-greeting.txt')), path.join(gcroots, 'test-root'));
  const bin = store.storesyncBin();
  assert.equal(await steps.offersGcRoots(bin, {}), true);
  const s = stepEnv(dir, { key: 'k', cache: path.join(dir, 'cache'), root, 'gc-roots': 'true' });
  const r = await steps.saveStep(s.actions, readConfig(s.actions), bin, { cacheHit: false }, { uid: 0 });
  assert.equal(r.saved, true, s.text());
  assert.match(s.text(), /\[command\][^\n]* save --cache [^\n]* --gc-roots\n/);
  assert.ok(r.json.paths >= 1 && r.json.paths < all.length, `${r.json.paths} of ${all.length}`);
  assert.doesNotMatch(s.text(), /::warning::gc-roots/);

  // A storesync whose save has no --gc-roots (an older release): a warning, every valid path.
  const older = path.join(dir, 'older-storesync');
  fs.writeFileSync(
    older,
    `#!/bin/sh\nif [ "$1" = save ] && [ "$2" = --help ]; then echo "  --dry-run"; exit 0; fi\nexec "${bin}" "$@"\n`,
    { mode: 0o755 },
  );
  assert.equal(await steps.offersGcRoots(older, {}), false);
  const o = stepEnv(dir, { key: 'k2', cache: path.join(dir, 'cache2'), root, 'gc-roots': 'true' });
  const ro = await steps.saveStep(o.actions, readConfig(o.actions), older, { cacheHit: false }, { uid: 0 });
  assert.equal(ro.saved, true, o.text());
  assert.equal(ro.json.paths, all.length);
  assert.match(o.text(), /::warning::gc-roots: this storesync has no `save --gc-roots`; saving every valid path/);
  assert.doesNotMatch(o.text(), /\[command\].*--gc-roots/);
});

test('a save that storesync rejects (usage) fails the step even without strict; other failures warn', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 1);
  const bad = stepEnv(dir, { key: 'k', cache: path.join(dir, 'cache'), root, 'max-size': 'lots' });
  const r = await steps.saveStep(bad.actions, readConfig(bad.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(r.saved, false);
  assert.equal(bad.actions.failed, true);
  assert.match(bad.text(), /::error::storesync save failed \(exit 2\)/);
  assert.equal(bad.outputs().saved, 'false');
  // A cache that cannot be written: a warning, the job goes on.
  const blocked = path.join(dir, 'not-a-dir');
  fs.writeFileSync(blocked, '');
  const warn = stepEnv(dir, { key: 'k', cache: path.join(blocked, 'cache'), root });
  const w = await steps.saveStep(warn.actions, readConfig(warn.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(w.saved, false);
  assert.equal(warn.actions.failed, false);
  assert.match(warn.text(), /::warning::storesync save failed \(exit 1\): cache storage [^\n]*not-a-dir\/cache: Not a directory \(os error 20\); the cache keeps its previous snapshots/);
});

test('gc keeps the newest snapshot of each key and reports what it dropped', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  const cache = path.join(dir, 'cache');
  store.restoreGeneration(root, 1);
  store.storesync(['--root', root, 'save', '--cache', cache, '--key', 'guix-a']);
  store.restoreGeneration(root, 2);
  store.storesync(['--root', root, 'save', '--cache', cache, '--key', 'guix-a']);
  store.storesync(['--root', root, 'save', '--cache', cache, '--key', 'guix-b']);
  const s = stepEnv(dir, { cache, 'keep-last': '1', grace: '0s' });
  const r = await steps.gcStep(s.actions, readConfig(s.actions), store.storesyncBin(), { uid: 0 });
  assert.equal(r.ok, true, s.text());
  assert.deepEqual(r.json.kept.map(([, k]) => k).sort(), ['guix-a', 'guix-b']);
  assert.equal(r.json.dropped.length, 1);
  assert.equal(s.outputs().dropped, '1');
  assert.deepEqual(store.snapshots(cache).map((x) => [x.key, x.paths]), [['guix-a', 8], ['guix-b', 8]]);
  assert.match(fs.readFileSync(s.env.GITHUB_STEP_SUMMARY, 'utf8'), /### storesync gc\n/);
});

test('a key or restore-key that starts with a dash is a key to storesync, not an option', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 2);
  const cache = path.join(dir, 'cache');
  const first = stepEnv(dir, { key: '-guix-1', cache, root });
  const saved1 = await steps.saveStep(first.actions, readConfig(first.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(saved1.saved, true, first.text());
  // The exact key, then a prefix of it.
  for (const [key, restoreKeys, status] of [['-guix-1', '', 'hit'], ['-guix-2', '-guix-', 'prefix']]) {
    const s = stepEnv(dir, { key, 'restore-keys': restoreKeys, cache, root: path.join(dir, `t${status}`) });
    const r = await steps.restoreStep(s.actions, readConfig(s.actions), store.storesyncBin(), { uid: 0 });
    assert.equal(r.status, status, s.text());
    assert.equal(s.outputs()['matched-key'], '-guix-1');
    assert.equal(s.actions.failed, false);
  }
  const save = stepEnv(dir, { key: '-guix-2', cache, root: path.join(dir, 'thit') });
  const saved = await steps.saveStep(save.actions, readConfig(save.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(saved.saved, true, save.text());
  assert.deepEqual(store.snapshots(cache).map((x) => x.key).sort(), ['-guix-1', '-guix-2']);
});

test('an exact hit with gc-roots: the "anything new?" question counts the GC roots\' closure as the save would', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 2);
  const all = store.validPaths(root);
  const greeting = all.find((p) => p.endsWith('-greeting.txt'));
  const data = all.find((p) => p.endsWith('-sample-data'));
  const lib = all.find((p) => p.endsWith('-libsample-1.0'));
  const cache = path.join(dir, 'cache');
  const gcroots = path.join(root, 'var', 'guix', 'gcroots');
  fs.mkdirSync(gcroots, { recursive: true });
  fs.symlinkSync(lib, path.join(gcroots, 'root-1'));
  const inputs = { key: 'k', cache, root, paths: greeting, 'gc-roots': 'true' };
  const first = stepEnv(dir, inputs);
  const r1 = await steps.saveStep(first.actions, readConfig(first.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(r1.saved, true, first.text());
  assert.equal(r1.json.paths, 2, first.text());
  // The job adds a GC root outside the closure of `paths`; the restore was an exact hit.
  fs.symlinkSync(data, path.join(gcroots, 'root-2'));
  const post = stepEnv(dir, inputs);
  const r2 = await steps.saveStep(post.actions, readConfig(post.actions), store.storesyncBin(), { cacheHit: true }, { uid: 0 });
  assert.equal(r2.saved, true, post.text());
  assert.equal(r2.json.paths, 3, post.text());
  assert.equal(r2.json.new_paths, 1, post.text());
  assert.match(post.text(), /\[command\][^\n]* save [^\n]*--dry-run --gc-roots/);
});

test('what storesync prints and what keys say never becomes a workflow command: only the action\'s own reach the runner', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 1);
  const cache = path.join(dir, 'cache');
  // A key (legal: no control characters) holding the runner's legacy command syntax, which
  // it reads anywhere in a line; storesync prints matched keys, and so does the action.
  const planted = 'k-##[set-output name=matched-key;]forged ##[warning]from a key';
  store.storesync(['--root', root, 'save', '--cache', cache, '--key', planted]);
  const s = stepEnv(dir, { key: 'k-new', 'restore-keys': 'k-', cache, root: path.join(dir, 't') });
  const r = await steps.restoreStep(s.actions, readConfig(s.actions), store.storesyncBin(), { uid: 0 });
  assert.equal(r.status, 'prefix', s.text());
  assert.equal(s.outputs()['matched-key'], planted);
  assert.deepEqual(commands(s.text()).map((c) => c.name), ['group', 'endgroup'], s.text());

  // A key input with a newline and a command on the next line (no snapshot has such a
  // key: a miss): the line is shown, not obeyed.
  const bad = stepEnv(dir, { key: 'k\n::warning::from an input', cache, root: path.join(dir, 't2') });
  const rb = await steps.restoreStep(bad.actions, readConfig(bad.actions), store.storesyncBin(), { uid: 0 });
  assert.equal(rb.status, 'miss', bad.text());
  assert.deepEqual(commands(bad.text()).map((c) => c.name), ['group', 'endgroup'], bad.text());
  assert.match(bad.text(), /::warning::from an input/);
});

test('paths: ~ is the runner\'s home, as in the cache input (a profile link ~/.guix-profile)', async (t) => {
  const dir = tmpdir(t, 'steps-');
  const root = path.join(dir, 'source');
  store.restoreGeneration(root, 2);
  const greeting = store.validPaths(root).find((p) => p.endsWith('-greeting.txt'));
  // The runner user's profile link, inside the root storesync treats as /.
  fs.mkdirSync(path.join(root, 'home', 'runner'), { recursive: true });
  fs.symlinkSync(greeting, path.join(root, 'home', 'runner', '.guix-profile'));
  const s = stepEnv(dir, { key: 'k', cache: path.join(dir, 'cache'), root, paths: '~/.guix-profile' }, { HOME: '/home/runner' });
  const r = await steps.saveStep(s.actions, readConfig(s.actions), store.storesyncBin(), { cacheHit: false }, { uid: 0 });
  assert.equal(r.saved, true, s.text());
  assert.deepEqual(r.json.paths, 1, s.text());
  assert.match(s.text(), /\[command\][^\n]* -- \/home\/runner\/\.guix-profile\n/);
});
