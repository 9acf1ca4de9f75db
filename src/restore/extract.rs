//! Writing one store path from its tree: directories, symlinks and files under a temporary
//! name, with the daemon's canonical metadata, feeding the NAR of what was written to a hasher.
//!
//! Everything is created relative to a descriptor of the directory it goes in (the store
//! directory for the top, then each directory as it is made), with `O_NOFOLLOW` / `O_EXCL`:
//! a directory swapped for a symlink meanwhile is never written through, and one swapped at
//! all fails the path. The NAR hashed is that of the bytes as they are written: each chunk
//! goes to the path's [`FileWriter`] (which refuses bytes beyond the declared size) before
//! it goes to the disk, and the size on disk is checked after. A rewritten file gets the hash
//! parts its tree records put back as its blob streams by (`cache::rewrite::Substituter`):
//! what is hashed and written are the real bytes.
//!
//! A file whose blob a sibling holds (an older build of the same package in the store, found
//! at plan time: `super::siblings`) is copied from it instead, the wanted hash parts put in,
//! the source checked against the blob as it is read; the copy is then read back into the
//! path's NAR. A source that no longer holds the blob is discarded and the blob streamed from
//! the cache instead.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use filetime::FileTime;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::error::PathError;
use super::siblings::{self, Copied, PathSources};
use crate::cache::rewrite::Substituter;
use crate::cache::{BlobId, Cache, Node, Rewrite};
use crate::nar::{FileNarHasher, FileWriter, NarEncoder, NarHasher};
use crate::store::fs::{drop_acls, open_dir_at};
use crate::store::links::{LinkSource, LinksDir, LINKS_MIN_SIZE};
use crate::store::path::nixbase32_encode;

pub(super) struct Writer<'a> {
    pub(super) cache: &'a Cache,
    pub(super) links: &'a LinksDir,
    /// The store directory, which siblings are opened relative to.
    pub(super) store: BorrowedFd<'a>,
    pub(super) chown: Option<(u32, u32)>,
    /// File bytes written from the cache.
    pub(super) bytes_written: AtomicU64,
    /// File bytes written to the disk, whatever their source (copies discarded too): what
    /// early writeback counts (`super::resources::Flusher`).
    pub(super) disk_bytes: Arc<AtomicU64>,
    pub(super) linked_files: AtomicU64,
    /// Files copied from siblings (and used), and their bytes.
    pub(super) local_files: AtomicU64,
    pub(super) local_bytes: AtomicU64,
    /// Running as root: permission checks do not apply, so directories are created with their
    /// final mode at once instead of being made writable and then read-only.
    pub(super) privileged: bool,
    /// The store directory has a default ACL ([`crate::store::fs::has_default_acl`]): the
    /// mode a node is created with is masked by the ACL it inherits, so each node's ACLs are
    /// removed and its mode set once created.
    pub(super) acl: bool,
}

type Enc<'a> = NarEncoder<'a, NarHasher>;

/// One attempt at writing a path: how, and what it did.
pub(super) struct Attempt<'s> {
    /// Hard-link files from `.links` entries and from files staged by other paths.
    pub(super) links: bool,
    /// Copy files from the siblings that hold their blobs (see `super::siblings`).
    pub(super) local: Option<&'s PathSources>,
    /// Regular files met so far (the next one's number, in NAR order).
    pub(super) files: usize,
    /// Where the writer is, relative to the path's top (kept only with `local`).
    pub(super) rel: Vec<Vec<u8>>,
    /// The directories of the sibling last copied from, kept open for the next file.
    pub(super) dirs: siblings::DirCursor,
    /// Check every blob against its id while streaming it (otherwise the path's NAR hash is
    /// the only check).
    pub(super) check_blobs: bool,
    /// Files hard-linked from `.links` or from staged files.
    pub(super) linked: u64,
    /// `.links` names of staged files this path holds: entries to add once it is verified.
    pub(super) new_links: Vec<[u8; 32]>,
}

fn mtime_one() -> FileTime {
    FileTime::from_unix_time(1, 0)
}

/// A chunk refused by the path's NAR: more bytes than the tree declares.
fn too_long(shown: &Path, blob: &BlobId, size: u64) -> PathError {
    PathError::Content(format!(
        "{}: blob {blob} holds more than the {size} bytes the tree declares",
        shown.display()
    ))
}

