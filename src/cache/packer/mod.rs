//! Appending new objects to packs during a save, from many threads at once.
//!
//! Small objects are gathered into frames of about [`FRAME_TARGET`] bytes, one store path's
//! objects together (see [`PathFrames`]), so similar small files compress together and a
//! restore decompresses each frame once. Objects of [`SOLO_THRESHOLD`] bytes or more get
//! frames of their own, one per [`CHUNK`] of content, compressed in parallel; objects read
//! from a stream ([`Packer::add_reader`]) go straight into a pack of their own, so memory
//! stays bounded whatever the file size and nothing is written twice. Compression runs in the
//! calling thread with a context kept per thread; only the append to the shared pack is
//! serialised. [`Packer::finish`] closes the last pack and writes one index file naming
//! everything this packer wrote; only then may a snapshot refer to those objects.

mod pack;

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;

use pack::{compress, compress_chunked, OpenPack};

use super::format::{header, seal_encoded};
use super::index::{IndexBody, Pieces};
use super::{
    index_key, pack_key, Cache, CacheError, IndexFile, IndexId, Location, ObjectId, ObjectKind,
    PackId, StorageError, FRAME_TARGET, INDEX_MAGIC, PACK_MAGIC, PACK_TARGET, SOLO_THRESHOLD,
};

/// What a packer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// New objects.
    pub objects: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Bytes appended to packs.
    pub packed_bytes: u64,
    /// Packs written.
    pub packs: u64,
    /// The index file written, naming them (none when nothing was new).
    pub index: Option<IndexId>,
}

fn broken(why: &str) -> CacheError {
    CacheError::Storage(StorageError(
        "pack".into(),
        io::Error::other(format!("an earlier write failed: {why}")),
    ))
}

#[derive(Default)]
struct FrameBuilder {
    /// Borrowed from the thread's spares (a path's frames): a buffer grown afresh for each
    /// path is pages faulted in, and copied at each doubling, for every path.
    buf: crate::scratch::Scratch,
    entries: Vec<(ObjectId, ObjectKind, u64, u64)>,
}

impl FrameBuilder {
    /// The buffer, with room for a whole frame (borrowed when first needed).
    fn buf(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() == 0 {
            self.buf =
                crate::scratch::Scratch::with_capacity(crate::cache::MAX_BATCH_FRAME as usize);
        }
        &mut self.buf
    }
}

/// The small objects of one store path, gathered into frames of their own while the path is
/// walked (see [`Packer::add_to`]): a restore, which writes one path at a time, then
/// decompresses each frame once instead of once per path sharing it. Hand it back with
/// [`Packer::finish_path`], whatever happened to the walk.
#[derive(Default)]
pub struct PathFrames(FrameBuilder);

#[derive(Default)]
struct State<'c> {
    open: Option<OpenPack<'c>>,
    /// Why an append failed, if one did.
    broken: Option<String>,
    /// Packs committed, and the objects of each, one vector per pack (its own, exactly
    /// sized): no table of every new object growing by doubling (at 260,000 objects, 19 MB
    /// copied into 38 MB mid-walk).
    done_packs: Vec<PackId>,
    done_entries: Vec<Vec<(ObjectId, Location)>>,
    stats: PackStats,
}

/// Writes new objects into packs. Share it between threads by reference.
pub struct Packer<'c> {
    cache: &'c Cache,
    level: i32,
    state: Mutex<State<'c>>,
    /// Frames being filled, blobs and trees apart: trees get frames of their own, so reading
    /// every tree of a cache (see [`Cache::links_hashes`]) decompresses no file contents.
    builders: [Mutex<Vec<FrameBuilder>>; 2],
    claimed: Mutex<HashSet<ObjectId>>,
    /// Ids whose claim was given up ([`Packer::unclaim`]): another walk may have named such an
    /// object meanwhile, trusting the claim (see [`Packer::given_up`]).
    given_up: Mutex<HashSet<ObjectId>>,
}

impl<'c> Packer<'c> {
    /// A packer appending to `cache` with zstd `level`.
    pub fn new(cache: &'c Cache, level: i32) -> Self {
        Packer {
            cache,
            level,
            state: Mutex::new(State::default()),
            builders: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            claimed: Mutex::new(HashSet::new()),
            given_up: Mutex::new(HashSet::new()),
        }
    }

