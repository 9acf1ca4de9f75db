'use strict';
// Servers on 127.0.0.1 for the download and cache tests: a release host (files at paths,
// counting requests), and the GitHub Actions cache service v2 as TEST-SERVERS.md describes
// it (twirp control plane, blob data plane through "signed" URLs, immutable entries, 409 on
// an existing entry, a miss as ok false, size_bytes as a string).

const http = require('node:http');

/** Start `handler` on a free loopback port; resolves to {url, close}. */
function listen(handler) {
  return new Promise((resolve) => {
    const server = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => handler(req, res, Buffer.concat(chunks)));
    });
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({ url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)), server });
    });
  });
}

/** A release host serving `files` (path → Buffer); `hits` counts requests per path. */
async function releaseHost(files) {
  const hits = {};
  const s = await listen((req, res) => {
    hits[req.url] = (hits[req.url] || 0) + 1;
    const body = files[req.url];
    if (body === undefined) {
      res.writeHead(404).end('Not Found');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/octet-stream' }).end(body);
  });
  return { ...s, hits };
}

const SERVICE = '/twirp/github.actions.results.api.v1.CacheService/';

/** The cache service; `token` is the runtime token it accepts. */
async function cacheService(token = 'runtime-token') {
  const entries = []; // {key, version, blob, size, done, created}
  let clock = 0;
  const calls = [];
  const json = (res, status, body) => res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
  const s = await listen((req, res, body) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname.startsWith(SERVICE) && req.method === 'POST') {
      const method = url.pathname.slice(SERVICE.length);
      calls.push(method);
      if (req.headers.authorization !== `Bearer ${token}`) return json(res, 401, { code: 'unauthenticated' });
      const b = JSON.parse(body.toString('utf8') || '{}');
      if (method === 'CreateCacheEntry') {
        if (entries.some((e) => e.key === b.key && e.version === b.version)) {
          return json(res, 409, { code: 'already_exists', msg: 'cache entry exists' });
        }
        const e = { key: b.key, version: b.version, id: entries.length, done: false, created: ++clock };
        entries.push(e);
        return json(res, 200, { ok: true, signed_upload_url: `${s.url}/blob/${e.id}?sp=cw` });
      }
      if (method === 'FinalizeCacheEntryUpload') {
        const e = entries.find((x) => x.key === b.key && x.version === b.version);
        if (!e || !e.blob || String(e.blob.length) !== b.size_bytes) return json(res, 200, { ok: false });
        e.done = true;
        return json(res, 200, { ok: true, entry_id: String(e.id + 1) });
      }
      if (method === 'GetCacheEntryDownloadURL') {
        const done = entries.filter((e) => e.done && e.version === b.version);
        let hit = done.find((e) => e.key === b.key);
        for (const p of b.restore_keys || []) {
          if (hit) break;
          hit = done.filter((e) => e.key.startsWith(p)).sort((x, y) => y.created - x.created)[0];
        }
        if (!hit) return json(res, 200, { ok: false });
        return json(res, 200, { ok: true, signed_download_url: `${s.url}/blob/${hit.id}?sp=r`, matched_key: hit.key });
      }
      return json(res, 404, { code: 'bad_route' });
    }
    const m = /^\/blob\/(\d+)$/.exec(url.pathname);
    const e = m && entries[Number(m[1])];
    if (!e) return res.writeHead(404).end('BlobNotFound');
    if (req.method === 'PUT') {
      if (url.searchParams.get('sp') !== 'cw' || req.headers['x-ms-blob-type'] !== 'BlockBlob') {
        return res.writeHead(400).end('bad upload');
      }
      e.blob = body;
      return res.writeHead(201).end();
    }
    if (req.method === 'GET' && url.searchParams.get('sp') === 'r' && e.blob) return res.writeHead(200).end(e.blob);
    return res.writeHead(404).end('BlobNotFound');
  });
  return { ...s, entries, calls, token };
}

module.exports = { listen, releaseHost, cacheService };
