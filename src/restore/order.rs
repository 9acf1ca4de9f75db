//! The order a restore writes the missing paths in.
//!
//! Large paths first, largest first, so that one does not start last and run alone. The
//! others in batches of consecutive trees in the packs: a batch's trees are read in that order
//! (each tree frame decompressed about once) and held encoded, and the batch is written in the
//! order of the frame holding most of each path's small files, then of its tree; but a path
//! with no small file to read from the cache (its files linked from `.links`, copied from an
//! older build, or large) has no frame to wait for, and goes first, largest first, as large
//! paths do (a warm restore's paths copied from older builds came last, and the largest of
//! them ran alone at the end).
//!
//! Why: a save writes a path's tree and its small files' blobs in the order it walks the
//! paths, so in a cache of one save tree order is blob order. After upgrades it is not: a
//! rebuilt path's new tree, saved later, names its unchanged files' blobs in the frames of an
//! older save (placeholders for references make most of them unchanged), and in tree order
//! those frames come at random, more of them than the frame cache holds. Sorting the whole
//! snapshot by blob frame would read the trees at random instead; a batch bounds what is held
//! (at most [`BATCH_PATHS`] trees and [`BATCH_TREE_BYTES`] of them, plus one tree) while
//! letting the frames of its paths' files be read in runs.

use std::ops::Range;

use crate::cache::{Cache, Location, Node, Snapshot, SOLO_THRESHOLD};
use crate::store::links::{LinksDir, LINKS_MIN_SIZE};

use super::siblings::Sources;

/// Paths of this many NAR bytes or more are written first, largest first.
pub(super) const LARGE_PATH: u64 = 16 << 20;

/// Most trees in a batch.
pub(super) const BATCH_PATHS: usize = 4096;

/// Most encoded tree bytes in a batch (unless its first tree alone is larger).
const BATCH_TREE_BYTES: u64 = 4 << 20;

/// The missing paths (indexes into the snapshot's paths) split for writing.
#[derive(Debug, Default)]
pub(super) struct Order {
    /// Paths of [`LARGE_PATH`] bytes or more, largest first: written with their trees read
    /// when their turn comes.
    pub large: Vec<usize>,
    /// The others, in the order of their trees in the packs (paths whose tree the index
    /// lacks last, by position in the snapshot), cut into `batches`.
    small: Vec<usize>,
    batches: Vec<Range<usize>>,
}

/// Whether a batch holds a tree of `len` bytes: one of a frame of small objects, not a
/// large one (read when its path is written, as a large path's): a batch's buffer is then
/// at most [`BATCH_TREE_BYTES`] and one such tree, whatever lengths an index claims.
fn held(len: u64) -> bool {
    len < SOLO_THRESHOLD
}

/// Cut a run of trees of lengths `lens` into batches of at most `max_trees` trees and
/// `max_bytes` bytes each (a tree larger than that alone in its batch).
fn cut(lens: impl Iterator<Item = u64>, max_trees: usize, max_bytes: u64) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes, mut n) = (0, 0u64, 0);
    for len in lens {
        if n > start && (n - start == max_trees || bytes.saturating_add(len) > max_bytes) {
            batches.push(start..n);
            start = n;
            bytes = 0;
        }
        bytes = bytes.saturating_add(len);
        n += 1;
    }
    if start < n {
        batches.push(start..n);
    }
    batches
}

impl Order {
    pub(super) fn of(cache: &Cache, snap: &Snapshot, missing: &[usize]) -> Order {
        let mut large = Vec::new();
        // (tree's pack, frame, offset in it), its length, the path: 32 bytes a path.
        let mut small: Vec<((u32, u64, u64), u32, u32)> = Vec::with_capacity(missing.len());
        for &i in missing {
            let p = &snap.paths[i];
            if p.info.nar_size >= LARGE_PATH {
                large.push(i);
                continue;
            }
            let (at, len) = cache.location(p.tree).map_or(((u32::MAX, 0, 0), 0), |l| {
                let len = if held(l.len) { l.len as u32 } else { 0 };
                ((l.pack, l.frame_offset, l.offset), len)
            });
            // A snapshot in memory holds far fewer than 2^32 paths (each takes 100 bytes).
            small.push((at, len, u32::try_from(i).expect("path index")));
        }
        large.sort_by_key(|&i| std::cmp::Reverse(snap.paths[i].info.nar_size));
        small.sort_unstable();
        let lens = small.iter().map(|&(_, len, _)| u64::from(len));
        let batches = cut(lens, BATCH_PATHS, BATCH_TREE_BYTES);
        Order {
            large,
            small: small.into_iter().map(|(_, _, i)| i as usize).collect(),
            batches,
        }
    }

