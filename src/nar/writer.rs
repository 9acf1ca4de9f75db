//! Writing the NAR stream: [`NarEncoder`] emits the grammar, [`NarHasher`] turns it into the
//! NAR SHA-256 and size the DB records, [`FileNarHasher`] gives a lone file's NAR hash (its
//! name under `<store>/.links`).
//!
//! The encoder is a typestate, after nix-compat's `nar::writer`: every step consumes the
//! node it writes, so an archive cannot be malformed by the order of calls. A regular file
//! is a [`FileWriter`] that refuses a byte beyond the size it declared and whose
//! [`FileWriter::finish`] refuses fewer; a directory is a [`DirectoryWriter`] that refuses
//! entry names out of order or not valid in a directory (empty, `.`, `..`, `/`, NUL), and an
//! entry left unfinished. What the encoder emits is therefore always the NAR of some tree,
//! and a caller that writes a file's bytes to disk only after the [`FileWriter`] took them
//! hashes exactly what the disk holds.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::NAR_MAGIC;
use crate::store::path_info::NarHash;

fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// The bytes a NAR string of `len` bytes takes, as [`write_str`] writes it: its length, itself,
/// its padding (saturating at `u64::MAX` for lengths no file system holds).
pub fn string_len(len: u64) -> u64 {
    8u64.saturating_add(len).saturating_add(padding(len) as u64)
}

fn write_str<W: Write + ?Sized>(w: &mut W, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..padding(s.len() as u64)])
}

fn write_strs<W: Write + ?Sized>(w: &mut W, strs: &[&[u8]]) -> io::Result<()> {
    strs.iter().try_for_each(|s| write_str(w, s))
}

fn invalid(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// One node of an archive, to be written exactly once: the whole archive (from
/// [`NarEncoder::new`]) or a directory entry's node (from [`DirectoryWriter::entry`]).
#[must_use = "a node must be written, or the archive is incomplete"]
pub struct NarEncoder<'a, W: Write> {
    w: &'a mut W,
    /// Set when this node is a directory entry: the entry's `)` follows the node, and the
    /// directory learns that the entry is complete.
    entry_done: Option<&'a mut bool>,
}

impl<'a, W: Write> NarEncoder<'a, W> {
    /// Start an archive on `w` (writes the magic); the returned node is its root.
    ///
    /// # Errors
    /// Errors of `w`.
    pub fn new(w: &'a mut W) -> io::Result<Self> {
        write_str(w, NAR_MAGIC)?;
        Ok(NarEncoder {
            w,
            entry_done: None,
        })
    }

    /// A symlink to `target` (not empty, no NUL).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for an empty target or one holding NUL; errors of the
    /// writer.
    pub fn symlink(self, target: &[u8]) -> io::Result<()> {
        if target.is_empty() || target.contains(&0) {
            return Err(invalid(
                io::ErrorKind::InvalidInput,
                "a symlink target must be non-empty and free of NUL".into(),
            ));
        }
        write_strs(
            self.w,
            &[b"(", b"type", b"symlink", b"target", target, b")"],
        )?;
        close_entry(self.w, self.entry_done)
    }

    /// A regular file of exactly `size` bytes: write them to the returned [`FileWriter`],
    /// then [`FileWriter::finish`] it.
    ///
    /// # Errors
    /// Errors of the writer.
    pub fn regular(self, executable: bool, size: u64) -> io::Result<FileWriter<'a, W>> {
        write_strs(self.w, &[b"(", b"type", b"regular"])?;
        if executable {
            write_strs(self.w, &[b"executable", b""])?;
        }
        write_str(self.w, b"contents")?;
        self.w.write_all(&size.to_le_bytes())?;
        Ok(FileWriter {
            w: self.w,
            entry_done: self.entry_done,
            size,
            written: 0,
        })
    }

    /// A directory: add its entries with [`DirectoryWriter::entry`], in order, then
    /// [`DirectoryWriter::close`] it.
    ///
    /// # Errors
    /// Errors of the writer.
    pub fn directory(self) -> io::Result<DirectoryWriter<'a, W>> {
        write_strs(self.w, &[b"(", b"type", b"directory"])?;
        Ok(DirectoryWriter {
            w: self.w,
            entry_done: self.entry_done,
            prev: None,
            child_done: true,
        })
    }
}

