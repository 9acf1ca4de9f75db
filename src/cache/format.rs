//! The cache's bytes on disk (docs/FORMAT.md): file magics and versions, the envelope of
//! index and snapshot files, the bincode configuration, the limits per kind of file, and the
//! wire structs of snapshots.
//!
//! The wire structs are owned HERE, not derived from the domain types they carry (`PathInfo`
//! lives in `store`): a field reordered elsewhere cannot change the format. Each version's
//! bytes are pinned by the golden caches under `fixtures/cache/`, which every later version
//! must still read to the same values.

use serde::{Deserialize, Serialize};

use super::id::{SnapshotId, TreeId};
use super::snapshot::{Snapshot, SnapshotPath};
use super::CacheError;
use crate::store::layout::Flavor;
use crate::store::path::StorePath;
use crate::store::path_info::{DerivationOutput, NarHash, PathInfo};

/// Version of the cache format this tool writes; written in every file header.
pub const FORMAT_VERSION: u32 = 1;
/// Magic of pack files.
pub const PACK_MAGIC: &[u8; 8] = b"STSYPACK";
/// Magic of index files.
pub const INDEX_MAGIC: &[u8; 8] = b"STSYINDX";
/// Magic of snapshot files.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"STSYSNAP";
/// Length of a file header: magic, version, flags.
pub const HEADER_LEN: usize = 16;

/// Largest index file read (an entry takes about 80 bytes: some 13 million objects).
pub const MAX_INDEX_FILE: u64 = 1 << 30;
/// Largest snapshot file read (compressed; about 100 bytes a path).
pub const MAX_SNAPSHOT_FILE: u64 = 256 << 20;
/// Upper bound of any decoded body.
pub const MAX_DECODED: usize = 1 << 30;

pub(crate) fn encode_bincode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("in-memory encoding")
}

