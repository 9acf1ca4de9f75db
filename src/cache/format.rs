//! The cache's bytes on disk (docs/FORMAT.md): file magics and versions, the envelope of
//! index and snapshot files, the bincode configuration, the limits per kind of file, and the
//! wire structs of snapshots.
//!
//! The wire structs are owned HERE, not derived from the domain types they carry (`PathInfo`
//! lives in `store`): a field reordered elsewhere cannot change the format. Each version's
//! bytes are pinned by the golden caches under `fixtures/cache/`, which every later version
//! must still read to the same values.

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::id::TreeId;
use super::id::{IndexId, SnapshotId};
use super::snapshot::{Snapshot, SnapshotPath};
use super::CacheError;
use crate::store::layout::Flavor;
use crate::store::path::StorePath;
use crate::store::path_info::DerivationOutput;
#[cfg(test)]
use crate::store::path_info::{NarHash, NixColumns, PathInfo};

/// Version of the cache format this tool writes; written in every file header.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this tool reads.
pub const OLDEST_READ_VERSION: u32 = 1;
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

/// [`seal`] of the bincode of `v`, encoded straight into the file's buffer, sized exactly
/// by a first encoding that only counts: no body beside the file, and no buffer growing by
/// doubling (an index file of 260,000 objects took 17 MB encoded, 13 MB sealed, at once).
pub(crate) fn seal_encoded<T: Serialize>(
    magic: &[u8; 8],
    version: u32,
    v: &T,
) -> ([u8; 32], Vec<u8>) {
    let cfg = bincode::config::standard();
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(v, &mut size, cfg).expect("in-memory encoding");
    let mut out = Vec::with_capacity(HEADER_LEN + size.bytes_written + 32);
    out.extend_from_slice(&header_of(magic, version));
    bincode::serde::encode_into_std_write(v, &mut out, cfg).expect("in-memory encoding");
    debug_assert_eq!(out.len(), HEADER_LEN + size.bytes_written);
    let sum = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&sum);
    (sum, out)
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

/// A file header of the version written: magic, version, flags.
pub(crate) fn header(magic: &[u8; 8]) -> [u8; HEADER_LEN] {
    header_of(magic, FORMAT_VERSION)
}

fn header_of(magic: &[u8; 8], version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h
}

/// Wrap a body in the envelope of index and snapshot files: header (of `version`), body,
/// BLAKE3 of all that. Returns (checksum, bytes); the checksum names the file. (Files are
/// written with [`seal_encoded`]; tests seal bodies made by hand.)
#[cfg(test)]
pub(crate) fn seal(magic: &[u8; 8], version: u32, body: &[u8]) -> ([u8; 32], Vec<u8>) {
    let mut out = Vec::with_capacity(body.len() + HEADER_LEN + 32);
    out.extend_from_slice(&header_of(magic, version));
    out.extend_from_slice(body);
    let sum = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&sum);
    (sum, out)
}

/// Why a file of format `version` (not one this storesync reads) is refused: one written by a
/// newer storesync says what to do.
pub(crate) fn unknown_version(version: u32) -> String {
    let upgrade = if version > FORMAT_VERSION {
        " (written by a newer storesync: upgrade storesync to read it)"
    } else {
        ""
    };
    format!(
        "format version {version}, this storesync reads {OLDEST_READ_VERSION} to \
         {FORMAT_VERSION}{upgrade}"
    )
}

