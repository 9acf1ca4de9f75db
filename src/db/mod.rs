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

mod lock;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

pub use lock::{BigLock, LockError};

use crate::store::layout::{Flavor, Layout};
use crate::store::path::{StoreDir, StorePath};
use crate::store::path_info::{DerivationOutput, NarHash, PathInfo};

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
}

/// The files the daemon keeps in its DB directory.
const STATE_FILES: [&str; 5] = [
    "db.sqlite",
    "db.sqlite-wal",
    "db.sqlite-shm",
    "schema",
    "big-lock",
];

/// `path`, if it exists, is itself (not a symlink) and of the kind expected: the DB
/// directory a directory, the files in it regular files.
pub(crate) fn check_not_symlink(path: &std::path::Path) -> Result<(), DbError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(DbError::NotAFile(path.to_owned())),
        Ok(m)
            if path
                .file_name()
                .is_some_and(|n| STATE_FILES.iter().any(|f| n == *f)) =>
        {
            if m.is_file() {
                Ok(())
            } else {
                Err(DbError::NotAFile(path.to_owned()))
            }
        }
        Ok(m) if !m.is_dir() && !m.is_file() => Err(DbError::NotAFile(path.to_owned())),
        _ => Ok(()),
    }
}

/// The DB file to open, after checking that the DB directory and every state file in it are
/// not symlinks: the directory's own path with its parents resolved (they are the system's),
/// so that SQLite, opened with `SQLITE_OPEN_NOFOLLOW`, refuses any symlink it meets.
fn checked_db_file(layout: &Layout) -> Result<PathBuf, DbError> {
    let dir = layout.real_db_dir();
    check_not_symlink(&dir)?;
    for f in STATE_FILES {
        check_not_symlink(&dir.join(f))?;
    }
    let real = fs::canonicalize(&dir).map_err(|e| DbError::Io(dir.clone(), e))?;
    Ok(real.join("db.sqlite"))
}

/// Open a state file of the DB directory for reading, never through a symlink.
fn read_state_file(path: &std::path::Path) -> Result<Option<String>, DbError> {
    use std::io::Read;
    let fd = match rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(DbError::NotAFile(path.to_owned())),
        Err(e) => return Err(DbError::Io(path.to_owned(), e.into())),
    };
    let mut f = fs::File::from(fd);
    if !f
        .metadata()
        .map_err(|e| DbError::Io(path.to_owned(), e))?
        .is_file()
    {
        return Err(DbError::NotAFile(path.to_owned()));
    }
    let mut s = String::new();
    f.read_to_string(&mut s)
        .map_err(|e| DbError::Io(path.to_owned(), e))?;
    Ok(Some(s))
}

/// Write a state file of the DB directory, never through a symlink.
fn write_state_file(path: &std::path::Path, contents: &[u8]) -> Result<(), DbError> {
    use std::io::Write;
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::TRUNC
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => DbError::NotAFile(path.to_owned()),
        e => DbError::Io(path.to_owned(), e.into()),
    })?;
    fs::File::from(fd)
        .write_all(contents)
        .map_err(|e| DbError::Io(path.to_owned(), e))
}

/// A consistent read of a store's DB.
#[derive(Debug, Clone, Default)]
pub struct DbContents {
    /// Every valid path, in DB id order.
    pub paths: Vec<PathInfo>,
    /// Every `DerivationOutputs` row of a valid `.drv`.
    pub derivation_outputs: Vec<DerivationOutput>,
}

/// How long a restore waits, by default, for a write lock on the DB that another process holds.
pub const DB_LOCK_WAIT: Duration = Duration::from_secs(600);

