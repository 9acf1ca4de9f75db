'use strict';
// Inputs: parsing, defaults, and agreement between the code and the action.yml files.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const test = require('node:test');

const { Actions, inputVar } = require('../src/lib/core');
const { readConfig, resolveCache, DEFAULTS } = require('../src/lib/inputs');
const { REPO, loadYaml } = require('./support/runner');

const ACTIONS = ['action.yml', 'restore/action.yml', 'save/action.yml', 'gc/action.yml'];

function config(inputs, env = {}, opts) {
  const e = { GITHUB_WORKSPACE: '/ws', HOME: '/home/runner', ...env };
  for (const [k, v] of Object.entries(inputs)) e[inputVar(k)] = v;
  const lines = [];
  const cfg = readConfig(new Actions({ env: e, write: (s) => lines.push(s) }), opts);
  return { cfg, lines };
}

test('cache locations: URLs as given, ~ and relative directories made absolute', () => {
  const where = { home: '/home/runner', workspace: '/ws' };
  assert.equal(resolveCache('gha://', where), 'gha://');
  assert.equal(resolveCache('gha://guix', where), 'gha://guix');
  assert.equal(resolveCache('s3://bucket/ci/guix', where), 's3://bucket/ci/guix');
  assert.equal(resolveCache('file:///var/cache/x', where), '/var/cache/x');
  assert.equal(resolveCache('~/.cache/storesync', where), '/home/runner/.cache/storesync');
  assert.equal(resolveCache('~', where), '/home/runner');
  assert.equal(resolveCache('.cache/s', where), '/ws/.cache/s');
  assert.equal(resolveCache('/abs', where), '/abs');
  assert.throws(() => resolveCache('', where), /input cache: empty/);
});

test('readConfig: defaults when the inputs are unset, multi-line inputs as lists', () => {
  const { cfg } = config({
    key: 'guix-1-abc',
    'restore-keys': 'guix-1-\nguix-\n',
    paths: '/var/guix/profiles/per-user/root/current-guix\n',
    'trusted-keys': 'ci-1:AAAA\n',
    'keep-last': '2',
    'max-size': '4GiB',
  });
  assert.equal(cfg.key, 'guix-1-abc');
  assert.deepEqual(cfg.restoreKeys, ['guix-1-', 'guix-']);
  assert.equal(cfg.cache, 'gha://');
  assert.equal(cfg.flavor, 'guix');
  assert.equal(cfg.root, '/');
  assert.deepEqual(cfg.paths, ['/var/guix/profiles/per-user/root/current-guix']);
  assert.deepEqual(cfg.trustedKeys, ['ci-1:AAAA']);
  assert.equal(cfg.keepLast, 2);
  assert.equal(cfg.maxSize, '4GiB');
  assert.equal(cfg.save, true);
  assert.equal(cfg.strict, false);
  assert.equal(cfg.failOnMiss, false);
  assert.equal(cfg.gcRoots, false);
  assert.equal(cfg.version, '');
  assert.equal(cfg.binary, undefined);
});

test('readConfig: bad values are errors naming the input', () => {
  assert.throws(() => config({ flavor: 'nixos' }), /input flavor: `nixos` is neither guix nor nix/);
  assert.throws(() => config({ 'keep-last': '0' }), /input keep-last: `0` is not a positive integer/);
  assert.throws(() => config({ 'keep-last': 'two' }), /input keep-last/);
  assert.throws(() => config({ root: 'relative' }), /input root: `relative` is not an absolute path/);
  assert.throws(() => config({ defragment: 'sometimes' }), /input defragment: `sometimes` is none of auto, always, never/);
  assert.equal(config({ defragment: 'never' }).cfg.defragment, 'never');
  assert.equal(config({}).cfg.defragment, undefined);
  assert.throws(() => config({ strict: 'yes' }), /input strict: `yes` is not a boolean/);
  assert.throws(() => config({}, {}, { required: ['key'] }), /input required and not supplied: key/);
});

test('readConfig: secrets are masked; version without its v; binary and repository', () => {
  const { cfg, lines } = config(
    { 'sign-key': 'ci-1:c2VjcmV0', 'github-token': 'ghs_x', version: 'v0.2.0', binary: 'bin/storesync' },
    { GITHUB_ACTION_REPOSITORY: 'someone/storesync' },
  );
  assert.ok(lines.includes('::add-mask::ci-1:c2VjcmV0\n'), lines.join(''));
  assert.ok(lines.includes('::add-mask::ghs_x\n'), lines.join(''));
  assert.equal(cfg.signKey, 'ci-1:c2VjcmV0');
  assert.equal(cfg.version, '0.2.0');
  assert.equal(cfg.binary, '/ws/bin/storesync');
  assert.equal(cfg.repository, 'someone/storesync');
  assert.equal(config({ repository: 'other/fork' }, { GITHUB_ACTION_REPOSITORY: 'a/b' }).cfg.repository, 'other/fork');
});

test('the defaults in the code are those the action.yml files declare', () => {
  for (const file of ACTIONS) {
    const inputs = loadYaml(path.join(REPO, file)).inputs;
    for (const [name, spec] of Object.entries(inputs)) {
      if (spec.required === true && spec.default === undefined) continue;
      if (name in DEFAULTS) assert.equal(String(spec.default), DEFAULTS[name], `${file}: ${name}`);
      else if (name !== 'github-token') assert.equal(spec.default ?? '', '', `${file}: ${name} has a default the code lacks`);
    }
  }
});

test('every input the code reads is declared, and every declared input is read', () => {
  const src = fs.readFileSync(path.join(REPO, 'action/src/lib/inputs.js'), 'utf8');
  const read = new Set([...src.matchAll(/(?:input|multiline|bool|get|count\(actions,)\s*\(?\s*'([a-z-]+)'/g)].map((m) => m[1]));
  const declared = new Set();
  for (const file of ACTIONS) {
    for (const name of Object.keys(loadYaml(path.join(REPO, file)).inputs)) declared.add(name);
  }
  assert.deepEqual([...read].filter((n) => !declared.has(n)), [], 'read but not declared');
  assert.deepEqual([...declared].filter((n) => !read.has(n)), [], 'declared but not read');
});

test('the inputs the root action shares with restore/ and save/ are declared alike', () => {
  const root = loadYaml(path.join(REPO, 'action.yml'));
  for (const file of ['restore/action.yml', 'save/action.yml', 'gc/action.yml']) {
    const sub = loadYaml(path.join(REPO, file));
    for (const [name, spec] of Object.entries(sub.inputs)) {
      if (name in root.inputs && !(file === 'gc/action.yml' && ['cache', 'max-size', 'keep-last'].includes(name))) {
        assert.deepEqual(spec, root.inputs[name], `${file}: ${name}`);
      }
    }
    assert.equal(sub.runs.using, 'node20');
    assert.ok(fs.existsSync(path.join(REPO, path.dirname(file), sub.runs.main)), `${file}: ${sub.runs.main}`);
  }
  assert.deepEqual(
    { using: root.runs.using, main: root.runs.main, post: root.runs.post, postIf: root.runs['post-if'] },
    { using: 'node20', main: 'action/src/main.js', post: 'action/src/post.js', postIf: 'success()' },
  );
});
