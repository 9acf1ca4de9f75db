//! The content-addressed cache: blobs (file contents, keyed by BLAKE3), trees (one per store
//! path), packs (zstd frames of objects, tens of MiB each), index files (object → pack range)
//! and snapshots (the paths of one save). The byte layout is specified in docs/FORMAT.md.
//!
//! Invariants: every object read is checked against its id before it is used (a solo blob
//! streams, so its check comes at the end and callers discard what they wrote on error);
//! objects are durable (packs and index fsynced and renamed into place) before a snapshot
//! naming them is written; nothing is ever modified in place.

mod decode;
pub mod format;
mod frames;
pub mod gc;
pub mod id;
pub mod index;
pub mod location;
mod packer;
pub mod snapshot;
pub mod storage;
pub mod tree;

use std::path::Path;
use std::sync::{Mutex, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use format::{
    decode_bincode, unseal, INDEX_MAGIC, MAX_INDEX_FILE, MAX_SNAPSHOT_FILE, SNAPSHOT_MAGIC,
};
pub use format::{index_key, pack_key, snapshot_key, SnapshotHead, FORMAT_VERSION, PACK_MAGIC};
use frames::FrameCache;
pub use id::{BlobId, IndexId, ObjectId, PackId, SnapshotId, TreeId};
use index::Objects;
pub use index::{IndexFile, Location};
pub use packer::{PackStats, Packer, PathFrames};
pub use snapshot::{Snapshot, SnapshotPath, SnapshotRef};
pub use storage::{LocalDir, ObjectWriter, Storage, StorageError};
pub use tree::{Entry, Node};

/// Objects this large or larger get zstd frames of their own.
pub const SOLO_THRESHOLD: u64 = 256 * 1024;
/// A large object is cut into frames of this much content each: they compress (and could
/// decompress) in parallel, and one-shot compression of a buffer avoids the slower
/// streaming path. The level-3 window is 2 MiB, so little ratio is lost.
pub const CHUNK: usize = 4 * 1024 * 1024;
/// A frame of small objects is closed once it holds this many bytes.
pub const FRAME_TARGET: u64 = 1024 * 1024;
/// A pack is closed once it is this large.
pub const PACK_TARGET: u64 = 32 * 1024 * 1024;
/// Upper bound of a decompressed frame of small objects.
pub const MAX_BATCH_FRAME: u64 = FRAME_TARGET + SOLO_THRESHOLD;
/// Errors of the cache; each names the file or object.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cache is damaged: {0} (run `storesync verify`)")]
    Corrupt(String),
    #[error("object {0} is not in the cache (the cache is incomplete; run `storesync verify`)")]
    Missing(ObjectId),
    #[error("no snapshot matches `{0}` (see `storesync ls`)")]
    NoSnapshot(String),
    #[error("snapshot prefix `{0}` is ambiguous")]
    AmbiguousSnapshot(String),
    #[error("the cache holds no snapshot yet (run `storesync save` first)")]
    Empty,
}

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// File contents.
    Blob,
    /// An encoded [`Node`].
    Tree,
}

/// An opened cache. The index is loaded on first use, so commands that need only snapshots
/// (a no-op restore, `ls`) never read it.
pub struct Cache {
    storage: Box<dyn Storage>,
    objects: OnceLock<RwLock<Objects>>,
    frames: Mutex<FrameCache>,
    /// Warnings found outside the index (snapshots passed over).
    extra_warnings: Mutex<Vec<String>>,
}

impl Cache {
    /// Open (creating if needed) a cache directory.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when the directory cannot be created.
    pub fn open_dir(dir: &Path) -> Result<Self, CacheError> {
        Ok(Self::open(Box::new(LocalDir::open(dir)?)))
    }

    /// Open a cache directory for reading only; a missing directory is an empty cache.
    pub fn open_dir_read_only(dir: &Path) -> Self {
        Self::open(Box::new(LocalDir::open_existing(dir)))
    }

    /// Open a cache on any storage.
    pub fn open(storage: Box<dyn Storage>) -> Self {
        Cache {
            storage,
            objects: OnceLock::new(),
            frames: Mutex::new(FrameCache::new()),
            extra_warnings: Mutex::default(),
        }
    }

    fn objs(&self) -> &RwLock<Objects> {
        self.objects.get_or_init(|| RwLock::new(self.load_index()))
    }

    /// Merge every index file. Damaged index files are skipped with a warning (their objects
    /// count as absent), as are entries whose pack is missing. On a backend that cannot list,
    /// the index files the newest snapshot names (those [`Cache::list_snapshots`] finds).
    fn load_index(&self) -> Objects {
        if !self.storage.can_list() {
            let newest = self.list_snapshots().map(|refs| refs.last().cloned());
            return match newest {
                Ok(Some(r)) => match self.read_head(&r) {
                    Ok(head) => self.objects_of(&head.indexes),
                    Err(e) => warned(format!("cannot read the newest snapshot's head: {e}")),
                },
                Ok(None) => Objects::default(),
                Err(e) => warned(format!("cannot find the newest snapshot: {e}")),
            };
        }
        let mut objects = Objects::default();
        let keys = match self.storage.list("index") {
            Ok(k) => k,
            Err(e) => {
                objects
                    .warnings
                    .push(format!("cannot list index files: {e}"));
                return objects;
            }
        };
        for key in keys {
            match self.read_index_file(&key) {
                Ok(file) => {
                    let w = objects.merge(file, &mut |p| self.pack_present(p));
                    objects.warnings.extend(w);
                    if let Some(id) = format::parse_index_key(&key) {
                        objects.files.push(id);
                    }
                }
                Err(e) => objects.warnings.push(format!("skipping index {key}: {e}")),
            }
        }
        objects
    }

