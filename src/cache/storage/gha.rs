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
//!   [`Storage::put_if_absent`] reports as `false` once a lookup shows the entry is readable
//!   (an entry reserved by a job that never finished it is an error, not a success);
//! - the runtime API cannot list: [`Storage::list`] is an error and [`Storage::can_list`]
//!   false; snapshots are found with [`Storage::find_snapshots`];
//! - HTTP 429 waits as `Retry-After` says (exponential back-off without it), at most
//!   [`GhaConfig::max_throttle_wait`] in all for one request, then fails saying so; 500,
//!   502, 503, 504 and transport errors are retried a few times; 401 is the clear error
//!   "the runtime token expired or is missing";
//! - an evicted object (its entry still found, its blob 404) reads as not found
//!   ([`StorageError::is_not_found`]), so a restore skips what needs it;
//! - a writer spools to an anonymous temporary file (memory stays bounded by one block) and
//!   is uploaded by a background thread after [`ObjectWriter::commit`]; [`Storage::sync`]
//!   waits for those uploads and reports the first failure;
//! - deleting needs the REST API (`GITHUB_TOKEN` with `actions: write`, `GITHUB_REPOSITORY`,
//!   `GITHUB_API_URL`); deletes are at least one second apart.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;
use ureq::http;

use super::{check_key, ObjectWriter, Storage, StorageError};

/// The scope of `gha://` without one.
pub const DEFAULT_SCOPE: &str = "storesync";
/// Longest entry key the service accepts.
pub const MAX_ENTRY_KEY: usize = 512;
/// Default of [`GhaConfig::max_throttle_wait`].
pub const DEFAULT_MAX_THROTTLE_WAIT: Duration = Duration::from_secs(600);
/// Default of [`GhaConfig::block_size`].
pub const DEFAULT_BLOCK_SIZE: usize = 4 << 20;
/// The twirp service path under `ACTIONS_RESULTS_URL`.
const SERVICE: &str = "twirp/github.actions.results.api.v1.CacheService";
/// Azure Blob API version sent with data-plane requests.
const X_MS_VERSION: &str = "2024-11-04";
/// Uploads queued behind the one in progress before `commit` waits (each a spooled file).
const UPLOAD_QUEUE: usize = 2;

/// The `version` of every entry: hex SHA-256 of `storesync-v2` (actions/cache puts a hash of
/// paths and compression there; ours keeps our entries apart from theirs).
pub fn version() -> String {
    crate::hex::hex(&sha2::Sha256::digest(b"storesync-v2"))
}

/// Where and how to reach the cache service.
#[derive(Debug, Clone)]
pub struct GhaConfig {
    /// `ACTIONS_RESULTS_URL`.
    pub results_url: String,
    /// `ACTIONS_RUNTIME_TOKEN`.
    pub runtime_token: String,
    /// Prefix of every entry key: `[A-Za-z0-9._-]`, at most 64 bytes.
    pub scope: String,
    /// Longest total wait for one request that the service keeps throttling (HTTP 429);
    /// `STORESYNC_GHA_MAX_WAIT` in seconds.
    pub max_throttle_wait: Duration,
    /// Upload block size (Put Block); objects up to this size go up as one Put Blob.
    pub block_size: usize,
    /// Tries for a request failing with 500/502/503/504 or a transport error.
    pub tries: u32,
    /// First pause between those tries (doubled each time).
    pub retry_pause: Duration,
    /// The REST API, for deleting (and listing) entries, when a token is given.
    pub rest: Option<RestConfig>,
}

/// The GitHub REST API: `GET/DELETE /repos/{repository}/actions/caches`.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// `GITHUB_API_URL` (default `https://api.github.com`).
    pub api_url: String,
    /// `GITHUB_REPOSITORY`: `owner/name`.
    pub repository: String,
    /// `GITHUB_TOKEN`, with `actions: write` to delete.
    pub token: String,
}