/// How long SQLite waits for a lock each time before [`LockWait`] takes over (says why it
/// waits, and keeps count).
const BUSY_STEP: Duration = Duration::from_millis(500);

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
    fn retry<T>(
        &self,
        file: &std::path::Path,
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
struct WriteTxn<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> WriteTxn<'c> {
    fn begin(
        conn: &'c Connection,
        file: &std::path::Path,
        wait: &LockWait<'_>,
    ) -> Result<Self, DbError> {
        wait.retry(file, || conn.execute_batch("begin immediate"))?;
        Ok(WriteTxn { conn, done: false })
    }

    fn commit(mut self, file: &std::path::Path, wait: &LockWait<'_>) -> Result<(), DbError> {
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

fn sql(db: &std::path::Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |e| DbError::Sqlite(db.to_owned(), e)
}

/// Read the DB read-only, in one read transaction, so a running daemon's writes are either
/// wholly seen or not at all (the DB is in WAL mode).
///
/// # Errors
/// [`DbError`] naming the DB file: missing, unreadable, or holding a malformed row.
pub fn read(layout: &Layout) -> Result<DbContents, DbError> {
    let file = layout.db_file();
    if !file.exists() {
        return Err(DbError::Missing(file, layout.flavor.name()));
    }
    let real = checked_db_file(layout)?;
    let conn = Connection::open_with_flags(
        &real,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sql(&file))?;
    conn.busy_timeout(Duration::from_secs(60))
        .map_err(sql(&file))?;
    conn.execute_batch("begin").map_err(sql(&file))?;
    let contents = read_in_txn(&conn, &file, &layout.store_dir)?;
    conn.execute_batch("commit").map_err(sql(&file))?;
    Ok(contents)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut st = conn.prepare(&format!("pragma table_info({table})"))?;
    let names = st.query_map([], |r| r.get::<_, String>(1))?;
    for n in names {
        if n?.eq_ignore_ascii_case(column) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_in_txn(
    conn: &Connection,
    file: &std::path::Path,
    store: &StoreDir,
) -> Result<DbContents, DbError> {
    let e = sql(file);
    let nix_columns = has_column(conn, "ValidPaths", "ca").map_err(&e)?;
    let query = if nix_columns {
        "select id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths order by id"
    } else {
        "select id, path, hash, registrationTime, deriver, narSize, null, null, null from ValidPaths order by id"
    };
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    let mut paths = Vec::new();
    let mut st = conn.prepare(query).map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let id: i64 = r.get(0).map_err(&e)?;
        let full: String = r.get(1).map_err(&e)?;
        let hash: String = r.get(2).map_err(&e)?;
        let path = store
            .parse(&full)
            .map_err(|err| DbError::BadPath(file.to_owned(), full.clone(), err))?;
        let nar_hash = NarHash::parse_db(&hash)
            .ok_or_else(|| DbError::BadHash(file.to_owned(), full.clone(), hash.clone()))?;
        by_id.insert(id, paths.len());
        paths.push(PathInfo {
            path,
            nar_hash,
            nar_size: r.get::<_, Option<i64>>(5).map_err(&e)?.unwrap_or(0) as u64,
            registration_time: r.get(3).map_err(&e)?,
            deriver: r.get(4).map_err(&e)?,
            references: Vec::new(),
            ultimate: r.get(6).map_err(&e)?,
            sigs: r.get(7).map_err(&e)?,
            ca: r.get(8).map_err(&e)?,
        });
    }
    drop(rows);
    let mut st = conn
        .prepare("select referrer, reference from Refs")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let (a, b): (i64, i64) = (r.get(0).map_err(&e)?, r.get(1).map_err(&e)?);
        if let (Some(&a), Some(&b)) = (by_id.get(&a), by_id.get(&b)) {
            let reference = paths[b].path.clone();
            paths[a].references.push(reference);
        }
    }
    drop(rows);
    for p in &mut paths {
        p.references.sort();
        p.references.dedup();
    }
    let mut derivation_outputs = Vec::new();
    let mut st = conn
        .prepare("select drv, id, path from DerivationOutputs")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let drv: i64 = r.get(0).map_err(&e)?;
        if let Some(&i) = by_id.get(&drv) {
            derivation_outputs.push(DerivationOutput {
                drv: paths[i].path.clone(),
                id: r.get(1).map_err(&e)?,
                path: r.get(2).map_err(&e)?,
            });
        }
    }
    derivation_outputs.sort();
    Ok(DbContents {
        paths,
        derivation_outputs,
    })
}

/// The schema a flavour's daemon creates.
pub fn schema_sql(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Guix => include_str!("guix-schema.sql"),
        Flavor::Nix => include_str!("nix-schema.sql"),
    }
}

