//! A tree: one store path's NAR structure with blob ids in place of file contents. Trees are
//! content-addressed (BLAKE3 of their encoding under a domain key, so a tree never shares an
//! id with a blob) and validated on decode: entry names are non-empty, free of `/` and NUL,
//! not `.` or `..`, strictly sorted (hence unique); nesting is bounded.

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use super::format::encode_bincode;
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
    /// Encode for storage; returns (id, bytes).
    pub fn encode(&self) -> (TreeId, Vec<u8>) {
        let bytes = encode_bincode(self);
        (tree_id(&bytes), bytes)
    }

    /// Decode and validate a tree read from the cache under `id`.
    ///
    /// # Errors
    /// [`CacheError::Corrupt`] when the bytes do not hash to `id` or the tree is malformed.
    pub fn decode(id: &TreeId, bytes: &[u8]) -> Result<Node, CacheError> {
        if tree_id(bytes) != *id {
            return Err(CacheError::Corrupt(format!(
                "tree {id}: content does not match its id"
            )));
        }
        super::decode::decode_tree_v1(bytes)
            .map_err(|e| CacheError::Corrupt(format!("tree {id}: {e}")))
    }

    /// The validation `decode` did after bincode before it validated as it decoded; the
    /// reference its tests compare with.
    #[cfg(test)]
    pub(super) fn validate(&self, depth: usize) -> Result<(), String> {
        match self {
            Node::Regular { .. } => Ok(()),
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

    /// Visit every regular file: its blob, size and `.links` name (zeros below 8 KiB).
    pub fn for_each_file(&self, f: &mut impl FnMut(&BlobId, u64, &[u8; 32])) {
        match self {
            Node::Regular {
                blob,
                size,
                file_nar_hash,
                ..
            } => f(blob, *size, file_nar_hash),
            Node::Symlink { .. } => {}
            Node::Directory(entries) => entries.iter().for_each(|e| e.node.for_each_file(f)),
        }
    }

    /// Visit every regular file's blob.
    pub fn for_each_blob(&self, f: &mut impl FnMut(&BlobId, u64)) {
        match self {
            Node::Regular { blob, size, .. } => f(blob, *size),
            Node::Symlink { .. } => {}
            Node::Directory(entries) => entries.iter().for_each(|e| e.node.for_each_blob(f)),
        }
    }
}

/// A file name allowed in a store directory.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// The id of the tree encoded as `bytes`.
pub(crate) fn tree_id(bytes: &[u8]) -> TreeId {
    let mut h = blake3::Hasher::new_derive_key("storesync 2026-11 tree v1");
    h.update(bytes);
    TreeId(*h.finalize().as_bytes())
}

impl Cache {
    /// The `.links` name (file NAR SHA-256) of every (blob, executable) pair that some tree in
    /// the cache records, for files of [`crate::store::links::LINKS_MIN_SIZE`] bytes or more.
    ///
    /// A save uses it to skip the second SHA-256 pass over contents the cache already holds:
    /// the file NAR hash is a function of the contents (named by the blob id) and the
    /// executable bit. Only frames holding nothing but trees are read (caches written since
    /// trees got frames of their own), so this never decompresses file contents; trees that
    /// cannot be read are skipped: the caller hashes those files itself.
    pub fn links_hashes(&self) -> HashMap<(BlobId, bool), [u8; 32]> {
        let mut frames: HashMap<(u32, u64), Vec<super::ObjectId>> = HashMap::new();
        let mut mixed = std::collections::HashSet::new();
        for (id, loc) in self.objects() {
            let key = (loc.pack, loc.frame_offset);
            match loc.kind {
                ObjectKind::Tree => frames.entry(key).or_default().push(id),
                ObjectKind::Blob => {
                    mixed.insert(key);
                }
            }
        }
        let mut map = HashMap::new();
        let mut stack = Vec::new();
        for (key, trees) in frames {
            if mixed.contains(&key) {
                continue;
            }
            for id in trees {
                let Ok(node) = self.read_tree(&TreeId(id.0)) else {
                    continue;
                };
                stack.push(node);
                while let Some(node) = stack.pop() {
                    match node {
                        Node::Regular {
                            executable,
                            size,
                            blob,
                            file_nar_hash,
                        } if size >= crate::store::links::LINKS_MIN_SIZE => {
                            map.insert((blob, executable), file_nar_hash);
                        }
                        Node::Directory(entries) => {
                            stack.extend(entries.into_iter().map(|e| e.node));
                        }
                        _ => {}
                    }
                }
            }
        }
        map
    }
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

    proptest! {
        #[test]
        fn tree_round_trip(node in arb_node()) {
            let (id, bytes) = node.encode();
            prop_assert_eq!(Node::decode(&id, &bytes).unwrap(), node);
        }
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
