//! The daemon's global lock, `<db>/big-lock`. Every store client (each daemon worker, the
//! daemon's own tools) holds it shared while it has the store open; a schema upgrade takes it
//! exclusively. A restore holds it shared, as a client, and so runs beside a running daemon;
//! only an exclusive holder makes it wait (or, without `--wait`, fail as busy). Guix takes it
//! with fcntl record locks (POSIX), Nix with flock(2); the two kinds do not conflict with
//! each other, so the flavour decides.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::store::layout::Flavor;
use crate::store::locks::{lock, LockMode};

/// Failure to take the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the store is busy: {0} is held exclusively (the daemon is upgrading its database, or an older storesync is restoring); pass --wait to wait for it")]
    Busy(PathBuf),
    #[error("locking {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0} is a symlink or of the wrong type: refusing to use it (the DB directory and the daemon's files in it must not be links elsewhere)")]
    NotAFile(PathBuf),
}

/// The held big-lock; released on drop.
#[derive(Debug)]
pub struct BigLock {
    file: File,
    flavor: Flavor,
}

impl BigLock {
    /// Take `path` exclusively, the way `flavor`'s daemon locks it for a schema upgrade;
    /// create it (mode 0600) if absent. With `wait`, block until it is free.
    ///
    /// # Errors
    /// [`LockError::Busy`] when held and `wait` is false; [`LockError::Io`] otherwise.
    pub fn acquire(path: &Path, flavor: Flavor, wait: bool) -> Result<Self, LockError> {
        Self::take(path, flavor, LockMode::Exclusive, wait)
    }

    /// Take `path` shared, as every daemon worker and store client does: granted while
    /// others hold it shared, refused only while someone holds it exclusively.
    ///
    /// # Errors
    /// As [`BigLock::acquire`].
    pub fn shared(path: &Path, flavor: Flavor, wait: bool) -> Result<Self, LockError> {
        Self::take(path, flavor, LockMode::Shared, wait)
    }

    /// Try to hold the lock exclusively instead of shared, without waiting: true when no
    /// one else holds it (no daemon worker, no other store client is running, and none can
    /// start until it is released). When refused, the lock is held shared again (a `flock`
    /// conversion is not atomic), waiting meanwhile for an exclusive holder to finish.
    ///
    /// # Errors
    /// Errors of `fcntl` / `flock` other than "held by another".
    pub fn try_exclusive(&self) -> io::Result<bool> {
        if lock(&self.file, self.flavor, LockMode::Exclusive, false)? {
            return Ok(true);
        }
        lock(&self.file, self.flavor, LockMode::Shared, true)?;
        Ok(false)
    }

    fn take(path: &Path, flavor: Flavor, mode: LockMode, wait: bool) -> Result<Self, LockError> {
        let io = |e: io::Error| LockError::Io(path.to_owned(), e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
            super::check_not_symlink(dir).map_err(|e| match e {
                super::DbError::NotAFile(p) => LockError::NotAFile(p),
                e => LockError::Io(dir.to_owned(), io::Error::other(e.to_string())),
            })?;
        }
        // Never through a symlink: the lock file is created if absent.
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => LockError::NotAFile(path.to_owned()),
            e => io(e.into()),
        })?;
        let file = File::from(fd);
        if !file.metadata().map_err(io)?.is_file() {
            return Err(LockError::NotAFile(path.to_owned()));
        }
        if lock(&file, flavor, mode, wait).map_err(io)? {
            Ok(BigLock { file, flavor })
        } else {
            Err(LockError::Busy(path.to_owned()))
        }
    }
}
