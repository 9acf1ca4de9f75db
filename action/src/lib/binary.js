'use strict';
// Where the storesync binary comes from, in this order:
//  1. the `binary` input: a path, used as it is (a build of the workspace, a test);
//  2. the runner's tool cache, where an earlier step of this machine put it;
//  3. the GitHub release matching `version` (default: this action's own version):
//     storesync-VERSION-ARCH-linux.tar.gz, checked against its SHA-256 before it is opened:
//     the checksum committed in action/checksums.json when it lists the version, and the
//     release's .sha256 file (when both exist they must agree);
//  4. when the release cannot be downloaded (none for that version, no network to it):
//     `cargo install --locked --git REPO --tag vVERSION`, the binary it builds kept in the
//     GitHub Actions cache so that later runs skip the compilation.
// A checksum that does not match is an error, never a reason to fall back.
// Network and processes are injected (`deps`), so tests run on 127.0.0.1 and local files.

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');

const { extractFile } = require('./tar');
const { GhaCache } = require('./ghacache');
const command = require('./command');

/** Node's architecture names to the release's. */
const ARCH = { x64: 'x86_64', arm64: 'aarch64' };

/** The cache service's `version` for the binaries this action keeps (a namespace). */
const BINARY_CACHE_VERSION = crypto.createHash('sha256').update('storesync-action binary v1').digest('hex');

/** The release cannot be had (HTTP error, network): fall back to building. */
class Unavailable extends Error {}
/** The release was had but does not match its checksum: stop. */
class VerifyError extends Error {}

function assetName(version, arch) {
  return `storesync-${version}-${arch}-linux.tar.gz`;
}

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** The checksum for `asset` in a `sha256sum` listing (or a file holding only the digest). */
function parseSha256(text, asset) {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  for (const line of lines) {
    const m = /^([0-9a-fA-F]{64})(?:\s+\*?(.+))?$/.exec(line);
    if (m && (m[2] === undefined ? lines.length === 1 : path.basename(m[2]) === asset)) {
      return m[1].toLowerCase();
    }
  }
  throw new VerifyError(`no SHA-256 for ${asset} in its .sha256 file`);
}

async function get(fetchFn, url) {
  let res;
  try {
    res = await fetchFn(url, { redirect: 'follow', signal: AbortSignal.timeout(300_000) });
  } catch (e) {
    throw new Unavailable(`${url}: ${e.cause ? e.cause.message || e.cause : e.message}`);
  }
  if (!res.ok) throw new Unavailable(`${url}: HTTP ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}

/**
 * The binary from the release `vVERSION` of `repo`, verified.
 *
 * @returns {Promise<{data: Buffer, source: string}>}
 * @throws {Unavailable} when it cannot be downloaded; {VerifyError} when it does not match.
 */
async function downloadRelease({ server, repo, version, arch, fetchFn, checksums }) {
  const asset = assetName(version, arch);
  const base = `${server}/${repo}/releases/download/v${version}`;
  const tgz = await get(fetchFn, `${base}/${asset}`);
  let published;
  try {
    published = parseSha256((await get(fetchFn, `${base}/${asset}.sha256`)).toString('utf8'), asset);
  } catch (e) {
    if (!(e instanceof Unavailable)) throw e;
  }
  const committed = (checksums[version] || {})[asset];
  if (committed && published && committed.toLowerCase() !== published) {
    throw new VerifyError(
      `${asset}: the release's .sha256 (${published}) differs from the checksum committed in the action (${committed})`,
    );
  }
  const expected = (committed || published || '').toLowerCase();
  if (!expected) throw new VerifyError(`${asset}: no checksum to verify it against (no .sha256 in the release)`);
  const actual = sha256(tgz);
  if (actual !== expected) {
    throw new VerifyError(`${asset}: SHA-256 ${actual}, expected ${expected}: refusing to run it`);
  }
  const how = [committed && 'the checksum in the action', published && "the release's .sha256"]
    .filter(Boolean)
    .join(' and ');
  return { data: extractFile(tgz, 'storesync'), source: `release v${version}, SHA-256 verified against ${how}` };
}

/** Variables of the step that cargo's build is not given: the runner's tokens. */
const NOT_FOR_BUILDS = ['ACTIONS_RUNTIME_TOKEN', 'ACTIONS_ID_TOKEN_REQUEST_TOKEN', 'ACTIONS_ID_TOKEN_REQUEST_URL'];

/**
 * The environment of `cargo install`, which runs the build scripts and procedural macros of
 * every dependency: the step's, less the inputs' copies of secrets (`command.childEnv`)
 * and the runner's tokens (writing the cache, requesting OIDC tokens).
 */
function buildEnv(env) {
  const out = command.childEnv(env);
  for (const k of NOT_FOR_BUILDS) delete out[k];
  return out;
}

/**
 * The binary built by `cargo install` from the tag `vVERSION`, or the one an earlier run
 * built and kept in the GitHub Actions cache.
 */
