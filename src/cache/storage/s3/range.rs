//! The reader of a range of an object: ranged GETs of [`CHUNK`] bytes issued as it is
//! consumed, the next one fetched in the background, so at most two chunks are held.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::{S3Store, CHUNK};
use crate::cache::storage::StorageError;

/// A reader over a range, one [`CHUNK`] at a time, the next one fetched in the background.
pub(super) struct S3Range<'a> {
    pub(super) store: &'a S3Store,
    pub(super) key: String,
    /// What is left of the chunk being read.
    pub(super) buf: Bytes,
    /// Where the next chunk not yet requested starts, and the end of the range.
    pub(super) next_off: u64,
    pub(super) end: u64,
    pub(super) next: Option<JoinHandle<Result<(Bytes, u64), StorageError>>>,
}

impl S3Range<'_> {
    pub(super) fn prefetch(&mut self) {
        if self.next_off < self.end {
            let range = self.next_off..self.end.min(self.next_off.saturating_add(CHUNK));
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
