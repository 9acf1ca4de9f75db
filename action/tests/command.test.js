'use strict';
// The storesync command lines, sudo, the child's environment, and running a process.

const assert = require('node:assert/strict');
const test = require('node:test');

const command = require('../src/lib/command');

const base = {
  key: 'guix-1-abc',
  restoreKeys: ['guix-1-', 'guix-'],
  cache: '/home/runner/.cache/storesync',
  flavor: 'guix',
  root: '/',
  paths: [],
  trustedKeys: [],
  keepLast: undefined,
  maxSize: undefined,
  keepWithin: undefined,
  keyPrefix: undefined,
  grace: '1h',
  dryRun: false,
};

test('restore: global flags first, then the key, the restore-keys in order, the trusted keys', () => {
  assert.deepEqual(command.restoreArgs(base), [
    '--flavor', 'guix', '--json', '--no-progress',
    'restore', '--cache', '/home/runner/.cache/storesync', '--key', 'guix-1-abc',
    '--restore-key', 'guix-1-', '--restore-key', 'guix-',
  ]);
  assert.deepEqual(
    command.restoreArgs({ ...base, flavor: 'nix', root: '/mnt/img', restoreKeys: [], trustedKeys: ['ci-1:AAAA', 'k.pub'] }),
    [
      '--flavor', 'nix', '--root', '/mnt/img', '--json', '--no-progress',
      'restore', '--cache', '/home/runner/.cache/storesync', '--key', 'guix-1-abc',
      '--trusted-key', 'ci-1:AAAA', '--trusted-key', 'k.pub',
    ],
  );
});

test('save: --prune only with a retention rule, never on a dry run; paths after --', () => {
  const g = ['--flavor', 'guix', '--json', '--no-progress', 'save', '--cache', base.cache, '--key', base.key];
  assert.deepEqual(command.saveArgs(base), g);
  const budget = { ...base, keepLast: 2, maxSize: '4GiB', paths: ['/gnu/store/x-a', '-odd'] };
  assert.deepEqual(command.saveArgs(budget), [...g, '--prune', '--keep-last', '2', '--max-size', '4GiB', '--', '/gnu/store/x-a', '-odd']);
  assert.deepEqual(command.saveArgs(budget, { dryRun: true }), [...g, '--dry-run', '--', '/gnu/store/x-a', '-odd']);
  assert.deepEqual(command.saveArgs(base, { gcRoots: true }), [...g, '--gc-roots']);
  // gha:// is listed and pruned through the REST API: only with a token.
  const gha = { ...budget, cache: 'gha://guix', paths: [] };
  const ghaSave = [...g.slice(0, 6), 'gha://guix', '--key', base.key];
  assert.deepEqual(command.saveArgs(gha), ghaSave);
  assert.deepEqual(command.saveArgs({ ...gha, token: 'ghs_x' }), [...ghaSave, '--prune', '--keep-last', '2', '--max-size', '4GiB']);
  assert.equal(command.canPrune('gha://', undefined), false);
  assert.equal(command.canPrune('gha://', 'ghs_x'), true);
  assert.equal(command.canPrune('s3://b/p', undefined), true);
});

test('gc: the retention rules, key prefix, grace and dry run', () => {
  assert.deepEqual(
    command.gcArgs({ ...base, keepLast: 1, keepWithin: '7d', maxSize: '8GiB', keyPrefix: 'guix-', dryRun: true }),
    [
      '--flavor', 'guix', '--json', '--no-progress', 'gc', '--cache', base.cache,
      '--keep-last', '1', '--keep-within', '7d', '--max-size', '8GiB', '--key-prefix', 'guix-', '--grace', '1h', '--dry-run',
    ],
  );
  // On gc, and on save when it prunes.
  assert.deepEqual(
    command.gcArgs({ ...base, defragment: 'always' }).slice(-4),
    ['--defragment', 'always', '--grace', '1h'],
  );
  assert.ok(command.saveArgs({ ...base, keepLast: 2, defragment: 'never' }).join(' ').includes('--prune --keep-last 2 --defragment never'));
  assert.ok(!command.saveArgs({ ...base, defragment: 'never' }).includes('--defragment'));
});

