//! Index files: where each object lives. One index file per save lists the packs that save
//! wrote and, for every object, its pack, the byte range of the zstd frame holding it, and its
//! range inside the decompressed frame. Loading the cache merges all index files into one
//! table ([`Objects`]); the location in the earliest merged pack wins.
//!
//! The merged table is a vector sorted by object id, searched by bisection: 72 bytes per
//! object, allocated once at its final size. (A hash map of the same entries took about 90
//! bytes per object, and twice that while it grew: at 400,000 objects, a 57 MB peak for a
//! 29 MB table.) An object's position in the table is stable until the next merge, so a
//! collection can mark objects in a bit set instead of a set of ids.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{pack_key, IndexId, ObjectId, ObjectKind, PackId};

/// One object's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Blob or tree.
    pub kind: ObjectKind,
    /// Index into the pack table of the index file (or of the merged cache).
    pub pack: u32,
    /// Offset of the zstd frame in the pack file.
    pub frame_offset: u64,
    /// Compressed length of the frame.
    pub frame_len: u64,
    /// Offset of the object in the decompressed frame.
    pub offset: u64,
    /// Length of the object.
    pub len: u64,
}

/// The body of an index file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Pack ids (BLAKE3 of the pack file), referred to by [`Location::pack`].
    pub packs: Vec<PackId>,
    /// Objects and where they are.
    pub entries: Vec<(ObjectId, Location)>,
}

/// The merged table of every index file read.
#[derive(Default)]
pub(super) struct Objects {
    pub(super) warnings: Vec<String>,
    pub(super) packs: Vec<PackId>,
    pub(super) pack_no: HashMap<PackId, u32>,
    /// Sorted by id, one entry per id.
    table: Vec<(ObjectId, Location)>,
    /// The index files merged.
    pub(super) files: Vec<IndexId>,
}

impl Objects {
    /// The merged table of `files` (in order: an object in several takes its location in
    /// the earliest merged pack); `present` says whether a pack exists. Returns the table and
    /// the problems found (packs named but missing).
    pub(super) fn build(
        files: Vec<(IndexId, IndexFile)>,
        present: &mut dyn FnMut(&PackId) -> bool,
    ) -> Self {
        let mut objects = Objects::default();
        objects.extend(files, present);
        objects
    }

    /// Merge more index files (see [`Objects::build`]). Positions of objects change.
    pub(super) fn extend(
        &mut self,
        files: Vec<(IndexId, IndexFile)>,
        present: &mut dyn FnMut(&PackId) -> bool,
    ) {
        let total: usize = files.iter().map(|(_, f)| f.entries.len()).sum();
        // Reserved at the final size once (the pages are touched only as entries arrive,
        // while each file's own vector is freed after its entries are moved).
        self.table.reserve_exact(total);
        for (id, file) in files {
            let local = self.number_packs(&file.packs, present);
            for (obj, mut loc) in file.entries {
                if let Some(Some(no)) = local.get(loc.pack as usize) {
                    loc.pack = *no;
                    self.table.push((obj, loc));
                }
            }
            self.files.push(id);
        }
        // Packs are numbered in merge order, so sorting by (id, pack) and keeping the first
        // of each id keeps the earliest merged location; in place, no second table.
        self.table
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.pack.cmp(&b.1.pack)));
        self.table.dedup_by(|later, first| later.0 == first.0);
        self.table.shrink_to_fit();
    }

    /// Map an index file's pack table onto the merged one; packs that do not exist map to
    /// `None` (their objects are absent) and are reported.
    fn number_packs(
        &mut self,
        packs: &[PackId],
        present: &mut dyn FnMut(&PackId) -> bool,
    ) -> Vec<Option<u32>> {
        packs
            .iter()
            .map(|p| {
                if let Some(&no) = self.pack_no.get(p) {
                    return Some(no);
                }
                if !present(p) {
                    self.warnings
                        .push(format!("pack {} named by an index is missing", pack_key(p)));
                    return None;
                }
                self.packs.push(*p);
                let no = self.packs.len() as u32 - 1;
                self.pack_no.insert(*p, no);
                Some(no)
            })
            .collect()
    }

    /// The position of `id` in the table.
    pub(super) fn position(&self, id: &ObjectId) -> Option<usize> {
        self.table.binary_search_by(|(o, _)| o.cmp(id)).ok()
    }

    /// Where `id` is.
    pub(super) fn get(&self, id: &ObjectId) -> Option<Location> {
        self.position(id).map(|i| self.table[i].1)
    }

    /// The entry at a position (see [`Objects::position`]).
    pub(super) fn at(&self, pos: usize) -> (ObjectId, Location) {
        self.table[pos]
    }

    /// Every entry, by id.
    pub(super) fn entries(&self) -> &[(ObjectId, Location)] {
        &self.table
    }

    /// Number of objects.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: u32, frame_offset: u64) -> Location {
        Location {
            kind: ObjectKind::Blob,
            pack,
            frame_offset,
            frame_len: 10,
            offset: 0,
            len: 5,
        }
    }

    #[test]
    fn the_earliest_merged_location_wins_and_missing_packs_drop_their_objects() {
        let (p1, p2, gone) = (PackId([1; 32]), PackId([2; 32]), PackId([3; 32]));
        let a = ObjectId([0xa; 32]);
        let b = ObjectId([0xb; 32]);
        let c = ObjectId([0xc; 32]);
        let f1 = IndexFile {
            packs: vec![p2, gone],
            entries: vec![(b, loc(0, 100)), (c, loc(1, 0))],
        };
        let f2 = IndexFile {
            packs: vec![p1, p2],
            entries: vec![(b, loc(0, 7)), (a, loc(1, 9))],
        };
        let o = Objects::build(
            vec![(IndexId([1; 32]), f1), (IndexId([2; 32]), f2)],
            &mut |p| *p != gone,
        );
        assert_eq!(o.len(), 2);
        assert_eq!(o.packs, vec![p2, p1]);
        // b: in p2 (merged first, number 0) at 100, not in p1 at 7.
        assert_eq!(o.get(&b), Some(loc(0, 100)));
        assert_eq!(o.get(&a), Some(loc(0, 9)));
        assert_eq!(o.get(&c), None);
        assert_eq!(o.warnings.len(), 1, "{:?}", o.warnings);
        let pos = o.position(&a).unwrap();
        assert_eq!(o.at(pos), (a, loc(0, 9)));
        assert!(o.entries().windows(2).all(|w| w[0].0 < w[1].0));
    }
}
