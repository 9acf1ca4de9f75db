//! The data path of a copy: frames read from the source by coalesced ranged reads, every
//! object in them checked against its id as the bytes pass, and the compressed bytes written
//! unchanged into packs of the target. A pack is committed only when the target lacks it:
//! the same frames in the same order make the same pack (its name is the BLAKE3 of its
//! bytes), so a copy run again after an interruption uploads nothing that already landed.

use std::io::{self, Read, Write};

use super::super::format::header;
use super::super::id::TreeId;
use super::super::tree::is_tree;
use super::super::{
    pack_key, BlobId, Cache, CacheError, IndexFile, Location, ObjectId, ObjectKind, PackId,
    StorageError, MAX_BATCH_COMPRESSED, MAX_BATCH_FRAME, PACK_MAGIC,
};
use crate::progress::Progress;

/// Frames of one source pack closer than this are fetched by one ranged read, the bytes
/// between them read and dropped.
pub const MAX_GAP: u64 = 256 << 10;
/// A ranged read spans at most this many bytes (more frames: another read).
pub const MAX_RUN: u64 = 64 << 20;
/// Largest window (log2) of a frame of a large object: 8 MiB, as [`Cache::stream`] allows.
const SOLO_WINDOW_LOG: u32 = 23;

/// One zstd frame (or, for a large object, the run of frames holding it) of a source pack.
#[derive(Debug, Clone)]
pub(super) struct Frame {
    /// Its source pack.
    pub pack: PackId,
    /// Byte range in the source pack.
    pub offset: u64,
    pub len: u64,
    /// The objects to index from it: id, kind, offset and length in the decompressed frame.
    pub objects: Vec<(ObjectId, ObjectKind, u64, u64)>,
}

impl Frame {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
    /// Whether this is the frames of one large object, streamed rather than held.
    fn solo(&self) -> bool {
        self.objects.len() == 1 && self.objects[0].3 >= super::super::SOLO_THRESHOLD
    }
}

/// What writing one group of frames did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Written {
    /// Packs committed to the target.
    pub packs: u64,
    /// Packs the target held already (not uploaded again).
    pub packs_present: u64,
    /// Bytes of frames read from the source.
    pub bytes_read: u64,
    /// Bytes of packs committed to the target.
    pub bytes_written: u64,
}

/// Copy `frames` (sorted by source pack and offset, none overlapping) into ONE new pack of
/// `target`, checking every object, and add its objects to `index`.
///
/// # Errors
/// [`CacheError::Corrupt`] naming the source object or pack when a check fails (nothing of
/// this pack is committed), [`CacheError::Storage`] for a failed read or write.
pub(super) fn copy_group(
    source: &Cache,
    target: &Cache,
    frames: &[Frame],
    index: &mut IndexFile,
    progress: &dyn Progress,
) -> Result<Written, CacheError> {
    let mut w = target.storage().writer()?;
    let describe = w.describe();
    let werr = |e: io::Error| StorageError(format!("new pack {describe}"), e);
    let mut out = HashingWriter {
        inner: &mut w,
        hasher: blake3::Hasher::new(),
        len: 0,
    };
    out.write_all(&header(PACK_MAGIC)).map_err(werr)?;
    let mut entries: Vec<(ObjectId, Location)> = Vec::new();
    let mut done = Written::default();
    let mut i = 0;
    while i < frames.len() {
        // A run: frames of one source pack close together, fetched by one ranged read.
        let mut j = i + 1;
        while j < frames.len()
            && frames[j].pack == frames[i].pack
            && frames[j].offset >= frames[j - 1].end()
            && frames[j].offset - frames[j - 1].end() <= MAX_GAP
            && frames[j].end() - frames[i].offset <= MAX_RUN
        {
            j += 1;
        }
        let run = &frames[i..j];
        let key = pack_key(&run[0].pack);
        let what = source.storage().describe(&key);
        let start = run[0].offset;
        let span = run[run.len() - 1].end() - start;
        let mut reader = source.storage().get_range(&key, start, span)?;
        let rerr = |e: io::Error| CacheError::Storage(StorageError(what.clone(), e));
        let mut at = start;
        for f in run {
            io::copy(&mut (&mut reader).take(f.offset - at), &mut io::sink()).map_err(rerr)?;
            let frame_offset = out.len;
            copy_frame(&mut reader, f, &mut out, &what)?;
            at = f.end();
            done.bytes_read += f.len;
            progress.advance(f.len);
            entries.extend(f.objects.iter().map(|&(id, kind, offset, len)| {
                (
                    id,
                    Location {
                        kind,
                        pack: 0,
                        frame_offset,
                        frame_len: f.len,
                        offset,
                        len,
                    },
                )
            }));
        }
        i = j;
    }
    let (id, len) = (PackId(*out.hasher.finalize().as_bytes()), out.len);
    w.flush().map_err(werr)?;
    let key = pack_key(&id);
    if target.storage().size(&key)? == Some(len) {
        // Content-addressed: an object of this name and size holds these bytes. Dropping the
        // writer discards what it spooled.
        drop(w);
        done.packs_present += 1;
    } else {
        w.commit(&key)?;
        done.packs += 1;
        done.bytes_written += len;
    }
    let no = index.packs.len() as u32;
    index.packs.push(id);
    index.entries.extend(
        entries
            .into_iter()
            .map(|(o, l)| (o, Location { pack: no, ..l })),
    );
    Ok(done)
}

