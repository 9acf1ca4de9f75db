//! `verify`: read every file and object of the cache and check every hash: each pack's BLAKE3
//! against its name, each object against its id (trees also decoded and validated), each
//! index and snapshot against its checksum, and that every tree and blob a snapshot needs is
//! present. Problems are collected, not fatal, so one run lists them all.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{pack_key, BlobId, Cache, Node, ObjectKind, TreeId, PACK_MAGIC};
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
    /// Packs no snapshot needs, and files waiting in `gc/` lists (what `storesync gc` would
    /// free): information, not damage.
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

    // Objects in pack order, so that each frame is decompressed about once; a tree's blobs
    // are looked up in the index as it is checked, so the snapshots need no tree read again.
    // Only damaged trees are remembered (with their problem), for the snapshots that name them.
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
                .map(|&pos| cache.object_at(pos as usize))
                .filter_map(|(id, loc)| match loc.kind {
                    ObjectKind::Blob => cache
                        .stream(&BlobId(id.0), &mut |_| Ok(()))
                        .err()
                        .map(|e| Found::Damaged(None, e.to_string())),
                    ObjectKind::Tree => {
                        let tree = TreeId(id.0);
                        match cache.read_tree(&tree) {
                            Ok(node) => {
                                let mut missing = Vec::new();
                                Node::for_each_blob(&node, &mut |b, _| {
                                    if !cache.contains(*b) {
                                        missing.push(b.to_string());
                                    }
                                });
                                (!missing.is_empty()).then(|| {
                                    let blobs = missing.join(", ");
                                    Found::MissingBlobs(tree, format!("blob {blobs} is missing"))
                                })
                            }
                            Err(e) => Some(Found::Damaged(Some(tree), e.to_string())),
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

    // Snapshots one at a time: each path's tree must be indexed and sound. A damaged tree
    // is reported once, with the first snapshot path that names it.
    let mut reported: HashSet<TreeId> = HashSet::new();
    for (id, refs) in cache.snapshot_groups()? {
        report.snapshots += 1;
        let snap = match cache.read_any(&refs) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(format!("snapshot {id}: {e}"));
                continue;
            }
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
    if report.problems.is_empty() {
        let policy = crate::cache::gc::GcPolicy {
            dry_run: true,
            ..Default::default()
        };
        if let Ok(g) = crate::cache::gc::gc(cache, &policy, &crate::progress::NoProgress) {
            report.garbage_files = g.packs_retired;
            report.garbage_bytes = g.bytes_pending;
        }
    }
    Ok(report)
}
