'use strict';
// The action's inputs, read once into a plain object. action.yml and restore/, save/, gc/
// declare them with their defaults (the runner fills those in); the same defaults are
// repeated here for a step run by hand, and tests/inputs.test.js checks they agree.

const os = require('node:os');
const path = require('node:path');

const { InputError } = require('./core');

/** Defaults of the inputs that have one, as the action.yml files declare them. */
const DEFAULTS = {
  cache: 'gha://',
  flavor: 'guix',
  root: '/',
  'gc-roots': 'false',
  'fail-on-miss': 'false',
  strict: 'false',
  save: 'true',
  'dry-run': 'false',
  grace: '1h',
  'cache-hit': 'false',
};

const FLAVORS = ['guix', 'nix'];

/**
 * Where the cache is: a URL-like location (`gha://SCOPE`, `s3://BUCKET/PREFIX`) as given,
 * otherwise a directory, with `~` expanded and a relative path taken from the workspace
 * (storesync may run under sudo, whose HOME and working directory differ).
 */
function resolveCache(value, { home = os.homedir(), workspace = process.cwd() } = {}) {
  if (value === '') throw new InputError('input cache: empty (gha://, s3://BUCKET/PREFIX or a directory)');
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(value)) {
    if (value.startsWith('file://')) return path.resolve(value.slice('file://'.length));
    return value;
  }
  if (value === '~') return home;
  if (value.startsWith('~/')) return path.join(home, value.slice(2));
  return path.resolve(workspace, value);
}

/**
 * A root of the `paths` input: `~` and `~/...` are the runner user's home (storesync runs
 * under sudo, whose HOME differs, and no shell expands them); anything else as given.
 */
function resolvePath(value, home) {
  if (value === '~') return home;
  if (value.startsWith('~/')) return path.join(home, value.slice(2));
  return value;
}

/** A count input: '' (unset) or a positive integer. */
function count(actions, name) {
  const v = actions.input(name);
  if (v === '') return undefined;
  if (!/^[1-9][0-9]*$/.test(v)) throw new InputError(`input ${name}: \`${v}\` is not a positive integer`);
  return Number(v);
}

/** The defragment input: '' (storesync's default, auto), auto, always or never. */
function defragment(actions) {
  const v = actions.input('defragment');
  if (!['', 'auto', 'always', 'never'].includes(v)) {
    throw new InputError(`input defragment: \`${v}\` is none of auto, always, never`);
  }
  return v || undefined;
}

/**
 * Every input of every entry point (each reads what it needs). `required` names the inputs
 * this entry point cannot do without.
 *
 * @param {import('./core').Actions} actions
 * @param {{required?: string[]}} [opts]
 */
function readConfig(actions, { required = [] } = {}) {
  const env = actions.env;
  const get = (name) => {
    const v = actions.input(name, { required: required.includes(name) });
    return v === '' && name in DEFAULTS ? DEFAULTS[name] : v;
  };
  const bool = (name) => actions.bool(name, DEFAULTS[name] === 'true');
  const flavor = get('flavor');
  if (!FLAVORS.includes(flavor)) {
    throw new InputError(`input flavor: \`${flavor}\` is neither guix nor nix`);
  }
  const workspace = env.GITHUB_WORKSPACE || process.cwd();
  const home = env.HOME || os.homedir();
  const root = get('root');
  if (!path.isAbsolute(root)) throw new InputError(`input root: \`${root}\` is not an absolute path`);
  const signKey = actions.input('sign-key');
  const token = actions.input('github-token');
  if (signKey) actions.mask(signKey);
  if (token) actions.mask(token);
  return {
    key: actions.input('key', { required: required.includes('key') }),
    restoreKeys: actions.multiline('restore-keys'),
    cache: resolveCache(get('cache'), { home, workspace }),
    flavor,
    root,
    paths: actions.multiline('paths').map((p) => resolvePath(p, home)),
    gcRoots: bool('gc-roots'),
    maxSize: actions.input('max-size') || undefined,
    keepLast: count(actions, 'keep-last'),
    keepWithin: actions.input('keep-within') || undefined,
    keyPrefix: actions.input('key-prefix') || undefined,
    grace: get('grace'),
    dryRun: bool('dry-run'),
    defragment: defragment(actions),
    trustedKeys: actions.multiline('trusted-keys'),
    signKey: signKey || undefined,
    failOnMiss: bool('fail-on-miss'),
    strict: bool('strict'),
    save: bool('save'),
    cacheHit: actions.input('cache-hit') === 'true',
    version: actions.input('version').replace(/^v/, ''),
    binary: actions.input('binary') ? path.resolve(workspace, actions.input('binary')) : undefined,
    repository: actions.input('repository') || env.GITHUB_ACTION_REPOSITORY || '',
    token: token || undefined,
    workspace,
  };
}

module.exports = { readConfig, resolveCache, resolvePath, DEFAULTS, FLAVORS };