fn invalid(what: &str, why: String) -> StorageError {
    StorageError(
        what.to_owned(),
        io::Error::new(io::ErrorKind::InvalidInput, why),
    )
}

/// Whether `scope` may name a scope: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn check_scope(scope: &str) -> bool {
    (1..=64).contains(&scope.len())
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl GhaConfig {
    /// The configuration a runner gives a JavaScript action: `ACTIONS_RESULTS_URL`,
    /// `ACTIONS_RUNTIME_TOKEN`; optionally `STORESYNC_GHA_MAX_WAIT` (seconds), and
    /// `GITHUB_TOKEN` with `GITHUB_REPOSITORY` (and `GITHUB_API_URL`) for deletes.
    ///
    /// # Errors
    /// [`StorageError`] (`InvalidInput`) for a bad scope or a missing variable, saying that
    /// only JavaScript actions receive the runtime variables.
    pub fn from_env(scope: &str) -> Result<Self, StorageError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let what = format!("gha://{scope}");
        let (Some(results_url), Some(runtime_token)) =
            (var("ACTIONS_RESULTS_URL"), var("ACTIONS_RUNTIME_TOKEN"))
        else {
            return Err(invalid(
                &what,
                "the GitHub Actions cache needs ACTIONS_RESULTS_URL and ACTIONS_RUNTIME_TOKEN; \
                 the runner gives them only to JavaScript (and Docker) actions, not to `run:` \
                 steps: export them from an actions/github-script step (see docs/REMOTE.md)"
                    .into(),
            ));
        };
        let max_throttle_wait = match var("STORESYNC_GHA_MAX_WAIT") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                invalid(
                    &what,
                    format!("STORESYNC_GHA_MAX_WAIT={s}: not a number of seconds"),
                )
            })?),
            None => DEFAULT_MAX_THROTTLE_WAIT,
        };
        let rest = match (var("GITHUB_TOKEN"), var("GITHUB_REPOSITORY")) {
            (Some(token), Some(repository)) => Some(RestConfig {
                api_url: var("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into()),
                repository,
                token,
            }),
            _ => None,
        };
        Ok(GhaConfig {
            results_url,
            runtime_token,
            scope: scope.to_owned(),
            max_throttle_wait,
            block_size: DEFAULT_BLOCK_SIZE,
            tries: 5,
            retry_pause: Duration::from_millis(500),
            rest,
        })
    }
}

/// Open the location `gha://{rest}`: `rest` is the scope (empty: [`DEFAULT_SCOPE`]; a
/// trailing `/` is ignored), the service comes from the environment
/// ([`GhaConfig::from_env`]).
///
/// # Errors
/// As [`GhaConfig::from_env`] and [`GhaStore::new`].
pub fn open_gha(rest: &str) -> Result<GhaStore, StorageError> {
    let scope = rest.strip_suffix('/').unwrap_or(rest);
    GhaStore::from_env(if scope.is_empty() {
        DEFAULT_SCOPE
    } else {
        scope
    })
}

/// Escape a snapshot's user key for an entry key: bytes of `[A-Za-z0-9._-]` stay, every
/// other byte becomes `%XX` (upper-case hex). Never produces `/` or `,`; the escape of a
/// prefix of `k` is a prefix of the escape of `k`.
pub fn escape_user_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A cache on the GitHub Actions cache service.
pub struct GhaStore {
    inner: Arc<Inner>,
    uploader: Mutex<Option<Uploader>>,
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
}

