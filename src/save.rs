//! `save`: snapshot the closure of some store paths into the cache.
//!
//! [`plan`] reads the DB in one read transaction, resolves the requested roots (store paths, or
//! links to them such as profiles, followed inside `--root`), takes their closure, and splits it
//! into paths the cache already holds with the same NAR hash (not read at all) and new paths.
//! [`execute`] walks each new path once, in parallel: file contents become BLAKE3-keyed blobs
//! in packs, the structure a tree, and the NAR SHA-256 computed on the way must equal the DB's
//! hash, else the path is corrupt. The snapshot is written last.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{
    Cache, Entry, Node, ObjectId, ObjectKind, PackStats, Packer, PathFrames, Snapshot, SnapshotPath,
};
use crate::closure::Graph;
use crate::db::{self, DbContents};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::nar::{sorted_entries, FileNarHasher, NarEncoder, NarError, NarHasher};
use crate::progress::Progress;
use crate::store_path::StorePath;

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

/// What a save will do.
pub struct SavePlan {
    /// The DB as read.
    pub db: DbContents,
    /// Requested roots, resolved.
    pub roots: Vec<StorePath>,
    /// Paths of the closure, references first (indices into `db.paths`).
    pub selected: Vec<usize>,
    /// The subset that must be read (not in the cache with the same NAR hash).
    pub new: Vec<usize>,
    known: HashMap<StorePath, ([u8; 32], u64, ObjectId)>,
    graph: Graph,
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
                    continue;
                }
                Component::Normal(n) => done.push(n),
                Component::Prefix(_) => unreachable!("unix"),
            }
            let logical = done.to_string_lossy().into_owned();
            if let Ok(sp) = layout.store_dir.parse(&logical) {
                return Ok(sp);
            }
            let real = crate::store_path::under_root(&layout.root, &logical);
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
    let graph = Graph::of_paths(db.paths.iter());
    let mut roots = Vec::new();
    for r in &opts.roots {
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
    let mut known = HashMap::new();
    for (_, snap) in cache.snapshots()? {
        let Ok(snap) = snap else { continue };
        if snap.flavor != layout.flavor || snap.store_dir != layout.store_dir.as_str() {
            continue;
        }
        for p in snap.paths {
            if cache.contains(&p.tree) {
                known.insert(p.info.path, (p.info.nar_hash, p.info.nar_size, p.tree));
            }
        }
    }
    let new = selected
        .iter()
        .copied()
        .filter(|&i| {
            known
                .get(&db.paths[i].path)
                .is_none_or(|k| k.0 != db.paths[i].nar_hash)
        })
        .collect();
    Ok(SavePlan {
        db,
        roots,
        selected,
        new,
        known,
        graph,
    })
}

/// Files at least this large stream through in chunks instead of being read whole (memory
/// stays bounded: one such buffer per worker thread).
const STREAM_THRESHOLD: u64 = 4 * 1024 * 1024;

/// (device, inode) of a hard-linked file → its blob and `.links` hash, so it is hashed once.
type InodeCache = Mutex<HashMap<(u64, u64), (ObjectId, [u8; 32])>>;

/// Per path: its tree and NAR size, or why it is corrupt.
type Walked = std::result::Result<(ObjectId, u64), String>;

struct Walker<'a> {
    packer: &'a Packer<'a>,
    inodes: InodeCache,
    bytes_read: AtomicU64,
    /// `.links` hashes recorded by the cache's trees, read on first need.
    cached_links: OnceLock<HashMap<(ObjectId, bool), [u8; 32]>>,
    /// `.links` hashes computed by this save.
    new_links: Mutex<HashMap<(ObjectId, bool), [u8; 32]>>,
    /// The source store's `.links` directory, and its entries once read.
    links_dir: PathBuf,
    source_links: OnceLock<SourceLinks>,
}

/// The source store's `.links` entries by inode (one directory read, no `stat` per entry).
#[derive(Default)]
struct SourceLinks {
    dev: u64,
    by_inode: HashMap<u64, [u8; 32]>,
}

impl SourceLinks {
    /// Read `dir`; a missing or unreadable directory (an undeduplicated store, as Nix's by
    /// default) gives an empty map, and names that are not canonical nix-base32 SHA-256s
    /// (the daemon's temporary names) are skipped.
    fn read(dir: &Path) -> Self {
        let (Ok(meta), Ok(entries)) = (fs::metadata(dir), fs::read_dir(dir)) else {
            return SourceLinks::default();
        };
        let mut by_inode = HashMap::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(hash) = crate::store_path::nixbase32_decode(name, 32) else {
                continue;
            };
            if crate::store_path::nixbase32_encode(&hash) == name {
                let mut h = [0; 32];
                h.copy_from_slice(&hash);
                by_inode.insert(e.ino(), h);
            }
        }
        SourceLinks {
            dev: meta.dev(),
            by_inode,
        }
    }
}

