'use strict';
// Real stores for the end-to-end tests, made by storesync itself: `storesync demo --keep`
// leaves a cache holding two generations of its sample store (6 paths, then 8: two new),
// and `restore --snapshot` of either into an empty root gives a store in the daemon's format
// (store directory and SQLite DB) at that generation.
//
// STORESYNC_BIN names the storesync to run (default: target/release/storesync, then
// target/debug/storesync of this repository). STORESYNC_E2E_CACHE picks the cache the runs
// use: unset, a fresh directory; `gha://` or `gha://SCOPE`, the GitHub Actions cache behind
// ACTIONS_RESULTS_URL and ACTIONS_RUNTIME_TOKEN (a fresh scope per test run; GITHUB_API_URL
// and GITHUB_REPOSITORY, when set, name the REST API that pruning uses).

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const { REPO } = require('./runner');

function storesyncBin() {
  const candidates = [
    process.env.STORESYNC_BIN,
    path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'release', 'storesync'),
    path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'debug', 'storesync'),
  ].filter(Boolean);
  for (const c of candidates) if (fs.existsSync(c)) return path.resolve(c);
  throw new Error(`no storesync binary (tried ${candidates.join(', ')}): cargo build --release, or set STORESYNC_BIN`);
}

function storesync(args, opts = {}) {
  return execFileSync(storesyncBin(), ['--no-progress', ...args], { encoding: 'utf8', ...opts });
}

const demos = {};

/**
 * The demo's directory and its two snapshots (generation 1, generation 2), for a flavour
 * (guix or nix). Made once per flavour.
 */
function demoFixture(flavor = 'guix') {
  if (!demos[flavor]) {
    const out = storesync(['--flavor', flavor, 'demo', '--keep']);
    const dir = /^kept (.+)$/m.exec(out)[1];
    const snaps = JSON.parse(storesync(['--json', 'ls', '--cache', path.join(dir, 'cache')]));
    if (snaps.length !== 2) throw new Error(`demo left ${snaps.length} snapshots, expected 2`);
    demos[flavor] = { dir, cache: path.join(dir, 'cache'), gen1: snaps[0], gen2: snaps[1] };
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return demos[flavor];
}

/** Restore generation `gen` (1 or 2) of the sample store into `root` (created if need be). */
function restoreGeneration(root, gen, flavor = 'guix') {
  const d = demoFixture(flavor);
  fs.mkdirSync(root, { recursive: true });
  const snap = gen === 1 ? d.gen1 : d.gen2;
  return JSON.parse(
    storesync(['--flavor', flavor, '--root', root, '--json', 'restore', '--cache', d.cache, '--snapshot', snap.id]),
  );
}

/** The valid paths of the store under `root`, as a save would see them. */
function validPaths(root, flavor = 'guix') {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'empty-cache-'));
  try {
    const plan = JSON.parse(
      storesync(['--flavor', flavor, '--root', root, '--json', 'save', '--dry-run', '--cache', path.join(empty, 'c')]),
    );
    return plan.new_path_names.sort();
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
}

/** The cache location for a test run, and the environment it needs. */
function cacheLocation(tmp) {
  const want = process.env.STORESYNC_E2E_CACHE || '';
  if (want.startsWith('gha://')) {
    const scope = want.slice('gha://'.length) || 'e2e';
    const env = {};
    // The cache service, and the REST API that pruning lists and deletes entries through.
    const names = ['ACTIONS_RUNTIME_TOKEN', 'ACTIONS_RESULTS_URL', 'ACTIONS_CACHE_SERVICE_V2'];
    for (const k of [...names, 'GITHUB_API_URL', 'GITHUB_REPOSITORY', 'STORESYNC_GHA_MAX_WAIT']) {
      if (process.env[k]) env[k] = process.env[k];
    }
    return { cache: `gha://${scope}-${crypto.randomBytes(4).toString('hex')}`, env, listable: false };
  }
  return { cache: path.join(tmp, 'cache'), env: {}, listable: true };
}

/** A temporary directory removed when test `t` ends. */
function tmpdir(t, prefix = 'action-test-') {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Snapshots of a directory cache (`ls --json`), oldest first. */
function snapshots(cache) {
  return JSON.parse(storesync(['--json', 'ls', '--cache', cache]));
}

module.exports = { tmpdir, storesyncBin, storesync, demoFixture, restoreGeneration, validPaths, cacheLocation, snapshots };
