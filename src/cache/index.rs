//! Index files: where each object lives. One index file per save lists the packs that save
//! wrote and, for every object, its pack, the byte range of the zstd frame holding it, and its
//! range inside the decompressed frame. Loading the cache merges all index files into one
//! table ([`Objects`]); the location in the earliest merged pack wins.
//!
//! The merged table is a vector sorted by object id, searched by bisection within the ids
//! sharing the first two bytes (a fan-out table), on a vector of each id's first 8 bytes:
//! 60 + 8 bytes per object (an [`Entry`] packs a location in 28 bytes instead of the 40 of a
//! [`Location`]), the table reserved for an upper bound of the objects to come (address
//! space: pages are touched as entries arrive), index files merged one at a time. (A hash
//! map of the same entries took about 90 bytes per object, and twice that while it grew: at
//! 400,000 objects, a 57 MB peak for a 29 MB table.)
//! An object's position in the table is stable until the next merge, so a collection can
//! mark objects in a bit set instead of a set of ids.

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

/// An index file's body whose entries are held in several vectors (a packer's, one per
/// pack): it encodes as the [`IndexFile`] of their concatenation, byte for byte, without
/// concatenating them.
#[derive(Serialize)]
pub(crate) struct IndexBody<'a> {
    /// As [`IndexFile::packs`].
    pub packs: &'a [PackId],
    /// As [`IndexFile::entries`], in pieces.
    pub entries: Pieces<'a>,
}

/// Entries in pieces, encoded as one sequence.
pub(crate) struct Pieces<'a>(pub &'a [Vec<(ObjectId, Location)>]);

impl Serialize for Pieces<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let n = self.0.iter().map(Vec::len).sum();
        let mut seq = s.serialize_seq(Some(n))?;
        for e in self.0.iter().flatten() {
            seq.serialize_element(e)?;
        }
        seq.end()
    }
}

/// The fewest bytes one entry of an index file takes in bincode: the id (32), the kind (1)
/// and five integers (a varint byte at least each).
pub(super) const MIN_ENTRY_BYTES: u64 = 32 + 1 + 5;

/// One object of the merged table: its id and its location, packed into 4-byte words (60
/// bytes; `(ObjectId, Location)` takes 72). A frame length of 2^30 or more, or an offset in
/// the frame of 2^32 or more (never written by a save, but an index file may say anything),
/// sends the whole location to [`Objects::spill`]: nothing an index says is lost or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    id: ObjectId,
    /// The pack number: the index file's own while its entries are merged, then the merged
    /// table's.
    pack: u32,
    /// The frame's length (low 30 bits), [`TREE`], [`SPILLED`].
    frame_len: u32,
    /// The offset in the frame; when spilled, the location's position in `spill`.
    offset: u32,
    frame_offset: [u32; 2],
    len: [u32; 2],
}

/// [`Entry::frame_len`]'s bit for a tree.
const TREE: u32 = 1 << 31;
/// [`Entry::frame_len`]'s bit for a location kept whole in [`Objects::spill`].
const SPILLED: u32 = 1 << 30;

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn join(v: [u32; 2]) -> u64 {
    u64::from(v[0]) | u64::from(v[1]) << 32
}

/// The pack table an encoded index file starts with, and where what follows it starts.
pub(super) fn decode_packs(body: &[u8]) -> Result<(Vec<PackId>, usize), String> {
    let cfg = bincode::config::standard().with_limit::<{ super::format::MAX_DECODED }>();
    bincode::serde::decode_from_slice(body, cfg).map_err(|e| e.to_string())
}

