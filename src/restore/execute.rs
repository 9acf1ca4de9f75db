//! Executing a restore plan: every missing path written in parallel and verified, the
//! verified ones made durable and registered in one transaction, the rest removed.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use rustix::fs::AtFlags;

use crate::cache::Cache;
use crate::db;
use crate::error::{Error, Result};
use crate::nar::{NarEncoder, NarHasher};
use crate::progress::Progress;
use crate::store::fs::{entry_names, open_store_dir, remove_at, store_owner, Umask};
use crate::store::layout::Layout;
use crate::store::links::{LinksDir, LinksError};
use crate::store::locks::PathLocks;
use crate::store::path::StorePath;

use super::error::PathError;
use super::extract::{Attempt, Writer};
use super::live::{remove_leftovers, Client, TMP, TRASH};
use super::{RestorePlan, RestoreReport, WRITERS_PER_JOB};

fn links_error(e: LinksError) -> Error {
    match e {
        LinksError::Io(p, e) => Error::Io(p, e),
        e => Error::Io(e.path().to_owned(), io::Error::other(e.reason())),
    }
}

/// Decompressed frames a restore keeps: in its batched order (see [`super::order`]) 16 MiB
/// serve about as well as the 24 MiB the reading order of other readers needs. Cold restore
/// of the newest of 20 snapshots of 100,000 paths: 8,330 frames decompressed, 8.3-8.4 s user
/// CPU, 110-111 MB peak RSS with 16 MiB; 6,900-6,976, 7.8-8.2 s, 118-120 MB with 24 MiB
/// (2 runs each, alternated). (A few MiB in unit tests, as the default.)
#[cfg(not(test))]
pub(crate) const FRAME_CACHE_BYTES: usize = 16 << 20;
#[cfg(test)]
pub(crate) const FRAME_CACHE_BYTES: usize = 4 << 20;

