//! Reading objects out of packs: zstd frames fetched by range, decompressed with a context
//! kept per thread, and kept in a small LRU cache (a restore writes one path at a time per
//! thread, and a path's small files share frames). Every byte handed out is checked against
//! its id, except by [`Cache::stream_unchecked`], whose callers verify by other means.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::Arc;

use super::{
    pack_key, BlobId, Cache, CacheError, Location, ObjectId, ObjectKind, StorageError,
    MAX_BATCH_COMPRESSED, MAX_BATCH_FRAME, SOLO_THRESHOLD,
};

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

/// Largest window (log2) of a solo frame's decoder: 8 MiB, twice [`super::CHUNK`].
const SOLO_WINDOW_LOG: u32 = 23;

/// Decompressed frames kept for reuse (a few in unit tests, so that tests of the order of
/// reads need no more than a few MiB of objects).
#[cfg(not(test))]
const FRAME_CACHE_BYTES: usize = 24 * 1024 * 1024;
#[cfg(test)]
const FRAME_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Buffers of evicted frames kept for reuse.
const SPARE_FRAMES: usize = 4;

pub(super) struct FrameCache {
    frames: HashMap<(u32, u64), Arc<Vec<u8>>>,
    order: VecDeque<(u32, u64)>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
    /// Bytes of frames kept (more while readers hold evicted ones).
    budget: usize,
}

impl FrameCache {
    pub(super) fn new() -> Self {
        Self::with_budget(FRAME_CACHE_BYTES)
    }

    fn with_budget(budget: usize) -> Self {
        FrameCache {
            frames: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            spare: Vec::new(),
            budget,
        }
    }
}

impl Cache {
    /// Let go of every decompressed frame kept for reuse (a command done reading objects,
    /// before it builds something large).
    pub fn drop_frames(&self) {
        let mut fc = self.frames.lock().expect("frame cache");
        *fc = FrameCache::with_budget(fc.budget);
    }

    /// Keep at most `bytes` of decompressed frames from now on (the default suits reading
    /// many paths' objects in any order): a command that reads frames once each, in pack
    /// order, needs only a few. Frames kept now go.
    pub fn limit_frames(&self, bytes: usize) {
        *self.frames.lock().expect("frame cache") = FrameCache::with_budget(bytes);
    }

    fn frame(&self, loc: &Location) -> Result<Arc<Vec<u8>>, CacheError> {
        let key = (loc.pack, loc.frame_offset);
        if let Some(f) = self.frames.lock().expect("frame cache").frames.get(&key) {
            return Ok(f.clone());
        }
        let pack = pack_key(&self.pack_id(loc.pack));
        // Refused before anything is read: a frame of small objects is never larger (an
        // index may claim any length, and a sparse pack file may hold it).
        if loc.frame_len > MAX_BATCH_COMPRESSED {
            return Err(CacheError::Corrupt(format!(
                "frame at {} of pack {pack}: {} bytes, more than a frame of small objects takes",
                loc.frame_offset, loc.frame_len
            )));
        }
        let mut compressed = crate::scratch::Scratch::empty();
        if !self.prefetched_into(loc, &mut compressed)? {
            // Another thread may have had it from its run and cached it meanwhile: it lets
            // go of the compressed frame only once the decompressed one is cached.
            if let Some(f) = self.frames.lock().expect("frame cache").frames.get(&key) {
                return Ok(f.clone());
            }
            self.storage
                .get_range(&pack, loc.frame_offset, loc.frame_len)?
                .read_to_end(&mut compressed)
                .map_err(|e| StorageError(self.storage.describe(&pack), e))?;
        }
        // The size the frame declares (ours do), within the bound of a batch frame: a small
        // frame (the last of a save, a few trees) does not hold a full frame's memory.
        let declared = zstd::zstd_safe::get_frame_content_size(&compressed)
            .ok()
            .flatten()
            .filter(|&n| n <= MAX_BATCH_FRAME)
            .unwrap_or(MAX_BATCH_FRAME) as usize;
        // Into a buffer of an evicted frame if one fits it without wasting more than half:
        // no fresh pages to fault in.
        let mut data = {
            let mut fc = self.frames.lock().expect("frame cache");
            match fc
                .spare
                .iter()
                .position(|v| v.capacity() >= declared && v.capacity() / 2 <= declared)
            {
                Some(i) => fc.spare.swap_remove(i),
                None => Vec::new(),
            }
        };
        data.clear();
        data.reserve_exact(declared);
        let decompressed = decompress_into(&compressed, &mut data);
        if decompressed.is_err() {
            self.release_prefetched(loc);
        }
        decompressed.map_err(|e| {
            CacheError::Corrupt(format!(
                "{}: frame at offset {}: {e}",
                self.storage.describe(&pack),
                loc.frame_offset
            ))
        })?;
        self.frames_decompressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = Arc::new(data);
        let mut fc = self.frames.lock().expect("frame cache");
        if fc.frames.insert(key, data.clone()).is_none() {
            fc.order.push_back(key);
            // Counted by what the frame holds, not by its length: a reused buffer can be
            // larger than its frame.
            fc.bytes += data.capacity();
            while fc.bytes > fc.budget {
                let Some(old) = fc.order.pop_front() else {
                    break;
                };
                if let Some(f) = fc.frames.remove(&old) {
                    fc.bytes -= f.capacity();
                    // Kept for the next frame unless a reader still holds it.
                    if let Ok(v) = Arc::try_unwrap(f) {
                        if fc.spare.len() < SPARE_FRAMES {
                            fc.spare.push(v);
                        }
                    }
                }
            }
        }
        drop(fc);
        self.release_prefetched(loc);
        Ok(data)
    }

