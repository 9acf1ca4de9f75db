'use strict';
// Getting the binary: release download and SHA-256 verification, the tool cache, the
// cargo install fallback with its GitHub cache entry; the tar reader. Network and processes
// are local: a release host and a cache service on 127.0.0.1, a fake cargo.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const test = require('node:test');
const zlib = require('node:zlib');
const { execFileSync } = require('node:child_process');

const binary = require('../src/lib/binary');
const { extractFile, entries } = require('../src/lib/tar');
const { GhaCache } = require('../src/lib/ghacache');
const { Actions } = require('../src/lib/core');
const command = require('../src/lib/command');
const { releaseHost, cacheService } = require('./support/servers');
const { tmpdir } = require('./support/store');

/** A stand-in storesync: a script that answers --version. */
function fakeStoresync(version) {
  return `#!/bin/sh\nif [ "$1" = --version ]; then echo "storesync ${version}"; exit 0; fi\necho "fake $*"\n`;
}

/** A release archive as scripts/dist.sh lays it out, made by tar in the given format. */
function releaseTarball(dir, version, { format = 'ustar', member = 'storesync', body } = {}) {
  const name = `storesync-${version}-x86_64-linux`;
  const stage = path.join(dir, `stage-${crypto.randomBytes(3).toString('hex')}`);
  fs.mkdirSync(path.join(stage, name, 'man'), { recursive: true });
  fs.writeFileSync(path.join(stage, name, 'README.md'), 'readme\n');
  fs.writeFileSync(path.join(stage, name, 'man', 'storesync.1'), '.TH storesync 1\n');
  fs.writeFileSync(path.join(stage, name, member), body ?? fakeStoresync(version), { mode: 0o755 });
  const tar = execFileSync('tar', [`--format=${format}`, '-C', stage, '-cf', '-', name]);
  return zlib.gzipSync(tar);
}

function sha256(b) {
  return crypto.createHash('sha256').update(b).digest('hex');
}

function actionsFor(env) {
  const log = [];
  return { actions: new Actions({ env, write: (s) => log.push(s) }), log };
}

function setup(t, { version = '0.3.1', files = {}, checksums = {} } = {}) {
  const dir = tmpdir(t, 'binary-');
  const env = { RUNNER_TOOL_CACHE: path.join(dir, 'tools'), RUNNER_TEMP: path.join(dir, 'temp') };
  fs.mkdirSync(env.RUNNER_TEMP);
  const cfg = { version, repository: 'owner/storesync' };
  return { dir, env, cfg, checksums, files };
}

async function withHost(t, files) {
  const host = await releaseHost(files);
  t.after(() => host.close());
  return host;
}

const ASSET = '/owner/storesync/releases/download/v0.3.1/storesync-0.3.1-x86_64-linux.tar.gz';

test('the release is downloaded, checked against its .sha256, unpacked, and reused from the tool cache', async (t) => {
  const { dir, env, cfg } = setup(t);
  const tgz = releaseTarball(dir, '0.3.1');
  const host = await withHost(t, {
    [ASSET]: tgz,
    [`${ASSET}.sha256`]: Buffer.from(`${sha256(tgz)}  storesync-0.3.1-x86_64-linux.tar.gz\n`),
  });
  const { actions } = actionsFor({ ...env, GITHUB_SERVER_URL: host.url });
  const deps = { fetchFn: fetch, exec: command.run, platform: 'linux', arch: 'x64', checksums: {}, ghaCache: undefined };
  const got = await binary.resolveBinary(actions, cfg, deps);
  assert.equal(got.path, path.join(env.RUNNER_TOOL_CACHE, 'storesync', '0.3.1', 'x86_64', 'storesync'));
  assert.equal(got.source, "release v0.3.1, SHA-256 verified against the release's .sha256");
  assert.equal(execFileSync(got.path, ['--version'], { encoding: 'utf8' }), 'storesync 0.3.1\n');
  assert.equal(fs.statSync(got.path).mode & 0o777, 0o755);
  const again = await binary.resolveBinary(actions, cfg, deps);
  assert.equal(again.source, `tool cache ${path.dirname(got.path)}`);
  assert.equal(host.hits[ASSET], 1);
});

