'use strict';
// The runner protocol: input names and values, file commands, workflow commands.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');

const core = require('../src/lib/core');

function actionsWith(env) {
  const lines = [];
  const a = new core.Actions({ env, write: (s) => lines.push(s) });
  return { a, lines };
}

test('input variables are named as the runner names them: upper case, spaces as _, hyphens kept', () => {
  assert.equal(core.inputVar('restore-keys'), 'INPUT_RESTORE-KEYS');
  assert.equal(core.inputVar('fail-on-miss'), 'INPUT_FAIL-ON-MISS');
  assert.equal(core.inputVar('my input'), 'INPUT_MY_INPUT');
  const { a } = actionsWith({ 'INPUT_RESTORE-KEYS': '  guix-1-\n\n  guix-\n', INPUT_KEY: ' k ' });
  assert.equal(a.input('key'), 'k');
  assert.deepEqual(a.multiline('restore-keys'), ['guix-1-', 'guix-']);
  assert.equal(a.input('absent'), '');
  assert.throws(() => a.input('absent', { required: true }), /input required and not supplied: absent/);
});

test('booleans are YAML 1.2 core booleans; anything else is an error naming the input', () => {
  const { a } = actionsWith({ INPUT_A: 'True', INPUT_B: 'FALSE', INPUT_C: 'yes' });
  assert.equal(a.bool('a'), true);
  assert.equal(a.bool('b'), false);
  assert.equal(a.bool('unset', true), true);
  assert.throws(() => a.bool('c'), /input c: `yes` is not a boolean/);
});

test('outputs and state are written as file commands the runner parses back', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'core-'));
  const env = { GITHUB_OUTPUT: path.join(dir, 'o'), GITHUB_STATE: path.join(dir, 's') };
  fs.writeFileSync(env.GITHUB_OUTPUT, 'plain=value\n');
  const { a } = actionsWith(env);
  a.setOutput('matched-key', 'guix-1=abc');
  a.setOutput('multi', 'line 1\nline 2');
  a.saveState('binary', '/opt/storesync');
  assert.deepEqual(core.parseFileCommands(fs.readFileSync(env.GITHUB_OUTPUT, 'utf8')), {
    plain: 'value',
    'matched-key': 'guix-1=abc',
    multi: 'line 1\nline 2',
  });
  assert.deepEqual(core.parseFileCommands(fs.readFileSync(env.GITHUB_STATE, 'utf8')), { binary: '/opt/storesync' });
  assert.equal(new core.Actions({ env: { STATE_binary: '/x' } }).state('binary'), '/x');
  assert.throws(() => actionsWith({}).a.setOutput('x', 'y'), /GITHUB_OUTPUT is not set/);
  fs.rmSync(dir, { recursive: true });
});

test('workflow commands escape their message and properties; secrets are masked line by line', async () => {
  const { a, lines } = actionsWith({});
  a.warning('50% done\nnext', { title: 'a:b,c' });
  a.mask('line1\nline2\n');
  await a.group('storesync restore', async () => a.info('inside'));
  assert.deepEqual(lines, [
    '::warning title=a%3Ab%2Cc::50%25 done%0Anext\n',
    '::add-mask::line1\n',
    '::add-mask::line2\n',
    '::group::storesync restore\n',
    'inside\n',
    '::endgroup::\n',
  ]);
});

test('the job summary is appended to, and skipped where the runner offers none', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'core-'));
  const file = path.join(dir, 'summary');
  const { a } = actionsWith({ GITHUB_STEP_SUMMARY: file });
  a.summary('one\n');
  a.summary('two\n');
  assert.equal(fs.readFileSync(file, 'utf8'), 'one\ntwo\n');
  actionsWith({}).a.summary('nowhere');
  fs.rmSync(dir, { recursive: true });
});