/// What the control plane said to a create.
enum Created {
    Url(String),
    Exists,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateReply {
    ok: bool,
    signed_upload_url: String,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FinalizeReply {
    ok: bool,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LookupReply {
    ok: bool,
    signed_download_url: String,
    matched_key: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TwirpError {
    code: String,
    msg: String,
}

/// One entry as the REST API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct RestEntry {
    /// The service's id of the entry.
    pub id: u64,
    /// Its entry key.
    pub key: String,
    /// Its version.
    pub version: String,
    /// Its size.
    #[serde(default)]
    pub size_in_bytes: u64,
    /// When it was last read (RFC 3339).
    #[serde(default)]
    pub last_accessed_at: String,
}

#[derive(Deserialize)]
struct RestPage {
    total_count: u64,
    actions_caches: Vec<RestEntry>,
}

fn other(what: &str, why: String) -> StorageError {
    StorageError(what.to_owned(), io::Error::other(why))
}

const TOKEN_EXPIRED: &str = "the runtime token expired or is missing (ACTIONS_RUNTIME_TOKEN): it \
                             lives about 6 hours and only JavaScript actions receive it";

/// Retry-After in seconds, at least one (the service sends seconds; an HTTP date is not
/// parsed). Never zero: a stream of "429, Retry-After: 0" must still use up the wait allowed.
fn retry_after(resp: &http::Response<ureq::Body>) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.max(1)))
}

fn body_text(resp: http::Response<ureq::Body>) -> String {
    resp.into_body()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default()
}

/// The message of an error reply: a twirp `{code, msg}`, else the first line of the body.
fn error_message(status: u16, text: &str) -> String {
    match serde_json::from_str::<TwirpError>(text) {
        Ok(e) if !e.code.is_empty() || !e.msg.is_empty() => {
            format!("HTTP {status} {}: {}", e.code, e.msg)
        }
        _ => {
            let line = text.lines().next().unwrap_or("").trim();
            let line: String = line.chars().take(300).collect();
            format!("HTTP {status} {line}")
        }
    }
}

impl Inner {
    /// Send a request built by `make` (again for each try), honouring 429 `Retry-After` within
    /// the configured total wait and retrying 500/502/503/504 and transport errors; returns
    /// the first other reply, whatever its status.
    fn send(
        &self,
        what: &str,
        make: &dyn Fn() -> Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        let mut throttled = Duration::ZERO;
        let mut backoff = Duration::from_secs(1);
        let mut failures = 0u32;
        let mut pause = self.cfg.retry_pause;
        loop {
            self.transfer.request();
            let why = match make() {
                Ok(resp) if resp.status().as_u16() == 429 => {
                    let wait = retry_after(&resp).unwrap_or_else(|| {
                        let b = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        b
                    });
                    let text = body_text(resp);
                    if throttled + wait > self.cfg.max_throttle_wait {
                        return Err(StorageError(
                            what.to_owned(),
                            io::Error::new(
                                io::ErrorKind::WouldBlock,
                                format!(
                                    "the GitHub Actions cache kept throttling ({}): waited {} s, \
                                     the next wait of {} s would pass the limit of {} s \
                                     (STORESYNC_GHA_MAX_WAIT); about 200 uploads a minute are \
                                     allowed per repository",
                                    error_message(429, &text),
                                    throttled.as_secs(),
                                    wait.as_secs(),
                                    self.cfg.max_throttle_wait.as_secs()
                                ),
                            ),
                        ));
                    }
                    // Visible on purpose: a wait of minutes must not look like a hang.
                    eprintln!(
                        "storesync: the GitHub Actions cache is throttling (HTTP 429) {what}; \
                         waiting {} s as it asks",
                        wait.as_secs_f32()
                    );
                    std::thread::sleep(wait);
                    throttled += wait;
                    self.transfer.retry();
                    continue;
                }
                Ok(resp) if [500, 502, 503, 504].contains(&resp.status().as_u16()) => {
                    let status = resp.status().as_u16();
                    let wait = retry_after(&resp);
                    let msg = error_message(status, &body_text(resp));
                    if let Some(w) = wait.filter(|w| throttled + *w <= self.cfg.max_throttle_wait) {
                        // Azure's 503 ServerBusy says how long to wait, like a 429.
                        std::thread::sleep(w);
                        throttled += w;
                        self.transfer.retry();
                        continue;
                    }
                    msg
                }
                Ok(resp) => return Ok(resp),
                Err(e) => format!("{e}"),
            };
            failures += 1;
            self.transfer.retry();
            if failures >= self.cfg.tries {
                return Err(other(what, format!("{why} (after {failures} tries)")));
            }
            std::thread::sleep(pause);
            pause *= 2;
        }
    }

