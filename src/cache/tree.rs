//! A tree: one store path's NAR structure with blob ids in place of file contents. Trees are
//! content-addressed (BLAKE3 of their encoding under a domain key, so a tree never shares an
//! id with a blob) and validated on decode: entry names are non-empty, free of `/` and NUL,
//! not `.` or `..`, strictly sorted (hence unique); nesting is bounded.
//!
//! Two encodings (docs/FORMAT.md, "Objects"): v1 (bincode of [`Node`] without
//! [`Node::Rewritten`]; read only) and v2 (a table of hash parts, then the nodes, files whose
//! references were replaced by a placeholder naming table entries). Each has its own
//! derive-key context, so a tree's id says which encoding it is in: a reader never guesses.

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use super::rewrite::Rewrite;
use super::{BlobId, Cache, CacheError, ObjectKind, TreeId};

/// Deepest directory nesting accepted in a tree.
pub const MAX_DEPTH: usize = 256;

/// One node of a store path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A regular file.
    Regular {
        /// The executable bit (NAR `executable`).
        executable: bool,
        /// Length in bytes.
        size: u64,
        /// BLAKE3 of the contents.
        blob: BlobId,
        /// SHA-256 of this file's own NAR serialisation: its name under `<store>/.links`.
        /// All zeros for files under 8192 bytes, which the daemon does not deduplicate.
        file_nar_hash: [u8; 32],
    },
    /// A symbolic link.
    Symlink {
        /// Target bytes, verbatim.
        target: Vec<u8>,
    },
    /// A directory, entries sorted by name bytes.
    Directory(Vec<Entry>),
    /// A regular file whose blob holds its contents with the hash parts of store paths
    /// replaced by [`PLACEHOLDER`](super::rewrite::PLACEHOLDER) (v2 trees only; see
    /// [`super::rewrite`]). `rewrites` is not empty, sorted by offset, without overlaps, each
    /// inside the file.
    Rewritten {
        /// The executable bit (NAR `executable`).
        executable: bool,
        /// Length in bytes.
        size: u64,
        /// BLAKE3 of the rewritten contents.
        blob: BlobId,
        /// SHA-256 of the file's own NAR with its REAL contents (its `.links` name), or zeros
        /// under 8192 bytes.
        file_nar_hash: [u8; 32],
        /// Where the hash parts go back.
        rewrites: Vec<Rewrite>,
    },
}

/// A regular file of a tree, whichever node holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File<'a> {
    /// The executable bit.
    pub executable: bool,
    /// Length in bytes.
    pub size: u64,
    /// The blob (rewritten contents when `rewrites` is not empty).
    pub blob: BlobId,
    /// Its `.links` name (zeros under 8192 bytes).
    pub file_nar_hash: [u8; 32],
    /// Hash parts to put back, by offset; empty for a plain file.
    pub rewrites: &'a [Rewrite],
}

/// A named directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File name bytes.
    pub name: Vec<u8>,
    /// The node.
    pub node: Node,
}

impl Node {
    /// Encode for storage in the v2 encoding (the one written); returns (id, bytes).
    pub fn encode(&self) -> (TreeId, Vec<u8>) {
        let bytes = super::tree_v2::encode(self);
        (tree_id(TREE_V2, &bytes), bytes)
    }

    /// Encode in the v1 encoding (read only since v2; for tests and fixtures). A
    /// [`Node::Rewritten`] has no v1 form: `None`.
    pub fn encode_v1(&self) -> Option<(TreeId, Vec<u8>)> {
        let mut rewritten = false;
        self.for_each_file(&mut |f| rewritten |= !f.rewrites.is_empty());
        if rewritten {
            return None;
        }
        let bytes = super::format::encode_bincode(self);
        Some((tree_id(TREE_V1, &bytes), bytes))
    }

