//! A cache in an S3 bucket (AWS, or an S3-compatible server: SeaweedFS, MinIO, R2, ...) under
//! `s3://BUCKET/PREFIX/`, through the `object_store` crate.
//!
//! Configuration comes from the environment, read as the AWS CLI and `object_store` read it:
//! `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`, `AWS_ENDPOINT_URL_S3`), `AWS_REGION` (`us-east-1`
//! when unset), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, and the
//! other `AWS_*` names `object_store` knows (web identity, container credentials, timeouts
//! such as `AWS_TIMEOUT=60s`, ...). Requests are path-style (`ENDPOINT/BUCKET/KEY`) unless
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`; a plain-HTTP endpoint needs `AWS_ALLOW_HTTP=true`.
//!
//! The [`Storage`] trait is synchronous: the store owns a small tokio runtime and blocks on it
//! from the calling thread (from a thread of its own when called inside a runtime).
//!
//! How the operations map to requests, and what bounds memory:
//! - [`Storage::get`]: one GET; an object larger than `max` is refused on its length, before
//!   its body is read;
//! - [`Storage::get_range`]: ranged GETs of [`CHUNK`] bytes issued as the reader consumes,
//!   the next one fetched while the current one is read: at most two chunks per reader;
//! - [`Storage::put_if_absent`]: a create-only PUT (`If-None-Match: *`);
//! - [`Storage::writer`]: a multipart upload needs its key when it starts, and a pack's key
//!   (its hash) is known only at [`ObjectWriter::commit`]: so the first [`PART`] bytes are
//!   kept in memory and anything beyond is spooled to an unlinked file in `TMPDIR`. Commit
//!   starts the upload in the background (one create-only PUT, or a multipart upload of
//!   [`PART`]-byte parts, two in flight) and returns; at most [`UPLOADS`] uploads run at once
//!   (a further commit waits), and [`Storage::sync`] waits for all of them and reports the
//!   first failure. A failed multipart upload is aborted;
//! - [`Storage::list`]: `ListObjectsV2` with a delimiter, every page.
//!
//! Transient failures (5xx, 429, connection errors, timeouts of safe requests) are retried by
//! `object_store` with exponential backoff, at most [`RETRIES`] times within
//! [`RETRY_TIMEOUT`]. Once a request has failed for want of an answer (no connection, or
//! timeouts) after those retries, every later request of this store fails at once with that
//! cause instead of waiting as long again: a restore from a dead endpoint ends in bounded
//! time, each failed path reported. Errors name the object (`s3://bucket/prefix/key`) and the
//! cause.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutPayload, RetryConfig, WriteMultipart,
};
use tokio::task::JoinHandle;

use super::{check_key, ObjectWriter, Storage, StorageError};

/// Bytes per ranged GET of [`Storage::get_range`].
pub const CHUNK: u64 = 8 << 20;
/// Bytes per part of a multipart upload, and the most a writer keeps in memory.
pub const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Uploads in flight at once; a further [`ObjectWriter::commit`] waits for the oldest.
pub const UPLOADS: usize = 2;
/// Retries of a failed request (after the first attempt).
pub const RETRIES: usize = 5;
/// No retry starts later than this after a request's first attempt.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// A cache in an S3 bucket. See the module documentation.
pub struct S3Store {
    inner: Arc<Inner>,
    /// Uploads started by [`ObjectWriter::commit`], oldest first.
    uploads: Mutex<VecDeque<JoinHandle<Result<(), StorageError>>>>,
    /// The first failed upload: (object, kind, message).
    failed: Mutex<Option<(String, io::ErrorKind, String)>>,
    runtime: tokio::runtime::Runtime,
}