impl Walker<'_> {
    /// Walk one store path: its tree, NAR SHA-256 and NAR size.
    fn walk(&self, real: &Path) -> Result<(Node, [u8; 32], u64)> {
        let mut enc = NarEncoder::new(NarHasher::new()).expect("hashing cannot fail");
        let mut frames = PathFrames::default();
        let node = self.node(real, &mut enc, &mut frames);
        // Whatever happened to the walk, the objects claimed so far must reach a pack.
        self.packer.finish_path(frames)?;
        let node = node?;
        let (hash, size) = enc.into_inner().finish();
        Ok((node, hash, size))
    }

    fn node(
        &self,
        path: &Path,
        enc: &mut NarEncoder<NarHasher>,
        frames: &mut PathFrames,
    ) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        let meta = fs::symlink_metadata(path).map_err(io)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io)?.into_os_string().into_vec();
            enc.symlink(&target).map_err(io)?;
            Ok(Node::Symlink { target })
        } else if ft.is_dir() {
            enc.directory_start().map_err(io)?;
            let mut entries = Vec::new();
            for name in sorted_entries(path)? {
                enc.entry_start(name.as_bytes()).map_err(io)?;
                let node = self.node(&path.join(&name), enc, frames)?;
                enc.entry_end().map_err(io)?;
                entries.push(Entry {
                    name: name.as_bytes().to_vec(),
                    node,
                });
            }
            enc.directory_end().map_err(io)?;
            Ok(Node::Directory(entries))
        } else if ft.is_file() {
            self.file(path, &meta, enc, frames)
        } else {
            Err(NarError::FileType(path.to_owned()).into())
        }
    }

    fn file(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        enc: &mut NarEncoder<NarHasher>,
        frames: &mut PathFrames,
    ) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        let executable = meta.permissions().mode() & 0o100 != 0;
        let size = meta.len();
        let inode = (meta.dev(), meta.ino());
        let seen = if meta.nlink() > 1 {
            self.inodes.lock().expect("inodes").get(&inode).copied()
        } else {
            None
        };
        enc.regular_start(executable, size).map_err(io)?;
        let mut f = fs::File::open(path).map_err(io)?;
        let mut blake = blake3::Hasher::new();
        let mut small = crate::scratch::Scratch::empty();
        let mut total = 0u64;
        let mut feed = |chunk: &[u8]| -> io::Result<()> {
            enc.contents(chunk)?;
            if seen.is_none() {
                blake.update(chunk);
            }
            Ok(())
        };
        if size < STREAM_THRESHOLD {
            // Read whole (one more byte to notice growth), hash, keep for the packer.
            small.reserve(size as usize + 1);
            total = (&mut f)
                .take(size + 1)
                .read_to_end(&mut small)
                .map_err(io)? as u64;
            if total == size {
                feed(&small).map_err(io)?;
            }
        } else {
            let mut buf = crate::scratch::Scratch::with_len(1 << 20);
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > size {
                    break;
                }
                feed(&buf[..n]).map_err(io)?;
            }
        }
        if total != size {
            return Err(NarError::Changed(path.to_owned(), size).into());
        }
        enc.regular_end(size).map_err(io)?;
        self.bytes_read.fetch_add(size, Ordering::Relaxed);
        if let Some((blob, file_nar_hash)) = seen {
            // Another name of an inode already walked: its contents are packed or claimed.
            return Ok(Node::Regular {
                executable,
                size,
                blob,
                file_nar_hash,
            });
        }
        let blob = ObjectId(*blake.finalize().as_bytes());
        // The `.links` name is only needed for files the daemon deduplicates; it is known
        // already when the source store's `.links` has this inode, or when some tree of the
        // cache (or a file this save walked) records these contents.
        let known = (size >= crate::restore::LINKS_MIN_SIZE)
            .then(|| {
                self.source_links_hash(meta)
                    .or_else(|| self.known_links_hash(&blob, executable))
            })
            .flatten();
        let mut links = (size >= crate::restore::LINKS_MIN_SIZE && known.is_none())
            .then(|| FileNarHasher::new(executable, size));
        let claimed = self.packer.claim(&blob);
        if size < STREAM_THRESHOLD {
            if let Some(fh) = links.as_mut() {
                fh.update(&small);
            }
            if claimed {
                self.packer
                    .add_to(frames, ObjectKind::Blob, blob, &small)
                    .inspect_err(|_| self.packer.unclaim(&blob))?;
            }
        } else if claimed || links.is_some() {
            // Second pass over a large file, to pack it or to compute its `.links` hash;
            // it must still hash to the same id (the packer checks what it packs).
            let second = (|| -> Result<()> {
                let f = fs::File::open(path).map_err(io)?;
                let mut r = HashingReader {
                    inner: f,
                    hasher: (!claimed).then(blake3::Hasher::new),
                    links: links.as_mut(),
                };
                if claimed {
                    if !self
                        .packer
                        .add_reader(ObjectKind::Blob, blob, size, &mut r)?
                    {
                        return Err(NarError::Changed(path.to_owned(), size).into());
                    }
                } else {
                    io::copy(&mut (&mut r).take(size + 1), &mut io::sink()).map_err(io)?;
                    let h = r.hasher.take().expect("set when not claimed");
                    if ObjectId(*h.finalize().as_bytes()) != blob {
                        return Err(NarError::Changed(path.to_owned(), size).into());
                    }
                }
                Ok(())
            })();
            if second.is_err() && claimed {
                self.packer.unclaim(&blob);
            }
            second?;
        }
        let file_nar_hash = match (known, links) {
            (Some(h), _) => h,
            (None, Some(fh)) => {
                let h = fh.finish();
                self.new_links
                    .lock()
                    .expect("new links")
                    .insert((blob, executable), h);
                h
            }
            (None, None) => [0; 32],
        };
        if meta.nlink() > 1 {
            self.inodes
                .lock()
                .expect("inodes")
                .insert(inode, (blob, file_nar_hash));
        }
        Ok(Node::Regular {
            executable,
            size,
            blob,
            file_nar_hash,
        })
    }

    /// The name of the source store's `.links` entry sharing this file's inode, if any: the
    /// daemon named it by the SHA-256 of the file's NAR when it deduplicated the file, and
    /// trusts that name itself whenever it links another file to it.
    fn source_links_hash(&self, meta: &fs::Metadata) -> Option<[u8; 32]> {
        if meta.nlink() < 2 {
            return None;
        }
        let links = self
            .source_links
            .get_or_init(|| SourceLinks::read(&self.links_dir));
        (links.dev == meta.dev())
            .then(|| links.by_inode.get(&meta.ino()).copied())
            .flatten()
    }

    /// The `.links` hash of contents `blob` with the executable bit `executable`, if a tree of
    /// the cache or a file already walked by this save records it.
    fn known_links_hash(&self, blob: &ObjectId, executable: bool) -> Option<[u8; 32]> {
        let key = (*blob, executable);
        if self.packer.cache().contains(blob) {
            let cached = self
                .cached_links
                .get_or_init(|| self.packer.cache().links_hashes());
            if let Some(h) = cached.get(&key) {
                return Some(*h);
            }
        }
        self.new_links.lock().expect("new links").get(&key).copied()
    }
}

