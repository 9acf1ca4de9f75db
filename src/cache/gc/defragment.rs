//! Step 3b of a collection: defragmenting, so that restoring the newest snapshot reads each
//! frame about once however many saves wrote its objects.
//!
//! A save writes only new objects, in the order of the paths it walks, so after a few
//! upgrades the newest snapshot's small files lie in the frames of every save since the
//! first: a rebuilt path's tree and changed files in the newest save's frames, its unchanged
//! files (and those of the paths a save did not touch) where older saves put them, in their
//! paths' old order. A restore then decompresses many frames several times (measured at
//! 100,000 paths after 19 upgrades: 8,330 frame reads of 331 frames, against one read each for
//! the first snapshot).
//!
//! **Measure** ([`Scatter`], while marking the newest snapshot): the frame reads a restore
//! would make, walking the snapshot's small objects in the order restore writes them (trees
//! in pack order) with a cache of [`FRAMES_HELD`] frames, against the distinct frames.
//!
//! **Defragment** ([`reframe`]), when asked, or by default when the reads exceed
//! [`DEFRAGMENT_ABOVE`] times the frames and by [`DEFRAGMENT_MIN_EXTRA`] frames: every live
//! object under [`SOLO_THRESHOLD`] is written again into new frames, kept snapshots newest
//! first, each in its paths' order (a path's tree, then its small blobs in NAR order, in
//! frames of their own as a save writes them), each object once. Large objects keep their
//! frames (copied whole, as any repack does). The objects are read once, in pack order (each
//! source frame decompressed once), checked against their ids, and written at their place in
//! the new order into a spill file (an anonymous temporary file, as large as the small
//! objects are uncompressed), which is then read front to back into the new frames: work
//! linear in the objects, memory 16 bytes an object. Publishing and deleting then go as for
//! any repack: the new index names the new frames before anything is retired.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::super::{
    Cache, CacheError, Location, ObjectId, ObjectKind, Packer, PathFrames, StorageError, TreeId,
    FRAME_TARGET, SOLO_THRESHOLD,
};
use super::mark::{Bits, Marked};
use super::{FrameKey, GcReport};
use crate::cache::successive::PreviousTrees;
use crate::cache::tree::is_tree;

/// Frames a restore holds decompressed (its frame cache, 16 MiB, over 1 MiB frames).
pub const FRAMES_HELD: usize = crate::restore::FRAME_CACHE_BYTES / FRAME_TARGET as usize;

/// Defragment (by default) when a restore of the newest snapshot would read its frames more
/// than this many times each on average...
pub const DEFRAGMENT_ABOVE: f64 = 2.0;

/// ...and at least this many times more than once (a frame read again costs a restore about
/// 0.3 ms of CPU, measured at 100,000 paths: rewriting a cache for less saves nothing worth
/// its transfer).
pub const DEFRAGMENT_MIN_EXTRA: u64 = 256;

/// Whether a collection defragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Defragment {
    /// When the newest snapshot's frames are scattered (see the module documentation).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The frame reads of a restore of one snapshot, simulated from the locations of its small
/// objects (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Scatter {
    held: VecDeque<FrameKey>,
    seen: HashSet<FrameKey>,
    reads: u64,
}

impl Scatter {
    /// An object the restore reads next.
    pub(super) fn visit(&mut self, loc: &Location) {
        if !moves(loc) {
            return; // streamed from frames of its own, each read once
        }
        let key = (loc.pack, loc.frame_offset);
        if let Some(i) = self.held.iter().position(|k| *k == key) {
            self.held.remove(i);
        } else {
            self.reads += 1;
            self.held.truncate(FRAMES_HELD - 1);
            self.seen.insert(key);
        }
        self.held.push_front(key);
    }

    /// (distinct frames, frame reads).
    pub(super) fn figures(&self) -> (u64, u64) {
        (self.seen.len() as u64, self.reads)
    }
}

/// Whether `how` and the newest snapshot's figures (see [`Scatter::figures`]) call for
/// defragmenting.
pub(super) fn wanted(how: Defragment, frames: u64, reads: u64) -> bool {
    match how {
        Defragment::Always => true,
        Defragment::Never => false,
        Defragment::Auto => {
            reads as f64 > DEFRAGMENT_ABOVE * frames as f64
                && reads.saturating_sub(frames) >= DEFRAGMENT_MIN_EXTRA
        }
    }
}

/// Whether an object is written again by a defragmenting collection.
pub(super) fn moves(loc: &Location) -> bool {
    loc.len < SOLO_THRESHOLD
}

