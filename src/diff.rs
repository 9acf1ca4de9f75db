//! `diff`: what separates two snapshots, or a snapshot and a live store: the store paths one
//! has and the other lacks, their NAR bytes, and what a restore would download (the
//! compressed frames the added paths need, each counted once).

use std::collections::HashSet;

use serde::Serialize;

use crate::cache::{Cache, IndexId, Location, Node, TreeId};
use crate::db;
use crate::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::path::StorePath;
use crate::store::path_info::NarHash;

/// One side of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// The store at `--root`, read from its DB.
    Live,
    /// The newest snapshot saved under this key.
    Key(String),
    /// A snapshot id or unique prefix.
    Snapshot(String),
}

impl Side {
    /// `@live`, `key:NAME`, or an id prefix.
    pub fn parse(s: &str) -> Side {
        if s == "@live" {
            Side::Live
        } else if let Some(k) = s.strip_prefix("key:") {
            Side::Key(k.to_owned())
        } else {
            Side::Snapshot(s.to_owned())
        }
    }
}

/// What separates `from` and `to`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    /// What `from` resolved to (a snapshot id, or `live`).
    pub from: String,
    /// What `to` resolved to.
    pub to: String,
    /// Paths in `to` and not in `from` (with the same NAR hash), sorted.
    pub added: Vec<String>,
    /// Paths in `from` and not in `to`, sorted.
    pub removed: Vec<String>,
    /// NAR bytes of the added paths.
    pub added_nar_bytes: u64,
    /// NAR bytes of the removed paths.
    pub removed_nar_bytes: u64,
    /// Compressed bytes a restore of `to` onto `from` downloads: the frames the added paths
    /// need, each once (0 when `to` is the live store).
    pub transfer_bytes: u64,
}

/// Decompressed frames a diff keeps: it reads the added paths' trees in pack order.
const FRAME_CACHE_BYTES: usize = 4 << 20;

/// One path of a side: its NAR hash and size, and its tree when the side is a snapshot.
struct Row {
    path: StorePath,
    nar_hash: NarHash,
    nar_size: u64,
    tree: Option<TreeId>,
}

/// One side resolved: its name, store directory, rows sorted by base name, and the index
/// files of a v2 snapshot. Rows, not a map of full path strings: at 100,000 paths, 17 MB a
/// side against 6, and no snapshot kept beside them.
struct Resolved {
    name: String,
    store_dir: String,
    rows: Vec<Row>,
    indexes: Option<Vec<IndexId>>,
}

fn resolve(layout: &Layout, cache: &Cache, side: &Side) -> Result<Resolved> {
    let snap = match side {
        Side::Live => {
            let rows = if layout.db_file().exists() {
                let paths = db::read(layout)?.paths;
                // A vector of their own size: collected in place, the rows would keep the
                // DB rows' larger buffer.
                let mut rows = Vec::with_capacity(paths.len());
                rows.extend(paths.into_iter().map(|p| Row {
                    path: p.path,
                    nar_hash: p.nar_hash,
                    nar_size: p.nar_size,
                    tree: None,
                }));
                rows
            } else {
                Vec::new()
            };
            return Ok(sorted(Resolved {
                name: "live".into(),
                store_dir: layout.store_dir.as_str().to_owned(),
                rows,
                indexes: None,
            }));
        }
        Side::Key(k) => {
            let m = cache.find_by_key(k, &[], &|_, _| Ok(()))?;
            (m.id, m.snapshot)
        }
        Side::Snapshot(p) => cache.find_snapshot(Some(p))?,
    };
    let (id, s) = snap;
    let mut rows = Vec::with_capacity(s.paths.len());
    rows.extend(s.paths.into_iter().map(|p| Row {
        path: p.info.path,
        nar_hash: p.info.nar_hash,
        nar_size: p.info.nar_size,
        tree: Some(p.tree),
    }));
    Ok(sorted(Resolved {
        name: id.hex(),
        store_dir: s.store_dir,
        rows,
        indexes: (s.version >= 2).then_some(s.indexes),
    }))
}

fn sorted(mut r: Resolved) -> Resolved {
    r.rows.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    r
}

/// Rows of `side` that `other` lacks with the same NAR hash (all of them when the store
/// directories differ), by a merge of the two sorted lists.
fn lacking<'a>(side: &'a Resolved, other: &Resolved) -> Vec<&'a Row> {
    if side.store_dir != other.store_dir {
        return side.rows.iter().collect();
    }
    let mut out = Vec::new();
    let mut theirs = other.rows.iter().peekable();
    for row in &side.rows {
        while theirs.next_if(|o| o.path < row.path).is_some() {}
        match theirs.peek() {
            Some(o) if o.path == row.path && o.nar_hash == row.nar_hash => {}
            _ => out.push(row),
        }
    }
    out
}

