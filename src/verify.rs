//! `verify`: read every file and object of the cache and check every hash: each pack's BLAKE3
//! against its name, each object against its id (trees also decoded and validated), each
//! index and snapshot against its checksum, and that every tree and blob a snapshot needs is
//! present, in an index file the snapshot names (see [`uncovered`]). Problems are collected,
//! not fatal, so one run lists them all.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::storage::StorageError;
use crate::cache::successive::PreviousTrees;
use crate::cache::{
    pack_key, BlobId, Cache, IndexId, Location, Node, ObjectKind, SnapshotId, TreeId, PACK_MAGIC,
};
use crate::error::Result;
use crate::progress::Progress;

/// Decompressed frames verify keeps for reuse.
const FRAME_CACHE_BYTES: usize = 8 << 20;

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Packs checked.
    pub packs: usize,
    /// Objects checked.
    pub objects: usize,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Every problem, one line each, naming the file or object.
    pub problems: Vec<String>,
    /// Scratch files left by writers that were killed (harmless; the next save removes
    /// them): information, not damage.
    pub leftovers: Vec<String>,
    /// Packs no snapshot needs (none of their objects is, or no index names them): what
    /// `storesync gc` frees. Information, not damage; counted only when no problem is found.
    pub garbage_files: usize,
    /// Their bytes.
    pub garbage_bytes: u64,
}

/// A problem found by the object pass.
enum Found {
    /// An object that cannot be read or does not match its id (a tree: which one).
    Damaged(Option<TreeId>, String),
    /// A sound tree naming blobs the index lacks: a problem of the snapshots naming it.
    MissingBlobs(TreeId, String),
}

/// Index positions of the objects some snapshot needs: a bit each, set from several threads.
struct Live(Vec<AtomicU64>);

