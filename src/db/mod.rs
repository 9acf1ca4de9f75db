//! The daemon's SQLite database: read a consistent view of the valid paths, create a DB with
//! the schema of a flavour, and register restored paths in one transaction.
//!
//! Tables, as both daemons define them: `ValidPaths` (one row per valid store path: `hash` is
//! `sha256:<hex>` of the NAR, `narSize`, `registrationTime`, `deriver`; Nix adds `ultimate`,
//! `sigs`, `ca`), `Refs` (referrer → reference by row id, self-references included),
//! `DerivationOutputs` (for each `.drv`, its output names and paths). Guix also has
//! `FailedPaths`. The schema version lives in the `schema` file beside `db.sqlite`.
//!
//! Invariant kept by [`register`]: a path is inserted only after every path it refers to is
//! valid, and all of a restore's rows land in one transaction or none do.

mod files;
mod lock;
mod read;
mod register;
mod schema;
mod wait;

use std::io;
use std::path::PathBuf;

pub(crate) use files::check_not_symlink;
pub use files::give_to_owner;
pub use lock::{BigLock, LockError};
pub use read::{read, DbContents};
pub use register::{register, register_waiting, valid_paths, valid_paths_waiting};
pub use schema::{open_or_create, open_or_create_waiting, schema_sql};
pub use wait::{LockWait, DB_LOCK_WAIT};

/// Errors of the DB layer; each names the DB file.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {0}: {1}")]
    Sqlite(PathBuf, #[source] rusqlite::Error),
    #[error("database {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("database {0} does not exist (is this a {1} store? see --flavor, --root, --db-dir)")]
    Missing(PathBuf, &'static str),
    #[error("database {0}: path `{1}` is not a valid store path: {2}")]
    BadPath(PathBuf, String, crate::store::path::StorePathError),
    #[error("database {0}: path `{1}` has an unreadable hash `{2}`")]
    BadHash(PathBuf, String, String),
    #[error("database {0}: schema version {1} is not supported (want {2}); upgrade with the daemon first")]
    Schema(PathBuf, String, u32),
    #[error("database {0} exists but its version file {1} is missing or empty: refusing to change a database of unknown schema (let the daemon open it once, or move it aside)")]
    NoSchema(PathBuf, PathBuf),
    #[error("database {0} stayed locked by another process for {1} s: gave up (stop the other writer, such as a daemon's client or an sqlite3 shell, then run again)")]
    Busy(PathBuf, u64),
    #[error("{0} is a symlink or of the wrong type: refusing to use it (the DB directory and the daemon's files in it must not be links elsewhere)")]
    NotAFile(PathBuf),
    #[error("database {0}: `{1}` has the hash part of `{2}`, made valid by another process since the restore was planned (the daemons find paths by hash part): nothing registered")]
    HashPartTaken(PathBuf, String, String),
    #[error("database {0} cannot be read by this user: SQLite reads a WAL database only beside its -wal and -shm files, which no process holds open now and which this user may not create in its directory (run as root, e.g. with sudo, or as the directory's owner)")]
    ReadOnlyDirectory(PathBuf),
}

fn sql(db: &std::path::Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |e| DbError::Sqlite(db.to_owned(), e)
}
