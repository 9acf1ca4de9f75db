//! Steps 3 to 5 of a collection: choose the packs to retire or repack, copy live frames
//! into new packs, publish one index and the rewritten snapshots, then delete what this run
//! replaced and what earlier runs retired at least a grace period ago.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use crate::cache::format::HEADER_LEN;

use super::super::{
    pack_key, Cache, CacheError, IndexFile, IndexId, Location, ObjectId, ObjectKind, Packer,
    SnapshotId, StorageError,
};
use super::defragment;
use super::mark::Marked;
use super::{retired_key, GcPolicy, GcReport, RetiredList};

/// Which packs go.
pub(super) struct PackPlan {
    /// Keys of the files to retire (packs now; index files are added after publishing).
    pub retire: Vec<String>,
    /// Packs (numbers in the marked table) whose live frames are copied into new packs.
    pub repack: HashSet<u32>,
}

/// Step 3: packs without live data are retired, sparse ones repacked.
///
/// # Errors
/// [`CacheError::Storage`] when a size or listing fails.
pub(super) fn plan(
    cache: &Cache,
    policy: &GcPolicy,
    marked: &Marked,
    report: &mut GcReport,
) -> Result<PackPlan, CacheError> {
    let Marked {
        live_frames, packs, ..
    } = marked;
    let live_bytes = report.live_bytes;
    let mut live_per_pack: HashMap<u32, u64> = HashMap::new();
    // Packs holding a live object a defragmenting run writes again.
    let mut reframed: HashSet<u32> = HashSet::new();
    for ((pack, _), (len, objs)) in live_frames {
        *live_per_pack.entry(*pack).or_default() += len;
        if report.defragmented
            && objs
                .iter()
                .any(|&pos| defragment::moves(&cache.object_at(pos as usize).1))
        {
            reframed.insert(*pack);
        }
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
        } else if reframed.contains(&(no as u32))
            || (live as f64) < policy.repack_below * size as f64
        {
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
            if after <= max {
                break;
            }
            // A pack with no dead frame (its size is its header and its live frames) would
            // come out of a repack the same: nothing to free.
            if size.saturating_sub(live) <= HEADER_LEN as u64 {
                continue;
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
    Ok(PackPlan { retire, repack })
}

/// Steps 4 and 5: repack, publish, delete late.
///
/// # Errors
/// [`CacheError`] when reading a frame or storage fails.
pub(super) fn publish_and_delete(
    cache: &Cache,
    policy: &GcPolicy,
    now: i64,
    marked: Marked,
    plan: PackPlan,
    mut retired: Vec<RetiredList>,
    report: &mut GcReport,
) -> Result<(), CacheError> {
    let PackPlan { mut retire, repack } = plan;
    // 3b. Defragment: the live small objects first, in the kept snapshots' order.
    let packer = Packer::new(cache, 3);
    let moved = if report.defragmented {
        Some(defragment::reframe(cache, &packer, &marked, report)?)
    } else {
        None
    };
    let Marked {
        heads,
        keep,
        redundant,
        live_frames,
        packs,
        ..
    } = marked;
    let dropped_ids: HashSet<SnapshotId> = heads
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|((r, _), _)| r.id)
        .collect();
    // 4. Repack and publish one index of every live object.
    let old_indexes = cache.index_files();
    let mut extra = IndexFile::default();
    let mut extra_pack_no: HashMap<u32, u32> = HashMap::new();
    let mut buf = Vec::new();
    for ((pack, offset), (len, objs)) in &live_frames {
        if let Some(moved) = moved.as_ref().filter(|_| repack.contains(pack)) {
            // A frame some of whose objects were written again: the others (none, unless
            // a tree named nothing a kept snapshot reaches) are written again alone.
            if objs.iter().any(|&pos| moved.contains(pos as usize)) {
                for &pos in objs.iter().filter(|&&pos| !moved.contains(pos as usize)) {
                    let (id, l) = cache.object_at(pos as usize);
                    packer.add(l.kind, id, &defragment::read_checked(cache, id, l)?)?;
                }
                continue;
            }
        }
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
                .map(|&pos| {
                    let (id, l) = cache.object_at(pos as usize);
                    (id, l.kind, l.offset, l.len)
                })
                .collect();
            packer.copy_frame(&buf, &entries)?;
        } else {
            let no = *extra_pack_no.entry(*pack).or_insert_with(|| {
                extra.packs.push(packs[*pack as usize]);
                extra.packs.len() as u32 - 1
            });
            extra.entries.extend(objs.iter().map(|&pos| {
                let (id, l) = cache.object_at(pos as usize);
                (id, Location { pack: no, ..l })
            }));
        }
    }
    let (stats, named) = packer.finish_with(extra)?;
    let new_index = stats.index;
    report.index = new_index.map(|i| i.hex());
    let keep_index: HashSet<IndexId> = new_index.into_iter().collect();
    // Kept v2 snapshots name only the new index; old files go once the new ones exist.
    // Oldest first: where a lookup takes the newest written entry of a key (the GitHub
    // Actions cache), the newest snapshot of each key must be written last.
    let want: Vec<IndexId> = new_index.into_iter().collect();
    // The files written here: after a run killed between writing a snapshot's new file and
    // deleting its old one, rewriting the old one gives the name of the new one, which is
    // among the redundant files to delete.
    let mut written_keys: HashSet<String> = HashSet::new();
    for ((r, head), kept) in heads.iter().zip(&keep).rev() {
        // A v1 file names no index; a v2 file whose head (read from the file that marking
        // checked whole) names the new index already is left as it is, not decoded.
        if !*kept || head.version < 2 || head.indexes == want {
            continue;
        }
        let mut snap = cache.read_snapshot_ref(r)?;
        if snap.version >= 2 && snap.indexes != want {
            snap.indexes = want.clone();
            let written = cache.write_snapshot_file(&snap)?;
            if written != r.key && !written_keys.contains(&r.key) {
                cache.storage().delete(&r.key)?;
            }
            written_keys.insert(written);
        }
    }
    for (r, _) in heads.iter().filter(|(r, _)| dropped_ids.contains(&r.id)) {
        cache.storage().delete(&r.key)?;
    }
    // And their signatures (an absent file counts as deleted).
    for id in &dropped_ids {
        cache
            .storage()
            .delete(&crate::trust::signature_key(&id.0))?;
    }
    for key in redundant.iter().filter(|k| !written_keys.contains(*k)) {
        cache.storage().delete(key)?;
    }
    for id in old_indexes.iter().filter(|i| !keep_index.contains(i)) {
        retire.push(super::super::index_key(id));
    }
    // Every pack the new index names is needed, whether kept or written by this run: a pack
    // repacked with all its frames live comes out byte for byte the same, under its old
    // name, which must then not be deleted as retired.
    let needed_packs: HashSet<String> = named.iter().map(pack_key).collect();
    // Index files an earlier run retired that a snapshot still named when this run started:
    // one written meanwhile by a save that had planned on a snapshot naming them. Any save
    // since may have taken that snapshot as its base, loaded them and will name them in its
    // own: they, and the packs they name, wait for the grace period from this run (which
    // rewrote that snapshot to name the new index), not from the run that retired them.
    let retired_before: HashSet<&str> = retired
        .iter()
        .flat_map(|l| l.files.iter().map(String::as_str))
        .collect();
    let mut exposed: HashSet<String> = HashSet::new();
    for (_, head) in &heads {
        for id in &head.indexes {
            let key = super::super::index_key(id);
            if !retired_before.contains(key.as_str()) || !exposed.insert(key) {
                continue;
            }
            if let Some(packs) = cache.index_packs(id)? {
                exposed.extend(packs.iter().map(pack_key));
            }
        }
    }
    retire.extend(exposed.iter().cloned());
    retire.retain(|k| {
        !needed_packs.contains(k)
            && !super::super::format::parse_index_key(k).is_some_and(|i| keep_index.contains(&i))
    });
    // 5. Record what this run retired, then delete what earlier runs retired (and this one's,
    // with no grace period) if it is still not needed.
    retire.sort();
    retire.dedup();
    if !retire.is_empty() {
        let key = retired_key(now);
        let list = retire.join("\n") + "\n";
        cache.storage().put_if_absent(&key, list.as_bytes())?;
        retired.push(RetiredList {
            key,
            when: now,
            files: retire,
        });
    }
    // The lists as this run read them when it started, and its own: a list another run
    // writes meanwhile waits for the next run.
    let deadline = now.saturating_sub((policy.grace_secs as i64).saturating_mul(1_000_000_000));
    for list in &retired {
        if list.when > deadline {
            for key in &list.files {
                report.bytes_pending += cache.storage().size(key)?.unwrap_or(0);
            }
            continue;
        }
        for key in &list.files {
            let is_needed = needed_packs.contains(key)
                || super::super::format::parse_index_key(key)
                    .is_some_and(|i| keep_index.contains(&i));
            // Only what a collection retires: a pack or an index file. A list anyone who can
            // write the cache may have planted (dated 1970) could name a kept snapshot, its
            // signature or another list.
            let retirable = super::super::format::parse_pack_key(key).is_some()
                || super::super::format::parse_index_key(key).is_some();
            if is_needed || !retirable || exposed.contains(key) {
                continue;
            }
            if let Some(size) = cache.storage().size(key)? {
                cache.storage().delete(key)?;
                report.files_deleted += 1;
                report.bytes_freed += size;
            }
        }
        cache.storage().delete(&list.key)?;
    }
    // Keep what stays from idle eviction (the GitHub Actions cache's 7 days): the packs and
    // index the kept snapshots need, their files and signatures.
    let mut live: Vec<String> = needed_packs.into_iter().collect();
    live.extend(keep_index.iter().map(super::super::index_key));
    for ((r, _), _) in heads.iter().zip(&keep).filter(|(_, k)| **k) {
        live.push(r.key.clone());
        live.push(crate::trust::signature_key(&r.id.0));
    }
    live.sort();
    report.entries_touched = cache.storage().keep_alive(&live)?;
    Ok(())
}
