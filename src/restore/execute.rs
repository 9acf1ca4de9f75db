//! Executing a restore plan: every missing path written in parallel and verified, the
//! verified ones made durable and registered in one transaction, the rest removed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::cache::Cache;
use crate::db;
use crate::error::{Error, Result};
use crate::nar::{NarEncoder, NarHasher};
use crate::progress::Progress;
use crate::store::layout::Layout;
use crate::store::path::StorePath;

use super::extract::{Attempt, Writer};
use super::{RestorePlan, RestoreReport, ScratchNames, TMP_PREFIX, TRASH_PREFIX, WRITERS_PER_JOB};
use crate::store::fs::{entry_names, open_store_dir, remove_at, remove_tree, store_owner, Umask};

/// A thread that starts writeback of the store's file system every [`Flusher::EVERY`] bytes
/// written, so that dirty pages reach the disk while later paths are still being written
/// instead of all at once in the final `syncfs`. Stops when dropped.
struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    const EVERY: u64 = 64 * 1024 * 1024;

    fn start(store: &Path, written: &std::sync::Arc<AtomicU64>) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let written = written.clone();
        let dir = fs::File::open(store).ok();
        let thread = dir.map(|dir| {
            std::thread::spawn(move || {
                let mut synced = 0;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(std::time::Duration::from_millis(50))
                {
                    let now = written.load(Ordering::Relaxed);
                    if now - synced >= Self::EVERY {
                        synced = now;
                        // Best effort: the final `syncfs` reports errors.
                        let _ = rustix::fs::syncfs(&dir);
                    }
                }
            })
        });
        Flusher {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Write, verify and register the planned paths. The caller holds the big-lock and passes the
/// DB connection opened under it.
///
/// # Errors
/// [`Error::Io`] when the store directory cannot be prepared, [`Error::Db`] when registration
/// fails (then nothing is registered). Per-path failures are reported, not returned.
pub fn execute(
    layout: &Layout,
    cache: &Cache,
    plan: &RestorePlan,
    conn: &mut rusqlite::Connection,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let snap = &plan.snapshot;
    let store = layout.real_store_dir();
    // Files and directories are created with their final modes, which a umask must not trim.
    let _umask = Umask::set(0o022);
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
    let links = store.join(".links");
    if !links.exists() {
        fs::create_dir(&links).map_err(ioe(&links))?;
        if let Some((u, g)) = chown {
            std::os::unix::fs::lchown(&links, Some(u), Some(g)).map_err(ioe(&links))?;
        }
    }
    // Leftovers of an interrupted restore: safe to remove, we hold the big-lock.
    for name in entry_names(&store_fd).map_err(ioe(&store))? {
        let name = std::ffi::OsStr::from_bytes(name.to_bytes());
        let s = name.to_string_lossy();
        if s.starts_with(TMP_PREFIX) || s.starts_with(TRASH_PREFIX) {
            remove_at(&store_fd, name).map_err(ioe(&store.join(name)))?;
        }
    }
    let names = ScratchNames::new();
    let known_links = fs::read_dir(&links)
        .map_err(ioe(&links))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let writer = Writer {
        cache,
        links,
        chown,
        bytes_written: std::sync::Arc::new(AtomicU64::new(0)),
        linked_files: AtomicU64::new(0),
        known_links: std::sync::Mutex::new(known_links),
        in_flight: std::sync::Mutex::new(HashMap::new()),
        link_locks: (0..64).map(|_| std::sync::Mutex::new(())).collect(),
        privileged: me.0 == 0,
    };
    let leftovers = AtomicU64::new(0);
    progress.start("restoring paths", plan.bytes());
    // Largest first, so one big path does not start last and run alone. (Registration keeps
    // the plan's order: references first.)
    let mut by_size = plan.missing.clone();
    by_size.sort_by_key(|&i| std::cmp::Reverse(snap.paths[i].info.nar_size));
    // Writeback runs alongside the writes (see `Flusher`), so the `syncfs` that makes the
    // content durable before registration has little left to wait for.
    let flusher = Flusher::start(&store, &writer.bytes_written);
    // Writers spend much of their time asleep in the file system (reading inode and block
    // bitmaps of a cold file system, behind writeback in the disk queue): twice as many
    // threads as jobs keep the cores busy meanwhile.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WRITERS_PER_JOB * rayon::current_num_threads())
        .build()
        .map_err(|e| Error::Io(store.clone(), io::Error::other(e)))?;
    let results: Vec<(usize, std::result::Result<(), String>)> = pool.install(|| {
        by_size
            .par_iter()
            .with_max_len(1) // one path per task: sizes vary too much for contiguous splits
            .map(|&i| {
                let p = &snap.paths[i];
                let base = p.info.path.base_name();
                let tmp = store.join(names.next(TMP_PREFIX, base));
                let r = (|| {
                    let tree = cache.read_tree(&p.tree).map_err(|e| e.to_string())?;
                    let attempt = |first: bool| {
                        let mut hasher = NarHasher::new();
                        let enc = NarEncoder::new(&mut hasher).expect("hashing cannot fail");
                        let mut at = Attempt {
                            links: first,
                            check_blobs: !first,
                            linked: 0,
                            new_links: Vec::new(),
                        };
                        let written = writer.write(&tree, &tmp, enc, &mut at);
                        let (hash, size) = hasher.finish();
                        let verdict = written.and_then(|()| {
                            if hash != p.info.nar_hash {
                                Err(format!(
                                    "restored content hashes to {}, the snapshot says {}",
                                    hash,
                                    p.info.nar_hash.to_db()
                                ))
                            } else if size != p.info.nar_size {
                                Err(format!(
                                    "restored NAR size {size}, the snapshot says {}",
                                    p.info.nar_size
                                ))
                            } else {
                                Ok(())
                            }
                        });
                        if verdict.is_err() {
                            writer.release(&at.new_links);
                            let _ = remove_tree(&tmp);
                        }
                        (verdict, at)
                    };
                    // The path's NAR hash is the check of the first attempt. When it fails
                    // (a damaged blob, or a damaged `.links` entry: a store file modified in
                    // place), everything again from the cache, every blob checked, so that
                    // the error names the damaged blob; nothing linked.
                    let (mut verdict, mut at) = attempt(true);
                    if verdict.is_err() {
                        (verdict, at) = attempt(false);
                    }
                    verdict?;
                    writer.add_links(&at.new_links);
                    writer.release(&at.new_links);
                    writer.linked_files.fetch_add(at.linked, Ordering::Relaxed);
                    let dest = store.join(base);
                    if fs::symlink_metadata(&dest).is_ok() {
                        let trash = store.join(names.next(TRASH_PREFIX, base));
                        fs::rename(&dest, &trash).map_err(|e| {
                            format!("{}: moving invalid leftover aside: {e}", dest.display())
                        })?;
                        leftovers.fetch_add(1, Ordering::Relaxed);
                    }
                    fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))
                })();
                progress.advance(p.info.nar_size);
                (i, r)
            })
            .collect()
    });
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
        replaced_leftovers: leftovers.load(Ordering::Relaxed) as usize,
        broken: plan.broken.clone(),
        ..RestoreReport::default()
    };
    let failed: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| *i)
        .collect();
    for (i, r) in &results {
        if let Err(e) = r {
            let path = layout.store_dir.display(&snap.paths[*i].info.path);
            report.failed.push(path.clone());
            report.failures.push(crate::restore::Failure {
                path,
                error: e.clone(),
            });
        }
    }
    let bad = plan.graph.referrers_closure(failed.iter().copied());
    let mut register = Vec::new();
    for &i in &plan.missing {
        let path = layout.store_dir.display(&snap.paths[i].info.path);
        if plan.repair.contains(&i) {
            if !failed.contains(&i) {
                report.repaired.push(path);
            }
        } else if !bad[i] {
            register.push(i);
        } else if !failed.contains(&i) {
            // Written and verified, but it refers to a path that is not valid: take it off disk.
            let dest = store.join(snap.paths[i].info.path.base_name());
            let trash = store.join(names.next(TRASH_PREFIX, snap.paths[i].info.path.base_name()));
            if fs::rename(&dest, &trash).is_ok() {
                let _ = remove_tree(&trash);
            }
            report.skipped.push(path);
        }
    }
    // Content first, durably; then the rows that vouch for it.
    if !register.is_empty() {
        let dir = fs::File::open(&store).map_err(ioe(&store))?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::Io(store.clone(), e.into()))?;
    }
    let infos: Vec<_> = register.iter().map(|&i| &snap.paths[i].info).collect();
    let registered: HashSet<&StorePath> = infos.iter().map(|p| &p.path).collect();
    let outputs: Vec<_> = snap
        .derivation_outputs
        .iter()
        .filter(|o| registered.contains(&o.drv))
        .collect();
    db::register(conn, layout, &infos, &outputs)?;
    report.restored = infos.len();
    report.paths = infos
        .iter()
        .map(|p| layout.store_dir.display(&p.path))
        .collect();
    // Old leftovers moved aside: now delete them.
    for e in fs::read_dir(&store).map_err(ioe(&store))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(TRASH_PREFIX) {
            let _ = remove_tree(&e.path());
        }
    }
    Ok(report)
}