/// Open the DB for writing, creating it (DB directory, `db.sqlite` with the flavour's schema
/// and pragmas, `schema` file) when it does not exist, as the daemon does on first start.
/// Callers hold the [`BigLock`].
///
/// # Errors
/// [`DbError`] naming the DB: unwritable, or a `schema` version this tool does not know.
pub fn open_or_create(layout: &Layout) -> Result<Connection, DbError> {
    open_or_create_waiting(layout, &LockWait::default())
}

/// [`open_or_create`], waiting for a lock another process holds as `wait` says.
///
/// # Errors
/// As [`open_or_create`]; [`DbError::Busy`] when the lock stayed held.
pub fn open_or_create_waiting(layout: &Layout, wait: &LockWait<'_>) -> Result<Connection, DbError> {
    let dir = layout.real_db_dir();
    let file = layout.db_file();
    let schema_file = dir.join("schema");
    fs::create_dir_all(&dir).map_err(|e| DbError::Io(dir.clone(), e))?;
    let real = checked_db_file(layout)?;
    let want = layout.flavor.schema_version();
    let create = fs::symlink_metadata(&file).is_err();
    if !create {
        let found = read_state_file(&schema_file)?.unwrap_or_default();
        if found.trim().is_empty() {
            return Err(DbError::NoSchema(file, schema_file));
        }
        if found.trim() != want.to_string() {
            return Err(DbError::Schema(file, found.trim().to_owned(), want));
        }
    }
    if create {
        // The version first: a process killed after creating the DB and before writing the
        // version would otherwise leave a DB that every later open refuses (no version).
        // The daemon writes it without a newline.
        write_state_file(&schema_file, want.to_string().as_bytes())?;
    }
    let conn = Connection::open_with_flags(
        &real,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sql(&file))?;
    conn.busy_timeout(BUSY_STEP).map_err(sql(&file))?;
    // The pragmas both daemons set on every connection (LocalStore::openDB).
    wait.retry(&file, || {
        conn.execute_batch(
            "pragma foreign_keys = 1; pragma synchronous = normal; \
             pragma main.journal_mode = wal; pragma wal_autocheckpoint = 8192;",
        )
    })?;
    // A DB created by a process killed before its tables were committed has the version but
    // no tables: the schema (all `create ... if not exists`) completes it.
    let has_tables: bool = conn
        .query_row(
            "select count(*) > 0 from sqlite_master where type = 'table' and name = 'ValidPaths'",
            [],
            |r| r.get(0),
        )
        .map_err(sql(&file))?;
    if create || !has_tables {
        let txn = WriteTxn::begin(&conn, &file, wait)?;
        conn.execute_batch(schema_sql(layout.flavor))
            .map_err(sql(&file))?;
        txn.commit(&file, wait)?;
    }
    Ok(conn)
}

/// Give the DB directory and the daemon's files in it to the owner of the directory above it
/// (`/var/guix`), when they belong to someone else: Guix 1.5's unprivileged daemon runs as the
/// `guix-daemon` user that owns `/var/guix` and must be able to write what a root restore
/// created. Call after the connection is closed. Nothing changes when the owners already agree.
///
/// # Errors
/// [`DbError::Io`] naming the file that could not be chowned.
pub fn give_to_owner(layout: &Layout) -> Result<(), DbError> {
    use std::os::unix::fs::MetadataExt;
    let dir = layout.real_db_dir();
    let Some(parent) = dir.parent().and_then(|p| fs::metadata(p).ok()) else {
        return Ok(());
    };
    let owner = (parent.uid(), parent.gid());
    let mut files = vec![dir.clone()];
    files.extend(STATE_FILES.iter().map(|name| dir.join(name)));
    for f in files {
        let Ok(m) = fs::symlink_metadata(&f) else {
            continue;
        };
        if (m.uid(), m.gid()) != owner {
            std::os::unix::fs::lchown(&f, Some(owner.0), Some(owner.1))
                .map_err(|e| DbError::Io(f.clone(), e))?;
        }
    }
    Ok(())
}

