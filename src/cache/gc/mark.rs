//! Steps 1 and 2 of a collection: retention from the snapshots' heads, then marking every
//! tree and blob of the kept snapshots (newest first, so that a size budget drops the oldest).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::super::{
    Cache, CacheError, Location, Node, ObjectId, PackId, SnapshotHead, SnapshotId, SnapshotRef,
    TreeId,
};
use super::defragment::Scatter;
use super::{FrameKey, GcPolicy, GcReport};
use crate::cache::successive::PreviousTrees;
use crate::progress::Progress;

/// Decompressed frames marking keeps for reuse (the default budget held 24 MiB for nothing).
const FRAME_CACHE_BYTES: usize = 4 << 20;

/// The live frames of a pack, with the objects in each: (frame length, positions of the
/// objects in the cache's index, see [`Cache::object_at`]; valid until the index changes).
pub(super) type LiveFrames = BTreeMap<FrameKey, (u64, Vec<u32>)>;

/// A set of index positions: one bit per indexed object.
pub(super) struct Bits(Vec<u64>);

impl Bits {
    pub(super) fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }

    pub(super) fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }

    /// Set bit `i`; false when it was set already.
    pub(super) fn insert(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.0[w] & b != 0;
        self.0[w] |= b;
        !was
    }

    fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1u64 << (i % 64));
    }
}

/// What retention and marking decided.
pub(super) struct Marked {
    /// Every snapshot's file and head, newest first.
    pub heads: Vec<(SnapshotRef, SnapshotHead)>,
    /// Whether each of `heads` is kept.
    pub keep: Vec<bool>,
    /// Other files of a snapshot already in `heads` (deleted with what this run replaces).
    pub redundant: Vec<String>,
    /// The frames the kept snapshots need.
    pub live_frames: LiveFrames,
    /// The pack table `live_frames` numbers packs in.
    pub packs: Vec<PackId>,
    /// The frame reads a restore of the newest snapshot would make.
    pub scatter: Scatter,
}

