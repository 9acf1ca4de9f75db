'use strict';
// The storesync command lines the action runs, and how they are run: as root (directly when
// the action already is root, through sudo otherwise), with the variables the cache backends
// need passed through sudo by name, stdout captured and parsed as JSON, stderr in the log.

const { spawn } = require('node:child_process');

/**
 * Variables storesync reads that sudo would drop: the GitHub cache service's (only
 * JavaScript actions get ACTIONS_RUNTIME_TOKEN and ACTIONS_RESULTS_URL), the REST API's for
 * listing and deleting entries (GITHUB_REF: the ref whose entries gc collects), the store locations the daemons honour, proxies; and every AWS_* and
 * STORESYNC_* variable (see `passThrough`).
 */
const PASS_THROUGH = [
  'ACTIONS_RUNTIME_TOKEN',
  'ACTIONS_RESULTS_URL',
  'ACTIONS_CACHE_SERVICE_V2',
  'ACTIONS_CACHE_URL',
  'GITHUB_TOKEN',
  'GITHUB_REPOSITORY',
  'GITHUB_REF',
  'GITHUB_API_URL',
  'GITHUB_SERVER_URL',
  'GUIX_DATABASE_DIRECTORY',
  'GUIX_STATE_DIRECTORY',
  'NIX_STORE_DIR',
  'NIX_STATE_DIR',
  'HTTPS_PROXY',
  'https_proxy',
  'HTTP_PROXY',
  'http_proxy',
  'NO_PROXY',
  'no_proxy',
  'TMPDIR',
  'RUST_BACKTRACE',
];
const PASS_THROUGH_PREFIXES = ['AWS_', 'STORESYNC_'];

/** The names of the variables set in `env` that sudo must keep, sorted. */
function passThrough(env) {
  return Object.keys(env)
    .filter((k) => env[k] !== undefined && env[k] !== '')
    .filter((k) => PASS_THROUGH.includes(k) || PASS_THROUGH_PREFIXES.some((p) => k.startsWith(p)))
    .sort();
}

/** Options every command takes, before the command name. */
function globalArgs(cfg) {
  const a = opt('--flavor', cfg.flavor);
  if (cfg.root && cfg.root !== '/') a.push(...opt('--root', cfg.root));
  a.push('--json', '--no-progress');
  return a;
}

/**
 * Option `name` with `value`: two arguments, or one (`--name=value`) when the value starts
 * with a dash, which storesync's parser would otherwise take for an option of its own (a
 * key `-guix-1`, say) and refuse.
 */
function opt(name, value) {
  const v = String(value);
  return v.startsWith('-') ? [`${name}=${v}`] : [name, v];
}

/** Paths as trailing arguments, after `--` so that none is taken for a flag. */
function pathArgs(paths) {
  return paths.length > 0 ? ['--', ...paths] : [];
}

function restoreArgs(cfg) {
  return [
    ...globalArgs(cfg),
    'restore',
    ...opt('--cache', cfg.cache),
    ...opt('--key', cfg.key),
    ...cfg.restoreKeys.flatMap((k) => opt('--restore-key', k)),
    ...cfg.trustedKeys.flatMap((k) => opt('--trusted-key', k)),
  ];
}

/** Retention flags of `gc` and `save --prune`. */
function retentionArgs(cfg) {
  const a = [];
  if (cfg.keepLast !== undefined) a.push(...opt('--keep-last', cfg.keepLast));
  if (cfg.keepWithin) a.push(...opt('--keep-within', cfg.keepWithin));
  if (cfg.maxSize) a.push(...opt('--max-size', cfg.maxSize));
  return a;
}

/** `--defragment` of a collection, when the input says. */
function defragmentArgs(cfg) {
  return cfg.defragment ? opt('--defragment', cfg.defragment) : [];
}

/**
 * Whether `save --prune` can apply the retention inputs to this cache: a `gha://` cache is
 * listed and its entries deleted through the REST API, so only with a token (the
 * `github-token` input, which needs `actions: write`).
 */
function canPrune(cache, token) {
  return !cache.startsWith('gha://') || Boolean(token);
}

