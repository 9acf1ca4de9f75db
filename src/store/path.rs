//! Store paths (`/gnu/store/<hash>-<name>`), the store directory they live in, and
//! nix-base32, the daemon's alphabet for hash parts.
//!
//! Invariant: a [`StorePath`] is always a valid base name: a 32-character nix-base32 hash
//! part, a dash, and a name of 1 to 222 characters ([`MAX_NAME_LEN`]: the base name is one
//! file name, at most 255 bytes) from `[A-Za-z0-9+-._?=]` whose first dash-separated
//! component is not `.` or `..` (a leading dot is allowed, as Nix allows it). Nothing built
//! from a `StorePath` can therefore escape the store directory.
//!
//! That is the rule of any store, and so of every path a cache may hold. A flavour may be
//! stricter ([`StorePath::check_for`]): Nix refuses names longer than 211 characters
//! ([`NIX_MAX_NAME_LEN`]); Guix's daemon sets no length limit of its own.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::layout::Flavor;

/// The 32 characters of nix-base32 (no `e`, `o`, `t`, `u`).
pub const NIXBASE32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length in characters of a store path's hash part (160 bits in nix-base32).
pub const HASH_PART_LEN: usize = 32;

/// Longest store path name any store may hold: `<hash>-<name>` is one file name of the store
/// directory, at most 255 bytes (`NAME_MAX` of Linux file systems). Guix's daemon sets no
/// limit of its own (its `checkStoreName` checks the characters and the leading dot only), so
/// a Guix store may hold names of up to this length.
pub const MAX_NAME_LEN: usize = 255 - HASH_PART_LEN - 1;

/// Longest store path name Nix accepts: its `StorePath` refuses a longer one, so a DB row
/// naming one would make every Nix command that loads it fail.
pub const NIX_MAX_NAME_LEN: usize = 211;

/// Encode bytes in nix-base32, the daemon's order (last character first).
pub fn nixbase32_encode(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = bytes[i] as u16 >> j;
        let hi = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(NIXBASE32_ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// Decode nix-base32 into `out_len` bytes; `None` on a bad character or stray high bits.
pub fn nixbase32_decode(s: &str, out_len: usize) -> Option<Vec<u8>> {
    if s.len() != (out_len * 8).div_ceil(5) {
        return None;
    }
    let mut out = vec![0u8; out_len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = NIXBASE32_ALPHABET.iter().position(|&a| a == c)? as u16;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < out_len {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// Fold a hash into `size` bytes by XOR, as the daemon does to get a 160-bit hash part.
pub fn compress_hash(hash: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    for (i, b) in hash.iter().enumerate() {
        out[i % size] ^= b;
    }
    out
}

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("`{0}` is not in the store directory `{1}`")]
    NotInStore(String, String),
    #[error("`{0}` has a bad hash part (want 32 nix-base32 characters then `-`)")]
    BadHash(String),
    #[error("`{0}` has a bad name (want 1 to 222 characters of [A-Za-z0-9+-._?=], not `.` or `..` before the first `-`)")]
    BadName(String),
    /// A name longer than a flavour's daemon accepts ([`StorePath::check_for`]).
    #[error("`{0}` has a name of {1} characters, more than the {3} a {2} store allows (its daemon cannot load a DB row naming it)")]
    TooLongFor(String, usize, &'static str, usize),
}

/// A validated store path base name, `<hash>-<name>`, independent of the store directory.
/// Clones share the string (an `Arc<str>`): the references a DB read or a decoded snapshot
/// gives share the strings of the paths they name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorePath(std::sync::Arc<str>);

/// Which bytes are nix-base32 digits: a table, since every path of every snapshot read is
/// checked (a scan of the alphabet per character was a third of `verify`'s CPU time).
const IS_NIXBASE32: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < NIXBASE32_ALPHABET.len() {
        t[NIXBASE32_ALPHABET[i] as usize] = true;
        i += 1;
    }
    t
};

impl StorePath {
    /// Parse a base name such as `abc…-hello-2.12`.
    ///
    /// # Errors
    /// [`StorePathError::BadHash`] or [`StorePathError::BadName`].
    pub fn from_base_name(s: &str) -> Result<Self, StorePathError> {
        Self::check(s)?;
        Ok(StorePath(s.into()))
    }

    /// [`StorePath::from_base_name`] keeping the string's allocation.
    ///
    /// # Errors
    /// As [`StorePath::from_base_name`].
    pub fn from_string(s: String) -> Result<Self, StorePathError> {
        Self::check(&s)?;
        Ok(StorePath(s.into()))
    }

    fn check(s: &str) -> Result<(), StorePathError> {
        let bytes = s.as_bytes();
        if bytes.len() < HASH_PART_LEN + 2
            || bytes[HASH_PART_LEN] != b'-'
            || !bytes[..HASH_PART_LEN]
                .iter()
                .all(|&c| IS_NIXBASE32[c as usize])
        {
            return Err(StorePathError::BadHash(s.to_owned()));
        }
        let name = &bytes[HASH_PART_LEN + 1..];
        // A leading dot is allowed: Nix accepts it (`nix-store --add .envrc` makes
        // `<hash>-.envrc`; Nix 2.8 checks only the characters and the length), and refusing
        // such a valid path failed a whole save. Guix never makes one (its `checkStoreName`
        // refuses it when it makes a path), but its daemon imports one (`importPath` checks
        // only that it is in the store) and loads its DB row, so a Guix store may hold one
        // and a Guix restore accepts it too. Later Nix refuses `.`, `..` and
        // names whose first dash-separated component is one of them: a path such a Nix could
        // not parse is never registered.
        let first = name.split(|&c| c == b'-').next().unwrap_or_default();
        let name_ok = name.len() <= MAX_NAME_LEN
            && first != b"."
            && first != b".."
            && name.iter().all(|&c| {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
            });
        if !name_ok {
            return Err(StorePathError::BadName(s.to_owned()));
        }
        Ok(())
    }

    /// Check the rule of `flavor`'s daemon beyond that of any store: a name at most
    /// [`Flavor::max_name_len`] long. A leading dot is no concern of Guix's: its daemon
    /// refuses one only when it makes a path (`checkStoreName`), and imports and loads one.
    ///
    /// # Errors
    /// [`StorePathError::TooLongFor`].
    pub fn check_for(&self, flavor: Flavor) -> Result<(), StorePathError> {
        let (len, max) = (self.name().len(), flavor.max_name_len());
        if len > max {
            return Err(StorePathError::TooLongFor(
                self.0.to_string(),
                len,
                flavor.name(),
                max,
            ));
        }
        Ok(())
    }

    /// The `<hash>-<name>` base name.
    pub fn base_name(&self) -> &str {
        &self.0
    }
    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.0[..HASH_PART_LEN]
    }
    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.0[HASH_PART_LEN + 1..]
    }
    /// Whether this is a derivation (`.drv`).
    pub fn is_derivation(&self) -> bool {
        self.0.ends_with(".drv")
    }
}

impl TryFrom<String> for StorePath {
    type Error = StorePathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        StorePath::from_string(s)
    }
}

