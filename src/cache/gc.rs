//! Garbage collection: keep the snapshots a retention policy wants, and only the objects they
//! need, within a size budget.
//!
//! 1. **Retention** (from heads only): per key, the newest `keep_last` snapshots and every
//!    snapshot younger than `keep_within` are kept (with neither, all are), and the newest
//!    snapshot of every key always is. Then, newest first, snapshots are kept while the live
//!    data of those kept fits `max_size`; older ones are dropped. Snapshots whose key does
//!    not start with `key_prefix` are outside the policy: always kept.
//! 2. **Mark**: every tree of the kept snapshots and every blob they name is live, and so is
//!    the zstd frame holding each (a frame is kept or moved whole).
//! 3. **Repack**: packs without a live frame are retired; packs whose live fraction is below
//!    `repack_below` have their live frames copied, compressed bytes unchanged, into new packs
//!    and are retired too.
//! 4. **Publish**: one index file naming every live object (in the packs kept and the new
//!    ones) is written after the new packs are durable; kept v2 snapshots are rewritten to
//!    name only it (their signing ids do not cover the index list, so signatures stay valid),
//!    then the old snapshot files and the dropped snapshots are deleted.
//! 5. **Delete late**: what this run retired (packs, index files) is listed in
//!    `gc/<time>.retired`; files listed by runs at least `grace` ago and still not needed are
//!    deleted, then their lists. A save that started before a collection and reuses objects
//!    of a retired pack names them in its snapshot, so the next run keeps them; a save that
//!    runs longer than `grace` is not protected (see docs/FORMAT.md, "Garbage collection").
//!
//! Every step writes before it deletes, and deletes are idempotent: a kill at any instant
//! leaves a cache whose kept snapshots all restore, and a rerun completes the work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

use serde::Serialize;

use super::{
    pack_key, Cache, CacheError, IndexFile, IndexId, Location, Node, ObjectId, ObjectKind, Packer,
    SnapshotHead, SnapshotId, SnapshotRef, StorageError, TreeId,
};
use crate::progress::Progress;

/// What to keep.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Keep the newest N snapshots of each key.
    pub keep_last: Option<usize>,
    /// Keep every snapshot younger than this many seconds.
    pub keep_within_secs: Option<u64>,
    /// Drop the oldest snapshots until the live data (compressed) fits this many bytes.
    pub max_size: Option<u64>,
    /// Apply the policy only to snapshots whose key starts with this.
    pub key_prefix: Option<String>,
    /// Delete retired files only this many seconds after they were retired.
    pub grace_secs: u64,
    /// Repack packs whose live fraction is below this.
    pub repack_below: f64,
    /// Decide and report; change nothing.
    pub dry_run: bool,
}

/// The live fraction under which a pack is repacked. Copying a frame costs reading and
/// writing it (no recompression); a pack half dead wastes as much space as it would cost to
/// copy its live half. restic's default tolerates 5% unused data overall; per pack, half is
/// the break-even of space against transfer for a cache that is mostly read whole.
pub const DEFAULT_REPACK_BELOW: f64 = 0.5;

/// The default grace period: one hour, longer than any CI save.
pub const DEFAULT_GRACE_SECS: u64 = 3600;

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            keep_last: None,
            keep_within_secs: None,
            max_size: None,
            key_prefix: None,
            grace_secs: DEFAULT_GRACE_SECS,
            repack_below: DEFAULT_REPACK_BELOW,
            dry_run: false,
        }
    }
}

/// What a collection did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// Snapshots kept: id, key.
    pub kept: Vec<(String, String)>,
    /// Snapshots dropped: id, key, why.
    pub dropped: Vec<(String, String, String)>,
    /// Compressed bytes of the live frames.
    pub live_bytes: u64,
    /// Bytes of all packs before.
    pub pack_bytes_before: u64,
    /// Packs without live data, retired.
    pub packs_retired: usize,
    /// Packs whose live frames were copied into new packs, then retired.
    pub packs_repacked: usize,
    /// Bytes copied by repacking.
    pub bytes_repacked: u64,
    /// Files deleted by this run (retired earlier, or now with a zero grace period).
    pub files_deleted: usize,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Bytes retired by this run and waiting for the grace period.
    pub bytes_pending: u64,
    /// The index file naming every live object, when one was written.
    pub index: Option<String>,
}

/// The key of this run's list of retired files.
fn retired_key(now_nanos: i64) -> String {
    format!("gc/{:016x}.retired", now_nanos.max(0) as u64)
}

fn parse_retired_key(key: &str) -> Option<i64> {
    let t = key.strip_prefix("gc/")?.strip_suffix(".retired")?;
    i64::try_from(u64::from_str_radix(t, 16).ok()?).ok()
}

