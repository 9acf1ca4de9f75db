//! `save`: snapshot the closure of some store paths into the cache.
//!
//! [`plan`] reads the DB in one read transaction, resolves the requested roots (store paths, or
//! links to them such as profiles, followed inside `--root`), takes their closure, and splits it
//! into paths the cache already holds with the same NAR hash (not read at all) and new paths.
//! [`execute`] walks each new path once, in parallel: file contents become BLAKE3-keyed blobs
//! in packs, the structure a tree, and the NAR SHA-256 computed on the way must equal the DB's
//! hash, else the path is corrupt. The snapshot is written last.

mod file;
mod known;
mod paths;
mod plan;
mod walk;

use paths::{naming_any, walk_paths, PathError, WalkWith, Walked};
pub use plan::{plan, resolve_root, SavePlan, SavePlanSummary};

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::cache::{Cache, ObjectId, PackStats, Packer, Snapshot, SnapshotPath, TreeId};
use crate::db;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::layout::Layout;
use crate::store::path::StorePath;

/// Decompressed frames a save keeps for reuse.
const FRAME_CACHE_BYTES: usize = 4 << 20;

/// Options of a save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Store paths or links to them; empty means every valid path.
    pub roots: Vec<String>,
    /// Drop corrupt paths (and their referrers) instead of failing.
    pub skip_corrupt: bool,
    /// zstd level for new blobs.
    pub level: i32,
    /// The key the snapshot is saved under (like actions/cache's `key`); may be empty.
    pub key: String,
    /// Also save the closure of the daemon's GC roots (what `guix gc` would keep).
    pub gc_roots: bool,
    /// Read and hash every file of every new path, even those the base snapshot knows by
    /// their `.links` entry: each new path's NAR hash is then recomputed and compared.
    pub verify_source: bool,
    /// When not empty, the base snapshot (whose paths are not read again and whose trees the
    /// new snapshot names as they are) is chosen only among snapshots signed by one of these
    /// keys, its signature checked before it is read; with none signed, every path is read. A
    /// save that signs passes its own public key: otherwise its signature would vouch for
    /// trees that a cache writer without the key chose (see [`plan::base_snapshot`]).
    pub base_keys: crate::trust::TrustedKeys,
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
    /// Bytes of file contents not read: hard links to `.links` entries whose names the base
    /// snapshot's trees map to blobs.
    pub bytes_known: u64,
    /// New paths whose NAR hash was not recomputed (some file was not read); their NAR
    /// size, structure, and the `.links` names of the files not read were checked instead.
    pub unverified_paths: usize,
    /// New objects written.
    pub new_objects: u64,
    /// Compressed bytes appended to packs.
    pub packed_bytes: u64,
    /// Corrupt paths found (with --skip-corrupt: dropped), with the reason: their content
    /// differs from the DB's NAR hash or size, a file changed while read, or a file of a type
    /// a store cannot hold.
    pub corrupt: Vec<(String, String)>,
    /// Paths that could not be read from the store (with --skip-corrupt: dropped), with the
    /// error: permissions, I/O errors.
    pub unreadable: Vec<(String, String)>,
    /// Packs the base snapshot's index files name that the cache no longer holds (evicted,
    /// expired, deleted); 0 for a storage that cannot list (`gha://` without a listing).
    pub missing_packs: usize,
    /// Paths of the base read again (counted in `new_paths`) because an object they need
    /// was only in a missing pack; their objects are written again.
    pub reread_paths: usize,
    /// Paths dropped because they refer to a path not saved (corrupt, unreadable, vanished).
    pub dropped_referrers: Vec<String>,
    /// Paths deleted (garbage-collected) while the save ran, dropped with their referrers.
    pub vanished: Vec<String>,
}

/// Save the planned closure: read new paths, write objects, then the snapshot.
///
/// # Errors
/// [`Error::Integrity`] when a path's content does not match the DB or a path cannot be read
/// from the store (unless `skip_corrupt`); [`Error::CacheWrite`] as soon as the cache cannot
/// be written (a full disk, a read-only file system, permissions), and [`Error::Exhausted`]
/// as soon as the system runs out of open files, memory or room while a path is read,
/// whatever `skip_corrupt` says: neither is a fault of the store; [`Error::Db`] when the DB
/// cannot be read again. No
/// snapshot is written on error, but objects already indexed stay usable by the next save.
pub fn execute(
    layout: &Layout,
    cache: &Cache,
    plan: SavePlan,
    opts: &SaveOptions,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    execute_with(layout, cache, plan, opts, progress, &|_, _| {})
}