/// The start of an encoded index file: its pack table, its entry count, where its entries
/// start, and how many entries its bytes can hold at most (no more, whatever the count
/// claims: what may be reserved for them).
fn decode_head(body: &[u8]) -> Result<(Vec<PackId>, u64, usize, u64), String> {
    let cfg = bincode::config::standard().with_limit::<{ super::format::MAX_DECODED }>();
    let err = |e: bincode::error::DecodeError| e.to_string();
    let (packs, at) = decode_packs(body)?;
    let (count, n): (u64, usize) =
        bincode::serde::decode_from_slice(&body[at..], cfg).map_err(err)?;
    let at = at + n;
    let room = ((body.len() - at) as u64 / MIN_ENTRY_BYTES).min(count);
    Ok((packs, count, at, room))
}

/// The merged table of every index file read.
#[derive(Default)]
pub(super) struct Objects {
    pub(super) warnings: Vec<String>,
    /// Packs an index file merged names that the backend says do not exist.
    pub(super) missing: Vec<PackId>,
    pub(super) packs: Vec<PackId>,
    pub(super) pack_no: HashMap<PackId, u32>,
    /// Sorted by id, one entry per id.
    table: Vec<Entry>,
    /// Locations too large for an [`Entry`], whole.
    spill: Vec<Location>,
    /// `fanout[k]`: the first position whose id's first two bytes are `k` or more (65,537
    /// entries, 256 KiB): a lookup bisects only the few entries sharing its first two bytes
    /// (a bisection of the whole table compared 32-byte ids ~19 times, missing the CPU cache
    /// on most: a third of `verify`'s time at 100,000 paths).
    fanout: Vec<u32>,
    /// The first 8 bytes of each entry's id, as an integer ordered as the bytes are: what
    /// a lookup bisects.
    keys: Vec<u64>,
    /// The index files merged.
    pub(super) files: Vec<IndexId>,
}

impl Objects {
    /// `loc` of `id` as an entry of the table (spilling it when it does not fit).
    fn entry(&mut self, id: ObjectId, loc: Location) -> Entry {
        let tree = if loc.kind == ObjectKind::Tree {
            TREE
        } else {
            0
        };
        let (frame_len, offset) = match (u32::try_from(loc.offset), loc.frame_len) {
            (Ok(offset), len) if len < u64::from(SPILLED) => (len as u32 | tree, offset),
            _ => {
                self.spill.push(loc);
                (SPILLED | tree, (self.spill.len() - 1) as u32)
            }
        };
        Entry {
            id,
            pack: loc.pack,
            frame_len,
            offset,
            frame_offset: split(loc.frame_offset),
            len: split(loc.len),
        }
    }

    /// The location an entry holds.
    fn location(&self, e: &Entry) -> Location {
        let kind = if e.frame_len & TREE != 0 {
            ObjectKind::Tree
        } else {
            ObjectKind::Blob
        };
        if e.frame_len & SPILLED != 0 {
            // Spilled locations are never changed afterwards; the pack number is the entry's.
            return Location {
                kind,
                pack: e.pack,
                ..self.spill[e.offset as usize]
            };
        }
        Location {
            kind,
            pack: e.pack,
            frame_offset: join(e.frame_offset),
            frame_len: u64::from(e.frame_len & !(TREE | SPILLED)),
            offset: u64::from(e.offset),
            len: join(e.len),
        }
    }

    /// Reserve room for `n` more objects. Pages of a reservation are touched only as entries
    /// arrive, so an upper bound costs address space, not memory; a bound beyond what the
    /// address space or the allocator grants (index files claiming terabytes) reserves
    /// nothing, and the table grows as entries arrive.
    pub(super) fn reserve(&mut self, n: usize) {
        let _ = self.table.try_reserve_exact(n);
    }

    /// Merge one index file (in merge order: an object already merged keeps its location);
    /// `present` says whether a pack exists. Positions of objects change.
    ///
    /// The file's entries go to the end of the table, are sorted there and stripped of ids
    /// the table holds, then merged into it ([`Objects::merge_tail`]).
    pub(super) fn add(
        &mut self,
        id: IndexId,
        file: IndexFile,
        present: &mut dyn FnMut(&PackId) -> bool,
    ) {
        let old = self.table.len();
        self.table.reserve(file.entries.len());
        for (obj, loc) in file.entries {
            let e = self.entry(obj, loc);
            self.table.push(e);
        }
        self.merge_pushed(id, old, &file.packs, present, false);
    }

