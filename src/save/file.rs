//! Reading one regular file of a path being saved: its NAR (real bytes), its blob (the bytes
//! with references replaced by the placeholder, `cache::rewrite`), packed if new, and its
//! `.links` name found or computed. Files under 4 MiB are read whole; larger ones stream in
//! 1 MiB reads, then again (the blob id and rewrites must come out the same) to be packed or
//! to compute the `.links` name: memory stays bounded whatever the size.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use super::walk::{At, Ctx, Enc, Looked, Walker};
use crate::cache::rewrite::{rewrite_in_place, Rewriter, RewritingReader, Substituter};
use crate::cache::tree::content_key;
use crate::cache::{BlobId, Node, ObjectKind, Rewrite, MAX_TREE_NODES};
use crate::error::{Error, Result};
use crate::nar::{FileNarHasher, NarError};

/// Files at least this large stream through in chunks instead of being read whole (memory
/// stays bounded: one such buffer per worker thread).
const STREAM_THRESHOLD: u64 = 4 * 1024 * 1024;

impl Walker<'_, '_> {
    /// Read a file: its NAR, its rewritten contents hashed into a blob (packed if new), its
    /// `.links` name found or computed.
    pub(super) fn read_file(
        &self,
        at: At<'_>,
        meta: &Looked,
        executable: bool,
        seen: Option<(BlobId, [u8; 32], Vec<Rewrite>)>,
        enc: Enc<'_, '_>,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<Node> {
        let path = at.path;
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        let size = meta.size;
        let inode = (meta.dev, meta.ino);
        let mut enc = enc.regular(executable, size).map_err(io)?;
        let mut f = open_checked(at.dir, at.name, inode, size).map_err(io)?;
        let mut blake = blake3::Hasher::new();
        let mut small = crate::scratch::Scratch::empty();
        let mut rewrites = Vec::new();
        let mut total = 0u64;
        if size < STREAM_THRESHOLD {
            // Read whole (one more byte to notice growth), hash, rewrite, keep for the packer.
            small.reserve(size as usize + 1);
            total = (&mut f)
                .take(size + 1)
                .read_to_end(&mut small)
                .map_err(io)? as u64;
            if total == size {
                enc.write_all(&small).map_err(io)?;
                if seen.is_none() {
                    rewrites = rewrite_in_place(&mut small, ctx.parts);
                    blake.update(&small);
                }
            }
        } else {
            let mut buf = crate::scratch::Scratch::with_len(1 << 20);
            // Rewrites are tree nodes (`walk::Ctx::nodes`): a file of more than the path has
            // room for is refused as soon as they are found, not once all are held (40 bytes
            // each, for as few as 32 bytes of a file anyone who may build can make).
            let room = MAX_TREE_NODES.saturating_sub(ctx.nodes);
            let mut rw = Rewriter::with_limit(ctx.parts, room);
            let mut hash = |b: &[u8]| -> io::Result<()> {
                blake.update(b);
                Ok(())
            };
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > size {
                    break;
                }
                enc.write_all(&buf[..n]).map_err(io)?;
                if seen.is_none() {
                    rw.feed(&buf[..n], &mut hash).map_err(io)?;
                    if rw.too_many() {
                        return Err(io(io::Error::other(format!(
                            "more than {MAX_TREE_NODES} nodes"
                        ))));
                    }
                }
            }
            rewrites = rw.finish(&mut hash).map_err(io)?;
        }
        if total != size {
            return Err(NarError::Changed(path.to_owned(), size).into());
        }
        enc.finish().map_err(io)?;
        self.bytes_read.fetch_add(size, Ordering::Relaxed);
        if let Some((blob, file_nar_hash, rewrites)) = seen {
            // Another name of an inode already walked: its contents are packed or claimed.
            return Ok(Node::regular(
                executable,
                size,
                blob,
                file_nar_hash,
                rewrites,
            ));
        }
        let blob = BlobId(*blake.finalize().as_bytes());
        let key = content_key(&blob, executable, &rewrites);
        // The `.links` name is only needed for files the daemon deduplicates; it is known
        // already when the source store's `.links` has this inode, or when some tree of the
        // cache (or a file this save walked) records these contents.
        let known = (size >= crate::store::links::LINKS_MIN_SIZE)
            .then(|| {
                self.source_links_hash(meta)
                    .or_else(|| self.known_links_hash(&blob, &key))
            })
            .flatten();
        let mut links = (size >= crate::store::links::LINKS_MIN_SIZE && known.is_none())
            .then(|| FileNarHasher::new(executable, size));
        let claimed = self.packer.claim(blob);
        if size < STREAM_THRESHOLD {
            if let Some(fh) = links.as_mut() {
                // The real bytes: the rewritten ones with the hash parts put back.
                let mut sub = Substituter::new(&rewrites);
                for chunk in small.chunks(1 << 16) {
                    fh.update(sub.apply(chunk).map_err(|e| io(io::Error::other(e)))?);
                }
            }
            if claimed {
                self.packer
                    .add_to(ctx.frames, ObjectKind::Blob, blob, &small)
                    .inspect_err(|_| self.packer.unclaim(blob))?;
            }
        } else if claimed || links.is_some() {
            // Second pass over a large file, to pack it or to compute its `.links` hash;
            // it must still hash to the same id and give the same rewrites (the packer
            // checks what it packs).
            let second = (|| -> Result<()> {
                let f = open_checked(at.dir, at.name, inode, size).map_err(io)?;
                let r = HashingReader {
                    inner: f,
                    links: links.as_mut(),
                    read: 0,
                    eof: false,
                    error: None,
                };
                // As many rewrites as the first pass found, or one more: then it changed.
                let mut r = RewritingReader::with_limit(r, ctx.parts, rewrites.len());
                if claimed {
                    match self.packer.add_reader(ObjectKind::Blob, blob, size, &mut r) {
                        Ok(true) => {}
                        Ok(false) => return Err(NarError::Changed(path.to_owned(), size).into()),
                        // The packer reports its reader's failures as its own: those are the
                        // store's (unreadable, or changed size), the rest the cache's.
                        Err(e) => {
                            let inner = r.inner_mut();
                            return Err(match inner.error.take() {
                                Some(io) => NarError::Io(path.to_owned(), io).into(),
                                None if inner.changed(size) => {
                                    NarError::Changed(path.to_owned(), size).into()
                                }
                                None => e.into(),
                            });
                        }
                    }
                } else {
                    let mut h = blake3::Hasher::new();
                    io::copy(&mut (&mut r).take(size + 1), &mut h).map_err(io)?;
                    if BlobId(*h.finalize().as_bytes()) != blob {
                        return Err(NarError::Changed(path.to_owned(), size).into());
                    }
                }
                if r.rewrites() != rewrites.as_slice() {
                    return Err(NarError::Changed(path.to_owned(), size).into());
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
                self.new_links.lock().expect("new links").insert(key, h);
                h
            }
            (None, None) => [0; 32],
        };
        if meta.nlink > 1 {
            self.inodes
                .lock()
                .expect("inodes")
                .insert(inode, (blob, file_nar_hash, rewrites.clone()));
        }
        Ok(Node::regular(
            executable,
            size,
            blob,
            file_nar_hash,
            rewrites,
        ))
    }
}

struct HashingReader<'h, R> {
    inner: R,
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
        if let Some(fh) = self.links.as_mut() {
            fh.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Open the file `name` in `dir` for reading, if it is still the regular file of `size`
/// bytes and inode `inode` the walk looked at: opened without following a symlink
/// (`O_NOFOLLOW`), nor blocking on a FIFO swapped in (`O_NONBLOCK`), and checked again
/// through its descriptor. `dir` is a descriptor the walk holds (each directory opened
/// `O_NOFOLLOW` below the store's), so no symlink swapped in above the file is followed
/// either. Whoever can write a store path's directory (a valid path missing on disk, made
/// again by a member of the build group in a 1775 store) could otherwise swap a file, or a
/// directory above it, for a symlink between the walk's look and the open, and have a
/// root-only file's bytes packed into the cache.
pub(super) fn open_checked(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    inode: (u64, u64),
    size: u64,
) -> io::Result<fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let f = fs::File::from(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let m = f.metadata()?;
    if !m.is_file() || (m.dev(), m.ino()) != inode || m.len() != size {
        return Err(io::Error::other(
            "changed since the walk looked at it (another file, not a regular file, or \
             another size): not read",
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod open_tests {
    use super::open_checked;
    use std::ffi::OsStr;
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn inode(p: &std::path::Path) -> (u64, u64) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    /// What save's walk looked at is what it reads, or nothing: a file swapped for a symlink
    /// (to a same-sized secret), for another file or a FIFO between the look and the open
    /// (found by review: `File::open` followed them, and the secret's bytes were packed).
    /// Directories above are held open by the walk (`walk::open_dir_looked`'s test).
    #[test]
    fn a_file_swapped_after_the_walk_looked_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let secret = root.join("secret");
        fs::write(&secret, b"SECRET").unwrap();
        let dir = root.join("dir");
        fs::create_dir(&dir).unwrap();
        let fd = crate::store::fs::open_dir_at(rustix::fs::CWD, &dir).unwrap();
        let (fd, name) = (fd.as_fd(), OsStr::new("f"));
        let f = dir.join("f");
        fs::write(&f, b"plain!").unwrap();
        let looked = inode(&f);
        open_checked(fd, name, looked, 6).unwrap();
        // The file swapped for a symlink to the secret (the file kept aside, so that its
        // inode number is not given to the files made next).
        fs::rename(&f, root.join("aside")).unwrap();
        symlink(&secret, &f).unwrap();
        assert!(open_checked(fd, name, looked, 6).is_err());
        // For a symlink the walk would look at the target of: still refused by O_NOFOLLOW.
        assert!(open_checked(fd, name, inode(&secret), 6).is_err());
        // For another file of the same size.
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"other!").unwrap();
        let e = open_checked(fd, name, looked, 6).unwrap_err().to_string();
        assert!(e.contains("changed since"), "{e}");
        // For a FIFO: no hang.
        fs::remove_file(&f).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &f,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(open_checked(fd, name, looked, 6).is_err());
    }
}
