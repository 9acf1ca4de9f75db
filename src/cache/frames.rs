//! Reading objects out of packs: zstd frames fetched by range, decompressed with a context
//! kept per thread, and kept in a small LRU cache (a restore writes one path at a time per
//! thread, and a path's small files share frames). Every byte handed out is checked against
//! its id, except by [`Cache::stream_unchecked`], whose callers verify by other means.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::Arc;

use super::{
    pack_key, BlobId, Cache, CacheError, Location, ObjectId, ObjectKind, StorageError,
    MAX_BATCH_FRAME, SOLO_THRESHOLD,
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

/// Decompressed frames kept for reuse.
const FRAME_CACHE_BYTES: usize = 24 * 1024 * 1024;

/// Buffers of evicted frames kept for reuse.
const SPARE_FRAMES: usize = 4;

pub(super) struct FrameCache {
    frames: HashMap<(u32, u64), Arc<Vec<u8>>>,
    order: VecDeque<(u32, u64)>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl FrameCache {
    pub(super) fn new() -> Self {
        FrameCache {
            frames: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            spare: Vec::new(),
        }
    }
}

impl Cache {
    fn frame(&self, loc: &Location) -> Result<Arc<Vec<u8>>, CacheError> {
        let key = (loc.pack, loc.frame_offset);
        if let Some(f) = self.frames.lock().expect("frame cache").frames.get(&key) {
            return Ok(f.clone());
        }
        let pack = pack_key(&self.pack_id(loc.pack));
        let mut compressed = crate::scratch::Scratch::empty();
        self.storage
            .get_range(&pack, loc.frame_offset, loc.frame_len)?
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
    pub fn read_small(&self, id: impl Into<ObjectId>) -> Result<Vec<u8>, CacheError> {
        let mut out = Vec::new();
        self.stream_checking(id.into(), true, &mut |chunk| {
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
        self.stream_checking((*id).into(), true, sink)
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
        self.stream_checking((*id).into(), false, sink)
    }

    fn stream_checking(
        &self,
        id: ObjectId,
        check: bool,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        let loc = self.location(id).ok_or(CacheError::Missing(id))?;
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
        let raw = self
            .storage
            .get_range(&pack, loc.frame_offset, loc.frame_len)?;
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
        if total != loc.len || (check && *hasher.finalize().as_bytes() != id.0) {
            return Err(CacheError::Corrupt(format!(
                "blob {id}: content does not match its id"
            )));
        }
        Ok(())
    }
}
