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
//! - [`Storage::put_if_absent`]: a create-only PUT (`If-None-Match: *`); an answer that the
//!   key exists counts only once a HEAD finds the object (AWS's 409 comes for a write in
//!   progress too, which may never complete);
//! - [`Storage::writer`]: a multipart upload needs its key when it starts, and a pack's key
//!   (its hash) is known only at [`ObjectWriter::commit`]: so the first [`PART`] bytes are
//!   kept in memory and anything beyond is spooled to an unlinked file in `TMPDIR`. Commit
//!   starts the upload in the background (one create-only PUT, or a multipart upload of
//!   [`PART`]-byte parts, two in flight) and returns; at most [`UPLOADS`] uploads run at once
//!   (a further commit waits), and [`Storage::sync`] waits for all of them and reports the
//!   first failure. A failed multipart upload is aborted;
//! - [`Storage::list`]: `ListObjectsV2` with a delimiter, every page;
//! - any reply that is not an object's bytes (a listing page, an error reply), which
//!   `object_store` reads whole before parsing, is refused beyond `client::MAX_REPLY` bytes.
//!
//! Transient failures (5xx, 429, connection errors, timeouts of safe requests) are retried by
//! `object_store` with exponential backoff, at most [`RETRIES`] times within
//! [`RETRY_TIMEOUT`]. Once a request has failed for want of an answer (no connection, or
//! timeouts) after those retries, every later request of this store fails at once with that
//! cause instead of waiting as long again: a restore from a dead endpoint ends in bounded
//! time, each failed path reported. Errors name the object (`s3://bucket/prefix/key`) and the
//! cause.

//!
//! Files: `client.rs` (configuration, requests, errors), `upload.rs` (writers and background
//! uploads), `range.rs` (the ranged reader).

mod client;
mod range;
mod upload;

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use tokio::task::JoinHandle;

use super::{check_key, ObjectWriter, Storage, StorageError, Transfer};
use client::Inner;
use range::S3Range;
use upload::S3Writer;

/// Bytes per ranged GET of [`Storage::get_range`].
pub const CHUNK: u64 = 8 << 20;
/// Bytes per part of a multipart upload, and the most a writer keeps in memory.
pub const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Uploads in flight at once; a further [`ObjectWriter::commit`] waits for the oldest.
pub const UPLOADS: usize = 2;
/// Create-only PUTs of one object answered "exists" while a HEAD finds nothing, at most (see
/// `Inner::create`).
pub const CREATE_TRIES: u32 = 5;
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

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
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
        let inner = Inner::configure(bucket, prefix, vars)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storesync-s3")
            .enable_all()
            .build()
            .map_err(|e| StorageError(inner.describe(""), e))?;
        Ok(S3Store {
            inner: Arc::new(inner),
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
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Uploads in flight finish (or are aborted) rather than being cut off.
        let _ = self.sync();
    }
}

/// The most objects a listing returns: beyond, it is an error (a server whose pages never end
/// would otherwise be listed until memory runs out). A cache of 100,000 paths holds a few
/// thousand files.
pub const MAX_LISTED: usize = 1_000_000;

/// The objects directly under `dir` (`ListObjectsV2` with `/` as delimiter), page by page: an
/// error, not an endless loop, when the server's continuation tokens repeat, its pages stop
/// bringing anything, or they pass [`MAX_LISTED`] objects.
async fn list_bounded(
    store: &object_store::aws::AmazonS3,
    dir: &object_store::path::Path,
) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
    use object_store::list::{PaginatedListOptions, PaginatedListStore};
    let prefix = format!("{dir}/");
    let refuse = |why: String| object_store::Error::Generic {
        store: "S3",
        source: why.into(),
    };
    let mut objects = Vec::new();
    let mut tokens = std::collections::HashSet::new();
    let mut token = None;
    let mut empty = 0;
    loop {
        let opts = PaginatedListOptions {
            delimiter: Some("/".into()),
            page_token: token.take(),
            ..PaginatedListOptions::default()
        };
        let page = store.list_paginated(Some(&prefix), opts).await?;
        let n = page.result.objects.len() + page.result.common_prefixes.len();
        objects.extend(page.result.objects);
        if objects.len() > MAX_LISTED {
            return Err(refuse(format!(
                "listing {prefix}: more than {MAX_LISTED} objects"
            )));
        }
        empty = if n == 0 { empty + 1 } else { 0 };
        match page.page_token {
            None => return Ok(objects),
            Some(t) if !tokens.insert(t.clone()) => {
                return Err(refuse(format!(
                    "listing {prefix}: the server gave the continuation token {t:?} twice"
                )))
            }
            Some(_) if empty > 3 => {
                return Err(refuse(format!(
                    "listing {prefix}: {empty} pages in a row brought nothing, and more are said to follow"
                )))
            }
            Some(t) => token = Some(t),
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
            let Some(out) = inner.body_within(key, r, size).await? else {
                return Err(refuse("longer than its length said".into()));
            };
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
        let first = offset..end.min(offset.saturating_add(CHUNK));
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
        inner.path(key)?;
        self.block_on(inner.create(key, Bytes::copy_from_slice(data)))
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
            .block_on(list_bounded(&inner.store, &path))
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

    fn remote(&self) -> bool {
        true
    }

    fn transfer(&self) -> Option<&Transfer> {
        Some(&self.inner.transfer)
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