/// Check and strip the envelope; `what` names the file in errors. Returns (checksum,
/// version, body).
///
/// # Errors
/// [`CacheError::Corrupt`] for a wrong magic, an unknown version, or a checksum mismatch.
pub(crate) fn unseal<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    what: &str,
) -> Result<([u8; 32], u32, &'a [u8]), CacheError> {
    let bad = |why: &str| CacheError::Corrupt(format!("{what}: {why}"));
    if bytes.len() < HEADER_LEN + 32 || &bytes[..8] != magic {
        return Err(bad(
            "not a storesync file of this kind (bad magic or truncated)",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(bad(&unknown_version(version)));
    }
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    let computed = *blake3::hash(content).as_bytes();
    if computed != sum {
        return Err(bad("checksum mismatch (truncated or modified)"));
    }
    Ok((computed, version, &content[HEADER_LEN..]))
}

#[cfg(test)]
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

#[cfg(test)]
#[derive(Serialize, Deserialize)]
struct SnapshotPathV1 {
    info: PathInfoV1,
    tree: [u8; 32],
}

#[cfg(test)]
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

#[cfg(test)]
#[derive(Serialize, Deserialize)]
struct DerivationOutputV1 {
    drv: String,
    id: String,
    path: String,
}

/// A snapshot's manifest (v2) or paths (v1) serialised straight from the [`Snapshot`],
/// field for field as the wire structs above (bincode writes no names): the same bytes
/// without a second copy of every path and string (at 100,000 paths, about 45 MB).
struct ManifestView<'a>(&'a Snapshot);

/// A sequence of store paths, as `Vec<String>`.
struct PathNames<'a>(&'a [StorePath]);

/// The paths, as `Vec<SnapshotPathV1>`.
struct PathsView<'a>(&'a [SnapshotPath]);

/// The derivation outputs, as `Vec<DerivationOutputV1>`.
struct OutputsView<'a>(&'a [DerivationOutput]);

#[derive(Serialize)]
struct SnapshotPathV1Ref<'a> {
    info: PathInfoV1Ref<'a>,
    tree: &'a [u8; 32],
}

#[derive(Serialize)]
struct PathInfoV1Ref<'a> {
    path: &'a str,
    nar_hash: &'a [u8; 32],
    nar_size: u64,
    registration_time: i64,
    deriver: Option<&'a str>,
    references: PathNames<'a>,
    ultimate: Option<i64>,
    sigs: Option<&'a str>,
    ca: Option<&'a str>,
}

#[derive(Serialize)]
struct DerivationOutputV1Ref<'a> {
    drv: &'a str,
    id: &'a str,
    path: &'a str,
}

impl Serialize for PathNames<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(StorePath::base_name))
    }
}

impl Serialize for PathsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| SnapshotPathV1Ref {
            info: PathInfoV1Ref {
                path: p.info.path.base_name(),
                nar_hash: &p.info.nar_hash.0,
                nar_size: p.info.nar_size,
                registration_time: p.info.registration_time,
                deriver: p.info.deriver.as_deref(),
                references: PathNames(&p.info.references),
                ultimate: p.info.ultimate(),
                sigs: p.info.sigs(),
                ca: p.info.ca(),
            },
            tree: &p.tree.0,
        }))
    }
}

impl Serialize for OutputsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|o| DerivationOutputV1Ref {
            drv: o.drv.base_name(),
            id: &o.id,
            path: &o.path,
        }))
    }
}

impl Serialize for ManifestView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ManifestV2", 3)?;
        st.serialize_field("roots", &PathNames(&self.0.roots))?;
        st.serialize_field("paths", &PathsView(&self.0.paths))?;
        st.serialize_field(
            "derivation_outputs",
            &OutputsView(&self.0.derivation_outputs),
        )?;
        st.end()
    }
}

/// A bincode writer feeding a BLAKE3 hasher.
struct HashWriter(blake3::Hasher);

impl bincode::enc::write::Writer for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.update(bytes);
        Ok(())
    }
}

/// The bincode of a snapshot's manifest, in a vector of exactly its size (measured by a
/// first pass: growing it by doubling would hold up to twice as much).
#[cfg(test)]
fn encode_manifest(s: &Snapshot) -> Vec<u8> {
    let cfg = bincode::config::standard();
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(ManifestView(s), &mut size, cfg).expect("counting");
    let mut out = vec![0u8; size.bytes_written];
    let n = bincode::serde::encode_into_slice(ManifestView(s), &mut out, cfg)
        .expect("in-memory encoding");
    debug_assert_eq!(n, out.len());
    out
}