/// Retention, then mark.
///
/// # Errors
/// [`CacheError`] when a snapshot, tree or the index cannot be read.
pub(super) fn mark(
    cache: &Cache,
    policy: &GcPolicy,
    now: i64,
    progress: &dyn Progress,
    report: &mut GcReport,
) -> Result<Marked, CacheError> {
    // 1. Heads, newest first.
    let mut heads: Vec<(SnapshotRef, SnapshotHead)> = Vec::new();
    // Several files of one snapshot (a collection killed between writing one and deleting
    // the other): one is kept, the others deleted with the files this run replaces.
    let mut redundant: Vec<String> = Vec::new();
    let mut seen: HashSet<SnapshotId> = HashSet::new();
    let mut refs = cache.list_snapshots()?;
    refs.reverse();
    for r in refs {
        if !seen.insert(r.id) {
            redundant.push(r.key);
            continue;
        }
        let h = cache.read_head(&r)?;
        heads.push((r, h));
    }
    // A snapshot dated beyond now and the margin restore allows is none's newest: it ranks
    // below every other (anyone who can write the cache can date one 2100, which would
    // otherwise stay the newest of its key and push every genuine save out of `--keep-last`).
    let limit = now.saturating_add(crate::cache::FUTURE_MARGIN_NANOS);
    let future = |h: &SnapshotHead| h.created > limit;
    heads.sort_by_key(|(r, h)| std::cmp::Reverse((!future(h), h.created, r.id)));
    let in_policy = |h: &SnapshotHead| {
        policy
            .key_prefix
            .as_deref()
            .is_none_or(|p| h.key.starts_with(p))
    };
    let mut keep = vec![true; heads.len()];
    let mut protect = vec![false; heads.len()];
    let mut seen_per_key: HashMap<&str, usize> = HashMap::new();
    let within = policy
        .keep_within_secs
        .map(|s| now.saturating_sub((s as i64).saturating_mul(1_000_000_000)));
    for (i, (_, h)) in heads.iter().enumerate() {
        if !in_policy(h) {
            protect[i] = true;
            continue;
        }
        let n = seen_per_key.entry(h.key.as_str()).or_default();
        *n += 1;
        protect[i] = *n == 1; // the newest of its key
        let by_count = policy.keep_last.is_some_and(|k| *n <= k);
        let by_age = within.is_some_and(|t| h.created >= t) && !future(h);
        let any_rule = policy.keep_last.is_some() || within.is_some();
        keep[i] = protect[i] || by_count || by_age || !any_rule;
    }
    // 2. Mark the snapshots that stay whatever the budget (the newest of each key, those
    // outside the policy), then the others newest first, so that a size budget drops the
    // oldest and counts what must stay before choosing what else fits.
    // Looked up in the cache's own index (a copy of it would double the largest table).
    // Trees are read in pack order, each frame about once: a few frames kept suffice.
    cache.limit_frames(FRAME_CACHE_BYTES);
    let packs = cache.packs();
    // Sets of index positions, a bit per object, not sets of ids (32 bytes and more each).
    let mut live_frames: LiveFrames = BTreeMap::new();
    let mut live_objects = Bits::new(cache.object_count());
    let mut trees_done = Bits::new(cache.object_count());
    let mut live_bytes = 0u64;
    let mut dropped_for: Vec<Option<&str>> = vec![None; heads.len()];
    let order: Vec<usize> = (0..heads.len())
        .filter(|&i| protect[i])
        .chain((0..heads.len()).filter(|&i| !protect[i]))
        .collect();
    // The trees of the last snapshot kept (a dropped one's marks are undone).
    let mut previous = PreviousTrees::default();
    let mut scatter = Scatter::default();
    progress.start("marking", heads.len() as u64);
    for i in order {
        let (r, _) = &heads[i];
        progress.advance(1);
        if !keep[i] {
            dropped_for[i] = Some("retention");
            continue;
        }
        // Only its tree ids: none of its paths' strings are decoded.
        let snap_trees = cache.read_snapshot_trees(r)?;
        let mut added: Vec<FrameKey> = Vec::new();
        // An object at its index position, with its location.
        let mut mark = |(pos, loc): (usize, Location), live: &mut Bits| {
            if !live.insert(pos) {
                return;
            }
            let e = live_frames
                .entry((loc.pack, loc.frame_offset))
                .or_insert_with(|| {
                    added.push((loc.pack, loc.frame_offset));
                    (loc.frame_len, Vec::new())
                });
            e.1.push(pos as u32);
        };
        // Trees not marked yet, read in pack order: each tree frame is then decompressed
        // about once, however the trees outgrow the frame cache.
        // (frame, offset in it, index position): the id and location are the position's.
        let mut trees: Vec<(FrameKey, u64, u32)> = Vec::new();
        // The trees this snapshot is the first to mark: if it is dropped for the budget,
        // they are unmarked with its frames, so that an older snapshot naming them marks
        // them again (else it would be kept without them).
        let mut first_here: Vec<usize> = Vec::new();
        // Only the trees the snapshot marked before lacks are looked up: the others are
        // marked (most of a generation's, two million lookups at 100,000 paths and 20
        // snapshots).
        previous.filter(&snap_trees, &mut |tree| {
            let (pos, loc) = cache.locate(tree).ok_or(CacheError::Missing(tree.into()))?;
            if trees_done.insert(pos) {
                trees.push(((loc.pack, loc.frame_offset), loc.offset, pos as u32));
                first_here.push(pos);
            }
            Ok::<(), CacheError>(())
        })?;
        trees.sort_unstable();
        for (_, _, pos) in trees {
            let (id, loc) = cache.object_at(pos as usize);
            let tree = TreeId(id.0);
            if i == 0 {
                scatter.visit(&loc);
            }
            mark((pos as usize, loc), &mut live_objects);
            let mut stack = vec![cache.read_tree_at(&tree, loc)?];
            while let Some(node) = stack.pop() {
                match node {
                    Node::Regular { blob, .. } | Node::Rewritten { blob, .. } => {
                        let id = ObjectId::from(blob);
                        let (pos, loc) = cache.locate(id).ok_or(CacheError::Missing(id))?;
                        // The newest snapshot (first in `order`), in the order a restore
                        // writes it (trees in pack order), each object once: where a
                        // restore reads one twice (files under 8 KiB have no `.links`
                        // entry), no layout would help.
                        if i == 0 && !live_objects.contains(pos) {
                            scatter.visit(&loc);
                        }
                        mark((pos, loc), &mut live_objects);
                    }
                    Node::Symlink { .. } => {}
                    Node::Directory(entries) => stack.extend(entries.into_iter().map(|e| e.node)),
                }
            }
        }
        let grew: u64 = added.iter().map(|k| live_frames[k].0).sum();
        if !protect[i] && policy.max_size.is_some_and(|max| live_bytes + grew > max) {
            // Over budget: drop this one (and, newest first, it is the oldest so far). Its
            // frames are unmarked unless an already kept snapshot needs them: those were
            // added before this one, so only the frames it added go.
            for k in &added {
                if let Some((_, objs)) = live_frames.remove(k) {
                    for pos in objs {
                        live_objects.remove(pos as usize);
                    }
                }
            }
            for pos in first_here {
                trees_done.remove(pos);
            }
            keep[i] = false;
            dropped_for[i] = Some("size budget");
            continue;
        }
        live_bytes += grew;
        previous.set(snap_trees);
    }
    progress.finish();
    // Reported newest first.
    for (i, (r, h)) in heads.iter().enumerate() {
        match dropped_for[i] {
            Some(why) => report.dropped.push((r.id.hex(), h.key.clone(), why.into())),
            None => report.kept.push((r.id.hex(), h.key.clone())),
        }
    }
    report.live_bytes = live_bytes;
    report.over_budget = policy.max_size.filter(|&max| live_bytes > max);
    Ok(Marked {
        heads,
        keep,
        redundant,
        live_frames,
        packs,
        scatter,
    })
}