struct HashingReader<'h, R> {
    inner: R,
    hasher: Option<blake3::Hasher>,
    links: Option<&'h mut FileNarHasher>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(fh) = self.links.as_mut() {
            fh.update(&buf[..n]);
        }
        Ok(n)
    }
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
                        "NAR hash sha256:{} differs from the DB's {}",
                        crate::nar::hex(&hash),
                        db::format_db_hash(&info.nar_hash)
                    )));
                }
                if info.nar_size != 0 && info.nar_size != size {
                    return Ok(Err(format!(
                        "NAR size {size} differs from the DB's {}",
                        info.nar_size
                    )));
                }
                let (id, bytes) = node.encode();
                if packer.claim(&id) {
                    packer.add(ObjectKind::Tree, id, &bytes)?;
                }
                Ok(Ok((id, size)))
            });
            progress.advance(info.nar_size);
            match r {
                Ok(r) => (i, r),
                Err(Error::Nar(e)) => (i, Err(e.to_string())),
                Err(e) => (i, Err(format!("{e}"))),
            }
        })
        .collect();
    progress.finish();
    let bytes_read = walker.bytes_read.load(Ordering::Relaxed);
    drop(walker);
    let stats: PackStats = packer.finish()?;
    let mut walked: HashMap<usize, (ObjectId, u64)> = HashMap::new();
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
        created: now_nanos(),
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

/// Unix nanoseconds now (orders snapshots made in the same second).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
