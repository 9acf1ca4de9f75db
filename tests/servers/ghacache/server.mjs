// A GitHub Actions cache service (v2) for tests, on loopback only: the twirp control plane
// (CreateCacheEntry, FinalizeCacheEntryUpload, GetCacheEntryDownloadURL), the REST calls that
// list and delete caches, and Azurite (Microsoft's Azure Blob emulator, started here as a
// child) as the real data plane behind SAS URLs signed with Azurite's published dev key.
//
// The official client (npm @actions/cache) saves and restores through it (tests/gha.rs,
// official_client.mjs); that is what makes it faithful. Behaviour copied from the service:
// entries (key, version) are immutable (409 already_exists); a lookup is the newest entry
// whose key equals `key`, else starts with `key`, else starts with each restore key in turn;
// a miss is HTTP 200 with `ok` absent; int64 fields are JSON strings; upload URLs are
// write-only (sp=cw), download URLs read-only (sp=r); an evicted blob stays in the index and
// its download is 404 BlobNotFound.
//
// Scopes: each entry belongs to a ref (the runtime token's: `refs/heads/main` unless set with
// POST /_admin/faults {"token": T, "ref": R}); a lookup sees the token's own ref first, then
// the default branch (refs/heads/main), and a create conflicts only within its own ref.
//
// REST (`/repos/{owner}/{repo}/actions/caches`): GET lists by `key` prefix and `ref`, sorted
// by `sort` (created_at, last_accessed_at, size_in_bytes) and `direction`, `per_page` (at
// most 100) a page; DELETE by id (`/caches/{id}`, 204, 404 when absent) or by `key` (and
// `ref`). At most one deletion a second per token: a faster one is 429 with Retry-After. A
// token named `read-only-*` may list but not delete (403, as a token without actions: write).
//   POST /_admin/rest_faults {"token": T, "rate_limit": N, "retry_after": S, "style": X}
//     the next N REST calls with token T are throttled: X "429" (Retry-After: S) or
//     "403-reset" (403, x-ratelimit-remaining: 0, x-ratelimit-reset: now + S);
//   POST /_admin/age {"prefix": P, "days": D}  entries whose key starts with P were last
//     used D days ago;
//   GET  /_admin/rest_calls?token=T   the REST calls made with T: [{method, path, status, at}].
//
// Usage: node server.mjs --azurite DIR/node_modules/.bin/azurite-blob --data DIR [--pid-file F]
// Prints one JSON line {"url": ..., "blob": ...} on stdout when ready. Exits when its stdin
// closes (the test process that started it ended) or on SIGTERM, stopping Azurite.
//
// Fault injection, per runtime token so parallel tests do not disturb each other:
//   POST /_admin/faults {"token": T, "rate_limit": N, "retry_after": S, "unauthorized": N,
//                        "conflict": N}
//     the next N twirp calls with token T answer 429 (Retry-After: S seconds), 401, or (for
//     CreateCacheEntry) 409 although no such entry exists (another job reserved it);
//   POST /_admin/evict {"prefix": P}  deletes the blobs of entries whose key starts with P
//     (the entries stay: the lookup succeeds, the download is 404);
//   POST /_admin/faults {"token": T, "exact_key_only": true}  the lookup's `key` matches
//     exactly only (GitHub documents it as a prefix too; a client must not depend on that);
//   GET  /_admin/calls?token=T        the twirp calls made with T: [{method, key, status, at}].

import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const blobSdk = require('@azure/storage-blob');

const ACCOUNT = 'devstoreaccount1';
// Azurite's published development key (not a secret: it is in Microsoft's documentation).
const ACCOUNT_KEY =
  'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const CONTAINER = 'actions-cache';
const SERVICE = '/twirp/github.actions.results.api.v1.CacheService/';

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- Azurite --------------------------------------------------------------------------------

