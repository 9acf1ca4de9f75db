//! Walking one store path: its tree, NAR SHA-256 and size in one pass, new file contents
//! handed to the packer as blobs, each file's `.links` name found or computed.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::cache::{BlobId, Entry, Node, ObjectKind, Packer, PathFrames};
use crate::error::{Error, Result};
use crate::nar::{sorted_entries, FileNarHasher, NarEncoder, NarError, NarHasher};
use crate::store::links::SourceLinks;
use crate::store::path_info::NarHash;

/// Files at least this large stream through in chunks instead of being read whole (memory
/// stays bounded: one such buffer per worker thread).
const STREAM_THRESHOLD: u64 = 4 * 1024 * 1024;

/// (device, inode) of a hard-linked file → its blob and `.links` hash, so it is hashed once.
type InodeCache = Mutex<HashMap<(u64, u64), (BlobId, [u8; 32])>>;

pub(super) struct Walker<'a, 'c> {
    pub(super) packer: &'a Packer<'c>,
    pub(super) inodes: InodeCache,
    pub(super) bytes_read: AtomicU64,
    /// `.links` hashes recorded by the cache's trees, read on first need.
    pub(super) cached_links: OnceLock<HashMap<(BlobId, bool), [u8; 32]>>,
    /// `.links` hashes computed by this save.
    pub(super) new_links: Mutex<HashMap<(BlobId, bool), [u8; 32]>>,
    /// The source store's `.links` directory, and its entries once read.
    pub(super) links_dir: PathBuf,
    pub(super) source_links: OnceLock<SourceLinks>,
}

impl Walker<'_, '_> {
    /// Walk one store path: its tree, NAR SHA-256 and NAR size.
    pub(super) fn walk(&self, real: &Path) -> Result<(Node, NarHash, u64)> {
        let mut enc = NarEncoder::new(NarHasher::new()).expect("hashing cannot fail");
        let mut frames = PathFrames::default();
        let node = self.node(real, &mut enc, &mut frames);
        // Whatever happened to the walk, the objects claimed so far must reach a pack.
        self.packer.finish_path(frames)?;
        let node = node?;
        let (hash, size) = enc.into_inner().finish();
        Ok((node, hash, size))
    }