/// Decode a whole body: no trailing bytes, and no allocation beyond the body's own length
/// (every encoded item takes at least one byte, so no honest value claims more).
pub(crate) fn decode_bincode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let cfg = bincode::config::standard().with_limit::<MAX_DECODED>();
    match bincode::serde::decode_from_slice(bytes, cfg) {
        Ok((v, n)) if n == bytes.len() => Ok(v),
        Ok(_) => Err("trailing bytes after the encoded value".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A file header: magic, version, flags.
pub(crate) fn header(magic: &[u8; 8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Wrap a body in the envelope of index and snapshot files: header, body, BLAKE3 of all
/// that. Returns (checksum, bytes); the checksum names the file.
pub(crate) fn seal(magic: &[u8; 8], body: &[u8]) -> ([u8; 32], Vec<u8>) {
    let mut out = Vec::with_capacity(body.len() + HEADER_LEN + 32);
    out.extend_from_slice(&header(magic));
    out.extend_from_slice(body);
    let sum = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&sum);
    (sum, out)
}

/// Check and strip the envelope; `what` names the file in errors.
///
/// # Errors
/// [`CacheError::Corrupt`] for a wrong magic, an unknown version, or a checksum mismatch.
pub(crate) fn unseal<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    what: &str,
) -> Result<([u8; 32], &'a [u8]), CacheError> {
    let bad = |why: &str| CacheError::Corrupt(format!("{what}: {why}"));
    if bytes.len() < HEADER_LEN + 32 || &bytes[..8] != magic {
        return Err(bad(
            "not a storesync file of this kind (bad magic or truncated)",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(bad(&format!(
            "format version {version}, this storesync reads {FORMAT_VERSION}"
        )));
    }
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    let computed = *blake3::hash(content).as_bytes();
    if computed != sum {
        return Err(bad("checksum mismatch (truncated or modified)"));
    }
    Ok((computed, &content[HEADER_LEN..]))
}

/// Snapshot body, format version 1.
#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    flavor: FlavorV1,
    store_dir: String,
    created: i64,
    tool: String,
    roots: Vec<String>,
    paths: Vec<SnapshotPathV1>,
    derivation_outputs: Vec<DerivationOutputV1>,
}

#[derive(Serialize, Deserialize)]
enum FlavorV1 {
    Guix,
    Nix,
}

#[derive(Serialize, Deserialize)]
struct SnapshotPathV1 {
    info: PathInfoV1,
    tree: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct PathInfoV1 {
    path: String,
    nar_hash: [u8; 32],
    nar_size: u64,
    registration_time: i64,
    deriver: Option<String>,
    references: Vec<String>,
    ultimate: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct DerivationOutputV1 {
    drv: String,
    id: String,
    path: String,
}

fn store_path(s: String) -> Result<StorePath, String> {
    StorePath::from_base_name(&s).map_err(|e| e.to_string())
}

fn store_paths(v: Vec<String>) -> Result<Vec<StorePath>, String> {
    v.into_iter().map(store_path).collect()
}

/// Encode a snapshot body (before compression).
pub(crate) fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let wire = SnapshotV1 {
        flavor: match s.flavor {
            Flavor::Guix => FlavorV1::Guix,
            Flavor::Nix => FlavorV1::Nix,
        },
        store_dir: s.store_dir.clone(),
        created: s.created,
        tool: s.tool.clone(),
        roots: s.roots.iter().map(|r| r.to_string()).collect(),
        paths: s
            .paths
            .iter()
            .map(|p| SnapshotPathV1 {
                info: PathInfoV1 {
                    path: p.info.path.to_string(),
                    nar_hash: p.info.nar_hash.0,
                    nar_size: p.info.nar_size,
                    registration_time: p.info.registration_time,
                    deriver: p.info.deriver.clone(),
                    references: p.info.references.iter().map(|r| r.to_string()).collect(),
                    ultimate: p.info.ultimate,
                    sigs: p.info.sigs.clone(),
                    ca: p.info.ca.clone(),
                },
                tree: p.tree.0,
            })
            .collect(),
        derivation_outputs: s
            .derivation_outputs
            .iter()
            .map(|o| DerivationOutputV1 {
                drv: o.drv.to_string(),
                id: o.id.clone(),
                path: o.path.clone(),
            })
            .collect(),
    };
    encode_bincode(&wire)
}

/// Decode a snapshot body (after decompression). Store path names are validated here; the
/// snapshot's consistency by [`Snapshot::validate`].
///
/// # Errors
/// A message saying what is malformed.
pub(crate) fn decode_snapshot(raw: &[u8]) -> Result<Snapshot, String> {
    let w: SnapshotV1 = decode_bincode(raw)?;
    let mut paths = Vec::with_capacity(w.paths.len());
    for p in w.paths {
        let i = p.info;
        paths.push(SnapshotPath {
            info: PathInfo {
                path: store_path(i.path)?,
                nar_hash: NarHash(i.nar_hash),
                nar_size: i.nar_size,
                registration_time: i.registration_time,
                deriver: i.deriver,
                references: store_paths(i.references)?,
                ultimate: i.ultimate,
                sigs: i.sigs,
                ca: i.ca,
            },
            tree: TreeId(p.tree),
        });
    }
    let mut derivation_outputs = Vec::with_capacity(w.derivation_outputs.len());
    for o in w.derivation_outputs {
        derivation_outputs.push(DerivationOutput {
            drv: store_path(o.drv)?,
            id: o.id,
            path: o.path,
        });
    }
    Ok(Snapshot {
        flavor: match w.flavor {
            FlavorV1::Guix => Flavor::Guix,
            FlavorV1::Nix => Flavor::Nix,
        },
        store_dir: w.store_dir,
        created: w.created,
        tool: w.tool,
        roots: store_paths(w.roots)?,
        paths,
        derivation_outputs,
    })
}

/// Key of a pack file.
pub fn pack_key(id: &super::PackId) -> String {
    format!("packs/{id}.pack")
}
/// Key of an index file.
pub fn index_key(id: &super::IndexId) -> String {
    format!("index/{id}.idx")
}
/// Key of a snapshot file.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("snapshots/{id}.snap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_detects_damage() {
        let (sum, bytes) = seal(INDEX_MAGIC, b"body");
        let (s2, body) = unseal(INDEX_MAGIC, &bytes, "t").unwrap();
        assert_eq!((s2, body), (sum, &b"body"[..]));
        assert!(unseal(SNAPSHOT_MAGIC, &bytes, "t").is_err());
        let mut flipped = bytes.clone();
        flipped[17] ^= 1;
        assert!(unseal(INDEX_MAGIC, &flipped, "t").is_err());
        assert!(unseal(INDEX_MAGIC, &bytes[..bytes.len() - 1], "t").is_err());
        let mut v2 = bytes.clone();
        v2[8] = 2;
        let err = unseal(INDEX_MAGIC, &v2, "t").unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
    }
}