test('as root storesync runs directly; otherwise through sudo -n -E naming the variables the backends need', () => {
  const env = {
    PATH: '/usr/bin',
    HOME: '/home/runner',
    ACTIONS_RUNTIME_TOKEN: 't',
    ACTIONS_RESULTS_URL: 'https://results/',
    ACTIONS_CACHE_SERVICE_V2: 'true',
    AWS_ACCESS_KEY_ID: 'k',
    AWS_SECRET_ACCESS_KEY: 's',
    AWS_ENDPOINT: 'http://127.0.0.1:8333',
    STORESYNC_SIGN_KEY: 'x',
    GITHUB_TOKEN: 'g',
    GITHUB_REPOSITORY: 'o/r',
    GITHUB_REF: 'refs/heads/main',
    EMPTY_ONE: '',
    AWS_SESSION_TOKEN: '',
  };
  assert.deepEqual(command.privileged('/opt/storesync', ['--json', 'restore'], { uid: 0, env }), {
    file: '/opt/storesync',
    args: ['--json', 'restore'],
  });
  assert.deepEqual(command.privileged('/opt/storesync', ['--json', 'restore'], { uid: 1001, env }), {
    file: 'sudo',
    args: [
      '-n',
      '-E',
      '--preserve-env=ACTIONS_CACHE_SERVICE_V2,ACTIONS_RESULTS_URL,ACTIONS_RUNTIME_TOKEN,AWS_ACCESS_KEY_ID,AWS_ENDPOINT,AWS_SECRET_ACCESS_KEY,GITHUB_REF,GITHUB_REPOSITORY,GITHUB_TOKEN,STORESYNC_SIGN_KEY',
      '--',
      '/opt/storesync',
      '--json',
      'restore',
    ],
  });
  assert.deepEqual(command.privileged('/s', ['x'], { uid: 1001, env: { PATH: '/bin' } }).args, ['-n', '-E', '--', '/s', 'x']);
});

test("the child's environment: no INPUT_* or STATE_* (the runner's copies of secrets), extras added", () => {
  const env = command.childEnv(
    { PATH: '/bin', 'INPUT_SIGN-KEY': 'secret', STATE_binary: '/x', GITHUB_TOKEN: 'old' },
    { GITHUB_TOKEN: 'new', STORESYNC_SIGN_KEY: 'ci:k', UNSET: undefined, EMPTY: '' },
  );
  assert.deepEqual(env, { PATH: '/bin', GITHUB_TOKEN: 'new', STORESYNC_SIGN_KEY: 'ci:k' });
});

test('command lines in the log are quoted as a shell would need', () => {
  assert.equal(
    command.showCommand('sudo', ['--', '/s', 'restore', '--key', "it's here", 'a b', 'guix-1.4.0-x86_64']),
    "sudo -- /s restore --key 'it'\\''s here' 'a b' guix-1.4.0-x86_64",
  );
});

test('run: stdout captured, stderr to the log, the exit code; a missing program is an error', async () => {
  const log = [];
  const r = await command.run('sh', ['-c', 'echo \'{"a": 1}\'; echo note >&2; exit 3'], { log: (s) => log.push(s) });
  assert.equal(r.code, 3);
  assert.deepEqual(command.parseJson(r.stdout), { a: 1 });
  assert.equal(log[0], `[command]sh -c 'echo '\\''{"a": 1}'\\''; echo note >&2; exit 3'\n`);
  assert.equal(log.slice(1).join(''), 'note\n');
  const missing = await command.run('/nonexistent/storesync', [], { log: () => {} });
  assert.equal(missing.code, null);
  assert.match(missing.error.message, /ENOENT/);
  assert.equal(command.parseJson(''), undefined);
  assert.equal(command.parseJson('storesync: error: x'), undefined);
});
