//! The daemon's global lock, `<db>/big-lock`. Every daemon worker holds it shared while it
//! has the store open; restore holds it exclusively, so no worker can open the store while
//! paths are written and registered. Guix takes it with fcntl record locks (POSIX), Nix with
//! flock(2); the two kinds do not conflict with each other, so the flavour decides.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::store::layout::Flavor;

/// Failure to take the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the store is busy: {0} is held by a running daemon worker or another storesync (stop the daemon or its clients, or pass --wait)")]
    Busy(PathBuf),
    #[error("locking {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

/// The held big-lock; released on drop.
#[derive(Debug)]
pub struct BigLock {
    _file: File,
}

impl BigLock {
    /// Take `path` exclusively, the way `flavor`'s daemon locks it; create it (mode 0600) if
    /// absent. With `wait`, block until it is free.
    ///
    /// # Errors
    /// [`LockError::Busy`] when held and `wait` is false; [`LockError::Io`] otherwise.
    pub fn acquire(path: &Path, flavor: Flavor, wait: bool) -> Result<Self, LockError> {
        let io = |e: io::Error| LockError::Io(path.to_owned(), e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        let r = match flavor {
            Flavor::Guix => rustix::fs::fcntl_lock(&file, op),
            Flavor::Nix => rustix::fs::flock(&file, op),
        };
        match r {
            Ok(()) => Ok(BigLock { _file: file }),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => {
                Err(LockError::Busy(path.to_owned()))
            }
            Err(e) => Err(io(e.into())),
        }
    }
}
