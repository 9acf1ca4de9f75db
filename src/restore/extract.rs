//! Writing one store path from its tree: directories, symlinks and files under a temporary
//! name, with the daemon's canonical metadata, feeding the NAR of what was written to a hasher.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;

use crate::cache::BlobId;
use crate::cache::{Cache, Node};
use crate::nar::{FileWriter, NarEncoder, NarHasher};
use crate::store::links::LINKS_MIN_SIZE;
use crate::store::path::nixbase32_encode;

pub(super) struct Writer<'a> {
    pub(super) cache: &'a Cache,
    pub(super) links: PathBuf,
    pub(super) chown: Option<(u32, u32)>,
    pub(super) bytes_written: std::sync::Arc<AtomicU64>,
    pub(super) linked_files: AtomicU64,
    /// Names present in `.links` (read once, then kept up to date), so no link is attempted
    /// that cannot succeed.
    pub(super) known_links: std::sync::Mutex<HashSet<String>>,
    /// Files written by paths not verified yet, by `.links` name: another path with the same
    /// contents links to them (its own NAR hash checks the bytes), so duplicates across paths
    /// written at the same time share one inode, as the daemon's deduplication leaves them.
    pub(super) in_flight: std::sync::Mutex<HashMap<String, PathBuf>>,
    /// Striped locks by `.links` name, so two threads writing the same contents at once end up
    /// sharing one file instead of racing to write two.
    pub(super) link_locks: Vec<std::sync::Mutex<()>>,
    /// Running as root: permission checks do not apply, so directories are created with their
    /// final mode at once instead of being made writable and then read-only.
    pub(super) privileged: bool,
}

type Enc<'a> = NarEncoder<'a, NarHasher>;

/// One attempt at writing a path: how, and what it did.
pub(super) struct Attempt {
    /// Hard-link files from existing `.links` entries.
    pub(super) links: bool,
    /// Check every blob against its id while streaming it (otherwise the path's NAR hash is
    /// the only check).
    pub(super) check_blobs: bool,
    /// Files hard-linked from `.links`.
    pub(super) linked: u64,
    /// Files written that should get `.links` entries once the path is verified.
    pub(super) new_links: Vec<(PathBuf, String)>,
}

fn mtime_one() -> FileTime {
    FileTime::from_unix_time(1, 0)
}