/// Write, verify and register the planned paths. The caller holds the big-lock (shared), the
/// locks of the missing paths (`locks`) and `client`'s temporary roots (see [`super::live`]), and
/// passes the DB connection opened under them, and `valid`, the validity the plan was made
/// from (full path to DB hash): valid paths are never taken for leftovers. It is dropped once
/// leftovers are removed, before the writes.
///
/// Everything in the store is done relative to a descriptor of the store directory (opened
/// without following a symlink) and of each directory made: see [`crate::store::fs`].
///
/// # Errors
/// [`Error::Io`] when the store directory or its `.links` cannot be prepared (a symlink, not
/// a directory, not writable), [`Error::Db`] when registration fails (then nothing is
/// registered). Per-path failures are reported, not returned.
#[allow(clippy::too_many_arguments)]
pub(super) fn execute(
    layout: &Layout,
    cache: &Cache,
    plan: &RestorePlan,
    valid: HashMap<String, String>,
    conn: &mut rusqlite::Connection,
    client: &Client<'_>,
    locks: &PathLocks,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let is_valid =
        |base: &str| valid.contains_key(&format!("{}/{base}", layout.store_dir.as_str()));
    if plan.missing.is_empty() {
        // Nothing to write: no staging directory, nothing created, so a no-op restore changes
        // nothing, not even the store directory's mtime. Only leftovers of a killed restore
        // (one killed after its registration, before it removed its scratch entries) are
        // removed, as a restore that writes removes them.
        let held = locks.bases();
        remove_leftovers(
            layout,
            &open_store_dir(layout)?,
            &|base| held.contains(base),
            &is_valid,
        )?;
        let failures = plan.shadowing_failures(layout);
        return Ok(RestoreReport {
            snapshot: plan.snapshot_id.hex(),
            selected: plan.selected,
            already_valid: plan.already_valid,
            broken: plan.broken_paths(layout),
            failed: failures.iter().map(|f| f.path.clone()).collect(),
            failures,
            ..RestoreReport::default()
        });
    }
    let snap = &plan.snapshot;
    // Before any object is read (siblings' trees, the remote prefetch's plan): setting it
    // lets go of the frames kept, which would then be read again.
    cache.limit_frames(FRAME_CACHE_BYTES);
    let store = layout.real_store_dir();
    // Files and directories are created with their final modes, which a umask must not trim.
    let _umask = Umask::set(0o022);
    crate::store::fs::raise_open_files_limit(0);
    let ioe = |p: &Path| {
        let p = p.to_owned();
        move |e| Error::Io(p, e)
    };
    let store_fd = open_store_dir(layout)?;
    let owner = store_owner(&store_fd).map_err(ioe(&store))?;
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let chown = (owner != me).then_some(owner);
    // Leftovers of interrupted restores whose process is gone.
    let held = locks.bases();
    remove_leftovers(layout, &store_fd, &|base| held.contains(base), &is_valid)?;
    drop(valid);
    // Every scratch name is a temporary root before it exists.
    let staging = client.scratch_name(TMP, "links")?;
    let tmp_names = client.scratch_batch(
        TMP,
        plan.missing
            .iter()
            .map(|&i| snap.paths[i].info.path.base_name()),
        plan.missing.len(),
    )?;
    // Each missing path's position in `plan.missing`: its scratch name's number.
    let mut tmp_of = vec![usize::MAX; snap.paths.len()];
    for (j, &i) in plan.missing.iter().enumerate() {
        tmp_of[i] = j;
    }
    let links = LinksDir::open(
        store_fd.as_fd(),
        &store,
        &staging,
        chown.unwrap_or(me),
        chown.is_some(),
    )
    .map_err(links_error)?;
    // Older builds of the missing paths' packages in the store, as sources of their files'
    // blobs (protected from collection first, as the closure is), found before the remote
    // prefetch is planned so that their blobs are never downloaded.
    let sources = if !plan.siblings.is_empty() {
        let mut candidates: Vec<String> = plan
            .siblings
            .values()
            .flatten()
            .map(|b| format!("{}/{b}", layout.store_dir.as_str()))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        client.protect(&candidates)?;
        super::siblings::find(
            cache,
            snap,
            store_fd.as_fd(),
            &plan.siblings,
            &links,
            cache.storage().remote(),
        )
    } else {
        super::siblings::Sources::default()
    };
    let writer = Writer {
        cache,
        links: &links,
        store: store_fd.as_fd(),
        chown,
        bytes_written: AtomicU64::new(0),
        disk_bytes: std::sync::Arc::new(AtomicU64::new(0)),
        linked_files: AtomicU64::new(0),
        local_files: AtomicU64::new(0),
        local_bytes: AtomicU64::new(0),
        privileged: me.0 == 0,
        acl: crate::store::fs::has_default_acl(&store_fd),
    };
    let leftovers = AtomicU64::new(0);
    // Set by the first failure that will fail every path (a full or read-only store): no
    // path starts after it.
    let stopped = std::sync::atomic::AtomicBool::new(false);
    super::plan::plan_reads(cache, snap, &plan.missing, &links, &sources);
    progress.start_bytes("restoring paths", plan.bytes());
    // Large paths first, the others in batches ordered by the frames of their files (see
    // [`super::order`]). (Registration keeps the plan's order: references first.)
    let order = super::order::Order::of(cache, snap, &plan.missing);
    // Writeback runs alongside the writes (see `Flusher`), so the `syncfs` that makes the
    // content durable before registration has little left to wait for.
    let flusher = super::resources::Flusher::start(&store_fd, &writer.disk_bytes);
    // Writers spend much of their time asleep in the file system (reading inode and block
    // bitmaps of a cold file system, behind writeback in the disk queue): twice as many
    // threads as jobs keep the cores busy meanwhile.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WRITERS_PER_JOB * rayon::current_num_threads())
        .build()
        .map_err(|e| Error::Io(store.clone(), io::Error::other(e)))?;
    // Per path that failed (`Some(Err)`) or was not attempted because the restore stopped
    // (`None`); paths written are left out (at 100,000 paths, 4.8 MB held through the writes).
    type Outcome = (usize, Option<std::result::Result<(), PathError>>);
    let outcomes: std::sync::Mutex<Vec<Outcome>> = Default::default();
    // Write path `i`, from its tree's encoded bytes when the batch holds them.
    let write_path = |i: usize, held: Option<&[u8]>| {
        let p = &snap.paths[i];
        if stopped.load(Ordering::Relaxed) {
            progress.advance(p.info.nar_size);
            outcomes.lock().expect("outcomes").push((i, None));
            return;
        }
        let base = p.info.path.base_name();
        let shown = store.join(base);
        let tmp = client.batch_name(&tmp_names, tmp_of[i], base);
        let tmp = tmp.as_str();
        let r = (|| {
            let tree = match held {
                Some(bytes) => crate::cache::Node::decode(&p.tree, bytes),
                None => cache.read_tree(&p.tree),
            }
            .map_err(|e| PathError::cache(&shown, e))?;
            // Nothing is written for a tree that cannot be the row's NAR: what a path writes
            // is then bounded by the size its row declares (a tree declaring a terabyte
            // file, fed by a small blob of zeros, would fill the disk before its hash fails).
            let described = tree.nar_size();
            if described != p.info.nar_size {
                return Err(PathError::Content(format!(
                    "its tree describes a NAR of {described} bytes, the snapshot says {}: \
                     nothing written",
                    p.info.nar_size
                )));
            }
            let attempt = |first: bool| {
                let mut hasher = NarHasher::new();
                let enc = NarEncoder::new(&mut hasher).expect("hashing cannot fail");
                let mut at = Attempt {
                    links: first,
                    local: if first { sources.of_path(i) } else { None },
                    files: 0,
                    rel: Vec::new(),
                    dirs: Default::default(),
                    check_blobs: !first,
                    linked: 0,
                    new_links: Vec::new(),
                };
                let written = writer.write(
                    &tree,
                    store_fd.as_fd(),
                    OsStr::new(tmp),
                    &shown,
                    enc,
                    &mut at,
                );
                let (hash, size) = hasher.finish();
                let verdict = written.and_then(|()| {
                    if hash != p.info.nar_hash {
                        Err(PathError::Content(format!(
                            "restored content hashes to {}, the snapshot says {}",
                            hash,
                            p.info.nar_hash.to_db()
                        )))
                    } else if size != p.info.nar_size {
                        Err(PathError::Content(format!(
                            "restored NAR size {size}, the snapshot says {}",
                            p.info.nar_size
                        )))
                    } else {
                        Ok(())
                    }
                });
                // Whether `tmp` is free again for another attempt.
                let cleared = verdict.is_err() && remove_at(&store_fd, tmp).is_ok();
                (verdict, at, cleared)
            };
            // The path's NAR hash is the check of the first attempt. When it fails (a damaged
            // blob, or a damaged `.links` entry: a store file modified in place), everything
            // again from the cache, every blob checked, so that the error names the damaged
            // blob; nothing linked. Not when the cache lacks an object, or the store cannot be
            // written at all.
            // Nor when what the first left under `tmp` could not be removed: the second would
            // meet it (`File exists`) and its error would hide the first's, the cause.
            let (mut verdict, mut at, cleared) = attempt(true);
            if cleared && verdict.as_ref().is_err_and(PathError::worth_retrying) {
                (verdict, at, _) = attempt(false);
            }
            verdict?;
            for h in &at.new_links {
                links.add(h);
            }
            writer.linked_files.fetch_add(at.linked, Ordering::Relaxed);
            let target = PathError::target(&shown);
            if super::live::held_lock_in_the_way(layout, &store_fd, base) {
                return Err(target(io::Error::other(format!(
                    "{base} in the store is the path lock of {}, held by another process \
                     (the path is named like that lock): not written",
                    base.strip_suffix(".lock").unwrap_or(base)
                ))));
            }
            if rustix::fs::statat(&store_fd, base, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                let trash = client
                    .scratch_name(TRASH, base)
                    .map_err(|e| target(io::Error::other(crate::error::Chain(&e).to_string())))?;
                rustix::fs::renameat(&store_fd, base, &store_fd, trash.as_str()).map_err(|e| {
                    target(io::Error::other(format!(
                        "moving an invalid leftover aside: {e}"
                    )))
                })?;
                leftovers.fetch_add(1, Ordering::Relaxed);
            }
            rustix::fs::renameat(&store_fd, tmp, &store_fd, base).map_err(|e| target(e.into()))
        })();
        if let Err(e) = &r {
            let _ = remove_at(&store_fd, tmp);
            if e.stops_restore() {
                stopped.store(true, Ordering::Relaxed);
            }
        }
        progress.advance(p.info.nar_size);
        if r.is_err() {
            outcomes.lock().expect("outcomes").push((i, Some(r)));
        }
    };
    pool.install(|| {
        rayon::scope(|s| {
            // One task a large path, taken by idle writers while this one reads and writes
            // the batches.
            for &i in &order.large {
                let write_path = &write_path;
                s.spawn(move |_| write_path(i, None));
            }
            // One buffer of trees for every batch in turn.
            let mut held = super::order::Batch::default();
            for batch in order.batches() {
                if stopped.load(Ordering::Relaxed) {
                    batch.par_iter().for_each(|&i| write_path(i, None));
                    continue;
                }
                held.read(cache, snap, batch, &links, &sources);
                // The batch's paths with no frame to wait for, largest first, taken by
                // writers as they come free; this one starts on the others.
                rayon::scope(|s| {
                    for (i, tree) in held.unframed_paths() {
                        let write_path = &write_path;
                        s.spawn(move |_| write_path(i, tree));
                    }
                    held.framed_paths()
                        .with_max_len(1) // one path per task: sizes vary too much for contiguous splits
                        .for_each(|(i, tree)| write_path(i, tree));
                });
            }
        })
    });
    let mut results = outcomes.into_inner().expect("outcomes");
    // In the snapshot's order, whatever order the writers finished in.
    results.sort_unstable_by_key(|(i, _)| *i);
    drop(flusher);
    progress.finish();

    let mut report = RestoreReport {
        snapshot: plan.snapshot_id.hex(),
        selected: plan.selected,
        already_valid: plan.already_valid,
        planned: plan.missing.len(),
        bytes: plan.bytes(),
        bytes_written: writer.bytes_written.load(Ordering::Relaxed),
        linked_files: writer.linked_files.load(Ordering::Relaxed),
        local_files: writer.local_files.load(Ordering::Relaxed),
        local_bytes: writer.local_bytes.load(Ordering::Relaxed),
        replaced_leftovers: leftovers.load(Ordering::Relaxed) as usize,
        broken: plan.broken_paths(layout),
        ..RestoreReport::default()
    };
    let failed: Vec<usize> = results
        .iter()
        .filter(|(_, r)| matches!(r, Some(Err(_))))
        .map(|(i, _)| *i)
        .collect();
    let not_attempted: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| *i)
        .collect();
    report.not_attempted = not_attempted
        .iter()
        .map(|&i| layout.store_dir.display(&snap.paths[i].info.path))
        .collect();
    for f in plan.shadowing_failures(layout) {
        report.failed.push(f.path.clone());
        report.failures.push(f);
    }
    let mut told_stop = false;
    for (i, r) in &results {
        if let Some(Err(e)) = r {
            let path = layout.store_dir.display(&snap.paths[*i].info.path);
            let mut error = e.to_string();
            if e.stops_restore() && !told_stop && !not_attempted.is_empty() {
                error += &format!(
                    " (the store cannot be written: the restore stopped, {} more paths not attempted)",
                    not_attempted.len()
                );
                told_stop = true;
            }
            report.failed.push(path.clone());
            report
                .failures
                .push(crate::restore::Failure { path, error });
        }
    }
    // Sets, not scans: a store that lost its files but kept its DB repairs every path.
    let failed_set: std::collections::HashSet<usize> = failed.iter().copied().collect();
    let not_attempted_set: std::collections::HashSet<usize> =
        not_attempted.iter().copied().collect();
    let repair_set: std::collections::HashSet<usize> = plan.repair.iter().copied().collect();
    let written = |i: usize| !failed_set.contains(&i) && !not_attempted_set.contains(&i);
    // Paths refused at plan time are not valid, and broken ones not on disk: what refers to
    // them is skipped too, as what refers to a failed path.
    let shadowing = plan.shadowing.iter().map(|(i, _)| *i);
    let bad = if failed.is_empty()
        && not_attempted.is_empty()
        && plan.shadowing.is_empty()
        && plan.broken.is_empty()
    {
        vec![false; snap.paths.len()]
    } else {
        super::plan::reference_graph(snap).referrers_closure(
            failed
                .iter()
                .chain(&not_attempted)
                .chain(&plan.broken)
                .copied()
                .chain(shadowing),
        )
    };
    // A path written and renamed into place, taken off disk: moved aside, then removed.
    let take_off_disk = |base: &str| {
        if let Ok(trash) = client.scratch_name(TRASH, base) {
            if rustix::fs::renameat(&store_fd, base, &store_fd, trash.as_str()).is_ok() {
                let _ = remove_at(&store_fd, &trash);
            }
        }
    };
    let mut register = Vec::new();
    for &i in &plan.missing {
        let path = layout.store_dir.display(&snap.paths[i].info.path);
        if repair_set.contains(&i) {
            if written(i) {
                report.repaired.push(path);
            }
        } else if !bad[i] {
            register.push(i);
        } else if written(i) {
            // Written and verified, but it refers to a path that is not valid (or not on disk).
            take_off_disk(snap.paths[i].info.path.base_name());
            report.skipped.push(path);
        }
    }
    // Every path is written: the frames go before the rows are registered and reported.
    cache.drop_frames();
    // Content first, durably; then the rows that vouch for it.
    if !register.is_empty() {
        rustix::fs::syncfs(&store_fd).map_err(|e| Error::Io(store.clone(), e.into()))?;
    }
    let infos: Vec<_> = register.iter().map(|&i| &snap.paths[i].info).collect();
    let registered: HashSet<&StorePath> = infos.iter().map(|p| &p.path).collect();
    let outputs: Vec<_> = snap
        .derivation_outputs
        .iter()
        .filter(|o| registered.contains(&o.drv))
        .collect();
    let wait = db::LockWait {
        limit: db::DB_LOCK_WAIT,
        waiting: &|m| progress.note(m),
    };
    let already: HashSet<StorePath> =
        match db::register_waiting(conn, layout, &infos, &outputs, &wait) {
            Ok(already) => already.into_iter().collect(),
            Err(e) => {
                // Nothing was registered: the paths written for it go, as a failed path's
                // referrers do, but for any valid by now (a writer that does not take the
                // path locks). Left on disk when validity cannot be read: unregistered
                // garbage, which the daemon's collector removes.
                if let Ok(now_valid) = db::valid_paths(conn, layout) {
                    for info in &infos {
                        if !now_valid.contains_key(&layout.store_dir.display(&info.path)) {
                            take_off_disk(info.path.base_name());
                        }
                    }
                }
                return Err(e.into());
            }
        };
    // Valid by the time the transaction ran (a writer that does not take the path locks):
    // its row stands, ours was not inserted.
    report.became_valid = infos
        .iter()
        .filter(|p| already.contains(&p.path))
        .map(|p| layout.store_dir.display(&p.path))
        .collect();
    report.restored = infos.len() - report.became_valid.len();
    report.paths = infos
        .iter()
        .filter(|p| !already.contains(&p.path))
        .map(|p| layout.store_dir.display(&p.path))
        .collect();
    // Leftovers this run moved aside: now delete them.
    for name in entry_names(&store_fd).map_err(ioe(&store))? {
        let name = OsStr::from_bytes(name.to_bytes());
        let name_str = name.to_string_lossy();
        if client.is_ours(&name_str) && super::scratch_kind(&name_str) == Some(TRASH) {
            let _ = remove_at(&store_fd, name);
        }
    }
    Ok(report)
}