    /// The cache this packer appends to.
    pub fn cache(&self) -> &'c Cache {
        self.cache
    }

    /// True (once per id) when `id` is neither in the cache nor already added by this packer:
    /// the caller must then add it.
    pub fn claim(&self, id: impl Into<ObjectId>) -> bool {
        let id = id.into();
        !self.cache.contains(id) && self.claimed.lock().expect("claims").insert(id)
    }

    /// Give up a claim whose object could not be added, so another path holding the same
    /// contents adds it.
    ///
    /// A path walked while the claim was held was told (by [`Packer::claim`]) that the object
    /// would be added, and may name it in its tree: after [`Packer::finish`], the caller must
    /// check the objects of [`Packer::given_up`] and walk such paths again.
    pub fn unclaim(&self, id: impl Into<ObjectId>) {
        let id = id.into();
        self.claimed.lock().expect("claims").remove(&id);
        self.given_up.lock().expect("given up").insert(id);
    }

    /// Every id whose claim was given up at some point (it may have been claimed and added
    /// again since: check [`Cache::contains`] after [`Packer::finish`]).
    pub fn given_up(&self) -> Vec<ObjectId> {
        self.given_up
            .lock()
            .expect("given up")
            .iter()
            .copied()
            .collect()
    }

    /// Add a claimed object that is in memory to the frames of one path: small objects go
    /// into `frames` (flushed as a frame whenever it holds [`FRAME_TARGET`] bytes), large
    /// ones get frames of their own at once.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when the pack cannot be written.
    pub fn add_to(
        &self,
        frames: &mut PathFrames,
        kind: ObjectKind,
        id: impl Into<ObjectId>,
        data: &[u8],
    ) -> Result<(), CacheError> {
        let id = id.into();
        if data.len() as u64 >= SOLO_THRESHOLD {
            return self.add(kind, id, data);
        }
        let b = &mut frames.0;
        b.entries
            .push((id, kind, b.buf.len() as u64, data.len() as u64));
        b.buf().extend_from_slice(data);
        if b.buf.len() as u64 >= FRAME_TARGET {
            self.flush_builder(b)?;
        }
        Ok(())
    }

    /// The end of a path's walk: its last, partly filled frame joins the shared frames (so
    /// small paths still share frames and compress together).
    ///
    /// # Errors
    /// [`CacheError::Storage`] when the pack cannot be written.
    pub fn finish_path(&self, frames: PathFrames) -> Result<(), CacheError> {
        let tail = frames.0;
        if tail.entries.is_empty() {
            return Ok(());
        }
        let pool = &self.builders[ObjectKind::Blob as usize];
        let mut b = pool.lock().expect("builders").pop().unwrap_or_default();
        let mut r = Ok(());
        if b.buf.len() + tail.buf.len() > FRAME_TARGET as usize {
            r = self.flush_builder(&mut b);
        }
        let base = b.buf.len() as u64;
        b.buf().extend_from_slice(&tail.buf);
        b.entries.extend(
            tail.entries
                .into_iter()
                .map(|(id, kind, offset, len)| (id, kind, base + offset, len)),
        );
        if r.is_ok() && b.buf.len() as u64 >= FRAME_TARGET {
            r = self.flush_builder(&mut b);
        }
        pool.lock().expect("builders").push(b);
        r
    }

    /// Add a claimed object that is in memory.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when the pack cannot be written.
    pub fn add(
        &self,
        kind: ObjectKind,
        id: impl Into<ObjectId>,
        data: &[u8],
    ) -> Result<(), CacheError> {
        let id = id.into();
        if data.len() as u64 >= SOLO_THRESHOLD {
            let frames = compress_chunked(data, self.level)
                .map_err(|e| CacheError::Storage(StorageError(format!("object {id}"), e)))?;
            let mut compressed =
                crate::scratch::Scratch::with_capacity(frames.iter().map(|f| f.len()).sum());
            for f in &frames {
                compressed.extend_from_slice(f);
            }
            drop(frames);
            let entry = [(id, kind, 0, data.len() as u64)];
            return self.append(&compressed, &entry);
        }
        let pool = &self.builders[kind as usize];
        let mut b = pool.lock().expect("builders").pop().unwrap_or_default();
        b.entries
            .push((id, kind, b.buf.len() as u64, data.len() as u64));
        b.buf().extend_from_slice(data);
        let r = if b.buf.len() as u64 >= FRAME_TARGET {
            self.flush_builder(&mut b)
        } else {
            Ok(())
        };
        pool.lock().expect("builders").push(b);
        r
    }

    /// A new pack in a scratch file, its header written.
    fn new_pack(&self) -> Result<OpenPack<'c>, CacheError> {
        let file = self.cache.storage().writer()?;
        let mut pack = OpenPack {
            file,
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        };
        pack.write(&header(PACK_MAGIC))?;
        Ok(pack)
    }

    fn flush_builder(&self, b: &mut FrameBuilder) -> Result<(), CacheError> {
        if b.entries.is_empty() {
            return Ok(());
        }
        let compressed = compress(&b.buf, self.level)
            .map_err(|e| CacheError::Storage(StorageError("compressing a frame".into(), e)))?;
        let r = self.append(&compressed, &b.entries);
        b.buf.clear();
        b.entries.clear();
        r
    }

    /// Append an already compressed frame holding `entries` (id, kind, offset and length in
    /// the decompressed frame), as it was in another pack: a garbage collection moves live
    /// frames without decompressing them.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when the pack cannot be written.
    pub fn copy_frame(
        &self,
        frame: &[u8],
        entries: &[(ObjectId, ObjectKind, u64, u64)],
    ) -> Result<(), CacheError> {
        self.append(frame, entries)
    }

    /// Append one frame to the open pack. After a failure the pack's length is unknown (part
    /// of the frame may be written), so the packer is broken: every later append and
    /// [`Packer::finish`] fail, and no index names what it wrote.
    fn append(
        &self,
        frame: &[u8],
        entries: &[(ObjectId, ObjectKind, u64, u64)],
    ) -> Result<(), CacheError> {
        let mut st = self.state.lock().expect("pack state");
        if let Some(why) = &st.broken {
            return Err(broken(why));
        }
        let r = self.append_locked(&mut st, frame, entries);
        if let Err(e) = &r {
            st.broken = Some(e.to_string());
        }
        r
    }

    fn append_locked(
        &self,
        st: &mut State<'c>,
        frame: &[u8],
        entries: &[(ObjectId, ObjectKind, u64, u64)],
    ) -> Result<(), CacheError> {
        if st.open.is_none() {
            st.open = Some(self.new_pack()?);
        }
        let open = st.open.as_mut().expect("opened above");
        let frame_offset = open.len;
        open.write(frame)?;
        let frame_len = frame.len() as u64;
        for &(id, kind, offset, len) in entries {
            open.push_entry(id, kind, frame_offset, frame_len, offset, len);
            st.stats.objects += 1;
            st.stats.raw_bytes += len;
        }
        st.stats.packed_bytes += frame_len;
        if open.len >= PACK_TARGET {
            let full = st.open.take().expect("open");
            self.commit_pack(st, full)?;
        }
        Ok(())
    }

    /// Publish a finished pack and record its objects for the index.
    fn commit_pack(&self, st: &mut State<'c>, mut pack: OpenPack<'c>) -> Result<(), CacheError> {
        pack.file
            .flush()
            .map_err(|e| StorageError(format!("new pack {}", pack.file.describe()), e))?;
        let id = PackId(*pack.hasher.finalize().as_bytes());
        pack.file.commit(&pack_key(&id))?;
        let no = st.done_packs.len() as u32;
        st.done_packs.push(id);
        let mut entries = pack.entries;
        for (_, loc) in &mut entries {
            loc.pack = no;
        }
        entries.shrink_to_fit();
        st.done_entries.push(entries);
        st.stats.packs += 1;
        Ok(())
    }

    /// Flush pending frames, close the open pack and write the index file. After this returns,
    /// every object added is durable and a snapshot may name it.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn finish(self) -> Result<PackStats, CacheError> {
        Ok(self.finish_with(IndexFile::default())?.0)
    }

    /// [`Packer::finish`], the index file also naming the objects of `extra` (objects already
    /// in durable packs, as a garbage collection consolidates index files). An index is
    /// written when either holds anything. Also returns the packs that index names (those
    /// written here and those of `extra`), empty when none was written.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn finish_with(self, extra: IndexFile) -> Result<(PackStats, Vec<PackId>), CacheError> {
        // No object is claimed from here: the claims (33 bytes a new object) go before the
        // index file is encoded.
        drop(std::mem::take(&mut *self.claimed.lock().expect("claims")));
        for pool in &self.builders {
            let builders = std::mem::take(&mut *pool.lock().expect("builders"));
            for mut b in builders {
                self.flush_builder(&mut b)?;
            }
        }
        let mut st = self.state.lock().expect("pack state");
        if let Some(why) = &st.broken {
            return Err(broken(why));
        }
        if let Some(open) = st.open.take() {
            self.commit_pack(&mut st, open)?;
        }
        let mut named = Vec::new();
        let base = st.done_packs.len() as u32;
        st.done_packs.extend(extra.packs);
        let mut extra = extra.entries;
        for (_, loc) in &mut extra {
            loc.pack += base;
        }
        st.done_entries.push(extra);
        if st.done_entries.iter().any(|e| !e.is_empty()) {
            // One sync makes every pack durable before the index that names them.
            self.cache.storage().sync()?;
            let (sum, bytes) = seal_encoded(
                INDEX_MAGIC,
                super::FORMAT_VERSION,
                &IndexBody {
                    packs: &st.done_packs,
                    entries: Pieces(&st.done_entries),
                },
            );
            named = std::mem::take(&mut st.done_packs);
            st.done_entries = Vec::new();
            self.cache
                .storage()
                .put_if_absent(&index_key(&IndexId(sum)), &bytes)?;
            self.cache.index_written(IndexId(sum));
            st.stats.index = Some(IndexId(sum));
        }
        Ok((st.stats, named))
    }
}