impl Writer<'_> {
    /// Owner and mtime of a symlink (its mode is always 0777).
    fn finish_symlink(&self, path: &Path) -> io::Result<()> {
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::lchown(path, Some(u), Some(g))?;
        }
        filetime::set_symlink_file_times(path, mtime_one(), mtime_one())
    }

    /// Owner, mode (unless created with it) and mtime of a directory, after its entries.
    fn finish_dir(&self, path: &Path, mode: Option<u32>) -> io::Result<()> {
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::lchown(path, Some(u), Some(g))?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
        filetime::set_file_mtime(path, mtime_one())
    }

    /// Write `node` at `dest` (which must not exist), feeding the NAR of what was written to `enc`.
    ///
    /// With `at.links` set, a file whose `.links` entry exists is hard-linked to it and read
    /// back into `enc` without a check of its own: the path's NAR hash covers it, and a path
    /// that fails is written again from the cache, every blob checked (see [`execute`]). Files
    /// written are listed in `at.new_links`; their `.links` entries are made only after the
    /// path's NAR hash is verified, so an unchecked blob never reaches `.links`.
    pub(super) fn write(
        &self,
        node: &Node,
        dest: &Path,
        enc: Enc<'_>,
        at: &mut Attempt,
    ) -> std::result::Result<(), String> {
        let io = |e: io::Error| format!("{}: {e}", dest.display());
        match node {
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), dest).map_err(io)?;
                enc.symlink(target).map_err(io)?;
                self.finish_symlink(dest).map_err(io)
            }
            Node::Directory(entries) => {
                let mut dir = fs::DirBuilder::new();
                std::os::unix::fs::DirBuilderExt::mode(
                    &mut dir,
                    if self.privileged { 0o555 } else { 0o755 },
                );
                dir.create(dest).map_err(io)?;
                let mut d = enc.directory().map_err(io)?;
                for e in entries {
                    let child_enc = d.entry(&e.name).map_err(io)?;
                    let child = dest.join(OsStr::from_bytes(&e.name));
                    self.write(&e.node, &child, child_enc, at)?;
                }
                d.close().map_err(io)?;
                let mode = (!self.privileged).then_some(0o555);
                self.finish_dir(dest, mode).map_err(io)
            }
            Node::Regular {
                executable,
                size,
                blob,
                file_nar_hash,
            } => {
                let mut fw = enc.regular(*executable, *size).map_err(io)?;
                let name = (*size >= LINKS_MIN_SIZE).then(|| nixbase32_encode(file_nar_hash));
                let _guard = name.as_ref().map(|_| {
                    self.link_locks[file_nar_hash[0] as usize % self.link_locks.len()]
                        .lock()
                        .expect("link lock")
                });
                // Where to link from: a `.links` entry, or the same contents written by a
                // path not verified yet (then this path makes the entry too if it is verified
                // first).
                let source = match &name {
                    Some(n) if at.links => {
                        if self.known_links.lock().expect("links").contains(n) {
                            Some((self.links.join(n), false))
                        } else {
                            let in_flight = self.in_flight.lock().expect("in flight");
                            in_flight.get(n).map(|f| (f.clone(), true))
                        }
                    }
                    _ => None,
                };
                // A source that vanished meanwhile (its path failed, or was renamed into place)
                // is not linked: the file is written from the cache.
                let linked_from = match source {
                    Some((source, in_flight)) => self
                        .link_from(&source, dest, &mut fw)
                        .map_err(io)?
                        .then_some(in_flight),
                    None => None,
                };
                match linked_from {
                    Some(from_in_flight) => {
                        at.linked += 1;
                        if let Some(n) = name.filter(|_| from_in_flight) {
                            at.new_links.push((dest.to_owned(), n));
                        }
                    }
                    None => {
                        self.write_file(dest, *executable, *size, blob, &mut fw, at.check_blobs)?;
                        if let Some(n) = name {
                            self.in_flight
                                .lock()
                                .expect("in flight")
                                .entry(n.clone())
                                .or_insert_with(|| dest.to_owned());
                            at.new_links.push((dest.to_owned(), n));
                        }
                    }
                }
                fw.finish().map_err(io)
            }
        }
    }

    /// Hard-link `link` (a `.links` entry, or a file of a path being written) to `dest` and feed
    /// its contents to `enc`. Its bytes are not checked here: the path's NAR hash is, and a
    /// path that fails after linking is written again without links (a damaged entry is
    /// never propagated).
    fn link_from(
        &self,
        link: &Path,
        dest: &Path,
        fw: &mut FileWriter<'_, NarHasher>,
    ) -> io::Result<bool> {
        if fs::hard_link(link, dest).is_err() {
            return Ok(false);
        }
        let f = fs::File::open(dest)?;
        // At most the declared size: the writer refuses more, and the caller's `finish` less.
        let mut f = f.take(fw.remaining());
        let mut buf = crate::scratch::Scratch::with_len(1 << 18);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            fw.write(&buf[..n])?;
        }
        Ok(true)
    }

    /// Give verified files their `.links` entries. At its link-count limit, or damaged, an
    /// existing entry stays as it is and the file stays one of its own.
    pub(super) fn add_links(&self, files: &[(PathBuf, String)]) {
        for (file, name) in files {
            if fs::hard_link(file, self.links.join(name)).is_ok() {
                self.known_links.lock().expect("links").insert(name.clone());
            }
        }
    }

    /// Withdraw a path's files from `in_flight` (after [`Writer::add_links`], or before its
    /// temporary tree is removed).
    pub(super) fn release(&self, files: &[(PathBuf, String)]) {
        let mut in_flight = self.in_flight.lock().expect("in flight");
        for (file, name) in files {
            if in_flight.get(name) == Some(file) {
                in_flight.remove(name);
            }
        }
    }

    fn write_file(
        &self,
        dest: &Path,
        executable: bool,
        size: u64,
        blob: &BlobId,
        fw: &mut FileWriter<'_, NarHasher>,
        check_blob: bool,
    ) -> std::result::Result<(), String> {
        let io = |e: io::Error| format!("{}: {e}", dest.display());
        // Created with its final mode (the umask is 022 during a restore): the descriptor is
        // writable whatever the mode, and no chmod is needed afterwards.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o555 } else { 0o444 })
            .open(dest)
            .map_err(io)?;
        // Into the NAR first: it refuses bytes beyond the declared size, so they never reach
        // the disk (a tiny cache declaring a 10-byte file cannot fill it). The sink's own
        // error is kept: the cache would report it as one of its storage.
        let mut refused = None;
        let mut sink = |chunk: &[u8]| {
            if fw.write(chunk).is_err() {
                refused = Some(format!(
                    "blob {blob} holds more than the {size} bytes the tree declares"
                ));
                return Err(io::Error::other("refused"));
            }
            f.write_all(chunk)
                .inspect_err(|e| refused = Some(e.to_string()))?;
            self.bytes_written
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(())
        };
        let streamed = if check_blob {
            self.cache.stream(blob, &mut sink)
        } else {
            self.cache.stream_unchecked(blob, &mut sink)
        };
        if let Some(why) = refused {
            return Err(format!("{}: {why}", dest.display()));
        }
        streamed.map_err(|e| format!("{}: {e}", dest.display()))?;
        if fw.remaining() != 0 {
            return Err(format!(
                "{}: blob {blob} holds {} bytes, the tree declares {size}",
                dest.display(),
                size - fw.remaining()
            ));
        }
        // The disk holds what the NAR says: as many bytes as declared.
        let on_disk = f.metadata().map_err(io)?.len();
        if on_disk != size {
            return Err(format!(
                "{}: {on_disk} bytes on disk where {size} were written",
                dest.display()
            ));
        }
        // Metadata through the open descriptor: no more path lookups.
        if let Some((u, g)) = self.chown {
            std::os::unix::fs::fchown(&f, Some(u), Some(g)).map_err(io)?;
        }
        filetime::set_file_handle_times(&f, None, Some(mtime_one())).map_err(io)
    }
}
