//! The content-addressed cache: blobs (file contents, keyed by BLAKE3), trees (one per store
//! path), packs (zstd frames of objects, tens of MiB each), index files (object → pack range)
//! and snapshots (the paths of one save). The byte layout is specified in docs/FORMAT.md.
//!
//! Invariants: every object read is checked against its id before it is used (a solo blob
//! streams, so its check comes at the end and callers discard what they wrote on error);
//! objects are durable (packs and index fsynced and renamed into place) before a snapshot
//! naming them is written; nothing is ever modified in place.

pub mod index;
mod packer;
pub mod snapshot;
pub mod storage;
pub mod tree;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

pub use index::{IndexFile, Location};
pub use packer::{PackStats, Packer, PathFrames};
pub use snapshot::{Snapshot, SnapshotPath};
pub use storage::{LocalDir, Storage, StorageError};
pub use tree::{Entry, Node};

/// Version of the cache format (docs/FORMAT.md); written in every file header.
pub const FORMAT_VERSION: u32 = 1;
/// Magic of pack files.
pub const PACK_MAGIC: &[u8; 8] = b"STSYPACK";
/// Magic of index files.
pub const INDEX_MAGIC: &[u8; 8] = b"STSYINDX";
/// Magic of snapshot files.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"STSYSNAP";
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
/// Upper bound of decoded index and snapshot bodies.
const MAX_DECODED: usize = 1 << 31;

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

/// A BLAKE3 digest naming a blob, tree, pack, index or snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        ObjectId(*blake3::hash(data).as_bytes())
    }
    /// Lower-case hex.
    pub fn hex(&self) -> String {
        crate::nar::hex(&self.0)
    }
    /// Parse 64 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        crate::nar::parse_hex::<32>(s).map(ObjectId)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.hex()[..16])
    }
}

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// File contents.
    Blob,
    /// An encoded [`Node`].
    Tree,
}

pub(crate) fn encode_bincode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("in-memory encoding")
}

