//! `diff`: what separates two snapshots, or a snapshot and a live store: the store paths one
//! has and the other lacks, their NAR bytes, and what a restore would download (the
//! compressed frames the added paths need, each counted once).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::cache::{Cache, Node, Snapshot};
use crate::db;
use crate::error::{Error, Result};
use crate::store::layout::Layout;
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

/// The paths of a side: full path → (NAR hash, NAR size), and the snapshot when it is one.
type Paths = HashMap<String, (NarHash, u64)>;

fn resolve(
    layout: &Layout,
    cache: &Cache,
    side: &Side,
) -> Result<(String, Paths, Option<Snapshot>)> {
    let snap = match side {
        Side::Live => {
            let paths = if layout.db_file().exists() {
                db::read(layout)?
                    .paths
                    .into_iter()
                    .map(|p| (layout.store_dir.display(&p.path), (p.nar_hash, p.nar_size)))
                    .collect()
            } else {
                HashMap::new()
            };
            return Ok(("live".into(), paths, None));
        }
        Side::Key(k) => {
            let m = cache.find_by_key(k, &[], &|_, _| Ok(()))?;
            (m.id, m.snapshot)
        }
        Side::Snapshot(p) => cache.find_snapshot(Some(p))?,
    };
    let (id, s) = snap;
    let paths = s
        .paths
        .iter()
        .map(|p| {
            (
                format!("{}/{}", s.store_dir, p.info.path),
                (p.info.nar_hash, p.info.nar_size),
            )
        })
        .collect();
    Ok((id.hex(), paths, Some(s)))
}

/// Compare `from` and `to`.
///
/// # Errors
/// [`Error::Cache`] when a snapshot or tree cannot be read, [`Error::Db`] for the live store.
pub fn diff(layout: &Layout, cache: &Cache, from: &Side, to: &Side) -> Result<DiffReport> {
    let (from_name, a, _) = resolve(layout, cache, from)?;
    let (to_name, b, to_snap) = resolve(layout, cache, to)?;
    let mut r = DiffReport {
        from: from_name,
        to: to_name,
        ..DiffReport::default()
    };
    for (p, (h, size)) in &b {
        if a.get(p).is_none_or(|(ah, _)| ah != h) {
            r.added.push(p.clone());
            r.added_nar_bytes += size;
        }
    }
    for (p, (h, size)) in &a {
        if b.get(p).is_none_or(|(bh, _)| bh != h) {
            r.removed.push(p.clone());
            r.removed_nar_bytes += size;
        }
    }
    r.added.sort();
    r.removed.sort();
    if let Some(s) = to_snap {
        if s.version >= 2 {
            cache.use_indexes(&s.indexes);
        }
        let added: HashSet<&String> = r.added.iter().collect();
        let mut frames: HashSet<(u32, u64)> = HashSet::new();
        for p in &s.paths {
            if !added.contains(&format!("{}/{}", s.store_dir, p.info.path)) {
                continue;
            }
            let mut count = |id: crate::cache::ObjectId| -> Result<()> {
                let loc = cache
                    .location(id)
                    .ok_or(Error::Cache(crate::cache::CacheError::Missing(id)))?;
                if frames.insert((loc.pack, loc.frame_offset)) {
                    r.transfer_bytes += loc.frame_len;
                }
                Ok(())
            };
            count(p.tree.into())?;
            let mut stack = vec![cache.read_tree(&p.tree)?];
            while let Some(n) = stack.pop() {
                match n {
                    Node::Regular { blob, .. } | Node::Rewritten { blob, .. } => {
                        count(blob.into())?
                    }
                    Node::Symlink { .. } => {}
                    Node::Directory(es) => stack.extend(es.into_iter().map(|e| e.node)),
                }
            }
        }
    }
    Ok(r)
}
