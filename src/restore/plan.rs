//! Restore's plan: which of a snapshot's paths the target lacks, in the order they must be
//! registered (references first). A value that `--dry-run` prints; nothing is written here.

use std::collections::HashMap;
use std::fs;

use crate::cache::Snapshot;
use crate::cache::SnapshotId;
use crate::closure::Graph;
use crate::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::path::{StorePath, HASH_PART_LEN};
use crate::store::path_info::NarHash;

/// What a restore will do.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The snapshot's id.
    pub snapshot_id: SnapshotId,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Paths of the selected closure (indices into `snapshot.paths`).
    pub selected: usize,
    /// The selected closure itself, references first (indices into `snapshot.paths`).
    pub closure: Vec<usize>,
    /// Missing paths to write, references first.
    pub missing: Vec<usize>,
    /// Among `missing`, paths the DB calls valid (with the snapshot's hash) but that are absent
    /// from disk: written again, not registered again.
    pub repair: Vec<usize>,
    /// Selected paths already valid in the target and present on disk.
    pub already_valid: usize,
    /// Paths valid in the DB, absent from disk, and registered with another hash than the
    /// snapshot's (indices into `snapshot.paths`): left alone, reported; what refers to them
    /// is skipped, as they are not on disk.
    pub broken: Vec<usize>,
    /// Paths not valid in the target whose hash part is that of a valid path of another name
    /// (with that path's full name): the daemons find a path by its hash part (docs/SECURITY.md),
    /// so one would shadow the other. Never locked, written or registered: they fail, and their
    /// referrers are skipped.
    pub shadowing: Vec<(usize, String)>,
    /// Per missing path that has any, its siblings: base names of paths valid in the target
    /// with the same name and another hash part (older builds of the same package), where
    /// its files' blobs may be found (`restore::siblings`).
    pub siblings: HashMap<usize, Vec<String>>,
}

impl RestorePlan {
    /// NAR bytes to write.
    pub fn bytes(&self) -> u64 {
        self.missing
            .iter()
            .map(|&i| self.snapshot.paths[i].info.nar_size)
            .fold(0u64, u64::saturating_add) // sizes a cache gives: no overflow
    }

    /// The full paths of `broken`.
    pub fn broken_paths(&self, layout: &Layout) -> Vec<String> {
        self.broken
            .iter()
            .map(|&i| layout.store_dir.display(&self.snapshot.paths[i].info.path))
            .collect()
    }

    /// The failures of the paths of `shadowing`, one message each naming both paths.
    pub fn shadowing_failures(&self, layout: &Layout) -> Vec<super::Failure> {
        self.shadowing
            .iter()
            .map(|(i, other)| {
                let path = layout.store_dir.display(&self.snapshot.paths[*i].info.path);
                super::Failure {
                    error: format!(
                        "{path}: its hash part is that of {other}, valid in the target (the \
                         daemons find a path by its hash part): not restored"
                    ),
                    path,
                }
            })
            .collect()
    }
}