    /// Decode and validate a tree read from the cache under `id`, in the encoding its id
    /// names.
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] when the bytes do not hash to `id` or the tree is malformed.
    pub fn decode(id: &TreeId, bytes: &[u8]) -> Result<Node, CacheError> {
        let decoded = if tree_id(TREE_V2, bytes) == *id {
            super::decode::decode_tree_v2(bytes)
        } else if tree_id(TREE_V1, bytes) == *id {
            super::decode::decode_tree_v1(bytes)
        } else {
            return Err(CacheError::Corrupt(format!(
                "tree {id}: content does not match its id"
            )));
        };
        decoded.map_err(|e| CacheError::Corrupt(format!("tree {id}: {e}")))
    }

    /// The regular file this node is, if it is one.
    pub fn file(&self) -> Option<File<'_>> {
        match self {
            Node::Regular {
                executable,
                size,
                blob,
                file_nar_hash,
            } => Some(File {
                executable: *executable,
                size: *size,
                blob: *blob,
                file_nar_hash: *file_nar_hash,
                rewrites: &[],
            }),
            Node::Rewritten {
                executable,
                size,
                blob,
                file_nar_hash,
                rewrites,
            } => Some(File {
                executable: *executable,
                size: *size,
                blob: *blob,
                file_nar_hash: *file_nar_hash,
                rewrites,
            }),
            _ => None,
        }
    }

    /// A regular file node: [`Node::Regular`] when `rewrites` is empty, else
    /// [`Node::Rewritten`].
    pub fn regular(
        executable: bool,
        size: u64,
        blob: BlobId,
        file_nar_hash: [u8; 32],
        rewrites: Vec<Rewrite>,
    ) -> Node {
        if rewrites.is_empty() {
            Node::Regular {
                executable,
                size,
                blob,
                file_nar_hash,
            }
        } else {
            Node::Rewritten {
                executable,
                size,
                blob,
                file_nar_hash,
                rewrites,
            }
        }
    }

    /// The size of the NAR this tree describes (a function of its structure: names, sizes
    /// and targets, not of the blobs' bytes), without recursion; saturating at `u64::MAX`
    /// for sizes no file system holds. A restore compares it with the snapshot's `narSize`
    /// before writing, so that a path's writes are bounded by the size its row declares.
    pub fn nar_size(&self) -> u64 {
        use crate::nar::{string_len as s, NAR_MAGIC};
        /// The NAR strings `tokens` take.
        fn t(tokens: &[&[u8]]) -> u64 {
            tokens.iter().map(|k| s(k.len() as u64)).sum()
        }
        let mut total = s(NAR_MAGIC.len() as u64);
        let mut stack = vec![self];
        while let Some(n) = stack.pop() {
            let node = t(&[b"(", b"type", b")"]);
            let more = match n {
                Node::Regular {
                    executable, size, ..
                }
                | Node::Rewritten {
                    executable, size, ..
                } => {
                    let flag = if *executable {
                        t(&[b"executable", b""])
                    } else {
                        0
                    };
                    (t(&[b"regular", b"contents"]) + flag).saturating_add(s(*size))
                }
                Node::Symlink { target } => t(&[b"symlink", b"target", target]),
                Node::Directory(entries) => {
                    stack.extend(entries.iter().map(|e| &e.node));
                    entries.iter().fold(t(&[b"directory"]), |sum, e| {
                        sum.saturating_add(t(&[b"entry", b"(", b"name", &e.name, b"node", b")"]))
                    })
                }
            };
            total = total.saturating_add(node).saturating_add(more);
        }
        total
    }

    /// Visit every regular file, in NAR order, without recursion.
    pub fn for_each_file<'a>(&'a self, f: &mut impl FnMut(File<'a>)) {
        let mut stack = vec![self];
        while let Some(n) = stack.pop() {
            match n {
                Node::Directory(entries) => stack.extend(entries.iter().rev().map(|e| &e.node)),
                n => {
                    if let Some(file) = n.file() {
                        f(file);
                    }
                }
            }
        }
    }

    /// The validation `decode` did after bincode before it validated as it decoded; the
    /// reference its tests compare with.
    #[cfg(test)]
    pub(super) fn validate(&self, depth: usize) -> Result<(), String> {
        match self {
            Node::Regular { .. } => Ok(()),
            Node::Rewritten { .. } => Err("a rewritten file in a v1 tree".into()),
            Node::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    Err("symlink target is empty or holds NUL".into())
                } else {
                    Ok(())
                }
            }
            Node::Directory(entries) => {
                if depth >= MAX_DEPTH {
                    return Err(format!("directories nested deeper than {MAX_DEPTH}"));
                }
                for (i, e) in entries.iter().enumerate() {
                    if !valid_name(&e.name) {
                        return Err(format!(
                            "bad entry name {:?}",
                            String::from_utf8_lossy(&e.name)
                        ));
                    }
                    if i > 0 && entries[i - 1].name >= e.name {
                        return Err("entries are not strictly sorted".into());
                    }
                    e.node.validate(depth + 1)?;
                }
                Ok(())
            }
        }
    }

    /// Visit every regular file's blob.
    pub fn for_each_blob(&self, f: &mut impl FnMut(&BlobId, u64)) {
        self.for_each_file(&mut |file| f(&file.blob, file.size));
    }
}

