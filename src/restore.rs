//! `restore`: bring a store up to a snapshot, writing only the paths it lacks.
//!
//! 1. [`plan`]: the snapshot's paths (or the closure of the requested ones) that are not valid
//!    in the target DB, references first. Valid paths are never touched.
//! 2. [`execute`], under the daemon's big-lock: each missing path is written in parallel under
//!    a temporary name inside the store directory, with canonical metadata (mtime 1, 0444/0555,
//!    owner of the store directory), computing the NAR SHA-256 of what was written; only a path
//!    whose hash matches the snapshot is renamed into place (an invalid leftover at that name is
//!    moved aside first). Files of 8 KiB or more are shared through `<store>/.links` exactly as
//!    the daemon's deduplication does, so identical contents become hard links of one file.
//! 3. Every verified path whose references are all valid is registered in one SQLite
//!    transaction; a path that failed, and everything referring to it, is removed from disk and
//!    not registered.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{Cache, Node, ObjectId, Snapshot};
use crate::closure::Graph;
use crate::db::{self, BigLock};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::nar::{NarEncoder, NarHasher};
use crate::progress::Progress;
use crate::store_path::{nixbase32_encode, StorePath};

/// The daemon deduplicates regular files of at least this size into `.links`.
pub const LINKS_MIN_SIZE: u64 = 8192;

/// Options of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Snapshot id or unique prefix; newest when `None`.
    pub snapshot: Option<String>,
    /// Restore only the closure of these paths (full store paths, or paths inside them).
    pub roots: Vec<String>,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Block until the big-lock is free instead of failing with "busy".
    pub wait: bool,
}

/// What a restore will do.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The snapshot's id.
    pub snapshot_id: ObjectId,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Paths of the selected closure (indices into `snapshot.paths`).
    pub selected: usize,
    /// Missing paths to write, references first.
    pub missing: Vec<usize>,
    /// Among `missing`, paths the DB calls valid (with the snapshot's hash) but that are absent
    /// from disk: written again, not registered again.
    pub repair: Vec<usize>,
    /// Selected paths already valid in the target and present on disk.
    pub already_valid: usize,
    /// The snapshot's reference graph (node `i` = `snapshot.paths[i]`).
    pub graph: Graph,
    /// Paths valid in the DB, absent from disk, and registered with another hash than the
    /// snapshot's: left alone, reported.
    pub broken: Vec<String>,
}

impl RestorePlan {
    /// NAR bytes to write.
    pub fn bytes(&self) -> u64 {
        self.missing
            .iter()
            .map(|&i| self.snapshot.paths[i].info.nar_size)
            .sum()
    }
}

/// A path that could not be restored.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The store path.
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a restore did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Snapshot id.
    pub snapshot: String,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// Paths in the selected closure.
    pub selected: usize,
    /// Paths already valid in the target, left untouched.
    pub already_valid: usize,
    /// Paths to write (dry run) or attempted.
    pub planned: usize,
    /// Paths written, verified and registered.
    pub restored: usize,
    /// NAR bytes planned.
    pub bytes: u64,
    /// File bytes written from the cache.
    pub bytes_written: u64,
    /// Files hard-linked to an identical file already in `.links`.
    pub linked_files: u64,
    /// Invalid leftovers at a missing path's name, moved aside and replaced.
    pub replaced_leftovers: usize,
    /// Paths that failed verification or could not be written.
    pub failed: Vec<String>,
    /// Why each failed.
    pub failures: Vec<Failure>,
    /// Paths not registered because something they refer to failed.
    pub skipped: Vec<String>,
    /// The planned (dry run) or registered paths, references first.
    pub paths: Vec<String>,
    /// Paths the DB called valid but that were missing from disk, written again.
    pub repaired: Vec<String>,
    /// Paths the DB calls valid, missing from disk, with a hash other than the snapshot's.
    pub broken: Vec<String>,
}

/// Choose the paths to write.
///
/// # Errors
/// [`Error::Usage`] when the snapshot is of another flavour or store directory, or a requested
/// path is not in it.
pub fn plan(
    layout: &Layout,
    snapshot_id: ObjectId,
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
    let graph = Graph::of_paths(snapshot.paths.iter().map(|p| &p.info));
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
    for i in order {
        let info = &snapshot.paths[i].info;
        let full = layout.store_dir.display(&info.path);
        match valid.get(&full) {
            None => missing.push(i),
            Some(hash) => {
                if fs::symlink_metadata(store.join(info.path.base_name())).is_ok() {
                    continue;
                }
                if db::parse_db_hash(hash) == Some(info.nar_hash) {
                    missing.push(i);
                    repair.push(i);
                } else {
                    broken.push(full);
                }
            }
        }
    }
    Ok(RestorePlan {
        snapshot_id,
        already_valid: selected - missing.len() - broken.len(),
        selected,
        missing,
        repair,
        broken,
        graph,
        snapshot,
    })
}

