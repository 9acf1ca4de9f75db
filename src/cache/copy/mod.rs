//! Copying snapshots from one cache to another (`storesync copy`): any two locations (a
//! directory, `s3://`, `gha://`), transferring only the objects the target lacks.
//!
//! For each snapshot chosen, oldest first, [`copy`] plans, then executes:
//! 1. the snapshot is read whole from the source and checked, its trees read (each checked
//!    against its id) to know every object it needs;
//! 2. what the target holds is known from the target's index files (on the GitHub Actions
//!    cache, which cannot list, those of its newest snapshot): those objects are not sent;
//! 3. the frames holding the other objects are grouped into target packs: a source pack ALL
//!    of whose objects are needed, laid out as a save writes (frames back to back after the
//!    header), becomes a pack of its own (byte for byte the source pack, so the same name);
//!    the frames needed from other packs are gathered into new packs of about 32 MiB, in
//!    source order. Frames travel compressed, unchanged; every object in them is checked
//!    against its id as the bytes pass (a hostile or damaged source cannot put an object
//!    under a wrong id into the target), see [`packs`];
//! 4. the commit order of a save: packs, `sync`, ONE index file locating every object of
//!    the snapshot (new ones and those the target had), the signature file (merged with the
//!    target's, whose line of a key name is kept), and the snapshot LAST, create-only, naming
//!    only that index.
//!
//! A v2 snapshot keeps its id (the id does not cover the index list), so its signatures stay
//! valid and travel with it. A v1 snapshot is written as v2 under a new id; its signatures
//! (over the old id) cannot follow it and are reported as left behind. A snapshot the target
//! has already is skipped, but for the source's signatures of it that the target lacks (a
//! snapshot signed after it was copied). A copy interrupted before its snapshot leaves packs
//! no snapshot names; run again, it builds the same packs and skips each one the target holds.

mod packs;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::format::{encode_snapshot_v2, parse_snapshot_key, seal_encoded};
use super::{
    index_key, Cache, CacheError, IndexFile, IndexId, Location, ObjectId, PackId, Snapshot,
    SnapshotId, FORMAT_VERSION, INDEX_MAGIC, PACK_TARGET,
};
use crate::progress::Progress;
use packs::Frame;

/// Which snapshots of the source to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// The newest.
    Newest,
    /// The one whose id starts with this prefix.
    Id(String),
    /// Chosen as actions/cache chooses: key, then restore-key prefixes.
    Key {
        key: String,
        restore_keys: Vec<String>,
    },
    /// Every snapshot the source lists (on the GitHub Actions cache: those its lookups find).
    All,
}

/// What copying one snapshot takes (or took).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCopy {
    /// The snapshot's id in the source.
    pub id: String,
    /// Its id in the target (differs only for a v1 snapshot, written as v2).
    pub target_id: String,
    pub key: String,
    pub created: i64,
    pub paths: usize,
    pub nar_bytes: u64,
    /// `copy`, `present` (the target has it: nothing to do), `copied` once executed.
    pub status: &'static str,
    /// Objects (trees and blobs) the snapshot needs.
    pub objects: u64,
    /// Of those, objects the target holds already.
    pub objects_present: u64,
    /// Source packs copied whole, and frames gathered from other packs.
    pub packs_whole: u64,
    pub frames: u64,
    /// Compressed bytes to read from the source (and to write unless the pack is there).
    pub bytes: u64,
    /// Packs written to the target, and packs it held already (an earlier, interrupted copy).
    pub packs_written: u64,
    pub packs_present: u64,
    pub bytes_written: u64,
    /// The index file written for it.
    pub index: Option<String>,
    /// Signatures that travel with it (lines of its `.sig` file).
    pub signatures: usize,
    /// Why signatures were left behind, if they were.
    pub signatures_left: Option<String>,
}

/// What executing one snapshot's copy needs.
struct Work {
    snapshot: Snapshot,
    /// Objects the target holds, located in the target.
    present: IndexFile,
    /// Target packs to build: each a list of source frames.
    groups: Vec<Vec<Frame>>,
    signatures: Option<Vec<u8>>,
}

/// The report of [`copy`].
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub dry_run: bool,
    pub snapshots: Vec<SnapshotCopy>,
}

