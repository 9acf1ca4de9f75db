//! `save`: snapshot the closure of some store paths into the cache.
//!
//! [`plan`] reads the DB in one read transaction, resolves the requested roots (store paths, or
//! links to them such as profiles, followed inside `--root`), takes their closure, and splits it
//! into paths the cache already holds with the same NAR hash (not read at all) and new paths.
//! [`execute`] walks each new path once, in parallel: file contents become BLAKE3-keyed blobs
//! in packs, the structure a tree, and the NAR SHA-256 computed on the way must equal the DB's
//! hash, else the path is corrupt. The snapshot is written last.

mod plan;
mod walk;

pub use plan::{plan, resolve_root, SavePlan, SavePlanSummary};
use walk::{Walked, Walker};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{Cache, ObjectKind, PackStats, Packer, Snapshot, SnapshotPath, TreeId};
use crate::db;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::layout::Layout;
use crate::store::path::StorePath;

/// Options of a save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Store paths or links to them; empty means every valid path.
    pub roots: Vec<String>,
    /// Drop corrupt paths (and their referrers) instead of failing.
    pub skip_corrupt: bool,
    /// zstd level for new blobs.
    pub level: i32,
}

/// What a save did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SaveReport {
    /// Id of the snapshot now describing the closure.
    pub snapshot: String,
    /// True when an identical snapshot existed and none was written.
    pub unchanged: bool,
    /// Paths in the snapshot.
    pub paths: usize,
    /// Paths read from the store (not already cached).
    pub new_paths: usize,
    /// Their names.
    pub new_path_names: Vec<String>,
    /// NAR bytes of the snapshot.
    pub nar_bytes: u64,
    /// Bytes of file contents read from the store.
    pub bytes_read: u64,
    /// New objects written.
    pub new_objects: u64,
    /// Compressed bytes appended to packs.
    pub packed_bytes: u64,
    /// Corrupt paths found (with --skip-corrupt: dropped), with the reason.
    pub corrupt: Vec<(String, String)>,
    /// Paths dropped because they refer to a corrupt path.
    pub dropped_referrers: Vec<String>,
    /// Paths deleted (garbage-collected) while the save ran, dropped with their referrers.
    pub vanished: Vec<String>,
}

