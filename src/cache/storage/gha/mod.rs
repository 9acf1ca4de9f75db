//! The GitHub Actions cache as a place for cache objects (`gha://SCOPE`), through the cache
//! service v2 that actions/cache@v4 uses (docs/REMOTE.md):
//!
//! - control plane: `POST {ACTIONS_RESULTS_URL}/twirp/github.actions.results.api.v1.
//!   CacheService/{CreateCacheEntry, FinalizeCacheEntryUpload, GetCacheEntryDownloadURL}`
//!   with `Authorization: Bearer $ACTIONS_RUNTIME_TOKEN`;
//! - data plane: Azure Blob through the signed URLs those calls return (uploads as Put Blob,
//!   or Put Block + Put Block List in blocks of [`GhaConfig::block_size`]; downloads as GET,
//!   with `Range` for part of an object, streamed).
//!
//! Each object (a pack, an index file, a snapshot file) is ONE cache entry. Its entry key is
//! `{scope}/{storage key}` (`storesync/packs/<id>.pack`), except a snapshot's, which embeds
//! the snapshot's user key so that the service's own prefix lookup finds snapshots by key,
//! as it finds actions/cache's archives: `{scope}/snap/{escaped user key}/{storage key}`.
//! The escaping ([`escape_user_key`]) keeps every byte of `[A-Za-z0-9._-]` and turns
//! every other byte into `%XX`, so it never produces `/` (the key's end) and a user-key
//! prefix escapes to a prefix of the escaped key. Every entry has the same `version`
//! ([`version`]), a namespace of ours.
//!
//! Invariants and limits:
//! - entries are immutable: a create of an existing entry is HTTP 409, which
//!   [`Storage::put_if_absent`] reports as `false` once a lookup shows the entry is readable;
//!   an entry reserved by a job that never finished it (which the service may never free)
//!   is not a success: the object is written as a replacement entry `{entry}~{stamp}`
//!   instead, which reads find (a snapshot's entry cannot be replaced: an error);
//! - the runtime API cannot list: [`Storage::list`] is an error and [`Storage::can_list`]
//!   false; snapshots are found with [`Storage::find_snapshots`]. A garbage collection uses
//!   [`Storage::listing_view`] instead: the same store listing one ref's entries through the
//!   REST API (`listing`);
//! - HTTP 429 waits as `Retry-After` says (exponential back-off without it), at most
//!   [`GhaConfig::max_throttle_wait`] in all for one request, then fails saying so; 500,
//!   502, 503, 504 and transport errors are retried a few times; 401 is the clear error
//!   "the runtime token expired or is missing";
//! - time is bounded: [`GhaConfig::timeout`] for a connection and an answer's head (a
//!   request that got none is retried only within it, and later requests to that host then
//!   fail at once), and a body may take that plus a second per [`MIN_RATE`] bytes;
//! - an evicted object (its entry still found, its blob 404) reads as not found
//!   ([`StorageError::is_not_found`]), so a restore skips what needs it;
//! - a writer spools to an anonymous temporary file (memory stays bounded by one block) and
//!   is uploaded by a background thread after [`ObjectWriter::commit`]; [`Storage::sync`]
//!   waits for those uploads and reports the first failure;
//! - deleting needs the REST API (`GITHUB_TOKEN` with `actions: write`, `GITHUB_REPOSITORY`,
//!   `GITHUB_API_URL`, and `GITHUB_REF` or `STORESYNC_GHA_REF` for the ref whose entries go):
//!   by entry id, at least [`DELETE_PACE`] apart; an entry already gone counts as deleted;
//!   a throttled REST call (429, or 403 with a spent rate limit) waits as it says.

mod blob;
mod config;
mod listing;
mod rest;
mod retry;
mod twirp;

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blob::{GhaWriter, Uploader};
use twirp::Stuck;

use super::{check_key, ObjectWriter, Storage, StorageError};

/// The scope of `gha://` without one.
pub const DEFAULT_SCOPE: &str = "storesync";
/// Longest entry key the service accepts.
pub const MAX_ENTRY_KEY: usize = 512;
/// Default of [`GhaConfig::max_throttle_wait`].
pub const DEFAULT_MAX_THROTTLE_WAIT: Duration = Duration::from_secs(600);
/// Default of [`GhaConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The slowest transfer accepted, in bytes a second: a body may take
/// [`GhaConfig::timeout`] plus one second per this many bytes (a server trickling a byte at a
/// time, each read answered before the timeout, would otherwise hold a restore for ever).
pub const MIN_RATE: u64 = 64 << 10;
/// The most a control-plane reply is read (`retry::body_text`), for its time bound.
const CONTROL_BODY: u64 = 64 << 10;
/// Default of [`GhaConfig::block_size`].
pub const DEFAULT_BLOCK_SIZE: usize = 4 << 20;
/// The twirp service path under `ACTIONS_RESULTS_URL`.
const SERVICE: &str = "twirp/github.actions.results.api.v1.CacheService";
/// Azure Blob API version sent with data-plane requests.
const X_MS_VERSION: &str = "2024-11-04";
/// Uploads queued behind the one in progress before `commit` waits (each a spooled file).
const UPLOAD_QUEUE: usize = 2;