    fn pack_present(&self, p: &PackId) -> bool {
        matches!(self.storage.size(&pack_key(p)), Ok(Some(_)))
    }

    /// Problems found while loading the index (damaged index files, missing packs).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.objs().read().expect("objects").warnings.clone();
        w.extend(
            self.extra_warnings
                .lock()
                .expect("warnings")
                .iter()
                .cloned(),
        );
        w
    }

    /// Like [`Cache::warnings`], but empty when the index was never loaded.
    pub fn loaded_warnings(&self) -> Vec<String> {
        let mut w = match self.objects.get() {
            Some(o) => o.read().expect("objects").warnings.clone(),
            None => Vec::new(),
        };
        w.extend(
            self.extra_warnings
                .lock()
                .expect("warnings")
                .iter()
                .cloned(),
        );
        w
    }

    fn read_index_file(&self, key: &str) -> Result<IndexFile, CacheError> {
        let bytes = self.storage.get(key, MAX_INDEX_FILE)?;
        let what = self.storage.describe(key);
        let (sum, _version, body) = unseal(INDEX_MAGIC, &bytes, &what)?;
        if key != index_key(&IndexId(sum)) {
            return Err(CacheError::Corrupt(format!(
                "{what}: name does not match its checksum"
            )));
        }
        decode_bincode(body).map_err(|e| CacheError::Corrupt(format!("{what}: {e}")))
    }

    /// Make the objects of an index file just written by a [`Packer`] readable.
    pub(crate) fn merge_index(&self, id: IndexId, file: IndexFile) {
        let mut objs = self.objs().write().expect("objects");
        let w = objs.merge(file, &mut |p| self.pack_present(p));
        objs.warnings.extend(w);
        objs.files.push(id);
    }

    /// The storage backend.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// Whether an object is in the index.
    pub fn contains(&self, id: impl Into<ObjectId>) -> bool {
        self.objs()
            .read()
            .expect("objects")
            .index
            .contains_key(&id.into())
    }

    /// Where an object is.
    pub fn location(&self, id: impl Into<ObjectId>) -> Option<Location> {
        self.objs()
            .read()
            .expect("objects")
            .index
            .get(&id.into())
            .copied()
    }

    /// Number of indexed objects.
    pub fn object_count(&self) -> usize {
        self.objs().read().expect("objects").index.len()
    }

    /// Every indexed object.
    pub fn objects(&self) -> Vec<(ObjectId, Location)> {
        self.objs()
            .read()
            .expect("objects")
            .index
            .iter()
            .map(|(i, l)| (*i, *l))
            .collect()
    }

    /// Pack ids in the merged table.
    pub fn packs(&self) -> Vec<PackId> {
        self.objs().read().expect("objects").packs.clone()
    }

    fn pack_id(&self, no: u32) -> PackId {
        self.objs().read().expect("objects").packs[no as usize]
    }

    /// Read and validate a tree.
    ///
    /// # Errors
    /// [`CacheError`] when missing or damaged.
    pub fn read_tree(&self, id: &TreeId) -> Result<Node, CacheError> {
        if let Some(len) = self.location(*id).map(|l| l.len) {
            if len > decode::MAX_TREE_BYTES {
                return Err(CacheError::Corrupt(format!(
                    "tree {id}: {len} bytes, more than a tree may have"
                )));
            }
        }
        Node::decode(id, &self.read_small(*id)?)
    }

    /// Every snapshot file of the cache, oldest first as far as names tell (v2 names carry
    /// the creation time; v1 names sort before them, by id). Reads nothing but the listing.
    ///
    /// A backend that cannot list (the GitHub Actions cache) shows only what a lookup by key
    /// finds: the newest snapshot saved without a key and the newest of all.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, CacheError> {
        let keys = if self.storage.can_list() {
            self.storage.list("snapshots")?
        } else {
            self.storage
                .find_snapshots("", &[String::new()])?
                .unwrap_or_default()
        };
        Ok(snapshot_refs(keys))
    }

    /// Ids of all snapshots, in the order of [`Cache::list_snapshots`].
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, CacheError> {
        Ok(self.list_snapshots()?.into_iter().map(|r| r.id).collect())
    }

    /// Read one snapshot by id, checking its checksum, encoding and consistency.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file; [`CacheError::NoSnapshot`] when absent.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, CacheError> {
        let refs: Vec<SnapshotRef> = self
            .list_snapshots()?
            .into_iter()
            .filter(|r| r.id == *id)
            .collect();
        if refs.is_empty() {
            return Err(CacheError::NoSnapshot(id.hex()));
        }
        self.read_any(&refs)
    }

    /// Read one of `refs`, files of one snapshot (several after a collection killed between
    /// writing a snapshot's new file and deleting the old one): the newest that reads.
    fn read_any(&self, refs: &[SnapshotRef]) -> Result<Snapshot, CacheError> {
        let mut last = None;
        for r in refs.iter().rev() {
            match self.read_snapshot_ref(r) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CacheError::Empty))
    }

    /// The snapshot whose id starts with `prefix` (any case), and its files.
    ///
    /// # Errors
    /// [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`].
    fn refs_of_prefix(&self, prefix: &str) -> Result<(SnapshotId, Vec<SnapshotRef>), CacheError> {
        let p = prefix.to_ascii_lowercase();
        let refs: Vec<SnapshotRef> = self
            .list_snapshots()?
            .into_iter()
            .filter(|r| r.id.hex().starts_with(&p))
            .collect();
        let mut ids: Vec<SnapshotId> = refs.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        match ids.as_slice() {
            [] => Err(CacheError::NoSnapshot(p)),
            [id] => Ok((*id, refs)),
            _ => Err(CacheError::AmbiguousSnapshot(p)),
        }
    }

    /// Every snapshot file, grouped by snapshot (in the order of [`Cache::list_snapshots`]).
    fn snapshot_groups(&self) -> Result<Vec<(SnapshotId, Vec<SnapshotRef>)>, CacheError> {
        let mut groups: Vec<(SnapshotId, Vec<SnapshotRef>)> = Vec::new();
        let mut at: std::collections::HashMap<SnapshotId, usize> = std::collections::HashMap::new();
        for r in self.list_snapshots()? {
            match at.get(&r.id) {
                Some(&i) => groups[i].1.push(r),
                None => {
                    at.insert(r.id, groups.len());
                    groups.push((r.id, vec![r]));
                }
            }
        }
        Ok(groups)
    }

    /// Read the snapshot file `r`, checking its checksum, encoding and consistency.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file.
    pub fn read_snapshot_ref(&self, r: &SnapshotRef) -> Result<Snapshot, CacheError> {
        let what = self.storage.describe(&r.key);
        let corrupt = |e: String| CacheError::Corrupt(format!("{what}: {e}"));
        let bytes = self.storage.get(&r.key, MAX_SNAPSHOT_FILE)?;
        let (sum, version, body) = unseal(SNAPSHOT_MAGIC, &bytes, &what)?;
        let snap = if version == 1 {
            if r.created.is_some() || sum != r.id.0 {
                return Err(corrupt("name does not match its checksum".into()));
            }
            let raw = decode::decompress_bounded(body, decode::snapshot_cap(body.len()))
                .map_err(corrupt)?;
            decode::decode_snapshot(&raw).map_err(corrupt)?
        } else {
            let (head, frame) = format::split_v2(body).map_err(corrupt)?;
            let head = decode::decode_head_v2(head).map_err(corrupt)?;
            if r.file_sum.is_none_or(|s| s[..] != sum[..8]) {
                return Err(corrupt("name does not match its checksum".into()));
            }
            if r.created != Some(head.created.max(0)) {
                return Err(corrupt("name does not match its creation time".into()));
            }
            if head.id(&sum) != r.id {
                return Err(corrupt("name does not match its contents' id".into()));
            }
            let raw = decode::decompress_bounded(frame, decode::snapshot_cap(frame.len()))
                .map_err(corrupt)?;
            decode::decode_manifest_v2(head, &raw).map_err(corrupt)?
        };
        snap.validate().map_err(corrupt)?;
        Ok(snap)
    }

    /// The head of the snapshot file `r`: key, date, flavour, counts, index files. For a v2
    /// file this reads only the head (two ranged reads), UNCHECKED: use it to choose, then
    /// read the chosen snapshot whole with [`Cache::read_snapshot_ref`], which checks it. A
    /// v1 file is read and checked whole.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file.
    pub fn read_head(&self, r: &SnapshotRef) -> Result<SnapshotHead, CacheError> {
        if r.created.is_none() {
            return Ok(format::head_of(&self.read_snapshot_ref(r)?));
        }
        let what = self.storage.describe(&r.key);
        let corrupt = |e: String| CacheError::Corrupt(format!("{what}: {e}"));
        let read = |offset: u64, len: u64| -> Result<Vec<u8>, CacheError> {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut self.storage.get_range(&r.key, offset, len)?, &mut out)
                .map_err(|e| StorageError(what.clone(), e))?;
            Ok(out)
        };
        let start = read(0, format::HEADER_LEN as u64 + 4)?;
        if &start[..8] != SNAPSHOT_MAGIC || start[8..12] != 2u32.to_le_bytes() {
            return Err(corrupt("not a v2 snapshot file".into()));
        }
        let len = u32::from_le_bytes(start[16..20].try_into().expect("4 bytes"));
        if len > format::MAX_HEAD_LEN {
            return Err(corrupt(format!("head of {len} bytes")));
        }
        let head = read(format::HEADER_LEN as u64 + 4, u64::from(len))?;
        decode::decode_head_v2(&head).map_err(corrupt)
    }

    /// Read only the index files `ids` (those a v2 snapshot names) from now on, instead of
    /// every index file of the cache: a restore then never lists nor downloads the others.
    /// Missing or damaged ones are warnings; their objects count as absent.
    pub fn use_indexes(&self, ids: &[IndexId]) {
        let objects = self.objects_of(ids);
        match self.objects.get() {
            Some(o) => *o.write().expect("objects") = objects,
            None => {
                let _ = self.objects.set(RwLock::new(objects));
            }
        }
    }

    /// The objects of the index files `ids`; missing or damaged ones are warnings.
    fn objects_of(&self, ids: &[IndexId]) -> Objects {
        let mut objects = Objects::default();
        for id in ids {
            let key = index_key(id);
            match self.read_index_file(&key) {
                Ok(file) => {
                    let w = objects.merge(file, &mut |p| self.pack_present(p));
                    objects.warnings.extend(w);
                    objects.files.push(*id);
                }
                Err(e) => objects.warnings.push(format!("index {key}: {e}")),
            }
        }
        objects
    }

    /// The index files whose objects are readable now.
    pub fn index_files(&self) -> Vec<IndexId> {
        self.objs().read().expect("objects").files.clone()
    }

    /// All readable snapshots, oldest first; unreadable ones are returned as errors in place.
    /// Holds every snapshot in memory: for listings of small caches; choosing one is
    /// [`Cache::find_snapshot`]'s work.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when listing fails.
    #[allow(clippy::type_complexity)]
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Result<Snapshot, CacheError>)>, CacheError> {
        let mut all: Vec<_> = self
            .snapshot_ids()?
            .into_iter()
            .map(|id| (id, self.read_snapshot(&id)))
            .collect();
        all.sort_by_key(|(id, s)| (s.as_ref().map(|s| s.created).unwrap_or(i64::MIN), *id));
        Ok(all)
    }

    /// Find a snapshot by id prefix, or the newest readable one when `prefix` is `None`.
    ///
    /// "Newest" is the largest `created` not beyond now plus [`FUTURE_MARGIN_NANOS`]: a
    /// snapshot dated in the future (a wrong clock, or a writer trying to pin "newest") is
    /// passed over, with a warning in [`Cache::loaded_warnings`]. Snapshots are read one at a
    /// time and only the best so far is kept.
    ///
    /// # Errors
    /// [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`], [`CacheError::Empty`],
    /// or the error reading the chosen snapshot.
    pub fn find_snapshot(
        &self,
        prefix: Option<&str>,
    ) -> Result<(SnapshotId, Snapshot), CacheError> {
        if let Some(p) = prefix {
            let (id, refs) = self.refs_of_prefix(p)?;
            return Ok((id, self.read_any(&refs)?));
        }
        let limit = crate::clock::now_nanos().saturating_add(FUTURE_MARGIN_NANOS);
        let mut best: Option<(SnapshotId, Snapshot)> = None;
        let mut last_err = None;
        for r in self.list_snapshots()? {
            let id = r.id;
            match self.read_snapshot_ref(&r) {
                Ok(s) if s.created > limit => self.warn(format!(
                    "snapshot {} is dated in the future ({} ns); not taken as the newest",
                    id.short(),
                    s.created
                )),
                Ok(s) => {
                    if best
                        .as_ref()
                        .is_none_or(|(bid, b)| (s.created, id) > (b.created, *bid))
                    {
                        best = Some((id, s));
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        best.ok_or(last_err.unwrap_or(CacheError::Empty))
    }

    /// Choose a snapshot as actions/cache chooses an entry: the newest whose key equals `key`;
    /// else, for each of `restore_keys` in order, the newest whose key starts with it (the
    /// first prefix that matches any wins). Only heads are read (newest first, stopping at the
    /// first match); the chosen snapshot is then read whole and checked. Snapshots dated
    /// beyond now plus [`FUTURE_MARGIN_NANOS`] are passed over, as are those `accept`
    /// refuses (given the file id and head: a signature check), each with the reason.
    ///
    /// # Errors
    /// [`CacheError::NoSnapshot`] when nothing matches (with what was passed over), or the
    /// error reading the chosen snapshot.
    pub fn find_by_key(
        &self,
        key: &str,
        restore_keys: &[String],
        accept: &dyn Fn(&SnapshotId, &SnapshotHead) -> Result<(), String>,
    ) -> Result<KeyMatch, CacheError> {
        let limit = crate::clock::now_nanos().saturating_add(FUTURE_MARGIN_NANOS);
        // A backend that cannot list looks the keys up itself (the newest per key and
        // prefix); the others list every snapshot and read heads.
        let mut refs = match self.storage.find_snapshots(key, restore_keys)? {
            Some(keys) => snapshot_refs(keys),
            None => self.list_snapshots()?,
        };
        refs.reverse(); // newest first, as far as names tell
        let mut heads = Vec::new();
        let mut passed_over = Vec::new();
        for r in refs {
            match self.read_head(&r) {
                Ok(h) if h.created > limit => passed_over.push(format!(
                    "snapshot {}: dated in the future ({} ns)",
                    r.id.short(),
                    h.created
                )),
                Ok(h) => heads.push((r, h)),
                Err(e) => passed_over.push(format!("snapshot {}: {e}", r.id.short())),
            }
        }
        // v1 names do not sort by date: order by the heads' dates, newest first.
        heads.sort_by_key(|(r, h)| std::cmp::Reverse((h.created, r.id)));
        let wanted =
            std::iter::once((key, true)).chain(restore_keys.iter().map(|k| (k.as_str(), false)));
        for (want, exact) in wanted {
            for (r, h) in &heads {
                let hit = if exact {
                    h.key == want
                } else {
                    h.key.starts_with(want)
                };
                if !hit {
                    continue;
                }
                if let Err(why) = accept(&r.id, h) {
                    passed_over.push(format!("snapshot {} ({}): {why}", r.id.short(), h.key));
                    continue;
                }
                match self.read_snapshot_ref(r) {
                    Ok(snapshot) if snapshot.key == h.key && snapshot.created == h.created => {
                        return Ok(KeyMatch {
                            id: r.id,
                            snapshot,
                            matched_key: h.key.clone(),
                            exact,
                            passed_over,
                        });
                    }
                    Ok(_) => passed_over.push(format!(
                        "snapshot {}: its head differs from its checked contents",
                        r.id.short()
                    )),
                    Err(e) => passed_over.push(format!("snapshot {}: {e}", r.id.short())),
                }
            }
        }
        let mut what = format!("key `{key}`");
        for k in restore_keys {
            what.push_str(&format!(", prefix `{k}`"));
        }
        if !passed_over.is_empty() {
            what.push_str(&format!(" (passed over: {})", passed_over.join("; ")));
        }
        Err(CacheError::NoSnapshot(what))
    }

    fn warn(&self, w: String) {
        self.extra_warnings.lock().expect("warnings").push(w);
    }

    /// Write a snapshot (after every object it names is durable), create-only, findable by
    /// its key ([`Storage::put_snapshot`]). Returns its id.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId, CacheError> {
        let (id, key, bytes) = format::encode_snapshot_v2(snap, 3);
        self.storage.put_snapshot(&key, &snap.key, &bytes)?;
        Ok(id)
    }

    /// [`Cache::write_snapshot`], returning the storage key written.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub(crate) fn write_snapshot_file(&self, snap: &Snapshot) -> Result<String, CacheError> {
        let (_, key, bytes) = format::encode_snapshot_v2(snap, 3);
        self.storage.put_snapshot(&key, &snap.key, &bytes)?;
        Ok(key)
    }
}

/// Snapshot files by name, oldest first as far as names tell; other names are ignored.
fn snapshot_refs(keys: Vec<String>) -> Vec<SnapshotRef> {
    let mut out: Vec<SnapshotRef> = keys
        .into_iter()
        .filter_map(|key| {
            let n = format::parse_snapshot_key(&key)?;
            Some(SnapshotRef {
                id: n.id,
                created: n.created,
                file_sum: n.file_sum,
                key,
            })
        })
        .collect();
    out.sort_by_key(|r| (r.created, r.id));
    out
}

/// Objects holding only a warning.
fn warned(w: String) -> Objects {
    let mut o = Objects::default();
    o.warnings.push(w);
    o
}

/// The snapshot [`Cache::find_by_key`] chose, and why.
#[derive(Debug, Clone)]
pub struct KeyMatch {
    /// Its id.
    pub id: SnapshotId,
    /// The snapshot, read whole and checked.
    pub snapshot: Snapshot,
    /// Its key.
    pub matched_key: String,
    /// True when the key matched exactly, false when through a restore-key prefix.
    pub exact: bool,
    /// Snapshots that matched but were not used, each with the reason.
    pub passed_over: Vec<String>,
}

/// A snapshot whose signature passed the check, as [`Cache::find_signed_snapshot`] chose it.
#[derive(Debug, Clone)]
pub struct SignedSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its contents.
    pub snapshot: Snapshot,
    /// The name of the trusted key whose signature verified.
    pub signed_by: String,
    /// Snapshots refused while choosing the newest (unsigned, not trusted, bad signature,
    /// unreadable), one message each naming the snapshot.
    pub passed_over: Vec<String>,
}