fn close_entry<W: Write>(w: &mut W, entry_done: Option<&mut bool>) -> io::Result<()> {
    if let Some(done) = entry_done {
        write_str(w, b")")?;
        *done = true;
    }
    Ok(())
}

/// The contents of a regular file being written: exactly the size it declared.
#[must_use = "a file must be finished, or the archive is incomplete"]
pub struct FileWriter<'a, W: Write> {
    w: &'a mut W,
    entry_done: Option<&'a mut bool>,
    size: u64,
    written: u64,
}

impl<W: Write> FileWriter<'_, W> {
    /// Append `data` to the contents. Nothing of `data` is written when it would take the
    /// contents beyond the declared size.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidData`] when the contents would exceed the declared size;
    /// errors of the writer.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.remaining() {
            return Err(invalid(
                io::ErrorKind::InvalidData,
                format!("more than the declared {} bytes", self.size),
            ));
        }
        self.w.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }

    /// End the file.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidData`] when fewer bytes than declared were written; errors of
    /// the writer.
    pub fn finish(self) -> io::Result<()> {
        if self.written != self.size {
            return Err(invalid(
                io::ErrorKind::InvalidData,
                format!("{} bytes where {} were declared", self.written, self.size),
            ));
        }
        self.w.write_all(&[0u8; 8][..padding(self.size)])?;
        write_str(self.w, b")")?;
        close_entry(self.w, self.entry_done)
    }
}

impl<W: Write> Write for FileWriter<'_, W> {
    /// All of `buf`, or an error (see [`FileWriter::write`]).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        FileWriter::write(self, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// A directory being written: entries strictly sorted by name bytes, each finished before
/// the next.
#[must_use = "a directory must be closed, or the archive is incomplete"]
pub struct DirectoryWriter<'a, W: Write> {
    w: &'a mut W,
    entry_done: Option<&'a mut bool>,
    prev: Option<Vec<u8>>,
    /// Whether the last entry's node was written completely.
    child_done: bool,
}