const azuriteBin = arg('azurite');
const dataDir = arg('data');
if (!azuriteBin || !dataDir) {
  console.error('usage: server.mjs --azurite PATH --data DIR [--pid-file FILE]');
  process.exit(2);
}
const blobPort = await freePort();
fs.mkdirSync(dataDir, { recursive: true });
const azurite = spawn(
  azuriteBin,
  [
    '--blobHost', '127.0.0.1', '--blobPort', String(blobPort), '--location', dataDir,
    '--skipApiVersionCheck', '--disableTelemetry', '--silent',
  ],
  { stdio: ['ignore', 'ignore', fs.openSync(`${dataDir}/azurite.log`, 'a')] },
);
let stopping = false;
azurite.on('exit', (code) => {
  if (!stopping) {
    console.error(`azurite exited (${code}); see ${dataDir}/azurite.log`);
    process.exit(1);
  }
});
const pidFile = arg('pid-file');
function stop() {
  stopping = true;
  try { azurite.kill('SIGTERM'); } catch { /* gone */ }
  if (pidFile) fs.rmSync(pidFile, { force: true });
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();

const blobEndpoint = `http://127.0.0.1:${blobPort}/${ACCOUNT}`;
const credential = new blobSdk.StorageSharedKeyCredential(ACCOUNT, ACCOUNT_KEY);
const service = new blobSdk.BlobServiceClient(blobEndpoint, credential);
const container = service.getContainerClient(CONTAINER);
for (let i = 0; ; i++) {
  try {
    await container.createIfNotExists();
    break;
  } catch (e) {
    if (i > 100) throw e;
    await sleep(100);
  }
}

function sasUrl(blobName, permissions) {
  const now = Date.now();
  const sas = blobSdk.generateBlobSASQueryParameters(
    {
      containerName: CONTAINER,
      blobName,
      permissions: blobSdk.BlobSASPermissions.parse(permissions),
      startsOn: new Date(now - 5 * 60 * 1000),
      expiresOn: new Date(now + 60 * 60 * 1000),
      protocol: blobSdk.SASProtocol.HttpsAndHttp,
    },
    credential,
  ).toString();
  return `${blobEndpoint}/${CONTAINER}/${encodeURIComponent(blobName)}?${sas}`;
}

// ---- state ----------------------------------------------------------------------------------

const entries = []; // {id, key, version, ref, created, finalized, size, blob, accessed}
const DEFAULT_REF = 'refs/heads/main';
let nextId = 1;
let clock = 0; // strictly increasing creation stamps (ms resolution is too coarse for tests)
const faults = new Map(); // token -> {rate_limit, retry_after, unauthorized, conflict}
const calls = new Map(); // token -> [{method, key, status, at}]

function newest(list) {
  return list.reduce((a, b) => (a === null || b.created > a.created ? b : a), null);
}

function lookupIn(live, key, restoreKeys, keyAsPrefix) {
  const exact = newest(live.filter((e) => e.key === key));
  if (exact) return exact;
  for (const prefix of keyAsPrefix ? [key, ...restoreKeys] : restoreKeys) {
    const hit = newest(live.filter((e) => e.key.startsWith(prefix)));
    if (hit) return hit;
  }
  return null;
}

// The token's own ref first, then the default branch's.
function lookup(key, restoreKeys, version, keyAsPrefix, ref) {
  const live = entries.filter((e) => e.finalized && e.version === version);
  for (const scope of ref === DEFAULT_REF ? [ref] : [ref, DEFAULT_REF]) {
    const hit = lookupIn(live.filter((e) => e.ref === scope), key, restoreKeys, keyAsPrefix);
    if (hit) return hit;
  }
  return null;
}

const FIELDS = {
  CreateCacheEntry: ['metadata', 'key', 'version'],
  FinalizeCacheEntryUpload: ['metadata', 'key', 'size_bytes', 'version'],
  GetCacheEntryDownloadURL: ['metadata', 'key', 'restore_keys', 'version'],
};

function validKey(key) {
  return typeof key === 'string' && key.length > 0 && key.length <= 512 && !key.includes(',');
}

// ---- HTTP -----------------------------------------------------------------------------------

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(text);
}

