//! Snapshots: the list of store paths a save captured, with everything needed to register
//! them (the DB's `ValidPaths`, `Refs` and `DerivationOutputs` rows) and the tree of each.
//! A snapshot is written last, after every object it names is durable.

use std::collections::HashMap;

use super::{IndexId, SnapshotId, TreeId};
use crate::store::layout::Flavor;
use crate::store::path::{StoreDir, StorePath};
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
    /// Check internal consistency: unique paths, unique hash parts (the daemons find a path
    /// by its hash part, and restore names temporary trees after it), every reference inside
    /// the snapshot, every derivation output row's `.drv` inside it, every deriver and
    /// derivation output a path of the snapshot's store directory (the daemon opens them), and
    /// every path, deriver and output named as the snapshot's flavour allows
    /// ([`StorePath::check_for`]: Nix cannot load a DB row of a name longer than 211).
    ///
    /// # Errors
    /// A message saying what is inconsistent, naming the path and the value.
    pub fn validate(&self) -> Result<(), String> {
        let store = StoreDir::new(&self.store_dir)?;
        // One map, by hash part (32 bytes): a path appearing twice shares its hash part with
        // itself, and a reference is in the snapshot when its hash part maps to it.
        // Hashed with foldhash, seeded at random per process (a hostile cache is written
        // before the seed exists, so it cannot choose colliding hash parts); SipHash of
        // every path and reference was a fifth of validating a 100,000-path snapshot.
        let mut hash_parts: HashMap<&str, &StorePath, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(self.paths.len(), Default::default());
        for p in &self.paths {
            let path = &p.info.path;
            if let Some(other) = hash_parts.insert(path.hash_part(), path) {
                if other == path {
                    return Err(format!("path {path} appears twice"));
                }
                return Err(format!(
                    "paths {other} and {path} share the hash part {}",
                    path.hash_part()
                ));
            }
            path.check_for(self.flavor).map_err(|e| e.to_string())?;
            // An empty deriver is how the daemons spell "unknown" when it is not NULL.
            if let Some(d) = p.info.deriver.as_deref().filter(|d| !d.is_empty()) {
                store
                    .parse(d)
                    .and_then(|d| d.check_for(self.flavor))
                    .map_err(|e| {
                        format!("{path}: deriver `{d}` is not a path of the store: {e}")
                    })?;
            }
        }
        let seen = |r: &StorePath| hash_parts.get(r.hash_part()) == Some(&r);
        for p in &self.paths {
            if let Some(r) = p.info.references.iter().find(|r| !seen(r)) {
                return Err(format!(
                    "{} refers to {r}, which is not in the snapshot",
                    p.info.path
                ));
            }
        }
        for o in &self.derivation_outputs {
            if !seen(&o.drv) {
                return Err(format!(
                    "derivation output row for {}, which is not in the snapshot",
                    o.drv
                ));
            }
            store
                .parse(&o.path)
                .and_then(|p| p.check_for(self.flavor))
                .map_err(|e| {
                    format!(
                        "{}: output `{}` at `{}` is not a path of the store: {e}",
                        o.drv, o.id, o.path
                    )
                })?;
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
        // Wrapping, as the heads written so far have it: sizes come from a DB or a cache, and
        // a hostile one must not make a reader panic.
        self.paths
            .iter()
            .fold(0u64, |sum, p| sum.wrapping_add(p.info.nar_size))
    }
}