/// The bytes of a small object, checked against its id (blobs and trees alike).
///
/// # Errors
/// [`CacheError`] when it cannot be read or does not match its id.
pub(super) fn read_checked(
    cache: &Cache,
    id: ObjectId,
    loc: Location,
) -> Result<Vec<u8>, CacheError> {
    let bytes = cache.read_small_at(id, loc)?;
    if loc.kind == ObjectKind::Tree && !is_tree(&TreeId(id.0), &bytes) {
        return Err(CacheError::Corrupt(format!(
            "tree {id}: content does not match its id"
        )));
    }
    Ok(bytes)
}

/// One more bit on an index position in the layout: the first object of a path.
const PATH_START: u32 = 1 << 31;

/// The live small objects of the kept snapshots in the order they are written again (index
/// positions, [`PATH_START`] marking each path's first).
///
/// Every tree is read once, all snapshots' together in pack order (tree frames decompressed
/// once each: snapshot by snapshot, the newer ones' trees scattered over many saves' frames
/// made that 1,413 decompressions at 100,000 paths and 20 snapshots), its small blobs
/// recorded; then the paths are laid out snapshot by snapshot, each in its order.
fn layout(cache: &Cache, marked: &Marked) -> Result<Vec<u32>, CacheError> {
    // (tree frame, offset in it, snapshot, rank in its path order, index position): each
    // tree once, for the newest snapshot naming it that the walk of successive lists
    // passes it to.
    let mut trees: Vec<(FrameKey, u64, u32, u32, u32)> = Vec::new();
    let mut queued = Bits::new(cache.object_count());
    let mut previous = PreviousTrees::default();
    let kept = marked.heads.iter().zip(&marked.keep).filter(|(_, k)| **k);
    for (snap, ((r, _), _)) in kept.enumerate() {
        let snap_trees = cache.read_snapshot_trees(r)?;
        let mut rank = 0u32;
        previous.filter(&snap_trees, &mut |tree| {
            let (pos, loc) = cache.locate(tree).ok_or(CacheError::Missing(tree.into()))?;
            if queued.insert(pos) {
                let at = ((loc.pack, loc.frame_offset), loc.offset);
                trees.push((at.0, at.1, snap as u32, rank, pos as u32));
            }
            rank += 1;
            Ok::<(), CacheError>(())
        })?;
        previous.set(snap_trees);
    }
    drop(queued);
    trees.sort_unstable();
    // Each tree's blobs (index positions, NAR order) in `blobs`; its span there by
    // (snapshot, rank) in `spans`.
    let mut blobs: Vec<u32> = Vec::new();
    let mut spans: Vec<(u32, u32, u32, u32, u32)> = Vec::with_capacity(trees.len());
    for &(_, _, snap, rank, pos) in &trees {
        let (id, loc) = cache.object_at(pos as usize);
        let start = blobs.len() as u32;
        let mut missing = None;
        cache.read_tree_at(&TreeId(id.0), loc)?.for_each_file(
            &mut |f| match cache.locate(f.blob) {
                Some((bpos, _)) => blobs.push(bpos as u32),
                None => missing = missing.or(Some(ObjectId::from(f.blob))),
            },
        );
        if let Some(id) = missing {
            return Err(CacheError::Missing(id));
        }
        spans.push((snap, rank, pos, start, blobs.len() as u32));
    }
    drop(trees);
    spans.sort_unstable();
    let mut placed = Bits::new(cache.object_count());
    let mut out: Vec<u32> = Vec::new();
    for &(_, _, tree, start, end) in &spans {
        let mut first = true;
        let objects =
            std::iter::once(tree).chain(blobs[start as usize..end as usize].iter().copied());
        for pos in objects {
            if !placed.insert(pos as usize) || !moves(&cache.object_at(pos as usize).1) {
                continue;
            }
            out.push(if first { pos | PATH_START } else { pos });
            first = false;
        }
    }
    Ok(out)
}