test('a checksum committed in the action is used, and must agree with the release', async (t) => {
  const { dir, env, cfg } = setup(t);
  const tgz = releaseTarball(dir, '0.3.1');
  const asset = 'storesync-0.3.1-x86_64-linux.tar.gz';
  const host = await withHost(t, { [ASSET]: tgz });
  const { actions } = actionsFor({ ...env, GITHUB_SERVER_URL: host.url });
  const deps = { fetchFn: fetch, exec: command.run, platform: 'linux', arch: 'x64', ghaCache: undefined };
  const got = await binary.resolveBinary(actions, cfg, { ...deps, checksums: { '0.3.1': { [asset]: sha256(tgz) } } });
  assert.equal(got.source, 'release v0.3.1, SHA-256 verified against the checksum in the action');

  const host2 = await withHost(t, { [ASSET]: tgz, [`${ASSET}.sha256`]: Buffer.from(`${'0'.repeat(64)}  ${asset}\n`) });
  await assert.rejects(
    binary.downloadRelease({
      server: host2.url, repo: 'owner/storesync', version: '0.3.1', arch: 'x86_64', fetchFn: fetch,
      checksums: { '0.3.1': { [asset]: sha256(tgz) } },
    }),
    (e) => e instanceof binary.VerifyError && /differs from the checksum committed in the action/.test(e.message),
  );
});

test('a tarball that does not match its checksum is refused, with no fallback to building', async (t) => {
  const { dir, env, cfg } = setup(t);
  const tgz = releaseTarball(dir, '0.3.1');
  const tampered = Buffer.from(tgz);
  tampered[tampered.length - 20] ^= 0xff;
  const host = await withHost(t, {
    [ASSET]: tampered,
    [`${ASSET}.sha256`]: Buffer.from(`${sha256(tgz)}  storesync-0.3.1-x86_64-linux.tar.gz\n`),
  });
  const { actions } = actionsFor({ ...env, GITHUB_SERVER_URL: host.url });
  let cargo = 0;
  const deps = {
    fetchFn: fetch, platform: 'linux', arch: 'x64', checksums: {}, ghaCache: undefined,
    exec: async () => { cargo++; return { code: 0, stdout: '' }; },
  };
  await assert.rejects(binary.resolveBinary(actions, cfg, deps), /SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}: refusing to run it/);
  assert.equal(cargo, 0);
  assert.equal(fs.existsSync(path.join(env.RUNNER_TOOL_CACHE, 'storesync', '0.3.1', 'x86_64.complete')), false);
  // No checksum anywhere is no better than a wrong one.
  const host2 = await withHost(t, { [ASSET]: tgz });
  await assert.rejects(
    binary.resolveBinary(actionsFor({ ...env, GITHUB_SERVER_URL: host2.url }).actions, cfg, deps),
    /no checksum to verify it against/,
  );
});

