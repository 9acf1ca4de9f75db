//! Where cache files live, behind one trait that speaks in objects, so that a local directory
//! and an object store (S3, the GitHub Actions cache) are interchangeable. Keys are
//! `/`-separated relative names such as `packs/<id>.pack`; [`check_key`] says which are valid.
//!
//! Invariants every backend keeps (and [`conformance`] checks):
//! - a reader sees a whole object or none: [`ObjectWriter::commit`] and [`Storage::put`]
//!   publish atomically, and an uncommitted writer leaves nothing visible;
//! - objects are immutable once published: [`Storage::put_if_absent`] never replaces one
//!   (only [`Storage::put`] does, and only signature files, which are not content-addressed,
//!   are written with it);
//! - [`Storage::get`] never returns more than the `max` bytes the caller can afford, and
//!   never reads anything but a plain object (no device, FIFO or symlink behind a key);
//! - [`Storage::delete`] of a missing key succeeds (deletes are idempotent);
//! - a snapshot written with [`Storage::put_snapshot`] is found by its user key: through
//!   [`Storage::find_snapshots`] on a backend that cannot list ([`Storage::can_list`] false:
//!   the GitHub Actions cache), by listing `snapshots` on the others.

pub mod gha;
mod local;
mod s3;
pub mod transfer;

use std::io::{self, Read, Write};

pub use gha::GhaStore;
pub use local::LocalDir;
pub use s3::S3Store;
pub use transfer::{Transfer, TransferFigures};

