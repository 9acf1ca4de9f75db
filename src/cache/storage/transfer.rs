//! Transfer figures of a storage backend: bytes downloaded and uploaded, requests sent and
//! retries, counted by every backend as it works (shared atomic counters, reachable through
//! [`super::Storage::transfer`]) and printed by the commands in `--json` and their summaries.
//!
//! What counts, per backend:
//! - S3: every HTTP attempt is a request (counted below `object_store`'s retry loop, so a
//!   retried request counts each attempt); an attempt answered 5xx or 429, or that got no
//!   answer, is a retry (the request is tried again, unless it gave up); bytes uploaded are
//!   request bodies as sent (again on each attempt), bytes downloaded are object bytes
//!   received;
//! - GitHub Actions cache: every HTTP attempt (control plane and blob storage) is a request;
//!   a throttled (429), failed (5xx) or unanswered attempt tried again is a retry; bytes are
//!   those of blobs sent and received;
//! - local directory: every operation is a request, bytes are those read from and written to
//!   cache files; nothing is retried.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters, shared by a backend's threads and tasks.
#[derive(Debug, Default)]
pub struct Transfer {
    down: AtomicU64,
    up: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The counters at one moment (or the difference of two moments).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TransferFigures {
    /// Bytes received.
    pub bytes_downloaded: u64,
    /// Bytes sent.
    pub bytes_uploaded: u64,
    /// Requests (attempts) sent.
    pub requests: u64,
    /// Attempts that failed transiently and were (or would have been) tried again.
    pub retries: u64,
}

impl Transfer {
    /// `n` bytes received.
    pub fn downloaded(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }
    /// `n` bytes sent.
    pub fn uploaded(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
    }
    /// One request (attempt) sent.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    /// One attempt failed transiently.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    /// The figures now.
    pub fn figures(&self) -> TransferFigures {
        TransferFigures {
            bytes_downloaded: self.down.load(Ordering::Relaxed),
            bytes_uploaded: self.up.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

impl TransferFigures {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &TransferFigures) -> TransferFigures {
        TransferFigures {
            bytes_downloaded: self
                .bytes_downloaded
                .saturating_sub(earlier.bytes_downloaded),
            bytes_uploaded: self.bytes_uploaded.saturating_sub(earlier.bytes_uploaded),
            requests: self.requests.saturating_sub(earlier.requests),
            retries: self.retries.saturating_sub(earlier.retries),
        }
    }
}

/// A reader counting the bytes it hands out as downloaded.
pub struct Counted<'t, R> {
    /// The reader.
    pub inner: R,
    /// Where to count.
    pub transfer: &'t Transfer,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.transfer.downloaded(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_add_up_and_subtract() {
        let t = Transfer::default();
        t.request();
        t.downloaded(10);
        let a = t.figures();
        t.request();
        t.retry();
        t.uploaded(7);
        let mut r = Counted {
            inner: &b"abc"[..],
            transfer: &t,
        };
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        let b = t.figures();
        assert_eq!(
            b,
            TransferFigures {
                bytes_downloaded: 13,
                bytes_uploaded: 7,
                requests: 2,
                retries: 1
            }
        );
        assert_eq!(
            b.since(&a),
            TransferFigures {
                bytes_downloaded: 3,
                bytes_uploaded: 7,
                requests: 1,
                retries: 1
            }
        );
    }
}