/// What background tasks share with the store.
struct Inner {
    store: AmazonS3,
    bucket: String,
    /// `""` or `a/b` (no slash at either end).
    prefix: String,
    /// For messages: where requests go.
    endpoint: String,
    /// Set once a request failed for want of an answer: later requests fail at once.
    down: Mutex<Option<String>>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl S3Store {
    /// The store for `s3://bucket/prefix`, configured from the process environment (see the
    /// module documentation). Nothing is requested yet.
    ///
    /// # Errors
    /// [`StorageError`] when the configuration is invalid (a plain-HTTP endpoint without
    /// `AWS_ALLOW_HTTP=true`, a secret without a key id, ...) or the prefix is not a valid key.
    pub fn open(bucket: &str, prefix: &str) -> Result<Self, StorageError> {
        Self::with_env(bucket, prefix, std::env::vars())
    }

    /// As [`S3Store::open`], with the `AWS_*` variables given instead of read from the
    /// environment (`("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")`, ...); other names are
    /// ignored.
    ///
    /// # Errors
    /// As [`S3Store::open`].
    pub fn with_env(
        bucket: &str,
        prefix: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StorageError> {
        let prefix = prefix.trim_matches('/').to_string();
        let here = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let invalid = |why: String| {
            StorageError(
                here.clone(),
                io::Error::new(io::ErrorKind::InvalidInput, why),
            )
        };
        if bucket.is_empty() || bucket.contains('/') {
            return Err(invalid("not a bucket name".into()));
        }
        if !prefix.is_empty() && !check_key(&prefix) {
            return Err(invalid(
                "the prefix must be `/`-separated names of letters, digits, `.`, `_` and `-`"
                    .into(),
            ));
        }
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|k| vars.get(*k).filter(|v| !v.is_empty()).cloned());
        if let Some(e) = &endpoint {
            let allowed = vars.get("AWS_ALLOW_HTTP").is_some_and(|v| truthy(v));
            if e.to_ascii_lowercase().starts_with("http://") && !allowed {
                return Err(invalid(format!(
                    "the endpoint {e} is plain HTTP: set AWS_ALLOW_HTTP=true to allow it"
                )));
            }
        }
        let region = vars
            .get("AWS_REGION")
            .or_else(|| vars.get("AWS_DEFAULT_REGION"))
            .cloned()
            .unwrap_or_else(|| "us-east-1".into());
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_read_timeout(Duration::from_secs(30))
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            });
        // As `AmazonS3Builder::from_env` does, over the defaults above.
        for (k, v) in &vars {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                if !matches!(key, AmazonS3ConfigKey::Bucket) {
                    b = b.with_config(key, v);
                }
            }
        }
        let store = b
            .build()
            .map_err(|e| invalid(format!("S3 configuration: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storesync-s3")
            .enable_all()
            .build()
            .map_err(|e| StorageError(here.clone(), e))?;
        Ok(S3Store {
            inner: Arc::new(Inner {
                store,
                bucket: bucket.to_string(),
                prefix,
                endpoint: endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
                down: Mutex::default(),
            }),
            uploads: Mutex::default(),
            failed: Mutex::default(),
            runtime,
        })
    }

    /// Run `f` on the runtime and wait for it. Inside another runtime (where blocking would
    /// stall its workers) the wait happens on a thread of its own.
    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.runtime.block_on(f))
                    .join()
                    .expect("S3 request thread panicked")
            })
        } else {
            self.runtime.block_on(f)
        }
    }

    /// Wait for the oldest upload and record its failure, if any.
    fn reap(&self, h: JoinHandle<Result<(), StorageError>>) {
        let r = self.block_on(h).unwrap_or_else(|e| {
            Err(StorageError(
                "S3 upload".into(),
                io::Error::other(format!("upload task failed: {e}")),
            ))
        });
        if let Err(e) = r {
            let mut failed = self.failed.lock().expect("failed upload");
            if failed.is_none() {
                *failed = Some((e.0, e.1.kind(), e.1.to_string()));
            }
        }
    }

    /// The first failed upload, as an error.
    fn upload_failure(&self) -> Result<(), StorageError> {
        match &*self.failed.lock().expect("failed upload") {
            Some((what, kind, msg)) => Err(StorageError(
                what.clone(),
                io::Error::new(*kind, format!("upload failed: {msg}")),
            )),
            None => Ok(()),
        }
    }

    /// Start uploading `body` as `key` once fewer than [`UPLOADS`] are in flight.
    fn start_upload(&self, key: &str, body: Body) -> Result<(), StorageError> {
        let mut q = self.uploads.lock().expect("uploads");
        while q.front().is_some_and(|h| h.is_finished()) || q.len() >= UPLOADS {
            let h = q.pop_front().expect("non-empty");
            self.reap(h);
        }
        self.upload_failure()?;
        let task = upload(self.inner.clone(), key.to_string(), body);
        q.push_back(self.runtime.spawn(task));
        Ok(())
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Uploads in flight finish (or are aborted) rather than being cut off.
        let _ = self.sync();
    }
}

