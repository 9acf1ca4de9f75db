//! The Nix ARchive format (NAR): the canonical serialisation of a store path whose SHA-256 the
//! daemons record as `ValidPaths.hash`.
//!
//! A NAR is a sequence of strings, each a little-endian u64 length, the bytes, and zero padding
//! to a multiple of 8. Directory entries appear sorted by name bytes; a regular file carries an
//! `executable` marker and its contents; a symlink its target. Nothing else (owner, mtime) is
//! recorded. [`NarEncoder`] writes that stream; [`dump_path`] walks a file system tree into it.
//! Neither buffers a whole archive: contents stream through.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The magic string at the start of every NAR.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Errors while walking a tree into a NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("reading {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}: unsupported file type (only regular files, directories and symlinks can be in the store)")]
    FileType(PathBuf),
    #[error("{0}: file changed size while being read (expected {1} bytes)")]
    Changed(PathBuf, u64),
}

/// Writes a NAR stream. Calls must follow the grammar; the helpers below make that easy.
#[derive(Clone)]
pub struct NarEncoder<W: Write> {
    w: W,
}

fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

impl<W: Write> NarEncoder<W> {
    /// Start an archive (writes the magic).
    pub fn new(mut w: W) -> io::Result<Self> {
        write_str(&mut w, NAR_MAGIC)?;
        Ok(NarEncoder { w })
    }
    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.w
    }
    /// Mutable access to the underlying writer.
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.w
    }
    /// `( type regular [executable ""] contents <len>`: the caller then writes exactly `len`
    /// bytes with [`NarEncoder::contents`] and calls [`NarEncoder::regular_end`].
    pub fn regular_start(&mut self, executable: bool, len: u64) -> io::Result<()> {
        self.strs(&[b"(", b"type", b"regular"])?;
        if executable {
            self.strs(&[b"executable", b""])?;
        }
        self.strs(&[b"contents"])?;
        self.w.write_all(&len.to_le_bytes())
    }
    /// Raw contents of the current regular file.
    pub fn contents(&mut self, data: &[u8]) -> io::Result<()> {
        self.w.write_all(data)
    }
    /// Padding after `len` content bytes, then `)`.
    pub fn regular_end(&mut self, len: u64) -> io::Result<()> {
        self.w.write_all(&[0u8; 8][..padding(len)])?;
        self.strs(&[b")"])
    }
    /// A whole symlink node.
    pub fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        self.strs(&[b"(", b"type", b"symlink", b"target", target, b")"])
    }
    /// `( type directory`
    pub fn directory_start(&mut self) -> io::Result<()> {
        self.strs(&[b"(", b"type", b"directory"])
    }
    /// `entry ( name <name> node`: the entry's node follows, then [`NarEncoder::entry_end`].
    pub fn entry_start(&mut self, name: &[u8]) -> io::Result<()> {
        self.strs(&[b"entry", b"(", b"name", name, b"node"])
    }
    /// Closes an entry.
    pub fn entry_end(&mut self) -> io::Result<()> {
        self.strs(&[b")"])
    }
    /// Closes a directory.
    pub fn directory_end(&mut self) -> io::Result<()> {
        self.strs(&[b")"])
    }
    fn strs(&mut self, strs: &[&[u8]]) -> io::Result<()> {
        for s in strs {
            write_str(&mut self.w, s)?;
        }
        Ok(())
    }
}

fn write_str<W: Write>(w: &mut W, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..padding(s.len() as u64)])
}

/// A writer that computes SHA-256 and counts bytes: the NAR hash and NAR size at once.
#[derive(Default, Clone)]
pub struct NarHasher {
    sha: Sha256,
    len: u64,
}

impl NarHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// (SHA-256, byte count) of everything written.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.sha.finalize().into(), self.len)
    }
}

impl Write for NarHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sha.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The SHA-256 of the NAR serialisation of a single regular file with these contents: the name
/// the daemon gives the file under `<store>/.links/` when it deduplicates.
pub struct FileNarHasher {
    enc: NarEncoder<NarHasher>,
    len: u64,
}

