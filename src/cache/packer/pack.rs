//! One pack being written ([`OpenPack`]), the per-thread zstd contexts that compress its
//! frames, and [`Packer::add_reader`], which streams one large object into a pack of its own
//! a few chunks at a time (memory bounded whatever the object's size).

use std::io::{self, Read, Write};

use super::Packer;
use crate::cache::{CacheError, Location, ObjectId, ObjectKind, ObjectWriter, StorageError, CHUNK};
use crate::scratch::Scratch;

thread_local! {
    /// Each thread's compression context, kept between frames: a fresh one per frame costs
    /// its allocation and the kernel's zeroing of its pages every time.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compress `data` as one zstd frame at `level` with this thread's context, into a buffer
/// borrowed from this thread's spares (a fresh one per frame is pages to fault in each time).
pub(super) fn compress(data: &[u8], level: i32) -> io::Result<Scratch> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if !matches!(&*c, Some((l, _)) if *l == level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, z) = c.as_mut().expect("set above");
        let mut out = Scratch::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        z.compress_to_buffer(data, &mut *out)?;
        Ok(out)
    })
}

/// Compress `data` as consecutive zstd frames of [`CHUNK`] bytes of content each, in parallel.
pub(super) fn compress_chunked(data: &[u8], level: i32) -> io::Result<Vec<Scratch>> {
    use rayon::prelude::*;
    data.par_chunks(CHUNK).map(|c| compress(c, level)).collect()
}

pub(super) struct OpenPack<'c> {
    pub(super) file: Box<dyn ObjectWriter + 'c>,
    pub(super) hasher: blake3::Hasher,
    pub(super) len: u64,
    pub(super) entries: Vec<(ObjectId, Location)>,
}

impl OpenPack<'_> {
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all(bytes)
            .map_err(|e| StorageError(format!("new pack {}", self.file.describe()), e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub(super) fn push_entry(
        &mut self,
        id: ObjectId,
        kind: ObjectKind,
        frame_offset: u64,
        frame_len: u64,
        offset: u64,
        len: u64,
    ) {
        self.entries.push((
            id,
            Location {
                kind,
                pack: 0,
                frame_offset,
                frame_len,
                offset,
                len,
            },
        ));
    }
}

impl Packer<'_> {
    /// Add a claimed object of `len` bytes read from `r` (streamed, not held in memory), in a
    /// pack of its own: its frames are written once, straight into that pack, while other
    /// threads go on appending to the shared pack. Returns false, adding nothing, when a blob
    /// read from `r` does not hash to `id` (the file changed since it was hashed).
    ///
    /// # Errors
    /// [`CacheError::Storage`] when reading `r` or writing the pack fails, or when `r` does not
    /// yield exactly `len` bytes.
    pub fn add_reader(
        &self,
        kind: ObjectKind,
        id: impl Into<ObjectId>,
        len: u64,
        r: &mut dyn Read,
    ) -> Result<bool, CacheError> {
        let id = id.into();
        let err = |e: io::Error| CacheError::Storage(StorageError(format!("object {id}"), e));
        let mut pack = self.new_pack()?;
        let frame_offset = pack.len;
        // A few chunks at a time: bounded memory, and the chunks compress in parallel.
        let batch = CHUNK * rayon::current_num_threads().clamp(1, 4);
        let mut buf = Scratch::with_capacity(batch.min(len as usize));
        let mut copied = 0u64;
        let mut hasher = blake3::Hasher::new();
        loop {
            buf.clear();
            let n = r.take(batch as u64).read_to_end(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > len {
                break;
            }
            if kind == ObjectKind::Blob {
                hasher.update(&buf);
            }
            for frame in compress_chunked(&buf, self.level).map_err(err)? {
                pack.write(&frame)?;
            }
        }
        if copied != len {
            return Err(err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file changed size while being saved ({copied} bytes, expected {len})"),
            )));
        }
        if kind == ObjectKind::Blob && ObjectId(*hasher.finalize().as_bytes()) != id {
            return Ok(false);
        }
        let frame_len = pack.len - frame_offset;
        pack.push_entry(id, kind, frame_offset, frame_len, 0, len);
        let mut st = self.state.lock().expect("pack state");
        st.stats.objects += 1;
        st.stats.raw_bytes += len;
        st.stats.packed_bytes += frame_len;
        self.commit_pack(&mut st, pack)?;
        Ok(true)
    }
}