/// [`manifest_id`] of a snapshot's manifest, hashed as it is serialised (no buffer).
fn manifest_id_of(s: &Snapshot) -> [u8; 32] {
    let mut h = HashWriter(blake3::Hasher::new_derive_key(MANIFEST_CONTEXT));
    bincode::serde::encode_into_writer(ManifestView(s), &mut h, bincode::config::standard())
        .expect("hashing");
    *h.0.finalize().as_bytes()
}

#[cfg(test)]
fn store_path(s: String) -> Result<StorePath, String> {
    StorePath::from_string(s).map_err(|e| e.to_string())
}

#[cfg(test)]
fn store_paths(v: Vec<String>) -> Result<Vec<StorePath>, String> {
    v.into_iter().map(store_path).collect()
}

fn flavor_to_wire(f: Flavor) -> FlavorV1 {
    match f {
        Flavor::Guix => FlavorV1::Guix,
        Flavor::Nix => FlavorV1::Nix,
    }
}

fn flavor_from_wire(f: FlavorV1) -> Flavor {
    match f {
        FlavorV1::Guix => Flavor::Guix,
        FlavorV1::Nix => Flavor::Nix,
    }
}

#[cfg(test)]
fn paths_to_wire(s: &Snapshot) -> (Vec<String>, Vec<SnapshotPathV1>, Vec<DerivationOutputV1>) {
    let roots = s.roots.iter().map(|r| r.to_string()).collect();
    let paths = s
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
                ultimate: p.info.ultimate(),
                sigs: p.info.sigs().map(str::to_owned),
                ca: p.info.ca().map(str::to_owned),
            },
            tree: p.tree.0,
        })
        .collect();
    let outputs = s
        .derivation_outputs
        .iter()
        .map(|o| DerivationOutputV1 {
            drv: o.drv.to_string(),
            id: o.id.clone(),
            path: o.path.clone(),
        })
        .collect();
    (roots, paths, outputs)
}

#[cfg(test)]
/// The store paths, rows and trees of a snapshot, as both versions carry them.
type Manifest = (Vec<StorePath>, Vec<SnapshotPath>, Vec<DerivationOutput>);