/// An error of a storage backend, naming the key (or file) it failed on.
#[derive(Debug, thiserror::Error)]
#[error("cache storage {0}: {1}")]
pub struct StorageError(pub String, #[source] pub io::Error);

impl StorageError {
    /// Whether the object was absent.
    pub fn is_not_found(&self) -> bool {
        self.1.kind() == io::ErrorKind::NotFound
    }
}

/// An object being written: bytes go to a hidden place until [`ObjectWriter::commit`]
/// publishes them under a key. Dropping it uncommitted discards them.
pub trait ObjectWriter: Write + Send {
    /// Publish what was written as `key` (replacing nothing: content-addressed keys only).
    /// It is durable after the next [`Storage::sync`] (one sync for many large objects beats
    /// one each).
    ///
    /// # Errors
    /// [`StorageError`] naming the key.
    fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError>;
    /// Where the bytes go until committed, for messages (a local backend's scratch file).
    fn describe(&self) -> String {
        "a new object of the cache".into()
    }
}

/// The operations the cache needs from a place to keep objects.
pub trait Storage: Send + Sync {
    /// Read a whole object of at most `max` bytes.
    ///
    /// # Errors
    /// [`StorageError`]: absent ([`StorageError::is_not_found`]), larger than `max`, not a plain
    /// object, or unreadable.
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError>;
    /// A reader over `len` bytes at `offset` of an object; an error when the object is
    /// shorter than `offset + len`.
    ///
    /// # Errors
    /// As [`Storage::get`].
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError>;
    /// Publish `data` as `key` atomically and durably unless `key` exists; true when written.
    ///
    /// # Errors
    /// [`StorageError`].
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError>;
    /// Publish `data` as `key` atomically and durably, replacing what `key` held: only for
    /// the few objects that are not content-addressed (a snapshot's signature file). Readers
    /// see the old object or the new one, never a mix.
    ///
    /// The default refuses (`Unsupported`), so a backend that has not implemented it fails
    /// [`conformance`] rather than compiling with a silent gap.
    ///
    /// # Errors
    /// [`StorageError`].
    fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let _ = data;
        Err(StorageError(
            self.describe(key),
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this cache backend cannot replace objects",
            ),
        ))
    }
    /// A writer for a large object, published by [`ObjectWriter::commit`].
    ///
    /// # Errors
    /// [`StorageError`].
    fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError>;
    /// Make every object committed so far durable.
    ///
    /// # Errors
    /// [`StorageError`], including a failure of an earlier background write.
    fn sync(&self) -> Result<(), StorageError>;
    /// Keys under a prefix (a "directory" such as `snapshots`), sorted.
    ///
    /// # Errors
    /// [`StorageError`].
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Size of an object, or `None` when absent.
    ///
    /// # Errors
    /// [`StorageError`].
    fn size(&self, key: &str) -> Result<Option<u64>, StorageError>;
    /// Whether [`Storage::list`] works. A backend that cannot list (the GitHub Actions cache's
    /// runtime API) finds snapshots with [`Storage::find_snapshots`] instead, and the
    /// conformance suite checks it without listing. True by default.
    fn can_list(&self) -> bool {
        true
    }
    /// Publish the snapshot file `key` (create-only, as [`Storage::put_if_absent`]) whose
    /// snapshot has the user key `user_key`, so that [`Storage::find_snapshots`] finds it.
    /// By default a plain [`Storage::put_if_absent`]: a listing finds it.
    ///
    /// # Errors
    /// [`StorageError`], also when the backend cannot name an entry this long.
    fn put_snapshot(&self, key: &str, user_key: &str, data: &[u8]) -> Result<bool, StorageError> {
        let _ = user_key;
        self.put_if_absent(key, data)
    }
    /// The snapshot files a lookup by key finds, as actions/cache looks up entries: the newest
    /// written with user key `key`, then for each of `restore_keys` the newest whose user key
    /// starts with it (keys of files, in that order, without repeats; a miss adds nothing).
    /// `None` (the default) means "list `snapshots` and read their heads instead"; a backend
    /// that cannot list answers here.
    ///
    /// # Errors
    /// [`StorageError`].
    fn find_snapshots(
        &self,
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<Vec<String>>, StorageError> {
        let _ = (key, restore_keys);
        Ok(None)
    }
    /// A view of the same objects that can list, for a garbage collection, when this backend
    /// cannot ([`Storage::can_list`] false): the GitHub Actions cache lists and deletes
    /// through the REST API. `None` (the default) when there is none; `Some(Err)` when there
    /// is one but it is not configured (the error says what to set).
    ///
    /// # Errors
    /// [`StorageError`] inside `Some`, as said.
    fn listing_view(&self) -> Option<Result<Box<dyn Storage>, StorageError>> {
        None
    }
    /// Keep the live objects `keys` from being evicted for lack of use, for a backend that
    /// evicts idle objects (the GitHub Actions cache: 7 days unused); returns how many were
    /// touched. Nothing by default.
    ///
    /// # Errors
    /// [`StorageError`].
    fn keep_alive(&self, keys: &[String]) -> Result<usize, StorageError> {
        let _ = keys;
        Ok(0)
    }
    /// Remove an object; an absent one counts as removed.
    ///
    /// # Errors
    /// [`StorageError`].
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// A human-readable location for messages.
    fn describe(&self, key: &str) -> String;
    /// Whether a request costs a network round trip (reads are then planned and coalesced,
    /// see [`crate::cache::Cache::plan_reads`]). False by default.
    fn remote(&self) -> bool {
        false
    }
    /// The backend's transfer counters (see [`transfer`]); `None` for one that keeps none.
    fn transfer(&self) -> Option<&Transfer> {
        None
    }
    /// Scratch left behind by writers that were killed (a local backend's `tmp/` files of
    /// dead processes), for `verify` to report. Nothing by default.
    fn leftovers(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Whether `key` is a valid key: non-empty `/`-separated components of `[A-Za-z0-9._-]`, none
/// empty, `.` or `..`, nor starting with a dot.
pub fn check_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// The conformance suite every backend must pass, on an empty store. Public so that each
/// backend's tests (including those in `tests/`) run the same checks.
///
/// # Panics
/// When the backend does not conform.
pub fn conformance(s: &dyn Storage) {
    // Whole objects, create-only.
    assert!(s.put_if_absent("snapshots/a", b"hello world").unwrap());
    assert!(!s.put_if_absent("snapshots/a", b"other").unwrap());
    assert_eq!(s.get("snapshots/a", 100).unwrap(), b"hello world");
    assert!(s.get("snapshots/a", 5).is_err(), "larger than max");
    assert!(s.get("snapshots/b", 100).unwrap_err().is_not_found());
    // Replacing puts, for the few objects that are not content-addressed.
    s.put("snapshots/s.sig", b"one").unwrap();
    assert_eq!(s.get("snapshots/s.sig", 100).unwrap(), b"one");
    s.put("snapshots/s.sig", b"two, longer").unwrap();
    assert_eq!(s.get("snapshots/s.sig", 100).unwrap(), b"two, longer");
    s.put("snapshots/s.sig", b"3").unwrap();
    assert_eq!(s.get("snapshots/s.sig", 100).unwrap(), b"3");
    s.delete("snapshots/s.sig").unwrap();
    assert!(s.put("../s.sig", b"x").is_err(), "invalid key");
    // Ranges.
    let mut r = String::new();
    s.get_range("snapshots/a", 6, 5)
        .unwrap()
        .read_to_string(&mut r)
        .unwrap();
    assert_eq!(r, "world");
    assert!(s.get_range("snapshots/a", 6, 6).is_err());
    assert!(s.get_range("snapshots/a", u64::MAX, 2).is_err());
    assert_eq!(s.size("snapshots/a").unwrap(), Some(11));
    assert_eq!(s.size("snapshots/b").unwrap(), None);
    // Writers: invisible until committed, discarded when dropped. A backend that cannot list
    // says so with an error; what a listing would show is checked through `size`.
    let listed = |prefix: &str| -> Option<Vec<String>> {
        if s.can_list() {
            Some(s.list(prefix).unwrap())
        } else {
            assert!(s.list(prefix).is_err(), "cannot list, so an error");
            None
        }
    };
    let mut w = s.writer().unwrap();
    w.write_all(b"pack").unwrap();
    if let Some(l) = listed("packs") {
        assert!(l.is_empty());
    }
    assert_eq!(s.size("packs/p").unwrap(), None);
    w.commit("packs/p").unwrap();
    s.sync().unwrap();
    if let Some(l) = listed("packs") {
        assert_eq!(l, vec!["packs/p".to_string()]);
    }
    assert_eq!(s.get("packs/p", 100).unwrap(), b"pack");
    let mut dropped = s.writer().unwrap();
    dropped.write_all(b"never").unwrap();
    drop(dropped);
    // Commits after a sync are made durable by the next one.
    for name in ["packs/q", "packs/r"] {
        let mut w = s.writer().unwrap();
        w.write_all(name.as_bytes()).unwrap();
        w.commit(name).unwrap();
    }
    s.sync().unwrap();
    assert_eq!(s.get("packs/r", 100).unwrap(), b"packs/r");
    if let Some(l) = listed("packs") {
        assert_eq!(l.len(), 3);
    }
    for (name, size) in [("packs/p", 4), ("packs/q", 7), ("packs/r", 7)] {
        assert_eq!(s.size(name).unwrap(), Some(size), "{name}");
    }
    if let Some(l) = listed("nothing-here") {
        assert!(l.is_empty());
    }
    // Deletes are idempotent.
    s.delete("packs/q").unwrap();
    s.delete("packs/q").unwrap();
    assert_eq!(s.size("packs/q").unwrap(), None);
    if let Some(l) = listed("packs") {
        assert_eq!(l, vec!["packs/p".to_string(), "packs/r".to_string()]);
    }
    assert_eq!(s.size("packs/p").unwrap(), Some(4));
    // Snapshots are found by their user key: through `find_snapshots`, or by listing.
    assert!(s
        .put_snapshot("snapshots/c", "guix-linux-1", b"snap")
        .unwrap());
    assert!(!s
        .put_snapshot("snapshots/c", "guix-linux-1", b"snap")
        .unwrap());
    assert_eq!(s.get("snapshots/c", 100).unwrap(), b"snap");
    let found = |key: &str, restore: &[&str]| {
        let restore: Vec<String> = restore.iter().map(|r| r.to_string()).collect();
        s.find_snapshots(key, &restore).unwrap()
    };
    match found("guix-linux-1", &[]) {
        Some(keys) => {
            assert_eq!(keys, vec!["snapshots/c".to_string()]);
            assert_eq!(found("guix-linux-2", &["guix-linux-"]).unwrap(), keys);
            assert!(
                found("guix-linux", &[]).unwrap().is_empty(),
                "a key is no prefix"
            );
            assert!(found("guix-linux-2", &["nix-"]).unwrap().is_empty());
        }
        None => assert!(s.list("snapshots").unwrap().contains(&"snapshots/c".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        for ok in ["packs/ab.pack", "snapshots/x-y_z.snap", "a"] {
            assert!(check_key(ok), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", "a/.x", "a b", "a\0",
        ] {
            assert!(!check_key(bad), "{bad:?}");
        }
    }
}