test('without a release, cargo install builds it, and the GitHub cache keeps the binary for the next run', async (t) => {
  const { dir, env, cfg } = setup(t);
  const host = await withHost(t, {}); // every download is a 404
  const svc = await cacheService();
  t.after(() => svc.close());
  const cargoCalls = [];
  const cargoEnvs = [];
  const exec = async (file, args, opts) => {
    if (file !== 'cargo') return command.run(file, args, { ...opts, log: () => {} });
    cargoCalls.push(args);
    cargoEnvs.push(opts.env);
    const root = args[args.indexOf('--root') + 1];
    fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
    fs.writeFileSync(path.join(root, 'bin', 'storesync'), fakeStoresync('0.3.1'), { mode: 0o755 });
    return { code: 0, stdout: '' };
  };
  const ghaCache = () => new GhaCache({ resultsUrl: `${svc.url}/`, token: svc.token, version: binary.BINARY_CACHE_VERSION });
  // The step's secrets: the inputs' copies and the cache service's token.
  const secrets = { 'INPUT_SIGN-KEY': 'ci-1:c2VjcmV0', 'INPUT_GITHUB-TOKEN': 'ghs_x', ACTIONS_RUNTIME_TOKEN: 'rt' };
  const runEnv = { ...env, ...secrets, PATH: process.env.PATH, GITHUB_SERVER_URL: host.url };
  const { actions, log } = actionsFor(runEnv);
  const deps = { fetchFn: fetch, exec, platform: 'linux', arch: 'x64', checksums: {}, ghaCache: ghaCache() };
  const got = await binary.resolveBinary(actions, cfg, deps);
  assert.equal(got.source, 'built from source (cargo install, tag v0.3.1)');
  assert.equal(cargoCalls.length, 1);
  const args = cargoCalls[0];
  assert.deepEqual(args.slice(0, 6), ['install', '--locked', '--git', `${host.url}/owner/storesync`, '--tag', 'v0.3.1']);
  assert.equal(args[args.length - 1], 'storesync');
  // cargo runs the build scripts of storesync's dependencies: none of the step's secrets.
  for (const k of Object.keys(secrets)) assert.equal(cargoEnvs[0][k], undefined, k);
  assert.equal(cargoEnvs[0].PATH, process.env.PATH);
  assert.match(log.join(''), /::warning::storesync 0.3.1: no release to download \(.*HTTP 404\); building it from source/);
  assert.match(log.join(''), /::group::cargo install storesync v0.3.1/);
  assert.deepEqual(svc.entries.map((e) => [e.key, e.done]), [['storesync-bin-0.3.1-x86_64-linux', true]]);

  // A new runner (empty tool cache): the binary comes from the GitHub cache, cargo is not run.
  const env2 = { ...runEnv, RUNNER_TOOL_CACHE: path.join(dir, 'tools2') };
  const got2 = await binary.resolveBinary(actionsFor(env2).actions, cfg, { ...deps, ghaCache: ghaCache() });
  assert.equal(got2.source, 'built by an earlier run (GitHub cache storesync-bin-0.3.1-x86_64-linux)');
  assert.equal(cargoCalls.length, 1);
  assert.equal(execFileSync(got2.path, ['--version'], { encoding: 'utf8' }), 'storesync 0.3.1\n');
});

test('cargo missing or failing is a clear error', async (t) => {
  const { env, cfg } = setup(t);
  const host = await withHost(t, {});
  const { actions } = actionsFor({ ...env, GITHUB_SERVER_URL: host.url });
  const base = { fetchFn: fetch, platform: 'linux', arch: 'x64', checksums: {}, ghaCache: undefined };
  await assert.rejects(
    binary.resolveBinary(actions, cfg, { ...base, exec: async () => ({ code: null, error: new Error('spawn cargo ENOENT') }) }),
    /cargo did not start \(spawn cargo ENOENT\); install a Rust toolchain first, or set the binary input/,
  );
  await assert.rejects(
    binary.resolveBinary(actions, cfg, { ...base, exec: async () => ({ code: 101, stdout: '' }) }),
    /cargo install storesync v0.3.1 failed \(exit 101\)/,
  );
});

test('a binary that names another version is refused', async (t) => {
  const { dir, env, cfg } = setup(t);
  const tgz = releaseTarball(dir, '0.3.1', { body: fakeStoresync('0.2.9') });
  const host = await withHost(t, {
    [ASSET]: tgz,
    [`${ASSET}.sha256`]: Buffer.from(`${sha256(tgz)}  storesync-0.3.1-x86_64-linux.tar.gz\n`),
  });
  const { actions } = actionsFor({ ...env, GITHUB_SERVER_URL: host.url });
  await assert.rejects(
    binary.resolveBinary(actions, cfg, { fetchFn: fetch, exec: command.run, platform: 'linux', arch: 'x64', checksums: {} }),
    /says `storesync 0.2.9` \(exit 0\), not storesync 0.3.1/,
  );
  assert.equal(fs.existsSync(path.join(env.RUNNER_TOOL_CACHE, 'storesync', '0.3.1', 'x86_64.complete')), false);
});