    /// [`Objects::add`] of an index file's body (bincode of an [`IndexFile`]), its entries
    /// decoded one at a time straight into the table: no vector of the file's entries beside
    /// the table (33 MB for a file of 400,000 objects).
    ///
    /// # Errors
    /// A message for a malformed body; then nothing of it is merged.
    pub(super) fn add_encoded(
        &mut self,
        id: IndexId,
        body: &[u8],
        present: &mut dyn FnMut(&PackId) -> bool,
    ) -> Result<(), String> {
        let cfg = bincode::config::standard().with_limit::<{ super::format::MAX_DECODED }>();
        let (packs, count, mut at, room) = decode_head(body)?;
        let old = self.table.len();
        self.table.reserve(room as usize);
        for _ in 0..count {
            match bincode::serde::decode_from_slice::<(ObjectId, Location), _>(&body[at..], cfg) {
                Ok((e, n)) => {
                    // An id the table holds keeps its location (as in `merge_pushed`): not
                    // pushed, so that the table's tail holds new objects only (a file
                    // listing every object of a cache would touch twice the table's pages).
                    if self.position(&e.0).is_none() {
                        let e = self.entry(e.0, e.1);
                        self.table.push(e);
                    }
                    at += n;
                }
                Err(e) => {
                    self.table.truncate(old);
                    return Err(e.to_string());
                }
            }
        }
        if at != body.len() {
            self.table.truncate(old);
            return Err("trailing bytes after the encoded value".into());
        }
        self.merge_pushed(id, old, &packs, present, true);
        Ok(())
    }

    /// The positions in this table of the objects the encoded index file `body` locates in
    /// a pack the table holds (a pack found missing when merged is not): what a reader of
    /// that file alone finds, as [`Objects::add_encoded`] would merge them.
    pub(super) fn positions_in(&self, body: &[u8]) -> Result<Vec<u32>, String> {
        let cfg = bincode::config::standard().with_limit::<{ super::format::MAX_DECODED }>();
        let err = |e: bincode::error::DecodeError| e.to_string();
        let (packs, count, mut at, room) = decode_head(body)?;
        let mut out = Vec::with_capacity(room as usize);
        for _ in 0..count {
            let ((id, loc), n): ((ObjectId, Location), usize) =
                bincode::serde::decode_from_slice(&body[at..], cfg).map_err(err)?;
            at += n;
            let present = packs
                .get(loc.pack as usize)
                .is_some_and(|p| self.pack_no.contains_key(p));
            if let (true, Some(pos)) = (present, self.position(&id)) {
                out.push(pos as u32);
            }
        }
        Ok(out)
    }

    /// The end of a merge: the entries after `old`, as the index file `id` (whose pack table
    /// is `packs`) gives them, get merged pack numbers (those of missing packs go), then are
    /// merged into the table. `new_only`: the caller pushed no id the table held (then none
    /// is looked up again).
    fn merge_pushed(
        &mut self,
        id: IndexId,
        old: usize,
        packs: &[PackId],
        present: &mut dyn FnMut(&PackId) -> bool,
        new_only: bool,
    ) {
        let local = self.number_packs(packs, present);
        let mut keep = old;
        for i in old..self.table.len() {
            let mut e = self.table[i];
            if let Some(Some(no)) = local.get(e.pack as usize) {
                e.pack = *no;
                self.table[keep] = e;
                keep += 1;
            }
        }
        self.table.truncate(keep);
        // Within the file, the lowest pack number (the earliest merged pack) wins.
        self.table[old..].sort_unstable_by(|a, b| a.id.cmp(&b.id).then(a.pack.cmp(&b.pack)));
        let mut keep = old;
        for i in old..self.table.len() {
            let e = self.table[i];
            let dup_in_file = keep > old && self.table[keep - 1].id == e.id;
            // The fan-out still describes the table before this file: its first `old`.
            let dup_before = !new_only && self.position(&e.id).is_some();
            if !dup_in_file && !dup_before {
                self.table[keep] = e;
                keep += 1;
            }
        }
        self.table.truncate(keep);
        if keep > old && old > 0 {
            self.merge_tail(old);
        }
        self.files.push(id);
        self.index_fanout();
    }