    fn node(
        &self,
        path: &Path,
        enc: &mut NarEncoder<NarHasher>,
        frames: &mut PathFrames,
    ) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        let meta = fs::symlink_metadata(path).map_err(io)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io)?.into_os_string().into_vec();
            enc.symlink(&target).map_err(io)?;
            Ok(Node::Symlink { target })
        } else if ft.is_dir() {
            enc.directory_start().map_err(io)?;
            let mut entries = Vec::new();
            for name in sorted_entries(path)? {
                enc.entry_start(name.as_bytes()).map_err(io)?;
                let node = self.node(&path.join(&name), enc, frames)?;
                enc.entry_end().map_err(io)?;
                entries.push(Entry {
                    name: name.as_bytes().to_vec(),
                    node,
                });
            }
            enc.directory_end().map_err(io)?;
            Ok(Node::Directory(entries))
        } else if ft.is_file() {
            self.file(path, &meta, enc, frames)
        } else {
            Err(NarError::FileType(path.to_owned()).into())
        }
    }

    fn file(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        enc: &mut NarEncoder<NarHasher>,
        frames: &mut PathFrames,
    ) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        let executable = meta.permissions().mode() & 0o100 != 0;
        let size = meta.len();
        let inode = (meta.dev(), meta.ino());
        let seen = if meta.nlink() > 1 {
            self.inodes.lock().expect("inodes").get(&inode).copied()
        } else {
            None
        };
        enc.regular_start(executable, size).map_err(io)?;
        let mut f = fs::File::open(path).map_err(io)?;
        let mut blake = blake3::Hasher::new();
        let mut small = crate::scratch::Scratch::empty();
        let mut total = 0u64;
        let mut feed = |chunk: &[u8]| -> io::Result<()> {
            enc.contents(chunk)?;
            if seen.is_none() {
                blake.update(chunk);
            }
            Ok(())
        };
        if size < STREAM_THRESHOLD {
            // Read whole (one more byte to notice growth), hash, keep for the packer.
            small.reserve(size as usize + 1);
            total = (&mut f)
                .take(size + 1)
                .read_to_end(&mut small)
                .map_err(io)? as u64;
            if total == size {
                feed(&small).map_err(io)?;
            }
        } else {
            let mut buf = crate::scratch::Scratch::with_len(1 << 20);
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > size {
                    break;
                }
                feed(&buf[..n]).map_err(io)?;
            }
        }
        if total != size {
            return Err(NarError::Changed(path.to_owned(), size).into());
        }
        enc.regular_end(size).map_err(io)?;
        self.bytes_read.fetch_add(size, Ordering::Relaxed);
        if let Some((blob, file_nar_hash)) = seen {
            // Another name of an inode already walked: its contents are packed or claimed.
            return Ok(Node::Regular {
                executable,
                size,
                blob,
                file_nar_hash,
            });
        }
        let blob = BlobId(*blake.finalize().as_bytes());
        // The `.links` name is only needed for files the daemon deduplicates; it is known
        // already when the source store's `.links` has this inode, or when some tree of the
        // cache (or a file this save walked) records these contents.
        let known = (size >= crate::store::links::LINKS_MIN_SIZE)
            .then(|| {
                self.source_links_hash(meta)
                    .or_else(|| self.known_links_hash(&blob, executable))
            })
            .flatten();
        let mut links = (size >= crate::store::links::LINKS_MIN_SIZE && known.is_none())
            .then(|| FileNarHasher::new(executable, size));
        let claimed = self.packer.claim(blob);
        if size < STREAM_THRESHOLD {
            if let Some(fh) = links.as_mut() {
                fh.update(&small);
            }
            if claimed {
                self.packer
                    .add_to(frames, ObjectKind::Blob, blob, &small)
                    .inspect_err(|_| self.packer.unclaim(blob))?;
            }
        } else if claimed || links.is_some() {
            // Second pass over a large file, to pack it or to compute its `.links` hash;
            // it must still hash to the same id (the packer checks what it packs).
            let second = (|| -> Result<()> {
                let f = fs::File::open(path).map_err(io)?;
                let mut r = HashingReader {
                    inner: f,
                    hasher: (!claimed).then(blake3::Hasher::new),
                    links: links.as_mut(),
                    read: 0,
                    eof: false,
                    error: None,
                };
                if claimed {
                    match self.packer.add_reader(ObjectKind::Blob, blob, size, &mut r) {
                        Ok(true) => {}
                        Ok(false) => return Err(NarError::Changed(path.to_owned(), size).into()),
                        // The packer reports its reader's failures as its own: those are the
                        // store's (unreadable, or changed size), the rest the cache's.
                        Err(e) => {
                            return Err(match r.error.take() {
                                Some(io) => NarError::Io(path.to_owned(), io).into(),
                                None if r.changed(size) => {
                                    NarError::Changed(path.to_owned(), size).into()
                                }
                                None => e.into(),
                            })
                        }
                    }
                } else {
                    io::copy(&mut (&mut r).take(size + 1), &mut io::sink()).map_err(io)?;
                    let h = r.hasher.take().expect("set when not claimed");
                    if BlobId(*h.finalize().as_bytes()) != blob {
                        return Err(NarError::Changed(path.to_owned(), size).into());
                    }
                }
                Ok(())
            })();
            if second.is_err() && claimed {
                self.packer.unclaim(blob);
            }
            second?;
        }
        let file_nar_hash = match (known, links) {
            (Some(h), _) => h,
            (None, Some(fh)) => {
                let h = fh.finish();
                self.new_links
                    .lock()
                    .expect("new links")
                    .insert((blob, executable), h);
                h
            }
            (None, None) => [0; 32],
        };
        if meta.nlink() > 1 {
            self.inodes
                .lock()
                .expect("inodes")
                .insert(inode, (blob, file_nar_hash));
        }
        Ok(Node::Regular {
            executable,
            size,
            blob,
            file_nar_hash,
        })
    }

    /// The name of the source store's `.links` entry sharing this file's inode, if any: the
    /// daemon named it by the SHA-256 of the file's NAR when it deduplicated the file, and
    /// trusts that name itself whenever it links another file to it.
    fn source_links_hash(&self, meta: &fs::Metadata) -> Option<[u8; 32]> {
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

    /// The `.links` hash of contents `blob` with the executable bit `executable`, if a tree of
    /// the cache or a file already walked by this save records it.
    fn known_links_hash(&self, blob: &BlobId, executable: bool) -> Option<[u8; 32]> {
        let key = (*blob, executable);
        if self.packer.cache().contains(*blob) {
            let cached = self
                .cached_links
                .get_or_init(|| self.packer.cache().links_hashes());
            if let Some(h) = cached.get(&key) {
                return Some(*h);
            }
        }
        self.new_links.lock().expect("new links").get(&key).copied()
    }
}

struct HashingReader<'h, R> {
    inner: R,
    hasher: Option<blake3::Hasher>,
    links: Option<&'h mut FileNarHasher>,
    /// Bytes read, whether the end was reached, and the first read error: they tell a
    /// failure of the store's file from one of the cache.
    read: u64,
    eof: bool,
    error: Option<io::Error>,
}

impl<R> HashingReader<'_, R> {
    /// Whether the file turned out to have another size than `size`.
    fn changed(&self, size: u64) -> bool {
        self.read > size || (self.eof && self.read != size)
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let told = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(e);
                return Err(told);
            }
        };
        self.read += n as u64;
        self.eof |= n == 0 && !buf.is_empty();
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(fh) = self.links.as_mut() {
            fh.update(&buf[..n]);
        }
        Ok(n)
    }
}
