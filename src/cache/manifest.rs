//! Decoding a snapshot's paths (a v1 body, or a v2 manifest) straight into a [`Snapshot`]:
//! no intermediate copy of every string as bincode's serde path made (the "wire" structs of
//! [`super::format`], about 35 MB at 100,000 paths besides the result), and, for a v2 file,
//! no decompressed manifest either (25 MB at 100,000 paths): the manifest is decoded as it
//! leaves the zstd decoder ([`Stream`]), its digest computed on the way and checked before
//! the snapshot is handed out. A reference shares the string of the path it names (decoded
//! before it), as a DB read's references do: 17 MB less at 100,000 paths of 2.6 references.
//!
//! It accepts exactly what bincode's serde decoding followed by the conversion of the wire
//! structs accepted (the tests of `decode` compare both on round-tripped, mutated and random
//! bodies). Memory stays bounded by the input: every length is checked against what is left
//! before anything is allocated, a string grows with the bytes that arrive, and sequences are
//! reserved for no more entries than the input can hold.

use std::collections::HashMap;
use std::io::Read;

use super::decode::{at, Input, Source};
use super::format::SnapshotHead;
use super::id::TreeId;
use super::snapshot::{Snapshot, SnapshotPath};
use crate::store::layout::Flavor;
use crate::store::path::StorePath;
use crate::store::path_info::{DerivationOutput, NarHash, NixColumns, PathInfo};

/// Fewest bytes one path takes in a manifest: its NAR hash and tree id (32 each) and at
/// least a byte for each other field. A bound on how many entries the bytes left can hold.
const MIN_PATH_BYTES: usize = 64;
/// Fewest bytes a root or a derivation output takes (a length byte each string).
const MIN_ROW_BYTES: usize = 1;
/// Entries reserved up front, whatever a count claims, when the bytes left are not known
/// (a stream): more grow as they come.
const PREALLOC_ROWS: usize = 1024;

/// Bytes the decoder reads at a time.
const CHUNK: usize = 64 << 10;

/// Decompressed bytes of a zstd frame, read [`CHUNK`] at a time as the decoder needs them,
/// hashed as they arrive (for the manifest digest), at most `cap` of them.
pub(super) struct Stream<R: Read> {
    r: R,
    /// Bytes read and not yet consumed: `chunk[start..end]`.
    chunk: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes consumed.
    pos: usize,
    /// Bytes read from `r`, at most `cap`.
    read: usize,
    cap: usize,
    /// A string longer than a chunk, gathered.
    long: Vec<u8>,
    hash: blake3::Hasher,
}