/// When [`execute_with`] calls its seam (tests use it to stage races).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first packer exists; no path was walked yet.
    BeforeWalk,
    /// Every path was walked once; the packer is not finished.
    AfterWalk,
}

fn execute_with(
    layout: &Layout,
    cache: &Cache,
    plan: SavePlan,
    opts: &SaveOptions,
    progress: &dyn Progress,
    seam: &dyn Fn(Stage, &Packer),
) -> Result<SaveReport> {
    let SavePlan {
        db,
        roots,
        selected,
        new,
        known,
        base,
        missing_packs,
        reread_paths,
    } = plan;
    // A save reads frames only for the base's trees: once each, in pack order, to index the
    // files they know (`known::KnownFiles::build`), then a few again for lookups. A few
    // frames suffice (at 100,000 paths the default budget held 24 MB of them through the walk).
    cache.limit_frames(FRAME_CACHE_BYTES);
    // Largest first, so one big path does not start last and run alone.
    let mut new = new;
    new.sort_by_key(|&i| std::cmp::Reverse(db.paths[i].nar_size));
    // Each walked path's outcome, by DB position; a path walked again (a later round) is
    // listed again, and its last outcome counts.
    let mut outcomes: Vec<(usize, Walked)> = Vec::new();
    let (mut bytes_read, mut bytes_known, mut stats) = (0, 0, PackStats::default());
    let base_trees: Option<Vec<TreeId>> = (!opts.verify_source)
        .then(|| {
            base.as_ref()
                .map(|(_, b)| b.paths.iter().map(|p| p.tree).collect())
        })
        .flatten();
    // A new path is one the base lacks or holds with another NAR hash: the snapshot will
    // differ from the base unless every new path fails and is dropped. The base's paths (a
    // second copy of the DB's rows) go before the walk then, and are read again only in that
    // case, to compare (at 100,000 paths, 30 MB less held through the walk).
    let mut base = base;
    let base_paths_dropped = match &mut base {
        Some((_, b)) if !new.is_empty() => {
            let n = b.paths.len();
            b.paths = Vec::new();
            Some(n)
        }
        _ => None,
    };
    // Walk the new paths in parallel. A large blob is claimed by the first walk that meets it
    // and streamed into a pack; a walk meeting it meanwhile names it in its tree, trusting
    // the claim. When the claimant gives the claim up (its path changed or vanished), the
    // blob may end up in no pack: such paths are walked again, one at a time, so that no
    // claim is pending while another path is walked. (Waiting for the claimant's outcome
    // instead could deadlock: rayon may run the waiting walk on the claimant's own thread
    // while the claimant waits for its compression tasks.)
    let mut todo = new.clone();
    for round in 0.. {
        let packer = Packer::new(cache, opts.level);
        let parallel = round == 0;
        if parallel {
            seam(Stage::BeforeWalk, &packer);
            progress.start_bytes(
                "reading new paths",
                todo.iter()
                    .map(|&i| db.paths[i].nar_size)
                    .fold(0u64, u64::saturating_add),
            );
        }
        let with = WalkWith {
            layout,
            db: &db,
            packer: &packer,
            base_trees: base_trees.as_deref(),
        };
        let walked = walk_paths(&with, &todo, parallel, progress);
        if parallel {
            progress.finish();
            seam(Stage::AfterWalk, &packer);
        }
        let (results, bytes) = walked?;
        bytes_read += bytes.read;
        bytes_known += bytes.known;
        let given_up = packer.given_up();
        let s = packer.finish().map_err(Error::CacheWrite)?;
        stats.objects += s.objects;
        stats.raw_bytes += s.raw_bytes;
        stats.packed_bytes += s.packed_bytes;
        stats.packs += s.packs;
        let missing: HashSet<ObjectId> = given_up
            .into_iter()
            .filter(|id| !cache.contains(*id))
            .collect();
        todo = naming_any(cache, &results, &missing)?;
        outcomes.extend(results);
        if todo.is_empty() {
            break;
        }
        if !parallel {
            let i = todo[0];
            return Err(Error::Integrity(format!(
                "{} names an object that no pack holds after a sequential walk; no snapshot \
                 written (please report this bug)",
                layout.store_dir.display(&db.paths[i].path)
            )));
        }
    }
    // The last outcome of each path, by position (vectors searched by bisection: at
    // 100,000 new paths, maps of them held 32 MB at once as the walk ended).
    outcomes.reverse();
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.dedup_by_key(|(i, _)| *i);
    // The walk's buffers (file reads, frames) are not needed past this point.
    crate::scratch::release_spares();
    let mut walked: Vec<(usize, paths::Saved)> = Vec::with_capacity(outcomes.len());
    // Paths that could not be saved, and why (content or source errors).
    let mut failed = Vec::new();
    for (i, r) in outcomes {
        match r {
            Ok(t) => walked.push((i, t)),
            Err(e) => failed.push((i, e)),
        }
    }
    let walked_at = |i: usize| {
        walked
            .binary_search_by_key(&i, |(j, _)| *j)
            .ok()
            .map(|k| &walked[k].1)
    };
    let mut report = SaveReport {
        new_paths: new.len(),
        bytes_read,
        bytes_known,
        unverified_paths: walked.iter().filter(|(_, w)| !w.verified).count(),
        new_objects: stats.objects,
        packed_bytes: stats.packed_bytes,
        missing_packs,
        reread_paths,
        ..SaveReport::default()
    };
    let mut keep = vec![false; db.paths.len()];
    for &i in &selected {
        keep[i] = true;
    }
    // With the daemon running, a GC may delete a path after the DB was read: that is no
    // corruption. Such paths (no longer valid now) are dropped with everything referring to them.
    if !failed.is_empty() {
        let now_valid: HashSet<StorePath> = db::read(layout)?
            .paths
            .into_iter()
            .map(|p| p.path)
            .collect();
        for (i, e) in &mut failed {
            if !now_valid.contains(&db.paths[*i].path) {
                *e = PathError::Vanished;
            }
        }
    }
    failed.sort_by_key(|(i, _)| layout.store_dir.display(&db.paths[*i].path));
    let name = |i: usize| layout.store_dir.display(&db.paths[i].path);
    for (i, e) in &failed {
        match e {
            PathError::Vanished => report.vanished.push(name(*i)),
            PathError::Corrupt(why) => report.corrupt.push((name(*i), why.clone())),
            PathError::Source(why) => report.unreadable.push((name(*i), why.clone())),
        }
    }
    let store_failed = !report.corrupt.is_empty() || !report.unreadable.is_empty();
    if store_failed && !opts.skip_corrupt {
        return Err(refusal(&report));
    }
    let dropped = if failed.is_empty() {
        vec![false; db.paths.len()]
    } else {
        plan::reference_graph(&db).referrers_closure(failed.iter().map(|(i, _)| *i))
    };
    // A set, not a scan per path: a store that lost its files fails every path.
    let failed_set: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
    for &i in &selected {
        if dropped[i] {
            keep[i] = false;
            if !failed_set.contains(&i) {
                report.dropped_referrers.push(name(i));
            }
        }
    }
    // The rows as the snapshot records them: the NAR size read (or the base's).
    let kept_paths: Vec<usize> = selected.iter().copied().filter(|&i| keep[i]).collect();
    let mut db = db;
    // The tree of each kept path, in the order of `kept_paths`.
    let mut trees: Vec<TreeId> = Vec::with_capacity(kept_paths.len());
    for &i in &kept_paths {
        let (tree, size) = match walked_at(i) {
            Some(t) => (t.tree, t.nar_size),
            None => {
                let k = known[i].expect("a path not read is known from the base");
                (k.2, k.1)
            }
        };
        db.paths[i].nar_size = size;
        trees.push(tree);
    }
    drop(known);
    let (roots, derivation_outputs) = {
        let kept: HashSet<&StorePath> = kept_paths.iter().map(|&i| &db.paths[i].path).collect();
        let outputs: Vec<_> = db
            .derivation_outputs
            .iter()
            .filter(|o| kept.contains(&o.drv))
            .cloned()
            .collect();
        let roots: Vec<StorePath> = roots.into_iter().filter(|r| kept.contains(r)).collect();
        (roots, outputs)
    };
    report.paths = kept_paths.len();
    report.nar_bytes = kept_paths
        .iter()
        .map(|&i| db.paths[i].nar_size)
        .fold(0u64, u64::saturating_add);
    // Unchanged: compared with the base row by row, without building a second snapshot.
    // A kept new path makes it differ; so does another number of paths.
    if let (Some((id, b)), Some(n)) = (&mut base, base_paths_dropped) {
        if n == kept_paths.len() && !kept_paths.iter().any(|&i| walked_at(i).is_some()) {
            b.paths = cache.read_snapshot(id)?.paths;
        }
    }
    if let Some((id, base)) = &base {
        // The base's own number of paths: its list is empty here when it went before the
        // walk and was not read back (which a save keeping no path at all must not take
        // for an empty base).
        let base_len = base_paths_dropped.unwrap_or(base.paths.len());
        let same = base.key == opts.key
            && base.flavor == layout.flavor
            && base.store_dir == layout.store_dir.as_str()
            && base.roots == roots
            && base.derivation_outputs == derivation_outputs
            && base_len == kept_paths.len()
            && base.paths.len() == base_len
            && base
                .paths
                .iter()
                .zip(kept_paths.iter().zip(&trees))
                .all(|(b, (&i, &tree))| b.tree == tree && b.info == db.paths[i]);
        if same {
            report.snapshot = id.hex();
            report.unchanged = true;
            report.new_path_names = new
                .iter()
                .map(|&i| layout.store_dir.display(&db.paths[i].path))
                .collect();
            return Ok(report);
        }
    }
    // Of the base, only its id and index files are needed from here: its paths and the
    // frames its trees were read from go before the new snapshot is built and written.
    // A snapshot of the base's key is dated after it, whatever this machine's clock says
    // (another runner's clock may be ahead: the base would stay the newest of the key).
    let not_before = base
        .as_ref()
        .filter(|(_, b)| b.key == opts.key)
        .map(|(_, b)| b.created.saturating_add(1));
    let base = base.map(|(id, b)| (id, b.indexes));
    let parent = base.as_ref().map(|(id, _)| *id);
    cache.drop_frames();
    // The names of new paths are made once the snapshot is written (10 MB at 100,000 new
    // paths): from its rows for kept paths, now for the others (those that failed).
    let mut at_kept = vec![usize::MAX; db.paths.len()];
    for (j, &i) in kept_paths.iter().enumerate() {
        at_kept[i] = j;
    }
    let unkept_names: HashMap<usize, String> = new
        .iter()
        .filter(|&&i| at_kept[i] == usize::MAX)
        .map(|&i| (i, layout.store_dir.display(&db.paths[i].path)))
        .collect();
    // The DB's rows are moved into the snapshot, not copied.
    let mut rows: Vec<Option<crate::store::path_info::PathInfo>> = std::mem::take(&mut db.paths)
        .into_iter()
        .map(Some)
        .collect();
    drop(walked);
    let paths: Vec<SnapshotPath> = kept_paths
        .iter()
        .zip(trees)
        .map(|(&i, tree)| SnapshotPath {
            info: rows[i].take().expect("each path once"),
            tree,
        })
        .collect();
    drop(rows);
    let snapshot = Snapshot {
        version: crate::cache::FORMAT_VERSION,
        key: opts.key.clone(),
        flavor: layout.flavor,
        store_dir: layout.store_dir.as_str().to_owned(),
        created: crate::clock::now_nanos().max(not_before.unwrap_or(i64::MIN)),
        tool: format!("storesync {}", env!("CARGO_PKG_VERSION")),
        // The base snapshot's index files (the only ones read, see `plan::base_snapshot`)
        // and the one this save wrote: together they locate every object named. When no
        // object was looked up or written, the index was never read: the base's files.
        indexes: match (base, cache.index_loaded()) {
            (Some((_, indexes)), false) => indexes,
            _ => cache.index_files_and_written(),
        },
        parent,
        roots,
        paths,
        derivation_outputs,
    };
    report.snapshot = cache
        .write_snapshot(&snapshot)
        .map_err(Error::CacheWrite)?
        .hex();
    report.new_path_names = new
        .iter()
        .map(|&i| match at_kept[i] {
            usize::MAX => unkept_names[&i].clone(),
            j => layout.store_dir.display(&snapshot.paths[j].info.path),
        })
        .collect();
    Ok(report)
}