/// Save the planned closure: read new paths, write objects, then the snapshot.
///
/// # Errors
/// [`Error::Integrity`] when a path's content does not match the DB (unless `skip_corrupt`);
/// [`Error::Cache`] or [`Error::Nar`] for I/O failures, naming the file. No snapshot is
/// written on error, but objects already packed stay usable by the next save.
pub fn execute(
    layout: &Layout,
    cache: &Cache,
    plan: SavePlan,
    opts: &SaveOptions,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    let SavePlan {
        db,
        roots,
        selected,
        new,
        known,
        graph,
    } = plan;
    let packer = Packer::new(cache, opts.level);
    let walker = Walker {
        packer: &packer,
        inodes: Mutex::new(HashMap::new()),
        bytes_read: AtomicU64::new(0),
        cached_links: OnceLock::new(),
        new_links: Mutex::new(HashMap::new()),
        links_dir: layout.real_store_dir().join(".links"),
        source_links: OnceLock::new(),
    };
    let store = layout.real_store_dir();
    // Largest first, so one big path does not start last and run alone.
    let mut new = new;
    new.sort_by_key(|&i| std::cmp::Reverse(db.paths[i].nar_size));
    progress.start(
        "reading new paths",
        new.iter().map(|&i| db.paths[i].nar_size).sum(),
    );
    let results: Vec<(usize, Walked)> = new
        .par_iter()
        // One path per task: paths differ in size by orders of magnitude, so rayon's default
        // splitting into contiguous halves left one thread doing most of the work.
        .with_max_len(1)
        .map(|&i| {
            let info = &db.paths[i];
            let real = store.join(info.path.base_name());
            let r = walker.walk(&real).and_then(|(node, hash, size)| {
                if hash != info.nar_hash {
                    return Ok(Err(format!(
                        "NAR hash {} differs from the DB's {}",
                        hash,
                        info.nar_hash.to_db()
                    )));
                }
                if info.nar_size != 0 && info.nar_size != size {
                    return Ok(Err(format!(
                        "NAR size {size} differs from the DB's {}",
                        info.nar_size
                    )));
                }
                let (id, bytes) = node.encode();
                if packer.claim(id) {
                    packer.add(ObjectKind::Tree, id, &bytes)?;
                }
                Ok(Ok((id, size)))
            });
            progress.advance(info.nar_size);
            match r {
                Ok(r) => (i, r),
                Err(Error::Nar(e)) => (i, Err(e.to_string())),
                Err(e) => (i, Err(crate::error::Chain(&e).to_string())),
            }
        })
        .collect();
    progress.finish();
    let bytes_read = walker.bytes_read.load(Ordering::Relaxed);
    drop(walker);
    let stats: PackStats = packer.finish()?;
    let mut walked: HashMap<usize, (TreeId, u64)> = HashMap::new();
    let mut corrupt = Vec::new();
    for (i, r) in results {
        match r {
            Ok(t) => {
                walked.insert(i, t);
            }
            Err(why) => corrupt.push((i, why)),
        }
    }
    let mut report = SaveReport {
        new_paths: new.len(),
        new_path_names: new
            .iter()
            .map(|&i| layout.store_dir.display(&db.paths[i].path))
            .collect(),
        bytes_read,
        new_objects: stats.objects,
        packed_bytes: stats.packed_bytes,
        ..SaveReport::default()
    };
    let mut keep = vec![false; db.paths.len()];
    for &i in &selected {
        keep[i] = true;
    }
    // With the daemon running, a GC may delete a path after the DB was read: that is no
    // corruption. Such paths (no longer valid now) are dropped with everything referring to them.
    let mut gone = Vec::new();
    if !corrupt.is_empty() {
        let now_valid: std::collections::HashSet<StorePath> = db::read(layout)?
            .paths
            .into_iter()
            .map(|p| p.path)
            .collect();
        corrupt.retain(|(i, _)| {
            let still = now_valid.contains(&db.paths[*i].path);
            if !still {
                gone.push(*i);
            }
            still
        });
    }
    if !gone.is_empty() {
        report.vanished = gone
            .iter()
            .map(|&i| layout.store_dir.display(&db.paths[i].path))
            .collect();
        let drop = graph.referrers_closure(gone.iter().copied());
        for &i in &selected {
            keep[i] &= !drop[i];
        }
    }
    if !corrupt.is_empty() {
        corrupt.sort();
        report.corrupt = corrupt
            .iter()
            .map(|(i, why)| (layout.store_dir.display(&db.paths[*i].path), why.clone()))
            .collect();
        if !opts.skip_corrupt {
            let list: Vec<String> = report
                .corrupt
                .iter()
                .map(|(p, w)| format!("  {p}: {w}"))
                .collect();
            return Err(Error::Integrity(format!(
                "the store is corrupt; no snapshot written (pass --skip-corrupt to save the rest):\n{}",
                list.join("\n")
            )));
        }
        let drop = graph.referrers_closure(corrupt.iter().map(|c| c.0));
        for &i in &selected {
            if drop[i] {
                keep[i] = false;
                if !corrupt.iter().any(|c| c.0 == i) {
                    report
                        .dropped_referrers
                        .push(layout.store_dir.display(&db.paths[i].path));
                }
            }
        }
    }
    let mut paths = Vec::new();
    for &i in selected.iter().filter(|&&i| keep[i]) {
        let mut info = db.paths[i].clone();
        let (tree, size) = match walked.get(&i) {
            Some(&t) => t,
            None => {
                let k = known[&info.path];
                (k.2, k.1)
            }
        };
        info.nar_size = size;
        paths.push(SnapshotPath { info, tree });
    }
    let kept: std::collections::HashSet<&StorePath> = paths.iter().map(|p| &p.info.path).collect();
    let derivation_outputs = db
        .derivation_outputs
        .iter()
        .filter(|o| kept.contains(&o.drv))
        .cloned()
        .collect();
    let snapshot = Snapshot {
        flavor: layout.flavor,
        store_dir: layout.store_dir.as_str().to_owned(),
        created: crate::clock::now_nanos(),
        tool: format!("storesync {}", env!("CARGO_PKG_VERSION")),
        roots: roots.into_iter().filter(|r| kept.contains(r)).collect(),
        paths,
        derivation_outputs,
    };
    report.paths = snapshot.paths.len();
    report.nar_bytes = snapshot.nar_bytes();
    if let Ok((id, newest)) = cache.find_snapshot(None) {
        let same = Snapshot {
            created: newest.created,
            tool: newest.tool.clone(),
            ..snapshot.clone()
        };
        if same == newest {
            report.snapshot = id.hex();
            report.unchanged = true;
            return Ok(report);
        }
    }
    report.snapshot = cache.write_snapshot(&snapshot)?.hex();
    Ok(report)
}

/// Plan and execute a save.
///
/// # Errors
/// As [`plan`] and [`execute`].
pub fn save(
    layout: &Layout,
    cache: &Cache,
    opts: &SaveOptions,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    let p = plan(layout, cache, opts)?;
    execute(layout, cache, p, opts, progress)
}
