//! Registering restored paths: the valid paths of an opened DB, and the rows of a restore
//! written in one transaction.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::wait::{LockWait, WriteTxn};
use super::{sql, DbError};
use crate::store::layout::{Flavor, Layout};
use crate::store::path::StorePath;
use crate::store::path_info::{DerivationOutput, PathInfo};

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
    .map(drop)
}

/// [`register`], waiting for the write lock another process holds as `wait` says. Validity
/// is checked again inside the transaction: a path that became valid meanwhile (the daemon
/// built, substituted or imported it) keeps its row, is not inserted again, and is returned;
/// paths referring to it refer to its row.
///
/// # Errors
/// As [`register`]; [`DbError::Busy`] when the lock stayed held (nothing is registered).
pub fn register_waiting(
    conn: &mut Connection,
    layout: &Layout,
    infos: &[&PathInfo],
    derivation_outputs: &[&DerivationOutput],
    wait: &LockWait<'_>,
) -> Result<Vec<StorePath>, DbError> {
    let file = layout.db_file();
    let e = sql(&file);
    let store = &layout.store_dir;
    let nix = layout.flavor == Flavor::Nix;
    let tx = WriteTxn::begin(conn, &file, wait)?;
    let mut already = Vec::new();
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
        // The valid paths with a hash part (`<store>/<hash>-` up to `<store>/<hash>.`): the
        // path itself, valid by now, or another that shares it (another process made it
        // valid since the plan, which refused any then).
        let mut by_hash_part = conn
            .prepare("select id, path from ValidPaths where path >= ?1 and path < ?2")
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
        let mut inserted: HashMap<&StorePath, i64> = HashMap::new();
        for info in infos {
            let full = store.display(&info.path);
            let part = format!("{}/{}", store.as_str(), info.path.hash_part());
            let sharing: Vec<(i64, String)> = by_hash_part
                .query_map([format!("{part}-"), format!("{part}.")], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .and_then(Iterator::collect)
                .map_err(&e)?;
            if let Some((_, other)) = sharing.iter().find(|(_, p)| *p != full) {
                return Err(DbError::HashPartTaken(file.clone(), full, other.clone()));
            }
            if let Some(&(id, _)) = sharing.first() {
                ids.insert(&info.path, id);
                already.push(info.path.clone());
                continue;
            }
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
                    info.sigs(),
                    info.ca()
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
            inserted.insert(&info.path, id);
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
            if let Some(&drv) = inserted.get(&o.drv) {
                insert_out.execute(params![drv, o.id, o.path]).map_err(&e)?;
            }
        }
    }
    tx.commit(&file, wait)?;
    Ok(already)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rusqlite::Connection;

    use super::super::open_or_create;
    use super::super::open_or_create_waiting;
    use super::*;

    fn row(base: &str) -> PathInfo {
        PathInfo {
            path: StorePath::from_base_name(base).unwrap(),
            nar_hash: crate::store::path_info::NarHash([7; 32]),
            nar_size: 120,
            registration_time: 1,
            deriver: None,
            references: Vec::new(),
            nix: None,
        }
    }

    /// Found by review: validity was checked again in the transaction by full path only, so a
    /// path whose hash part another process made valid since the plan (which refuses it then)
    /// was registered next to it. Now nothing is registered; a path valid by now under its own
    /// name is returned as before.
    #[test]
    fn a_hash_part_made_valid_under_another_name_since_the_plan_registers_nothing() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, root.path(), None, None).unwrap();
        let mut conn = open_or_create(&layout).unwrap();
        let hash = "0123456789abcdfghijklmnpqrsvwxyz";
        let theirs = row(&format!("{hash}-theirs"));
        // Names sorting before and after `theirs`, and a neighbour whose hash part shares
        // all but the last character (not a conflict).
        let before = row(&format!("{hash}-a"));
        let after = row(&format!("{hash}-z"));
        let neighbour = row("0123456789abcdfghijklmnpqrsvwxy0-n");
        register(&mut conn, &layout, &[&theirs], &[]).unwrap();
        for mine in [&before, &after] {
            let err = register(&mut conn, &layout, &[&neighbour, mine], &[]).unwrap_err();
            assert!(
                matches!(&err, DbError::HashPartTaken(..))
                    && err
                        .to_string()
                        .contains(&format!("/gnu/store/{hash}-theirs")),
                "{err}"
            );
            let valid = valid_paths(&conn, &layout).unwrap();
            assert_eq!(valid.len(), 1, "{valid:?}");
        }
        let already = register_waiting(
            &mut conn,
            &layout,
            &[&neighbour, &theirs],
            &[],
            &LockWait::default(),
        )
        .unwrap();
        assert_eq!(already, std::slice::from_ref(&theirs.path));
        assert_eq!(valid_paths(&conn, &layout).unwrap().len(), 2);
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
}