/// The error of a save that found corrupt or unreadable paths without `skip_corrupt`.
fn refusal(r: &SaveReport) -> Error {
    let mut what = Vec::new();
    if !r.corrupt.is_empty() {
        what.push(format!(
            "the store is corrupt ({} paths do not match the DB)",
            r.corrupt.len()
        ));
    }
    if !r.unreadable.is_empty() {
        what.push(format!("{} store paths cannot be read", r.unreadable.len()));
    }
    let mut lines: Vec<String> = r
        .corrupt
        .iter()
        .map(|(p, w)| format!("  {p}: corrupt: {w}"))
        .collect();
    lines.extend(
        r.unreadable
            .iter()
            .map(|(p, w)| format!("  {p}: unreadable: {w}")),
    );
    Error::Integrity(format!(
        "{}; no snapshot written (pass --skip-corrupt to save the rest without them and what \
         refers to them):\n{}",
        what.join(" and "),
        lines.join("\n")
    ))
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
    crate::cache::format::check_key(&opts.key).map_err(|e| Error::Usage(format!("--key: {e}")))?;
    let p = plan(layout, cache, opts)?;
    execute(layout, cache, p, opts, progress)
}

#[cfg(test)]
mod tests {
    use super::paths::classify;
    use super::*;
    use crate::cache::CacheError;
    use crate::cache::{LocalDir, ObjectWriter, Storage, StorageError};
    use crate::nar::NarError;
    use crate::progress::NoProgress;
    use crate::store::layout::Flavor;
    use crate::store::path_info::PathInfo;
    use std::io::{self, Read, Write};