impl<W: Write> DirectoryWriter<'_, W> {
    fn check_children_done(&self) -> io::Result<()> {
        if self.child_done {
            Ok(())
        } else {
            Err(invalid(
                io::ErrorKind::InvalidInput,
                "the previous entry was not finished".into(),
            ))
        }
    }

    /// Start the entry `name`; its node is to be written through the returned encoder.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for a name that is empty, `.`, `..`, or holds `/` or
    /// NUL, one not after the previous name in byte order, or when the previous entry's node
    /// was not finished; errors of the writer.
    pub fn entry(&mut self, name: &[u8]) -> io::Result<NarEncoder<'_, W>> {
        self.check_children_done()?;
        if !crate::cache::tree::valid_name(name) {
            return Err(invalid(
                io::ErrorKind::InvalidInput,
                format!("bad entry name {:?}", String::from_utf8_lossy(name)),
            ));
        }
        if self.prev.as_deref().is_some_and(|p| p >= name) {
            return Err(invalid(
                io::ErrorKind::InvalidInput,
                format!(
                    "entry {:?} is not after the previous one in byte order",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        self.prev = Some(name.to_vec());
        write_strs(self.w, &[b"entry", b"(", b"name", name, b"node"])?;
        self.child_done = false;
        Ok(NarEncoder {
            w: self.w,
            entry_done: Some(&mut self.child_done),
        })
    }

    /// End the directory.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when the last entry's node was not finished; errors of
    /// the writer.
    pub fn close(self) -> io::Result<()> {
        self.check_children_done()?;
        write_str(self.w, b")")?;
        close_entry(self.w, self.entry_done)
    }
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
    /// (SHA-256, byte count) of everything written: the NAR hash and NAR size.
    pub fn finish(self) -> (NarHash, u64) {
        (NarHash(self.sha.finalize().into()), self.len)
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
    sha: NarHasher,
    len: u64,
    fed: u64,
}

impl FileNarHasher {
    /// Start hashing a file of `len` bytes.
    pub fn new(executable: bool, len: u64) -> Self {
        let mut sha = NarHasher::new();
        let mut head = Vec::with_capacity(128);
        write_str(&mut head, NAR_MAGIC).expect("in memory");
        write_strs(&mut head, &[b"(", b"type", b"regular"]).expect("in memory");
        if executable {
            write_strs(&mut head, &[b"executable", b""]).expect("in memory");
        }
        write_str(&mut head, b"contents").expect("in memory");
        head.extend_from_slice(&len.to_le_bytes());
        sha.write_all(&head).expect("hashing cannot fail");
        FileNarHasher { sha, len, fed: 0 }
    }
    /// Feed contents.
    pub fn update(&mut self, data: &[u8]) {
        self.fed += data.len() as u64;
        self.sha.write_all(data).expect("hashing cannot fail");
    }
    /// The SHA-256, or `None` when other than the announced number of bytes was fed (no
    /// file's NAR then: its name would mean nothing).
    pub fn try_finish(mut self) -> Option<[u8; 32]> {
        if self.fed != self.len {
            return None;
        }
        let mut tail = vec![0u8; padding(self.len)];
        write_str(&mut tail, b")").expect("in memory");
        self.sha.write_all(&tail).expect("hashing cannot fail");
        Some(self.sha.finish().0 .0)
    }
    /// The SHA-256.
    ///
    /// # Panics
    /// When other than the announced number of bytes was fed (a caller's bug; callers that
    /// cannot be sure use [`FileNarHasher::try_finish`]).
    pub fn finish(self) -> [u8; 32] {
        let (fed, len) = (self.fed, self.len);
        self.try_finish()
            .unwrap_or_else(|| panic!("FileNarHasher fed {fed} bytes, announced {len}"))
    }
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
    fn a_file_takes_exactly_its_declared_size() {
        let mut out = Vec::new();
        let mut f = NarEncoder::new(&mut out)
            .unwrap()
            .regular(false, 4)
            .unwrap();
        f.write(b"abc").unwrap();
        let err = f.write(b"de").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("more than the declared 4 bytes"));
        assert_eq!(f.remaining(), 1);
        let err = f.finish().unwrap_err();
        assert!(err.to_string().contains("3 bytes where 4"), "{err}");
        // Nothing of the refused chunk reached the stream.
        assert!(out.ends_with(b"abc"));
    }

    #[test]
    fn directories_refuse_bad_unsorted_and_unfinished_entries() {
        let mut out = Vec::new();
        let mut d = NarEncoder::new(&mut out).unwrap().directory().unwrap();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(d.entry(bad).is_err(), "{bad:?}");
        }
        d.entry(b"b").unwrap().symlink(b"x").unwrap();
        assert!(d.entry(b"a").is_err());
        assert!(d.entry(b"b").is_err());
        let f = d.entry(b"c").unwrap().regular(false, 1).unwrap();
        drop(f);
        assert!(d.entry(b"d").is_err());
        assert!(d.close().is_err());
        let mut out = Vec::new();
        let n = NarEncoder::new(&mut out).unwrap();
        assert!(n.symlink(b"").is_err());
    }

    #[test]
    fn file_nar_hasher_wants_the_announced_length() {
        let mut h = FileNarHasher::new(false, 3);
        h.update(b"ab");
        assert_eq!(h.try_finish(), None);
        let mut h = FileNarHasher::new(true, 2);
        h.update(b"ab");
        let mut out = Vec::new();
        let mut f = NarEncoder::new(&mut out).unwrap().regular(true, 2).unwrap();
        f.write(b"ab").unwrap();
        f.finish().unwrap();
        assert_eq!(h.finish(), <[u8; 32]>::from(Sha256::digest(&out)));
    }
}
