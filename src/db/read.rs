//! Reading a consistent view of the DB: every valid path with its references, and the
//! `DerivationOutputs` rows, in one read transaction.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::files::checked_db_file;
use super::{sql, DbError};
use crate::store::layout::Layout;
use crate::store::path_info::{DerivationOutput, NarHash, PathInfo};

/// The most rows reserved up front, whatever the count says (the vectors grow past it).
const MAX_RESERVED_ROWS: usize = 1 << 22;

/// A consistent read of a store's DB.
#[derive(Debug, Clone, Default)]
pub struct DbContents {
    /// Every valid path, in DB id order.
    pub paths: Vec<PathInfo>,
    /// Every `DerivationOutputs` row of a valid `.drv`.
    pub derivation_outputs: Vec<DerivationOutput>,
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
    let read = || {
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
        let contents = read_in_txn(&conn, &file, layout)?;
        conn.execute_batch("commit").map_err(sql(&file))?;
        Ok(contents)
    };
    // A user who may not write the DB's directory (a save without sudo of a store the
    // daemon's user owns, while no process has the DB open) met "attempt to write a readonly
    // database", said of a read (SQLite's message, not kept: the cause is said instead).
    read().map_err(|e| match e {
        DbError::Sqlite(f, e)
            if e.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_READONLY_DIRECTORY) =>
        {
            DbError::ReadOnlyDirectory(f)
        }
        e => e,
    })
}

pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut st = conn.prepare(&format!("pragma table_info({table})"))?;
    let names = st.query_map([], |r| r.get::<_, String>(1))?;
    for n in names {
        if n?.eq_ignore_ascii_case(column) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_in_txn(conn: &Connection, file: &Path, layout: &Layout) -> Result<DbContents, DbError> {
    let store = &layout.store_dir;
    let e = sql(file);
    let nix_columns = has_column(conn, "ValidPaths", "ca").map_err(&e)?;
    let query = if nix_columns {
        "select id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths order by id"
    } else {
        "select id, path, hash, registrationTime, deriver, narSize, null, null, null from ValidPaths order by id"
    };
    // Sized from a count in the same transaction: a vector doubling as rows arrive held up
    // to twice the rows (at 100,000 paths, 23 MB for 17.6 MB of rows). Ids come in order,
    // so a row is found by bisecting them (no map of ids beside the rows).
    let count: i64 = conn
        .query_row("select count(*) from ValidPaths", [], |r| r.get(0))
        .map_err(&e)?;
    let room = usize::try_from(count).unwrap_or(0).min(MAX_RESERVED_ROWS);
    let mut ids: Vec<i64> = Vec::with_capacity(room);
    let mut paths = Vec::with_capacity(room);
    let mut st = conn.prepare(query).map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let id: i64 = r.get(0).map_err(&e)?;
        let full: String = r.get(1).map_err(&e)?;
        let hash: String = r.get(2).map_err(&e)?;
        // The flavour's rule too: a Nix DB row of a name longer than Nix's limit (which Nix
        // itself cannot load) would make a snapshot no Nix restore accepts.
        let path = store
            .parse(&full)
            .and_then(|p| p.check_for(layout.flavor).map(|()| p))
            .map_err(|err| DbError::BadPath(file.to_owned(), full.clone(), err))?;
        let nar_hash = NarHash::parse_db(&hash)
            .ok_or_else(|| DbError::BadHash(file.to_owned(), full.clone(), hash.clone()))?;
        // In order: the query sorts by id (the table's primary key).
        ids.push(id);
        paths.push(PathInfo {
            path,
            nar_hash,
            nar_size: r.get::<_, Option<i64>>(5).map_err(&e)?.unwrap_or(0) as u64,
            registration_time: r.get(3).map_err(&e)?,
            deriver: r.get(4).map_err(&e)?,
            references: Vec::new(),
            nix: crate::store::path_info::NixColumns::boxed(
                r.get(6).map_err(&e)?,
                r.get(7).map_err(&e)?,
                r.get(8).map_err(&e)?,
            ),
        });
    }
    drop(rows);
    let by_id = |id: i64| ids.binary_search(&id).ok();
    let mut st = conn
        .prepare("select referrer, reference from Refs")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let (a, b): (i64, i64) = (r.get(0).map_err(&e)?, r.get(1).map_err(&e)?);
        if let (Some(a), Some(b)) = (by_id(a), by_id(b)) {
            let reference = paths[b].path.clone();
            paths[a].references.push(reference);
        }
    }
    drop(rows);
    for p in &mut paths {
        p.references.sort();
        p.references.dedup();
        // Pushed one at a time, the vector has room for up to twice its references.
        p.references.shrink_to_fit();
    }
    let mut derivation_outputs = Vec::new();
    let mut st = conn
        .prepare("select drv, id, path from DerivationOutputs")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let drv: i64 = r.get(0).map_err(&e)?;
        if let Some(i) = by_id(drv) {
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
}