    /// Read an object that fits in memory (a tree or a small blob), checked against its id.
    ///
    /// # Errors
    /// [`CacheError::Missing`], or [`CacheError::Corrupt`] when the bytes do not match.
    pub fn read_small(&self, id: impl Into<ObjectId>) -> Result<Vec<u8>, CacheError> {
        let id = id.into();
        let loc = self.location(id).ok_or(CacheError::Missing(id))?;
        self.read_small_at(id, loc)
    }

    /// [`Cache::read_small`] of an object whose location the caller has.
    ///
    /// # Errors
    /// As [`Cache::read_small`].
    pub(super) fn read_small_at(&self, id: ObjectId, loc: Location) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::new();
        self.stream_located(id, loc, true, None, &mut |chunk| {
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
        id: &BlobId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        self.stream_checking((*id).into(), true, Some(ObjectKind::Blob), sink)
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
        id: &BlobId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        self.stream_checking((*id).into(), false, Some(ObjectKind::Blob), sink)
    }

    /// `want`: the kind the caller asked for, when it asked for one; an object the index
    /// lists as another kind is damaged (a blob listed as a tree would skip the check).
    fn stream_checking(
        &self,
        id: ObjectId,
        check: bool,
        want: Option<ObjectKind>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        let loc = self.location(id).ok_or(CacheError::Missing(id))?;
        self.stream_located(id, loc, check, want, sink)
    }

    /// [`Cache::stream`] of an object whose location the caller has (from
    /// [`Cache::object_at`] or [`Cache::locate`]): no second index lookup.
    ///
    /// # Errors
    /// As [`Cache::stream`].
    pub fn stream_at(
        &self,
        id: &BlobId,
        loc: Location,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        self.stream_located((*id).into(), loc, true, Some(ObjectKind::Blob), sink)
    }

    /// The body of [`Cache::stream_checking`], the location found.
    pub(super) fn stream_located(
        &self,
        id: ObjectId,
        loc: Location,
        check: bool,
        want: Option<ObjectKind>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        check_kind(id, &loc, want)?;
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
            if check && BlobId::of(bytes).0 != id.0 {
                return Err(CacheError::Corrupt(format!(
                    "blob {id}: content does not match its id"
                )));
            }
            return sink(bytes).map_err(|e| sink_err(e).into());
        }
        let pack = pack_key(&self.pack_id(loc.pack));
        let raw: Box<dyn Read + Send + '_> = match self.prefetched(&loc)? {
            Some(frames) => Box::new(io::Cursor::new(frames)),
            None => self
                .storage
                .get_range(&pack, loc.frame_offset, loc.frame_len)?,
        };
        // One or more frames (see CHUNK); the decoder reads across frame boundaries.
        let mut dec = zstd::stream::read::Decoder::new(raw)
            .map_err(|e| StorageError(self.storage.describe(&pack), e))?;
        // A writer's frames hold at most CHUNK bytes each, so need no larger window: a
        // hostile frame asking for more (zstd's default limit is 128 MiB) is refused.
        dec.window_log_max(SOLO_WINDOW_LOG)
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
        if total != loc.len || (check && *hasher.finalize().as_bytes() != id.0) {
            return Err(CacheError::Corrupt(format!(
                "blob {id}: content does not match its id"
            )));
        }
        Ok(())
    }
}

