//! Writing the NAR stream: [`NarEncoder`] emits the grammar, [`NarHasher`] turns it into the
//! NAR SHA-256 and size the DB records, [`FileNarHasher`] gives a lone file's NAR hash (its
//! name under `<store>/.links`).

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::NAR_MAGIC;
use crate::store::path_info::NarHash;

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
        self.enc.into_inner().finish().0 .0
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
}