/// Create a missing store directory the way the daemon would: Guix's package ships it 0755
/// root:root; Nix makes it 1775 root:nixbld (group from `<root>/etc/group`, when it exists).
fn create_store_dir(layout: &Layout) -> io::Result<()> {
    let store = layout.real_store_dir();
    fs::create_dir_all(&store)?;
    if layout.flavor == crate::layout::Flavor::Nix {
        fs::set_permissions(&store, fs::Permissions::from_mode(0o1775))?;
        let group = fs::read_to_string(layout.root.join("etc/group")).unwrap_or_default();
        let gid = group.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some("nixbld")).then(|| f.nth(1)?.parse::<u32>().ok())?
        });
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&store, None, Some(gid))?;
        }
    }
    Ok(())
}

/// A store directory that exists must be a directory.
fn check_store_dir(layout: &Layout) -> Result<()> {
    let store = layout.real_store_dir();
    if store.exists() && !store.is_dir() {
        return Err(Error::Io(
            store,
            io::Error::new(
                io::ErrorKind::NotADirectory,
                "the store directory is not a directory",
            ),
        ));
    }
    Ok(())
}

/// Who owns restored files: the owner of the store directory (the unprivileged `guix-daemon`
/// user on Guix 1.5 installs); group root when that owner is root, as the daemons do.
fn store_owner(store: &Path) -> Result<(u32, u32)> {
    let m = fs::metadata(store).map_err(|e| Error::Io(store.to_owned(), e))?;
    Ok(if m.uid() == 0 {
        (0, 0)
    } else {
        (m.uid(), m.gid())
    })
}

struct Writer<'a> {
    cache: &'a Cache,
    links: PathBuf,
    chown: Option<(u32, u32)>,
    bytes_written: std::sync::Arc<AtomicU64>,
    linked_files: AtomicU64,
    /// Names present in `.links` (read once, then kept up to date), so no link is attempted
    /// that cannot succeed.
    known_links: std::sync::Mutex<HashSet<String>>,
    /// Files written by paths not verified yet, by `.links` name: another path with the same
    /// contents links to them (its own NAR hash checks the bytes), so duplicates across paths
    /// written at the same time share one inode, as the daemon's deduplication leaves them.
    in_flight: std::sync::Mutex<HashMap<String, PathBuf>>,
    /// Striped locks by `.links` name, so two threads writing the same contents at once end up
    /// sharing one file instead of racing to write two.
    link_locks: Vec<std::sync::Mutex<()>>,
    /// Running as root: permission checks do not apply, so directories are created with their
    /// final mode at once instead of being made writable and then read-only.
    privileged: bool,
}

type Enc = NarEncoder<NarHasher>;

/// One attempt at writing a path: how, and what it did.
struct Attempt {
    /// Hard-link files from existing `.links` entries.
    links: bool,
    /// Check every blob against its id while streaming it (otherwise the path's NAR hash is
    /// the only check).
    check_blobs: bool,
    /// Files hard-linked from `.links`.
    linked: u64,
    /// Files written that should get `.links` entries once the path is verified.
    new_links: Vec<(PathBuf, String)>,
}

fn mtime_one() -> FileTime {
    FileTime::from_unix_time(1, 0)
}