/// A frame of a pack: (pack number in the merged table, offset).
type FrameKey = (u32, u64);

/// Collect garbage in `cache` under `policy`.
///
/// # Errors
/// [`CacheError`] when a snapshot, tree or index cannot be read (nothing is deleted then: a
/// collection that cannot see everything a snapshot needs must not guess), or storage fails.
pub fn gc(
    cache: &Cache,
    policy: &GcPolicy,
    progress: &dyn Progress,
) -> Result<GcReport, CacheError> {
    let now = crate::clock::now_nanos();
    let mut report = GcReport {
        dry_run: policy.dry_run,
        ..GcReport::default()
    };
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
    heads.sort_by_key(|(r, h)| std::cmp::Reverse((h.created, r.id)));
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
        let by_age = within.is_some_and(|t| h.created >= t);
        let any_rule = policy.keep_last.is_some() || within.is_some();
        keep[i] = protect[i] || by_count || by_age || !any_rule;
    }
    // 2. Mark, newest first, so that a size budget drops the oldest.
    let objects: HashMap<ObjectId, Location> = cache.objects().into_iter().collect();
    let packs = cache.packs();
    let mut live_frames: BTreeMap<FrameKey, (u64, Vec<(ObjectId, Location)>)> = BTreeMap::new();
    let mut live_objects: HashSet<ObjectId> = HashSet::new();
    let mut trees_done: HashSet<TreeId> = HashSet::new();
    let mut live_bytes = 0u64;
    progress.start("marking", heads.len() as u64);
    for (i, (r, h)) in heads.iter().enumerate() {
        progress.advance(1);
        if !keep[i] {
            report
                .dropped
                .push((r.id.hex(), h.key.clone(), "retention".into()));
            continue;
        }
        let snap = cache.read_snapshot_ref(r)?;
        let mut added: Vec<FrameKey> = Vec::new();
        let mut mark = |id: ObjectId, live: &mut HashSet<ObjectId>| -> Result<(), CacheError> {
            if !live.insert(id) {
                return Ok(());
            }
            let loc = *objects.get(&id).ok_or(CacheError::Missing(id))?;
            let e = live_frames
                .entry((loc.pack, loc.frame_offset))
                .or_insert_with(|| {
                    added.push((loc.pack, loc.frame_offset));
                    (loc.frame_len, Vec::new())
                });
            e.1.push((id, loc));
            Ok(())
        };
        for p in &snap.paths {
            if !trees_done.insert(p.tree) {
                continue;
            }
            mark(p.tree.into(), &mut live_objects)?;
            let mut stack = vec![cache.read_tree(&p.tree)?];
            while let Some(node) = stack.pop() {
                match node {
                    Node::Regular { blob, .. } => mark(blob.into(), &mut live_objects)?,
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
                    for (id, _) in objs {
                        live_objects.remove(&id);
                    }
                }
            }
            keep[i] = false;
            report
                .dropped
                .push((r.id.hex(), h.key.clone(), "size budget".into()));
            continue;
        }
        live_bytes += grew;
        report.kept.push((r.id.hex(), h.key.clone()));
    }
    progress.finish();
    report.live_bytes = live_bytes;
    // 3. Packs: live bytes against their size.
    let mut live_per_pack: HashMap<u32, u64> = HashMap::new();
    for ((pack, _), (len, _)) in &live_frames {
        *live_per_pack.entry(*pack).or_default() += len;
    }
    let mut retire: Vec<String> = Vec::new();
    let mut repack: HashSet<u32> = HashSet::new();
    let mut partial: Vec<(u32, u64, u64)> = Vec::new(); // (pack, live, size) kept as they are
    for (no, id) in packs.iter().enumerate() {
        let key = pack_key(id);
        let size = cache.storage().size(&key)?.unwrap_or(0);
        report.pack_bytes_before += size;
        let live = live_per_pack.get(&(no as u32)).copied().unwrap_or(0);
        if live == 0 {
            report.packs_retired += 1;
            retire.push(key);
        } else if (live as f64) < policy.repack_below * size as f64 {
            repack.insert(no as u32);
        } else {
            partial.push((no as u32, live, size));
        }
    }
    // Within a budget, packs are repacked sparsest first until the packs left after the
    // collection fit it (dead frames in a kept pack still take space).
    if let Some(max) = policy.max_size {
        let mut after: u64 = live_bytes
            + partial
                .iter()
                .map(|(_, live, size)| size - live)
                .sum::<u64>();
        partial.sort_by(|a, b| (a.1 * b.2).cmp(&(b.1 * a.2)));
        for (no, live, size) in partial {
            if after <= max || live == size {
                break;
            }
            after -= size - live;
            repack.insert(no);
        }
    }
    for no in &repack {
        report.packs_repacked += 1;
        report.bytes_repacked += live_per_pack[no];
        retire.push(pack_key(&packs[*no as usize]));
    }
    // Packs no index names (a killed save's) are retired too: a later run deletes them if
    // no snapshot needs them by then.
    let named: HashSet<String> = packs.iter().map(pack_key).collect();
    for key in cache.storage().list("packs")? {
        if !named.contains(&key) {
            retire.push(key);
        }
    }
    let dropped_ids: HashSet<SnapshotId> = heads
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|((r, _), _)| r.id)
        .collect();
    if policy.dry_run {
        for key in &retire {
            report.bytes_pending += cache.storage().size(key)?.unwrap_or(0);
        }
        return Ok(report);
    }
    // 4. Repack and publish one index of every live object.
    let old_indexes = cache.index_files();
    let packer = Packer::new(cache, 3);
    let mut extra = IndexFile::default();
    let mut extra_pack_no: HashMap<u32, u32> = HashMap::new();
    let mut buf = Vec::new();
    for ((pack, offset), (len, objs)) in &live_frames {
        if repack.contains(pack) {
            let key = pack_key(&packs[*pack as usize]);
            buf.clear();
            cache
                .storage()
                .get_range(&key, *offset, *len)?
                .read_to_end(&mut buf)
                .map_err(|e| StorageError(cache.storage().describe(&key), e))?;
            let entries: Vec<(ObjectId, ObjectKind, u64, u64)> = objs
                .iter()
                .map(|(id, l)| (*id, l.kind, l.offset, l.len))
                .collect();
            packer.copy_frame(&buf, &entries)?;
        } else {
            let no = *extra_pack_no.entry(*pack).or_insert_with(|| {
                extra.packs.push(packs[*pack as usize]);
                extra.packs.len() as u32 - 1
            });
            extra.entries.extend(
                objs.iter()
                    .map(|(id, l)| (*id, Location { pack: no, ..*l })),
            );
        }
    }
    let stats = packer.finish_with(extra)?;
    let new_index = stats.index;
    report.index = new_index.map(|i| i.hex());
    let keep_index: HashSet<IndexId> = new_index.into_iter().collect();
    // Kept v2 snapshots name only the new index; old files go once the new ones exist.
    for ((r, _), kept) in heads.iter().zip(&keep) {
        if !*kept {
            continue;
        }
        let mut snap = cache.read_snapshot_ref(r)?;
        let want: Vec<IndexId> = new_index.into_iter().collect();
        if snap.version >= 2 && snap.indexes != want {
            snap.indexes = want;
            let written = cache.write_snapshot_file(&snap)?;
            if written != r.key {
                cache.storage().delete(&r.key)?;
            }
        }
    }
    for (r, _) in heads.iter().filter(|(r, _)| dropped_ids.contains(&r.id)) {
        cache.storage().delete(&r.key)?;
    }
    for key in &redundant {
        cache.storage().delete(key)?;
    }
    for id in old_indexes.iter().filter(|i| !keep_index.contains(i)) {
        retire.push(super::index_key(id));
    }
    // 5. Record what this run retired, then delete what earlier runs retired (and this one's,
    // with no grace period) if it is still not needed.
    retire.sort();
    retire.dedup();
    if !retire.is_empty() {
        let list = retire.join("\n") + "\n";
        cache
            .storage()
            .put_if_absent(&retired_key(now), list.as_bytes())?;
    }
    let needed_packs: HashSet<String> = live_frames
        .keys()
        .filter(|(p, _)| !repack.contains(p))
        .map(|(p, _)| pack_key(&packs[*p as usize]))
        .collect();
    let deadline = now.saturating_sub((policy.grace_secs as i64).saturating_mul(1_000_000_000));
    for list_key in cache.storage().list("gc")? {
        let Some(when) = parse_retired_key(&list_key) else {
            continue;
        };
        let list = cache.storage().get(&list_key, 64 << 20)?;
        if when > deadline {
            for key in String::from_utf8_lossy(&list).lines() {
                report.bytes_pending += cache.storage().size(key)?.unwrap_or(0);
            }
            continue;
        }
        for key in String::from_utf8_lossy(&list).lines() {
            let is_needed = needed_packs.contains(key)
                || super::format::parse_index_key(key).is_some_and(|i| keep_index.contains(&i));
            if is_needed || !super::storage::check_key(key) {
                continue;
            }
            if let Some(size) = cache.storage().size(key)? {
                cache.storage().delete(key)?;
                report.files_deleted += 1;
                report.bytes_freed += size;
            }
        }
        cache.storage().delete(&list_key)?;
    }
    Ok(report)
}
