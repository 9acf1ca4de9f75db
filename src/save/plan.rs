//! Save's plan: the DB read in one transaction, the requested roots resolved, their
//! closure, and which of its paths the cache lacks (only those are read).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::SaveOptions;
use crate::cache::{Cache, Snapshot, SnapshotId, TreeId};
use crate::closure::Graph;
use crate::db::{self, DbContents};
use crate::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::path::StorePath;
use crate::store::path_info::NarHash;
use crate::trust::TrustedKeys;

/// What a save will do. [`SavePlan::summary`] is the printable part (`save --dry-run`).
pub struct SavePlan {
    /// The DB as read.
    pub db: DbContents,
    /// Requested roots, resolved.
    pub roots: Vec<StorePath>,
    /// Paths of the closure, references first (indices into `db.paths`).
    pub selected: Vec<usize>,
    /// The subset that must be read (not in the cache with the same NAR hash).
    pub new: Vec<usize>,
    pub(super) known: Vec<Option<(NarHash, u64, TreeId)>>,
    /// The snapshot this save builds on (see [`base_snapshot`]), whose paths need no read.
    pub base: Option<(SnapshotId, Snapshot)>,
    /// Packs the base snapshot's index files name that the storage no longer lists (evicted,
    /// expired, deleted); 0 for a storage that cannot list.
    pub missing_packs: usize,
    /// Paths of the base (and of the closure, with the same NAR hash) read again because an
    /// object they need is absent from the cache.
    pub reread_paths: usize,
}