/// Whether the error, or one it wraps, is a request that got no answer: no connection, a
/// timeout, a connection cut.
fn no_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        cur = err.source();
    }
    false
}

/// The HTTP status of a failed request, from the message `object_store` gives: it maps
/// 403 and 404 to their own variants for most requests, but not for listings.
fn http_status(msg: &str) -> Option<u16> {
    let start = msg.find("non-2xx status code: ")? + "non-2xx status code: ".len();
    msg.get(start..start + 3)?.parse().ok()
}

/// The text of element `tag` in a server's XML error body, if the message carries one.
fn xml_field<'a>(msg: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = msg.find(&open)? + open.len();
    let len = msg[start..].find(&format!("</{tag}>"))?;
    Some(&msg[start..start + len])
}

/// The S3 error code in a server's XML error body, if the message carries one.
fn s3_code(msg: &str) -> Option<&str> {
    xml_field(msg, "Code")
}

/// An `object_store` message with a server's XML error body replaced by its code and message.
fn brief(msg: &str) -> String {
    match msg.find("<?xml").or_else(|| msg.find("<Error>")) {
        Some(at) => {
            let mut out = msg[..at].trim_end_matches([' ', ':']).to_string();
            if let Some(code) = s3_code(msg) {
                out.push_str(&format!(": {code}"));
            }
            if let Some(m) = xml_field(msg, "Message") {
                out.push_str(&format!(": {m}"));
            }
            out
        }
        None => msg.to_string(),
    }
}

impl Inner {
    fn describe(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, true) => format!("s3://{}", self.bucket),
            (true, false) => format!("s3://{}/{key}", self.bucket),
            (false, true) => format!("s3://{}/{}", self.bucket, self.prefix),
            (false, false) => format!("s3://{}/{}/{key}", self.bucket, self.prefix),
        }
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        if !check_key(key) {
            return Err(StorageError(
                key.to_owned(),
                io::Error::new(io::ErrorKind::InvalidInput, "not a valid cache key"),
            ));
        }
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(full).map_err(|e| {
            StorageError(
                self.describe(key),
                io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            )
        })
    }

    /// Fail at once when an earlier request got no answer.
    fn check_up(&self, key: &str) -> Result<(), StorageError> {
        match &*self.down.lock().expect("down") {
            Some(cause) => Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "not tried: {} stopped answering earlier ({cause}); \
                         run again once it answers",
                        self.endpoint
                    ),
                ),
            )),
            None => Ok(()),
        }
    }

    /// An `object_store` error as a [`StorageError`] naming `key`, with a hint where one
    /// helps. A request that got no answer marks the endpoint as down.
    fn err(&self, key: &str, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        let what = self.describe(key);
        let raw = e.to_string();
        let msg = brief(&raw);
        let status = http_status(&raw);
        let denied = (
            io::ErrorKind::PermissionDenied,
            format!(
                "access denied by {}{}: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN) and the bucket's policy ({msg})",
                self.endpoint,
                s3_code(&raw).map(|c| format!(" ({c})")).unwrap_or_default()
            ),
        );
        let (kind, text) = match &e {
            E::NotFound { .. } => (io::ErrorKind::NotFound, format!("not found ({msg})")),
            E::Generic { .. } if status == Some(404) => {
                (io::ErrorKind::NotFound, format!("not found ({msg})"))
            }
            E::AlreadyExists { .. } | E::Precondition { .. } => (io::ErrorKind::AlreadyExists, msg),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => denied,
            E::Generic { .. } if matches!(status, Some(401 | 403)) => denied,
            E::NotSupported { .. } | E::NotImplemented { .. } => (io::ErrorKind::Unsupported, msg),
            _ if no_answer(&e) => {
                let mut down = self.down.lock().expect("down");
                if down.is_none() {
                    *down = Some(format!("a request for {what} got no answer after retries"));
                }
                (
                    io::ErrorKind::TimedOut,
                    format!("no answer from {} after retries ({msg})", self.endpoint),
                )
            }
            _ => (io::ErrorKind::Other, msg),
        };
        StorageError(what, io::Error::new(kind, text))
    }

    fn too_short(&self, key: &str, offset: u64, len: u64, size: u64) -> StorageError {
        StorageError(
            self.describe(key),
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {offset}+{len} is beyond the end ({size} bytes): truncated object"),
            ),
        )
    }

    async fn head_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.check_up(key)?;
        match self.store.head(&self.path(key)?).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Bytes `range` of `key`, all of them; also the object's size.
    async fn fetch(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<(Bytes, u64), StorageError> {
        self.check_up(key)?;
        let want = range.end - range.start;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let r = match self.store.get_opts(&self.path(key)?, opts).await {
            Ok(r) => r,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(self.err(key, e)),
            Err(e) => {
                // A range starting beyond the end is refused (416): say so plainly.
                let err = self.err(key, e);
                if let Ok(Some(size)) = self.head_size(key).await {
                    if range.end > size {
                        return Err(self.too_short(key, range.start, want, size));
                    }
                }
                return Err(err);
            }
        };
        let size = r.meta.size;
        if range.end > size {
            return Err(self.too_short(key, range.start, want, size));
        }
        let bytes = r.bytes().await.map_err(|e| self.err(key, e))?;
        if bytes.len() as u64 != want {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "asked for {want} bytes at {}, received {}",
                        range.start,
                        bytes.len()
                    ),
                ),
            ));
        }
        Ok((bytes, size))
    }
}