pub(crate) fn decode_bincode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let cfg = bincode::config::standard().with_limit::<MAX_DECODED>();
    match bincode::serde::decode_from_slice(bytes, cfg) {
        Ok((v, n)) if n == bytes.len() => Ok(v),
        Ok(_) => Err("trailing bytes after the encoded value".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Wrap a body in the envelope of index and snapshot files: magic, version, flags, body,
/// BLAKE3 of all that. Returns (checksum, bytes); the checksum names the file.
pub(crate) fn seal(magic: &[u8; 8], body: &[u8]) -> (ObjectId, Vec<u8>) {
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(body);
    let sum = ObjectId::of(&out);
    out.extend_from_slice(&sum.0);
    (sum, out)
}

/// Check and strip the envelope.
pub(crate) fn unseal<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    what: &str,
) -> Result<(ObjectId, &'a [u8]), CacheError> {
    let bad = |why: &str| CacheError::Corrupt(format!("{what}: {why}"));
    if bytes.len() < 48 || &bytes[..8] != magic {
        return Err(bad(
            "not a storesync file of this kind (bad magic or truncated)",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(bad(&format!(
            "format version {version}, this storesync reads {FORMAT_VERSION}"
        )));
    }
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    let computed = ObjectId::of(content);
    if computed.0 != sum {
        return Err(bad("checksum mismatch (truncated or modified)"));
    }
    Ok((computed, &content[16..]))
}

thread_local! {
    /// Each thread's decompression context, kept between frames.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompress one frame into `out` (whose spare capacity bounds the size) with this thread's
/// context.
fn decompress_into(frame: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("set above")
            .decompress_to_buffer(frame, out)
    })
}

/// Buffers of evicted frames kept for reuse.
const SPARE_FRAMES: usize = 4;

struct FrameCache {
    frames: HashMap<(u32, u64), Arc<Vec<u8>>>,
    order: VecDeque<(u32, u64)>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Objects {
    warnings: Vec<String>,
    packs: Vec<ObjectId>,
    pack_no: HashMap<ObjectId, u32>,
    index: HashMap<ObjectId, Location>,
}

impl Objects {
    /// Merge an index file; `present` says whether a pack exists.
    fn merge(
        &mut self,
        file: IndexFile,
        present: &mut dyn FnMut(&ObjectId) -> bool,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        let local: Vec<Option<u32>> = file
            .packs
            .iter()
            .map(|p| {
                if let Some(&no) = self.pack_no.get(p) {
                    return Some(no);
                }
                if !present(p) {
                    missing.push(format!("pack {} named by an index is missing", pack_key(p)));
                    return None;
                }
                self.packs.push(*p);
                let no = self.packs.len() as u32 - 1;
                self.pack_no.insert(*p, no);
                Some(no)
            })
            .collect();
        for (id, mut loc) in file.entries {
            if let Some(Some(no)) = local.get(loc.pack as usize) {
                loc.pack = *no;
                self.index.entry(id).or_insert(loc);
            }
        }
        missing
    }
}

const FRAME_CACHE_BYTES: usize = 24 * 1024 * 1024;

/// An opened cache. The index is loaded on first use, so commands that need only snapshots
/// (a no-op restore, `ls`) never read it.
pub struct Cache {
    storage: Box<dyn Storage>,
    objects: OnceLock<RwLock<Objects>>,
    frames: Mutex<FrameCache>,
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
            frames: Mutex::new(FrameCache {
                frames: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                spare: Vec::new(),
            }),
        }
    }

    fn objs(&self) -> &RwLock<Objects> {
        self.objects.get_or_init(|| RwLock::new(self.load_index()))
    }

    /// Merge every index file. Damaged index files are skipped with a warning (their objects
    /// count as absent), as are entries whose pack is missing.
    fn load_index(&self) -> Objects {
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
                }
                Err(e) => objects.warnings.push(format!("skipping index {key}: {e}")),
            }
        }
        objects
    }

    fn pack_present(&self, p: &ObjectId) -> bool {
        matches!(self.storage.size(&pack_key(p)), Ok(Some(_)))
    }

    /// Problems found while loading the index (damaged index files, missing packs).
    pub fn warnings(&self) -> Vec<String> {
        self.objs().read().expect("objects").warnings.clone()
    }

    /// Like [`Cache::warnings`], but empty when the index was never loaded.
    pub fn loaded_warnings(&self) -> Vec<String> {
        match self.objects.get() {
            Some(o) => o.read().expect("objects").warnings.clone(),
            None => Vec::new(),
        }
    }

    fn read_index_file(&self, key: &str) -> Result<IndexFile, CacheError> {
        let bytes = self.storage.read(key)?;
        let what = self.storage.describe(key);
        let (sum, body) = unseal(INDEX_MAGIC, &bytes, &what)?;
        if key != index_key(&sum) {
            return Err(CacheError::Corrupt(format!(
                "{what}: name does not match its checksum"
            )));
        }
        decode_bincode(body).map_err(|e| CacheError::Corrupt(format!("{what}: {e}")))
    }

    /// Make the objects of an index file just written by a [`Packer`] readable.
    pub(crate) fn merge_index(&self, file: IndexFile) {
        let mut objs = self.objs().write().expect("objects");
        let w = objs.merge(file, &mut |p| self.pack_present(p));
        objs.warnings.extend(w);
    }

    /// The storage backend.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// Whether an object is in the index.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objs().read().expect("objects").index.contains_key(id)
    }

    /// Where an object is.
    pub fn location(&self, id: &ObjectId) -> Option<Location> {
        self.objs().read().expect("objects").index.get(id).copied()
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
    pub fn packs(&self) -> Vec<ObjectId> {
        self.objs().read().expect("objects").packs.clone()
    }

    fn pack_id(&self, no: u32) -> ObjectId {
        self.objs().read().expect("objects").packs[no as usize]
    }

    fn frame(&self, loc: &Location) -> Result<Arc<Vec<u8>>, CacheError> {
        let key = (loc.pack, loc.frame_offset);
        if let Some(f) = self.frames.lock().expect("frame cache").frames.get(&key) {
            return Ok(f.clone());
        }
        let pack = pack_key(&self.pack_id(loc.pack));
        let mut compressed = crate::scratch::Scratch::empty();
        self.storage
            .read_range(&pack, loc.frame_offset, loc.frame_len)?
            .read_to_end(&mut compressed)
            .map_err(|e| StorageError(self.storage.describe(&pack), e))?;
        // Into a buffer of an evicted frame if there is one: no fresh pages to fault in.
        let mut data = self
            .frames
            .lock()
            .expect("frame cache")
            .spare
            .pop()
            .unwrap_or_default();
        data.clear();
        data.reserve(MAX_BATCH_FRAME as usize);
        decompress_into(&compressed, &mut data).map_err(|e| {
            CacheError::Corrupt(format!(
                "{}: frame at offset {}: {e}",
                self.storage.describe(&pack),
                loc.frame_offset
            ))
        })?;
        let data = Arc::new(data);
        let mut fc = self.frames.lock().expect("frame cache");
        if fc.frames.insert(key, data.clone()).is_none() {
            fc.order.push_back(key);
            fc.bytes += data.len();
            while fc.bytes > FRAME_CACHE_BYTES {
                let Some(old) = fc.order.pop_front() else {
                    break;
                };
                if let Some(f) = fc.frames.remove(&old) {
                    fc.bytes -= f.len();
                    // Kept for the next frame unless a reader still holds it.
                    if let Ok(v) = Arc::try_unwrap(f) {
                        if fc.spare.len() < SPARE_FRAMES {
                            fc.spare.push(v);
                        }
                    }
                }
            }
        }
        Ok(data)
    }

    /// Read an object that fits in memory (a tree or a small blob), checked against its id.
    ///
    /// # Errors
    /// [`CacheError::Missing`], or [`CacheError::Corrupt`] when the bytes do not match.
    pub fn read_small(&self, id: &ObjectId) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::new();
        self.stream(id, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Stream an object's bytes to `sink` in chunks. A small object is checked before `sink`
    /// sees it; a large one streams and is checked at the end, so on error the caller must
    /// discard what `sink` received. Trees are checked by [`Cache::read_tree`].
    ///
    /// # Errors
    /// [`CacheError`] for a missing or damaged object; a `sink` error is returned as
    /// [`CacheError::Storage`] naming the object.
    pub fn stream(
        &self,
        id: &ObjectId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        self.stream_checking(id, true, sink)
    }

    /// [`Cache::stream`] without the BLAKE3 check of a blob's bytes against its id (lengths
    /// and zstd framing are still checked), for a caller that verifies what it received by
    /// other means before anything depends on it: a restore checks each path's NAR hash, and
    /// streams again with [`Cache::stream`] to name the damaged blob when that fails.
    ///
    /// # Errors
    /// As [`Cache::stream`], except that a blob whose bytes differ from its id is not one.
    pub fn stream_unchecked(
        &self,
        id: &ObjectId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        self.stream_checking(id, false, sink)
    }

    fn stream_checking(
        &self,
        id: &ObjectId,
        check: bool,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        let loc = self.location(id).ok_or(CacheError::Missing(*id))?;
        let check = check && loc.kind == ObjectKind::Blob;
        let sink_err = |e: io::Error| StorageError(format!("object {id}"), e);
        if loc.len < SOLO_THRESHOLD {
            let frame = self.frame(&loc)?;
            let end = loc
                .offset
                .checked_add(loc.len)
                .filter(|&e| e <= frame.len() as u64);
            let Some(end) = end else {
                return Err(CacheError::Corrupt(format!(
                    "object {id}: range outside its frame"
                )));
            };
            let bytes = &frame[loc.offset as usize..end as usize];
            if check && ObjectId::of(bytes) != *id {
                return Err(CacheError::Corrupt(format!(
                    "blob {id}: content does not match its id"
                )));
            }
            return sink(bytes).map_err(|e| sink_err(e).into());
        }
        let pack = pack_key(&self.pack_id(loc.pack));
        let raw = self
            .storage
            .read_range(&pack, loc.frame_offset, loc.frame_len)?;
        // One or more frames (see CHUNK); the decoder reads across frame boundaries.
        let mut dec = zstd::stream::read::Decoder::new(raw)
            .map_err(|e| StorageError(self.storage.describe(&pack), e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = crate::scratch::Scratch::with_len(256 * 1024);
        let mut total = 0u64;
        loop {
            let n = dec.read(&mut buf).map_err(|e| {
                CacheError::Corrupt(format!(
                    "blob {id} in {}: {e}",
                    self.storage.describe(&pack)
                ))
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > loc.len {
                break;
            }
            if check {
                hasher.update(&buf[..n]);
            }
            sink(&buf[..n]).map_err(sink_err)?;
        }
        if total != loc.len || (check && ObjectId(*hasher.finalize().as_bytes()) != *id) {
            return Err(CacheError::Corrupt(format!(
                "blob {id}: content does not match its id"
            )));
        }
        Ok(())
    }

    /// Read and validate a tree.
    ///
    /// # Errors
    /// [`CacheError`] when missing or damaged.
    pub fn read_tree(&self, id: &ObjectId) -> Result<Node, CacheError> {
        Node::decode(id, &self.read_small(id)?)
    }

    /// The `.links` name (file NAR SHA-256) of every (blob, executable) pair that some tree in
    /// the cache records, for files of [`crate::restore::LINKS_MIN_SIZE`] bytes or more.
    ///
    /// A save uses it to skip the second SHA-256 pass over contents the cache already holds:
    /// the file NAR hash is a function of the contents (named by the blob id) and the
    /// executable bit. Only frames holding nothing but trees are read (caches written since
    /// trees got frames of their own), so this never decompresses file contents; trees that
    /// cannot be read are skipped: the caller hashes those files itself.
    pub fn links_hashes(&self) -> HashMap<(ObjectId, bool), [u8; 32]> {
        let mut frames: HashMap<(u32, u64), Vec<ObjectId>> = HashMap::new();
        let mut mixed = std::collections::HashSet::new();
        for (id, loc) in self.objects() {
            let key = (loc.pack, loc.frame_offset);
            match loc.kind {
                ObjectKind::Tree => frames.entry(key).or_default().push(id),
                ObjectKind::Blob => {
                    mixed.insert(key);
                }
            }
        }
        let mut map = HashMap::new();
        let mut stack = Vec::new();
        for (key, trees) in frames {
            if mixed.contains(&key) {
                continue;
            }
            for id in trees {
                let Ok(node) = self.read_tree(&id) else {
                    continue;
                };
                stack.push(node);
                while let Some(node) = stack.pop() {
                    match node {
                        Node::Regular {
                            executable,
                            size,
                            blob,
                            file_nar_hash,
                        } if size >= crate::restore::LINKS_MIN_SIZE => {
                            map.insert((blob, executable), file_nar_hash);
                        }
                        Node::Directory(entries) => {
                            stack.extend(entries.into_iter().map(|e| e.node));
                        }
                        _ => {}
                    }
                }
            }
        }
        map
    }

    /// Ids of all snapshots, sorted.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn snapshot_ids(&self) -> Result<Vec<ObjectId>, CacheError> {
        Ok(self
            .storage
            .list("snapshots")?
            .iter()
            .filter_map(|k| k.strip_prefix("snapshots/")?.strip_suffix(".snap"))
            .filter_map(ObjectId::parse)
            .collect())
    }

    /// Read one snapshot, checking its checksum, encoding and consistency.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file.
    pub fn read_snapshot(&self, id: &ObjectId) -> Result<Snapshot, CacheError> {
        let key = snapshot_key(id);
        let what = self.storage.describe(&key);
        let bytes = self.storage.read(&key)?;
        let (sum, body) = unseal(SNAPSHOT_MAGIC, &bytes, &what)?;
        if sum != *id {
            return Err(CacheError::Corrupt(format!(
                "{what}: name does not match its checksum"
            )));
        }
        let raw = zstd::bulk::decompress(body, MAX_DECODED)
            .map_err(|e| CacheError::Corrupt(format!("{what}: {e}")))?;
        let snap: Snapshot =
            decode_bincode(&raw).map_err(|e| CacheError::Corrupt(format!("{what}: {e}")))?;
        snap.validate()
            .map_err(|e| CacheError::Corrupt(format!("{what}: {e}")))?;
        Ok(snap)
    }

    /// All readable snapshots, oldest first; unreadable ones are returned as errors in place.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when listing fails.
    #[allow(clippy::type_complexity)]
    pub fn snapshots(&self) -> Result<Vec<(ObjectId, Result<Snapshot, CacheError>)>, CacheError> {
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
    /// # Errors
    /// [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`], [`CacheError::Empty`],
    /// or the error reading the chosen snapshot.
    pub fn find_snapshot(&self, prefix: Option<&str>) -> Result<(ObjectId, Snapshot), CacheError> {
        match prefix {
            Some(p) => {
                let p = p.to_ascii_lowercase();
                let ids: Vec<_> = self
                    .snapshot_ids()?
                    .into_iter()
                    .filter(|id| id.hex().starts_with(&p))
                    .collect();
                match ids.as_slice() {
                    [] => Err(CacheError::NoSnapshot(p)),
                    [id] => Ok((*id, self.read_snapshot(id)?)),
                    _ => Err(CacheError::AmbiguousSnapshot(p)),
                }
            }
            None => {
                let mut all = self.snapshots()?;
                let mut last_err = None;
                while let Some((id, s)) = all.pop() {
                    match s {
                        Ok(s) => return Ok((id, s)),
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(last_err.unwrap_or(CacheError::Empty))
            }
        }
    }

    /// Write a snapshot (after every object it names is durable). Returns its id.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<ObjectId, CacheError> {
        let raw = encode_bincode(snap);
        let body = zstd::bulk::compress(&raw, 3).map_err(|e| StorageError("snapshot".into(), e))?;
        let (id, bytes) = seal(SNAPSHOT_MAGIC, &body);
        self.storage.write(&snapshot_key(&id), &bytes)?;
        Ok(id)
    }
}

/// Key of a pack file.
pub fn pack_key(id: &ObjectId) -> String {
    format!("packs/{id}.pack")
}
/// Key of an index file.
pub fn index_key(id: &ObjectId) -> String {
    format!("index/{id}.idx")
}
/// Key of a snapshot file.
pub fn snapshot_key(id: &ObjectId) -> String {
    format!("snapshots/{id}.snap")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn envelope_detects_damage() {
        let (sum, bytes) = seal(INDEX_MAGIC, b"body");
        let (s2, body) = unseal(INDEX_MAGIC, &bytes, "t").unwrap();
        assert_eq!((s2, body), (sum, &b"body"[..]));
        assert!(unseal(SNAPSHOT_MAGIC, &bytes, "t").is_err());
        let mut flipped = bytes.clone();
        flipped[17] ^= 1;
        assert!(unseal(INDEX_MAGIC, &flipped, "t").is_err());
        assert!(unseal(INDEX_MAGIC, &bytes[..bytes.len() - 1], "t").is_err());
        let mut v2 = bytes.clone();
        v2[8] = 2;
        let err = unseal(INDEX_MAGIC, &v2, "t").unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
    }

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
                let id = ObjectId::of(b);
                if packer.claim(&id) {
                    packer.add(ObjectKind::Blob, id, b).unwrap();
                }
            }
            packer.finish().unwrap();
            let reopened = Cache::open_dir(dir.path()).unwrap();
            for b in &blobs {
                prop_assert_eq!(&reopened.read_small(&ObjectId::of(b)).unwrap(), b);
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
            assert!(packer.claim(&ObjectId::of(&x)));
            packer
                .add_to(&mut a, ObjectKind::Blob, ObjectId::of(&x), &x)
                .unwrap();
            ids.0.push(ObjectId::of(&x));
            if i < 10 {
                let y = blob(2, i);
                assert!(packer.claim(&ObjectId::of(&y)));
                packer
                    .add_to(&mut b, ObjectKind::Blob, ObjectId::of(&y), &y)
                    .unwrap();
                ids.1.push(ObjectId::of(&y));
            }
        }
        packer.finish_path(b).unwrap();
        packer.finish_path(a).unwrap();
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let frame = |id: &ObjectId| {
            let l = cache.location(id).unwrap();
            (l.pack, l.frame_offset)
        };
        let a_frames: HashSet<_> = ids.0.iter().map(frame).collect();
        let b_frames: HashSet<_> = ids.1.iter().map(frame).collect();
        // 3 MB of A: two full frames of its own, its tail shares the frame holding all of B.
        assert_eq!(a_frames.len(), 3, "{a_frames:?}");
        assert_eq!(b_frames.len(), 1);
        assert_eq!(a_frames.intersection(&b_frames).count(), 1);
        for id in ids.0.iter().chain(&ids.1) {
            assert_eq!(ObjectId::of(&cache.read_small(id).unwrap()), *id);
        }
    }

    /// A local directory whose scratch files cannot be written (as on a full disk).
    struct Unwritable(LocalDir);

    impl Storage for Unwritable {
        fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            self.0.read(key)
        }
        fn read_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
            self.0.read_range(key, offset, len)
        }
        fn write(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
            self.0.write(key, data)
        }
        fn scratch_file(&self) -> Result<tempfile::NamedTempFile, StorageError> {
            let (_, path) = self.0.scratch_file()?.into_parts();
            let read_only = std::fs::File::open(&path).unwrap();
            Ok(tempfile::NamedTempFile::from_parts(read_only, path))
        }
        fn commit_file(
            &self,
            key: &str,
            file: tempfile::NamedTempFile,
        ) -> Result<(), StorageError> {
            self.0.commit_file(key, file)
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
        let id = ObjectId::of(&big);
        assert!(packer.claim(&id));
        assert!(packer.add(ObjectKind::Blob, id, &big).is_err());
        let other = vec![8u8; 300_000];
        let err = packer
            .add(ObjectKind::Blob, ObjectId::of(&other), &other)
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
        let id = ObjectId::of(&first);
        assert!(packer.claim(&id));
        let added = packer
            .add_reader(ObjectKind::Blob, id, now.len() as u64, &mut &now[..])
            .unwrap();
        assert!(!added);
        packer.unclaim(&id);
        assert!(packer.claim(&id));
        assert!(packer
            .add_reader(ObjectKind::Blob, id, first.len() as u64, &mut &first[..])
            .unwrap());
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        assert_eq!(cache.read_small(&id).unwrap(), first);
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
            assert!(packer.claim(&ObjectId::of(x)));
            packer.add(ObjectKind::Blob, ObjectId::of(x), x).unwrap();
        }
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let fail = &mut |_: &[u8]| Err(io::Error::other("disk full"));
        let err = cache.stream(&ObjectId::of(&a), fail).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        for checked in [true, false] {
            for x in [&b, &a] {
                let mut got = Vec::new();
                let sink = &mut |c: &[u8]| {
                    got.extend_from_slice(c);
                    Ok(())
                };
                if checked {
                    cache.stream(&ObjectId::of(x), sink).unwrap();
                } else {
                    cache.stream_unchecked(&ObjectId::of(x), sink).unwrap();
                }
                assert!(got == *x);
            }
        }
    }

    #[test]
    fn snapshot_round_trip_and_validation() {
        use crate::db::{DerivationOutput, PathInfo};
        use crate::store_path::StorePath;
        let p = |n: &str| {
            StorePath::from_base_name(&format!("0123456789abcdfghijklmnpqrsvwxyz-{n}")).unwrap()
        };
        let info = |n: &str, refs: Vec<StorePath>| PathInfo {
            path: p(n),
            nar_hash: [7; 32],
            nar_size: 120,
            registration_time: 1_795_818_122,
            deriver: Some("/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv".into()),
            references: refs,
            ultimate: Some(1),
            sigs: Some("cache:abc".into()),
            ca: None,
        };
        let snap = Snapshot {
            flavor: crate::layout::Flavor::Nix,
            store_dir: "/nix/store".into(),
            created: 1,
            tool: "t".into(),
            roots: vec![p("b")],
            paths: vec![
                SnapshotPath {
                    info: info("a", vec![]),
                    tree: ObjectId([1; 32]),
                },
                SnapshotPath {
                    info: info("b", vec![p("a"), p("b")]),
                    tree: ObjectId([2; 32]),
                },
            ],
            derivation_outputs: vec![DerivationOutput {
                drv: p("b"),
                id: "out".into(),
                path: "/nix/store/x".into(),
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