    /// The batches of small paths, each in tree order.
    pub(super) fn batches(&self) -> impl Iterator<Item = &[usize]> {
        self.batches.iter().map(|r| &self.small[r.clone()])
    }
}

/// A batch's trees, encoded, in one buffer kept from batch to batch (no allocation a
/// tree), and its paths in the order to write them.
#[derive(Default)]
pub(super) struct Batch {
    trees: Vec<u8>,
    paths: Vec<Slot>,
    /// How many of `paths`, at the front, have no small file to read from the cache.
    unframed: usize,
}

/// Where a path of a batch goes in the order of writing (smaller first): paths with no small
/// file to read from the cache first, largest first; then by the frame holding most of those
/// files; a path whose tree could not be read last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WriteKey {
    framed: bool,
    /// The frame (pack, offset), or (0, the size's complement) for an unframed path.
    at: (u32, u64),
}

impl WriteKey {
    const UNREAD: WriteKey = WriteKey {
        framed: true,
        at: (u32::MAX, u64::MAX),
    };

    /// The key of a path whose small files to read are mostly in `frame`, of `nar_size`.
    fn new(frame: Option<(u32, u64)>, nar_size: u64) -> WriteKey {
        match frame {
            Some(at) => WriteKey { framed: true, at },
            None => WriteKey {
                framed: false,
                at: (0, u64::MAX - nar_size),
            },
        }
    }
}

/// A path of a batch (an index into the snapshot's paths) and where its tree is in
/// [`Batch::trees`]: `None` when it could not be read (the write reads it again and says
/// why).
#[derive(Clone, Copy)]
struct Slot {
    path: u32,
    tree: Option<(u32, u32)>,
}

impl Batch {
    /// Read the trees of `batch` (paths in tree order), in parallel, and order its paths to
    /// be written: those with no small file to read from the cache (not counting those
    /// `.links` or an older build in the store will give) first, largest first; then the
    /// others by the frame holding most of the bytes of those files, then by tree.
    pub(super) fn read(
        &mut self,
        cache: &Cache,
        snap: &Snapshot,
        batch: &[usize],
        links: &LinksDir,
        sources: &Sources,
    ) {
        use rayon::prelude::*;
        // Where each tree goes in the buffer, from the lengths the index gives.
        let mut at = 0usize;
        let placed: Vec<(usize, Option<(Location, usize)>)> = batch
            .iter()
            .map(|&i| {
                let loc = cache.location(snap.paths[i].tree).filter(|l| held(l.len));
                let start = at;
                at += loc.map_or(0, |l| l.len as usize);
                (i, loc.map(|l| (l, start)))
            })
            .collect();
        self.trees.clear();
        self.trees.resize(at, 0);
        let mut rest = &mut self.trees[..];
        let mut spans = Vec::with_capacity(placed.len());
        for (_, loc) in &placed {
            let (span, after) = rest.split_at_mut(loc.map_or(0, |(l, _)| l.len as usize));
            spans.push(span);
            rest = after;
        }
        let mut slots: Vec<(WriteKey, Slot)> = placed
            .par_iter()
            .zip(spans.into_par_iter())
            .map(|(&(i, loc), span)| {
                let path = u32::try_from(i).expect("path index");
                // Last: its write reads the tree again and says why it cannot.
                let unread = (WriteKey::UNREAD, Slot { path, tree: None });
                let Some((loc, start)) = loc else {
                    return unread;
                };
                let id = snap.paths[i].tree;
                if cache.read_tree_into(&id, loc, span).is_err() {
                    return unread;
                }
                let Ok(tree) = Node::decode(&id, span) else {
                    return unread;
                };
                let key = WriteKey::new(
                    main_frame(cache, &tree, links, sources.of_path(i)),
                    snap.paths[i].info.nar_size,
                );
                // Within the buffer, itself under 2^32 bytes (see `held`).
                let tree = (start as u32, span.len() as u32);
                (
                    key,
                    Slot {
                        path,
                        tree: Some(tree),
                    },
                )
            })
            .collect();
        // Stable: within a frame (and for paths of one size), tree order.
        slots.sort_by_key(|(key, _)| *key);
        self.unframed = slots.iter().take_while(|(key, _)| !key.framed).count();
        self.paths.clear();
        self.paths.extend(slots.into_iter().map(|(_, s)| s));
    }

    /// The path of `slot`, with its tree's encoded bytes when they were read.
    fn with_tree(&self, s: &Slot) -> (usize, Option<&[u8]>) {
        let tree = s
            .tree
            .map(|(start, len)| &self.trees[start as usize..(start + len) as usize]);
        (s.path as usize, tree)
    }

