//! Creating and opening the DB for writing: the flavour's schema and pragmas, the `schema`
//! version file checked before anything is changed.

use std::fs;

use rusqlite::{Connection, OpenFlags};

use super::files::{checked_db_file, read_state_file, write_state_file};
use super::wait::{LockWait, WriteTxn, BUSY_STEP};
use super::{sql, DbError};
use crate::store::layout::{Flavor, Layout};

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

#[cfg(test)]
mod tests {
    use super::super::read::has_column;
    use super::*;

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
