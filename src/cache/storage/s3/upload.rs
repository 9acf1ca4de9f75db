//! Writers of large objects (packs) and their uploads in the background: the first [`PART`]
//! bytes in memory, the rest spooled to an unlinked file; a create-only PUT or a multipart
//! upload per object, at most [`UPLOADS`] at once, failures kept for [`Storage::sync`].

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::task::JoinHandle;

use super::client::Inner;
use super::{S3Store, PART, PARTS_IN_FLIGHT, UPLOADS};
use crate::cache::storage::{ObjectWriter, Storage, StorageError};

impl S3Store {
    /// Wait for the oldest upload and record its failure, if any.
    pub(super) fn reap(&self, h: JoinHandle<Result<(), StorageError>>) {
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
    pub(super) fn upload_failure(&self) -> Result<(), StorageError> {
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
        // Content-addressed: an object already there holds these bytes.
        Body::Memory(data) => inner.create(&key, Bytes::from(data)).await.map(drop),
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
pub(super) struct S3Writer<'a> {
    pub(super) store: &'a S3Store,
    pub(super) mem: Vec<u8>,
    pub(super) spool: Option<File>,
    pub(super) len: u64,
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