    /// The paths of the batch with no small file to read from the cache, largest first, to be
    /// taken one at a time by whichever writer is free; with their trees' encoded bytes.
    pub(super) fn unframed_paths(&self) -> impl Iterator<Item = (usize, Option<&[u8]>)> {
        self.paths[..self.unframed]
            .iter()
            .map(|s| self.with_tree(s))
    }

    /// The other paths of the batch in the order to write them, with their trees' encoded
    /// bytes when they were read.
    pub(super) fn framed_paths(
        &self,
    ) -> impl rayon::iter::IndexedParallelIterator<Item = (usize, Option<&[u8]>)> {
        use rayon::prelude::*;
        self.paths[self.unframed..]
            .par_iter()
            .map(|s| self.with_tree(s))
    }
}

/// The frame (pack, offset) holding most bytes of `tree`'s small files to read from the cache;
/// `None` when there are none.
fn main_frame(
    cache: &Cache,
    tree: &Node,
    links: &LinksDir,
    local: Option<&super::siblings::PathSources>,
) -> Option<(u32, u64)> {
    // Few frames a path: a short list, not a map.
    let mut frames: Vec<((u32, u64), u64)> = Vec::new();
    let mut n = 0;
    tree.for_each_file(&mut |f| {
        n += 1;
        if f.size >= SOLO_THRESHOLD
            || local.is_some_and(|l| l.of(n - 1).is_some())
            || (f.size >= LINKS_MIN_SIZE && links.has_entry(&f.file_nar_hash))
        {
            return;
        }
        let Some(l) = cache.location(f.blob) else {
            return;
        };
        let key = (l.pack, l.frame_offset);
        if let Some((_, b)) = frames.iter_mut().find(|(k, _)| *k == key) {
            *b += l.len;
        } else if frames.len() < 64 {
            frames.push((key, l.len));
        }
    });
    frames
        .iter()
        .max_by_key(|(k, b)| (*b, std::cmp::Reverse(*k)))
        .map(|(k, _)| *k)
}

#[cfg(test)]
mod tests {
    use super::{cut, WriteKey};
    use proptest::prelude::*;

    #[test]
    fn paths_without_a_frame_come_first_largest_first_then_by_frame_and_unread_trees_last() {
        let mut keys = [
            ("framed (1, 0)", WriteKey::new(Some((1, 0)), 10 << 20)),
            ("unread", WriteKey::UNREAD),
            ("unframed 1 MiB", WriteKey::new(None, 1 << 20)),
            ("framed (0, 5)", WriteKey::new(Some((0, 5)), 1)),
            ("unframed 9 MiB", WriteKey::new(None, 9 << 20)),
            ("framed (0, 2)", WriteKey::new(Some((0, 2)), 100)),
            ("unframed empty", WriteKey::new(None, 0)),
        ];
        keys.sort_by_key(|(_, k)| *k);
        let order: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            order,
            [
                "unframed 9 MiB",
                "unframed 1 MiB",
                "unframed empty",
                "framed (0, 2)",
                "framed (0, 5)",
                "framed (1, 0)",
                "unread"
            ]
        );
        assert_eq!(keys.iter().take_while(|(_, k)| !k.framed).count(), 3);
    }

    #[test]
    fn batches_end_at_the_tree_count_or_before_the_tree_that_would_pass_the_bytes() {
        assert_eq!(
            cut([10, 10, 10, 10, 10].into_iter(), 2, 100),
            [0..2, 2..4, 4..5]
        );
        assert_eq!(cut([40, 40, 40].into_iter(), 10, 100), [0..2, 2..3]);
        // A tree larger than a batch's bytes is a batch of its own.
        assert_eq!(cut([5, 500, 5].into_iter(), 10, 100), [0..1, 1..2, 2..3]);
        assert!(cut(std::iter::empty(), 10, 100).is_empty());
    }

    proptest! {
        #[test]
        fn batches_cover_every_tree_once_in_order_within_their_bounds(
            lens in prop::collection::vec(0u64..300, 0..200),
            max_trees in 1usize..20,
            max_bytes in 1u64..1000,
        ) {
            let batches = cut(lens.iter().copied(), max_trees, max_bytes);
            let mut next = 0;
            for b in &batches {
                prop_assert_eq!(b.start, next);
                prop_assert!(b.end > b.start && b.len() <= max_trees);
                let bytes: u64 = lens[b.clone()].iter().sum();
                prop_assert!(bytes <= max_bytes || b.len() == 1);
                // Not cut early: the next tree would have passed a bound.
                if b.end < lens.len() {
                    prop_assert!(b.len() == max_trees || bytes + lens[b.end] > max_bytes);
                }
                next = b.end;
            }
            prop_assert_eq!(next, lens.len());
        }
    }
}