#[cfg(test)]
fn paths_from_wire(
    roots: Vec<String>,
    wire_paths: Vec<SnapshotPathV1>,
    wire_outputs: Vec<DerivationOutputV1>,
) -> Result<Manifest, String> {
    // `into_iter().map().collect()` between types of one size reuses the vector and each
    // string in place: no second copy of the paths while they are converted.
    let paths = wire_paths
        .into_iter()
        .map(|p| {
            let i = p.info;
            Ok(SnapshotPath {
                info: PathInfo {
                    path: store_path(i.path)?,
                    nar_hash: NarHash(i.nar_hash),
                    nar_size: i.nar_size,
                    registration_time: i.registration_time,
                    deriver: i.deriver,
                    references: store_paths(i.references)?,
                    nix: NixColumns::boxed(i.ultimate, i.sigs, i.ca),
                },
                tree: TreeId(p.tree),
            })
        })
        .collect::<Result<Vec<SnapshotPath>, String>>()?;
    let outputs = wire_outputs
        .into_iter()
        .map(|o| {
            Ok(DerivationOutput {
                drv: store_path(o.drv)?,
                id: o.id,
                path: o.path,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((store_paths(roots)?, paths, outputs))
}

/// Encode a snapshot body of format v1 (before compression); kept for tests of the v1 reader.
#[cfg(test)]
pub(crate) fn encode_snapshot_v1(s: &Snapshot) -> Vec<u8> {
    let (roots, paths, derivation_outputs) = paths_to_wire(s);
    encode_bincode(&SnapshotV1 {
        flavor: flavor_to_wire(s.flavor),
        store_dir: s.store_dir.clone(),
        created: s.created,
        tool: s.tool.clone(),
        roots,
        paths,
        derivation_outputs,
    })
}

#[cfg(test)]
/// Decode a snapshot body of format v1 (after decompression). Store path names are validated
/// here; the snapshot's consistency by [`Snapshot::validate`].
///
/// # Errors
/// A message saying what is malformed.
pub(crate) fn decode_snapshot_v1(raw: &[u8]) -> Result<Snapshot, String> {
    let w: SnapshotV1 = decode_bincode(raw)?;
    let (roots, paths, derivation_outputs) =
        paths_from_wire(w.roots, w.paths, w.derivation_outputs)?;
    Ok(Snapshot {
        version: 1,
        key: String::new(),
        flavor: flavor_from_wire(w.flavor),
        store_dir: w.store_dir,
        created: w.created,
        tool: w.tool,
        indexes: Vec::new(),
        parent: None,
        roots,
        paths,
        derivation_outputs,
    })
}

/// The head of a v2 snapshot file: what choosing a snapshot needs, readable without the rest.
#[derive(Serialize, Deserialize)]
struct SnapshotHeadV2 {
    key: String,
    created: i64,
    tool: String,
    flavor: FlavorV1,
    store_dir: String,
    paths: u64,
    nar_bytes: u64,
    manifest: [u8; 32],
    indexes: Vec<[u8; 32]>,
    parent: Option<[u8; 32]>,
}

#[cfg(test)]
/// The manifest of a v2 snapshot: the paths, their rows and trees.
#[derive(Serialize, Deserialize)]
struct ManifestV2 {
    roots: Vec<String>,
    paths: Vec<SnapshotPathV1>,
    derivation_outputs: Vec<DerivationOutputV1>,
}

/// What the head of a snapshot says, without its paths: enough to choose a snapshot by key
/// and date, and to know which index files locate its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHead {
    /// Format version of the file.
    pub version: u32,
    /// The key it was saved under (`save --key`); empty when none.
    pub key: String,
    /// Unix nanoseconds at save.
    pub created: i64,
    /// The tool that wrote it.
    pub tool: String,
    /// Daemon conventions of the source store.
    pub flavor: Flavor,
    /// Logical store directory of the source.
    pub store_dir: String,
    /// Number of store paths.
    pub paths: u64,
    /// Total NAR bytes of the paths.
    pub nar_bytes: u64,
    /// The index files locating every object the snapshot needs (v2; empty for v1: all).
    pub indexes: Vec<IndexId>,
    /// The snapshot this one was saved on top of, if any.
    pub parent: Option<SnapshotId>,
    /// Domain-separated BLAKE3 of the manifest (v2), what the signing id commits to.
    pub manifest: [u8; 32],
}

/// Largest key a snapshot may be saved under, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Largest head of a v2 snapshot file.
pub const MAX_HEAD_LEN: u32 = 16 << 20;

const MANIFEST_CONTEXT: &str = "storesync 2026-12 snapshot manifest v2";
const SIGNING_CONTEXT: &str = "storesync 2026-12 snapshot signing v2";

/// Check a snapshot key: at most [`MAX_KEY_LEN`] bytes, no control characters.
///
/// # Errors
/// A message saying why the key is refused.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "a key is at most {MAX_KEY_LEN} bytes ({} given)",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("a key holds no control characters".into());
    }
    Ok(())
}

impl SnapshotHead {
    /// The snapshot's id as users and signatures know it. For v2, a BLAKE3 (derive-key mode)
    /// over the key, creation time, flavour, store directory and manifest, and not over the
    /// index list, which a garbage collection rewrites: the id and any signature survive a
    /// collection. For v1, the file's checksum (`file_id`).
    pub fn id(&self, file_id: &[u8; 32]) -> SnapshotId {
        if self.version < 2 {
            return SnapshotId(*file_id);
        }
        let mut h = blake3::Hasher::new_derive_key(SIGNING_CONTEXT);
        h.update(&encode_bincode(&(
            &self.key,
            self.created,
            flavor_to_wire(self.flavor),
            &self.store_dir,
            self.manifest,
        )));
        SnapshotId(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
pub(crate) fn manifest_id(raw: &[u8]) -> [u8; 32] {
    let mut h = manifest_hasher();
    h.update(raw);
    *h.finalize().as_bytes()
}

/// The hasher of a manifest's digest ([`manifest_id`]), for a reader that hashes as it goes.
pub(crate) fn manifest_hasher() -> blake3::Hasher {
    blake3::Hasher::new_derive_key(MANIFEST_CONTEXT)
}

/// Append to `out` one zstd frame (declaring its size) of the bincode of `s`'s manifest,
/// serialised and compressed as it goes; returns the manifest's id ([`manifest_id`] of that
/// bincode) and `out`.
fn compress_manifest(s: &Snapshot, level: i32, out: Vec<u8>) -> ([u8; 32], Vec<u8>) {
    /// Hashes what goes through on its way to the encoder.
    struct Tee<W: std::io::Write> {
        hash: blake3::Hasher,
        enc: zstd::stream::write::Encoder<'static, W>,
    }
    impl<W: std::io::Write> std::io::Write for Tee<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.enc.write_all(b)?;
            self.hash.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.enc.flush()
        }
    }
    let cfg = bincode::config::standard();
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(ManifestView(s), &mut size, cfg).expect("counting");
    // Room for the worst case reserved at once, the checksum after the frame included: the
    // buffer is not moved as it fills, and only the pages written are touched (it grew by
    // doubling, holding up to 3 times the frame while moved: 24 MB for a 13 MB frame).
    let mut out = out;
    out.reserve_exact(zstd::zstd_safe::compress_bound(size.bytes_written) + 32);
    let mut enc = zstd::stream::write::Encoder::new(out, level).expect("a zstd context");
    enc.include_contentsize(true).expect("a zstd parameter");
    enc.set_pledged_src_size(Some(size.bytes_written as u64))
        .expect("a zstd parameter");
    let tee = Tee {
        hash: blake3::Hasher::new_derive_key(MANIFEST_CONTEXT),
        enc,
    };
    let mut w = std::io::BufWriter::with_capacity(1 << 16, tee);
    bincode::serde::encode_into_std_write(ManifestView(s), &mut w, cfg)
        .expect("in-memory encoding");
    let tee = w
        .into_inner()
        .map_err(|e| e.into_error())
        .expect("in memory");
    let out = tee.enc.finish().expect("in-memory compression");
    (*tee.hash.finalize().as_bytes(), out)
}

/// Encode a whole v2 snapshot file. Returns (id, key under `snapshots/`, bytes).
///
/// Layout after the 16-byte header: the head's length (u32 LE), the head (bincode), the
/// manifest (one zstd frame of its bincode), and the BLAKE3 of everything before it.
pub(crate) fn encode_snapshot_v2(s: &Snapshot, level: i32) -> (SnapshotId, String, Vec<u8>) {
    let head_of = |manifest: [u8; 32]| {
        encode_bincode(&SnapshotHeadV2 {
            key: s.key.clone(),
            created: s.created,
            tool: s.tool.clone(),
            flavor: flavor_to_wire(s.flavor),
            store_dir: s.store_dir.clone(),
            paths: s.paths.len() as u64,
            nar_bytes: s.nar_bytes(),
            manifest,
            indexes: s.indexes.iter().map(|i| i.0).collect(),
            parent: s.parent.map(|p| p.0),
        })
    };
    // The manifest is serialised straight into its zstd frame, in place in the file, and
    // hashed on the way (no buffer of its bincode, no copy of the frame): the head that
    // names it is written first with a placeholder of the same length (the id is a fixed
    // 32 bytes) and overwritten once the frame is done.
    let placeholder = head_of([0; 32]);
    let mut out = Vec::new();
    out.extend_from_slice(&header_of(SNAPSHOT_MAGIC, 2));
    out.extend_from_slice(&(placeholder.len() as u32).to_le_bytes());
    let head_at = out.len();
    out.extend_from_slice(&placeholder);
    let (manifest, mut out) = compress_manifest(s, level, out);
    let head = head_of(manifest);
    assert_eq!(head.len(), placeholder.len(), "a fixed-length manifest id");
    out[head_at..head_at + head.len()].copy_from_slice(&head);
    let sum = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&sum);
    let bytes = out;
    let head = SnapshotHead {
        manifest,
        ..head_of_v1(s)
    };
    let id = head.id(&sum);
    (id, snapshot_key_v2(s.created, &id, &sum), bytes)
}

/// Split the body of a v2 snapshot file (after [`unseal`]) into its head and manifest frame.
pub(crate) fn split_v2(body: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if body.len() < 4 {
        return Err("truncated before the head's length".into());
    }
    let len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
    if len > MAX_HEAD_LEN || len as usize > body.len() - 4 {
        return Err(format!("head of {len} bytes does not fit"));
    }
    Ok(body[4..].split_at(len as usize))
}

/// Decode a v2 head (its strings already checked by the caller against the bytes left).
pub(crate) fn decode_head_v2(raw: &[u8]) -> Result<SnapshotHead, String> {
    let h: SnapshotHeadV2 = decode_bincode(raw)?;
    check_key(&h.key)?;
    // Each index file once: the list is not covered by the snapshot's id (a hostile head
    // naming one large file 400,000 times had its size counted, and room reserved for its
    // entries, as many times).
    let mut seen = std::collections::HashSet::with_capacity(h.indexes.len());
    if let Some(twice) = h.indexes.iter().find(|i| !seen.insert(*i)) {
        return Err(format!(
            "the head names index file {} more than once",
            crate::hex::hex(twice)
        ));
    }
    Ok(SnapshotHead {
        version: 2,
        key: h.key,
        created: h.created,
        tool: h.tool,
        flavor: flavor_from_wire(h.flavor),
        store_dir: h.store_dir,
        paths: h.paths,
        nar_bytes: h.nar_bytes,
        indexes: h.indexes.into_iter().map(IndexId).collect(),
        parent: h.parent.map(SnapshotId),
        manifest: h.manifest,
    })
}

#[cfg(test)]
/// Decode a v2 manifest (decompressed; strings checked by the caller) under its head.
pub(crate) fn decode_manifest_v2(head: SnapshotHead, raw: Vec<u8>) -> Result<Snapshot, String> {
    if manifest_id(&raw) != head.manifest {
        return Err("manifest does not match the head's digest".into());
    }
    let m: ManifestV2 = decode_bincode(&raw)?;
    drop(raw); // not needed while the paths are converted
    if m.paths.len() as u64 != head.paths {
        return Err(format!(
            "head says {} paths, manifest holds {}",
            head.paths,
            m.paths.len()
        ));
    }
    let (roots, paths, derivation_outputs) =
        paths_from_wire(m.roots, m.paths, m.derivation_outputs)?;
    let snap = Snapshot {
        version: 2,
        key: head.key,
        flavor: head.flavor,
        store_dir: head.store_dir,
        created: head.created,
        tool: head.tool,
        indexes: head.indexes,
        parent: head.parent,
        roots,
        paths,
        derivation_outputs,
    };
    if snap.nar_bytes() != head.nar_bytes {
        return Err("head's NAR byte count differs from the manifest's".into());
    }
    Ok(snap)
}

/// The head of a snapshot already decoded whole (v1 files carry no separate head).
pub fn head_of(s: &Snapshot) -> SnapshotHead {
    SnapshotHead {
        manifest: if s.version >= 2 {
            manifest_id_of(s)
        } else {
            [0; 32]
        },
        ..head_of_v1(s)
    }
}

/// [`head_of`] without the manifest's digest (zeros).
fn head_of_v1(s: &Snapshot) -> SnapshotHead {
    SnapshotHead {
        version: s.version,
        key: s.key.clone(),
        created: s.created,
        tool: s.tool.clone(),
        flavor: s.flavor,
        store_dir: s.store_dir.clone(),
        paths: s.paths.len() as u64,
        nar_bytes: s.nar_bytes(),
        indexes: s.indexes.clone(),
        parent: s.parent,
        manifest: [0; 32],
    }
}

/// Key of a pack file.
pub fn pack_key(id: &super::PackId) -> String {
    format!("packs/{id}.pack")
}
/// Key of an index file.
pub fn index_key(id: &super::IndexId) -> String {
    format!("index/{id}.idx")
}
/// Key of a v1 snapshot file.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("snapshots/{id}.snap")
}
/// Key of a v2 snapshot file: its creation time first (16 hex digits), so a listing sorts
/// by date and says it without a read; then its id (stable across garbage collections);
/// then the first 16 hex digits of the file's checksum (which a collection's rewrite of the
/// index list changes).
pub fn snapshot_key_v2(created: i64, id: &SnapshotId, file_sum: &[u8; 32]) -> String {
    format!(
        "snapshots/{:016x}-{id}-{}.snap",
        created.max(0) as u64,
        &crate::hex::hex(file_sum)[..16]
    )
}

