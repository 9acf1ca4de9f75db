//! The ids of the cache, one type each so that a tree id cannot be passed where a blob id is
//! wanted: [`BlobId`] (BLAKE3 of a file's contents), [`TreeId`] (BLAKE3 in derive-key mode of
//! an encoded tree), [`ObjectId`] (either, as the index keys objects), [`PackId`],
//! [`IndexId`] and [`SnapshotId`] (BLAKE3 of the file, which names it). All are 32 bytes,
//! encoded as 32 raw bytes (serde newtypes are transparent in bincode), printed as hex.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex.
            pub fn hex(&self) -> String {
                crate::hex::hex(&self.0)
            }
            /// Parse 64 lower-case hex digits, as names in the cache spell ids (an
            /// upper-case spelling is none: see [`crate::hex::parse_lower_hex`]).
            pub fn parse(s: &str) -> Option<Self> {
                crate::hex::parse_lower_hex::<32>(s).map($name)
            }
            /// The first 12 hex digits, as messages print ids.
            pub fn short(&self) -> String {
                self.hex()[..12].to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), &self.hex()[..16])
            }
        }
    };
}

digest_id!(
    /// Any object in a pack (a blob or a tree), as index files key them.
    ObjectId
);
digest_id!(
    /// BLAKE3 of a regular file's contents.
    BlobId
);
digest_id!(
    /// BLAKE3 (derive-key mode) of an encoded tree.
    TreeId
);
digest_id!(
    /// BLAKE3 of a pack file.
    PackId
);
digest_id!(
    /// BLAKE3 checksum of an index file.
    IndexId
);
digest_id!(
    /// BLAKE3 checksum of a snapshot file.
    SnapshotId
);

impl BlobId {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        BlobId(*blake3::hash(data).as_bytes())
    }
}

impl From<BlobId> for ObjectId {
    fn from(b: BlobId) -> Self {
        ObjectId(b.0)
    }
}

impl From<TreeId> for ObjectId {
    fn from(t: TreeId) -> Self {
        ObjectId(t.0)
    }
}
