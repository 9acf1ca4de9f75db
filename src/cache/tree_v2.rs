//! The v2 tree encoding (docs/FORMAT.md, "Objects"), written by hand in bincode 2's
//! `config::standard()` layout: the table of hash parts the tree's rewritten files name,
//! strictly sorted, then the nodes of v1 plus kind 3, a regular file with its
//! (offset, table index) list. Decoding, bounded and validating, is
//! [`super::decode::decode_tree_v2`], which reads the table and rewrite lists with [`Table`].

use std::collections::BTreeMap;

use super::decode::{at, Input, Source, PREALLOC_ENTRIES};
use super::rewrite::Rewrite;
use super::tree::Node;

/// Node kinds (bincode variant indices).
pub(super) const REGULAR: u64 = 0;
pub(super) const SYMLINK: u64 = 1;
pub(super) const DIRECTORY: u64 = 2;
pub(super) const REWRITTEN: u64 = 3;

/// bincode's variable-length unsigned integer.
pub(super) fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Encode `root` as a v2 tree.
pub(super) fn encode(root: &Node) -> Vec<u8> {
    let mut table: BTreeMap<[u8; 32], u32> = BTreeMap::new();
    root.for_each_file(&mut |f| {
        for r in f.rewrites {
            table.insert(r.hash_part, 0);
        }
    });
    for (i, v) in table.values_mut().enumerate() {
        *v = u32::try_from(i).expect("fewer than 2^32 hash parts");
    }
    let mut out = Vec::new();
    varint(&mut out, table.len() as u64);
    for h in table.keys() {
        out.extend_from_slice(h);
    }
    node(&mut out, root, &table);
    out
}

fn regular(
    out: &mut Vec<u8>,
    kind: u64,
    executable: bool,
    size: u64,
    blob: &[u8; 32],
    fnh: &[u8; 32],
) {
    varint(out, kind);
    out.push(u8::from(executable));
    varint(out, size);
    out.extend_from_slice(blob);
    out.extend_from_slice(fnh);
}

fn node(out: &mut Vec<u8>, n: &Node, table: &BTreeMap<[u8; 32], u32>) {
    match n {
        Node::Regular {
            executable,
            size,
            blob,
            file_nar_hash,
        } => regular(out, REGULAR, *executable, *size, &blob.0, file_nar_hash),
        Node::Rewritten {
            executable,
            size,
            blob,
            file_nar_hash,
            rewrites,
        } => {
            regular(out, REWRITTEN, *executable, *size, &blob.0, file_nar_hash);
            varint(out, rewrites.len() as u64);
            for Rewrite { offset, hash_part } in rewrites {
                varint(out, *offset);
                varint(out, u64::from(table[hash_part]));
            }
        }
        Node::Symlink { target } => {
            varint(out, SYMLINK);
            bytes(out, target);
        }
        Node::Directory(entries) => {
            varint(out, DIRECTORY);
            varint(out, entries.len() as u64);
            for e in entries {
                bytes(out, &e.name);
                node(out, &e.node, table);
            }
        }
    }
}

/// The hash parts of a v2 tree's table, and which of them a file named.
pub(super) struct Table {
    parts: Vec<[u8; 32]>,
    pub(super) used: Vec<bool>,
}

impl Table {
    pub(super) fn read(input: &mut Input<'_>) -> Result<Table, String> {
        let at_count = input.pos;
        let n = input.len("hash part count")?;
        if n > input.left() / 32 {
            return Err(at(
                at_count,
                format!("{n} hash parts claimed, {} bytes left", input.left()),
            ));
        }
        let mut parts: Vec<[u8; 32]> = Vec::with_capacity(n);
        for _ in 0..n {
            let start = input.pos;
            let h = input.array32("hash part")?;
            if !super::rewrite::is_hash_part(&h) {
                return Err(at(
                    start,
                    "a hash part that is not 32 nix-base32 characters",
                ));
            }
            if parts.last().is_some_and(|p| *p >= h) {
                return Err(at(start, "hash parts are not strictly sorted"));
            }
            parts.push(h);
        }
        Ok(Table {
            used: vec![false; n],
            parts,
        })
    }

    /// A rewritten file's list of replacements, checked against its size and the table; at
    /// most `budget` of them (the nodes left of the tree's bound).
    pub(super) fn rewrites(
        &mut self,
        input: &mut Input<'_>,
        size: u64,
        budget: usize,
    ) -> Result<Vec<Rewrite>, String> {
        let at_count = input.pos;
        let n = input.len("rewrite count")?;
        if n == 0 {
            return Err(at(at_count, "a rewritten file without rewrites"));
        }
        if n > budget {
            return Err(at(
                at_count,
                format!(
                    "{n} rewrites claimed: more than the {budget} nodes left of a tree's {}",
                    super::decode::MAX_TREE_NODES
                ),
            ));
        }
        if n > input.left() / 2 {
            return Err(at(
                at_count,
                format!("{n} rewrites claimed, {} bytes left", input.left()),
            ));
        }
        let mut out = Vec::with_capacity(n.min(PREALLOC_ENTRIES));
        let mut free_from = 0u64;
        for _ in 0..n {
            let start = input.pos;
            let offset = input.u64("rewrite offset")?;
            let index = input.u32("hash part index")? as usize;
            if offset < free_from {
                return Err(at(
                    start,
                    format!("rewrite at byte {offset} overlaps or precedes the one before"),
                ));
            }
            if offset.checked_add(32).is_none_or(|end| end > size) {
                return Err(at(
                    start,
                    format!("rewrite at byte {offset} lies beyond the file's {size} bytes"),
                ));
            }
            let Some(&hash_part) = self.parts.get(index) else {
                return Err(at(
                    start,
                    format!(
                        "hash part index {index} beyond the table's {}",
                        self.parts.len()
                    ),
                ));
            };
            self.used[index] = true;
            free_from = offset + 32;
            out.push(Rewrite { offset, hash_part });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::format::encode_bincode;

    #[test]
    fn varints_are_bincodes() {
        for v in [
            0u64,
            250,
            251,
            65535,
            65536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, encode_bincode(&v), "{v}");
        }
    }

    /// Without rewritten files, a v2 tree is an empty table (one byte, 0) and then the v1
    /// encoding: the two differ only where v2 adds something.
    #[test]
    fn a_tree_without_rewrites_is_an_empty_table_then_v1() {
        let n = Node::Directory(vec![crate::cache::Entry {
            name: b"a".to_vec(),
            node: Node::Symlink {
                target: b"x".to_vec(),
            },
        }]);
        let v2 = encode(&n);
        assert_eq!(v2[0], 0);
        assert_eq!(&v2[1..], &n.encode_v1().unwrap().1[..]);
    }
}
