//! Index files: where each object lives. One index file per save lists the packs that save
//! wrote and, for every object, its pack, the byte range of the zstd frame holding it, and its
//! range inside the decompressed frame. Loading the cache merges all index files.

use serde::{Deserialize, Serialize};

use super::{ObjectId, ObjectKind};

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
    pub packs: Vec<ObjectId>,
    /// Objects and where they are.
    pub entries: Vec<(ObjectId, Location)>,
}
