//! `verify`: read every file and object of the cache and check every hash: each pack's BLAKE3
//! against its name, each object against its id (trees also decoded and validated), each
//! index and snapshot against its checksum, and that every tree and blob a snapshot needs is
//! present. Problems are collected, not fatal, so one run lists them all.

use std::collections::HashSet;
use std::io::Read;

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{pack_key, BlobId, Cache, Node, ObjectKind, TreeId, PACK_MAGIC};
use crate::error::Result;
use crate::progress::Progress;

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

    let mut objects = cache.objects();
    objects.sort_by_key(|(_, l)| (l.pack, l.frame_offset, l.offset));
    progress.start("checking objects", objects.len() as u64);
    let object_problems: Vec<String> = objects
        .par_chunks(256)
        .flat_map_iter(|chunk| {
            let out: Vec<String> = chunk
                .iter()
                .filter_map(|(id, loc)| {
                    let r = match loc.kind {
                        ObjectKind::Blob => cache.stream(&BlobId(id.0), &mut |_| Ok(())),
                        ObjectKind::Tree => cache.read_tree(&TreeId(id.0)).map(|_| ()),
                    };
                    r.err().map(|e| e.to_string())
                })
                .collect();
            progress.advance(chunk.len() as u64);
            out
        })
        .collect();
    progress.finish();
    report.objects = objects.len();
    report.problems.extend(object_problems);

    let snaps = cache.snapshots()?;
    report.snapshots = snaps.len();
    let mut trees_checked = HashSet::new();
    for (id, snap) in snaps {
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(format!("snapshot {id}: {e}"));
                continue;
            }
        };
        for p in &snap.paths {
            if !trees_checked.insert(p.tree) {
                continue;
            }
            match cache.read_tree(&p.tree) {
                Ok(node) => {
                    let mut missing = Vec::new();
                    Node::for_each_blob(&node, &mut |b, _| {
                        if !cache.contains(*b) {
                            missing.push(*b);
                        }
                    });
                    for b in missing {
                        report.problems.push(format!(
                            "snapshot {}: {}: blob {b} is missing",
                            &id.hex()[..12],
                            p.info.path
                        ));
                    }
                }
                Err(e) => report.problems.push(format!(
                    "snapshot {}: {}: {e}",
                    &id.hex()[..12],
                    p.info.path
                )),
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