/// A file name allowed in a store directory.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Derive-key context of v1 tree ids.
const TREE_V1: &str = "storesync 2026-11 tree v1";
/// Derive-key context of v2 tree ids.
const TREE_V2: &str = "storesync 2026-12 tree v2";

/// Whether `bytes` are the tree `id` names, in either encoding (a check of bytes copied
/// without decoding them).
/// Hashers of a tree's bytes under each encoding's context: a tree read as a stream is
/// `id` when either gives it (as [`is_tree`] says of bytes at hand).
pub(crate) fn tree_id_hashers() -> [blake3::Hasher; 2] {
    [
        blake3::Hasher::new_derive_key(TREE_V2),
        blake3::Hasher::new_derive_key(TREE_V1),
    ]
}

pub(crate) fn is_tree(id: &TreeId, bytes: &[u8]) -> bool {
    tree_id(TREE_V2, bytes) == *id || tree_id(TREE_V1, bytes) == *id
}

fn tree_id(context: &str, bytes: &[u8]) -> TreeId {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(bytes);
    TreeId(*h.finalize().as_bytes())
}

impl Cache {
    /// The `.links` name (file NAR SHA-256) of every file some tree in the cache records, for
    /// files of [`crate::store::links::LINKS_MIN_SIZE`] bytes or more, by
    /// [`File::content_key`].
    ///
    /// A save uses it to skip the second SHA-256 pass over contents the cache already holds:
    /// the file NAR hash is a function of the real contents (named by the blob id and the
    /// hash parts put back) and the executable bit. Only frames holding nothing but trees are read (caches written since
    /// trees got frames of their own), so this never decompresses file contents; trees that
    /// cannot be read are skipped: the caller hashes those files itself.
    pub fn links_hashes(&self) -> HashMap<[u8; 32], [u8; 32]> {
        let mut frames: HashMap<(u32, u64), Vec<super::ObjectId>> = HashMap::new();
        let mut mixed = std::collections::HashSet::new();
        self.for_each_object(&mut |id, loc| {
            let key = (loc.pack, loc.frame_offset);
            match loc.kind {
                ObjectKind::Tree => frames.entry(key).or_default().push(*id),
                ObjectKind::Blob => {
                    mixed.insert(key);
                }
            }
        });
        let mut map = HashMap::new();
        for (key, trees) in frames {
            if mixed.contains(&key) {
                continue;
            }
            for id in trees {
                let Ok(node) = self.read_tree(&TreeId(id.0)) else {
                    continue;
                };
                node.for_each_file(&mut |f| {
                    if f.size >= crate::store::links::LINKS_MIN_SIZE {
                        map.insert(f.content_key(), f.file_nar_hash);
                    }
                });
            }
        }
        map
    }
}

impl File<'_> {
    /// A digest of what determines the file's real bytes and NAR: the blob, the
    /// executable bit and the hash parts put back.
    pub fn content_key(&self) -> [u8; 32] {
        content_key(&self.blob, self.executable, self.rewrites)
    }
}

