//! Walking one store path: its tree, NAR SHA-256 and size in one pass, new file contents
//! handed to the packer as blobs, each file's `.links` name found or computed.
//!
//! A file's blob is its contents with the hash parts of the path's references (and its own)
//! replaced by the placeholder (`cache::rewrite`); the NAR and the `.links` name are those of
//! the real bytes. A file that is a hard link to a `.links` entry whose name the base
//! snapshot's trees know is not read at all (`known`): its node comes from the old tree, and
//! the path's NAR hash then cannot be computed (the walk says None; its NAR size still is).

use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::known::{KnownFile, KnownFiles};
use crate::cache::rewrite::HashParts;
use crate::cache::{BlobId, Entry, Node, Packer, PathFrames, Rewrite, TreeId};
use crate::error::{Error, Result};
use crate::nar::{sorted_entries, NarEncoder, NarError, NarHasher};
use crate::store::links::SourceLinks;
use crate::store::path_info::NarHash;

/// (device, inode) of a hard-linked file → its blob, `.links` hash and rewrites, so it is
/// hashed once.
type InodeCache = Mutex<HashMap<(u64, u64), (BlobId, [u8; 32], Vec<Rewrite>)>>;

pub(super) struct Walker<'a, 'c> {
    pub(super) packer: &'a Packer<'c>,
    pub(super) inodes: InodeCache,
    pub(super) bytes_read: AtomicU64,
    /// Bytes of files not read: contents the base snapshot's trees know by `.links` name.
    pub(super) bytes_known: AtomicU64,
    /// `.links` hashes recorded by the cache's trees, by content key, read on first need.
    pub(super) cached_links: OnceLock<HashMap<[u8; 32], [u8; 32]>>,
    /// `.links` hashes computed by this save, by content key.
    pub(super) new_links: Mutex<HashMap<[u8; 32], [u8; 32]>>,
    /// The source store's `.links` directory, and its entries once read.
    pub(super) links_dir: PathBuf,
    pub(super) source_links: OnceLock<SourceLinks>,
    /// The base snapshot's files by `.links` name (None: every file is read, as
    /// `--verify-source` asks), indexed on first need.
    pub(super) known: Option<OnceLock<KnownFiles<'c>>>,
    /// The base snapshot's trees, for `known`.
    pub(super) base_trees: Vec<TreeId>,
}

/// Where a walk sends the NAR: SHA-256 and length, or only the length once a file was
/// taken from the cache unread (the hash is then unknown; `blind` says so).
pub(super) struct NarSink<'b> {
    hasher: NarHasher,
    len: u64,
    blind: &'b Cell<bool>,
}

impl Write for NarSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.blind.get() {
            self.hasher.write_all(buf)?;
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) type Enc<'e, 'b> = NarEncoder<'e, NarSink<'b>>;

/// Zeros, fed to the NAR length in place of contents not read.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

impl Walker<'_, '_> {
    /// Walk one store path whose files may name the hash parts `parts`: its tree, NAR
    /// SHA-256 (None when some file was taken unread from the base snapshot) and NAR size.
    /// With `read_all`, every file is read.
    pub(super) fn walk(
        &self,
        real: &Path,
        parts: &HashParts,
        read_all: bool,
    ) -> Result<(Node, Option<NarHash>, u64)> {
        let blind = Cell::new(false);
        let mut sink = NarSink {
            hasher: NarHasher::new(),
            len: 0,
            blind: &blind,
        };
        let enc = NarEncoder::new(&mut sink).expect("hashing cannot fail");
        let mut frames = PathFrames::default();
        let mut ctx = Ctx {
            frames: &mut frames,
            parts,
            read_all,
            blind: &blind,
        };
        let node = self.node(real, enc, &mut ctx);
        // Whatever happened to the walk, the objects claimed so far must reach a pack.
        self.packer.finish_path(frames)?;
        let node = node?;
        let (hash, _) = sink.hasher.finish();
        Ok((node, (!blind.get()).then_some(hash), sink.len))
    }