/// Signed snapshots (see [`crate::trust`]): detached signature files `snapshots/<id>.sig`
/// next to the snapshots they sign. They are not content-addressed: adding a signature
/// replaces the file with [`Storage::put`]. With trusted keys, a snapshot's signature is
/// checked before anything of the snapshot itself is read.
impl Cache {
    /// The signature file of snapshot `id`, or `None` when it has none.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when it cannot be read or is larger than
    /// [`crate::trust::MAX_SIG_FILE`].
    pub fn read_signatures(&self, id: &SnapshotId) -> Result<Option<Vec<u8>>, CacheError> {
        let key = crate::trust::signature_key(&id.0);
        match self.storage.get(&key, crate::trust::MAX_SIG_FILE as u64) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Add `sig` to the signature file of snapshot `id` (a signature by the same key name is
    /// replaced, others are kept). Two writers signing the same snapshot at once may lose one
    /// signature (the last write wins); the snapshot itself is never touched.
    ///
    /// # Errors
    /// [`crate::Error::Cache`] when the file cannot be read or written,
    /// [`crate::Error::Trust`] when the existing file is malformed (delete it to start afresh)
    /// or full.
    pub fn add_signature(
        &self,
        id: &SnapshotId,
        sig: crate::trust::SignatureLine,
    ) -> Result<(), crate::Error> {
        let existing = self.read_signatures(id)?;
        let bytes = crate::trust::merge(existing.as_deref(), sig).map_err(|e| match e {
            crate::trust::TrustError::BadSignatureFile { reason, .. } => {
                crate::trust::TrustError::BadSignatureFile {
                    id: Some(id.0),
                    reason,
                }
            }
            e => e,
        })?;
        self.storage
            .put(&crate::trust::signature_key(&id.0), &bytes)
            .map_err(CacheError::from)?;
        Ok(())
    }

    /// Check the signature of snapshot `id` against `keys`, reading only its signature file.
    /// Returns the name of the key whose signature verified.
    ///
    /// # Errors
    /// [`crate::Error::Trust`] (unsigned, signed only by untrusted keys, a signature that does
    /// not verify, a malformed file), or [`crate::Error::Cache`] when the signature file
    /// cannot be read.
    pub fn check_signature(
        &self,
        id: &SnapshotId,
        keys: &crate::trust::TrustedKeys,
    ) -> Result<String, crate::Error> {
        let sigs = self.read_signatures(id)?;
        Ok(keys.check_snapshot(&id.0, sigs.as_deref())?)
    }

    /// Like [`Cache::find_snapshot`], taking only snapshots signed by one of `keys` (which
    /// must not be empty): each snapshot's signature is checked before the snapshot is read.
    /// The newest is the newest of those that pass; the others that did not pass are listed
    /// in [`SignedSnapshot::passed_over`].
    ///
    /// # Errors
    /// For a prefix: [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`], the
    /// signature check's error, or the error reading the snapshot. For the newest:
    /// [`CacheError::Empty`] when there is no snapshot, [`crate::Error::NoTrustedSnapshot`]
    /// when none passes.
    pub fn find_signed_snapshot(
        &self,
        prefix: Option<&str>,
        keys: &crate::trust::TrustedKeys,
    ) -> Result<SignedSnapshot, crate::Error> {
        assert!(!keys.is_empty(), "find_signed_snapshot without keys");
        if let Some(p) = prefix {
            let (id, refs) = self.refs_of_prefix(p)?;
            let signed_by = self.check_signature(&id, keys)?;
            let snapshot = self.read_any(&refs)?;
            return Ok(SignedSnapshot {
                id,
                snapshot,
                signed_by,
                passed_over: Vec::new(),
            });
        }
        let limit = crate::clock::now_nanos().saturating_add(FUTURE_MARGIN_NANOS);
        // One listing; each snapshot's signature checked, then one of its files read.
        let groups = self.snapshot_groups()?;
        if groups.is_empty() {
            return Err(CacheError::Empty.into());
        }
        let mut best: Option<SignedSnapshot> = None;
        let mut passed_over = Vec::new();
        for (id, refs) in groups {
            let checked = self
                .check_signature(&id, keys)
                .and_then(|signer| Ok((signer, self.read_any(&refs)?)));
            match checked {
                Err(e) => passed_over.push(match e {
                    // Trust errors name the snapshot; others name its file.
                    crate::Error::Trust(_) => crate::error::Chain(&e).to_string(),
                    e => format!("snapshot {}: {}", id.short(), crate::error::Chain(&e)),
                }),
                Ok((_, s)) if s.created > limit => passed_over.push(format!(
                    "snapshot {} is dated in the future ({} ns); not taken as the newest",
                    id.short(),
                    s.created
                )),
                Ok((signed_by, snapshot)) => {
                    let newer = best
                        .as_ref()
                        .is_none_or(|b| (snapshot.created, id) > (b.snapshot.created, b.id));
                    if newer {
                        best = Some(SignedSnapshot {
                            id,
                            snapshot,
                            signed_by,
                            passed_over: Vec::new(),
                        });
                    }
                }
            }
        }
        match best {
            Some(mut b) => {
                b.passed_over = passed_over;
                Ok(b)
            }
            None => Err(crate::Error::NoTrustedSnapshot(passed_over)),
        }
    }
}

/// How far in the future a snapshot's `created` may be and still count as the newest.
pub const FUTURE_MARGIN_NANOS: i64 = 24 * 3600 * 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::{self, Read};

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        // Blobs of every size class go through the packer and come back byte for byte.
        #[test]
        fn blobs_round_trip_through_packs(blobs in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..2000),
                (1usize..4, any::<u8>()).prop_map(|(k, b)| vec![b; k * 200_000]),
            ],
            1..12,
        )) {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::open_dir(dir.path()).unwrap();
            let packer = Packer::new(&cache, 3);
            for b in &blobs {
                let id = BlobId::of(b);
                if packer.claim(id) {
                    packer.add(ObjectKind::Blob, id, b).unwrap();
                }
            }
            packer.finish().unwrap();
            let reopened = Cache::open_dir(dir.path()).unwrap();
            for b in &blobs {
                prop_assert_eq!(&reopened.read_small(BlobId::of(b)).unwrap(), b);
            }
            prop_assert!(reopened.warnings().is_empty());
        }
    }

    #[test]
    fn a_path_gets_frames_of_its_own_and_its_tail_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let packer = Packer::new(&cache, 1);
        // Two paths walked at once, objects interleaved: 300 and 10 objects of 10 KiB.
        let blob = |p: u8, i: u32| {
            let mut v = vec![p; 10_000];
            v[..4].copy_from_slice(&i.to_le_bytes());
            v
        };
        let (mut a, mut b) = (PathFrames::default(), PathFrames::default());
        let mut ids = (Vec::new(), Vec::new());
        for i in 0..300 {
            let x = blob(1, i);
            assert!(packer.claim(BlobId::of(&x)));
            packer
                .add_to(&mut a, ObjectKind::Blob, BlobId::of(&x), &x)
                .unwrap();
            ids.0.push(BlobId::of(&x));
            if i < 10 {
                let y = blob(2, i);
                assert!(packer.claim(BlobId::of(&y)));
                packer
                    .add_to(&mut b, ObjectKind::Blob, BlobId::of(&y), &y)
                    .unwrap();
                ids.1.push(BlobId::of(&y));
            }
        }
        packer.finish_path(b).unwrap();
        packer.finish_path(a).unwrap();
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let frame = |id: &BlobId| {
            let l = cache.location(*id).unwrap();
            (l.pack, l.frame_offset)
        };
        let a_frames: HashSet<_> = ids.0.iter().map(frame).collect();
        let b_frames: HashSet<_> = ids.1.iter().map(frame).collect();
        // 3 MB of A: two full frames of its own, its tail shares the frame holding all of B.
        assert_eq!(a_frames.len(), 3, "{a_frames:?}");
        assert_eq!(b_frames.len(), 1);
        assert_eq!(a_frames.intersection(&b_frames).count(), 1);
        for id in ids.0.iter().chain(&ids.1) {
            assert_eq!(BlobId::of(&cache.read_small(*id).unwrap()), *id);
        }
    }

    /// A local directory whose new objects cannot be written (as on a full disk).
    struct Unwritable(LocalDir);

    struct Full;

    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("No space left on device"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl ObjectWriter for Full {
        fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError> {
            Err(StorageError(
                key.into(),
                io::Error::other("nothing written"),
            ))
        }
    }

    impl Storage for Unwritable {
        fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
            self.0.get(key, max)
        }
        fn get_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
            self.0.get_range(key, offset, len)
        }
        fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
            self.0.put_if_absent(key, data)
        }
        fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
            Ok(Box::new(Full))
        }
        fn sync(&self) -> Result<(), StorageError> {
            self.0.sync()
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.0.list(prefix)
        }
        fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
            self.0.size(key)
        }
        fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.0.delete(key)
        }
        fn describe(&self, key: &str) -> String {
            self.0.describe(key)
        }
    }

    #[test]
    fn a_failed_pack_write_fails_the_save_and_names_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Box::new(Unwritable(LocalDir::open(dir.path()).unwrap())));
        let packer = Packer::new(&cache, 1);
        let big = vec![7u8; 300_000];
        let id = BlobId::of(&big);
        assert!(packer.claim(id));
        assert!(packer.add(ObjectKind::Blob, id, &big).is_err());
        let other = vec![8u8; 300_000];
        let err = packer
            .add(ObjectKind::Blob, BlobId::of(&other), &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("an earlier write failed"), "{err}");
        assert!(packer.finish().is_err());
        let reopened = Cache::open_dir(dir.path()).unwrap();
        assert_eq!(reopened.object_count(), 0);
        assert!(reopened.storage().list("index").unwrap().is_empty());
    }

    #[test]
    fn a_blob_that_changed_while_streamed_is_not_packed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let packer = Packer::new(&cache, 1);
        let first = vec![1u8; 300_000];
        let now = vec![2u8; 300_000];
        let id = BlobId::of(&first);
        assert!(packer.claim(id));
        let added = packer
            .add_reader(ObjectKind::Blob, id, now.len() as u64, &mut &now[..])
            .unwrap();
        assert!(!added);
        packer.unclaim(id);
        assert!(packer.claim(id));
        assert!(packer
            .add_reader(ObjectKind::Blob, id, first.len() as u64, &mut &first[..])
            .unwrap());
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        assert_eq!(cache.read_small(id).unwrap(), first);
        assert_eq!(cache.object_count(), 1);
    }

    #[test]
    fn a_failing_sink_is_reported_and_later_streams_are_whole() {
        // A large blob abandoned mid-frame (the sink failed, as on a full disk) reports the
        // sink's error, and nothing of it leaks into the blobs streamed next on this thread.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let packer = Packer::new(&cache, 3);
        let blob = |seed: u32| -> Vec<u8> {
            (0..1_500_000u32)
                .map(|i| (i.wrapping_mul(seed) >> 7) as u8)
                .collect()
        };
        let (a, b) = (blob(2_654_435_761), blob(40_503));
        for x in [&a, &b] {
            assert!(packer.claim(BlobId::of(x)));
            packer.add(ObjectKind::Blob, BlobId::of(x), x).unwrap();
        }
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let fail = &mut |_: &[u8]| Err(io::Error::other("disk full"));
        let err = cache.stream(&BlobId::of(&a), fail).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        for checked in [true, false] {
            for x in [&b, &a] {
                let mut got = Vec::new();
                let sink = &mut |c: &[u8]| {
                    got.extend_from_slice(c);
                    Ok(())
                };
                if checked {
                    cache.stream(&BlobId::of(x), sink).unwrap();
                } else {
                    cache.stream_unchecked(&BlobId::of(x), sink).unwrap();
                }
                assert!(got == *x);
            }
        }
    }

    #[test]
    fn snapshot_round_trip_and_validation() {
        use crate::store::path::StorePath;
        use crate::store::path_info::{DerivationOutput, NarHash, PathInfo};
        let p = |n: &str| {
            StorePath::from_base_name(&format!("0123456789abcdfghijklmnpqrsvwxy{n}-{n}")).unwrap()
        };
        let info = |n: &str, refs: Vec<StorePath>| PathInfo {
            path: p(n),
            nar_hash: NarHash([7; 32]),
            nar_size: 120,
            registration_time: 1_795_818_122,
            deriver: Some("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv".into()),
            references: refs,
            ultimate: Some(1),
            sigs: Some("cache:abc".into()),
            ca: None,
        };
        let snap = Snapshot {
            version: 2,
            key: "nix-x86_64-linux-abc".into(),
            indexes: vec![IndexId([9; 32])],
            parent: Some(SnapshotId([8; 32])),
            flavor: crate::store::layout::Flavor::Nix,
            store_dir: "/nix/store".into(),
            created: 1,
            tool: "t".into(),
            roots: vec![p("b")],
            paths: vec![
                SnapshotPath {
                    info: info("a", vec![]),
                    tree: TreeId([1; 32]),
                },
                SnapshotPath {
                    info: info("b", vec![p("a"), p("b")]),
                    tree: TreeId([2; 32]),
                },
            ],
            derivation_outputs: vec![DerivationOutput {
                drv: p("b"),
                id: "out".into(),
                path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x".into(),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let id = cache.write_snapshot(&snap).unwrap();
        assert_eq!(cache.read_snapshot(&id).unwrap(), snap);
        assert_eq!(cache.find_snapshot(Some(&id.hex()[..6])).unwrap().1, snap);
        let mut dangling = snap.clone();
        dangling.paths.remove(0);
        assert!(dangling
            .validate()
            .unwrap_err()
            .contains("not in the snapshot"));
        let mut twice = snap.clone();
        twice.paths.push(twice.paths[0].clone());
        assert!(twice.validate().unwrap_err().contains("twice"));
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use crate::store::layout::Flavor;

    fn snap(key: &str, created: i64) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            key: key.into(),
            flavor: Flavor::Guix,
            store_dir: "/gnu/store".into(),
            created,
            tool: "t".into(),
            indexes: Vec::new(),
            parent: None,
            roots: Vec::new(),
            paths: Vec::new(),
            derivation_outputs: Vec::new(),
        }
    }

    #[test]
    fn keys_resolve_as_actions_cache_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let now = crate::clock::now_nanos();
        for (k, t) in [
            ("guix-linux-aaa", now - 50),
            ("guix-linux-bbb", now - 40),
            ("guix-linux-aaa", now - 30),
            ("guix-mac-ccc", now - 20),
            ("guix-linux-zzz", now + 2 * FUTURE_MARGIN_NANOS),
        ] {
            cache.write_snapshot(&snap(k, t)).unwrap();
        }
        let any = |_: &SnapshotId, _: &SnapshotHead| Ok(());
        let m = cache.find_by_key("guix-linux-aaa", &[], &any).unwrap();
        assert!(m.exact);
        assert_eq!(m.snapshot.created, now - 30, "the newest of that key");
        let keys = ["guix-linux-".to_string(), "guix-".to_string()];
        let m = cache.find_by_key("guix-linux-new", &keys, &any).unwrap();
        assert!(!m.exact);
        assert_eq!(m.matched_key, "guix-linux-aaa");
        assert!(m.passed_over.iter().any(|p| p.contains("future")), "{m:?}");
        // The first prefix that matches wins, even when a later one matches something newer.
        let m = cache
            .find_by_key("x", &["guix-linux-b".into(), "guix-".into()], &any)
            .unwrap();
        assert_eq!(m.matched_key, "guix-linux-bbb");
        // Refused snapshots are passed over with the reason.
        let only_old = |_: &SnapshotId, h: &SnapshotHead| {
            (h.created < now - 35)
                .then_some(())
                .ok_or_else(|| "not signed".to_string())
        };
        let m = cache.find_by_key("guix-linux-aaa", &[], &only_old).unwrap();
        assert_eq!(m.snapshot.created, now - 50);
        assert!(m.passed_over.iter().any(|p| p.contains("not signed")));
        let err = cache
            .find_by_key("nope", &["mac".into()], &any)
            .unwrap_err();
        assert!(
            err.to_string().contains("key `nope`, prefix `mac`"),
            "{err}"
        );
    }

    #[test]
    fn a_head_read_alone_matches_the_checked_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let mut s = snap("k", 7);
        s.indexes = vec![IndexId([4; 32])];
        let id = cache.write_snapshot(&s).unwrap();
        let r = cache.list_snapshots().unwrap().pop().unwrap();
        assert_eq!(r.id, id);
        assert_eq!(r.created, Some(7));
        let head = cache.read_head(&r).unwrap();
        assert_eq!(head, format::head_of(&cache.read_snapshot_ref(&r).unwrap()));
        assert_eq!(head.indexes, vec![IndexId([4; 32])]);
        // A snapshot renamed to another date is refused when read whole.
        let moved = dir.path().join(r.key.replacen(
            &format!("{:016x}", 7),
            &format!("{:016x}", 8),
            1,
        ));
        fs_rename(&dir.path().join(&r.key), &moved);
        let r = cache.list_snapshots().unwrap().pop().unwrap();
        let err = cache.read_snapshot_ref(&r).unwrap_err().to_string();
        assert!(err.contains("creation time"), "{err}");
    }

    fn fs_rename(a: &Path, b: &Path) {
        std::fs::rename(a, b).unwrap();
    }
}