/// Copy the snapshots `select` chooses in `source` into `target`, oldest first, each planned
/// just before it is copied (so a later one reuses what an earlier one brought). With
/// `dry_run`, plan only: nothing is written, and objects an earlier snapshot of the run would
/// bring count as present for the later ones.
///
/// # Errors
/// [`CacheError`] when a snapshot cannot be found or read, the source lacks an object a
/// snapshot needs (the source is incomplete: `storesync verify` it), a read or write fails,
/// or a source object does not match its id. Snapshots copied before the failure stay; nothing
/// names what was written for the failed one.
pub fn copy(
    source: &Cache,
    target: &Cache,
    select: &Select,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<CopyReport, CacheError> {
    let mut chosen = choose(source, select)?;
    chosen.sort_by_key(|(id, s)| (s.created, *id));
    let mut report = CopyReport {
        dry_run,
        snapshots: Vec::new(),
    };
    let mut planned: HashSet<ObjectId> = HashSet::new();
    for (id, snap) in chosen {
        let (mut sc, work) = plan_one(source, target, id, snap, &mut planned)?;
        match work {
            Some(work) if !dry_run => execute_one(source, target, &mut sc, work, progress)?,
            None if !dry_run => carry_signatures(source, target, &id, &mut sc)?,
            _ => {}
        }
        report.snapshots.push(sc);
    }
    Ok(report)
}

fn choose(source: &Cache, select: &Select) -> Result<Vec<(SnapshotId, Snapshot)>, CacheError> {
    Ok(match select {
        Select::Newest => vec![source.find_snapshot(None)?],
        Select::Id(p) => vec![source.find_snapshot(Some(p))?],
        Select::Key { key, restore_keys } => {
            let m = source.find_by_key(key, restore_keys, &|_, _| Ok(()))?;
            vec![(m.id, m.snapshot)]
        }
        Select::All => {
            let groups = source.snapshot_groups()?;
            if groups.is_empty() {
                return Err(CacheError::Empty);
            }
            let mut out = Vec::new();
            for (id, refs) in groups {
                out.push((id, source.read_any(&refs)?));
            }
            out
        }
    })
}

/// Whether `target` holds snapshot `id` (saved with `key`).
fn target_has(target: &Cache, id: &SnapshotId, key: &str) -> Result<bool, CacheError> {
    let keys = match target.storage().find_snapshots(key, &[])? {
        Some(keys) => keys,
        None => target.storage().list("snapshots")?,
    };
    Ok(keys
        .iter()
        .filter_map(|k| parse_snapshot_key(k))
        .any(|n| n.id == *id))
}

fn plan_one(
    source: &Cache,
    target: &Cache,
    id: SnapshotId,
    mut snap: Snapshot,
    planned: &mut HashSet<ObjectId>,
) -> Result<(SnapshotCopy, Option<Work>), CacheError> {
    let v1 = snap.version == 1;
    snap.version = 2;
    let (target_id, _, _) = encode_snapshot_v2(&snap, 3);
    let mut sc = SnapshotCopy {
        id: id.hex(),
        target_id: target_id.hex(),
        key: snap.key.clone(),
        created: snap.created,
        paths: snap.paths.len(),
        nar_bytes: snap.nar_bytes(),
        status: "copy",
        objects: 0,
        objects_present: 0,
        packs_whole: 0,
        frames: 0,
        bytes: 0,
        packs_written: 0,
        packs_present: 0,
        bytes_written: 0,
        index: None,
        signatures: 0,
        signatures_left: None,
    };
    if target_has(target, &target_id, &snap.key)? {
        sc.status = "present";
        return Ok((sc, None));
    }
    // The source's objects: those of the index files a v2 snapshot names, or all of them.
    if v1 {
        let all: Vec<IndexId> = source
            .storage()
            .list("index")?
            .iter()
            .filter_map(|k| super::format::parse_index_key(k))
            .collect();
        source.use_indexes(&all);
    } else {
        source.use_indexes(&snap.indexes);
    }
    // Every object the snapshot needs: its trees (read, so checked) and their blobs.
    let mut needed: HashSet<ObjectId> = HashSet::new();
    for p in &snap.paths {
        if needed.insert(p.tree.into()) {
            source.read_tree(&p.tree)?.for_each_blob(&mut |b, _| {
                needed.insert((*b).into());
            });
        }
    }
    sc.objects = needed.len() as u64;
    // What the target holds stays where it is; the rest comes from source frames.
    let target_packs = target.packs();
    let mut present = IndexFile::default();
    let mut present_no: HashMap<u32, u32> = HashMap::new();
    let mut frames: BTreeMap<(PackId, u64), Frame> = BTreeMap::new();
    let source_packs = source.packs();
    for id in &needed {
        if let Some(loc) = target.location(*id) {
            let no = *present_no.entry(loc.pack).or_insert_with(|| {
                present.packs.push(target_packs[loc.pack as usize]);
                present.packs.len() as u32 - 1
            });
            present.entries.push((*id, Location { pack: no, ..loc }));
            continue;
        }
        if !planned.insert(*id) {
            // Brought by an earlier snapshot of this dry run.
            sc.objects_present += 1;
            continue;
        }
        let loc = source.location(*id).ok_or(CacheError::Missing(*id))?;
        let pack = source_packs[loc.pack as usize];
        let f = frames.entry((pack, loc.frame_offset)).or_insert(Frame {
            pack,
            offset: loc.frame_offset,
            len: loc.frame_len,
            objects: Vec::new(),
        });
        if f.len != loc.frame_len {
            return Err(CacheError::Corrupt(format!(
                "the source's index gives pack {} two frames at offset {}",
                pack.hex(),
                loc.frame_offset
            )));
        }
        f.objects.push((*id, loc.kind, loc.offset, loc.len));
    }
    sc.objects_present += present.entries.len() as u64;
    sc.groups_and_bytes(source, frames.into_values().collect())
        .map(|groups| {
            let sigs = signatures(source, &id, v1, &mut sc);
            let work = Work {
                snapshot: snap,
                present,
                groups,
                signatures: sigs,
            };
            (sc, Some(work))
        })
}

impl SnapshotCopy {
    /// Group `frames` (sorted by source pack and offset) into target packs, and count them.
    fn groups_and_bytes(
        &mut self,
        source: &Cache,
        frames: Vec<Frame>,
    ) -> Result<Vec<Vec<Frame>>, CacheError> {
        // Objects per source pack, to tell packs needed whole.
        let mut per_pack: HashMap<PackId, u64> = HashMap::new();
        let packs = source.packs();
        source.for_each_object(&mut |_, loc| {
            *per_pack.entry(packs[loc.pack as usize]).or_default() += 1;
        });
        let mut groups: Vec<Vec<Frame>> = Vec::new();
        let mut partial: Vec<Frame> = Vec::new();
        let mut partial_len = 0u64;
        let mut i = 0;
        while i < frames.len() {
            let mut j = i;
            while j < frames.len() && frames[j].pack == frames[i].pack {
                j += 1;
            }
            let of_pack = &frames[i..j];
            for w in of_pack.windows(2) {
                if w[1].offset < w[0].offset + w[0].len {
                    return Err(CacheError::Corrupt(format!(
                        "the source's index gives pack {} overlapping frames",
                        of_pack[0].pack.hex()
                    )));
                }
            }
            let objects: u64 = of_pack.iter().map(|f| f.objects.len() as u64).sum();
            let contiguous = of_pack[0].offset == super::format::HEADER_LEN as u64
                && of_pack
                    .windows(2)
                    .all(|w| w[1].offset == w[0].offset + w[0].len);
            self.frames += of_pack.len() as u64;
            self.bytes += of_pack.iter().map(|f| f.len).sum::<u64>();
            if contiguous && per_pack.get(&of_pack[0].pack) == Some(&objects) {
                self.packs_whole += 1;
                groups.push(of_pack.to_vec());
            } else {
                for f in of_pack {
                    if partial_len >= PACK_TARGET {
                        groups.push(std::mem::take(&mut partial));
                        partial_len = 0;
                    }
                    partial_len += f.len;
                    partial.push(f.clone());
                }
            }
            i = j;
        }
        if !partial.is_empty() {
            groups.push(partial);
        }
        Ok(groups)
    }
}

/// The source's signature file of `id`, when it can travel.
fn signatures(source: &Cache, id: &SnapshotId, v1: bool, sc: &mut SnapshotCopy) -> Option<Vec<u8>> {
    match source.read_signatures(id) {
        Ok(None) => None,
        Ok(Some(bytes)) => match crate::trust::decode_signatures(&bytes) {
            Ok(lines) if v1 => {
                sc.signatures_left = Some(format!(
                    "{} signature(s) of a v1 snapshot, which gets a new id in the target",
                    lines.len()
                ));
                None
            }
            Ok(lines) => {
                sc.signatures = lines.len();
                Some(bytes)
            }
            Err(e) => {
                sc.signatures_left = Some(format!("the source's signature file: {e}"));
                None
            }
        },
        Err(e) => {
            sc.signatures_left = Some(format!("the source's signature file: {e}"));
            None
        }
    }
}

/// Copy one planned snapshot, in a save's commit order (see the module documentation).
fn execute_one(
    source: &Cache,
    target: &Cache,
    sc: &mut SnapshotCopy,
    work: Work,
    progress: &dyn Progress,
) -> Result<(), CacheError> {
    progress.start_bytes(&format!("copying {}", &sc.id[..12]), sc.bytes);
    let mut index = work.present;
    for g in &work.groups {
        let w = packs::copy_group(source, target, g, &mut index, progress)?;
        sc.packs_written += w.packs;
        sc.packs_present += w.packs_present;
        sc.bytes_written += w.bytes_written;
    }
    progress.finish();
    // Every pack durable before the index naming them; the index before the snapshot.
    target.storage().sync()?;
    let (sum, bytes) = seal_encoded(INDEX_MAGIC, FORMAT_VERSION, &index);
    let index_id = IndexId(sum);
    target
        .storage()
        .put_if_absent(&index_key(&index_id), &bytes)?;
    target.merge_index(index_id, index);
    sc.index = Some(index_id.hex());
    let mut snap = work.snapshot;
    snap.indexes = vec![index_id];
    let target_id = SnapshotId::parse(&sc.target_id).expect("an id we formatted");
    if let Some(bytes) = work.signatures {
        sc.signatures = merge_signatures(target, &target_id, &bytes)?;
    }
    let written = target.write_snapshot(&snap)?;
    if written != target_id {
        return Err(CacheError::Corrupt(format!(
            "snapshot {}: written with id {}, planned {}",
            sc.id,
            written.hex(),
            sc.target_id
        )));
    }
    sc.status = "copied";
    Ok(())
}

/// The source's signatures of a snapshot the target holds already, added to the target's:
/// one signed after it was copied (by another key, [`Cache::add_signature`]) would otherwise
/// never be trusted in the target, however often it is copied.
/// `signatures` counts the lines that travelled: none when the target had a line by each name.
fn carry_signatures(
    source: &Cache,
    target: &Cache,
    id: &SnapshotId,
    sc: &mut SnapshotCopy,
) -> Result<(), CacheError> {
    let v1 = sc.id != sc.target_id;
    let Some(bytes) = signatures(source, id, v1, sc) else {
        return Ok(());
    };
    let target_id = SnapshotId::parse(&sc.target_id).expect("an id we formatted");
    sc.signatures = merge_signatures(target, &target_id, &bytes)?;
    Ok(())
}

/// Add to the target's signature file of `id` the signature lines of `bytes` by key names it
/// holds no line of; returns how many were added (none: nothing is written, as on the GitHub
/// Actions cache each write is an entry more). A line by a name the target holds is kept as
/// the target has it: a copy checks no signature, and a source written by someone without
/// the key (or signed by a retired key of the same name) must not replace a signature that
/// verifies by one that does not.
fn merge_signatures(target: &Cache, id: &SnapshotId, bytes: &[u8]) -> Result<usize, CacheError> {
    let key = crate::trust::signature_key(&id.0);
    let bad = |e: crate::trust::TrustError| {
        CacheError::Corrupt(format!("signatures of snapshot {}: {e}", id.short()))
    };
    let existing = target.read_signatures(id)?;
    let held: HashSet<String> = match &existing {
        Some(b) => crate::trust::decode_signatures(b)
            .map_err(bad)?
            .into_iter()
            .map(|l| l.name().to_owned())
            .collect(),
        None => HashSet::new(),
    };
    let mut merged = existing;
    let mut added = 0;
    for line in crate::trust::decode_signatures(bytes).map_err(bad)? {
        if !held.contains(line.name()) {
            merged = Some(crate::trust::merge(merged.as_deref(), line).map_err(bad)?);
            added += 1;
        }
    }
    if added > 0 {
        target
            .storage()
            .put(&key, merged.as_deref().expect("a line was added"))?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests;