    /// Merge the sorted run after `old` (ids not in the run before it) into the table, from
    /// the back: each new entry's place is found by bisection (through the fan-out, which
    /// still describes the first `old` entries), and the old entries after it move once, by
    /// block. Comparisons grow with the new entries only, not with the table (a merge that
    /// compared every old entry, once per index file, was most of `verify`'s CPU time).
    fn merge_tail(&mut self, old: usize) {
        let tail: Vec<Entry> = self.table[old..].to_vec();
        let mut end = old;
        for (j, e) in tail.iter().enumerate().rev() {
            let k = first_two(&e.id);
            let from = (self.fanout[k] as usize).min(end);
            let to = (self.fanout[k + 1] as usize).min(end);
            let p = from + self.table[from..to].partition_point(|x| x.id < e.id);
            self.table.copy_within(p..end, p + j + 1);
            self.table[p + j] = *e;
            end = p;
        }
    }

    fn index_fanout(&mut self) {
        let mut fanout = std::mem::take(&mut self.fanout);
        fanout.clear();
        fanout.reserve_exact(FANOUT + 1);
        let mut at = 0usize;
        for k in 0..FANOUT {
            while at < self.table.len() && first_two(&self.table[at].id) < k {
                at += 1;
            }
            fanout.push(at as u32);
        }
        fanout.push(self.table.len() as u32);
        self.fanout = fanout;
        self.keys.clear();
        self.keys.reserve_exact(self.table.len());
        self.keys
            .extend(self.table.iter().map(|e| first_eight(&e.id)));
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
                    if !self.missing.contains(p) {
                        self.missing.push(*p);
                    }
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
        // Empty before the first merge; during one, it describes the entries before it.
        if self.fanout.is_empty() {
            return None;
        }
        let k = first_two(id);
        let (from, to) = (self.fanout[k] as usize, self.fanout[k + 1] as usize);
        // Bisected in `keys` (8 bytes an entry, a few cache lines a bucket), not in the
        // 60-byte entries: a lookup missed the CPU cache at every step (a fifth of
        // `verify`'s time at 100,000 paths and 20 snapshots).
        let head = first_eight(id);
        let keys = &self.keys[from..to];
        let first = from + keys.partition_point(|&k| k < head);
        (first..to)
            .take_while(|&i| self.keys[i] == head)
            .find(|&i| self.table[i].id == *id)
    }

    /// Where `id` is.
    pub(super) fn get(&self, id: &ObjectId) -> Option<Location> {
        self.position(id).map(|i| self.location(&self.table[i]))
    }

    /// The entry at a position (see [`Objects::position`]).
    pub(super) fn at(&self, pos: usize) -> (ObjectId, Location) {
        let e = &self.table[pos];
        (e.id, self.location(e))
    }

    /// Every entry, by id.
    pub(super) fn entries(&self) -> impl ExactSizeIterator<Item = (ObjectId, Location)> + '_ {
        self.table.iter().map(|e| (e.id, self.location(e)))
    }

    /// Number of objects.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

/// Buckets of the fan-out table: ids by their first two bytes.
const FANOUT: usize = 1 << 16;

fn first_two(id: &ObjectId) -> usize {
    usize::from(u16::from_be_bytes([id.0[0], id.0[1]]))
}