test('the binary input is used as it is; other platforms and a missing repository are errors', async (t) => {
  const { dir, env } = setup(t);
  const { actions } = actionsFor(env);
  const exe = path.join(dir, 'mine');
  fs.writeFileSync(exe, fakeStoresync('9.9.9'), { mode: 0o755 });
  assert.deepEqual(await binary.resolveBinary(actions, { binary: exe }), { path: exe, source: 'the binary input', version: '' });
  fs.chmodSync(exe, 0o644);
  await assert.rejects(binary.resolveBinary(actions, { binary: exe }), /input binary: .* is not an executable file \(EACCES\)/);
  await assert.rejects(binary.resolveBinary(actions, { binary: path.join(dir, 'none') }), /\(ENOENT\)/);
  await assert.rejects(
    binary.resolveBinary(actions, { version: '1.0.0', repository: 'o/r' }, { platform: 'darwin', arch: 'arm64' }),
    /released for Linux on x86_64 and aarch64, not darwin\/arm64; set the binary input/,
  );
  await assert.rejects(
    binary.resolveBinary(actions, { version: '1.0.0', repository: '' }, { platform: 'linux', arch: 'arm64' }),
    /no repository to fetch storesync from/,
  );
});

test('.sha256 files: sha256sum lines (text or binary mode), or the digest alone', () => {
  const h = 'AB'.repeat(32);
  const asset = 'storesync-1.0.0-x86_64-linux.tar.gz';
  assert.equal(binary.parseSha256(`${h}  ${asset}\n`, asset), h.toLowerCase());
  assert.equal(binary.parseSha256(`${'0'.repeat(64)}  other.tar.gz\n${h} *dist/${asset}\n`, asset), h.toLowerCase());
  assert.equal(binary.parseSha256(`${h}\n`, asset), h.toLowerCase());
  assert.throws(() => binary.parseSha256(`${h}  other.tar.gz\n`, asset), /no SHA-256 for/);
  assert.throws(() => binary.parseSha256('not a digest', asset), /no SHA-256 for/);
});

test('tar: ustar, GNU and pax archives; long names; only a regular file is taken', (t) => {
  const dir = tmpdir(t, 'binary-');
  for (const format of ['ustar', 'gnu', 'pax']) {
    const got = extractFile(releaseTarball(dir, '1.2.3', { format }), 'storesync');
    assert.equal(got.toString(), fakeStoresync('1.2.3'), format);
  }
  // A name past 100 bytes needs GNU's long-name record or a pax header.
  const long = path.join(dir, 'long');
  const deep = `${'d'.repeat(60)}/${'e'.repeat(60)}`;
  fs.mkdirSync(path.join(long, deep), { recursive: true });
  fs.writeFileSync(path.join(long, deep, 'storesync'), 'x');
  for (const format of ['gnu', 'pax']) {
    const tar = execFileSync('tar', [`--format=${format}`, '-C', long, '-cf', '-', deep]);
    const names = [...entries(tar)].map((e) => e.name);
    assert.ok(names.includes(`${deep}/storesync`), `${format}: ${names}`);
  }
  const link = path.join(dir, 'link');
  fs.mkdirSync(path.join(link, 'top'), { recursive: true });
  fs.symlinkSync('/bin/sh', path.join(link, 'top', 'storesync'));
  const tgz = zlib.gzipSync(execFileSync('tar', ['--format=ustar', '-C', link, '-cf', '-', 'top']));
  assert.throws(() => extractFile(tgz, 'storesync'), /top\/storesync is not a regular file/);
  assert.throws(() => extractFile(releaseTarball(dir, '1', { member: 'other' }), 'storesync'), /no storesync in the archive/);
  const bad = zlib.gunzipSync(releaseTarball(dir, '1'));
  bad[10] ^= 1;
  assert.throws(() => extractFile(zlib.gzipSync(bad), 'storesync'), /bad header checksum/);
});

test('the release archive scripts/dist.sh makes is one the action can open', (t) => {
  // dist/ holds an archive only after `just dist`; CI builds one (see .ci/run).
  const distDir = path.join(__dirname, '..', '..', 'dist');
  const archives = fs.existsSync(distDir) ? fs.readdirSync(distDir).filter((f) => f.endsWith('-linux.tar.gz')) : [];
  if (archives.length === 0) {
    t.skip('no dist/*.tar.gz (run just dist)');
    return;
  }
  for (const a of archives) {
    const tgz = fs.readFileSync(path.join(distDir, a));
    const sum = fs.readFileSync(path.join(distDir, `${a}.sha256`), 'utf8');
    assert.equal(binary.parseSha256(sum, a), sha256(tgz));
    const bin = extractFile(tgz, 'storesync');
    assert.equal(bin.subarray(0, 4).toString('latin1'), '\x7fELF');
  }
});