/// Choose the paths to write.
///
/// # Errors
/// [`Error::Usage`] when the snapshot is of another flavour or store directory, or a requested
/// path is not in it.
pub fn plan(
    layout: &Layout,
    snapshot_id: SnapshotId,
    snapshot: Snapshot,
    valid: &HashMap<String, String>,
    roots: &[String],
) -> Result<RestorePlan> {
    if snapshot.flavor != layout.flavor || snapshot.store_dir != layout.store_dir.as_str() {
        return Err(Error::Usage(format!(
            "snapshot {} is of a {} store at {}, not {} at {} (see --flavor, --store-dir)",
            &snapshot_id.hex()[..12],
            snapshot.flavor.name(),
            snapshot.store_dir,
            layout.flavor.name(),
            layout.store_dir.as_str()
        )));
    }
    let index: HashMap<&StorePath, usize> = snapshot
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (&p.info.path, i))
        .collect();
    let graph = reference_graph(&snapshot);
    let mask = if roots.is_empty() {
        vec![true; snapshot.paths.len()]
    } else {
        let mut starts = Vec::new();
        for r in roots {
            let sp = layout
                .store_dir
                .parse_prefix(r)
                .or_else(|_| StorePath::from_base_name(r))
                .map_err(|e| Error::Usage(format!("{r}: {e}")))?;
            let i = index.get(&sp).ok_or_else(|| {
                Error::Usage(format!("{r}: not in snapshot {}", &snapshot_id.hex()[..12]))
            })?;
            starts.push(*i);
        }
        graph.closure(starts)
    };
    let order = graph.topo_order(&mask).map_err(|c| {
        Error::Integrity(format!(
            "snapshot has a reference cycle through {}",
            snapshot.paths[c.0].info.path
        ))
    })?;
    let selected = order.len();
    let store = layout.real_store_dir();
    let (mut missing, mut repair, mut broken) = (Vec::new(), Vec::new(), Vec::new());
    let mut shadowing = Vec::new();
    // Made only when some path is not valid (most restores of a warm store write nothing).
    let mut valid_by_hash: Option<HashMap<&str, &str>> = None;
    for &i in &order {
        let info = &snapshot.paths[i].info;
        let full = layout.store_dir.display(&info.path);
        match valid.get(&full) {
            None => {
                let by_hash = valid_by_hash.get_or_insert_with(|| hash_parts(layout, valid));
                match by_hash.get(info.path.hash_part()) {
                    Some(other) => shadowing.push((i, (*other).to_owned())),
                    None => missing.push(i),
                }
            }
            Some(hash) => {
                if fs::symlink_metadata(store.join(info.path.base_name())).is_ok() {
                    continue;
                }
                if NarHash::parse_db(hash) == Some(info.nar_hash) {
                    missing.push(i);
                    repair.push(i);
                } else {
                    broken.push(i);
                }
            }
        }
    }
    let siblings = super::siblings::siblings_of(&snapshot, &missing, valid, &layout.store_dir);
    Ok(RestorePlan {
        snapshot_id,
        siblings,
        already_valid: selected - missing.len() - broken.len() - shadowing.len(),
        selected,
        closure: order,
        missing,
        repair,
        broken,
        shadowing,
        snapshot,
    })
}

/// Hash part to full path, of the valid paths (`valid`'s keys) of `layout`'s store.
fn hash_parts<'a>(
    layout: &Layout,
    valid: &'a HashMap<String, String>,
) -> HashMap<&'a str, &'a str> {
    let prefix = format!("{}/", layout.store_dir.as_str());
    valid
        .keys()
        .filter_map(|p| Some((p.strip_prefix(&prefix)?.get(..HASH_PART_LEN)?, p.as_str())))
        .collect()
}

/// On a remote cache, plan coalesced reads of the frames the missing paths' files are in
/// ([`Cache::plan_reads`]), leaving out files `.links` holds (they are linked, not read) and
/// files with a source in the store (`sources`: they are copied from an older build, not
/// downloaded). A tree that cannot be read is left out here: its path fails later, with the
/// error.
pub(super) fn plan_reads(
    cache: &crate::cache::Cache,
    snap: &crate::cache::Snapshot,
    missing: &[usize],
    links: &crate::store::links::LinksDir,
    sources: &super::siblings::Sources,
) {
    if !cache.storage().remote() {
        return;
    }
    let mut locations = Vec::new();
    for &i in missing {
        if let Ok(tree) = cache.read_tree(&snap.paths[i].tree) {
            let local = sources.of_path(i);
            let mut n = 0;
            tree.for_each_file(&mut |f| {
                n += 1;
                if local.is_some_and(|l| l.of(n - 1).is_some()) {
                    return;
                }
                if f.size >= crate::store::links::LINKS_MIN_SIZE
                    && links.has_entry(&f.file_nar_hash)
                {
                    return;
                }
                if let Some(l) = cache.location(f.blob) {
                    locations.push(l);
                }
            });
        }
    }
    cache.plan_reads(&locations);
}

/// The snapshot's reference graph (node `i` = `snapshot.paths[i]`). Not kept in the plan:
/// a restore needs it again only when some path fails, is refused or broken, to leave out
/// what refers to it (at 100,000 paths, 10 MB held through the writes otherwise).
pub fn reference_graph(snapshot: &crate::cache::Snapshot) -> Graph {
    Graph::of_keys(
        snapshot
            .paths
            .iter()
            .map(|p| (&p.info.path, &p.info.references)),
    )
}