/// A path of the snapshot: `base` (a base name), no references, zero hashes.
#[cfg(test)]
pub(crate) fn test_path(base: &str) -> SnapshotPath {
    use crate::store::path_info::NarHash;
    SnapshotPath {
        info: PathInfo {
            path: StorePath::from_base_name(base).unwrap(),
            nar_hash: NarHash([0; 32]),
            nar_size: 0,
            registration_time: 0,
            deriver: None,
            references: vec![],
            nix: None,
        },
        tree: TreeId([0; 32]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base: &str) -> SnapshotPath {
        test_path(base)
    }

    fn snapshot(paths: Vec<SnapshotPath>) -> Snapshot {
        Snapshot {
            version: 2,
            key: String::new(),
            indexes: Vec::new(),
            parent: None,
            flavor: Flavor::Guix,
            store_dir: "/gnu/store".into(),
            created: 0,
            tool: String::new(),
            roots: vec![],
            paths,
            derivation_outputs: vec![],
        }
    }

    const H1: &str = "00000000000000000000000000000001";
    const H2: &str = "00000000000000000000000000000002";

    #[test]
    fn one_hash_part_for_two_paths_is_refused() {
        let s = snapshot(vec![path(&format!("{H1}-x")), path(&format!("{H1}-y"))]);
        let err = s.validate().unwrap_err();
        assert!(err.contains("share the hash part"), "{err}");
        assert!(
            snapshot(vec![path(&format!("{H1}-x")), path(&format!("{H2}-x"))])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn derivers_and_outputs_must_be_paths_of_the_store() {
        let drv = format!("{H1}-x.drv");
        let good = format!("/gnu/store/{H2}-x");
        for bad in [
            "/etc/passwd",
            "/gnu/store/../../etc/passwd",
            "/nix/store/00000000000000000000000000000002-x",
            "/gnu/store/00000000000000000000000000000002-x/bin",
            "relative",
        ] {
            let mut p = path(&drv);
            p.info.deriver = Some(bad.into());
            let err = snapshot(vec![p]).validate().unwrap_err();
            assert!(err.contains(bad) && err.contains(&drv), "{err}");
            let mut s = snapshot(vec![path(&drv)]);
            s.derivation_outputs.push(DerivationOutput {
                drv: StorePath::from_base_name(&drv).unwrap(),
                id: "out".into(),
                path: bad.into(),
            });
            let err = s.validate().unwrap_err();
            assert!(err.contains(bad) && err.contains(&drv), "{err}");
        }
        let mut p = path(&drv);
        p.info.deriver = Some(good.clone());
        let mut s = snapshot(vec![p]);
        s.derivation_outputs.push(DerivationOutput {
            drv: StorePath::from_base_name(&drv).unwrap(),
            id: "out".into(),
            path: good,
        });
        s.validate().unwrap();
        let mut p = path(&drv);
        p.info.deriver = Some(String::new());
        snapshot(vec![p]).validate().unwrap();
    }

    /// Names as long as a file name may be (222) are a Guix snapshot's; a Nix snapshot
    /// naming one longer than Nix's 211, as a path, a deriver or a derivation output, is
    /// refused, naming it: Nix could not load the DB row restore would write.
    #[test]
    fn a_nix_snapshot_names_no_path_longer_than_nix_allows() {
        let drv = format!("{H1}-x.drv");
        let nix = |mut s: Snapshot| {
            s.flavor = Flavor::Nix;
            s.store_dir = "/nix/store".into();
            s
        };
        for n in [212, 222] {
            let long = format!("{H2}-{}", "n".repeat(n));
            let guix = snapshot(vec![path(&long)]);
            guix.validate().unwrap();
            let err = nix(guix).validate().unwrap_err();
            assert!(err.contains(&long) && err.contains("211"), "{err}");

            let mut p = path(&drv);
            p.info.deriver = Some(format!("/nix/store/{long}"));
            let err = nix(snapshot(vec![p])).validate().unwrap_err();
            assert!(err.contains(&long) && err.contains(&drv), "{err}");

            let mut s = nix(snapshot(vec![path(&drv)]));
            s.derivation_outputs.push(DerivationOutput {
                drv: StorePath::from_base_name(&drv).unwrap(),
                id: "out".into(),
                path: format!("/nix/store/{long}"),
            });
            let err = s.validate().unwrap_err();
            assert!(err.contains(&long) && err.contains(&drv), "{err}");
        }
        nix(snapshot(vec![path(&format!("{H2}-{}", "n".repeat(211)))]))
            .validate()
            .unwrap();
    }
}