impl Writer<'_> {
    /// Owner and mtime of a symlink (its mode is always 0777).
    fn finish_symlink(&self, path: &Path) -> io::Result<()> {
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::lchown(path, Some(u), Some(g))?;
        }
        filetime::set_symlink_file_times(path, mtime_one(), mtime_one())
    }

    /// Owner, mode (unless created with it) and mtime of a directory, after its entries.
    fn finish_dir(&self, path: &Path, mode: Option<u32>) -> io::Result<()> {
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::lchown(path, Some(u), Some(g))?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
        filetime::set_file_mtime(path, mtime_one())
    }

    /// Write `node` at `dest` (which must not exist), feeding the NAR of what was written to `enc`.
    ///
    /// With `at.links` set, a file whose `.links` entry exists is hard-linked to it and read
    /// back into `enc` without a check of its own: the path's NAR hash covers it, and a path
    /// that fails is written again from the cache, every blob checked (see [`execute`]). Files
    /// written are listed in `at.new_links`; their `.links` entries are made only after the
    /// path's NAR hash is verified, so an unchecked blob never reaches `.links`.
    fn write(
        &self,
        node: &Node,
        dest: &Path,
        enc: &mut Enc,
        at: &mut Attempt,
    ) -> std::result::Result<(), String> {
        let io = |e: io::Error| format!("{}: {e}", dest.display());
        match node {
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), dest).map_err(io)?;
                enc.symlink(target).map_err(io)?;
                self.finish_symlink(dest).map_err(io)
            }
            Node::Directory(entries) => {
                let mut dir = fs::DirBuilder::new();
                std::os::unix::fs::DirBuilderExt::mode(
                    &mut dir,
                    if self.privileged { 0o555 } else { 0o755 },
                );
                dir.create(dest).map_err(io)?;
                enc.directory_start().map_err(io)?;
                for e in entries {
                    enc.entry_start(&e.name).map_err(io)?;
                    let child = dest.join(OsStr::from_bytes(&e.name));
                    self.write(&e.node, &child, enc, at)?;
                    enc.entry_end().map_err(io)?;
                }
                enc.directory_end().map_err(io)?;
                let mode = (!self.privileged).then_some(0o555);
                self.finish_dir(dest, mode).map_err(io)
            }
            Node::Regular {
                executable,
                size,
                blob,
                file_nar_hash,
            } => {
                enc.regular_start(*executable, *size).map_err(io)?;
                let name = (*size >= LINKS_MIN_SIZE).then(|| nixbase32_encode(file_nar_hash));
                let _guard = name.as_ref().map(|_| {
                    self.link_locks[file_nar_hash[0] as usize % self.link_locks.len()]
                        .lock()
                        .expect("link lock")
                });
                // Where to link from: a `.links` entry, or the same contents written by a
                // path not verified yet (then this path makes the entry too if it is verified
                // first).
                let source = match &name {
                    Some(n) if at.links => {
                        if self.known_links.lock().expect("links").contains(n) {
                            Some((self.links.join(n), false))
                        } else {
                            let in_flight = self.in_flight.lock().expect("in flight");
                            in_flight.get(n).map(|f| (f.clone(), true))
                        }
                    }
                    _ => None,
                };
                // A source that vanished meanwhile (its path failed, or was renamed into place)
                // is not linked: the file is written from the cache.
                let linked_from = match source {
                    Some((source, in_flight)) => self
                        .link_from(&source, dest, enc)
                        .map_err(io)?
                        .then_some(in_flight),
                    None => None,
                };
                match linked_from {
                    Some(from_in_flight) => {
                        at.linked += 1;
                        if let Some(n) = name.filter(|_| from_in_flight) {
                            at.new_links.push((dest.to_owned(), n));
                        }
                    }
                    None => {
                        self.write_file(dest, *executable, blob, enc, at.check_blobs)?;
                        if let Some(n) = name {
                            self.in_flight
                                .lock()
                                .expect("in flight")
                                .entry(n.clone())
                                .or_insert_with(|| dest.to_owned());
                            at.new_links.push((dest.to_owned(), n));
                        }
                    }
                }
                enc.regular_end(*size).map_err(io)
            }
        }
    }

    /// Hard-link `link` (a `.links` entry, or a file of a path being written) to `dest` and feed
    /// its contents to `enc`. Its bytes are not checked here: the path's NAR hash is, and a
    /// path that fails after linking is written again without links (a damaged entry is
    /// never propagated).
    fn link_from(&self, link: &Path, dest: &Path, enc: &mut Enc) -> io::Result<bool> {
        if fs::hard_link(link, dest).is_err() {
            return Ok(false);
        }
        let mut f = fs::File::open(dest)?;
        let mut buf = crate::scratch::Scratch::with_len(1 << 18);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            enc.contents(&buf[..n])?;
        }
        Ok(true)
    }

    /// Give verified files their `.links` entries. At its link-count limit, or damaged, an
    /// existing entry stays as it is and the file stays one of its own.
    fn add_links(&self, files: &[(PathBuf, String)]) {
        for (file, name) in files {
            if fs::hard_link(file, self.links.join(name)).is_ok() {
                self.known_links.lock().expect("links").insert(name.clone());
            }
        }
    }

    /// Withdraw a path's files from `in_flight` (after [`Writer::add_links`], or before its
    /// temporary tree is removed).
    fn release(&self, files: &[(PathBuf, String)]) {
        let mut in_flight = self.in_flight.lock().expect("in flight");
        for (file, name) in files {
            if in_flight.get(name) == Some(file) {
                in_flight.remove(name);
            }
        }
    }

    fn write_file(
        &self,
        dest: &Path,
        executable: bool,
        blob: &ObjectId,
        enc: &mut Enc,
        check_blob: bool,
    ) -> std::result::Result<(), String> {
        let io = |e: io::Error| format!("{}: {e}", dest.display());
        // Created with its final mode (the umask is 022 during a restore): the descriptor is
        // writable whatever the mode, and no chmod is needed afterwards.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o555 } else { 0o444 })
            .open(dest)
            .map_err(io)?;
        let mut written = 0u64;
        let mut sink = |chunk: &[u8]| {
            f.write_all(chunk)?;
            written += chunk.len() as u64;
            enc.contents(chunk)
        };
        if check_blob {
            self.cache.stream(blob, &mut sink)
        } else {
            self.cache.stream_unchecked(blob, &mut sink)
        }
        .map_err(|e| format!("{}: {e}", dest.display()))?;
        self.bytes_written.fetch_add(written, Ordering::Relaxed);
        // Metadata through the open descriptor: no more path lookups.
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::fchown(&f, Some(u), Some(g)).map_err(io)?;
        }
        filetime::set_file_handle_times(&f, None, Some(mtime_one())).map_err(io)
    }
}

