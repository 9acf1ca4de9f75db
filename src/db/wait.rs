//! Waiting for the DB's SQLite locks that another process holds (a daemon worker writing,
//! an sqlite3 shell): bounded, said once, and write transactions begun `immediate`.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

use super::{sql, DbError};

/// How long a restore waits, by default, for a write lock on the DB that another process holds.
pub const DB_LOCK_WAIT: Duration = Duration::from_secs(600);

/// How long SQLite waits for a lock each time before [`LockWait`] takes over (says why it
/// waits, and keeps count).
pub(super) const BUSY_STEP: Duration = Duration::from_millis(500);

/// Waiting for a lock on the DB that another process holds (a daemon's client writing, an
/// sqlite3 shell): bounded, and said as soon as it starts.
pub struct LockWait<'a> {
    /// Give up after waiting this long ([`DbError::Busy`]).
    pub limit: Duration,
    /// Told once, when a wait starts, with a message saying so.
    pub waiting: &'a (dyn Fn(&str) + Sync),
}

fn say_nothing(_: &str) {}

impl Default for LockWait<'_> {
    /// [`DB_LOCK_WAIT`], silently.
    fn default() -> Self {
        LockWait {
            limit: DB_LOCK_WAIT,
            waiting: &say_nothing,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
    )
}

impl LockWait<'_> {
    /// Run `f` (on a connection whose busy timeout is [`BUSY_STEP`]) until it is not refused
    /// for a lock, or until [`LockWait::limit`] has passed.
    pub(super) fn retry<T>(
        &self,
        file: &Path,
        mut f: impl FnMut() -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let start = Instant::now();
        let mut told = false;
        loop {
            match f() {
                Err(e) if is_busy(&e) => {
                    if start.elapsed() >= self.limit {
                        return Err(DbError::Busy(file.to_owned(), self.limit.as_secs()));
                    }
                    if !told {
                        (self.waiting)(&format!(
                            "waiting for the DB lock held by another process on {} (up to {} s)",
                            file.display(),
                            self.limit.as_secs()
                        ));
                        told = true;
                    }
                }
                r => return r.map_err(sql(file)),
            }
        }
    }
}

/// A write transaction begun with `begin immediate` (the write lock taken at once, waited
/// for by [`LockWait`]); rolled back when dropped uncommitted.
pub(super) struct WriteTxn<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> WriteTxn<'c> {
    pub(super) fn begin(
        conn: &'c Connection,
        file: &Path,
        wait: &LockWait<'_>,
    ) -> Result<Self, DbError> {
        wait.retry(file, || conn.execute_batch("begin immediate"))?;
        Ok(WriteTxn { conn, done: false })
    }

    pub(super) fn commit(mut self, file: &Path, wait: &LockWait<'_>) -> Result<(), DbError> {
        wait.retry(file, || self.conn.execute_batch("commit"))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("rollback");
        }
    }
}