    fn twirp_url(&self, method: &str) -> String {
        let base = self.cfg.results_url.trim_end_matches('/');
        format!("{base}/{SERVICE}/{method}")
    }

    /// One twirp call; `Ok(None)` for HTTP 409 (`already_exists`).
    fn twirp<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        what: &str,
        body: &serde_json::Value,
    ) -> Result<Option<T>, StorageError> {
        let url = self.twirp_url(method);
        let payload = serde_json::to_vec(body).expect("JSON of a JSON value");
        let resp = self.send(what, &|| {
            self.agent
                .post(&url)
                .header(
                    "Authorization",
                    &format!("Bearer {}", self.cfg.runtime_token),
                )
                .header("Content-Type", "application/json")
                .send(&payload[..])
        })?;
        let status = resp.status().as_u16();
        match status {
            200 => {
                let text = body_text(resp);
                let reply = serde_json::from_str(&text).map_err(|e| {
                    other(
                        what,
                        format!("{method}: the reply is not what the service sends: {e}"),
                    )
                })?;
                Ok(Some(reply))
            }
            409 => Ok(None),
            401 => Err(StorageError(
                what.to_owned(),
                io::Error::new(io::ErrorKind::PermissionDenied, TOKEN_EXPIRED),
            )),
            403 => Err(StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{method} refused: {}",
                        error_message(status, &body_text(resp))
                    ),
                ),
            )),
            _ => Err(other(
                what,
                format!("{method}: {}", error_message(status, &body_text(resp))),
            )),
        }
    }

    /// The newest entry whose key is `key` (or starts with it), else starts with one of
    /// `restore_keys` in order: (matched entry key, download URL).
    fn lookup(
        &self,
        what: &str,
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<(String, String)>, StorageError> {
        let mut body = serde_json::json!({ "key": key, "version": self.version });
        if !restore_keys.is_empty() {
            body["restore_keys"] = serde_json::json!(restore_keys);
        }
        let reply: LookupReply = self
            .twirp("GetCacheEntryDownloadURL", what, &body)?
            .unwrap_or_default();
        if !reply.ok || reply.signed_download_url.is_empty() {
            return Ok(None);
        }
        self.urls
            .lock()
            .expect("urls")
            .insert(reply.matched_key.clone(), reply.signed_download_url.clone());
        Ok(Some((reply.matched_key, reply.signed_download_url)))
    }

    /// The download URL of the entry `entry`, or of its newest replacement
    /// (`{entry}~{16 hex}`, see [`Storage::put`]); from an earlier lookup if any. One round
    /// trip, two when the service answers with another entry that starts with `entry`.
    fn url_of(&self, what: &str, entry: &str) -> Result<Option<String>, StorageError> {
        if let Some(u) = self.urls.lock().expect("urls").get(entry) {
            return Ok(Some(u.clone()));
        }
        let replaced = format!("{entry}~");
        let found = match self.lookup(what, entry, std::slice::from_ref(&replaced))? {
            Some((m, url)) if m == entry || is_replacement_of(&m, entry) => Some(url),
            Some(_) => match self.lookup(what, &replaced, std::slice::from_ref(&replaced))? {
                Some((m, url)) if is_replacement_of(&m, entry) => Some(url),
                _ => None,
            },
            None => None,
        };
        if let Some(u) = &found {
            self.urls
                .lock()
                .expect("urls")
                .insert(entry.to_owned(), u.clone());
        }
        Ok(found)
    }

    fn forget(&self, entry: &str) {
        self.urls.lock().expect("urls").remove(entry);
    }

    /// Create the entry, upload `size` bytes from `source`, finalize. False when the entry
    /// exists already and is readable.
    fn publish(
        &self,
        what: &str,
        entry: &str,
        size: u64,
        source: &mut dyn Read,
    ) -> Result<bool, StorageError> {
        if entry.len() > MAX_ENTRY_KEY {
            return Err(invalid(
                what,
                format!(
                    "the entry key would be {} characters, more than the {MAX_ENTRY_KEY} the \
                     GitHub Actions cache allows (use a shorter key or scope)",
                    entry.len()
                ),
            ));
        }
        let body = serde_json::json!({ "key": entry, "version": self.version });
        let url = match self.twirp::<CreateReply>("CreateCacheEntry", what, &body)? {
            None => Created::Exists,
            Some(r) if r.ok && !r.signed_upload_url.is_empty() => Created::Url(r.signed_upload_url),
            Some(r) => {
                return Err(StorageError(
                    what.to_owned(),
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("CreateCacheEntry refused: {}", r.message),
                    ),
                ))
            }
        };
        let url = match url {
            Created::Url(u) => u,
            Created::Exists => {
                // Readable: done. Not yet: another job (a parallel save of the same object)
                // may be uploading it right now; give it a few pauses to finish.
                let mut pause = self.cfg.retry_pause;
                for attempt in 1..=self.cfg.tries {
                    if self.url_of(what, entry)?.is_some() {
                        return Ok(false);
                    }
                    if attempt < self.cfg.tries {
                        std::thread::sleep(pause);
                        pause *= 2;
                    }
                }
                return Err(StorageError(
                    what.to_owned(),
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "the entry is reserved by another job that has not finished uploading \
                         it (or gave up); try again later",
                    ),
                ));
            }
        };
        self.upload(what, &url, size, source)?;
        let body = serde_json::json!({
            "key": entry,
            "version": self.version,
            "size_bytes": size.to_string(),
        });
        match self.twirp::<FinalizeReply>("FinalizeCacheEntryUpload", what, &body)? {
            Some(r) if r.ok => Ok(true),
            Some(r) => Err(other(
                what,
                format!("FinalizeCacheEntryUpload refused: {}", r.message),
            )),
            None => Err(other(what, "FinalizeCacheEntryUpload: HTTP 409".into())),
        }
    }

    /// Upload to a signed URL: one Put Blob up to a block, else Put Block per block and Put
    /// Block List. Memory: one block.
    fn upload(
        &self,
        what: &str,
        url: &str,
        size: u64,
        source: &mut dyn Read,
    ) -> Result<(), StorageError> {
        let block = self.cfg.block_size.max(1);
        let read_err = |e: io::Error| StorageError(what.to_owned(), e);
        if size <= block as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            source.take(size).read_to_end(&mut buf).map_err(read_err)?;
            if buf.len() as u64 != size {
                return Err(read_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spooled object is shorter than written",
                )));
            }
            return self.put(what, "Put Blob", url, &buf, true);
        }
        let mut buf = vec![0u8; block];
        let mut ids = Vec::new();
        let mut left = size;
        while left > 0 {
            let n = (left.min(block as u64)) as usize;
            source.read_exact(&mut buf[..n]).map_err(read_err)?;
            let id = base64::engine::general_purpose::STANDARD
                .encode(format!("storesync-block-{:08}", ids.len()));
            let block_url = format!("{url}&comp=block&blockid={}", percent(&id));
            self.put(what, "Put Block", &block_url, &buf[..n], false)?;
            ids.push(id);
            left -= n as u64;
        }
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for id in &ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        self.put(
            what,
            "Put Block List",
            &format!("{url}&comp=blocklist"),
            xml.as_bytes(),
            false,
        )
    }

    fn put(
        &self,
        what: &str,
        op: &str,
        url: &str,
        data: &[u8],
        blob: bool,
    ) -> Result<(), StorageError> {
        let resp = self.send(what, &|| {
            let mut r = self.agent.put(url).header("x-ms-version", X_MS_VERSION);
            if blob {
                r = r.header("x-ms-blob-type", "BlockBlob");
            }
            self.transfer.uploaded(data.len() as u64);
            r.send(data)
        })?;
        let status = resp.status().as_u16();
        if status == 201 || status == 200 {
            return Ok(());
        }
        Err(other(
            what,
            format!(
                "{op} to the cache's blob storage: {}",
                error_message(status, &body_text(resp))
            ),
        ))
    }

    /// GET an entry's blob (a range of it, or all), retrying once with a fresh URL when a
    /// remembered one was refused (signed URLs expire).
    fn download(
        &self,
        what: &str,
        entry: &str,
        range: Option<(u64, u64)>,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        for attempt in 0..2 {
            let Some(url) = self.url_of(what, entry)? else {
                return Err(not_found(what));
            };
            let resp = self.send(what, &|| {
                let mut r = self.agent.get(&url).header("x-ms-version", X_MS_VERSION);
                if let Some((offset, len)) = range {
                    r = r.header("Range", &format!("bytes={offset}-{}", offset + len - 1));
                }
                r.call()
            })?;
            let status = resp.status().as_u16();
            match status {
                200 | 206 => return Ok(resp),
                404 => {
                    self.forget(entry);
                    return Err(StorageError(
                        what.to_owned(),
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "evicted from the GitHub Actions cache ({})",
                                error_message(status, &body_text(resp))
                            ),
                        ),
                    ));
                }
                403 if attempt == 0 => {
                    self.forget(entry);
                    continue;
                }
                416 => {
                    return Err(StorageError(
                        what.to_owned(),
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the range is beyond the end of the object: truncated",
                        ),
                    ))
                }
                _ => {
                    return Err(other(
                        what,
                        format!(
                            "download from the cache's blob storage: {}",
                            error_message(status, &body_text(resp))
                        ),
                    ))
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn rest(&self, what: &str) -> Result<&RestConfig, StorageError> {
        self.cfg.rest.as_ref().ok_or_else(|| {
            StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "deleting from (or listing) the GitHub Actions cache needs the REST API: \
                     set GITHUB_TOKEN (with `actions: write`) and GITHUB_REPOSITORY",
                ),
            )
        })
    }

    /// Delete the entries keyed `entry` (all versions) through the REST API; absent is done.
    fn rest_delete(&self, what: &str, entry: &str) -> Result<(), StorageError> {
        let rest = self.rest(what)?;
        {
            let mut last = self.last_delete.lock().expect("last delete");
            if let Some(t) = *last {
                let since = t.elapsed();
                if since < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_secs(1) - since);
                }
            }
            *last = Some(Instant::now());
        }
        let url = format!(
            "{}/repos/{}/actions/caches",
            rest.api_url.trim_end_matches('/'),
            rest.repository
        );
        let resp = self.send(what, &|| {
            self.agent
                .delete(&url)
                .header("Authorization", &format!("Bearer {}", rest.token))
                .header("Accept", "application/vnd.github+json")
                .query("key", entry)
                .call()
        })?;
        self.forget(entry);
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.rest_status(what, resp)),
        }
    }

    fn rest_status(&self, what: &str, resp: http::Response<ureq::Body>) -> StorageError {
        let status = resp.status().as_u16();
        let msg = error_message(status, &body_text(resp));
        let kind = if status == 401 || status == 403 {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::Other
        };
        StorageError(
            what.to_owned(),
            io::Error::new(
                kind,
                format!("REST API: {msg} (the GITHUB_TOKEN needs `actions: write`)"),
            ),
        )
    }
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