/// Write every live small object of the kept snapshots again through `packer` (see the
/// module documentation); the positions written, so that repacking skips them.
///
/// # Errors
/// [`CacheError`] when a snapshot, tree or object cannot be read or does not match its id,
/// the spill file cannot be written, or the packer fails.
pub(super) fn reframe(
    cache: &Cache,
    packer: &Packer<'_>,
    marked: &Marked,
    report: &mut GcReport,
) -> Result<Bits, CacheError> {
    if cache.object_count() >= PATH_START as usize {
        return Err(CacheError::Corrupt(format!(
            "{} objects indexed: more than a defragmenting collection handles",
            cache.object_count()
        )));
    }
    let order = layout(cache, marked)?;
    let at = |i: usize| cache.object_at((order[i] & !PATH_START) as usize);
    // Where each object goes in the spill file: the objects in layout order, end to end.
    let mut offsets: Vec<u64> = Vec::with_capacity(order.len() + 1);
    let mut total = 0u64;
    for i in 0..order.len() {
        offsets.push(total);
        total += at(i).1.len;
    }
    offsets.push(total);
    // 1. Read in pack order (each frame decompressed once), checked, written in place.
    let spill_err = |e: std::io::Error| {
        CacheError::Storage(StorageError("defragmenting: the spill file".into(), e))
    };
    let spill = tempfile::tempfile().map_err(spill_err)?;
    // Refused at once, rather than a full disk part of the way through.
    let free = rustix::fs::fstatvfs(&spill)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .map_err(|e| spill_err(e.into()))?;
    if total > free {
        return Err(spill_err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "defragmenting needs {total} bytes of temporary space (TMPDIR), {free} are \
                 free"
            ),
        )));
    }
    let mut by_place: Vec<u32> = (0..order.len() as u32).collect();
    by_place.sort_unstable_by_key(|&i| {
        let l = at(i as usize).1;
        (l.pack, l.frame_offset, l.offset)
    });
    for &i in &by_place {
        let (id, loc) = at(i as usize);
        let bytes = read_checked(cache, id, loc)?;
        spill
            .write_all_at(&bytes, offsets[i as usize])
            .map_err(spill_err)?;
    }
    drop(by_place);
    // 2. Read back in layout order, into new frames.
    let mut moved = Bits::new(cache.object_count());
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &spill);
    let mut data: Vec<u8> = Vec::new();
    let mut frames = PathFrames::default();
    for (i, &entry) in order.iter().enumerate() {
        let pos = (entry & !PATH_START) as usize;
        if entry & PATH_START != 0 {
            packer.finish_path(std::mem::take(&mut frames))?;
        }
        let (id, loc) = cache.object_at(pos);
        data.resize((offsets[i + 1] - offsets[i]) as usize, 0);
        reader.read_exact(&mut data).map_err(spill_err)?;
        match loc.kind {
            ObjectKind::Tree => packer.add(ObjectKind::Tree, id, &data)?,
            ObjectKind::Blob => packer.add_to(&mut frames, ObjectKind::Blob, id, &data)?,
        }
        moved.insert(pos);
        report.objects_reframed += 1;
        report.bytes_reframed += data.len() as u64;
    }
    packer.finish_path(frames)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pack: u32, frame: u64) -> Location {
        Location {
            kind: ObjectKind::Blob,
            pack,
            frame_offset: frame,
            frame_len: 100,
            offset: 0,
            len: 10,
        }
    }

    #[test]
    fn a_restore_reads_a_frame_again_only_once_it_has_let_it_go() {
        let mut s = Scatter::default();
        // In order, each frame once, however many objects it holds.
        for f in 0..40u64 {
            for _ in 0..3 {
                s.visit(&at(0, f));
            }
        }
        assert_eq!(s.figures(), (40, 40));
        // Back to a frame still held: no read; to one let go: a read.
        s.visit(&at(0, 39 - FRAMES_HELD as u64 + 1));
        assert_eq!(s.figures(), (40, 40));
        s.visit(&at(0, 0));
        assert_eq!(s.figures(), (40, 41));
        // Large objects are streamed from frames of their own: not counted.
        s.visit(&Location {
            len: SOLO_THRESHOLD,
            ..at(1, 0)
        });
        assert_eq!(s.figures(), (40, 41));
    }

    #[test]
    fn by_default_a_collection_defragments_only_where_reads_are_many_times_the_frames() {
        use Defragment::*;
        assert!(!wanted(Auto, 300, 300));
        assert!(!wanted(Auto, 300, 600)); // twice: not more than twice
        assert!(wanted(Auto, 300, 601));
        // Few frames read again, whatever the ratio: not worth rewriting a cache.
        assert!(!wanted(Auto, 10, 200));
        assert!(wanted(Auto, 10, 10 + DEFRAGMENT_MIN_EXTRA));
        assert!(wanted(Always, 0, 0));
        assert!(!wanted(Never, 10, 100_000));
    }
}