/// What a committed writer uploads.
enum Body {
    Memory(Vec<u8>),
    /// A spool file, positioned at its start, and its length.
    File(File, u64),
}

async fn upload(inner: Arc<Inner>, key: String, body: Body) -> Result<(), StorageError> {
    inner.check_up(&key)?;
    let path = inner.path(&key)?;
    match body {
        Body::Memory(data) => {
            let r = inner
                .store
                .put_opts(&path, PutPayload::from(data), PutMode::Create.into())
                .await;
            match r {
                // Content-addressed: an object already there holds these bytes.
                Ok(_)
                | Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(()),
                Err(e) => Err(inner.err(&key, e)),
            }
        }
        Body::File(file, len) => {
            // Content-addressed: an object of this size under this key holds these bytes.
            if inner.head_size(&key).await? == Some(len) {
                return Ok(());
            }
            let up = inner
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| inner.err(&key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(up, PART);
            let mut file = Some(file);
            let mut sent = 0u64;
            let spool_err = |e: io::Error| {
                StorageError(
                    inner.describe(&key),
                    io::Error::new(e.kind(), format!("reading the upload's spool file: {e}")),
                )
            };
            loop {
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = w.abort().await;
                    return Err(inner.err(&key, e));
                }
                let f = file.take().expect("spool file");
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(PART);
                    (&f).take(PART as u64)
                        .read_to_end(&mut buf)
                        .map(|_| (f, buf))
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
                let (f, part) = match read {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(spool_err(e));
                    }
                };
                if part.is_empty() {
                    break;
                }
                sent += part.len() as u64;
                file = Some(f);
                w.put(Bytes::from(part));
            }
            if sent != len {
                let _ = w.abort().await;
                return Err(spool_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{sent} bytes, {len} were written"),
                )));
            }
            w.finish().await.map_err(|e| inner.err(&key, e))?;
            Ok(())
        }
    }
}

/// A writer: the first [`PART`] bytes in memory, the rest in a spool file.
struct S3Writer<'a> {
    store: &'a S3Store,
    mem: Vec<u8>,
    spool: Option<File>,
    len: u64,
}