pub use config::{
    check_scope, escape_user_key, open_gha, version, GhaConfig, RestConfig, ALL_REFS,
};
pub use listing::TOUCH_AFTER;
pub use rest::{RestEntry, DELETE_PACE, MAX_LISTED};

/// How long a body of `bytes` may take to send or receive: `timeout`, plus a second per
/// [`MIN_RATE`] bytes.
fn body_time(timeout: Duration, bytes: u64) -> Duration {
    timeout.saturating_add(Duration::from_secs(bytes / MIN_RATE))
}

fn invalid(what: &str, why: String) -> StorageError {
    StorageError(
        what.to_owned(),
        io::Error::new(io::ErrorKind::InvalidInput, why),
    )
}

/// A cache on the GitHub Actions cache service.
pub struct GhaStore {
    inner: Arc<Inner>,
    uploader: Mutex<Option<Uploader>>,
    /// A listing view ([`Storage::listing_view`]): lists through the REST API.
    listing: bool,
}

struct Inner {
    cfg: GhaConfig,
    version: String,
    agent: ureq::Agent,
    /// Download URLs from lookups, by entry key (a lookup costs a round trip).
    urls: Mutex<HashMap<String, String>>,
    /// Entry keys of snapshot files found or written, by storage key.
    snapshots: Mutex<HashMap<String, String>>,
    /// When the last REST delete was sent (they are paced one second apart).
    last_delete: Mutex<Option<Instant>>,
    /// The last stamp of a replacing put (strictly increasing).
    last_stamp: Mutex<u64>,
    /// Transfer figures: each attempt of [`Inner::send`], blob bytes.
    transfer: super::Transfer,
    /// Entries a REST listing showed, by entry key (a replacement under the key it
    /// replaces): what deletes, sizes and touches use instead of another request.
    listed: Mutex<HashMap<String, Vec<RestEntry>>>,
    /// The directories (`packs`, `index`, ...) listed so far.
    listed_dirs: Mutex<std::collections::HashSet<String>>,
    /// Hosts a request got no answer from (after its tries), with the cause: later requests
    /// to them fail at once.
    down: Mutex<HashMap<String, String>>,
}

fn other(what: &str, why: String) -> StorageError {
    StorageError(what.to_owned(), io::Error::other(why))
}

/// Whether `candidate` is `{entry}~{16 hex digits}`: a replacement written by
/// [`Storage::put`].
fn is_replacement_of(candidate: &str, entry: &str) -> bool {
    candidate
        .strip_prefix(entry)
        .and_then(|r| r.strip_prefix('~'))
        .is_some_and(|v| v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn not_found(what: &str) -> StorageError {
    StorageError(
        what.to_owned(),
        io::Error::new(io::ErrorKind::NotFound, "not in the GitHub Actions cache"),
    )
}

impl Drop for GhaStore {
    fn drop(&mut self) {
        if let Some(u) = self.uploader.get_mut().ok().and_then(Option::take) {
            let _ = u.finish();
        }
    }
}

impl std::fmt::Debug for GhaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GhaStore")
            .field("results_url", &self.inner.cfg.results_url)
            .field("scope", &self.inner.cfg.scope)
            .finish_non_exhaustive()
    }
}