/// Percent-encode base64 for a query string.
fn percent(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A background thread uploading committed writers one after the other; its first error
/// is reported by [`Storage::sync`].
struct Uploader {
    jobs: mpsc::SyncSender<(File, u64, String, String)>,
    thread: JoinHandle<Result<(), StorageError>>,
}

impl Uploader {
    fn start(inner: Arc<Inner>) -> io::Result<Self> {
        let (jobs, rx) = mpsc::sync_channel::<(File, u64, String, String)>(UPLOAD_QUEUE);
        let thread = std::thread::Builder::new()
            .name("gha-uploader".into())
            .spawn(move || {
                let mut first_error = Ok(());
                for (mut file, size, entry, what) in rx {
                    if first_error.is_err() {
                        continue;
                    }
                    let r = file
                        .rewind()
                        .map_err(|e| StorageError(what.clone(), e))
                        .and_then(|()| inner.publish(&what, &entry, size, &mut file));
                    if let Err(e) = r {
                        first_error = Err(e);
                    }
                }
                first_error
            })?;
        Ok(Uploader { jobs, thread })
    }

    fn finish(self) -> Result<(), StorageError> {
        drop(self.jobs);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(other("gha uploader", "the thread panicked".into())))
    }
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
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
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
            }),
            uploader: Mutex::default(),
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

    /// Every entry whose key starts with `prefix` (all versions), newest first, through the
    /// REST API (100 a page). For a garbage collection; needs [`GhaConfig::rest`].
    ///
    /// # Errors
    /// [`StorageError`]: no REST configuration, refused, or unreachable.
    pub fn rest_list(&self, prefix: &str) -> Result<Vec<RestEntry>, StorageError> {
        let what = format!("gha://{}/ (listing)", self.scope());
        let rest = self.inner.rest(&what)?;
        let url = format!(
            "{}/repos/{}/actions/caches",
            rest.api_url.trim_end_matches('/'),
            rest.repository
        );
        let mut out = Vec::new();
        for page in 1u32.. {
            let page_s = page.to_string();
            let resp = self.inner.send(&what, &|| {
                self.inner
                    .agent
                    .get(&url)
                    .header("Authorization", &format!("Bearer {}", rest.token))
                    .header("Accept", "application/vnd.github+json")
                    .query("key", prefix)
                    .query("per_page", "100")
                    .query("page", &page_s)
                    .call()
            })?;
            if resp.status().as_u16() != 200 {
                return Err(self.inner.rest_status(&what, resp));
            }
            let text = body_text(resp);
            let p: RestPage = serde_json::from_str(&text)
                .map_err(|e| other(&what, format!("REST API: unexpected reply: {e}")))?;
            let n = p.actions_caches.len();
            out.extend(p.actions_caches);
            if n == 0 || out.len() as u64 >= p.total_count {
                break;
            }
        }
        Ok(out)
    }
}