    /// Options of the tests' saves: every valid path, no GC roots, sources not re-read.
    fn options(key: &str, skip_corrupt: bool, level: i32) -> SaveOptions {
        SaveOptions {
            gc_roots: false,
            key: key.into(),
            roots: vec![],
            skip_corrupt,
            level,
            verify_source: false,
            base_keys: Default::default(),
        }
    }

    /// A cache directory on a nearly full disk: an object larger than `room` bytes does not
    /// fit (its scratch file is created, as it would be, but the write fails with ENOSPC).
    struct Full {
        dir: LocalDir,
        room: usize,
    }

    struct FullWriter<'a> {
        inner: Box<dyn ObjectWriter + 'a>,
        room: usize,
    }

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(28)
    }

    impl Write for FullWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.room {
                return Err(enospc());
            }
            self.room -= buf.len();
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    impl ObjectWriter for FullWriter<'_> {
        fn commit(self: Box<Self>, key: &str) -> std::result::Result<(), StorageError> {
            self.inner.commit(key)
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    impl Storage for Full {
        fn get(&self, key: &str, max: u64) -> std::result::Result<Vec<u8>, StorageError> {
            self.dir.get(key, max)
        }
        fn get_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> std::result::Result<Box<dyn Read + Send + '_>, StorageError> {
            self.dir.get_range(key, offset, len)
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> std::result::Result<bool, StorageError> {
            if data.len() > self.room {
                return Err(StorageError(self.dir.describe(key), enospc()));
            }
            self.dir.put_if_absent(key, data)
        }
        fn writer(&self) -> std::result::Result<Box<dyn ObjectWriter + '_>, StorageError> {
            Ok(Box::new(FullWriter {
                inner: self.dir.writer()?,
                room: self.room,
            }))
        }
        fn sync(&self) -> std::result::Result<(), StorageError> {
            self.dir.sync()
        }
        fn list(&self, prefix: &str) -> std::result::Result<Vec<String>, StorageError> {
            self.dir.list(prefix)
        }
        fn size(&self, key: &str) -> std::result::Result<Option<u64>, StorageError> {
            self.dir.size(key)
        }
        fn delete(&self, key: &str) -> std::result::Result<(), StorageError> {
            self.dir.delete(key)
        }
        fn describe(&self, key: &str) -> String {
            self.dir.describe(key)
        }
    }

    /// Security issue item 7: a full (or read-only) cache is no corrupt store. The save stops,
    /// names the cache file and the cause, and never suggests --skip-corrupt, which must not
    /// turn a full disk into a snapshot without the paths that did not fit.
    #[test]
    fn a_save_is_unchanged_only_when_key_rows_trees_and_outputs_are() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, &dir.path().join("src"), None, None).unwrap();
        crate::sample::build(&layout, 1).unwrap();
        let cache = Cache::open_dir(&dir.path().join("cache")).unwrap();
        let saved = |key: &str| {
            let opts = options(key, false, 3);
            let cache = Cache::open_dir(&dir.path().join("cache")).unwrap();
            let r = save(&layout, &cache, &opts, &NoProgress).unwrap();
            (r.unchanged, r.snapshot)
        };
        let (unchanged, first) = saved("k");
        assert!(!unchanged);
        assert_eq!(saved("k"), (true, first.clone()));
        // Another key: a snapshot of its own (its base is the newest of the store).
        let (unchanged, other) = saved("other");
        assert!(!unchanged && other != first);
        // A row that differs in one column only (the registration time) is a change.
        let db = rusqlite::Connection::open(layout.db_file()).unwrap();
        db.execute(
            "UPDATE ValidPaths SET registrationTime = registrationTime + 1 \
             WHERE id = (SELECT MIN(id) FROM ValidPaths)",
            [],
        )
        .unwrap();
        drop(db);
        let (unchanged, third) = saved("k");
        assert!(!unchanged && third != first && third != other);
        assert_eq!(saved("k"), (true, third));
        assert_eq!(cache.snapshot_ids().unwrap().len(), 3);
    }

    #[test]
    fn a_save_whose_every_new_path_is_dropped_is_unchanged() {
        // The base's paths are let go before the walk when a path is new; a save whose new
        // paths all fail (here: one corrupt path, skipped) still finds the base unchanged.
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, &dir.path().join("src"), None, None).unwrap();
        crate::sample::build(&layout, 1).unwrap();
        let cache = Cache::open_dir(&dir.path().join("cache")).unwrap();
        let opts = options("k", true, 3);
        let first = save(&layout, &cache, &opts, &NoProgress).unwrap();
        add_path(&layout, "bad", &[("f", 100)]);
        let f = layout
            .real_store_dir()
            .join("0123456789abcdfghijklmnpqrsvwxyz-bad/f");
        let mut perms = std::fs::metadata(&f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&f, perms).unwrap();
        std::fs::write(&f, [0u8; 100]).unwrap();
        let cache = Cache::open_dir(&dir.path().join("cache")).unwrap();
        let r = save(&layout, &cache, &opts, &NoProgress).unwrap();
        assert_eq!(r.new_paths, 1, "{r:?}");
        assert_eq!(r.corrupt.len(), 1, "{r:?}");
        assert!(r.unchanged, "{r:?}");
        assert_eq!(r.snapshot, first.snapshot);
        assert_eq!(cache.snapshot_ids().unwrap().len(), 1);
    }

    #[test]
    fn a_cache_write_error_aborts_the_save_and_is_not_called_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, &dir.path().join("src"), None, None).unwrap();
        crate::sample::build(&layout, 1).unwrap();
        // Blobs the walks write at once: a solo one and a streamed one.
        add_path(&layout, "big", &[("solo", 300_000), ("streamed", 5 << 20)]);
        let cache_dir = dir.path().join("cache");
        // No room at all; room for all but the streamed blob's pack (which, once its scratch
        // file is gone, leaves room for the rest: a save that called the path corrupt would
        // then write a snapshot without it under --skip-corrupt).
        for (room, skip_corrupt) in [(0, false), (0, true), (1 << 20, false), (1 << 20, true)] {
            let dir = LocalDir::open(&cache_dir).unwrap();
            let cache = Cache::open(Box::new(Full { dir, room }));
            let opts = options("", skip_corrupt, 3);
            let e = save(&layout, &cache, &opts, &NoProgress).unwrap_err();
            assert!(matches!(e, Error::CacheWrite(_)), "{e:?}");
            let msg = crate::error::Chain(&e).to_string();
            assert!(msg.contains("No space left on device"), "{msg}");
            assert!(msg.contains(&cache_dir.display().to_string()), "{msg}");
            assert!(msg.contains("no snapshot written"), "{msg}");
            assert!(!msg.contains("corrupt"), "{msg}");
            assert!(cache.snapshot_ids().unwrap().is_empty());
        }
    }

    /// A cache directory that says it cannot list, as `gha://` through the runtime API (its
    /// snapshots are found as a lookup by key finds them, here every one).
    struct Unlisted(LocalDir);

    impl Storage for Unlisted {
        fn get(&self, key: &str, max: u64) -> std::result::Result<Vec<u8>, StorageError> {
            self.0.get(key, max)
        }
        fn get_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> std::result::Result<Box<dyn Read + Send + '_>, StorageError> {
            self.0.get_range(key, offset, len)
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> std::result::Result<bool, StorageError> {
            self.0.put_if_absent(key, data)
        }
        fn writer(&self) -> std::result::Result<Box<dyn ObjectWriter + '_>, StorageError> {
            self.0.writer()
        }
        fn sync(&self) -> std::result::Result<(), StorageError> {
            self.0.sync()
        }
        fn list(&self, prefix: &str) -> std::result::Result<Vec<String>, StorageError> {
            self.0.list(prefix)
        }
        fn can_list(&self) -> bool {
            false
        }
        fn find_snapshots(
            &self,
            _key: &str,
            _restore_keys: &[String],
        ) -> std::result::Result<Option<Vec<String>>, StorageError> {
            self.0.list("snapshots").map(Some)
        }
        fn size(&self, key: &str) -> std::result::Result<Option<u64>, StorageError> {
            self.0.size(key)
        }
        fn delete(&self, key: &str) -> std::result::Result<(), StorageError> {
            self.0.delete(key)
        }
        fn describe(&self, key: &str) -> String {
            self.0.describe(key)
        }
    }

    /// Found by review: on a cache that cannot list (`gha://`), a save with a new path built
    /// on a snapshot one of whose packs was evicted took every base path as cached, so the
    /// new snapshot named objects no pack held. Such a save reads the index anyway: a pack
    /// found missing there makes the base's paths looked up, and those needing its objects
    /// are read again.
    #[test]
    fn a_save_with_a_new_path_on_a_cache_that_cannot_list_writes_again_what_a_lost_pack_held() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, &dir.path().join("src"), None, None).unwrap();
        crate::sample::build(&layout, 1).unwrap();
        let cache_dir = dir.path().join("cache");
        let open = || Cache::open(Box::new(Unlisted(LocalDir::open(&cache_dir).unwrap())));
        let opts = options("k", false, 3);
        save(&layout, &open(), &opts, &NoProgress).unwrap();
        for e in std::fs::read_dir(cache_dir.join("packs")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        // Unchanged: nothing tells the save (documented).
        let r = save(&layout, &open(), &opts, &NoProgress).unwrap();
        assert!(r.unchanged, "{r:?}");
        add_path(&layout, "new", &[("f", 100)]);
        let r = save(&layout, &open(), &opts, &NoProgress).unwrap();
        assert!(r.missing_packs >= 1, "{r:?}");
        assert_eq!(r.reread_paths, 6, "{r:?}");
        assert_eq!((r.paths, r.new_paths), (7, 7), "{r:?}");
        let cache = open();
        let (_, snap) = cache.find_snapshot(Some(&r.snapshot)).unwrap();
        cache.use_indexes(&snap.indexes);
        for sp in &snap.paths {
            let tree = cache.read_tree(&sp.tree).unwrap();
            tree.for_each_blob(&mut |id, _| {
                assert!(cache.contains(*id), "{}: blob {id} missing", sp.info.path);
            });
        }
    }

    /// Write and register a store path of files `(name, size)` of incompressible bytes.
    fn add_path(layout: &Layout, name: &str, files: &[(&str, usize)]) {
        let base = format!("0123456789abcdfghijklmnpqrsvwxyz-{name}");
        let top = layout.real_store_dir().join(&base);
        std::fs::create_dir(&top).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (f, size) in files {
            // xorshift: bytes zstd cannot shrink
            let bytes: Vec<u8> = (0..*size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(top.join(f), bytes).unwrap();
        }
        crate::sample::canonicalise(&top).unwrap();
        let (nar_hash, nar_size) = crate::nar::hash_path(&top).unwrap();
        let info = PathInfo {
            path: StorePath::from_base_name(&base).unwrap(),
            nar_hash,
            nar_size,
            registration_time: 1,
            deriver: None,
            references: vec![],
            nix: None,
        };
        let mut conn = db::open_or_create(layout).unwrap();
        db::register(&mut conn, layout, &[&info], &[]).unwrap();
    }

    /// Security issue item 7, last bullet: path A claims a large (streamed) blob, path B
    /// meets the same contents meanwhile and names the blob in its tree trusting the claim,
    /// then A gives the claim up (A changed, or vanished). The seam plays A: it claims the
    /// blob before the walks and gives it up after them. The snapshot must not name a blob
    /// that no pack holds: B is walked again and packs it.
    #[test]
    fn a_large_blob_given_up_by_one_walk_is_packed_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Guix, &dir.path().join("src"), None, None).unwrap();
        crate::sample::build(&layout, 1).unwrap();
        add_path(&layout, "b", &[("shared", 5 << 20)]);
        let b = layout
            .real_store_dir()
            .join("0123456789abcdfghijklmnpqrsvwxyz-b/shared");
        let blob = crate::cache::BlobId::of(&std::fs::read(b).unwrap());
        let cache = Cache::open_dir(&dir.path().join("cache")).unwrap();
        let opts = options("", true, 1);
        let p = plan(&layout, &cache, &opts).unwrap();
        let r = execute_with(
            &layout,
            &cache,
            p,
            &opts,
            &NoProgress,
            &|stage, packer| match stage {
                Stage::BeforeWalk => assert!(packer.claim(blob)),
                Stage::AfterWalk => packer.unclaim(blob),
            },
        )
        .unwrap();
        assert_eq!(r.paths, 7, "{r:?}");
        let cache = Cache::open_dir(&dir.path().join("cache")).unwrap();
        assert!(cache.contains(blob), "the shared blob is in no pack");
        assert_eq!(
            crate::cache::BlobId::of(&cache.read_small(blob).unwrap()),
            blob
        );
        let (_, snap) = cache.find_snapshot(None).unwrap();
        for sp in &snap.paths {
            cache
                .read_tree(&sp.tree)
                .unwrap()
                .for_each_blob(&mut |id, _| {
                    assert!(
                        cache.contains(*id),
                        "{}: blob {id} is in no pack",
                        sp.info.path
                    );
                });
        }
    }

    #[test]
    fn walk_errors_are_sorted_into_store_and_cache_errors() {
        let io = |code| io::Error::from_raw_os_error(code);
        let nar = |e| Error::Nar(NarError::Io("/gnu/store/x".into(), e));
        assert!(matches!(
            classify(nar(io(13))), // EACCES reading the store
            Ok(PathError::Source(m)) if m.contains("/gnu/store/x") && m.contains("denied")
        ));
        assert!(matches!(
            classify(Error::Nar(NarError::Changed("/gnu/store/x/f".into(), 3))),
            Ok(PathError::Corrupt(_))
        ));
        assert!(matches!(
            classify(Error::Nar(NarError::FileType("/gnu/store/x/fifo".into()))),
            Ok(PathError::Corrupt(_))
        ));
        for code in [28, 13, 30] {
            // ENOSPC, EACCES, EROFS in the cache
            let e = Error::Cache(CacheError::Storage(StorageError(
                "c/tmp/x".into(),
                io(code),
            )));
            assert!(matches!(classify(e), Err(Error::CacheWrite(_))));
        }
        for code in [24, 23, 12] {
            // EMFILE, ENFILE, ENOMEM reading the store: the run's, not the path's.
            let e = classify(nar(io(code))).unwrap_err();
            assert!(matches!(e, Error::Exhausted(_)), "{e:?}");
            let msg = crate::error::Chain(&e).to_string();
            assert!(
                msg.contains("/gnu/store/x") && msg.contains("not a fault"),
                "{msg}"
            );
        }
        // EIO is the file's (its blocks on the disk).
        assert!(matches!(classify(nar(io(5))), Ok(PathError::Source(_))));
    }
}