/// The valid paths in an opened DB: full path → `hash` column.
///
/// # Errors
/// [`DbError::Sqlite`].
pub fn valid_paths(conn: &Connection, layout: &Layout) -> Result<HashMap<String, String>, DbError> {
    valid_paths_waiting(conn, layout, &LockWait::default())
}

/// [`valid_paths`], waiting for a lock another process holds as `wait` says.
///
/// # Errors
/// [`DbError::Sqlite`]; [`DbError::Busy`] when the lock stayed held.
pub fn valid_paths_waiting(
    conn: &Connection,
    layout: &Layout,
    wait: &LockWait<'_>,
) -> Result<HashMap<String, String>, DbError> {
    let file = layout.db_file();
    wait.retry(&file, || {
        let mut st = conn.prepare("select path, hash from ValidPaths")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()
    })
}

/// Register `infos` (in topological order: references first; references outside `infos` must
/// already be valid) and the `DerivationOutputs` rows of the `.drv`s among them, in one
/// transaction, with the rows the daemon writes when it imports a path: every column is
/// copied except Nix's `ultimate`, which is left NULL as `nix copy` leaves it.
///
/// # Errors
/// [`DbError::Sqlite`]; on error nothing is registered.
pub fn register(
    conn: &mut Connection,
    layout: &Layout,
    infos: &[&PathInfo],
    derivation_outputs: &[&DerivationOutput],
) -> Result<(), DbError> {
    register_waiting(
        conn,
        layout,
        infos,
        derivation_outputs,
        &LockWait::default(),
    )
}