/// A writer spooling to an anonymous temporary file.
struct GhaWriter<'a> {
    store: &'a GhaStore,
    file: File,
    len: u64,
}

impl Write for GhaWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for GhaWriter<'_> {
    fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError> {
        let entry = self.store.entry(key)?;
        let what = self.store.describe(key);
        let mut slot = self.store.uploader.lock().expect("uploader");
        if slot.is_none() {
            *slot = Some(
                Uploader::start(Arc::clone(&self.store.inner))
                    .map_err(|e| StorageError(what.clone(), e))?,
            );
        }
        let up = slot.as_ref().expect("started above");
        up.jobs
            .send((self.file, self.len, entry, what.clone()))
            .map_err(|_| other(&what, "the upload thread stopped".into()))
    }
}

/// A reader of exactly `left` bytes of a response body.
struct ExactReader<'t> {
    body: ureq::BodyReader<'static>,
    left: u64,
    transfer: &'t super::Transfer,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.body.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the download ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        self.transfer.downloaded(n as u64);
        Ok(n)
    }
}

fn content_length(resp: &http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Storage for GhaStore {
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        let resp = self.inner.download(&what, &entry, None)?;
        if let Some(size) = content_length(&resp).filter(|&s| s > max) {
            return Err(StorageError(
                what,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{size} bytes, more than the {max} an object of this kind may have"),
                ),
            ));
        }
        let mut out = Vec::new();
        resp.into_body()
            .into_reader()
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| StorageError(what.clone(), e))?;
        self.inner.transfer.downloaded(out.len() as u64);
        if out.len() as u64 > max {
            return Err(StorageError(
                what,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than the {max} bytes an object of this kind may have"),
                ),
            ));
        }
        Ok(out)
    }

    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        let beyond = || {
            StorageError(
                what.clone(),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range {offset}+{len} is beyond the end of the object: truncated"),
                ),
            )
        };
        let Some(end) = offset.checked_add(len) else {
            return Err(beyond());
        };
        if len == 0 {
            return match self.size(key)? {
                Some(size) if end <= size => Ok(Box::new(io::empty())),
                Some(_) => Err(beyond()),
                None => Err(not_found(&what)),
            };
        }
        let resp = self.inner.download(&what, &entry, Some((offset, len)))?;
        let got = content_length(&resp);
        let whole_from_start = resp.status().as_u16() == 200 && offset == 0;
        if got.is_some_and(|g| g < len) || (resp.status().as_u16() == 200 && !whole_from_start) {
            return Err(beyond());
        }
        Ok(Box::new(ExactReader {
            body: resp.into_body().into_reader(),
            left: len,
            transfer: &self.inner.transfer,
        }))
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
        let entry = self.entry(key)?;
        self.inner.publish(
            &self.describe(key),
            &entry,
            data.len() as u64,
            &mut &data[..],
        )
    }

    /// Entries cannot be replaced: each put is a new entry `{entry}~{time, 16 hex}` and a read
    /// takes the newest (the service's prefix lookup), so readers see the old object or the
    /// new one. The old entries stay until deleted (or evicted).
    fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let entry = self.entry(key)?;
        let stamp = {
            let mut last = self.inner.last_stamp.lock().expect("stamp");
            *last = (crate::clock::now_nanos().max(0) as u64).max(*last + 1);
            *last
        };
        let what = self.describe(key);
        self.inner.forget(&entry);
        self.inner.publish(
            &what,
            &format!("{entry}~{stamp:016x}"),
            data.len() as u64,
            &mut &data[..],
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

    fn can_list(&self) -> bool {
        false
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Err(StorageError(
            self.describe(prefix),
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the GitHub Actions cache cannot list through the runtime API (listing needs \
                 the REST API and a GITHUB_TOKEN); snapshots are found by key",
            ),
        ))
    }

    /// Costs a lookup (unless one was made for this object already) and a HEAD of the blob:
    /// two round trips. An evicted blob counts as absent.
    fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        for attempt in 0..2 {
            let Some(url) = self.inner.url_of(&what, &entry)? else {
                return Ok(None);
            };
            let resp = self.inner.send(&what, &|| {
                self.inner
                    .agent
                    .head(&url)
                    .header("x-ms-version", X_MS_VERSION)
                    .call()
            })?;
            match resp.status().as_u16() {
                200 => {
                    return content_length(&resp).map(Some).ok_or_else(|| {
                        other(&what, "the blob storage sent no Content-Length".into())
                    })
                }
                404 => {
                    self.inner.forget(&entry);
                    return Ok(None);
                }
                403 if attempt == 0 => self.inner.forget(&entry),
                s => {
                    return Err(other(
                        &what,
                        format!("HEAD of the blob: {}", error_message(s, &body_text(resp))),
                    ))
                }
            }
        }
        Err(other(
            &what,
            "the blob storage refused the signed URL twice".into(),
        ))
    }

    /// Through the REST API: the entry, and the replacements [`Storage::put`] made of it;
    /// each delete at least a second after the one before.
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        self.inner.rest_delete(&what, &entry)?;
        for e in self.rest_list(&format!("{entry}~"))? {
            if is_replacement_of(&e.key, &entry) {
                self.inner.rest_delete(&what, &e.key)?;
            }
        }
        self.inner.forget(&entry);
        Ok(())
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