impl Write for S3Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.spool.is_none() && self.mem.len() + buf.len() <= PART {
            let need = self.mem.len() + buf.len();
            if need > self.mem.capacity() {
                self.mem
                    .reserve_exact((need * 2).clamp(need, PART) - self.mem.len());
            }
            self.mem.extend_from_slice(buf);
        } else {
            if self.spool.is_none() {
                let mut f = tempfile::tempfile().map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("creating an upload spool file in TMPDIR: {e}"),
                    )
                })?;
                f.write_all(&self.mem)?;
                self.mem = Vec::new();
                self.spool = Some(f);
            }
            self.spool.as_mut().expect("spool").write_all(buf)?;
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer<'_> {
    fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError> {
        let this = *self;
        this.store.inner.path(key)?;
        let body = match this.spool {
            None => Body::Memory(this.mem),
            Some(mut f) => {
                f.rewind()
                    .map_err(|e| StorageError(this.store.describe(key), e))?;
                Body::File(f, this.len)
            }
        };
        this.store.start_upload(key, body)
    }
}

/// A reader over a range, one [`CHUNK`] at a time, the next one fetched in the background.
struct S3Range<'a> {
    store: &'a S3Store,
    key: String,
    /// What is left of the chunk being read.
    buf: Bytes,
    /// Where the next chunk not yet requested starts, and the end of the range.
    next_off: u64,
    end: u64,
    next: Option<JoinHandle<Result<(Bytes, u64), StorageError>>>,
}

impl S3Range<'_> {
    fn prefetch(&mut self) {
        if self.next_off < self.end {
            let range = self.next_off..self.end.min(self.next_off + CHUNK);
            self.next_off = range.end;
            let inner = self.store.inner.clone();
            let key = self.key.clone();
            self.next = Some(
                self.store
                    .runtime
                    .spawn(async move { inner.fetch(&key, range).await }),
            );
        }
    }
}

impl Read for S3Range<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            let Some(h) = self.next.take() else {
                return Ok(0);
            };
            let (bytes, _) = self
                .store
                .block_on(h)
                .map_err(io::Error::other)?
                .map_err(|e| e.1)?;
            self.buf = bytes;
            self.prefetch();
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

impl Drop for S3Range<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.next.take() {
            h.abort();
        }
    }
}

