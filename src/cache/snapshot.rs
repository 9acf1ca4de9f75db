//! Snapshots: the list of store paths a save captured, with everything needed to register
//! them (the DB's `ValidPaths`, `Refs` and `DerivationOutputs` rows) and the tree of each.
//! A snapshot is written last, after every object it names is durable.

use std::collections::HashMap;

use super::{IndexId, SnapshotId, TreeId};
use crate::store::layout::Flavor;
use crate::store::path::StorePath;
use crate::store::path_info::{DerivationOutput, PathInfo};

/// One store path of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPath {
    /// The DB row (hash, size, time, deriver, references, Nix extras).
    pub info: PathInfo,
    /// The tree holding its contents.
    pub tree: TreeId,
}

/// A snapshot file found by listing: its id, its creation time when the name says it (v2),
/// and its storage key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The snapshot's id (v1: the file's checksum; v2: its content id, see
    /// [`super::SnapshotHead::id`]).
    pub id: SnapshotId,
    /// Creation time from the name (v2 names; `None` for v1).
    pub created: Option<i64>,
    /// The first 8 bytes of the file's checksum, from a v2 name.
    pub file_sum: Option<[u8; 8]>,
    /// Where it is stored.
    pub key: String,
}

/// A saved closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version of the file it was read from (or will be written as).
    pub version: u32,
    /// The key it was saved under (`save --key`, like actions/cache's key); empty when none.
    pub key: String,
    /// Daemon conventions of the source store.
    pub flavor: Flavor,
    /// Logical store directory of the source (`/gnu/store`).
    pub store_dir: String,
    /// Unix nanoseconds at save; the newest snapshot is the one with the largest.
    pub created: i64,
    /// The tool that wrote it (`storesync 0.1.0`).
    pub tool: String,
    /// Index files locating every object the paths need (v2); empty for a v1 snapshot,
    /// whose objects are found through every index file of the cache.
    pub indexes: Vec<IndexId>,
    /// The snapshot this one was saved on top of, if any.
    pub parent: Option<SnapshotId>,
    /// The requested roots; empty when every valid path was saved.
    pub roots: Vec<StorePath>,
    /// Paths, references first.
    pub paths: Vec<SnapshotPath>,
    /// `DerivationOutputs` rows of the `.drv`s among `paths`.
    pub derivation_outputs: Vec<DerivationOutput>,
}

impl Snapshot {
    /// Check internal consistency: unique paths, every reference inside the snapshot,
    /// every derivation output row's `.drv` inside it.
    ///
    /// # Errors
    /// A message saying what is inconsistent.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen: HashMap<&StorePath, usize> = HashMap::new();
        for (i, p) in self.paths.iter().enumerate() {
            if seen.insert(&p.info.path, i).is_some() {
                return Err(format!("path {} appears twice", p.info.path));
            }
        }
        for p in &self.paths {
            if let Some(r) = p.info.references.iter().find(|r| !seen.contains_key(r)) {
                return Err(format!(
                    "{} refers to {r}, which is not in the snapshot",
                    p.info.path
                ));
            }
        }
        if let Some(o) = self
            .derivation_outputs
            .iter()
            .find(|o| !seen.contains_key(&o.drv))
        {
            return Err(format!(
                "derivation output row for {}, which is not in the snapshot",
                o.drv
            ));
        }
        Ok(())
    }

    /// Whether `other` captures the same thing: key, store, roots, paths with their rows and
    /// trees, derivation outputs (not when, by which tool, nor where its objects are listed).
    pub fn same_contents(&self, other: &Snapshot) -> bool {
        self.key == other.key
            && self.flavor == other.flavor
            && self.store_dir == other.store_dir
            && self.roots == other.roots
            && self.paths == other.paths
            && self.derivation_outputs == other.derivation_outputs
    }

    /// Total NAR size of all paths.
    pub fn nar_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.info.nar_size).sum()
    }
}