/**
 * `save`, or with `dryRun` the question "which paths would a save read?". `--prune` with the
 * retention inputs, when there are some and the cache can be pruned. `gcRoots` when the
 * binary offers `--gc-roots` and the input asks for it. The signing key goes through the
 * environment, never the command line.
 */
function saveArgs(cfg, { dryRun = false, gcRoots = false } = {}) {
  const a = [...globalArgs(cfg), 'save', ...opt('--cache', cfg.cache), ...opt('--key', cfg.key)];
  if (dryRun) {
    a.push('--dry-run');
  } else {
    const retention = retentionArgs(cfg);
    if (retention.length > 0 && canPrune(cfg.cache, cfg.token)) {
      a.push('--prune', ...retention, ...defragmentArgs(cfg));
    }
  }
  if (gcRoots) a.push('--gc-roots');
  return [...a, ...pathArgs(cfg.paths)];
}

function gcArgs(cfg) {
  const a = [
    ...globalArgs(cfg),
    'gc',
    ...opt('--cache', cfg.cache),
    ...retentionArgs(cfg),
    ...defragmentArgs(cfg),
  ];
  if (cfg.keyPrefix) a.push(...opt('--key-prefix', cfg.keyPrefix));
  if (cfg.grace) a.push(...opt('--grace', cfg.grace));
  if (cfg.dryRun) a.push('--dry-run');
  return a;
}

/**
 * The environment storesync runs in: the step's, less the inputs and state (the runner's
 * copies of secrets), plus `extra` (GITHUB_TOKEN from the `github-token` input, the signing
 * key).
 */
function childEnv(env, extra = {}) {
  const out = {};
  for (const [k, v] of Object.entries(env)) {
    if (!k.startsWith('INPUT_') && !k.startsWith('STATE_')) out[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) if (v !== undefined && v !== '') out[k] = v;
  return out;
}

/**
 * The process to start for `binary args` as root: itself when `uid` is 0, else sudo,
 * never asking for a password (-n: on a self-hosted runner whose sudo wants one, the step
 * fails at once saying so, instead of waiting on a terminal until the job's timeout),
 * keeping the environment (-E) and naming the variables the backends need
 * (--preserve-env=LIST), which a sudoers policy restricting -E still lets through.
 */
function privileged(binary, args, { uid, env }) {
  if (uid === 0) return { file: binary, args };
  const keep = passThrough(env);
  return {
    file: 'sudo',
    args: ['-n', '-E', ...(keep.length > 0 ? [`--preserve-env=${keep.join(',')}`] : []), '--', binary, ...args],
  };
}

/** A command line for the log, quoted where a shell would need it. */
function showCommand(file, args) {
  const q = (s) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  return [file, ...args].map(q).join(' ');
}

/** How much of a command's stderr `run` keeps (its end) for the step's messages. */
const STDERR_TAIL = 64 << 10;

/**
 * Run a command; its stderr goes to the log as it comes (and its last STDERR_TAIL bytes are
 * returned), its stdout is returned. Resolves (never rejects) with the exit code, or `error`
 * when it could not start.
 *
 * @returns {Promise<{code: number|null, signal: string|null, stdout: string, stderr: string, error?: Error}>}
 */
function run(file, args, { env, cwd, log = (s) => process.stdout.write(s), spawnFn = spawn } = {}) {
  log(`[command]${showCommand(file, args)}\n`);
  return new Promise((resolve) => {
    let child;
    try {
      child = spawnFn(file, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      resolve({ code: null, signal: null, stdout: '', stderr: '', error });
      return;
    }
    const out = [];
    let err = '';
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => {
      const s = d.toString();
      log(s);
      err = (err + s).slice(-STDERR_TAIL);
    });
    child.on('error', (error) => resolve({ code: null, signal: null, stdout: '', stderr: err, error }));
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: err }),
    );
  });
}

/** The JSON value a `--json` run printed, or undefined when stdout holds none. */
function parseJson(stdout) {
  const s = stdout.trim();
  if (s === '') return undefined;
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

module.exports = {
  PASS_THROUGH,
  opt,
  passThrough,
  globalArgs,
  restoreArgs,
  canPrune,
  saveArgs,
  gcArgs,
  retentionArgs,
  childEnv,
  privileged,
  showCommand,
  run,
  parseJson,
};