/// A NAR writer error: the tree or its contents are malformed (the hasher cannot fail).
fn malformed(shown: &Path) -> impl Fn(io::Error) -> PathError + '_ {
    move |e| PathError::Content(format!("{}: {e}", shown.display()))
}

impl Writer<'_> {
    /// Write `node` as `name` in `dir` (which must not exist), feeding the NAR of what was
    /// written to `enc`; `shown` names it in errors (its final place in the store).
    ///
    /// With `at.links` set, a file whose contents have a usable `.links` entry (or were
    /// written by another path of this restore) is hard-linked to it and read back into
    /// `enc` without a check of its own: the path's NAR hash covers it, and a path that fails
    /// is written again from the cache, every blob checked (see [`super::execute`]). A file
    /// written is named by its own bytes (its file NAR hash), which must be the name the tree
    /// gives it; it is staged under that name, and gets its `.links` entry only once the path
    /// is verified, so an unchecked blob never reaches `.links`.
    pub(super) fn write(
        &self,
        node: &Node,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        enc: Enc<'_>,
        at: &mut Attempt<'_>,
    ) -> Result<(), PathError> {
        let target = PathError::target(shown);
        match node {
            Node::Symlink { target: to } => {
                rustix::fs::symlinkat(to.as_slice(), dir, name).map_err(|e| target(e.into()))?;
                enc.symlink(to).map_err(malformed(shown))?;
                self.finish_symlink(dir, name).map_err(target)
            }
            Node::Directory(entries) => {
                let mode = if self.privileged { 0o555 } else { 0o755 };
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))
                    .map_err(|e| target(e.into()))?;
                let sub = open_dir_at(dir, name).map_err(&target)?;
                if self.acl {
                    // Before its entries are created, which would inherit its default ACL;
                    // its mode as if no ACL had masked it (final when privileged).
                    drop_acls(&sub, true, mode).map_err(&target)?;
                }
                let made = rustix::fs::fstat(&sub).map_err(|e| target(e.into()))?;
                let mut d = enc.directory().map_err(malformed(shown))?;
                for e in entries {
                    let child_enc = d.entry(&e.name).map_err(malformed(shown))?;
                    let child_name = OsStr::from_bytes(&e.name);
                    let child_shown = shown.join(child_name);
                    if at.local.is_some() {
                        at.rel.push(e.name.clone());
                    }
                    self.write(
                        &e.node,
                        sub.as_fd(),
                        child_name,
                        &child_shown,
                        child_enc,
                        at,
                    )?;
                    if at.local.is_some() {
                        at.rel.pop();
                    }
                }
                d.close().map_err(malformed(shown))?;
                let sub = fs::File::from(sub);
                if let Some((u, g)) = self.chown {
                    std::os::unix::fs::fchown(&sub, Some(u), Some(g)).map_err(&target)?;
                }
                if !self.privileged {
                    rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o555))
                        .map_err(|e| target(e.into()))?;
                }
                filetime::set_file_handle_times(&sub, None, Some(mtime_one())).map_err(&target)?;
                // Its entries were written through `sub`: it must still be the directory at
                // `name`, or they are not in the tree that is renamed into place.
                let now = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| target(e.into()))?;
                if (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino) {
                    return Err(target(io::Error::other(
                        "replaced by something else while being written",
                    )));
                }
                Ok(())
            }
            Node::Regular { .. } | Node::Rewritten { .. } => {
                let file = node.file().expect("a regular file");
                let (executable, size, blob, file_nar_hash) = (
                    &file.executable,
                    &file.size,
                    &file.blob,
                    &file.file_nar_hash,
                );
                let mut fw = enc.regular(*executable, *size).map_err(malformed(shown))?;
                let number = at.files;
                at.files += 1;
                let big = *size >= LINKS_MIN_SIZE;
                let _guard = big.then(|| self.links.lock(file_nar_hash));
                if big && at.links {
                    let linked = self
                        .links
                        .link_to(file_nar_hash, *size, *executable, dir, name)
                        .map_err(&target)?;
                    if let Some((file, source)) = linked {
                        Self::read_linked(file, &mut fw).map_err(&target)?;
                        fw.finish().map_err(|e| {
                            PathError::Content(format!(
                                "{}: linked from {}: {e}",
                                shown.display(),
                                self.links.path().display()
                            ))
                        })?;
                        at.linked += 1;
                        if source == LinkSource::Staged {
                            at.new_links.push(*file_nar_hash);
                        }
                        return Ok(());
                    }
                }
                let sibling = at.local.and_then(|l| l.of(number));
                let rel: Vec<&[u8]> = match sibling {
                    Some(_) => at.rel.iter().map(Vec::as_slice).collect(),
                    None => Vec::new(),
                };
                let source = sibling.map(|sibling| (sibling, &rel[..], &mut at.dirs));
                let own = self.write_file(
                    dir,
                    name,
                    shown,
                    *executable,
                    *size,
                    (blob, file.rewrites),
                    &mut fw,
                    at.check_blobs,
                    source,
                )?;
                fw.finish().map_err(malformed(shown))?;
                if let Some(own) = own {
                    if own != *file_nar_hash {
                        return Err(PathError::Content(format!(
                            "{}: the tree names this file {} in .links, its bytes say {}",
                            shown.display(),
                            nixbase32_encode(file_nar_hash),
                            nixbase32_encode(&own)
                        )));
                    }
                    self.links.stage(&own, dir, name).map_err(&target)?;
                    at.new_links.push(own);
                }
                Ok(())
            }
        }
    }

    /// Owner and mtime of the symlink `name` in `dir` (its mode is always 0777).
    fn finish_symlink(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if let Some((u, g)) = self.chown {
            // Relative to the directory's descriptor, the symlink itself (not its target).
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        let one = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: one,
            last_modification: one,
        };
        Ok(rustix::fs::utimensat(
            dir,
            name,
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Feed at most the declared size of a linked file to `fw` (the caller's `finish` checks
    /// that no fewer came).
    fn read_linked(file: fs::File, fw: &mut FileWriter<'_, NarHasher>) -> io::Result<()> {
        let mut f = file.take(fw.remaining());
        let mut buf = crate::scratch::Scratch::with_len(1 << 18);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            fw.write(&buf[..n])?;
        }
    }

    /// Write the file `name` in `dir` from the blob, with the hash parts of `rewrites` put
    /// back as it streams, through `fw`; or, given a `source` (a sibling's base name and the
    /// file's path in it) that still holds the blob, from that file (see
    /// [`Writer::copy_source`]). Returns the file's own `.links` name (the SHA-256 of its NAR,
    /// computed from the bytes written) for files of [`LINKS_MIN_SIZE`] bytes or more.
    #[allow(clippy::too_many_arguments)]
    fn write_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        executable: bool,
        size: u64,
        (blob, rewrites): (&BlobId, &[Rewrite]),
        fw: &mut FileWriter<'_, NarHasher>,
        check_blob: bool,
        source: Option<(&str, &[&[u8]], &mut siblings::DirCursor)>,
    ) -> Result<Option<[u8; 32]>, PathError> {
        let target = PathError::target(shown);
        // Created with its final mode (the umask is 022 during a restore): the descriptor is
        // writable whatever the mode, and no chmod is needed afterwards. Readable as well when
        // a copy is to be read back.
        let access = if source.is_some() {
            OFlags::RDWR
        } else {
            OFlags::WRONLY
        };
        let mode = if executable { 0o555 } else { 0o444 };
        let fd = rustix::fs::openat(
            dir,
            name,
            access | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| target(e.into()))?;
        if self.acl {
            drop_acls(&fd, false, mode).map_err(&target)?;
        }
        let mut f = fs::File::from(fd);
        if let Some(source) = source {
            if let Some(own) = self.copy_source(
                &mut f,
                source,
                executable,
                size,
                (blob, rewrites),
                fw,
                shown,
            )? {
                self.finish_file(&f, size, shown)?;
                return Ok(own);
            }
        }
        let mut own = (size >= LINKS_MIN_SIZE).then(|| FileNarHasher::new(executable, size));
        // Into the NAR first: it refuses bytes beyond the declared size, so they never reach
        // the disk (a tiny cache declaring a 10-byte file cannot fill it). The sink's own
        // error is kept: the cache would report it as one of its storage.
        let mut refused = None;
        let mut substituter = Substituter::new(rewrites);
        let mut sink = |chunk: &[u8]| {
            let chunk = match substituter.apply(chunk) {
                Ok(c) => c,
                Err(e) => {
                    refused = Some(PathError::Content(format!(
                        "{}: blob {blob}: {e}",
                        shown.display()
                    )));
                    return Err(io::Error::other("refused"));
                }
            };
            if fw.write(chunk).is_err() {
                refused = Some(too_long(shown, blob, size));
                return Err(io::Error::other("refused"));
            }
            if let Err(e) = f.write_all(chunk) {
                let kept = io::Error::new(e.kind(), e.to_string());
                refused = Some(target(e));
                return Err(kept);
            }
            if let Some(h) = own.as_mut() {
                h.update(chunk);
            }
            self.bytes_written
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.disk_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(())
        };
        let streamed = if check_blob {
            self.cache.stream(blob, &mut sink)
        } else {
            self.cache.stream_unchecked(blob, &mut sink)
        };
        if let Some(e) = refused {
            return Err(e);
        }
        streamed.map_err(|e| PathError::cache(shown, e))?;
        if fw.remaining() != 0 {
            return Err(PathError::Content(format!(
                "{}: blob {blob} holds {} bytes, the tree declares {size}",
                shown.display(),
                size - fw.remaining()
            )));
        }
        self.finish_file(&f, size, shown)?;
        Ok(own.and_then(FileNarHasher::try_finish))
    }

    /// Copy the file at `rel` in the sibling `sibling` into `f` (new, empty, readable), the
    /// hash parts of `rewrites` put in, if the sibling's file still holds `blob` once masked
    /// ([`siblings::copy`]); then read the copy back into `fw` (and the file's own `.links`
    /// name, returned as by [`Writer::write_file`]). `None` when the source is gone, is no
    /// longer the blob or cannot be read: `f` is emptied again, `fw` untouched, and the caller
    /// streams the blob from the cache instead.
    ///
    /// # Errors
    /// [`PathError::Target`] when `f` cannot be written, emptied or read back.
    #[allow(clippy::too_many_arguments)]
    fn copy_source(
        &self,
        f: &mut fs::File,
        (sibling, rel, dirs): (&str, &[&[u8]], &mut siblings::DirCursor),
        executable: bool,
        size: u64,
        (blob, rewrites): (&BlobId, &[Rewrite]),
        fw: &mut FileWriter<'_, NarHasher>,
        shown: &Path,
    ) -> Result<Option<Option<[u8; 32]>>, PathError> {
        let target = PathError::target(shown);
        let Some(src) = siblings::open_file_via(dirs, self.store, sibling, rel, size) else {
            return Ok(None);
        };
        let copied =
            siblings::copy(src, size, blob, rewrites, &mut |c| f.write_all(c)).map_err(&target)?;
        self.disk_bytes.fetch_add(size, Ordering::Relaxed);
        f.seek(SeekFrom::Start(0)).map_err(&target)?;
        if copied == Copied::Mismatch {
            f.set_len(0).map_err(&target)?;
            return Ok(None);
        }
        // The bytes are the wanted file's: read back (from the page cache) into the path's
        // NAR, which the path's verification hashes, and into the file's `.links` name.
        let mut own = (size >= LINKS_MIN_SIZE).then(|| FileNarHasher::new(executable, size));
        let mut back = (&mut *f).take(size);
        let mut buf = crate::scratch::Scratch::with_len(1 << 18);
        loop {
            let n = back.read(&mut buf).map_err(&target)?;
            if n == 0 {
                break;
            }
            fw.write(&buf[..n]).map_err(malformed(shown))?;
            if let Some(h) = own.as_mut() {
                h.update(&buf[..n]);
            }
        }
        self.local_files.fetch_add(1, Ordering::Relaxed);
        self.local_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Some(own.and_then(FileNarHasher::try_finish)))
    }

    /// The end of writing a file: its size on disk checked, its owner and mtime set.
    fn finish_file(&self, f: &fs::File, size: u64, shown: &Path) -> Result<(), PathError> {
        let target = PathError::target(shown);
        // The disk holds what the NAR says: as many bytes as declared.
        let on_disk = f.metadata().map_err(&target)?.len();
        if on_disk != size {
            return Err(target(io::Error::other(format!(
                "{on_disk} bytes on disk where {size} were written"
            ))));
        }
        // Metadata through the open descriptor: no more lookups.
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::fchown(f, Some(u), Some(g)).map_err(&target)?;
        }
        filetime::set_file_handle_times(f, None, Some(mtime_one())).map_err(&target)?;
        Ok(())
    }
}