/// The [`File::content_key`] of a file of blob `blob`, executable or not, with `rewrites`.
pub fn content_key(blob: &BlobId, executable: bool, rewrites: &[Rewrite]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("storesync 2026-12 file content key");
    h.update(&blob.0);
    h.update(&[u8::from(executable)]);
    for r in rewrites {
        h.update(&r.offset.to_le_bytes());
        h.update(&r.hash_part);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            (
                any::<bool>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(executable, size, b, h)| Node::Regular {
                    executable,
                    size,
                    blob: BlobId(b),
                    file_nar_hash: h
                }),
            "[a-z/._-]{1,20}".prop_map(|t| Node::Symlink {
                target: t.into_bytes()
            }),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            proptest::collection::btree_map("[A-Za-z0-9._-]{1,8}", inner, 0..6).prop_map(|m| {
                Node::Directory(
                    m.into_iter()
                        .filter(|(k, _)| valid_name(k.as_bytes()))
                        .map(|(name, node)| Entry {
                            name: name.into_bytes(),
                            node,
                        })
                        .collect(),
                )
            })
        })
    }

    /// Lay `node` out at `at`: files of zeros of their sizes, symlinks, directories.
    fn lay_out(node: &Node, at: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        match node {
            Node::Directory(entries) => {
                std::fs::create_dir(at).unwrap();
                for e in entries {
                    lay_out(&e.node, &at.join(std::str::from_utf8(&e.name).unwrap()));
                }
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(std::str::from_utf8(target).unwrap(), at).unwrap()
            }
            n => {
                let f = n.file().unwrap();
                std::fs::write(at, vec![0; f.size as usize]).unwrap();
                let mode = if f.executable { 0o555 } else { 0o444 };
                std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// What a restore compares with the snapshot's `narSize` before writing: the NAR's
        /// size, as the dump of the tree laid out on disk has it.
        #[test]
        fn nar_size_is_the_size_of_the_nar_the_tree_describes(node in arb_node()) {
            let mut node = node;
            // Files of at most 3,000 bytes: sizes of every padding.
            let mut stack = vec![&mut node];
            while let Some(n) = stack.pop() {
                match n {
                    Node::Directory(entries) => stack.extend(entries.iter_mut().map(|e| &mut e.node)),
                    Node::Regular { size, .. } => *size %= 3000,
                    _ => {}
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let at = dir.path().join("p");
            lay_out(&node, &at);
            let (_, size) = crate::nar::hash_path(&at).unwrap();
            prop_assert_eq!(node.nar_size(), size);
        }

        #[test]
        fn tree_round_trip(node in arb_node()) {
            let (id, bytes) = node.encode();
            prop_assert_eq!(Node::decode(&id, &bytes).unwrap(), node);
        }
    }

    /// A tree's id names its encoding: v1 bytes under a v1 id, v2 bytes under a v2 id, and
    /// neither under the other's id.
    #[test]
    fn the_id_names_the_encoding() {
        let node = Node::Directory(vec![Entry {
            name: b"f".to_vec(),
            node: Node::Regular {
                executable: false,
                size: 3,
                blob: BlobId([1; 32]),
                file_nar_hash: [0; 32],
            },
        }]);
        let (id1, v1) = node.encode_v1().unwrap();
        let (id2, v2) = node.encode();
        assert_ne!(id1, id2);
        assert_eq!(Node::decode(&id1, &v1).unwrap(), node);
        assert_eq!(Node::decode(&id2, &v2).unwrap(), node);
        assert!(Node::decode(&id1, &v2).is_err());
        assert!(Node::decode(&id2, &v1).is_err());
        let rewritten = Node::regular(
            true,
            40,
            BlobId([2; 32]),
            [3; 32],
            vec![Rewrite {
                offset: 8,
                hash_part: *b"0123456789abcdfghijklmnpqrsvwxyz",
            }],
        );
        assert!(rewritten.encode_v1().is_none());
        let (id, bytes) = rewritten.encode();
        assert_eq!(Node::decode(&id, &bytes).unwrap(), rewritten);
        assert_eq!(
            Node::regular(true, 40, BlobId([2; 32]), [3; 32], vec![]),
            Node::Regular {
                executable: true,
                size: 40,
                blob: BlobId([2; 32]),
                file_nar_hash: [3; 32]
            }
        );
    }

    #[test]
    fn malformed_trees_are_rejected() {
        let leaf = Node::Symlink {
            target: b"x".to_vec(),
        };
        let e = |n: &[u8]| Entry {
            name: n.to_vec(),
            node: leaf.clone(),
        };
        for bad in [
            Node::Directory(vec![e(b"b"), e(b"a")]),
            Node::Directory(vec![e(b"a"), e(b"a")]),
            Node::Directory(vec![e(b"..")]),
            Node::Directory(vec![e(b"a/b")]),
            Node::Directory(vec![e(b"")]),
            Node::Symlink { target: vec![] },
        ] {
            let (id, bytes) = bad.encode();
            assert!(Node::decode(&id, &bytes).is_err(), "{bad:?}");
        }
        let (id, mut bytes) = leaf.encode();
        bytes.push(0);
        assert!(Node::decode(&id, &bytes).is_err());
    }
}
