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
    /// SQLite could not write the DB or the files it makes beside it (its `-wal` and `-shm`,
    /// even to read) and the file system holding them has almost no room left (SQLite says
    /// "database or disk is full", or a bare "disk I/O error"; its message is not kept, the
    /// cause is said instead): the DB's directory, the bytes free there.
    #[error("database {0}: the file system holding {1} is full ({2} bytes free): SQLite needs room there for the DB's -wal and -shm files, even to read it, and for a transaction's rows; nothing was changed in the DB (free some space on that file system, then run again)")]
    DeviceFull(PathBuf, PathBuf, u64),
    /// SQLite could not make a file beside the DB (its `-wal` or `-shm`, even to read; SQLite
    /// says "unable to open database file" or "disk I/O error") and the file system holding
    /// them has no inode left, whatever room it has: the DB's directory.
    #[error("database {0}: the file system holding {1} has no inode left (no new file can be made there, whatever room it has): SQLite needs to make the DB's -wal and -shm files there, even to read it; nothing was changed in the DB (delete files on that file system, then run again)")]
    NoInodes(PathBuf, PathBuf),
    /// SQLite could not open or write the DB and its directory is on a read-only file system
    /// (SQLite says "unable to open database file", or that the DB is read-only): the DB's
    /// directory.
    #[error("database {0}: {1} is on a read-only file system, where SQLite cannot make the DB's -wal and -shm files it needs beside it, even to read it: nothing was read or changed (remount it read-write, then run again)")]
    ReadOnlyFileSystem(PathBuf, PathBuf),
    #[error("database {0} cannot be read by this user: SQLite reads a WAL database only beside its -wal and -shm files, which no process holds open now and which this user may not create in its directory (run as root, e.g. with sudo, or as the directory's owner)")]
    ReadOnlyDirectory(PathBuf),
}

/// Bytes free under which a file system is taken for full when SQLite fails to write beside
/// the DB: SQLite's "disk I/O error" does not say why, and a -shm file alone takes 32 KiB.
const NEARLY_FULL: u64 = 1 << 20;

fn sql(db: &std::path::Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |e| explained(db, e)
}

/// SQLite's error `e` on the DB `db`, told as what it is when it comes of the file system
/// holding the DB's directory rather than of the DB: a full one ([`DbError::DeviceFull`]:
/// SQLite's "database or disk is full", or an I/O error with less than [`NEARLY_FULL`] free
/// there), a read-only one ([`DbError::ReadOnlyFileSystem`]), or one with no inode left
/// ([`DbError::NoInodes`]: SQLite could not make a file there). Any other stays
/// [`DbError::Sqlite`].
fn explained(db: &std::path::Path, e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    use rustix::fs::StatVfsMountFlags;
    let code = e.sqlite_error_code();
    let of_files = matches!(
        code,
        Some(
            ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
        )
    );
    let dir = db.parent().unwrap_or(std::path::Path::new("/"));
    let Some(st) = of_files.then(|| rustix::fs::statvfs(dir).ok()).flatten() else {
        return DbError::Sqlite(db.to_owned(), e);
    };
    // Root may use the blocks and inodes a file system reserves (ext4's 5 %).
    let (blocks, inodes) = if rustix::process::geteuid().is_root() {
        (st.f_bfree, st.f_ffree)
    } else {
        (st.f_bavail, st.f_favail)
    };
    let free = blocks.saturating_mul(st.f_frsize);
    let full = code == Some(ErrorCode::DiskFull)
        || (code == Some(ErrorCode::SystemIoFailure) && free < NEARLY_FULL);
    if full {
        DbError::DeviceFull(db.to_owned(), dir.to_owned(), free)
    } else if st.f_flag.contains(StatVfsMountFlags::RDONLY) {
        DbError::ReadOnlyFileSystem(db.to_owned(), dir.to_owned())
    } else if matches!(
        code,
        Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure)
    ) && st.f_files > 0
        && inodes == 0
    {
        // A file system that counts no inodes (btrfs) says 0 of 0.
        DbError::NoInodes(db.to_owned(), dir.to_owned())
    } else {
        DbError::Sqlite(db.to_owned(), e)
    }
}
