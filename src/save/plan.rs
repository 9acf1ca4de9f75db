//! Save's plan: the DB read in one transaction, the requested roots resolved, their
//! closure, and which of its paths the cache lacks (only those are read).

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::SaveOptions;
use crate::cache::Cache;
use crate::cache::TreeId;
use crate::closure::Graph;
use crate::db::{self, DbContents};
use crate::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::path::StorePath;
use crate::store::path_info::NarHash;

/// What a save will do.
pub struct SavePlan {
    /// The DB as read.
    pub db: DbContents,
    /// Requested roots, resolved.
    pub roots: Vec<StorePath>,
    /// Paths of the closure, references first (indices into `db.paths`).
    pub selected: Vec<usize>,
    /// The subset that must be read (not in the cache with the same NAR hash).
    pub new: Vec<usize>,
    pub(super) known: HashMap<StorePath, (NarHash, u64, TreeId)>,
    pub(super) graph: Graph,
}

/// Resolve a user-given root to the store path holding it. Symlinks are followed the way the
/// kernel would if `layout.root` were `/`: absolute targets are re-rooted.
///
/// # Errors
/// [`Error::Usage`] when the path does not lead into the store.
pub fn resolve_root(layout: &Layout, arg: &str) -> Result<StorePath> {
    let store = layout.store_dir.as_str();
    let mut path: PathBuf = if arg.starts_with('/') {
        PathBuf::from(arg)
    } else {
        std::env::current_dir()
            .map_err(|e| Error::Io(arg.into(), e))?
            .join(arg)
    };
    let bad = |why: String| Error::Usage(format!("{arg}: {why}"));
    for _ in 0..64 {
        // Walk components; stop at the first symlink and restart with its target.
        let mut done = PathBuf::from("/");
        let mut followed = false;
        let comps: Vec<Component> = path.components().collect();
        for (i, c) in comps.iter().enumerate() {
            match c {
                Component::RootDir | Component::CurDir => continue,
                Component::ParentDir => {
                    done.pop();
                    continue;
                }
                Component::Normal(n) => done.push(n),
                Component::Prefix(_) => unreachable!("unix"),
            }
            let logical = done.to_string_lossy().into_owned();
            if let Ok(sp) = layout.store_dir.parse(&logical) {
                return Ok(sp);
            }
            let real = crate::store::path::under_root(&layout.root, &logical);
            let meta =
                fs::symlink_metadata(&real).map_err(|e| bad(format!("{}: {e}", real.display())))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&real).map_err(|e| Error::Io(real.clone(), e))?;
                let mut next = if target.is_absolute() {
                    target
                } else {
                    done.parent().unwrap_or(Path::new("/")).join(target)
                };
                for rest in &comps[i + 1..] {
                    next.push(rest.as_os_str());
                }
                path = next;
                followed = true;
                break;
            }
        }
        if !followed {
            return Err(bad(format!("does not lead into the store {store}")));
        }
    }
    Err(bad("too many levels of symbolic links".into()))
}

/// Read the DB and the cache and decide what to save.
///
/// # Errors
/// [`Error::Db`] when the DB cannot be read, [`Error::Usage`] for a root that is not a valid
/// path, [`Error::Integrity`] for a reference cycle.
pub fn plan(layout: &Layout, cache: &Cache, opts: &SaveOptions) -> Result<SavePlan> {
    let db = db::read(layout)?;
    let index: HashMap<&StorePath, usize> = db
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (&p.path, i))
        .collect();
    let graph = Graph::of_keys(db.paths.iter().map(|p| (&p.path, &p.references)));
    let mut roots = Vec::new();
    for r in &opts.roots {
        let sp = resolve_root(layout, r)?;
        if !index.contains_key(&sp) {
            return Err(Error::Usage(format!(
                "{r}: {} is not a valid path in {}",
                layout.store_dir.display(&sp),
                layout.db_file().display()
            )));
        }
        roots.push(sp);
    }
    let mask = if roots.is_empty() {
        vec![true; db.paths.len()]
    } else {
        graph.closure(roots.iter().map(|r| index[r]))
    };
    let selected = graph
        .topo_order(&mask)
        .map_err(|c| Error::Integrity(format!("reference cycle through {}", db.paths[c.0].path)))?;
    let mut known = HashMap::new();
    for (_, snap) in cache.snapshots()? {
        let Ok(snap) = snap else { continue };
        if snap.flavor != layout.flavor || snap.store_dir != layout.store_dir.as_str() {
            continue;
        }
        for p in snap.paths {
            if cache.contains(p.tree) {
                known.insert(p.info.path, (p.info.nar_hash, p.info.nar_size, p.tree));
            }
        }
    }
    let new = selected
        .iter()
        .copied()
        .filter(|&i| {
            known
                .get(&db.paths[i].path)
                .is_none_or(|k| k.0 != db.paths[i].nar_hash)
        })
        .collect();
    Ok(SavePlan {
        db,
        roots,
        selected,
        new,
        known,
        graph,
    })
}