/// [`register`], waiting for the write lock another process holds as `wait` says.
///
/// # Errors
/// As [`register`]; [`DbError::Busy`] when the lock stayed held (nothing is registered).
pub fn register_waiting(
    conn: &mut Connection,
    layout: &Layout,
    infos: &[&PathInfo],
    derivation_outputs: &[&DerivationOutput],
    wait: &LockWait<'_>,
) -> Result<(), DbError> {
    let file = layout.db_file();
    let e = sql(&file);
    let store = &layout.store_dir;
    let nix = layout.flavor == Flavor::Nix;
    let tx = WriteTxn::begin(conn, &file, wait)?;
    {
        let mut insert_path = if nix {
            conn.prepare(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) \
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
        } else {
            conn.prepare(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) \
                 values (?1, ?2, ?3, ?4, ?5)",
            )
        }
        .map_err(&e)?;
        let mut id_of = conn
            .prepare("select id from ValidPaths where path = ?1")
            .map_err(&e)?;
        let mut insert_ref = conn
            .prepare("insert or replace into Refs (referrer, reference) values (?1, ?2)")
            .map_err(&e)?;
        let mut insert_out = conn
            .prepare("insert or replace into DerivationOutputs (drv, id, path) values (?1, ?2, ?3)")
            .map_err(&e)?;
        let mut ids: HashMap<&StorePath, i64> = HashMap::new();
        for info in infos {
            let full = store.display(&info.path);
            let hash = info.nar_hash.to_db();
            let size = info.nar_size as i64;
            if nix {
                insert_path.execute(params![
                    full,
                    hash,
                    info.registration_time,
                    info.deriver,
                    size,
                    // `ultimate` means "built on this machine": Nix trusts such paths without
                    // signatures. A restored path was not built here, so, like Nix's own
                    // copy between stores, it is registered as not ultimate.
                    None::<i64>,
                    info.sigs,
                    info.ca
                ])
            } else {
                insert_path.execute(params![
                    full,
                    hash,
                    info.registration_time,
                    info.deriver,
                    size
                ])
            }
            .map_err(&e)?;
            let id = conn.last_insert_rowid();
            ids.insert(&info.path, id);
            for r in &info.references {
                let rid = match ids.get(r) {
                    Some(&rid) => rid,
                    None => id_of
                        .query_row([store.display(r)], |row| row.get(0))
                        .optional()
                        .map_err(&e)?
                        .ok_or_else(|| {
                            DbError::Sqlite(file.clone(), rusqlite::Error::QueryReturnedNoRows)
                        })?,
                };
                insert_ref.execute(params![id, rid]).map_err(&e)?;
            }
        }
        for o in derivation_outputs {
            if let Some(&drv) = ids.get(&o.drv) {
                insert_out.execute(params![drv, o.id, o.path]).map_err(&e)?;
            }
        }
    }
    tx.commit(&file, wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_hash_forms() {
        let hex = "40c63728a291614086af0f1111ec30c93d6beb395f708a23f9d7ae70670d84f0";
        let h = NarHash::parse_db(&format!("sha256:{hex}")).unwrap();
        assert_eq!(h.to_db(), format!("sha256:{hex}"));
        // The same hash as `nix-store -q --hash` prints it (nix-base32), from real Nix 2.8.
        let b32 = NarHash::parse_db("sha256:1w441mkp1bnpz4iqlw2z77mnngf963n1248gmy340qcil8l3gij0");
        assert_eq!(b32, Some(h));
        assert_eq!(NarHash::parse_db("md5:00"), None);
        assert_eq!(NarHash::parse_db("sha256:xyz"), None);
    }

    #[test]
    fn created_db_has_the_daemon_schema() {
        for flavor in [Flavor::Guix, Flavor::Nix] {
            let root = tempfile::tempdir().unwrap();
            let layout = Layout::new(flavor, root.path(), None, None).unwrap();
            let conn = open_or_create(&layout).unwrap();
            let schema = fs::read_to_string(layout.real_db_dir().join("schema")).unwrap();
            assert_eq!(schema, flavor.schema_version().to_string());
            let mode: String = conn
                .query_row("pragma journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let tables: Vec<String> = conn
                .prepare("select name from sqlite_master where type = 'table' order by name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let mut want = vec!["DerivationOutputs", "Refs", "ValidPaths", "sqlite_sequence"];
            if flavor == Flavor::Guix {
                want.insert(1, "FailedPaths");
            }
            assert_eq!(tables, want);
            assert_eq!(
                has_column(&conn, "ValidPaths", "ca").unwrap(),
                flavor == Flavor::Nix
            );
            // Reopening does not recreate or fail.
            drop(conn);
            open_or_create(&layout).unwrap();
        }
    }

    #[test]
    fn a_db_locked_by_another_writer_is_waited_for_a_bounded_time_and_said() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, root.path(), None, None).unwrap();
        drop(open_or_create(&layout).unwrap());
        let other = Connection::open(layout.db_file()).unwrap();
        other.execute_batch("begin immediate").unwrap();
        let said = std::sync::Mutex::new(Vec::new());
        let note = |m: &str| said.lock().unwrap().push(m.to_owned());
        let wait = LockWait {
            limit: Duration::from_secs(1),
            waiting: &note,
        };
        let mut conn = open_or_create_waiting(&layout, &wait).unwrap();
        let start = Instant::now();
        let err = register_waiting(&mut conn, &layout, &[], &[], &wait).unwrap_err();
        let waited = start.elapsed();
        assert!(matches!(err, DbError::Busy(..)), "{err}");
        assert!(
            err.to_string().contains("locked by another process"),
            "{err}"
        );
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        other.execute_batch("rollback").unwrap();
        register_waiting(&mut conn, &layout, &[], &[], &wait).unwrap();
        let said = said.lock().unwrap();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("waiting for the DB lock"), "{said:?}");
    }

    #[test]
    fn unknown_schema_version_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, root.path(), None, None).unwrap();
        drop(open_or_create(&layout).unwrap());
        fs::write(layout.real_db_dir().join("schema"), "6").unwrap();
        let err = open_or_create(&layout).unwrap_err();
        assert!(err.to_string().contains("schema version 6"), "{err}");
        fs::remove_file(layout.real_db_dir().join("schema")).unwrap();
        let err = open_or_create(&layout).unwrap_err().to_string();
        assert!(
            err.contains("db.sqlite exists") && err.contains("/schema is missing"),
            "{err}"
        );
    }
}
