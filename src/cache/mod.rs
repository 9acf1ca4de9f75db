//! The content-addressed cache: blobs (file contents, keyed by BLAKE3), trees (one per store
//! path), packs (zstd frames of objects, tens of MiB each), index files (object → pack range)
//! and snapshots (the paths of one save). The byte layout is specified in docs/FORMAT.md.
//!
//! Invariants: every object read is checked against its id before it is used (a solo blob
//! streams, so its check comes at the end and callers discard what they wrote on error);
//! objects are durable (packs and index fsynced and renamed into place) before a snapshot
//! naming them is written; nothing is ever modified in place.

pub mod copy;
mod decode;
pub mod format;
mod frames;
pub mod gc;
pub mod id;
pub mod index;
pub mod location;
mod lookup;
mod manifest;
mod packer;
mod prefetch;
pub mod rewrite;
mod signatures;
pub mod snapshot;
pub mod storage;
pub(crate) mod successive;
pub mod tree;
mod tree_v2;

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::{Mutex, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

pub use decode::MAX_TREE_NODES;
#[cfg(test)]
use format::decode_bincode;
pub use format::{index_key, pack_key, snapshot_key, SnapshotHead, FORMAT_VERSION, PACK_MAGIC};
use format::{unseal, INDEX_MAGIC, MAX_INDEX_FILE};
use frames::FrameCache;
pub use id::{BlobId, IndexId, ObjectId, PackId, SnapshotId, TreeId};
use index::Objects;
pub use index::{IndexFile, Location};
pub use manifest::{recycle_paths, release_spare_paths};
pub use packer::{PackStats, Packer, PathFrames};
pub use rewrite::Rewrite;
pub use snapshot::{Snapshot, SnapshotPath, SnapshotRef};
pub use storage::{LocalDir, ObjectWriter, Storage, StorageError};
pub use tree::{Entry, File, Node};

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
/// The most a frame of small objects may take compressed (zstd's bound for its largest
/// content, with room to spare): a larger claim is refused before anything is allocated.
pub const MAX_BATCH_COMPRESSED: u64 = MAX_BATCH_FRAME + (64 << 10);
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

impl ObjectKind {
    /// `blob` or `tree`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Tree => "tree",
        }
    }
}