async function buildFromSource({ server, repo, version, arch, exec, ghaCache, env, actions }) {
  const key = `storesync-bin-${version}-${arch}-linux`;
  if (ghaCache) {
    try {
      const gz = await ghaCache.get(key);
      if (gz) return { data: zlib.gunzipSync(gz), source: `built by an earlier run (GitHub cache ${key})` };
    } catch (e) {
      actions.warning(`cannot read the GitHub cache for ${key}: ${e.message}`);
    }
  }
  const root = path.join(env.RUNNER_TEMP || os.tmpdir(), `storesync-cargo-${version}-${process.pid}`);
  const args = ['install', '--locked', '--git', `${server}/${repo}`, '--tag', `v${version}`, '--root', root, 'storesync'];
  const r = await actions.group(`cargo install storesync v${version}`, () => exec('cargo', args, { env: buildEnv(env) }));
  if (r.error) {
    throw new Error(
      `cannot build storesync: cargo did not start (${r.error.message}); install a Rust toolchain first, or set the binary input`,
    );
  }
  if (r.code !== 0) throw new Error(`cargo install storesync v${version} failed (exit ${r.code})`);
  const data = fs.readFileSync(path.join(root, 'bin', 'storesync'));
  if (ghaCache) {
    try {
      await ghaCache.put(key, zlib.gzipSync(data));
    } catch (e) {
      actions.warning(`cannot keep the built binary in the GitHub cache: ${e.message}`);
    }
  }
  return { data, source: `built from source (cargo install, tag v${version})` };
}

/** Write the binary into `dir` as `storesync`, atomically. */
function install(data, dir) {
  fs.mkdirSync(dir, { recursive: true });
  const bin = path.join(dir, 'storesync');
  const tmp = `${bin}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data, { mode: 0o755 });
  fs.renameSync(tmp, bin);
  return bin;
}

/** `storesync --version` must name `version`. */
async function checkVersion(bin, version, exec) {
  const r = await exec(bin, ['--version'], { log: () => {} });
  const got = (r.stdout || '').trim();
  if (r.code !== 0 || got.split(/\s+/)[1] !== version) {
    throw new VerifyError(`${bin} says \`${got}\` (exit ${r.code}), not storesync ${version}`);
  }
}

function defaultDeps(env) {
  return {
    fetchFn: globalThis.fetch,
    exec: command.run,
    ghaCache: GhaCache.fromEnv(env, BINARY_CACHE_VERSION),
    platform: process.platform,
    arch: process.arch,
    actionVersion: require('../../package.json').version,
    checksums: require('../../checksums.json'),
  };
}

/**
 * The storesync to run: `{path, source, version}`.
 *
 * @param {import('./core').Actions} actions
 * @param {ReturnType<import('./inputs').readConfig>} cfg
 * @param {Partial<ReturnType<typeof defaultDeps>>} [injected]
 */
async function resolveBinary(actions, cfg, injected = {}) {
  const env = actions.env;
  const deps = { ...defaultDeps(env), ...injected };
  if (cfg.binary) {
    try {
      fs.accessSync(cfg.binary, fs.constants.X_OK);
    } catch (e) {
      throw new Error(`input binary: ${cfg.binary} is not an executable file (${e.code})`);
    }
    return { path: cfg.binary, source: 'the binary input', version: '' };
  }
  const version = cfg.version || deps.actionVersion;
  const arch = ARCH[deps.arch];
  if (deps.platform !== 'linux' || !arch) {
    throw new Error(
      `storesync is released for Linux on x86_64 and aarch64, not ${deps.platform}/${deps.arch}; set the binary input`,
    );
  }
  const dir = path.join(env.RUNNER_TOOL_CACHE || env.RUNNER_TEMP || os.tmpdir(), 'storesync', version, arch);
  const cached = path.join(dir, 'storesync');
  if (fs.existsSync(`${dir}.complete`) && fs.existsSync(cached)) {
    return { path: cached, source: `tool cache ${dir}`, version };
  }
  if (!cfg.repository) {
    throw new Error('no repository to fetch storesync from (GITHUB_ACTION_REPOSITORY is empty): set the repository or binary input');
  }
  const where = {
    server: (env.GITHUB_SERVER_URL || 'https://github.com').replace(/\/+$/, ''),
    repo: cfg.repository,
    version,
    arch,
  };
  let got;
  try {
    got = await downloadRelease({ ...where, fetchFn: deps.fetchFn, checksums: deps.checksums });
  } catch (e) {
    if (!(e instanceof Unavailable)) throw e;
    actions.warning(`storesync ${version}: no release to download (${e.message}); building it from source`);
    got = await buildFromSource({ ...where, exec: deps.exec, ghaCache: deps.ghaCache, env, actions });
  }
  const bin = install(got.data, dir);
  await checkVersion(bin, version, deps.exec);
  // Only a binary that ran is kept for the next steps on this machine.
  fs.writeFileSync(`${dir}.complete`, '');
  return { path: bin, source: got.source, version };
}

module.exports = {
  ARCH,
  BINARY_CACHE_VERSION,
  Unavailable,
  VerifyError,
  assetName,
  sha256,
  parseSha256,
  downloadRelease,
  buildFromSource,
  buildEnv,
  install,
  checkVersion,
  resolveBinary,
};