    fn node(&self, path: &Path, enc: Enc<'_, '_>, ctx: &mut Ctx<'_, '_>) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        let meta = fs::symlink_metadata(path).map_err(io)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io)?.into_os_string().into_vec();
            enc.symlink(&target).map_err(io)?;
            Ok(Node::Symlink { target })
        } else if ft.is_dir() {
            let mut dir = enc.directory().map_err(io)?;
            let mut entries = Vec::new();
            for name in sorted_entries(path)? {
                let entry = dir.entry(name.as_bytes()).map_err(io)?;
                let node = self.node(&path.join(&name), entry, ctx)?;
                entries.push(Entry {
                    name: name.as_bytes().to_vec(),
                    node,
                });
            }
            dir.close().map_err(io)?;
            Ok(Node::Directory(entries))
        } else if ft.is_file() {
            self.file(path, &meta, enc, ctx)
        } else {
            Err(NarError::FileType(path.to_owned()).into())
        }
    }

    /// The base snapshot's file this one is a hard link to (through its `.links` entry), if
    /// it may be taken unread.
    fn lookup_known(
        &self,
        meta: &fs::Metadata,
        executable: bool,
        ctx: &Ctx<'_, '_>,
    ) -> Option<KnownFile> {
        let known = self.known.as_ref()?;
        if ctx.read_all || meta.len() < crate::store::links::LINKS_MIN_SIZE {
            return None;
        }
        let name = self.source_links_hash(meta)?;
        known
            .get_or_init(|| KnownFiles::build(self.packer.cache(), self.base_trees.iter().copied()))
            .get(&name, executable, meta.len())
    }

    /// Take `f` as this file's node without reading it: the NAR gets zeros of its length
    /// (its hash is then unknown).
    fn take_known(
        &self,
        f: KnownFile,
        meta: &fs::Metadata,
        path: &Path,
        enc: Enc<'_, '_>,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        ctx.blind.set(true);
        let mut w = enc.regular(f.executable, f.size).map_err(io)?;
        let mut left = f.size;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            w.write_all(&ZEROS[..n]).map_err(io)?;
            left -= n as u64;
        }
        w.finish().map_err(io)?;
        self.bytes_known.fetch_add(f.size, Ordering::Relaxed);
        if meta.nlink() > 1 {
            self.inodes.lock().expect("inodes").insert(
                (meta.dev(), meta.ino()),
                (f.blob, f.file_nar_hash, f.rewrites.clone()),
            );
        }
        Ok(Node::regular(
            f.executable,
            f.size,
            f.blob,
            f.file_nar_hash,
            f.rewrites,
        ))
    }

    fn file(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        enc: Enc<'_, '_>,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<Node> {
        let executable = meta.permissions().mode() & 0o100 != 0;
        let inode = (meta.dev(), meta.ino());
        let seen = if meta.nlink() > 1 {
            self.inodes.lock().expect("inodes").get(&inode).cloned()
        } else {
            None
        };
        if seen.is_none() {
            if let Some(f) = self.lookup_known(meta, executable, ctx) {
                return self.take_known(f, meta, path, enc, ctx);
            }
        }
        self.read_file(path, meta, executable, seen, enc, ctx)
    }

    /// The name of the source store's `.links` entry sharing this file's inode, if any: the
    /// daemon named it by the SHA-256 of the file's NAR when it deduplicated the file, and
    /// trusts that name itself whenever it links another file to it.
    pub(super) fn source_links_hash(&self, meta: &fs::Metadata) -> Option<[u8; 32]> {
        if meta.nlink() < 2 {
            return None;
        }
        let links = self
            .source_links
            .get_or_init(|| SourceLinks::read(&self.links_dir));
        (links.dev == meta.dev())
            .then(|| links.by_inode.get(&meta.ino()).copied())
            .flatten()
    }

    /// The `.links` hash of the file whose blob is `blob` and content key `key`, if a tree
    /// of the cache or a file already walked by this save records it.
    pub(super) fn known_links_hash(&self, blob: &BlobId, key: &[u8; 32]) -> Option<[u8; 32]> {
        if self.packer.cache().contains(*blob) {
            let cached = self
                .cached_links
                .get_or_init(|| self.packer.cache().links_hashes());
            if let Some(h) = cached.get(key) {
                return Some(*h);
            }
        }
        self.new_links.lock().expect("new links").get(key).copied()
    }
}

/// What one path's walk carries down its tree.
pub(super) struct Ctx<'f, 'p> {
    pub(super) frames: &'f mut PathFrames,
    pub(super) parts: &'p HashParts,
    pub(super) read_all: bool,
    pub(super) blind: &'p Cell<bool>,
}