/// An opened cache. The index is loaded on first use, so commands that need only snapshots
/// (a no-op restore, `ls`) never read it.
pub struct Cache {
    storage: Box<dyn Storage>,
    objects: OnceLock<RwLock<Objects>>,
    /// The index files [`Cache::use_indexes`] chose, loaded on first use of the index.
    chosen_indexes: Mutex<Option<Vec<IndexId>>>,
    /// Index files written by this process ([`Cache::index_written`]), read back and merged
    /// on the next use of the index.
    pending_indexes: Mutex<Vec<IndexId>>,
    has_pending: std::sync::atomic::AtomicBool,
    frames: Mutex<FrameCache>,
    /// Coalesced reads planned by a restore (remote caches).
    prefetch: prefetch::Prefetch,
    /// Warnings found outside the index (snapshots passed over).
    extra_warnings: Mutex<Vec<String>>,
    /// Batch frames decompressed (frame cache misses): a work counter for tests and benches.
    frames_decompressed: std::sync::atomic::AtomicU64,
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
            chosen_indexes: Mutex::new(None),
            pending_indexes: Mutex::default(),
            has_pending: Default::default(),
            frames: Mutex::new(FrameCache::new()),
            prefetch: prefetch::Prefetch::default(),
            extra_warnings: Mutex::default(),
            frames_decompressed: Default::default(),
        }
    }

    /// How many batch frames were decompressed so far (misses of the frame cache): a work
    /// counter, so a test can tell that reading N paths costs O(N) decompressions.
    pub fn frames_decompressed(&self) -> u64 {
        self.frames_decompressed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn objs(&self) -> &RwLock<Objects> {
        let objects = self.objects.get_or_init(|| {
            let chosen = self.chosen_indexes.lock().expect("chosen indexes").take();
            RwLock::new(match chosen {
                Some(ids) => self.objects_of(&ids),
                None => self.load_index(&HashSet::new()),
            })
        });
        if self.has_pending.load(std::sync::atomic::Ordering::Acquire) {
            self.merge_pending(objects);
        }
        objects
    }

    /// Merge the index files [`Cache::index_written`] recorded and that are not merged yet.
    fn merge_pending(&self, objects: &RwLock<Objects>) {
        let mut pending = self.pending_indexes.lock().expect("pending indexes");
        // Cleared under the lock `index_written` takes: none recorded meanwhile is lost.
        self.has_pending
            .store(false, std::sync::atomic::Ordering::Release);
        let mut objs = objects.write().expect("objects");
        let files: Vec<(IndexId, String)> = pending
            .drain(..)
            .filter(|id| !objs.files.contains(id))
            .map(|id| (id, index_key(&id)))
            .collect();
        self.add_index_files(&mut objs, &files, "index");
    }

    /// An index file this process has just written: its objects are found from the next use
    /// of the index on, read back from the cache then. Until then the caller's copy of it is
    /// not kept, so a save holds no second index while it writes its snapshot.
    pub(crate) fn index_written(&self, id: IndexId) {
        self.pending_indexes
            .lock()
            .expect("pending indexes")
            .push(id);
        self.has_pending
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Merge every index file. Damaged index files are skipped with a warning (their objects
    /// count as absent), as are entries whose pack is missing. On a backend that cannot list,
    /// the index files the newest snapshot names (those [`Cache::list_snapshots`] finds).
    fn load_index(&self, last: &HashSet<String>) -> Objects {
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
        let keys = self.storage.list("index").unwrap_or_else(|e| {
            objects
                .warnings
                .push(format!("cannot list index files: {e}"));
            Vec::new()
        });
        let mut files = Vec::with_capacity(keys.len());
        for key in keys {
            match format::parse_index_key(&key) {
                Some(id) => files.push((id, key)),
                None => objects
                    .warnings
                    .push(format!("skipping index {key}: not an index name")),
            }
        }
        // Stable: in listing order, those in `last` after the others.
        files.sort_by_key(|(_, key)| last.contains(key));
        self.add_index_files(&mut objects, &files, "skipping index");
        objects
    }

    /// Read the index files `files` (id, key) and merge them into `objects`, in order, with
    /// the room for them reserved first (local caches); one that cannot be read is a warning
    /// `"{what} {key}: {error}"`, its objects absent.
    fn add_index_files(&self, objects: &mut Objects, files: &[(IndexId, String)], what: &str) {
        if !self.storage.remote() {
            let keys = files.iter().map(|(_, k)| k);
            objects.reserve(self.entries_bound(keys));
        }
        for (id, key) in files {
            let added = self.read_index_bytes(key).and_then(|(bytes, body)| {
                objects
                    .add_encoded(*id, &bytes[body], &mut |p| self.pack_present(p))
                    .map_err(|e| {
                        CacheError::Corrupt(format!("{}: {e}", self.storage.describe(key)))
                    })
            });
            if let Err(e) = added {
                objects.warnings.push(format!("{what} {key}: {e}"));
            }
        }
    }

    /// An upper bound of the entries of the index files `keys` hold, from their sizes (an
    /// entry takes at least [`index::MIN_ENTRY_BYTES`]; a file larger than
    /// [`MAX_INDEX_FILE`] is refused when read, and counts as that much); files whose size
    /// the backend cannot tell count for nothing (the table grows for them). Local caches
    /// only: a remote one would pay a request per file.
    fn entries_bound<'k>(&self, keys: impl Iterator<Item = &'k String>) -> usize {
        keys.filter_map(|k| self.storage.size(k).ok().flatten())
            .map(|n| (n.min(MAX_INDEX_FILE) / index::MIN_ENTRY_BYTES) as usize)
            .fold(0, usize::saturating_add)
    }

    /// False only when the backend says the pack does not exist: a pack it could not tell
    /// about (a timeout, a server that stopped answering) stays, so reading from it fails
    /// later with that error instead of calling its objects absent.
    fn pack_present(&self, p: &PackId) -> bool {
        !matches!(self.storage.size(&pack_key(p)), Ok(None))
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

    #[cfg(test)]
    fn read_index_file(&self, key: &str) -> Result<IndexFile, CacheError> {
        let (bytes, body) = self.read_index_bytes(key)?;
        decode_bincode(&bytes[body])
            .map_err(|e| CacheError::Corrupt(format!("{}: {e}", self.storage.describe(key))))
    }

    /// An index file's bytes, checked against its name, and where its body is in them.
    fn read_index_bytes(&self, key: &str) -> Result<(Vec<u8>, std::ops::Range<usize>), CacheError> {
        let bytes = self.storage.get(key, MAX_INDEX_FILE)?;
        let what = self.storage.describe(key);
        let (sum, _version, body) = unseal(INDEX_MAGIC, &bytes, &what)?;
        if key != index_key(&IndexId(sum)) {
            return Err(CacheError::Corrupt(format!(
                "{what}: name does not match its checksum"
            )));
        }
        let start = body.as_ptr() as usize - bytes.as_ptr() as usize;
        let range = start..start + body.len();
        Ok((bytes, range))
    }

    /// The packs the index file `id` names (its entries are not decoded); `None` when it is
    /// absent.
    ///
    /// # Errors
    /// [`CacheError`] when it cannot be read, or is damaged.
    pub(crate) fn index_packs(&self, id: &IndexId) -> Result<Option<Vec<PackId>>, CacheError> {
        let key = index_key(id);
        let (bytes, body) = match self.read_index_bytes(&key) {
            Ok(b) => b,
            Err(CacheError::Storage(e)) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        index::decode_packs(&bytes[body])
            .map(|(packs, _)| Some(packs))
            .map_err(|e| CacheError::Corrupt(format!("{}: {e}", self.storage.describe(&key))))
    }

    /// The packs the index file `id` names, read from the start of the file only (ranged
    /// reads of 64 KiB, more only for a table that does not fit), NOT checked against the
    /// file's checksum: for a save that only asks which packs its base needs, where an index
    /// file of 100,000 paths' objects (tens of MB) would otherwise be downloaded whole. A
    /// wrong table makes the save read paths again, or miss a lost pack as before the check
    /// existed; nothing read through it is trusted. `None` when the file is absent.
    ///
    /// # Errors
    /// [`CacheError`] when it cannot be read, or its start is no index file's.
    pub(crate) fn index_pack_table(&self, id: &IndexId) -> Result<Option<Vec<PackId>>, CacheError> {
        let key = index_key(id);
        let what = self.storage.describe(&key);
        let Some(size) = self.storage.size(&key)? else {
            return Ok(None);
        };
        let mut len = (64u64 << 10).min(size);
        loop {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut self.storage.get_range(&key, 0, len)?, &mut bytes)
                .map_err(|e| CacheError::Storage(StorageError(what.clone(), e)))?;
            if bytes.len() < format::HEADER_LEN || &bytes[..8] != INDEX_MAGIC {
                return Err(CacheError::Corrupt(format!(
                    "{what}: not an index file (bad magic or truncated)"
                )));
            }
            match index::decode_packs(&bytes[format::HEADER_LEN..]) {
                Ok((packs, _)) => return Ok(Some(packs)),
                Err(_) if len < size => len = len.saturating_mul(4).min(size),
                Err(e) => return Err(CacheError::Corrupt(format!("{what}: {e}"))),
            }
        }
    }

    /// The positions (see [`Cache::locate`]) of the objects the index file `id` locates in
    /// a pack that exists: what a restore of a snapshot naming only some index files (see
    /// [`Cache::use_indexes`]) finds through this one.
    ///
    /// # Errors
    /// [`CacheError`] when it cannot be read, or is damaged.
    pub fn index_file_positions(&self, id: &IndexId) -> Result<Vec<u32>, CacheError> {
        let key = index_key(id);
        let (bytes, body) = self.read_index_bytes(&key)?;
        self.objs()
            .read()
            .expect("objects")
            .positions_in(&bytes[body])
            .map_err(|e| CacheError::Corrupt(format!("{}: {e}", self.storage.describe(&key))))
    }

    /// Make the objects of an index file just written readable now, from the caller's copy.
    pub(crate) fn merge_index(&self, id: IndexId, file: IndexFile) {
        let mut objs = self.objs().write().expect("objects");
        objs.add(id, file, &mut |p| self.pack_present(p));
    }

    /// The storage backend.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The backend's transfer figures so far (zeros for a backend that counts nothing).
    pub fn transfer(&self) -> storage::TransferFigures {
        self.storage
            .transfer()
            .map(|t| t.figures())
            .unwrap_or_default()
    }

    /// Whether an object is in the index.
    pub fn contains(&self, id: impl Into<ObjectId>) -> bool {
        self.objs()
            .read()
            .expect("objects")
            .position(&id.into())
            .is_some()
    }

    /// Where an object is.
    pub fn location(&self, id: impl Into<ObjectId>) -> Option<Location> {
        self.objs().read().expect("objects").get(&id.into())
    }

    /// Number of indexed objects.
    pub fn object_count(&self) -> usize {
        self.objs().read().expect("objects").len()
    }

    /// Call `f` with every indexed object, by id.
    pub fn for_each_object(&self, f: &mut dyn FnMut(&ObjectId, &Location)) {
        for (id, loc) in self.objs().read().expect("objects").entries() {
            f(&id, &loc);
        }
    }

    /// Positions (see [`Cache::object_at`]) of every indexed object, in pack order (pack,
    /// frame, offset): reading in this order decompresses each frame about once. 4 bytes per
    /// object instead of a copy of the index.
    pub fn positions_in_pack_order(&self) -> Vec<u32> {
        let objs = self.objs().read().expect("objects");
        let mut pos: Vec<u32> = (0..objs.len() as u32).collect();
        pos.sort_unstable_by_key(|&i| {
            let l = objs.at(i as usize).1;
            (l.pack, l.frame_offset, l.offset)
        });
        pos
    }

    /// The position of an object in the index, stable until the index next changes (a save
    /// or collection merging what it wrote): a key for bit sets of objects; and its location.
    pub fn locate(&self, id: impl Into<ObjectId>) -> Option<(usize, Location)> {
        let objs = self.objs().read().expect("objects");
        objs.position(&id.into()).map(|pos| (pos, objs.at(pos).1))
    }

    /// The object at a position (see [`Cache::locate`]).
    ///
    /// # Panics
    /// When `pos` is not below [`Cache::object_count`].
    pub fn object_at(&self, pos: usize) -> (ObjectId, Location) {
        self.objs().read().expect("objects").at(pos)
    }

    /// Every indexed object: a copy of the index (72 bytes per object, the index 68).
    pub fn objects(&self) -> Vec<(ObjectId, Location)> {
        self.objs().read().expect("objects").entries().collect()
    }

    /// The packs the index files merged name that the backend said do not exist (their
    /// objects are absent); reads the index if it was not read.
    pub fn missing_packs(&self) -> Vec<PackId> {
        self.objs().read().expect("objects").missing.clone()
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
        let loc = self
            .location(*id)
            .ok_or(CacheError::Missing((*id).into()))?;
        self.read_tree_at(id, loc)
    }

    /// [`Cache::read_tree`] of a tree whose location the caller has (from
    /// [`Cache::object_at`] or [`Cache::locate`]): no second index lookup.
    ///
    /// # Errors
    /// As [`Cache::read_tree`].
    pub fn read_tree_at(&self, id: &TreeId, loc: Location) -> Result<Node, CacheError> {
        check_tree_location(id, &loc)?;
        Node::decode(id, &self.read_small_at((*id).into(), loc)?)
    }

    /// The encoded bytes of the tree `id` at `loc` (from [`Cache::location`]) into `out`, which
    /// is `loc.len` bytes long: for a reader that holds many trees for a while, encoded (a
    /// fraction of their decoded size) and in one buffer. Checked against `id` only when
    /// decoded ([`Node::decode`]).
    ///
    /// # Errors
    /// As [`Cache::read_tree`] (but for bytes that do not match the id); `out` of another
    /// length than the object's is [`CacheError::Corrupt`].
    pub fn read_tree_into(
        &self,
        id: &TreeId,
        loc: Location,
        out: &mut [u8],
    ) -> Result<(), CacheError> {
        check_tree_location(id, &loc)?;
        let mut at = 0usize;
        self.stream_located((*id).into(), loc, true, None, &mut |chunk| {
            let dst = at
                .checked_add(chunk.len())
                .and_then(|end| out.get_mut(at..end))
                .ok_or_else(|| io::Error::other("more bytes than the index says"))?;
            dst.copy_from_slice(chunk);
            at += chunk.len();
            Ok(())
        })?;
        if at != out.len() {
            return Err(CacheError::Corrupt(format!(
                "tree {id}: {at} bytes, not the {} the index says",
                out.len()
            )));
        }
        Ok(())
    }

    /// Read only the index files `ids` (those a v2 snapshot names) from now on, instead of
    /// every index file of the cache: a restore then never lists nor downloads the others.
    /// Nothing is read until the index is first needed (a no-op restore never reads it).
    /// Missing or damaged ones are warnings; their objects count as absent.
    pub fn use_indexes(&self, ids: &[IndexId]) {
        match self.objects.get() {
            Some(o) => *o.write().expect("objects") = self.objects_of(ids),
            None => *self.chosen_indexes.lock().expect("chosen indexes") = Some(ids.to_vec()),
        }
    }

    /// Read every index file of the cache from now on, undoing [`Cache::use_indexes`]: what
    /// a collection marks from (after a save, which reads only the files its base snapshot
    /// names, a snapshot of another key may need objects of others).
    /// The index files whose keys are in `last` are merged after the others, so that an
    /// object found in both is located in the others' packs (a collection passes those it
    /// retired: an object it copied is then read from its new pack, and the old one, not
    /// named again, is deleted once its grace period is over).
    pub fn use_every_index(&self, last: &HashSet<String>) {
        let objects = self.load_index(last);
        match self.objects.get() {
            Some(o) => *o.write().expect("objects") = objects,
            None => {
                if let Err(objects) = self.objects.set(RwLock::new(objects)) {
                    *self.objects.get().expect("set").write().expect("objects") =
                        objects.into_inner().expect("objects");
                }
            }
        }
    }

    /// Whether the index was read (or chosen files of it, see [`Cache::use_indexes`]).
    pub fn index_loaded(&self) -> bool {
        self.objects.get().is_some()
    }

    /// The objects of the index files `ids` (each read once, however often it is named);
    /// missing or damaged ones are warnings.
    fn objects_of(&self, ids: &[IndexId]) -> Objects {
        let mut objects = Objects::default();
        let mut seen = HashSet::with_capacity(ids.len());
        let files: Vec<(IndexId, String)> = ids
            .iter()
            .filter(|id| seen.insert(**id))
            .map(|id| (*id, index_key(id)))
            .collect();
        self.add_index_files(&mut objects, &files, "index");
        objects
    }

    /// The index files whose objects are readable now.
    pub fn index_files(&self) -> Vec<IndexId> {
        self.objs().read().expect("objects").files.clone()
    }

    /// The index files merged so far (none when the index was not read) and those this
    /// process wrote since ([`Cache::index_written`]): what a snapshot written now names.
    /// Unlike [`Cache::index_files`], the new files are not read back and merged (at the
    /// end of a full save of 100,000 paths, a table of 260,000 objects made only to list
    /// one file).
    pub fn index_files_and_written(&self) -> Vec<IndexId> {
        let mut files = self
            .objects
            .get()
            .map(|o| o.read().expect("objects").files.clone())
            .unwrap_or_default();
        for id in self.pending_indexes.lock().expect("pending indexes").iter() {
            if !files.contains(id) {
                files.push(*id);
            }
        }
        files
    }

    fn warn(&self, w: String) {
        self.extra_warnings.lock().expect("warnings").push(w);
    }
}

/// Objects holding only a warning.
fn warned(w: String) -> Objects {
    let mut o = Objects::default();
    o.warnings.push(w);
    o
}

/// How far in the future a snapshot's `created` may be and still count as the newest.
pub const FUTURE_MARGIN_NANOS: i64 = 24 * 3600 * 1_000_000_000;

/// A tree's location as the index gives it: of a tree, and not larger than a tree may be.
fn check_tree_location(id: &TreeId, loc: &Location) -> Result<(), CacheError> {
    frames::check_kind((*id).into(), loc, Some(ObjectKind::Tree))?;
    if loc.len > decode::MAX_TREE_BYTES {
        return Err(CacheError::Corrupt(format!(
            "tree {id}: {} bytes, more than a tree may have",
            loc.len
        )));
    }
    Ok(())
}

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
    fn a_tree_read_into_a_buffer_is_its_encoding_and_a_buffer_of_another_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let packer = Packer::new(&cache, 1);
        let tree = Node::Symlink {
            target: b"../some/where".to_vec(),
        };
        let (id, bytes) = tree.encode();
        assert!(packer.claim(ObjectId::from(id)));
        packer
            .add(ObjectKind::Tree, ObjectId::from(id), &bytes)
            .unwrap();
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let loc = cache.location(id).unwrap();
        let mut out = vec![0; bytes.len()];
        cache.read_tree_into(&id, loc, &mut out).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(Node::decode(&id, &out).unwrap(), tree);
        for len in [bytes.len() - 1, bytes.len() + 1, 0] {
            let mut out = vec![0; len];
            let e = cache.read_tree_into(&id, loc, &mut out).unwrap_err();
            assert!(
                matches!(e, CacheError::Corrupt(_) | CacheError::Storage(_)),
                "{e}"
            );
        }
        // A location of a blob, or of a tree larger than a tree may be, is refused unread.
        let blob = Location {
            kind: ObjectKind::Blob,
            ..loc
        };
        assert!(cache.read_tree_into(&id, blob, &mut out).is_err());
        let huge = Location {
            len: decode::MAX_TREE_BYTES + 1,
            ..loc
        };
        assert!(cache.read_tree_into(&id, huge, &mut out).is_err());
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

    #[test]
    fn a_limited_frame_cache_keeps_fewer_frames_and_keeps_its_limit_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let packer = Packer::new(&cache, 1);
        let mut ids = Vec::new();
        for i in 0..300u32 {
            let mut v = vec![7u8; 10_000];
            v[..4].copy_from_slice(&i.to_le_bytes());
            packer.add(ObjectKind::Blob, BlobId::of(&v), &v).unwrap();
            ids.push(BlobId::of(&v));
        }
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let pass = || {
            let before = cache.frames_decompressed();
            for id in &ids {
                assert_eq!(BlobId::of(&cache.read_small(*id).unwrap()), *id);
            }
            cache.frames_decompressed() - before
        };
        // 3 MB of objects: three frames, all kept by the default budget.
        assert_eq!(pass(), 3);
        assert_eq!(pass(), 0);
        // Room for one frame: a second pass in the same order decompresses them again.
        cache.limit_frames(3 << 19);
        assert_eq!(pass(), 3);
        assert_eq!(pass(), 3);
        cache.drop_frames();
        assert_eq!(pass(), 3);
        assert_eq!(pass(), 3, "drop_frames restored the default budget");
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
            nix: crate::store::path_info::NixColumns::boxed(
                Some(1),
                Some("cache:abc".into()),
                None,
            ),
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
