//! `verify`: read every file and object of the cache and check every hash: each pack's BLAKE3
//! against its name, each object against its id (trees also decoded and validated), each
//! index and snapshot against its checksum, and that every tree and blob a snapshot needs is
//! present. Problems are collected, not fatal, so one run lists them all.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::storage::StorageError;
use crate::cache::successive::PreviousTrees;
use crate::cache::{
    pack_key, BlobId, Cache, Location, Node, ObjectKind, SnapshotId, TreeId, PACK_MAGIC,
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

/// Read and check one tree; when it is `live`, mark the blobs it names live too.
fn check_tree(
    cache: &Cache,
    tree: TreeId,
    loc: Location,
    is_live: bool,
    live: &Live,
) -> Option<Found> {
    let node = match cache.read_tree_at(&tree, loc) {
        Ok(node) => node,
        Err(e) => return Some(Found::Damaged(Some(tree), e.to_string())),
    };
    let mut missing = Vec::new();
    Node::for_each_blob(&node, &mut |b, _| match cache.locate(*b) {
        Some((pos, _)) if is_live => live.insert(pos),
        Some(_) => {}
        None => missing.push(b.to_string()),
    });
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
    progress.start("checking snapshots", groups.len() as u64);
    for (id, refs) in &groups {
        report.snapshots += 1;
        match cache.read_any(refs) {
            Ok(snap) => {
                // Only the trees the snapshot checked before lacks are looked up: the others
                // are marked, or found missing, already.
                let trees = snap.paths.iter().map(|p| p.tree).collect();
                crate::cache::recycle_paths(snap.paths);
                previous.walk(trees, &mut |tree| match cache.locate(tree) {
                    Some((pos, _)) => live.insert(pos),
                    None => trees_missing = true,
                });
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
                            check_tree(cache, TreeId(id.0), loc, live.contains(pos as usize), &live)
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
    if report.problems.is_empty() {
        // Information only: a listing that fails here leaves it out.
        if let Ok((files, bytes)) = garbage(cache, &live) {
            report.garbage_files = files;
            report.garbage_bytes = bytes;
        }
    }
    Ok(report)
}