/// An object the index lists as another kind than the one asked for is damaged.
pub(super) fn check_kind(
    id: ObjectId,
    loc: &Location,
    want: Option<ObjectKind>,
) -> Result<(), CacheError> {
    match want {
        Some(kind) if kind != loc.kind => Err(CacheError::Corrupt(format!(
            "object {id}: the index lists it as a {}, asked for as a {}",
            loc.kind.name(),
            kind.name()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IndexFile, IndexId, PackId};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_of_small_objects_longer_than_any_is_refused_before_it_is_read() {
        // A sparse pack of 512 MiB, 16 bytes on disk, and an index claiming all of it for
        // one 10-byte object: refused without reading (it took 1 GiB).
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let pid = PackId([7; 32]);
        let len: u64 = 512 << 20;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(dir.path().join(pack_key(&pid))).unwrap();
            f.write_all(&crate::cache::format::header(crate::cache::PACK_MAGIC))
                .unwrap();
            f.set_len(16 + len).unwrap();
        }
        let blob = BlobId([9; 32]);
        let loc = Location {
            kind: ObjectKind::Blob,
            pack: 0,
            frame_offset: 16,
            frame_len: len,
            offset: 0,
            len: 10,
        };
        let file = IndexFile {
            packs: vec![pid],
            entries: vec![(blob.into(), loc)],
        };
        cache.merge_index(IndexId([1; 32]), file);
        let err = cache.read_small(blob).unwrap_err().to_string();
        assert!(
            err.contains("more than a frame of small objects takes"),
            "{err}"
        );
    }

    #[test]
    fn an_object_listed_as_another_kind_than_asked_for_is_damaged() {
        // Blob b's bytes listed under blob a's id, as a tree: streaming a as a blob must
        // not skip the check that its bytes are a's.
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let (wanted, other) = (
            b"the genuine bytes".to_vec(),
            b"bytes of an attacker".to_vec(),
        );
        let (a, b) = (BlobId::of(&wanted), BlobId::of(&other));
        let packer = super::super::Packer::new(&cache, 3);
        assert!(packer.claim(b));
        packer.add(ObjectKind::Blob, b, &other).unwrap();
        packer.finish().unwrap();
        let cache = Cache::open_dir_read_only(dir.path());
        let loc_b = cache.location(b).unwrap();
        let pack = cache.packs()[0];
        for (kind, n) in [(ObjectKind::Blob, 1u8), (ObjectKind::Tree, 2)] {
            let c = Cache::open_dir_read_only(dir.path());
            let file = IndexFile {
                packs: vec![pack],
                entries: vec![(a.into(), Location { kind, ..loc_b })],
            };
            c.merge_index(IndexId([n; 32]), file);
            let mut got = Vec::new();
            let r = c.stream(&a, &mut |chunk| {
                got.extend_from_slice(chunk);
                Ok(())
            });
            assert!(r.is_err(), "{kind:?}: handed out {got:?} as checked");
            let tree = super::super::TreeId(a.0);
            if kind == ObjectKind::Blob {
                let e = c.read_tree(&tree).unwrap_err().to_string();
                assert!(e.contains("lists it as a blob, asked for as a tree"), "{e}");
            }
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(128))]
        // Whatever a pack holds and an index claims about it, reading objects fails cleanly
        // or yields bytes; it never panics nor allocates beyond the frame bounds.
        #[test]
        fn the_pack_reader_survives_any_pack_and_any_locations(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            zstd_frames in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..3000), 0..3),
            locs in proptest::collection::vec(
                (any::<bool>(), 0u64..9000, 0u64..9000, 0u64..2_000_000, 0u64..600_000), 1..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::open_dir(dir.path()).unwrap();
            let mut pack = super::super::format::header(super::super::PACK_MAGIC).to_vec();
            for f in &zstd_frames {
                pack.extend(zstd::bulk::compress(f, 1).unwrap());
            }
            pack.extend(&body);
            let pid = PackId(*blake3::hash(&pack).as_bytes());
            cache.storage().put_if_absent(&super::super::pack_key(&pid), &pack).unwrap();
            let entries: Vec<(ObjectId, Location)> = locs
                .iter()
                .enumerate()
                .map(|(i, &(tree, frame_offset, frame_len, offset, len))| {
                    (ObjectId([i as u8; 32]), Location {
                        kind: if tree { ObjectKind::Tree } else { ObjectKind::Blob },
                        pack: 0,
                        frame_offset,
                        frame_len,
                        offset,
                        len,
                    })
                })
                .collect();
            cache.merge_index(IndexId([0; 32]), IndexFile { packs: vec![pid], entries: entries.clone() });
            for (id, loc) in entries {
                if loc.kind == ObjectKind::Tree {
                    let _ = cache.read_tree(&super::super::TreeId(id.0));
                } else {
                    let blob = BlobId(id.0);
                    let mut n = 0u64;
                    let r = cache.stream_unchecked(&blob, &mut |c| {
                        n += c.len() as u64;
                        Ok(())
                    });
                    prop_assert!(n <= loc.len.max(SOLO_THRESHOLD));
                    let _ = r;
                    let _ = cache.read_small(blob);
                }
            }
        }
    }
}
