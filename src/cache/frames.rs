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

thread_local! {
    /// Each thread's streaming context for [`decompress_prefix`], kept between frames.
    static PREFIX_DECOMPRESSOR: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compressed bytes handed to the decoder at a time by [`decompress_prefix`]: it stops within
/// a block or two of what was asked.
const PREFIX_STEP: usize = 16 * 1024;

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// Decompress the start of one frame into `out` (whose spare capacity holds the size the
/// frame declares), until it holds `want` bytes or more; whether the whole frame was
/// decompressed. Bytes after the frame (more frames) send it to [`decompress_into`], so that
/// what a frame yields never depends on how much of it was asked for.
fn decompress_prefix(frame: &[u8], out: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};
    let whole = PREFIX_DECOMPRESSOR.with(|d| -> io::Result<Option<bool>> {
        let mut d = d.borrow_mut();
        let dctx = match &mut *d {
            Some(c) => c,
            None => {
                let mut c = DCtx::create();
                // Decoded straight into `out`, which holds the whole frame: no window buffer.
                c.set_parameter(DParameter::StableOutBuffer(true))
                    .map_err(zstd_error)?;
                d.insert(c)
            }
        };
        dctx.reset(ResetDirective::SessionOnly)
            .map_err(zstd_error)?;
        out.clear();
        let mut output = OutBuffer::around(out);
        let mut fed = 0;
        loop {
            let end = (fed + PREFIX_STEP).min(frame.len());
            let mut input = InBuffer {
                src: &frame[..end],
                pos: fed,
            };
            let before = (fed, output.pos());
            let hint = dctx
                .decompress_stream(&mut output, &mut input)
                .map_err(zstd_error)?;
            fed = input.pos;
            if hint == 0 {
                // The frame ended: whole, unless more bytes follow it.
                return Ok((fed == frame.len()).then_some(true));
            }
            if output.pos() >= want {
                return Ok(Some(false));
            }
            if fed == frame.len() || (fed, output.pos()) == before {
                return Err(io::Error::other("truncated frame"));
            }
        }
    })?;
    match whole {
        Some(whole) => Ok(whole),
        None => {
            out.clear();
            decompress_into(frame, out).map(|_| true)
        }
    }
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

/// A decompressed frame, and whether it is whole (else its start, as far as an object in it
/// was asked for).
type Kept = (Arc<Vec<u8>>, bool);

pub(super) struct FrameCache {
    /// Frames by (pack, offset).
    frames: HashMap<(u32, u64), Kept>,
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

    /// The frame `key` if it is kept and decompressed up to `want` at least.
    fn serving(&self, key: (u32, u64), want: u64) -> Option<Arc<Vec<u8>>> {
        self.frames
            .get(&key)
            .filter(|(f, whole)| *whole || f.len() as u64 >= want)
            .map(|(f, _)| f.clone())
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
        // The end of the object in the frame: a frame decompressed that far serves it.
        let want = loc.offset.saturating_add(loc.len);
        // A frame whose start is kept is decompressed whole: objects of one frame are mostly
        // read in order, and a second start would cost more than the rest of the frame.
        let extend = {
            let fc = self.frames.lock().expect("frame cache");
            if let Some(f) = fc.serving(key, want) {
                return Ok(f);
            }
            fc.frames.contains_key(&key)
        };
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
            if let Some(f) = self.frames.lock().expect("frame cache").serving(key, want) {
                return Ok(f);
            }
            self.storage
                .get_range(&pack, loc.frame_offset, loc.frame_len)?
                .read_to_end(&mut compressed)
                .map_err(|e| StorageError(self.storage.describe(&pack), e))?;
        }
        // The size the frame declares (ours do), within the bound of a batch frame: a small
        // frame (the last of a save, a few trees) does not hold a full frame's memory.
        let known = zstd::zstd_safe::get_frame_content_size(&compressed)
            .ok()
            .flatten()
            .filter(|&n| n <= MAX_BATCH_FRAME);
        let declared = known.unwrap_or(MAX_BATCH_FRAME) as usize;
        // Only the frame's start, up to the object, when the object is past the frame's first
        // and within its first three quarters: a restore of paths whose files come from many
        // saves reads one small file from many a frame before the frame cache lets it go,
        // while a reader starting at the first object reads on (pack order). Not from a
        // remote cache, whose frames are fetched once (see `prefetch`): an object further in
        // would fetch the frame again.
        let prefix = known.is_some()
            && !extend
            && !self.storage.remote()
            && loc.offset > 0
            && want.saturating_mul(4) <= declared as u64 * 3;
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
        let decompressed = if prefix {
            decompress_prefix(&compressed, &mut data, want as usize)
        } else {
            decompress_into(&compressed, &mut data).map(|_| true)
        };
        if decompressed.is_err() {
            self.release_prefetched(loc);
        }
        let whole = decompressed.map_err(|e| {
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
        let kept = fc
            .frames
            .get(&key)
            .map(|(f, w)| *w || f.len() >= data.len());
        if kept == Some(false) {
            // A start of the frame cached before: this one is longer.
            let (old, _) = fc
                .frames
                .insert(key, (data.clone(), whole))
                .expect("present");
            fc.bytes = fc.bytes - old.capacity() + data.capacity();
        }
        if kept.is_none() {
            fc.frames.insert(key, (data.clone(), whole));
            fc.order.push_back(key);
            // Counted by what the frame holds, not by its length: a reused buffer can be
            // larger than its frame.
            fc.bytes += data.capacity();
            while fc.bytes > fc.budget {
                let Some(old) = fc.order.pop_front() else {
                    break;
                };
                if let Some((f, _)) = fc.frames.remove(&old) {
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

    /// 900 KB that compress about 4 to 1, as store files do.
    fn compressible(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_u32;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 4 == 0 {
                    (x % 251) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect()
    }

    #[test]
    fn the_start_of_a_frame_is_its_prefix_and_anything_else_gives_the_whole_frame_or_an_error() {
        let data = compressible(900_000);
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let with_room = || Vec::with_capacity(data.len());
        // The start: at least what was asked, far less than the frame, and its prefix.
        let mut out = with_room();
        assert!(!decompress_prefix(&frame, &mut out, 1_000).unwrap());
        assert!(
            out.len() >= 1_000 && out.len() < data.len() / 2,
            "{}",
            out.len()
        );
        assert_eq!(out[..], data[..out.len()]);
        // Asked for all of it: the whole frame.
        let mut out = with_room();
        assert!(decompress_prefix(&frame, &mut out, data.len()).unwrap());
        assert_eq!(out, data);
        // Another frame after it: what decompressing the whole gives (here: no room).
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut out = with_room();
        let mut whole = with_room();
        assert_eq!(
            decompress_prefix(&two, &mut out, data.len()).is_ok(),
            decompress_into(&two, &mut whole).is_ok()
        );
        // Cut short, or damaged: an error, not a short frame.
        let mut out = with_room();
        assert!(decompress_prefix(&frame[..frame.len() - 100], &mut out, data.len()).is_err());
        let mut bad = frame.clone();
        let n = bad.len();
        bad[n / 2..n / 2 + 64].fill(0x55);
        let mut out = with_room();
        assert!(decompress_prefix(&bad, &mut out, data.len()).is_err());
    }

    #[test]
    fn an_object_inside_a_frame_read_first_decompresses_the_frame_only_up_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let packer = super::super::Packer::new(&cache, 3);
        let mut path = super::super::PathFrames::default();
        let data = compressible(900_000);
        let mut ids = Vec::new();
        for piece in data.chunks(9_000) {
            assert!(packer.claim(BlobId::of(piece)));
            packer
                .add_to(&mut path, ObjectKind::Blob, BlobId::of(piece), piece)
                .unwrap();
            ids.push(BlobId::of(piece));
        }
        packer.finish_path(path).unwrap();
        packer.finish().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let frame = |id: &BlobId| {
            let l = cache.location(*id).unwrap();
            (l.pack, l.frame_offset)
        };
        assert!(
            ids.iter().all(|id| frame(id) == frame(&ids[0])),
            "one frame"
        );
        let read = |i: usize| {
            assert_eq!(
                cache.read_small(ids[i]).unwrap(),
                data.chunks(9_000).nth(i).unwrap()
            );
            cache.frames_decompressed()
        };
        // A tenth in: its start only; the last object: the whole frame, which then serves all.
        assert_eq!(read(10), 1);
        assert_eq!(read(5), 1, "within the start decompressed");
        assert_eq!(read(99), 2);
        for i in 0..100 {
            assert_eq!(read(i), 2);
        }
    }

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