impl FileNarHasher {
    /// Start hashing a file of `len` bytes.
    pub fn new(executable: bool, len: u64) -> Self {
        let mut enc = NarEncoder::new(NarHasher::new()).expect("hashing cannot fail");
        enc.regular_start(executable, len)
            .expect("hashing cannot fail");
        FileNarHasher { enc, len }
    }
    /// Feed contents.
    pub fn update(&mut self, data: &[u8]) {
        self.enc.contents(data).expect("hashing cannot fail");
    }
    /// The SHA-256.
    pub fn finish(mut self) -> [u8; 32] {
        self.enc.regular_end(self.len).expect("hashing cannot fail");
        self.enc.into_inner().finish().0
    }
}

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
pub fn dump_path<W: Write>(path: &Path, w: W) -> Result<W, NarError> {
    let mut enc = NarEncoder::new(w).map_err(|e| NarError::Io(path.to_owned(), e))?;
    dump_node(path, &mut enc)?;
    Ok(enc.into_inner())
}

fn dump_node<W: Write>(path: &Path, enc: &mut NarEncoder<W>) -> Result<(), NarError> {
    let io = |e| NarError::Io(path.to_owned(), e);
    let meta = fs::symlink_metadata(path).map_err(io)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io)?;
        enc.symlink(target.as_os_str().as_bytes()).map_err(io)
    } else if ft.is_dir() {
        enc.directory_start().map_err(io)?;
        for name in sorted_entries(path)? {
            enc.entry_start(name.as_bytes()).map_err(io)?;
            dump_node(&path.join(&name), enc)?;
            enc.entry_end().map_err(io)?;
        }
        enc.directory_end().map_err(io)
    } else if ft.is_file() {
        let len = meta.len();
        let exec = meta.permissions().mode() & 0o100 != 0;
        enc.regular_start(exec, len).map_err(io)?;
        let mut f = fs::File::open(path).map_err(io)?;
        let copied = io::copy(&mut (&mut f).take(len), enc.inner_mut()).map_err(io)?;
        if copied != len {
            return Err(NarError::Changed(path.to_owned(), len));
        }
        enc.regular_end(len).map_err(io)
    } else {
        Err(NarError::FileType(path.to_owned()))
    }
}

/// NAR SHA-256 and size of the tree at `path`.
///
/// # Errors
/// As [`dump_path`].
pub fn hash_path(path: &Path) -> Result<([u8; 32], u64), NarError> {
    Ok(dump_path(path, NarHasher::new())?.finish())
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse lower- or upper-case hexadecimal of exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_padding() {
        let mut v = Vec::new();
        write_str(&mut v, b"abc").unwrap();
        assert_eq!(v, b"\x03\0\0\0\0\0\0\0abc\0\0\0\0\0");
        let mut v = Vec::new();
        write_str(&mut v, b"12345678").unwrap();
        assert_eq!(v.len(), 16);
        let mut v = Vec::new();
        write_str(&mut v, b"").unwrap();
        assert_eq!(v, [0u8; 8]);
    }

    #[test]
    fn file_nar_hasher_matches_dump() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello world\n").unwrap();
        let (sha, _) = hash_path(&p).unwrap();
        let mut h = FileNarHasher::new(false, 12);
        h.update(b"hello ");
        h.update(b"world\n");
        assert_eq!(h.finish(), sha);
    }

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(parse_hex::<4>("0001ABff"), Some(b));
        assert_eq!(parse_hex::<4>("0001ab"), None);
        assert_eq!(parse_hex::<2>("zz00"), None);
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
            ("file", &include_bytes!("../fixtures/nar/file.nar")[..]),
            ("exec", include_bytes!("../fixtures/nar/exec.nar")),
            ("symlink", include_bytes!("../fixtures/nar/symlink.nar")),
            (
                "empty-file",
                include_bytes!("../fixtures/nar/empty-file.nar"),
            ),
            ("empty-dir", include_bytes!("../fixtures/nar/empty-dir.nar")),
            ("tree", include_bytes!("../fixtures/nar/tree.nar")),
        ] {
            let p = golden_tree(dir.path(), name);
            let nar = dump_path(&p, Vec::new()).unwrap();
            assert_eq!(nar, golden, "{name}");
            let (sha, size) = hash_path(&p).unwrap();
            assert_eq!(size, golden.len() as u64);
            assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(golden)));
        }
    }

    #[test]
    fn nixbase32_vectors_from_real_nix() {
        for line in include_str!("../fixtures/nar/nix-base32.txt").lines() {
            let (hex_s, b32) = line.split_once("  ").unwrap();
            let bytes = parse_hex::<32>(hex_s).unwrap();
            assert_eq!(crate::store_path::nixbase32_encode(&bytes), b32.trim());
        }
    }
}