/// The snapshot a save builds on: the newest saved under the same key, else the newest of
/// the same store; with `keys`, the newest of those signed by one of them (each snapshot's
/// signature checked before anything of it is read; a cache writer without the key can add
/// a newer snapshot naming, under the DB's NAR hash, a tree of other bytes, which a signing
/// save would otherwise name without reading the path, or sign whole when unchanged). Only its
/// head and body are read (heads of the others), so a save costs the same whatever the number
/// of snapshots; its paths are the ones not read again, and (for v2) its index files the only
/// ones loaded, so the new snapshot names exactly those plus the one this save writes.
///
/// # Errors
/// [`Error::Cache`] when the snapshots cannot be listed.
pub fn base_snapshot(
    layout: &Layout,
    cache: &Cache,
    key: &str,
    keys: &TrustedKeys,
) -> Result<Option<(SnapshotId, Snapshot)>> {
    let signed = |id: &SnapshotId| {
        if keys.is_empty() {
            return Ok(());
        }
        cache
            .check_signature(id, keys)
            .map(drop)
            .map_err(|e| crate::error::Chain(&e).to_string())
    };
    let accept = |id: &SnapshotId, h: &crate::cache::SnapshotHead| {
        if h.flavor != layout.flavor || h.store_dir != layout.store_dir.as_str() {
            return Err("another store".to_string());
        }
        signed(id)
    };
    match cache.find_by_key_admitting(key, &[String::new()], &signed, &accept) {
        Ok(m) => Ok(Some((m.id, m.snapshot))),
        Err(crate::cache::CacheError::NoSnapshot(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The printable part of a [`SavePlan`]: what `save --dry-run` shows (`--json` prints it as
/// is; docs/CLI.md describes the fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SavePlanSummary {
    /// Always true: nothing was read from the store nor written to the cache.
    pub dry_run: bool,
    /// The requested roots, resolved to store paths (empty: every valid path).
    pub roots: Vec<String>,
    /// Paths of the closure, which the snapshot would list.
    pub paths: usize,
    /// NAR bytes of those paths, as the DB records them.
    pub nar_bytes: u64,
    /// Paths already in the cache with the same NAR hash (not read).
    pub cached_paths: usize,
    /// Paths the save would read from the store.
    pub new_paths: usize,
    /// Their names, references first.
    pub new_path_names: Vec<String>,
    /// Their NAR bytes, as the DB records them: what the save would read.
    pub nar_bytes_to_read: u64,
    /// Packs the base snapshot's index files name that the cache no longer holds.
    pub missing_packs: usize,
    /// Paths of the base that would be read again, because an object they need is absent.
    pub reread_paths: usize,
}

impl SavePlan {
    /// What this plan would do, in names and numbers.
    pub fn summary(&self, layout: &Layout) -> SavePlanSummary {
        let name = |i: &usize| layout.store_dir.display(&self.db.paths[*i].path);
        let size = |i: &usize| self.db.paths[*i].nar_size;
        SavePlanSummary {
            dry_run: true,
            roots: self
                .roots
                .iter()
                .map(|r| layout.store_dir.display(r))
                .collect(),
            paths: self.selected.len(),
            nar_bytes: self.selected.iter().map(size).fold(0, u64::saturating_add),
            cached_paths: self.selected.len() - self.new.len(),
            new_paths: self.new.len(),
            new_path_names: self.new.iter().map(name).collect(),
            nar_bytes_to_read: self.new.iter().map(size).fold(0, u64::saturating_add),
            missing_packs: self.missing_packs,
            reread_paths: self.reread_paths,
        }
    }
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
                }
                Component::Normal(n) => done.push(n),
                Component::Prefix(_) => unreachable!("unix"),
            }
            let logical = done.to_string_lossy().into_owned();
            // The store path holding the root, unless a `..` further on leaves it
            // (`/gnu/store/A-x/../B-y` is B-y, as the kernel resolves it).
            let leaves = comps[i + 1..].contains(&Component::ParentDir);
            if let (Ok(sp), false) = (layout.store_dir.parse(&logical), leaves) {
                return Ok(sp);
            }
            if *c == Component::ParentDir {
                // Back to a directory already looked at.
                continue;
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

/// The store paths the daemon's garbage collector keeps: every symlink under the GC roots
/// directory (`<state>/gcroots`, beside the DB directory: `/var/guix/gcroots`,
/// `/nix/var/nix/gcroots`) that leads into the store, followed as [`resolve_root`] follows
/// links (inside `--root`), through the profiles and the `auto/` indirections the roots
/// directory links to; dangling roots are skipped, as the daemon skips them. Directories are
/// walked to a bounded depth, each once.
///
/// # Errors
/// [`Error::Io`] when the roots directory cannot be read.
pub fn gc_roots(layout: &Layout) -> Result<Vec<String>> {
    let state = std::path::Path::new(&layout.db_dir_logical)
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join("gcroots");
    let mut found = std::collections::BTreeSet::new();
    let mut seen_dirs = std::collections::HashSet::new();
    let mut stack = vec![(state.to_string_lossy().into_owned(), 0usize)];
    while let Some((logical, depth)) = stack.pop() {
        let real = crate::store::path::under_root(&layout.root, &logical);
        let entries = match fs::read_dir(&real) {
            Ok(e) => e,
            Err(e) if depth == 0 && e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) if depth == 0 => return Err(Error::Io(real, e)),
            Err(_) => continue,
        };
        if !seen_dirs.insert(real.clone()) {
            continue;
        }
        for e in entries.flatten() {
            let name = e.file_name();
            let child = format!("{logical}/{}", name.to_string_lossy());
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_symlink() {
                match resolve_root(layout, &child) {
                    Ok(sp) => {
                        found.insert(layout.store_dir.display(&sp));
                    }
                    // A link to a directory of links (the profiles directory): walk it,
                    // re-rooted like every absolute target.
                    Err(_) if depth < 8 => {
                        let target = fs::read_link(e.path()).unwrap_or_default();
                        let next = if target.is_absolute() {
                            target.to_string_lossy().into_owned()
                        } else {
                            format!("{logical}/{}", target.to_string_lossy())
                        };
                        let real = crate::store::path::under_root(&layout.root, &next);
                        if fs::symlink_metadata(&real).is_ok_and(|m| m.is_dir()) {
                            stack.push((next, depth + 1));
                        }
                    }
                    Err(_) => {} // dangling, or outside the store
                }
            } else if ft.is_dir() && depth < 8 {
                stack.push((child, depth + 1));
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// The DB's reference graph (node `i` = `db.paths[i]`). Not kept in the plan: a save
/// needs it again only when some path fails, to drop what refers to it (at 100,000 paths,
/// 11 MB held through the walk otherwise).
pub(super) fn reference_graph(db: &DbContents) -> Graph {
    Graph::of_keys(db.paths.iter().map(|p| (&p.path, &p.references)))
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
    let graph = reference_graph(&db);
    let mut roots = Vec::new();
    let mut requested = opts.roots.clone();
    if opts.gc_roots {
        let from_gc = gc_roots(layout)?;
        if from_gc.is_empty() {
            return Err(Error::Usage(format!(
                "--gc-roots: no GC root leads into the store under {}",
                crate::store::path::under_root(&layout.root, &layout.db_dir_logical)
                    .parent()
                    .map(|p| p.join("gcroots").display().to_string())
                    .unwrap_or_default()
            )));
        }
        // Roots the daemon keeps but that are not valid (being built) are not saved.
        requested.extend(from_gc.into_iter().filter(|r| {
            layout
                .store_dir
                .parse(r)
                .is_ok_and(|sp| index.contains_key(&sp))
        }));
    }
    for r in &requested {
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
    let base = base_snapshot(layout, cache, &opts.key, &opts.base_keys)?;
    if let Some((_, b)) = &base {
        if b.version >= 2 {
            cache.use_indexes(&b.indexes);
        }
    }
    // A v2 base whose index files are all there, and whose packs the storage all lists,
    // vouches for its trees (a snapshot is written only after every object it names is
    // durable): the index is then read only if a path is new, and an unchanged save reads
    // none of its entries. Otherwise each tree is read and it and its blobs looked up (an
    // object whose only pack is missing is absent), so a path whose objects are gone is
    // read again and its objects written again.
    let packs = match &base {
        Some((_, b)) if b.version >= 2 => Some(base_packs(cache, &b.indexes)?),
        _ => None,
    };
    let vouched = packs
        .as_ref()
        .is_some_and(|p| p.indexes_whole && p.missing.is_empty());
    let mut missing_packs = packs.map_or(0, |p| p.missing.len());
    let known_of = |vouched: bool| {
        let mut known: Vec<Option<(NarHash, u64, TreeId)>> = vec![None; db.paths.len()];
        let mut reread = 0;
        for p in base.iter().flat_map(|(_, b)| &b.paths) {
            if let Some(&i) = index.get(&p.info.path) {
                if vouched || held_whole(cache, p.tree) {
                    known[i] = Some((p.info.nar_hash, p.info.nar_size, p.tree));
                } else if mask[i] && p.info.nar_hash == db.paths[i].nar_hash {
                    reread += 1;
                }
            }
        }
        let new: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|&i| known[i].is_none_or(|k| k.0 != db.paths[i].nar_hash))
            .collect();
        (known, reread, new)
    };
    let (mut known, mut reread, mut new) = known_of(vouched);
    // A storage that cannot list (`gha://`): when a path is new, the save reads the base's
    // index anyway (its objects are looked up), asking whether each pack it names exists;
    // read now, a missing pack makes the base's paths looked up as above.
    if vouched && !new.is_empty() && !cache.storage().can_list() {
        let missing = cache.missing_packs();
        if !missing.is_empty() {
            missing_packs = missing.len();
            (known, reread, new) = known_of(false);
        }
    }
    drop(index);
    Ok(SavePlan {
        db,
        roots,
        selected,
        new,
        known,
        base,
        missing_packs,
        reread_paths: reread,
    })
}

/// What [`base_packs`] found of a base snapshot's index files and packs.
struct BasePacks {
    /// Every index file is there and readable (for a storage that cannot list: there).
    indexes_whole: bool,
    /// The packs those index files name that the storage's listing of `packs` lacks.
    missing: Vec<crate::cache::PackId>,
}

/// Check the index files `indexes` of a base snapshot and the packs they name: one listing
/// of `packs`, and the start of each index file read for its pack table
/// ([`Cache::index_pack_table`]: 64 KiB, not the whole file, which holds tens of MB at
/// 100,000 paths), instead of asking its size, as a storage that cannot list still is:
/// there the packs are not checked here; [`plan`] asks the loaded index when a path is new.
///
/// # Errors
/// [`Error::Cache`] when the packs cannot be listed.
fn base_packs(cache: &Cache, indexes: &[crate::cache::IndexId]) -> Result<BasePacks> {
    let storage = cache.storage();
    if !storage.can_list() {
        let indexes_whole = indexes
            .iter()
            .all(|id| matches!(storage.size(&crate::cache::index_key(id)), Ok(Some(_))));
        return Ok(BasePacks {
            indexes_whole,
            missing: Vec::new(),
        });
    }
    let listed: HashSet<String> = storage
        .list("packs")
        .map_err(|e| Error::Cache(crate::cache::CacheError::Storage(e)))?
        .into_iter()
        .collect();
    let mut indexes_whole = true;
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for id in indexes {
        if !seen.insert(*id) {
            continue;
        }
        match cache.index_pack_table(id) {
            Ok(Some(packs)) => missing.extend(
                packs
                    .into_iter()
                    .filter(|p| !listed.contains(&crate::cache::pack_key(p))),
            ),
            // Absent or damaged: its objects are absent when the index is loaded.
            Ok(None) | Err(_) => indexes_whole = false,
        }
    }
    missing.sort_unstable();
    missing.dedup();
    Ok(BasePacks {
        indexes_whole,
        missing,
    })
}

/// Whether the tree `tree` and every blob it names are in the cache (a tree that cannot be
/// read is not).
fn held_whole(cache: &Cache, tree: TreeId) -> bool {
    cache.contains(tree)
        && cache.read_tree(&tree).is_ok_and(|node| {
            let mut all = true;
            crate::cache::Node::for_each_blob(&node, &mut |b, _| all &= cache.contains(*b));
            all
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::Flavor;

    /// Found by review: a root with a `..` after the first store path it reached resolved to
    /// that path, so `/gnu/store/A-x/../B-y` saved the closure of A-x, exit 0.
    #[test]
    fn a_root_resolves_as_the_kernel_would_through_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, dir.path(), None, None).unwrap();
        let (a, b) = (
            "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-a",
            "1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-b",
        );
        for base in [a, b] {
            fs::create_dir_all(layout.real_store_dir().join(base).join("bin")).unwrap();
        }
        let base = |arg: &str| resolve_root(&layout, arg).unwrap().base_name().to_owned();
        assert_eq!(base(&format!("/gnu/store/{a}/../{b}")), b);
        assert_eq!(base(&format!("/gnu/store/{a}/bin/../../{b}/bin")), b);
        assert_eq!(base(&format!("/gnu/store/{a}/bin/..")), a);
        assert_eq!(base(&format!("/gnu/store/{a}/bin")), a);
        assert!(resolve_root(&layout, &format!("/gnu/store/{a}/../..")).is_err());
    }
}