/// Remove a tree the daemon made read-only (directories 0555).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        for e in fs::read_dir(path)? {
            remove_tree(&e?.path())?;
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    }
}

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

/// The process umask, set for a scope and put back when dropped.
struct Umask(rustix::fs::Mode);

impl Umask {
    fn set(mask: u32) -> Self {
        Umask(rustix::process::umask(rustix::fs::Mode::from_raw_mode(
            mask,
        )))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

/// Restore threads per `--jobs` (see [`execute`]).
pub const WRITERS_PER_JOB: usize = 2;

const TMP_PREFIX: &str = ".storesync-tmp-";
const TRASH_PREFIX: &str = ".storesync-trash-";

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
    if !store.exists() {
        create_store_dir(layout).map_err(ioe(&store))?;
    }
    let owner = store_owner(&store)?;
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
    for e in fs::read_dir(&store).map_err(ioe(&store))? {
        let e = e.map_err(ioe(&store))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
            remove_tree(&e.path()).map_err(ioe(&e.path()))?;
        }
    }
    let run = format!("{}-{}", std::process::id(), crate::save::now());
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
                let tmp = store.join(format!("{TMP_PREFIX}{run}-{}", p.info.path.hash_part()));
                let r = (|| {
                    let tree = cache.read_tree(&p.tree).map_err(|e| e.to_string())?;
                    let attempt = |first: bool| {
                        let mut enc =
                            NarEncoder::new(NarHasher::new()).expect("hashing cannot fail");
                        let mut at = Attempt {
                            links: first,
                            check_blobs: !first,
                            linked: 0,
                            new_links: Vec::new(),
                        };
                        let written = writer.write(&tree, &tmp, &mut enc, &mut at);
                        let (hash, size) = enc.into_inner().finish();
                        let verdict = written.and_then(|()| {
                            if hash != p.info.nar_hash {
                                Err(format!(
                                    "restored content hashes to sha256:{}, the snapshot says {}",
                                    crate::nar::hex(&hash),
                                    db::format_db_hash(&p.info.nar_hash)
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
                        let trash =
                            store.join(format!("{TRASH_PREFIX}{run}-{}", p.info.path.hash_part()));
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
            let trash = store.join(format!(
                "{TRASH_PREFIX}{run}-{}",
                snap.paths[i].info.path.hash_part()
            ));
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

/// Open the target, plan, and (unless a dry run) execute under the big-lock.
///
/// # Errors
/// [`Error::Lock`] when the store is busy, and as [`plan`] and [`execute`].
pub fn restore(
    layout: &Layout,
    cache: &Cache,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let (id, snapshot) = cache.find_snapshot(opts.snapshot.as_deref())?;
    if opts.dry_run {
        let valid = if layout.db_file().exists() {
            db::read(layout)?
                .paths
                .iter()
                .map(|p| {
                    (
                        layout.store_dir.display(&p.path),
                        db::format_db_hash(&p.nar_hash),
                    )
                })
                .collect()
        } else {
            HashMap::new()
        };
        let plan = plan(layout, id, snapshot, &valid, &opts.roots)?;
        return Ok(RestoreReport {
            snapshot: id.hex(),
            dry_run: true,
            broken: plan.broken.clone(),
            repaired: plan
                .repair
                .iter()
                .map(|&i| layout.store_dir.display(&plan.snapshot.paths[i].info.path))
                .collect(),
            selected: plan.selected,
            already_valid: plan.already_valid,
            planned: plan.missing.len(),
            bytes: plan.bytes(),
            paths: plan
                .missing
                .iter()
                .map(|&i| layout.store_dir.display(&plan.snapshot.paths[i].info.path))
                .collect(),
            ..RestoreReport::default()
        });
    }
    let _lock = BigLock::acquire(&layout.big_lock_file(), layout.flavor, opts.wait)?;
    check_store_dir(layout)?; // before a DB is created for it
    let mut conn = db::open_or_create(layout)?;
    let valid = db::valid_paths(&conn, layout)?;
    let plan = plan(layout, id, snapshot, &valid, &opts.roots)?;
    let report = execute(layout, cache, &plan, &mut conn, progress);
    drop(conn);
    db::give_to_owner(layout)?;
    report
}