/// Parse a key under `packs/`.
pub fn parse_pack_key(key: &str) -> Option<super::PackId> {
    super::PackId::parse(key.strip_prefix("packs/")?.strip_suffix(".pack")?)
}

/// Parse a key under `index/`.
pub fn parse_index_key(key: &str) -> Option<super::IndexId> {
    super::IndexId::parse(key.strip_prefix("index/")?.strip_suffix(".idx")?)
}

/// A snapshot file's key, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotName {
    /// Creation time (v2 names).
    pub created: Option<i64>,
    /// The snapshot's id.
    pub id: SnapshotId,
    /// The first 8 bytes of the file's checksum (v2 names; a v1 file is named by all of it).
    pub file_sum: Option<[u8; 8]>,
}

/// Parse a key under `snapshots/`.
pub fn parse_snapshot_key(key: &str) -> Option<SnapshotName> {
    let name = key.strip_prefix("snapshots/")?.strip_suffix(".snap")?;
    let parts: Vec<&str> = name.split('-').collect();
    match parts.as_slice() {
        [id] => Some(SnapshotName {
            created: None,
            id: SnapshotId::parse(id)?,
            file_sum: None,
        }),
        [t, id, sum] if t.len() == 16 && sum.len() == 16 => Some(SnapshotName {
            created: Some(
                i64::try_from(u64::from_be_bytes(crate::hex::parse_lower_hex::<8>(t)?)).ok()?,
            ),
            id: SnapshotId::parse(id)?,
            file_sum: Some(crate::hex::parse_lower_hex::<8>(sum)?),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_detects_damage() {
        let (sum, bytes) = seal(INDEX_MAGIC, 1, b"body");
        let (s2, v, body) = unseal(INDEX_MAGIC, &bytes, "t").unwrap();
        assert_eq!((s2, v, body), (sum, 1, &b"body"[..]));
        assert!(unseal(SNAPSHOT_MAGIC, &bytes, "t").is_err());
        let mut flipped = bytes.clone();
        flipped[17] ^= 1;
        assert!(unseal(INDEX_MAGIC, &flipped, "t").is_err());
        assert!(unseal(INDEX_MAGIC, &bytes[..bytes.len() - 1], "t").is_err());
        let mut v2 = bytes.clone();
        v2[8] = 3;
        let err = unseal(INDEX_MAGIC, &v2, "t").unwrap_err().to_string();
        assert!(err.contains("format version 3"), "{err}");
    }

    fn sample(optional: bool) -> Snapshot {
        let p = |s: &str| StorePath::from_base_name(s).unwrap();
        let a = p("0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-a");
        let b = p("1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-b.drv");
        let info = |path: StorePath, refs: Vec<StorePath>| PathInfo {
            path,
            nar_hash: NarHash([7; 32]),
            nar_size: 1234567,
            registration_time: -5,
            deriver: optional.then(|| "/gnu/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-b.drv".into()),
            references: refs,
            nix: NixColumns::boxed(
                optional.then_some(1),
                optional.then(|| "k:sig".into()),
                optional.then(|| "fixed:sha256:x".into()),
            ),
        };
        Snapshot {
            version: 2,
            key: "k".into(),
            flavor: Flavor::Guix,
            store_dir: "/gnu/store".into(),
            created: 1,
            tool: "t".into(),
            indexes: vec![],
            parent: None,
            roots: vec![a.clone()],
            paths: vec![
                SnapshotPath {
                    info: info(b.clone(), vec![]),
                    tree: TreeId([1; 32]),
                },
                SnapshotPath {
                    info: info(a.clone(), vec![a.clone(), b.clone()]),
                    tree: TreeId([2; 32]),
                },
            ],
            derivation_outputs: vec![DerivationOutput {
                drv: b,
                id: "out".into(),
                path: "/gnu/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-a".into(),
            }],
        }
    }

    #[test]
    fn a_large_manifest_is_compressed_as_it_is_serialised() {
        // Many zstd blocks (the manifest is several MiB): the frame written in place must
        // hold the manifest's bincode, declare its size, and the head the id of those bytes.
        let mut s = sample(true);
        let template = s.paths[1].clone();
        for i in 0..20_000u32 {
            let mut p = template.clone();
            p.info.path = StorePath::from_base_name(&format!(
                "{}-p{i}",
                crate::store::path::nixbase32_encode(&[i as u8; 20])
            ))
            .unwrap();
            p.info.nar_size = u64::from(i) * 77;
            p.tree = TreeId(*blake3::hash(&i.to_le_bytes()).as_bytes());
            s.paths.push(p);
        }
        let raw = encode_manifest(&s);
        assert!(raw.len() > 4 << 20, "{}", raw.len());
        let (_, _, bytes) = encode_snapshot_v2(&s, 3);
        let (_, version, body) = unseal(SNAPSHOT_MAGIC, &bytes, "t").unwrap();
        assert_eq!(version, 2);
        let (head, frame) = split_v2(body).unwrap();
        let head = decode_head_v2(head).unwrap();
        assert_eq!(head.manifest, manifest_id(&raw));
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(frame).unwrap(),
            Some(raw.len() as u64)
        );
        assert_eq!(zstd::decode_all(frame).unwrap(), raw);
        assert_eq!(decode_manifest_v2(head, raw).unwrap(), s);
    }

    #[test]
    fn paths_are_converted_from_the_wire_in_place() {
        let s = sample(true);
        let (roots, paths, outputs) = paths_to_wire(&s);
        let at = paths.as_ptr() as usize;
        let (_, converted, _) = paths_from_wire(roots, paths, outputs).unwrap();
        assert_eq!(
            converted.as_ptr() as usize,
            at,
            "a second vector was allocated"
        );
        assert_eq!(converted, s.paths);
    }

    #[test]
    fn the_manifest_view_encodes_exactly_as_the_wire_structs() {
        for optional in [false, true] {
            let s = sample(optional);
            let (roots, paths, derivation_outputs) = paths_to_wire(&s);
            let wire = encode_bincode(&ManifestV2 {
                roots,
                paths,
                derivation_outputs,
            });
            assert_eq!(encode_manifest(&s), wire, "optional fields: {optional}");
            assert_eq!(manifest_id_of(&s), manifest_id(&wire));
        }
    }
}