impl Storage for S3Store {
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        let inner = &self.inner;
        let path = inner.path(key)?;
        inner.check_up(key)?;
        self.block_on(async {
            let r = inner
                .store
                .get_opts(&path, GetOptions::default())
                .await
                .map_err(|e| inner.err(key, e))?;
            let size = r.meta.size;
            let refuse = |why: String| {
                StorageError(
                    inner.describe(key),
                    io::Error::new(io::ErrorKind::InvalidData, why),
                )
            };
            if size > max {
                // Dropping the response leaves its body unread.
                return Err(refuse(format!(
                    "{size} bytes, more than the {max} an object of this kind may have"
                )));
            }
            let mut out = Vec::with_capacity(size as usize);
            let mut body = r.into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| inner.err(key, e))?;
                if (out.len() + chunk.len()) as u64 > size {
                    return Err(refuse("longer than its length said".into()));
                }
                out.extend_from_slice(&chunk);
            }
            if out.len() as u64 != size {
                return Err(refuse(format!(
                    "{} bytes received, its length said {size}",
                    out.len()
                )));
            }
            Ok(out)
        })
    }

    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        let inner = &self.inner;
        inner.path(key)?;
        let Some(end) = offset.checked_add(len) else {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("range {offset}+{len} overflows"),
                ),
            ));
        };
        if len == 0 {
            let size = self.size(key)?.ok_or_else(|| {
                StorageError(
                    self.describe(key),
                    io::Error::new(io::ErrorKind::NotFound, "not found"),
                )
            })?;
            if offset > size {
                return Err(inner.too_short(key, offset, len, size));
            }
            return Ok(Box::new(io::empty()));
        }
        // The first chunk now: a missing or short object is an error of this call.
        let first = offset..end.min(offset + CHUNK);
        let (buf, _size) = self.block_on(inner.fetch(key, first.clone()))?;
        let mut r = S3Range {
            store: self,
            key: key.to_string(),
            buf,
            next_off: first.end,
            end,
            next: None,
        };
        r.prefetch();
        Ok(Box::new(r))
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
        let inner = &self.inner;
        let path = inner.path(key)?;
        inner.check_up(key)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let r = self.block_on(inner.store.put_opts(&path, payload, PutMode::Create.into()));
        match r {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(inner.err(key, e)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        // A single PUT replaces an object atomically: readers see the old or the new one.
        let inner = &self.inner;
        let path = inner.path(key)?;
        inner.check_up(key)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        self.block_on(
            inner
                .store
                .put_opts(&path, payload, PutMode::Overwrite.into()),
        )
        .map(drop)
        .map_err(|e| inner.err(key, e))
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        self.upload_failure()?;
        Ok(Box::new(S3Writer {
            store: self,
            mem: Vec::new(),
            spool: None,
            len: 0,
        }))
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut q = self.uploads.lock().expect("uploads");
        while let Some(h) = q.pop_front() {
            self.reap(h);
        }
        self.upload_failure()
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let inner = &self.inner;
        let path = inner.path(prefix)?;
        inner.check_up(prefix)?;
        let listed = self
            .block_on(inner.store.list_with_delimiter(Some(&path)))
            .map_err(|e| match inner.err(prefix, e) {
                StorageError(what, e) if e.to_string().contains("NoSuchBucket") => StorageError(
                    what,
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the bucket {} does not exist ({e})", inner.bucket),
                    ),
                ),
                e => e,
            })?;
        let root = if inner.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", inner.prefix)
        };
        let mut out: Vec<String> = listed
            .objects
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(&root)?.to_string();
                check_key(&key).then_some(key)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.block_on(self.inner.head_size(key))
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let inner = &self.inner;
        let path = inner.path(key)?;
        inner.check_up(key)?;
        match self.block_on(inner.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(inner.err(key, e)),
        }
    }

    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let e = S3Store::with_env(
            "b",
            "p",
            env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("AWS_ALLOW_HTTP=true"), "{e}");
        S3Store::with_env(
            "b",
            "p",
            env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn keys_are_named_under_the_prefix() {
        let s = S3Store::with_env(
            "bkt",
            "/team/ci/",
            env(&[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]),
        )
        .unwrap();
        assert_eq!(s.describe("packs/x"), "s3://bkt/team/ci/packs/x");
        assert_eq!(s.inner.path("packs/x").unwrap().as_ref(), "team/ci/packs/x");
        assert!(s.get("../x", 1).is_err());
        let s = S3Store::with_env("bkt", "", env(&[])).unwrap();
        assert_eq!(s.describe("packs/x"), "s3://bkt/packs/x");
        assert!(S3Store::with_env("bkt", "a/../b", env(&[])).is_err());
    }

    #[test]
    fn server_errors_are_told_briefly() {
        let raw = "Generic S3 error: Error performing GET http://h/b in 2ms - Server returned \
                   non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>\
                   SignatureDoesNotMatch</Code><Message>The signature does not match.</Message>\
                   </Error>";
        assert_eq!(http_status(raw), Some(403));
        assert_eq!(s3_code(raw), Some("SignatureDoesNotMatch"));
        assert_eq!(
            brief(raw),
            "Generic S3 error: Error performing GET http://h/b in 2ms - Server returned non-2xx \
             status code: 403 Forbidden: SignatureDoesNotMatch: The signature does not match."
        );
        assert_eq!(brief("plain"), "plain");
    }

    #[test]
    fn a_dead_endpoint_fails_fast_after_the_first_request() {
        // Nothing listens on port 1 of loopback: connections are refused at once.
        let s = S3Store::with_env(
            "bkt",
            "p",
            env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ]),
        )
        .unwrap();
        let e = s.list("snapshots").unwrap_err();
        assert_eq!(e.1.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            e.to_string().contains("no answer from http://127.0.0.1:1"),
            "{e}"
        );
        let t = std::time::Instant::now();
        let e = s.get("index/x", 10).unwrap_err().to_string();
        assert!(e.contains("stopped answering earlier"), "{e}");
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
