//! Index files: where each object lives. One index file per save lists the packs that save
//! wrote and, for every object, its pack, the byte range of the zstd frame holding it, and its
//! range inside the decompressed frame. Loading the cache merges all index files into one
//! table ([`Objects`]); the first location seen for an object wins.

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
    pub(super) index: HashMap<ObjectId, Location>,
    /// The index files merged.
    pub(super) files: Vec<IndexId>,
}

impl Objects {
    /// Merge an index file; `present` says whether a pack exists.
    pub(super) fn merge(
        &mut self,
        file: IndexFile,
        present: &mut dyn FnMut(&PackId) -> bool,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        let local: Vec<Option<u32>> = file
            .packs
            .iter()
            .map(|p| {
                if let Some(&no) = self.pack_no.get(p) {
                    return Some(no);
                }
                if !present(p) {
                    missing.push(format!("pack {} named by an index is missing", pack_key(p)));
                    return None;
                }
                self.packs.push(*p);
                let no = self.packs.len() as u32 - 1;
                self.pack_no.insert(*p, no);
                Some(no)
            })
            .collect();
        for (id, mut loc) in file.entries {
            if let Some(Some(no)) = local.get(loc.pack as usize) {
                loc.pack = *no;
                self.index.entry(id).or_insert(loc);
            }
        }
        missing
    }
}