function twirpError(res, status, code, msg, headers) {
  send(res, status, { code, msg }, headers);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function twirp(req, res, method) {
  const auth = req.headers.authorization || '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : '';
  let body;
  try {
    body = JSON.parse((await readBody(req)) || '{}');
  } catch {
    return twirpError(res, 400, 'malformed', 'the body is not JSON');
  }
  const log = calls.get(token) || [];
  calls.set(token, log);
  const record = (status) => log.push({ method, key: body.key, status, at: Date.now() });
  const f = faults.get(token) || {};
  const ref = f.ref || DEFAULT_REF;
  if (!token) {
    record(401);
    return twirpError(res, 401, 'unauthenticated', 'no runtime token');
  }
  if (f.unauthorized > 0) {
    f.unauthorized--;
    record(401);
    return twirpError(res, 401, 'unauthenticated', 'the token has expired');
  }
  if (f.rate_limit > 0) {
    f.rate_limit--;
    record(429);
    return twirpError(res, 429, 'resource_exhausted', 'too many requests',
      { 'retry-after': String(f.retry_after ?? 1) });
  }
  // Strict about field names (protojson's names, snake_case), so a client that misspells
  // one is caught here rather than silently ignored.
  const known = FIELDS[method];
  const unknown = known && Object.keys(body).find((k) => !known.includes(k));
  if (unknown) {
    record(400);
    return twirpError(res, 400, 'malformed', `unknown field ${unknown}`);
  }
  const { key, version } = body;
  if (method === 'CreateCacheEntry') {
    if (!validKey(key) || !version) {
      record(400);
      return twirpError(res, 400, 'invalid_argument', 'key or version invalid');
    }
    if (f.conflict > 0
      || entries.some((e) => e.key === key && e.version === version && e.ref === ref)) {
      if (f.conflict > 0) f.conflict--;
      record(409);
      return twirpError(res, 409, 'already_exists',
        'cache entry with the same key, version, and scope already exists');
    }
    const e = { id: nextId++, key, version, ref, created: ++clock, finalized: false, size: 0 };
    e.blob = `entry-${e.id}`;
    entries.push(e);
    record(200);
    return send(res, 200, { ok: true, signed_upload_url: sasUrl(e.blob, 'cw') });
  }
  if (method === 'FinalizeCacheEntryUpload') {
    const e = entries.find((x) => x.key === key && x.version === version && x.ref === ref
      && !x.finalized);
    if (!e) {
      record(404);
      return twirpError(res, 404, 'not_found', 'no reserved cache entry with this key');
    }
    // int64 travels as a JSON string (a number is accepted too).
    if (!/^\d+$/.test(String(body.size_bytes ?? '0'))) {
      record(400);
      return twirpError(res, 400, 'malformed', 'size_bytes is not an int64');
    }
    const size = Number(body.size_bytes ?? 0);
    let props;
    try {
      props = await container.getBlobClient(e.blob).getProperties();
    } catch {
      record(400);
      return twirpError(res, 400, 'invalid_argument', 'nothing was uploaded for this entry');
    }
    if (props.contentLength !== size) {
      record(400);
      return twirpError(res, 400, 'invalid_argument',
        `size_bytes ${size} but ${props.contentLength} bytes were uploaded`);
    }
    e.finalized = true;
    e.size = size;
    e.accessed = Date.now();
    e.createdAt = e.accessed;
    record(200);
    return send(res, 200, { ok: true, entry_id: String(e.id) });
  }
  if (method === 'GetCacheEntryDownloadURL') {
    const restoreKeys = body.restore_keys || [];
    if (!validKey(key) || restoreKeys.some((k) => !validKey(k))) {
      record(400);
      return twirpError(res, 400, 'invalid_argument', 'a key is invalid');
    }
    const e = lookup(key, restoreKeys, version, !f.exact_key_only, ref);
    if (!e) {
      record(200);
      return send(res, 200, {}); // the service omits false: `ok` absent means a miss
    }
    e.accessed = Date.now();
    record(200);
    return send(res, 200, {
      ok: true, signed_download_url: sasUrl(e.blob, 'r'), matched_key: e.key,
    });
  }
  record(404);
  return twirpError(res, 404, 'bad_route', `no method ${method}`);
}

function restEntry(e) {
  return {
    id: e.id, ref: e.ref, key: e.key, version: e.version,
    last_accessed_at: new Date(e.accessed).toISOString(),
    created_at: new Date(e.createdAt).toISOString(), size_in_bytes: e.size,
  };
}

async function dropEntry(e) {
  entries.splice(entries.indexOf(e), 1);
  await container.getBlobClient(e.blob).deleteIfExists();
}

const restDeletes = [];
const restFaults = new Map(); // token -> {rate_limit, retry_after, style}
const restCalls = new Map(); // token -> [{method, path, status, at}]
const lastDelete = new Map(); // token -> ms of its last deletion

const SORTS = {
  created_at: (e) => e.created,
  last_accessed_at: (e) => e.accessed,
  size_in_bytes: (e) => e.size,
};

async function rest(req, res, url, cacheId) {
  const received = Date.now();
  const auth = req.headers.authorization || '';
  const m = auth.match(/^(?:Bearer|token) (\S+)$/);
  if (!m) {
    return send(res, 401, { message: 'Requires authentication' });
  }
  const token = m[1];
  const log = restCalls.get(token) || [];
  restCalls.set(token, log);
  const reply = (status, body, headers) => {
    log.push({ method: req.method, path: url.pathname + url.search, status, at: received });
    return send(res, status, body, headers);
  };
  const f = restFaults.get(token) || {};
  if (f.rate_limit > 0) {
    f.rate_limit--;
    const wait = f.retry_after ?? 1;
    if (f.style === '403-reset') {
      return reply(403, { message: 'API rate limit exceeded for installation.' }, {
        'x-ratelimit-limit': '1000', 'x-ratelimit-remaining': '0',
        'x-ratelimit-reset': String(Math.ceil(Date.now() / 1000) + wait),
      });
    }
    return reply(429, { message: 'You have exceeded a secondary rate limit.' },
      { 'retry-after': String(wait) });
  }
  const key = url.searchParams.get('key');
  const ref = url.searchParams.get('ref');
  const visible = (e) => e.finalized && (ref === null || e.ref === ref);
  if (req.method === 'GET' && cacheId === undefined) {
    const perPage = Math.min(Number(url.searchParams.get('per_page') || 30), 100);
    const page = Math.max(Number(url.searchParams.get('page') || 1), 1);
    const by = SORTS[url.searchParams.get('sort') || 'last_accessed_at'];
    if (!by) return reply(422, { message: 'Validation Failed: sort' });
    const asc = url.searchParams.get('direction') === 'asc';
    const all = entries
      .filter((e) => visible(e) && (key === null || e.key.startsWith(key)))
      .sort((a, b) => (asc ? 1 : -1) * (by(a) - by(b) || a.id - b.id));
    return reply(200, {
      total_count: all.length,
      actions_caches: all.slice((page - 1) * perPage, page * perPage).map(restEntry),
    });
  }
  if (req.method === 'DELETE') {
    if (token.startsWith('read-only')) {
      return reply(403, { message: 'Resource not accessible by integration' });
    }
    const now = received;
    if (now - (lastDelete.get(token) ?? 0) < 1000) {
      return reply(429, { message: 'You have exceeded a secondary rate limit.' },
        { 'retry-after': '1' });
    }
    lastDelete.set(token, now);
    restDeletes.push(now);
    const doomed = cacheId !== undefined
      ? entries.filter((e) => e.finalized && e.id === cacheId)
      : entries.filter((e) => visible(e) && e.key === key);
    if (doomed.length === 0) return reply(404, { message: 'Not Found' });
    for (const e of doomed) await dropEntry(e);
    if (cacheId !== undefined) return reply(204);
    return reply(200, { total_count: doomed.length, actions_caches: doomed.map(restEntry) });
  }
  return reply(405, { message: 'Method not allowed' });
}

async function admin(req, res, url) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  if (url.pathname === '/_admin/faults') {
    const f = faults.get(body.token) || {};
    for (const k of ['rate_limit', 'retry_after', 'unauthorized', 'conflict', 'exact_key_only',
      'ref']) {
      if (body[k] !== undefined) f[k] = body[k];
    }
    faults.set(body.token, f);
    return send(res, 200, f);
  }
  if (url.pathname === '/_admin/rest_faults') {
    const f = restFaults.get(body.token) || {};
    for (const k of ['rate_limit', 'retry_after', 'style']) {
      if (body[k] !== undefined) f[k] = body[k];
    }
    restFaults.set(body.token, f);
    return send(res, 200, f);
  }
  if (url.pathname === '/_admin/rest_calls') {
    return send(res, 200, restCalls.get(url.searchParams.get('token')) || []);
  }
  if (url.pathname === '/_admin/age') {
    const hit = entries.filter((e) => e.finalized && e.key.startsWith(body.prefix));
    for (const e of hit) e.accessed = Date.now() - body.days * 86400 * 1000;
    return send(res, 200, { aged: hit.map((e) => e.key) });
  }
  if (url.pathname === '/_admin/evict') {
    const hit = entries.filter((e) => e.finalized && e.key.startsWith(body.prefix));
    for (const e of hit) await container.getBlobClient(e.blob).deleteIfExists();
    return send(res, 200, { evicted: hit.map((e) => e.key) });
  }
  if (url.pathname === '/_admin/calls') {
    return send(res, 200, calls.get(url.searchParams.get('token')) || []);
  }
  if (url.pathname === '/_admin/entries') {
    return send(res, 200, entries.map((e) => ({ ...e })));
  }
  if (url.pathname === '/_admin/deletes') {
    return send(res, 200, restDeletes);
  }
  return send(res, 404, { message: 'no such admin call' });
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (req.method === 'POST' && url.pathname.startsWith(SERVICE)) {
      return await twirp(req, res, url.pathname.slice(SERVICE.length));
    }
    const m = url.pathname.match(/^\/repos\/[^/]+\/[^/]+\/actions\/caches(?:\/(\d+))?$/);
    if (m) return await rest(req, res, url, m[1] === undefined ? undefined : Number(m[1]));
    if (url.pathname.startsWith('/_admin/')) return await admin(req, res, url);
    return send(res, 404, { message: 'Not Found' });
  } catch (e) {
    return twirpError(res, 500, 'internal', String(e && e.stack ? e.stack : e));
  }
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  if (pidFile) fs.writeFileSync(pidFile, `${process.pid} ${azurite.pid}\n`);
  process.stdout.write(
    `${JSON.stringify({ url: `http://127.0.0.1:${port}/`, blob: blobEndpoint })}\n`,
  );
});