/// Compare `from` and `to`.
///
/// # Errors
/// [`Error::Cache`] when a snapshot or tree cannot be read, [`Error::Db`] for the live store.
pub fn diff(layout: &Layout, cache: &Cache, from: &Side, to: &Side) -> Result<DiffReport> {
    let a = resolve(layout, cache, from)?;
    let b = resolve(layout, cache, to)?;
    let mut r = DiffReport::default();
    let full = |side: &Resolved, row: &Row| format!("{}/{}", side.store_dir, row.path);
    let added = lacking(&b, &a);
    for row in &added {
        r.added.push(full(&b, row));
        r.added_nar_bytes += row.nar_size;
    }
    for row in lacking(&a, &b) {
        r.removed.push(full(&a, row));
        r.removed_nar_bytes += row.nar_size;
    }
    // Rows sorted by base name under one store directory a side: the lists are sorted.
    debug_assert!(r.added.is_sorted() && r.removed.is_sorted());
    if let Some(indexes) = &b.indexes {
        cache.use_indexes(indexes);
    }
    // The added paths' trees, read in the order they are in the packs (so a few frames
    // serve runs of them), and every frame they and their blobs are in, counted once.
    cache.limit_frames(FRAME_CACHE_BYTES);
    let mut trees: Vec<(Location, TreeId)> = Vec::with_capacity(added.len());
    for row in &added {
        let Some(tree) = row.tree else { continue };
        let loc = cache
            .location(tree)
            .ok_or(Error::Cache(crate::cache::CacheError::Missing(tree.into())))?;
        trees.push((loc, tree));
    }
    drop(added);
    trees.sort_unstable_by_key(|(l, _)| (l.pack, l.frame_offset, l.offset));
    let mut frames: HashSet<(u32, u64)> = HashSet::new();
    let mut count = |loc: Location| {
        if frames.insert((loc.pack, loc.frame_offset)) {
            r.transfer_bytes += loc.frame_len;
        }
    };
    for (loc, tree) in trees {
        count(loc);
        let mut stack = vec![cache.read_tree(&tree)?];
        while let Some(n) = stack.pop() {
            match n {
                Node::Regular { blob, .. } | Node::Rewritten { blob, .. } => count(
                    cache
                        .location(blob)
                        .ok_or(Error::Cache(crate::cache::CacheError::Missing(blob.into())))?,
                ),
                Node::Symlink { .. } => {}
                Node::Directory(es) => stack.extend(es.into_iter().map(|e| e.node)),
            }
        }
    }
    r.from = a.name;
    r.to = b.name;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(store_dir: &str, rows: &[(&str, u8)]) -> Resolved {
        sorted(Resolved {
            name: String::new(),
            store_dir: store_dir.into(),
            rows: rows
                .iter()
                .map(|&(name, h)| Row {
                    // The name's letter (a nix-base32 digit) makes the hash part unique.
                    path: StorePath::from_base_name(&format!("{}{name}-{name}", "1".repeat(31)))
                        .unwrap(),
                    nar_hash: NarHash([h; 32]),
                    nar_size: 10,
                    tree: None,
                })
                .collect(),
            indexes: None,
        })
    }

    fn names(rows: Vec<&Row>) -> Vec<String> {
        rows.iter().map(|r| r.path.name().to_owned()).collect()
    }

    #[test]
    fn a_side_lacks_what_the_other_has_not_with_the_same_nar_hash() {
        let a = side("/gnu/store", &[("a", 1), ("b", 1), ("c", 1), ("g", 1)]);
        let b = side("/gnu/store", &[("b", 1), ("c", 2), ("d", 1), ("f", 1)]);
        // c changed its content: added and removed.
        assert_eq!(names(lacking(&b, &a)), ["c", "d", "f"]);
        assert_eq!(names(lacking(&a, &b)), ["a", "c", "g"]);
        assert!(lacking(&a, &a).is_empty());
        let empty = side("/gnu/store", &[]);
        assert_eq!(names(lacking(&a, &empty)), ["a", "b", "c", "g"]);
        assert!(lacking(&empty, &a).is_empty());
        // Another store directory: no path is the same.
        let nix = side("/nix/store", &[("b", 1)]);
        assert_eq!(names(lacking(&nix, &a)), ["b"]);
    }
}
