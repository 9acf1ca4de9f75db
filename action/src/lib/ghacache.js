'use strict';
// A small client of the GitHub Actions cache service v2 (what actions/cache@v4 uses), for
// one thing: keeping a storesync binary built by `cargo install` so that the next run of the
// job does not compile it again. The store itself goes to the cache through storesync
// (`gha://`), not through this.
//
// Control plane: POST {ACTIONS_RESULTS_URL}/twirp/github.actions.results.api.v1.CacheService/M
// with the runtime token; data plane: Azure Blob through the signed URLs it returns (one Put
// Blob: a binary is tens of MiB). Entries are immutable; a miss is `ok` false.

const SERVICE = 'twirp/github.actions.results.api.v1.CacheService';

class GhaCacheError extends Error {}

class GhaCache {
  /**
   * @param {{resultsUrl: string, token: string, version: string, fetchFn?: typeof fetch}} o
   */
  constructor({ resultsUrl, token, version, fetchFn = globalThis.fetch }) {
    this.base = resultsUrl.replace(/\/+$/, '');
    this.token = token;
    this.version = version;
    this.fetch = fetchFn;
  }

  /** The client for the runner's cache service, or undefined outside one. */
  static fromEnv(env, version, fetchFn) {
    if (!env.ACTIONS_RESULTS_URL || !env.ACTIONS_RUNTIME_TOKEN) return undefined;
    return new GhaCache({ resultsUrl: env.ACTIONS_RESULTS_URL, token: env.ACTIONS_RUNTIME_TOKEN, version, fetchFn });
  }

  async twirp(method, body) {
    const res = await this.fetch(`${this.base}/${SERVICE}/${method}`, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${this.token}`,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    let json = {};
    try {
      json = text ? JSON.parse(text) : {};
    } catch {
      // An error page; the status says enough.
    }
    return { status: res.status, json };
  }

  /** The entry's contents (by exact key), or undefined for a miss. */
  async get(key) {
    const r = await this.twirp('GetCacheEntryDownloadURL', { key, restore_keys: [], version: this.version });
    if (r.status !== 200) throw new GhaCacheError(`cache lookup of ${key}: HTTP ${r.status}`);
    if (!r.json.ok || !r.json.signed_download_url) return undefined;
    const res = await this.fetch(r.json.signed_download_url);
    if (res.status === 404) return undefined; // evicted since the lookup
    if (!res.ok) throw new GhaCacheError(`cache download of ${key}: HTTP ${res.status}`);
    return Buffer.from(await res.arrayBuffer());
  }

  /** Store `data` under `key`; false when the entry exists already. */
  async put(key, data) {
    const c = await this.twirp('CreateCacheEntry', { key, version: this.version });
    if (c.status === 409) return false;
    if (c.status !== 200 || !c.json.ok || !c.json.signed_upload_url) {
      throw new GhaCacheError(`cache entry ${key}: HTTP ${c.status} ${JSON.stringify(c.json)}`);
    }
    const up = await this.fetch(c.json.signed_upload_url, {
      method: 'PUT',
      headers: {
        'x-ms-blob-type': 'BlockBlob',
        'x-ms-version': '2021-08-06',
        'Content-Type': 'application/octet-stream',
        'Content-Length': String(data.length),
      },
      body: data,
    });
    if (!up.ok) throw new GhaCacheError(`cache upload of ${key}: HTTP ${up.status}`);
    const f = await this.twirp('FinalizeCacheEntryUpload', {
      key,
      size_bytes: String(data.length),
      version: this.version,
    });
    if (f.status !== 200 || !f.json.ok) {
      throw new GhaCacheError(`cache finalize of ${key}: HTTP ${f.status} ${JSON.stringify(f.json)}`);
    }
    return true;
  }
}

module.exports = { GhaCache, GhaCacheError, SERVICE };