impl<R: Read> Stream<R> {
    fn new(r: R, cap: usize) -> Self {
        Stream {
            r,
            chunk: vec![0; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            pos: 0,
            read: 0,
            cap,
            long: Vec::new(),
            hash: super::format::manifest_hasher(),
        }
    }

    /// Read more after what is left of the chunk (moved to its start); 0 at the end.
    fn fill(&mut self) -> Result<usize, String> {
        if self.start > 0 {
            self.chunk.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = loop {
            match self.r.read(&mut self.chunk[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("zstd: {e}")),
            }
        };
        self.hash.update(&self.chunk[self.end..self.end + n]);
        self.end += n;
        self.read += n;
        if self.read > self.cap {
            return Err(format!("decompresses to more than {} bytes", self.cap));
        }
        Ok(n)
    }

    /// Whether nothing is left.
    fn at_end(&mut self) -> Result<bool, String> {
        Ok(self.start == self.end && self.fill()? == 0)
    }

    /// Read (and hash) the rest, within the cap, so that the digest covers it all.
    fn drain(&mut self) -> Result<(), String> {
        self.start = self.end;
        while self.fill()? > 0 {
            self.start = self.end;
        }
        Ok(())
    }

    /// The digest of every byte read.
    fn digest(&self) -> [u8; 32] {
        *self.hash.finalize().as_bytes()
    }
}

impl<R: Read> Source for Stream<R> {
    fn next(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        let room = self.cap - self.pos;
        if n > room {
            return Err(at(
                self.pos,
                format!("{what}: {n} bytes needed, at most {room} left"),
            ));
        }
        let short = |s: &Self, have: usize| {
            Err(at(s.pos, format!("{what}: {n} bytes needed, {have} left")))
        };
        if n <= CHUNK {
            while self.end - self.start < n {
                if self.fill()? == 0 {
                    return short(self, self.end - self.start);
                }
            }
            let s = self.start;
            self.start += n;
            self.pos += n;
            return Ok(&self.chunk[s..s + n]);
        }
        // Grown as the bytes arrive: a length that lies costs no more than the bytes there.
        self.long.clear();
        loop {
            let k = (self.end - self.start).min(n - self.long.len());
            self.long
                .extend_from_slice(&self.chunk[self.start..self.start + k]);
            self.start += k;
            if self.long.len() == n {
                break;
            }
            if self.fill()? == 0 {
                return short(self, self.long.len());
            }
        }
        self.pos += n;
        Ok(&self.long)
    }

    fn offset(&self) -> usize {
        self.pos
    }
}

/// A store path base name, validated.
fn store_path<S: Source>(s: &mut S, what: &str) -> Result<StorePath, String> {
    StorePath::from_base_name(s.str(what)?).map_err(|e| e.to_string())
}

/// The first 8 bytes of a base name (random characters of its hash part), as a map key.
fn prefix(name: &str) -> u64 {
    name.as_bytes()
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// A `Vec` for `count` entries of at least `min_bytes` each, reserved for no more than the
/// bytes left can hold (`None`: unknown, then at most [`PREALLOC_ROWS`]).
fn reserve<T>(count: usize, left: Option<usize>, min_bytes: usize) -> Vec<T> {
    Vec::with_capacity(room(count, left, min_bytes))
}

/// The entries [`reserve`] reserves room for.
fn room(count: usize, left: Option<usize>, min_bytes: usize) -> usize {
    count.min(left.map_or(PREALLOC_ROWS, |l| l / min_bytes))
}

thread_local! {
    /// A decoded snapshot's path vector given back ([`recycle_paths`]), for the next decode
    /// on this thread.
    static SPARE_PATHS: std::cell::RefCell<Vec<SnapshotPath>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Give the path vector of a snapshot done with back, for the next snapshot this thread
/// decodes (a command decoding many one after another): a fresh vector of 100,000 paths is
/// 27 MB of pages the kernel zeroes again, once the allocator has returned the last one (7%
/// of `verify`'s CPU with 20 snapshots). The caller lets it go with
/// [`release_spare_paths`] when done decoding.
pub fn recycle_paths(mut paths: Vec<SnapshotPath>) {
    paths.clear();
    let _ = SPARE_PATHS.try_with(|s| *s.borrow_mut() = paths);
}

/// Let go of this thread's spare path vector.
pub fn release_spare_paths() {
    let _ = SPARE_PATHS.try_with(|s| *s.borrow_mut() = Vec::new());
}

/// The spare path vector when it has room for `room` paths, else a new one reserved for
/// them.
fn spare_paths(room: usize) -> Vec<SnapshotPath> {
    SPARE_PATHS
        .try_with(|s| {
            let mut s = s.borrow_mut();
            (s.capacity() >= room && s.capacity() > 0).then(|| std::mem::take(&mut *s))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(room))
}

/// What follows a v1 body's header and makes a v2 manifest: roots, paths, derivation outputs.
type Paths = (Vec<StorePath>, Vec<SnapshotPath>, Vec<DerivationOutput>);

/// Decode roots, paths and derivation outputs. `left`: the bytes left in the input when
/// known; `max_paths`: a bound on the paths to reserve room for (a head's count, itself
/// bounded by the caller).
fn read_paths<S: Source>(
    s: &mut S,
    left: Option<usize>,
    max_paths: usize,
) -> Result<Paths, String> {
    let n = s.len("root count")?;
    let mut roots = reserve(n, left, MIN_ROW_BYTES);
    for _ in 0..n {
        roots.push(store_path(s, "root")?);
    }
    let n = s.len("path count")?;
    let room = room(n.min(max_paths), left, MIN_PATH_BYTES);
    let mut paths = spare_paths(room);
    // Position of each path decoded so far, by the first 8 characters of its hash part.
    let mut known: HashMap<u64, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(room, Default::default());
    for _ in 0..n {
        let path = store_path(s, "store path")?;
        let nar_hash = NarHash(s.array32("NAR hash")?);
        let nar_size = s.u64("NAR size")?;
        let registration_time = s.i64("registration time")?;
        let deriver = s.option("deriver", |s| s.str("deriver").map(str::to_owned))?;
        known.entry(prefix(path.base_name())).or_insert(paths.len());
        let k = s.len("reference count")?;
        // Each reference takes at least a byte; past a few, the vector grows as they come.
        let mut references = Vec::with_capacity(k.min(16));
        for _ in 0..k {
            let r = s.str("reference")?;
            // The string of the path it names when decoded already (a reference names a
            // path before it, or itself): one string per path, not one per reference.
            let named = known.get(&prefix(r)).map(|&i| match paths.get(i) {
                Some(p) => &p.info.path,
                None => &path,
            });
            references.push(match named.filter(|p| p.base_name() == r) {
                Some(p) => p.clone(),
                None => StorePath::from_base_name(r).map_err(|e| e.to_string())?,
            });
        }
        let ultimate = s.option("ultimate", |s| s.i64("ultimate"))?;
        let sigs = s.option("sigs", |s| s.str("sigs").map(str::to_owned))?;
        let ca = s.option("ca", |s| s.str("ca").map(str::to_owned))?;
        let tree = TreeId(s.array32("tree id")?);
        paths.push(SnapshotPath {
            info: PathInfo {
                path,
                nar_hash,
                nar_size,
                registration_time,
                deriver,
                references,
                nix: NixColumns::boxed(ultimate, sigs, ca),
            },
            tree,
        });
    }
    let n = s.len("derivation output count")?;
    let mut outputs = reserve(n, left, 3 * MIN_ROW_BYTES);
    for _ in 0..n {
        outputs.push(DerivationOutput {
            drv: store_path(s, "derivation")?,
            id: s.str("output name")?.to_owned(),
            path: s.str("output path")?.to_owned(),
        });
    }
    Ok((roots, paths, outputs))
}

/// Decode a decompressed v1 snapshot body (not yet [`Snapshot::validate`]d).
///
/// # Errors
/// A message for malformed data.
pub fn decode_v1(raw: &[u8]) -> Result<Snapshot, String> {
    let mut i = Input::new(raw);
    let flavor = match i.u32("flavor")? {
        0 => Flavor::Guix,
        1 => Flavor::Nix,
        f => return Err(at(0, format!("flavor: unknown variant {f}"))),
    };
    let store_dir = i.str("store directory")?.to_owned();
    let created = i.i64("creation time")?;
    let tool = i.str("tool")?.to_owned();
    let left = i.left();
    let (roots, paths, derivation_outputs) = read_paths(&mut i, Some(left), usize::MAX)?;
    if i.left() != 0 {
        return Err("trailing bytes after the encoded value".into());
    }
    Ok(Snapshot {
        version: 1,
        key: String::new(),
        flavor,
        store_dir,
        created,
        tool,
        indexes: Vec::new(),
        parent: None,
        roots,
        paths,
        derivation_outputs,
    })
}

/// The snapshot a v2 head and its decoded manifest make, checked against the head's counts.
fn under_head(
    head: SnapshotHead,
    (roots, paths, derivation_outputs): Paths,
) -> Result<Snapshot, String> {
    if paths.len() as u64 != head.paths {
        return Err(format!(
            "head says {} paths, manifest holds {}",
            head.paths,
            paths.len()
        ));
    }
    let snap = Snapshot {
        version: 2,
        key: head.key,
        flavor: head.flavor,
        store_dir: head.store_dir,
        created: head.created,
        tool: head.tool,
        indexes: head.indexes,
        parent: head.parent,
        roots,
        paths,
        derivation_outputs,
    };
    if snap.nar_bytes() != head.nar_bytes {
        return Err("head's NAR byte count differs from the manifest's".into());
    }
    Ok(snap)
}

#[cfg(test)]
/// Decode the decompressed manifest `raw` of a v2 snapshot under its head (not yet
/// [`Snapshot::validate`]d).
///
/// # Errors
/// A message for malformed data, or a manifest that is not the one the head names.
pub fn decode_v2(head: SnapshotHead, raw: &[u8]) -> Result<Snapshot, String> {
    if super::format::manifest_id(raw) != head.manifest {
        return Err("manifest does not match the head's digest".into());
    }
    let mut i = Input::new(raw);
    let max_paths = usize::try_from(head.paths).unwrap_or(usize::MAX);
    let paths = read_paths(&mut i, Some(raw.len()), max_paths)?;
    if i.left() != 0 {
        return Err("trailing bytes after the encoded value".into());
    }
    under_head(head, paths)
}

/// Decode the manifest of a v2 snapshot from its zstd `frame`, decompressing as it goes, at
/// most `cap` bytes of it and with zstd's window held to the smallest power of two at least
/// `cap` (as [`super::decode::decompress_bounded`]). What it accepts and refuses is what
/// decompressing, then [`decode_v2`], accept and refuse; a manifest that differs from the
/// head's digest is reported as such, whatever else is wrong with it.
///
/// # Errors
/// A message for malformed data, or a manifest that is not the one the head names.
pub fn decode_v2_frame(head: SnapshotHead, frame: &[u8], cap: usize) -> Result<Snapshot, String> {
    let mut s = stream(frame, cap)?;
    // A genuine path carries 64 bytes of hashes zstd cannot shrink: reserving for more paths
    // than the frame could hold that way would let a small file stand for a large allocation.
    let max_paths = usize::try_from(head.paths)
        .unwrap_or(usize::MAX)
        .min(frame.len() / MIN_PATH_BYTES + PREALLOC_ROWS);
    let decoded = read_paths(&mut s, None, max_paths).and_then(|p| {
        if s.at_end()? {
            Ok(p)
        } else {
            Err("trailing bytes after the encoded value".into())
        }
    });
    // The digest first, as when the whole manifest was decompressed before it was decoded.
    if let Err(e) = decoded.as_ref() {
        s.drain()?;
        if s.digest() != head.manifest {
            return Err("manifest does not match the head's digest".into());
        }
        return Err(e.clone());
    }
    if s.digest() != head.manifest {
        return Err("manifest does not match the head's digest".into());
    }
    under_head(head, decoded?)
}

/// The tree ids of a v2 snapshot's manifest, read from its zstd `frame` as
/// [`decode_v2_frame`] reads it, without decoding anything else (no string is allocated):
/// what a collection needs of a snapshot. See [`super::decode::manifest_trees_v2`].
///
/// # Errors
/// A message for malformed data, or a manifest that is not the one the head names.
pub fn trees_v2_frame(
    head: &SnapshotHead,
    frame: &[u8],
    cap: usize,
) -> Result<Vec<TreeId>, String> {
    let mut s = stream(frame, cap)?;
    let max_paths = usize::try_from(head.paths)
        .unwrap_or(usize::MAX)
        .min(frame.len() / MIN_PATH_BYTES + PREALLOC_ROWS);
    let mut trees = Vec::with_capacity(max_paths);
    let walked = super::decode::check_manifest(&mut s, &mut |t| {
        trees.push(TreeId(t.try_into().expect("32 bytes")))
    })
    .and_then(|()| {
        if s.at_end()? {
            Ok(())
        } else {
            Err("trailing bytes after the encoded value".into())
        }
    });
    if let Err(e) = walked {
        s.drain()?;
        if s.digest() != head.manifest {
            return Err("manifest does not match the head's digest".into());
        }
        return Err(e);
    }
    if s.digest() != head.manifest {
        return Err("manifest does not match the head's digest".into());
    }
    if trees.len() as u64 != head.paths {
        return Err(format!(
            "head says {} paths, manifest holds {}",
            head.paths,
            trees.len()
        ));
    }
    Ok(trees)
}

/// A [`Stream`] of the decompressed `frame`.
fn stream(frame: &[u8], cap: usize) -> Result<Stream<impl Read + '_>, String> {
    let mut dec =
        zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| format!("zstd: {e}"))?;
    let window_log = (usize::BITS - cap.saturating_sub(1).leading_zeros()).clamp(10, 27);
    dec.window_log_max(window_log)
        .map_err(|e| format!("zstd: {e}"))?;
    Ok(Stream::new(dec, cap))
}