impl From<StorePath> for String {
    fn from(p: StorePath) -> String {
        p.0.to_string()
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The logical store directory (`/gnu/store`, `/nix/store`): how paths are spelled in the DB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreDir(String);

impl StoreDir {
    /// A store directory; must be absolute and have no trailing slash.
    ///
    /// # Errors
    /// A message when the directory is not absolute or not normalised.
    pub fn new(dir: &str) -> Result<Self, String> {
        let ok = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && !dir.split('/').any(|c| c == "." || c == "..")
            && !dir.contains("//");
        if ok {
            Ok(StoreDir(dir.to_owned()))
        } else {
            Err(format!(
                "store directory `{dir}` must be an absolute, normalised path"
            ))
        }
    }
    /// The directory as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Spell a store path the way the DB does: `/gnu/store/<hash>-<name>`.
    pub fn display(&self, p: &StorePath) -> String {
        format!("{}/{}", self.0, p.0)
    }
    /// Parse a full store path exactly as stored in the DB (`/gnu/store/<hash>-<name>`).
    ///
    /// # Errors
    /// [`StorePathError`] when it is not directly inside this store directory or invalid.
    pub fn parse(&self, full: &str) -> Result<StorePath, StorePathError> {
        let base = full
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .filter(|r| !r.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore(full.to_owned(), self.0.clone()))?;
        StorePath::from_base_name(base)
    }
    /// Given any path inside the store (`/gnu/store/<hash>-<name>/bin/x`), the store path that holds it.
    ///
    /// # Errors
    /// [`StorePathError`] when the path is not inside this store directory.
    pub fn parse_prefix(&self, full: &str) -> Result<StorePath, StorePathError> {
        let rest = full
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(full.to_owned(), self.0.clone()))?;
        StorePath::from_base_name(rest.split('/').next().unwrap_or(""))
    }
}

/// Where a store physically is: `root` prefixed to the logical directories.
pub fn under_root(root: &Path, logical: &str) -> PathBuf {
    root.join(logical.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nixbase32_known_vectors() {
        // sha256("") in nix-base32, as printed by `nix-hash --type sha256 --to-base32`.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            nixbase32_encode(&bytes),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(nixbase32_encode(&[]), "");
        assert_eq!(nixbase32_encode(&[0x1f]), "0z");
    }

    proptest! {
        #[test]
        fn nixbase32_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            let s = nixbase32_encode(&bytes);
            prop_assert_eq!(nixbase32_decode(&s, bytes.len()), Some(bytes));
        }
    }

    #[test]
    fn nixbase32_rejects_bad_input() {
        assert_eq!(nixbase32_decode("e0", 1), None); // `e` is not in the alphabet
        assert_eq!(nixbase32_decode("z0", 1), None); // high bits beyond one byte
        assert_eq!(nixbase32_decode("000", 1), None); // wrong length
    }

    #[test]
    fn store_path_rules() {
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        let ok = StorePath::from_base_name(&format!("{h}-hello-2.12.1")).unwrap();
        assert_eq!(ok.hash_part(), h);
        assert_eq!(ok.name(), "hello-2.12.1");
        assert!(!ok.is_derivation());
        assert!(StorePath::from_base_name(&format!("{h}-x.drv"))
            .unwrap()
            .is_derivation());
        for bad in [
            format!("{h}-"),
            format!("{h}-a/b"),
            format!("{h}-a b"),
            format!("{h}-{}", "a".repeat(223)),
            format!("{h}_name"),
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x".to_string(),
            "short-x".to_string(),
            format!("{h}-.."),
            format!("{h}-."),
            format!("{h}-..-x"),
            format!("{h}-.-x"),
        ] {
            assert!(StorePath::from_base_name(&bad).is_err(), "{bad}");
        }
        assert!(StorePath::from_base_name(&format!("{h}-{}", "a".repeat(222))).is_ok());
        assert!(StorePath::from_base_name(&format!("{h}-a+b-c._?=")).is_ok());
        // Names Nix 2.8 makes (`nix-store --add .envrc`): a leading dot is no escape, the
        // base name starts with the hash part.
        for ok in [".envrc", ".hidden", "...", ".x-1", "x-.."] {
            assert!(
                StorePath::from_base_name(&format!("{h}-{ok}")).is_ok(),
                "{ok}"
            );
        }
    }

    /// Any store holds names of up to 222 characters (255 bytes with the hash part, a file
    /// name's limit); Guix's daemon sets no other, Nix's refuses more than 211; a leading dot
    /// is Guix's as much as Nix's.
    #[test]
    fn name_length_is_bounded_by_a_file_name_and_by_nix_per_flavour() {
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        let named = |n: usize| StorePath::from_base_name(&format!("{h}-{}", "a".repeat(n)));
        assert_eq!(HASH_PART_LEN + 1 + MAX_NAME_LEN, 255);
        let longest = named(222).unwrap();
        assert_eq!(longest.base_name().len(), 255);
        assert!(matches!(named(223), Err(StorePathError::BadName(_))));
        longest.check_for(Flavor::Guix).unwrap();
        named(211).unwrap().check_for(Flavor::Nix).unwrap();
        for n in [212, 215, 222] {
            let err = named(n).unwrap().check_for(Flavor::Nix).unwrap_err();
            assert!(matches!(err, StorePathError::TooLongFor(..)), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{h}-{}", "a".repeat(n)))
                    && msg.contains(&format!("{n} characters"))
                    && msg.contains("211")
                    && msg.contains("nix"),
                "{msg}"
            );
        }
        for name in [".envrc", ".x-1"] {
            let p = StorePath::from_base_name(&format!("{h}-{name}")).unwrap();
            p.check_for(Flavor::Guix).unwrap();
            p.check_for(Flavor::Nix).unwrap();
        }
    }

    #[test]
    fn store_dir_parsing() {
        let d = StoreDir::new("/gnu/store").unwrap();
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        let p = d.parse(&format!("/gnu/store/{h}-x")).unwrap();
        assert_eq!(d.display(&p), format!("/gnu/store/{h}-x"));
        assert!(d.parse(&format!("/nix/store/{h}-x")).is_err());
        assert!(d.parse(&format!("/gnu/store/{h}-x/bin")).is_err());
        assert!(d.parse(&format!("/gnu/storex/{h}-x")).is_err());
        assert_eq!(
            d.parse_prefix(&format!("/gnu/store/{h}-x/bin/sh")).unwrap(),
            p
        );
        assert!(StoreDir::new("gnu/store").is_err());
        assert!(StoreDir::new("/gnu/store/").is_err());
        assert!(StoreDir::new("/gnu/../store").is_err());
    }
}