/// The first 8 bytes of an id, ordered as the bytes are.
fn first_eight(id: &ObjectId) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_body_in_pieces_seals_as_the_index_file_of_their_concatenation() {
        use crate::cache::format::{encode_bincode, seal, seal_encoded, INDEX_MAGIC};
        let id = |n: u8| ObjectId([n; 32]);
        let pieces = vec![
            vec![(id(1), loc(0, 300)), (id(9), loc(0, 16))],
            vec![],
            // Large values take longer varints.
            vec![(id(4), loc(1, u64::MAX)), (id(2), loc(7, 1 << 40))],
        ];
        let packs = [PackId([7; 32]), PackId([8; 32])];
        let whole = IndexFile {
            packs: packs.to_vec(),
            entries: pieces.iter().flatten().copied().collect(),
        };
        let body = IndexBody {
            packs: &packs,
            entries: Pieces(&pieces),
        };
        let sealed = seal_encoded(INDEX_MAGIC, 2, &body);
        assert_eq!(sealed, seal(INDEX_MAGIC, 2, &encode_bincode(&whole)));
        assert_eq!(sealed.1.capacity(), sealed.1.len(), "sized exactly");
        let empty = IndexBody {
            packs: &[],
            entries: Pieces(&[]),
        };
        assert_eq!(
            seal_encoded(INDEX_MAGIC, 2, &empty),
            seal(INDEX_MAGIC, 2, &encode_bincode(&IndexFile::default()))
        );
    }

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
    fn every_location_an_index_may_give_comes_back_whole_from_the_table() {
        assert_eq!(std::mem::size_of::<Entry>(), 60);
        let big = |kind, frame_len, offset, len| Location {
            kind,
            pack: 1,
            frame_offset: u64::MAX - 3,
            frame_len,
            offset,
            len,
        };
        let locs = [
            big(ObjectKind::Tree, 10, 5, 3),
            big(
                ObjectKind::Blob,
                u64::from(SPILLED) - 1,
                u64::from(u32::MAX),
                u64::MAX,
            ),
            big(ObjectKind::Tree, u64::from(SPILLED), 0, 1),
            big(ObjectKind::Blob, u64::MAX, 1, 1),
            big(ObjectKind::Tree, 7, u64::from(u32::MAX) + 1, 0),
            big(ObjectKind::Blob, u64::MAX, u64::MAX, u64::MAX),
        ];
        let (p0, p1) = (PackId([1; 32]), PackId([2; 32]));
        let mut o = Objects::default();
        // The first file names only p1: its entries' pack 1 becomes the merged table's 0.
        let first = IndexFile {
            packs: vec![p0, p1],
            entries: locs
                .iter()
                .enumerate()
                .map(|(n, l)| (ObjectId([n as u8 * 2; 32]), *l))
                .collect(),
        };
        o.add(IndexId([1; 32]), first, &mut |p| *p == p1);
        let mut second = Vec::new();
        for (n, l) in locs.iter().enumerate() {
            second.extend(crate::cache::format::encode_bincode(&(
                ObjectId([n as u8 * 2 + 1; 32]),
                *l,
            )));
        }
        let mut body = crate::cache::format::encode_bincode(&vec![p1, p0]);
        body.extend(crate::cache::format::encode_bincode(&(locs.len() as u64)));
        body.extend(second);
        o.add_encoded(IndexId([2; 32]), &body, &mut |_| true)
            .unwrap();
        assert_eq!(o.packs, vec![p1, p0]);
        for (n, l) in locs.iter().enumerate() {
            let merged = |pack| Location { pack, ..*l };
            // Pack 1 of the first file is p1 (0), of the second p0 (1).
            assert_eq!(o.get(&ObjectId([n as u8 * 2; 32])), Some(merged(0)), "{n}");
            assert_eq!(
                o.get(&ObjectId([n as u8 * 2 + 1; 32])),
                Some(merged(1)),
                "{n}"
            );
        }
        assert_eq!(o.spill.len(), 8, "only what does not fit is spilled");
    }

    #[test]
    fn ids_sharing_their_first_bytes_are_told_apart() {
        // Ids equal in their first 8 bytes (the bisected key), or 2 (the fan-out), and not.
        let id = |head: u8, tail: u8| {
            let mut b = [head; 32];
            b[8..].fill(tail);
            ObjectId(b)
        };
        let mut ids = vec![id(5, 1), id(5, 3), id(5, 9), id(6, 0), id(0, 7)];
        let mut other = id(5, 1);
        other.0[2] = 0;
        ids.push(other);
        let p = PackId([1; 32]);
        let mut o = Objects::default();
        for (n, chunk) in ids.chunks(2).enumerate() {
            let f = IndexFile {
                packs: vec![p],
                entries: chunk.iter().map(|&i| (i, loc(0, i.0[9].into()))).collect(),
            };
            o.add(IndexId([n as u8; 32]), f, &mut |_| true);
        }
        for i in &ids {
            assert_eq!(o.get(i), Some(loc(0, i.0[9].into())), "{i:?}");
        }
        for absent in [id(5, 2), id(5, 10), id(5, 0), id(6, 1), id(7, 7), id(0, 0)] {
            assert_eq!(o.get(&absent), None, "{absent:?}");
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
        let mut o = Objects::default();
        o.add(IndexId([1; 32]), f1, &mut |p| *p != gone);
        o.add(IndexId([2; 32]), f2, &mut |p| *p != gone);
        assert_eq!(o.len(), 2);
        assert_eq!(o.packs, vec![p2, p1]);
        // b: in p2 (merged first, number 0) at 100, not in p1 at 7.
        assert_eq!(o.get(&b), Some(loc(0, 100)));
        assert_eq!(o.get(&a), Some(loc(0, 9)));
        assert_eq!(o.get(&c), None);
        assert_eq!(o.warnings.len(), 1, "{:?}", o.warnings);
        let pos = o.position(&a).unwrap();
        assert_eq!(o.at(pos), (a, loc(0, 9)));
        assert!(o
            .entries()
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn files_merged_one_at_a_time_give_the_table_of_all_at_once() {
        // Random files with overlapping ids and packs: the table is sorted, unique, and each
        // id has the location of its earliest merged pack.
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let packs: Vec<PackId> = (0..6u8).map(|i| PackId([i; 32])).collect();
        let mut o = Objects::default();
        let mut want: HashMap<ObjectId, (PackId, u64)> = HashMap::new();
        for f in 0..8u8 {
            let fp: Vec<PackId> = (0..3).map(|_| packs[next() as usize % 6]).collect();
            let mut file = IndexFile {
                packs: fp.clone(),
                entries: Vec::new(),
            };
            for _ in 0..200 {
                let id = ObjectId([(next() % 97) as u8; 32]);
                let p = (next() % 3) as u32;
                file.entries.push((id, loc(p, next() % 1000)));
            }
            // By hand: an id merged before keeps its pack; else, within this file, the pack
            // numbered first in the merged table.
            o.add(IndexId([f; 32]), file.clone(), &mut |_| true);
            let rank = |p: &PackId| o.packs.iter().position(|q| q == p).unwrap();
            let mut this: HashMap<ObjectId, PackId> = HashMap::new();
            for (id, l) in &file.entries {
                let p = fp[l.pack as usize];
                let e = this.entry(*id).or_insert(p);
                if rank(&p) < rank(e) {
                    *e = p;
                }
            }
            for (id, p) in this {
                want.entry(id).or_insert((p, 0));
            }
        }
        assert!(o
            .entries()
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0].0 < w[1].0));
        assert_eq!(o.len(), want.len());
        for (id, l) in o.entries() {
            assert_eq!(o.packs[l.pack as usize], want[&id].0, "{id:?}");
        }
        for id in want.keys() {
            let pos = o.position(id).expect("found through the fan-out");
            assert_eq!(o.at(pos).0, *id);
        }
        for b in [0u8, 97, 200, 255] {
            let absent = ObjectId([b; 32]);
            assert_eq!(o.position(&absent).is_some(), want.contains_key(&absent));
        }
    }
}
