//! The error policy.
//!
//! Each module has its own `thiserror` enum whose I/O variants carry the path or object they
//! failed on, so a message always says what failed, where, and (where it helps) what to do.
//! [`Error`] gathers them for the commands; only the CLI turns errors into text and exit codes:
//! 1 for failures (integrity, I/O), 2 for usage, 3 when the store is busy.

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::db::{DbError, LockError};
use crate::nar::NarError;

/// Any error of a storesync command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Integrity(String),
}

impl Error {
    /// The exit code the CLI uses for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Lock(LockError::Busy(_)) => 3,
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