/// Read frame `f` from `reader` (positioned at its start) into `out`, checking its objects.
fn copy_frame(
    reader: &mut dyn Read,
    f: &Frame,
    out: &mut HashingWriter<'_>,
    what: &str,
) -> Result<(), CacheError> {
    let corrupt =
        |why: String| CacheError::Corrupt(format!("{what}: frame at {}: {why}", f.offset));
    let werr = |e: io::Error| CacheError::Storage(StorageError("new pack".into(), e));
    // A reader reads an object of 256 KiB or more as frames of its own, from their first
    // byte: one sharing its frame, or not at its start, would be copied, named and unreadable.
    let large = |o: &(ObjectId, ObjectKind, u64, u64)| o.3 >= super::super::SOLO_THRESHOLD;
    if f.objects.iter().any(large) && !(f.solo() && f.objects[0].2 == 0) {
        let (id, ..) = f
            .objects
            .iter()
            .copied()
            .find(large)
            .expect("a large object");
        return Err(corrupt(format!(
            "object {id}: 256 KiB or more, in a frame shared or not at its start"
        )));
    }
    if f.solo() {
        let (id, kind, _, len) = f.objects[0];
        // A tree of 256 KiB or more (a path of a few thousand files) has frames of its own
        // too: hashed under both tree contexts, it is its id when either gives it.
        let what_kind = kind.name();
        if kind == ObjectKind::Tree && len > super::super::decode::MAX_TREE_BYTES {
            return Err(corrupt(format!(
                "tree {id}: {len} bytes, more than a tree may have"
            )));
        }
        let mut hashers: Vec<blake3::Hasher> = match kind {
            ObjectKind::Blob => vec![blake3::Hasher::new()],
            ObjectKind::Tree => super::super::tree::tree_id_hashers().to_vec(),
        };
        // Compressed bytes go to the pack as the decoder pulls them; the content is hashed.
        let mut tee = Tee {
            inner: reader.take(f.len),
            out,
            write_error: None,
            read_error: None,
        };
        let mut total = 0u64;
        let mut undecodable = None;
        {
            let mut dec = zstd::stream::read::Decoder::new(&mut tee).map_err(werr)?;
            dec.window_log_max(SOLO_WINDOW_LOG).map_err(werr)?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match dec.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        undecodable = Some(e);
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > len {
                    break;
                }
                for h in &mut hashers {
                    h.update(&buf[..n]);
                }
            }
        }
        // Whatever the decoder left unread still belongs to the frame's bytes.
        let drained = match undecodable {
            None => io::copy(&mut tee, &mut io::sink()).err(),
            Some(_) => None,
        };
        // The decoder sees a failed write to the target, or a failed read of the source, as
        // a read error: each is said as what it is, not as damage of the source.
        if let Some(e) = tee.write_error.take() {
            return Err(werr(e));
        }
        if let Some(e) = tee.read_error.take() {
            return Err(CacheError::Storage(StorageError(what.into(), e)));
        }
        if let Some(e) = undecodable.or(drained) {
            return Err(corrupt(format!("{what_kind} {id}: {e}")));
        }
        if tee.inner.limit() != 0 {
            return Err(corrupt("the pack ends inside it".into()));
        }
        if total != len || !hashers.iter().any(|h| *h.finalize().as_bytes() == id.0) {
            return Err(corrupt(format!(
                "{what_kind} {id}: content does not match its id"
            )));
        }
        return Ok(());
    }
    if f.len > MAX_BATCH_COMPRESSED {
        return Err(corrupt(format!(
            "{} bytes, more than a frame of small objects may take",
            f.len
        )));
    }
    let mut frame = Vec::with_capacity(f.len as usize);
    reader
        .take(f.len)
        .read_to_end(&mut frame)
        .map_err(|e| CacheError::Storage(StorageError(what.into(), e)))?;
    if frame.len() as u64 != f.len {
        return Err(corrupt("the pack ends inside it".into()));
    }
    let data = super::super::decode::decompress_bounded(&frame, MAX_BATCH_FRAME as usize)
        .map_err(&corrupt)?;
    for &(id, kind, offset, len) in &f.objects {
        let bytes = offset
            .checked_add(len)
            .filter(|&e| e <= data.len() as u64)
            .map(|e| &data[offset as usize..e as usize])
            .ok_or_else(|| corrupt(format!("object {id}: range outside its frame")))?;
        let ok = match kind {
            ObjectKind::Blob => BlobId::of(bytes).0 == id.0,
            ObjectKind::Tree => is_tree(&TreeId(id.0), bytes),
        };
        if !ok {
            return Err(corrupt(format!(
                "object {id}: content does not match its id"
            )));
        }
    }
    out.write_all(&frame).map_err(werr)
}

/// The pack being written, hashed and counted as it goes.
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
    len: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that also writes what it reads to the pack; a failed write, or a failed read
/// of the source, is kept for the caller (the decoder reports either as its own read error).
struct Tee<'a, 'b, R> {
    inner: io::Take<R>,
    out: &'a mut HashingWriter<'b>,
    write_error: Option<io::Error>,
    read_error: Option<io::Error>,
}

impl<R: Read> Read for Tee<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let seen = io::Error::new(e.kind(), e.to_string());
                self.read_error = Some(e);
                return Err(seen);
            }
        };
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let msg = e.to_string();
            self.write_error = Some(e);
            return Err(io::Error::other(format!("writing the new pack: {msg}")));
        }
        Ok(n)
    }
}