impl Live {
    fn new(n: usize) -> Self {
        Live((0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn insert(&self, pos: usize) {
        self.0[pos / 64].fetch_or(1 << (pos % 64), Ordering::Relaxed);
    }

    fn contains(&self, pos: usize) -> bool {
        self.0[pos / 64].load(Ordering::Relaxed) & (1 << (pos % 64)) != 0
    }
}

/// An index position no object has: a tree no index file locates.
const NOWHERE: u32 = u32::MAX;

/// The blobs of each live tree, by index position, kept when some snapshot names only some
/// of the index files (see [`uncovered`]): gathered as pairs while trees are checked, then
/// laid out as `blobs[start[t]..start[t + 1]]` (4 bytes a blob and a position, where a map
/// of vectors took over 20 MB more at 100,000 paths).
struct BlobsOf {
    start: Vec<u32>,
    blobs: Vec<u32>,
}

impl BlobsOf {
    fn new(objects: usize, mut pairs: Vec<(u32, u32)>) -> Self {
        pairs.sort_unstable();
        let mut start = vec![0u32; objects + 1];
        for &(t, _) in &pairs {
            start[t as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        BlobsOf {
            start,
            blobs: pairs.into_iter().map(|(_, b)| b).collect(),
        }
    }

    fn of(&self, tree: u32) -> &[u32] {
        let t = tree as usize;
        &self.blobs[self.start[t] as usize..self.start[t + 1] as usize]
    }
}

/// A snapshot naming only some of the index files: its place in the groups, the files it
/// names, and the index position of each of its paths' trees ([`NOWHERE`] when none).
struct Partial {
    group: usize,
    indexes: Vec<IndexId>,
    trees: Vec<u32>,
}

/// Read and check one tree; when it is `live`, mark the blobs it names live too (and keep
/// their positions in `blobs_of`, given one).
fn check_tree(
    cache: &Cache,
    (tree, pos): (TreeId, u32),
    loc: Location,
    is_live: bool,
    live: &Live,
    blobs_of: Option<&Mutex<Vec<(u32, u32)>>>,
) -> Option<Found> {
    let node = match cache.read_tree_at(&tree, loc) {
        Ok(node) => node,
        Err(e) => return Some(Found::Damaged(Some(tree), e.to_string())),
    };
    let mut missing = Vec::new();
    // Kept only when asked for (no allocation per tree otherwise).
    let keep = is_live && blobs_of.is_some();
    let mut blobs = Vec::new();
    Node::for_each_blob(&node, &mut |b, _| match cache.locate(*b) {
        Some((pos, _)) if is_live => {
            live.insert(pos);
            if keep {
                blobs.push(pos as u32);
            }
        }
        Some(_) => {}
        None => missing.push(b.to_string()),
    });
    if let (Some(pairs), true) = (blobs_of, keep) {
        let mut pairs = pairs.lock().expect("blobs of trees");
        pairs.extend(blobs.into_iter().map(|b| (pos, b)));
    }
    (!missing.is_empty()).then(|| {
        let blobs = missing.join(", ");
        Found::MissingBlobs(tree, format!("blob {blobs} is missing"))
    })
}

/// Packs no snapshot needs (none of their objects is `live`, or no index names them) and
/// their bytes. A cache that cannot list shows only its newest snapshots: marking from
/// those would call what older ones need garbage, so there a collection's dry run, on the
/// view that lists, says it.
fn garbage(cache: &Cache, live: &Live) -> std::result::Result<(usize, u64), StorageError> {
    let storage = cache.storage();
    if !storage.can_list() {
        let policy = crate::cache::gc::GcPolicy {
            dry_run: true,
            ..Default::default()
        };
        return Ok(
            match crate::cache::gc::gc(cache, &policy, &crate::progress::NoProgress) {
                Ok(g) => (g.packs_retired, g.bytes_pending),
                Err(_) => (0, 0),
            },
        );
    }
    let packs = cache.packs();
    let mut needed = vec![false; packs.len()];
    let mut pos = 0usize;
    cache.for_each_object(&mut |_, loc| {
        if live.contains(pos) {
            needed[loc.pack as usize] = true;
        }
        pos += 1;
    });
    let named: HashSet<String> = packs.iter().map(pack_key).collect();
    let unneeded = packs
        .iter()
        .zip(&needed)
        .filter(|(_, &n)| !n)
        .map(|(p, _)| pack_key(p));
    let unnamed = storage
        .list("packs")?
        .into_iter()
        .filter(|k| !named.contains(k));
    let (mut files, mut bytes) = (0, 0);
    for key in unneeded.chain(unnamed) {
        files += 1;
        bytes += storage.size(&key)?.unwrap_or(0);
    }
    Ok((files, bytes))
}

/// Check the whole cache.
///
/// # Errors
/// Only when the cache cannot be listed; damage is reported in [`VerifyReport::problems`].
pub fn verify(cache: &Cache, progress: &dyn Progress) -> Result<VerifyReport> {
    let storage = cache.storage();
    let mut report = VerifyReport {
        problems: cache.warnings(),
        leftovers: storage
            .leftovers()
            .iter()
            .map(|k| storage.describe(k))
            .collect(),
        ..Default::default()
    };
    progress.start("checking packs", cache.packs().len() as u64);
    let pack_problems: Vec<String> = cache
        .packs()
        .par_iter()
        .filter_map(|id| {
            let key = pack_key(id);
            let r = (|| -> std::result::Result<(), String> {
                let size = storage.size(&key).map_err(|e| e.to_string())?.unwrap_or(0);
                let mut r = storage
                    .get_range(&key, 0, size)
                    .map_err(|e| e.to_string())?;
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut first = true;
                loop {
                    let n = r.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    if first && (n < 8 || &buf[..8] != PACK_MAGIC) {
                        return Err("not a pack file (bad magic)".into());
                    }
                    first = false;
                    h.update(&buf[..n]);
                }
                if h.finalize().as_bytes() != &id.0 {
                    return Err("content does not match its name (modified or truncated)".into());
                }
                Ok(())
            })();
            progress.advance(1);
            r.err().map(|e| format!("{}: {e}", storage.describe(&key)))
        })
        .collect();
    progress.finish();
    report.packs = cache.packs().len();
    report.problems.extend(pack_problems);

    // Snapshots first, each decoded once: every path's tree must be indexed, and the trees
    // found are marked live (a bit per index position), for the object pass to mark their
    // blobs and for the garbage figure (a collection's dry run for that decoded every
    // snapshot a second time: a third of verify's time at 100,000 paths and 20 snapshots).
    let live = Live::new(cache.object_count());
    let groups = cache.snapshot_groups()?;
    let mut unreadable: HashSet<SnapshotId> = HashSet::new();
    let mut trees_missing = false;
    let mut previous = PreviousTrees::default();
    // The index position of each tree of the previous list: a tree the walk finds there
    // takes it from there, unlooked-up.
    let mut previous_at: Vec<u32> = Vec::new();
    // Snapshots naming only some of the index files (a restore reads only those: see
    // `uncovered`).
    let every_file: HashSet<IndexId> = cache.index_files().into_iter().collect();
    let mut partial: Vec<Partial> = Vec::new();
    progress.start("checking snapshots", groups.len() as u64);
    for (n, (id, refs)) in groups.iter().enumerate() {
        report.snapshots += 1;
        match cache.read_any(refs) {
            Ok(snap) => {
                let names_some =
                    snap.version >= 2 && !every_file.iter().all(|f| snap.indexes.contains(f));
                // Only the trees the snapshot checked before lacks are looked up: the others
                // are marked, or found missing, already.
                let trees: Vec<TreeId> = snap.paths.iter().map(|p| p.tree).collect();
                crate::cache::recycle_paths(snap.paths);
                let mut at = vec![NOWHERE; trees.len()];
                previous.walk_matched(trees, &mut |i, tree, found| {
                    at[i] = match found {
                        Some(j) => previous_at[j],
                        None => match cache.locate(*tree) {
                            Some((pos, _)) => {
                                live.insert(pos);
                                pos as u32
                            }
                            None => {
                                trees_missing = true;
                                NOWHERE
                            }
                        },
                    };
                });
                if names_some {
                    partial.push(Partial {
                        group: n,
                        indexes: snap.indexes,
                        trees: at.clone(),
                    });
                }
                previous_at = at;
            }
            Err(e) => {
                report.problems.push(format!("snapshot {id}: {e}"));
                unreadable.insert(*id);
            }
        }
        progress.advance(1);
    }
    progress.finish();
    crate::cache::release_spare_paths();

    // Objects in pack order, so that each frame is decompressed about once; a tree's blobs
    // are looked up in the index as it is checked (and marked live when the tree is), so
    // the snapshots need no tree read again. Only damaged trees are remembered (with their
    // problem), for the snapshots that name them.
    // Frames are read in order, each about once, by a few threads side by side: a few
    // suffice (at 100,000 paths the default budget was 16 MB of a 117 MB peak).
    cache.limit_frames(FRAME_CACHE_BYTES);
    let blobs_of: Option<Mutex<Vec<(u32, u32)>>> = (!partial.is_empty()).then(Default::default);
    let objects = cache.positions_in_pack_order();
    progress.start("checking objects", objects.len() as u64);
    let checked: Vec<Found> = objects
        .par_chunks(256)
        .flat_map_iter(|chunk| {
            let out: Vec<Found> = chunk
                .iter()
                .filter_map(|&pos| {
                    let (id, loc) = cache.object_at(pos as usize);
                    match loc.kind {
                        ObjectKind::Blob => cache
                            .stream_at(&BlobId(id.0), loc, &mut |_| Ok(()))
                            .err()
                            .map(|e| Found::Damaged(None, e.to_string())),
                        ObjectKind::Tree => {
                            let is_live = live.contains(pos as usize);
                            let keep = blobs_of.as_ref();
                            check_tree(cache, (TreeId(id.0), pos), loc, is_live, &live, keep)
                        }
                    }
                })
                .collect();
            progress.advance(chunk.len() as u64);
            out
        })
        .collect();
    progress.finish();
    report.objects = objects.len();
    drop(objects);
    let mut bad_trees: HashMap<TreeId, String> = HashMap::new();
    for found in checked {
        match found {
            Found::MissingBlobs(t, problem) => {
                bad_trees.insert(t, problem);
            }
            Found::Damaged(tree, problem) => {
                if let Some(t) = tree {
                    bad_trees.insert(t, problem.clone());
                }
                report.problems.push(problem);
            }
        }
    }

    // Only when a snapshot names a tree that is missing or unsound: the snapshots again, one
    // at a time, to report each such tree once, with the first snapshot path naming it.
    if trees_missing || !bad_trees.is_empty() {
        let mut reported: HashSet<TreeId> = HashSet::new();
        for (id, refs) in &groups {
            if unreadable.contains(id) {
                continue;
            }
            let Ok(snap) = cache.read_any(refs) else {
                continue;
            };
            for p in &snap.paths {
                let problem = if !cache.contains(p.tree) {
                    crate::cache::CacheError::Missing(p.tree.into()).to_string()
                } else if let Some(e) = bad_trees.get(&p.tree) {
                    e.clone()
                } else {
                    continue;
                };
                if reported.insert(p.tree) {
                    report.problems.push(format!(
                        "snapshot {}: {}: {problem}",
                        &id.hex()[..12],
                        p.info.path
                    ));
                }
            }
        }
    }
    if let Some(pairs) = blobs_of {
        let pairs = pairs.into_inner().expect("blobs of trees");
        let blobs_of = BlobsOf::new(cache.object_count(), pairs);
        report
            .problems
            .extend(uncovered(cache, &groups, &partial, &blobs_of));
    }
    if report.problems.is_empty() {
        // Information only: a listing that fails here leaves it out.
        if let Ok((files, bytes)) = garbage(cache, &live) {
            report.garbage_files = files;
            report.garbage_bytes = bytes;
        }
    }
    Ok(report)
}

/// The snapshots of `partial` whose paths need an object none of the index files they name
/// locates: a restore reads only the index files its snapshot names (format v2), so it
/// would fail those paths though the cache holds the object elsewhere. One line per such
/// snapshot: how many paths, and the first one with the object it lacks. `blobs_of`: each
/// live tree's blobs (a tree that could not be read is reported already, and checked here
/// by itself).
fn uncovered(
    cache: &Cache,
    groups: &[(SnapshotId, Vec<crate::cache::SnapshotRef>)],
    partial: &[Partial],
    blobs_of: &BlobsOf,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut positions: HashMap<IndexId, Vec<u32>> = HashMap::new();
    let mut covered = Live::new(0);
    let mut covered_by: Option<&[IndexId]> = None;
    for p in partial {
        if covered_by != Some(p.indexes.as_slice()) {
            covered = Live::new(cache.object_count());
            for f in &p.indexes {
                // A damaged or missing index file locates nothing; the index's warnings
                // say so.
                let pos = positions
                    .entry(*f)
                    .or_insert_with(|| cache.index_file_positions(f).unwrap_or_default());
                for &o in pos.iter() {
                    covered.insert(o as usize);
                }
            }
            covered_by = Some(p.indexes.as_slice());
        }
        let mut lacking = 0usize;
        let mut first = None;
        // A tree no index file locates is reported already.
        for (i, &tree) in p.trees.iter().enumerate().filter(|(_, &t)| t != NOWHERE) {
            let mut need = std::iter::once(tree).chain(blobs_of.of(tree).iter().copied());
            if let Some(lost) = need.find(|&o| !covered.contains(o as usize)) {
                lacking += 1;
                first.get_or_insert((i, lost));
            }
        }
        let Some((i, lost)) = first else {
            continue;
        };
        let (id, refs) = &groups[p.group];
        // Only now the snapshot again, to name the path.
        let path = cache
            .read_any(refs)
            .ok()
            .and_then(|s| s.paths.get(i).map(|p| p.info.path.to_string()))
            .unwrap_or_else(|| format!("path {}", i + 1));
        let (obj, loc) = cache.object_at(lost as usize);
        let kind = match loc.kind {
            ObjectKind::Tree => "tree",
            ObjectKind::Blob => "blob",
        };
        problems.push(format!(
            "snapshot {}: {lacking} paths need objects that none of the {} index files it \
             names locates (a restore reads only those; the cache holds them in others), \
             first {path}: {kind} {obj}",
            &id.hex()[..12],
            p.indexes.len()
        ));
    }
    problems
}