impl GhaStore {
    /// A store on the service `cfg` names. Sends nothing yet.
    ///
    /// # Errors
    /// [`StorageError`] (`InvalidInput`) for a scope outside [`check_scope`].
    pub fn new(cfg: GhaConfig) -> Result<Self, StorageError> {
        if !check_scope(&cfg.scope) {
            return Err(invalid(
                &format!("gha://{}", cfg.scope),
                "a scope is 1 to 64 characters of A-Z a-z 0-9 . _ -".into(),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.timeout.min(Duration::from_secs(30))))
            .timeout_recv_response(Some(cfg.timeout))
            .timeout_recv_body(Some(body_time(cfg.timeout, CONTROL_BODY)))
            .timeout_per_read(Some(cfg.timeout))
            .timeout_per_write(Some(cfg.timeout))
            .user_agent(concat!("storesync/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(GhaStore {
            inner: Arc::new(Inner {
                cfg,
                version: version(),
                agent,
                urls: Mutex::default(),
                snapshots: Mutex::default(),
                last_delete: Mutex::new(None),
                last_stamp: Mutex::new(0),
                transfer: super::Transfer::default(),
                listed: Mutex::default(),
                listed_dirs: Mutex::default(),
                down: Mutex::default(),
            }),
            uploader: Mutex::default(),
            listing: false,
        })
    }

    /// [`GhaStore::new`] with [`GhaConfig::from_env`].
    ///
    /// # Errors
    /// As those.
    pub fn from_env(scope: &str) -> Result<Self, StorageError> {
        Self::new(GhaConfig::from_env(scope)?)
    }

    /// The configuration in use.
    pub fn config(&self) -> &GhaConfig {
        &self.inner.cfg
    }

    fn scope(&self) -> &str {
        &self.inner.cfg.scope
    }

    /// The entry key of an object: a snapshot's as found or written, else `{scope}/{key}`.
    fn entry(&self, key: &str) -> Result<String, StorageError> {
        if !check_key(key) {
            return Err(invalid(key, "not a valid cache key".into()));
        }
        if let Some(e) = self.inner.snapshots.lock().expect("snapshots").get(key) {
            return Ok(e.clone());
        }
        Ok(format!("{}/{key}", self.scope()))
    }

    /// The prefix of the entry keys of snapshots whose user key starts with `user_key`.
    fn snapshot_prefix(&self, user_key: &str) -> String {
        format!("{}/snap/{}", self.scope(), escape_user_key(user_key))
    }

    /// The storage key of a snapshot entry key of this scope.
    fn parse_snapshot_entry(&self, entry: &str) -> Option<String> {
        let rest = entry.strip_prefix(&format!("{}/snap/", self.scope()))?;
        let (_, key) = rest.split_once('/')?;
        (key.starts_with("snapshots/") && check_key(key)).then(|| key.to_owned())
    }
}

impl Storage for GhaStore {
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        self.read_whole(key, max)
    }

    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        self.read_range(key, offset, len)
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
        let entry = self.entry(key)?;
        self.inner.publish(
            &self.describe(key),
            &entry,
            data.len() as u64,
            &mut &data[..],
            Stuck::Replace,
        )
    }

    /// Entries cannot be replaced: each put is a new entry `{entry}~{time, 16 hex}` and a read
    /// takes the newest (the service's prefix lookup), so readers see the old object or the
    /// new one. The old entries stay until deleted (or evicted).
    fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let entry = self.entry(key)?;
        let stamp = self.inner.next_stamp();
        let what = self.describe(key);
        self.inner.forget(&entry);
        self.inner.publish(
            &what,
            &format!("{entry}~{stamp:016x}"),
            data.len() as u64,
            &mut &data[..],
            Stuck::Fail,
        )?;
        self.inner.forget(&entry);
        Ok(())
    }

    fn put_snapshot(&self, key: &str, user_key: &str, data: &[u8]) -> Result<bool, StorageError> {
        if !check_key(key) {
            return Err(invalid(key, "not a valid cache key".into()));
        }
        let entry = format!("{}/{key}", self.snapshot_prefix(user_key));
        let written = self.inner.publish(
            &self.describe(key),
            &entry,
            data.len() as u64,
            &mut &data[..],
            Stuck::Fail,
        )?;
        self.inner
            .snapshots
            .lock()
            .expect("snapshots")
            .insert(key.to_owned(), entry);
        Ok(written)
    }

    fn find_snapshots(
        &self,
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<Vec<String>>, StorageError> {
        let what = format!("gha://{} (snapshot lookup)", self.scope());
        let mut out = Vec::new();
        let wanted = std::iter::once(format!("{}/", self.snapshot_prefix(key)))
            .chain(restore_keys.iter().map(|k| self.snapshot_prefix(k)));
        for prefix in wanted {
            if prefix.len() > MAX_ENTRY_KEY {
                continue; // no entry can start with it
            }
            // The prefix as the key too: the service tries the key as a prefix as well, but
            // saying it as a restore key does not depend on that.
            if let Some((matched, _)) =
                self.inner
                    .lookup(&what, &prefix, std::slice::from_ref(&prefix))?
            {
                if !matched.starts_with(&prefix) {
                    continue;
                }
                if let Some(storage_key) = self.parse_snapshot_entry(&matched) {
                    self.inner
                        .snapshots
                        .lock()
                        .expect("snapshots")
                        .insert(storage_key.clone(), matched);
                    if !out.contains(&storage_key) {
                        out.push(storage_key);
                    }
                }
            }
        }
        Ok(Some(out))
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        let file = tempfile::tempfile()
            .map_err(|e| StorageError("a temporary file to spool an upload".into(), e))?;
        Ok(Box::new(GhaWriter {
            store: self,
            file,
            len: 0,
        }))
    }

    fn sync(&self) -> Result<(), StorageError> {
        let pending = self.uploader.lock().expect("uploader").take();
        match pending {
            Some(u) => u.finish(),
            None => Ok(()),
        }
    }

    fn remote(&self) -> bool {
        true
    }

    fn transfer(&self) -> Option<&super::Transfer> {
        Some(&self.inner.transfer)
    }

    /// False through the runtime API; true for a listing view (the REST API).
    fn can_list(&self) -> bool {
        self.listing
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        if self.listing {
            return self.list_entries(prefix);
        }
        Err(StorageError(
            self.describe(prefix),
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the GitHub Actions cache cannot list through the runtime API (listing needs \
                 the REST API and a GITHUB_TOKEN); snapshots are found by key",
            ),
        ))
    }

    /// From a listing when the entry was listed; else a lookup (unless one was made for this
    /// object already) and a HEAD of the blob: two round trips. An evicted blob counts as
    /// absent.
    fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        if let Some(size) = self.listed_size(key)? {
            return Ok(Some(size));
        }
        self.blob_size(key)
    }

    /// Through the REST API: the entry, and the replacements [`Storage::put`] made of it, in
    /// the configured ref's scope, by id; each delete at least a second after the one before.
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.delete_entries(key)
    }

    fn listing_view(&self) -> Option<Result<Box<dyn Storage>, StorageError>> {
        (!self.listing).then(|| self.view())
    }

    /// Entries last used more than [`TOUCH_AFTER`] ago (as listed) get a lookup and a
    /// one-byte ranged read.
    fn keep_alive(&self, keys: &[String]) -> Result<usize, StorageError> {
        self.touch_stale(keys)
    }

    fn describe(&self, key: &str) -> String {
        format!("gha://{}/{key}", self.scope())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_escape_into_prefix_preserving_entry_keys() {
        assert_eq!(escape_user_key("guix-x86_64.linux"), "guix-x86_64.linux");
        assert_eq!(escape_user_key("a/b,c d%é"), "a%2Fb%2Cc%20d%25%C3%A9");
        for (k, p) in [
            ("guix-linux-abc", "guix-linux-"),
            ("a b/c", "a b"),
            ("é", ""),
        ] {
            assert!(escape_user_key(k).starts_with(&escape_user_key(p)));
        }
        for k in ["a/b", "x,y", "%2F", "😀"] {
            let e = escape_user_key(k);
            assert!(!e.contains('/') && !e.contains(','), "{e}");
        }
        // Distinct keys, distinct escapes.
        assert_ne!(escape_user_key("%41"), escape_user_key("A"));
    }

    #[test]
    fn version_is_fixed() {
        assert_eq!(version().len(), 64);
        assert_eq!(version(), version());
    }

    #[test]
    fn scopes() {
        for ok in ["storesync", "a", "my-repo_x.1"] {
            assert!(check_scope(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "a,b", &"x".repeat(65)] {
            assert!(!check_scope(bad), "{bad}");
        }
    }

    #[test]
    fn snapshot_entries_parse_back() {
        let s = GhaStore::new(GhaConfig {
            results_url: "http://127.0.0.1:9/".into(),
            runtime_token: "t".into(),
            scope: "sc".into(),
            max_throttle_wait: Duration::from_secs(1),
            block_size: 4,
            tries: 1,
            retry_pause: Duration::ZERO,
            timeout: DEFAULT_TIMEOUT,
            rest: None,
        })
        .unwrap();
        assert_eq!(
            s.parse_snapshot_entry("sc/snap/guix%2Fx/snapshots/00-ab.snap"),
            Some("snapshots/00-ab.snap".into())
        );
        assert_eq!(
            s.parse_snapshot_entry("sc/snap//snapshots/00-ab.snap"),
            Some("snapshots/00-ab.snap".into())
        );
        assert_eq!(s.parse_snapshot_entry("other/snap/k/snapshots/x"), None);
        assert_eq!(s.parse_snapshot_entry("sc/snap/k/packs/x"), None);
        assert!(s.list("snapshots").is_err());
        assert!(!s.can_list());
        let e = s.delete("packs/x").unwrap_err().to_string();
        assert!(e.contains("GITHUB_TOKEN"), "{e}");
    }
}
