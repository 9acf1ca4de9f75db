'use strict';
// The small GitHub Actions cache client that keeps a built binary, against a cache service
// on 127.0.0.1 (support/servers.js).

const assert = require('node:assert/strict');
const test = require('node:test');

const { GhaCache, GhaCacheError } = require('../src/lib/ghacache');
const { cacheService } = require('./support/servers');

test('put then get by exact key; an existing entry is not replaced; a miss is undefined', async (t) => {
  const svc = await cacheService();
  t.after(() => svc.close());
  const c = new GhaCache({ resultsUrl: `${svc.url}/`, token: svc.token, version: 'v1' });
  assert.equal(await c.get('storesync-bin-1'), undefined);
  assert.equal(await c.put('storesync-bin-1', Buffer.from('first')), true);
  assert.equal(await c.put('storesync-bin-1', Buffer.from('second')), false);
  assert.equal((await c.get('storesync-bin-1')).toString(), 'first');
  // No prefix matching for this client: only the exact key.
  assert.equal(await c.get('storesync-bin'), undefined);
  // Another version is another namespace.
  assert.equal(await new GhaCache({ resultsUrl: svc.url, token: svc.token, version: 'v2' }).get('storesync-bin-1'), undefined);
  assert.deepEqual(svc.calls, [
    'GetCacheEntryDownloadURL',
    'CreateCacheEntry',
    'FinalizeCacheEntryUpload',
    'CreateCacheEntry',
    'GetCacheEntryDownloadURL',
    'GetCacheEntryDownloadURL',
    'GetCacheEntryDownloadURL',
  ]);
});

test('an evicted blob reads as a miss; a bad token is an error', async (t) => {
  const svc = await cacheService();
  t.after(() => svc.close());
  const c = new GhaCache({ resultsUrl: svc.url, token: svc.token, version: 'v1' });
  await c.put('k', Buffer.from('x'));
  svc.entries[0].blob = undefined;
  assert.equal(await c.get('k'), undefined);
  const bad = new GhaCache({ resultsUrl: svc.url, token: 'expired', version: 'v1' });
  await assert.rejects(bad.get('k'), (e) => e instanceof GhaCacheError && /HTTP 401/.test(e.message));
  await assert.rejects(bad.put('k2', Buffer.from('x')), /HTTP 401/);
});

test('only inside a runner that offers the cache service', () => {
  assert.equal(GhaCache.fromEnv({}, 'v'), undefined);
  assert.equal(GhaCache.fromEnv({ ACTIONS_RESULTS_URL: 'https://r/' }, 'v'), undefined);
  const c = GhaCache.fromEnv({ ACTIONS_RESULTS_URL: 'https://r/', ACTIONS_RUNTIME_TOKEN: 't' }, 'v');
  assert.equal(c.base, 'https://r');
});
