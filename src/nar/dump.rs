//! Walking a file system tree into a NAR: [`dump_path`] (what `nix-store --dump` prints) and
//! [`hash_path`] (its SHA-256 and size). Symlinks are never followed; only regular files,
//! directories and symlinks may appear.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{NarEncoder, NarError, NarHasher};

/// Names of a directory's entries in NAR order (sorted by bytes).
///
/// # Errors
/// [`NarError::Io`] naming the directory.
pub fn sorted_entries(dir: &Path) -> Result<Vec<std::ffi::OsString>, NarError> {
    let mut names = fs::read_dir(dir)
        .map_err(|e| NarError::Io(dir.to_owned(), e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NarError::Io(dir.to_owned(), e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Serialise the tree at `path` (not following a symlink at `path` itself) as a NAR.
///
/// # Errors
/// [`NarError`] naming the file that could not be read or is of an unsupported type.
pub fn dump_path<W: Write>(path: &Path, mut w: W) -> Result<W, NarError> {
    let enc = NarEncoder::new(&mut w).map_err(|e| NarError::Io(path.to_owned(), e))?;
    dump_node(path, enc)?;
    Ok(w)
}

fn dump_node<W: Write>(path: &Path, enc: NarEncoder<'_, W>) -> Result<(), NarError> {
    let io = |e| NarError::Io(path.to_owned(), e);
    let meta = fs::symlink_metadata(path).map_err(io)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io)?;
        enc.symlink(target.as_os_str().as_bytes()).map_err(io)
    } else if ft.is_dir() {
        let mut dir = enc.directory().map_err(io)?;
        for name in sorted_entries(path)? {
            let entry = dir.entry(name.as_bytes()).map_err(io)?;
            dump_node(&path.join(&name), entry)?;
        }
        dir.close().map_err(io)
    } else if ft.is_file() {
        let len = meta.len();
        let exec = meta.permissions().mode() & 0o100 != 0;
        let mut file = enc.regular(exec, len).map_err(io)?;
        let mut f = fs::File::open(path).map_err(io)?;
        let copied = io::copy(&mut (&mut f).take(len), &mut file).map_err(io)?;
        if copied != len {
            return Err(NarError::Changed(path.to_owned(), len));
        }
        file.finish().map_err(io)
    } else {
        Err(NarError::FileType(path.to_owned()))
    }
}

/// NAR SHA-256 and size of the tree at `path`.
///
/// # Errors
/// As [`dump_path`].
pub fn hash_path(path: &Path) -> Result<(crate::store::path_info::NarHash, u64), NarError> {
    Ok(dump_path(path, NarHasher::new())?.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::FileNarHasher;
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;

    #[test]
    fn file_nar_hasher_matches_dump() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello world\n").unwrap();
        let (sha, _) = hash_path(&p).unwrap();
        let mut h = FileNarHasher::new(false, 12);
        h.update(b"hello ");
        h.update(b"world\n");
        assert_eq!(h.finish(), sha.0);
    }

    /// Build the trees of fixtures/nar/README.md on disk.
    fn golden_tree(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::symlink;
        let p = dir.join(name);
        let file = |p: &Path, c: &[u8], exec: bool| {
            fs::write(p, c).unwrap();
            fs::set_permissions(
                p,
                fs::Permissions::from_mode(if exec { 0o555 } else { 0o444 }),
            )
            .unwrap();
        };
        match name {
            "file" => file(&p, b"hello world\n", false),
            "exec" => file(&p, b"#!/bin/sh\necho hi\n", true),
            "symlink" => symlink("/gnu/store/00000000000000000000000000000000-target", &p).unwrap(),
            "empty-file" => file(&p, b"", false),
            "empty-dir" => fs::create_dir(&p).unwrap(),
            "tree" => {
                for d in ["bin", "lib/empty", "share/doc"] {
                    fs::create_dir_all(p.join(d)).unwrap();
                }
                file(&p.join("Zebra"), b"z", false);
                file(&p.join("bin/hello"), b"#!/bin/sh\necho hello\n", true);
                symlink("hello", p.join("bin/hi")).unwrap();
                file(&p.join("lib/libfoo.so"), b"abc", false);
                file(&p.join("share/B"), b"B\n", false);
                file(&p.join("share/a"), b"a\n", false);
                file(&p.join("share/doc/README"), b"12345678", false);
                file(&p.join("zz-empty"), b"", false);
            }
            _ => unreachable!(),
        }
        p
    }

    #[test]
    fn dump_matches_golden_nars_made_by_real_nix() {
        let dir = tempfile::tempdir().unwrap();
        for (name, golden) in [
            ("file", &include_bytes!("../../fixtures/nar/file.nar")[..]),
            ("exec", include_bytes!("../../fixtures/nar/exec.nar")),
            ("symlink", include_bytes!("../../fixtures/nar/symlink.nar")),
            (
                "empty-file",
                include_bytes!("../../fixtures/nar/empty-file.nar"),
            ),
            (
                "empty-dir",
                include_bytes!("../../fixtures/nar/empty-dir.nar"),
            ),
            ("tree", include_bytes!("../../fixtures/nar/tree.nar")),
        ] {
            let p = golden_tree(dir.path(), name);
            let nar = dump_path(&p, Vec::new()).unwrap();
            assert_eq!(nar, golden, "{name}");
            let (sha, size) = hash_path(&p).unwrap();
            assert_eq!(size, golden.len() as u64);
            assert_eq!(sha.0, <[u8; 32]>::from(Sha256::digest(golden)));
        }
    }

    #[test]
    fn nixbase32_vectors_from_real_nix() {
        for line in include_str!("../../fixtures/nar/nix-base32.txt").lines() {
            let (hex_s, b32) = line.split_once("  ").unwrap();
            let bytes = crate::hex::parse_hex::<32>(hex_s).unwrap();
            assert_eq!(crate::store::path::nixbase32_encode(&bytes), b32.trim());
        }
    }
}
