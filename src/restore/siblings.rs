//! Older builds of a missing path's package, already in the target store, as local sources of
//! its files' blobs.
//!
//! A rebuild of a dependency gives every dependent a new store path whose files differ from
//! the previous build's only in the hash parts of the store paths they name. A save replaces
//! those by the placeholder (`cache::rewrite`), so the new files have the old files' blobs and
//! the cache grows by the truly new content only. A restore onto a store holding the old build
//! finds those blobs here instead of reading them from the cache (for a remote cache: instead
//! of downloading them). No `.links` entry holds them: `.links` names are the NAR hashes of the
//! real bytes, and the real bytes differ in the hash parts.
//!
//! 1. [`siblings_of`], with the plan: the siblings of each missing path `<hash>-<name>` are
//!    the paths valid in the target DB named `<other hash>-<name>`; at most [`MAX_SIBLINGS`]
//!    of them, by base name.
//! 2. [`find`], before the remote prefetch is planned: each regular file of a missing path
//!    that `.links` does not hold is looked for at the same relative path in each sibling
//!    ([`open_file`]: every component opened relative to a descriptor of its directory,
//!    never following a symlink; a regular file of exactly the size wanted). From a remote
//!    cache, its bytes, with the placeholder put at the offsets the wanted file's tree records
//!    ([`Masker`]), must also hash (BLAKE3, the blob id) to the wanted file's blob: the first
//!    sibling that passes is the file's source ([`Sources`]), and the file's blob is left out
//!    of the prefetch: it is never downloaded. From a local cache the first sibling holding
//!    such a file is the source, unread: the copy below checks the same hash anyway, and a
//!    miss costs reading the blob from the local cache, which a check here would cost every
//!    file (the warm restore's sources were read twice, and hashed twice, before the writers
//!    could start).
//! 3. [`copy`], when the file is written (`restore::extract`): the source is opened and read
//!    again in bounded chunks, masked and hashed again while the wanted hash parts are put in
//!    at those offsets (`Substituter`) and the bytes go to the new file. A source changed
//!    since, shorter or longer, or unreadable makes the writer discard what it wrote and
//!    stream the blob from the cache instead.
//!
//! Nothing read from a sibling is trusted: it is used only when its masked bytes are the
//! blob's, and the path's NAR hash is checked before registration as for every path.
//!
//! Local-directory caches use it too: a copy (the source read twice, BLAKE3, the copy read
//! back) costs no more than decompressing the blob. The e2e bench's warm restore (v2 over v1,
//! 200 MiB `upgrade` model, 28.3 MiB copied from v1's files) measured 0.75 s wall, 0.41 s CPU,
//! 31 MiB peak RSS against 0.82 s, 0.46 s and 61 MiB without (medians of 3, load 2.6 to 3.4).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::cache::rewrite::{Masker, Substituter};
use crate::cache::{BlobId, Cache, File, Node, Rewrite, Snapshot};
use crate::store::fs::open_dir_at;
use crate::store::links::{LinksDir, LINKS_MIN_SIZE};
use crate::store::path::{StoreDir, HASH_PART_LEN};

/// Siblings tried per missing path, at most.
pub const MAX_SIBLINGS: usize = 3;

/// Bytes read from a source at a time.
const CHUNK: usize = 256 << 10;

/// The siblings of each missing path (indices into `snapshot.paths`) that has any: base names
/// of paths valid in the target (`valid`, keyed by full path) with the same name after the
/// hash part and another hash part, at most [`MAX_SIBLINGS`], sorted.
pub fn siblings_of(
    snapshot: &Snapshot,
    missing: &[usize],
    valid: &HashMap<String, String>,
    store_dir: &StoreDir,
) -> HashMap<usize, Vec<String>> {
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in missing {
        wanted
            .entry(snapshot.paths[i].info.path.name())
            .or_default()
            .push(i);
    }
    let mut out: HashMap<usize, Vec<String>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let prefix = format!("{}/", store_dir.as_str());
    for full in valid.keys() {
        let Some(base) = full.strip_prefix(&prefix) else {
            continue;
        };
        if base.len() <= HASH_PART_LEN + 1
            || base.as_bytes()[HASH_PART_LEN] != b'-'
            || base.contains('/')
        {
            continue;
        }
        let Some(is) = wanted.get(&base[HASH_PART_LEN + 1..]) else {
            continue;
        };
        for &i in is {
            if snapshot.paths[i].info.path.base_name() != base {
                out.entry(i).or_default().push(base.to_owned());
            }
        }
    }
    for s in out.values_mut() {
        s.sort_unstable();
        s.truncate(MAX_SIBLINGS);
    }
    out
}

/// Where some files of the missing paths have their blob in the target store.
#[derive(Debug, Default)]
pub struct Sources {
    paths: HashMap<usize, PathSources>,
}

/// The sources of one missing path's files.
#[derive(Debug)]
pub struct PathSources {
    siblings: Vec<String>,
    /// Per regular file of the path's tree, in NAR order: the sibling holding its blob.
    files: Vec<Option<u8>>,
}

impl PathSources {
    /// The base name of the sibling holding the blob of the path's `n`th regular file (in NAR
    /// order), if one does.
    pub fn of(&self, n: usize) -> Option<&str> {
        let s = (*self.files.get(n)?)?;
        Some(&self.siblings[s as usize])
    }
}

impl Sources {
    /// The sources of the files of missing path `i`, if it has any.
    pub fn of_path(&self, i: usize) -> Option<&PathSources> {
        self.paths.get(&i)
    }
}

/// Visit every regular file of `node` with its path relative to the top (components), in NAR
/// order (the order `Node::for_each_file` and the writer visit them in).
pub fn for_each_file_at<'a>(
    node: &'a Node,
    rel: &mut Vec<&'a [u8]>,
    f: &mut impl FnMut(&[&'a [u8]], File<'a>),
) {
    match node {
        Node::Directory(entries) => {
            for e in entries {
                rel.push(&e.name);
                for_each_file_at(&e.node, rel, f);
                rel.pop();
            }
        }
        n => {
            if let Some(file) = n.file() {
                f(rel, file);
            }
        }
    }
}

/// Find a source for each regular file of the missing paths that have siblings (see the
/// module documentation), in parallel: a sibling's file of the same size at the same place,
/// whose masked bytes are the file's blob when `check` (a remote cache, whose blobs found here
/// are not downloaded). A file `.links` holds (it will be linked) is not looked for; nor are
/// the files of a path whose tree cannot be read (it fails later, with the error).
pub fn find(
    cache: &Cache,
    snap: &Snapshot,
    store: BorrowedFd<'_>,
    siblings: &HashMap<usize, Vec<String>>,
    links: &LinksDir,
    check: bool,
) -> Sources {
    let mut work: Vec<(&usize, &Vec<String>)> = siblings.iter().collect();
    work.sort_unstable();
    let paths = work
        .into_par_iter()
        .with_max_len(1)
        .filter_map(|(&i, sibs)| {
            let tree = cache.read_tree(&snap.paths[i].tree).ok()?;
            let mut files = Vec::new();
            let mut found = false;
            let mut dirs: Vec<DirCursor> = sibs.iter().map(|_| DirCursor::default()).collect();
            for_each_file_at(&tree, &mut Vec::new(), &mut |rel, file| {
                let linked = file.size >= LINKS_MIN_SIZE && links.has_entry(&file.file_nar_hash);
                let source = (!linked)
                    .then(|| {
                        sibs.iter().zip(&mut dirs).position(|(s, dirs)| {
                            if !check {
                                return looked_at(dirs, store, s, rel, file.size).is_some();
                            }
                            open_file_via(dirs, store, s, rel, file.size).is_some_and(|src| {
                                masked_id(src, file.size, file.rewrites) == Some(file.blob)
                            })
                        })
                    })
                    .flatten()
                    .map(|s| s as u8);
                found |= source.is_some();
                files.push(source);
            });
            found.then(|| {
                (
                    i,
                    PathSources {
                        siblings: sibs.clone(),
                        files,
                    },
                )
            })
        })
        .collect();
    Sources { paths }
}

/// The directories of one sibling opened on the way to its files, kept for the next file:
/// files are visited in NAR order, so most share all or most of their directories with the
/// one before (a copy opened every component of every file's path: 22,000 `openat` for a
/// warm restore of 75 paths). Each was opened without following a symlink, relative to its
/// parent's descriptor, as [`open_file`] does.
#[derive(Default)]
pub struct DirCursor {
    base: String,
    /// `fds[0]` is the sibling's top; `fds[k]` is `names[..k]` below it.
    names: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
}

impl DirCursor {
    /// The directory `parents` (entry names) of the store path `base`, opened from what is
    /// kept where the path is shared with the last one.
    fn dir(
        &mut self,
        store: BorrowedFd<'_>,
        base: &str,
        parents: &[&[u8]],
    ) -> Option<BorrowedFd<'_>> {
        if self.base != base {
            self.fds.clear();
            self.names.clear();
            base.clone_into(&mut self.base);
        }
        let common = self
            .names
            .iter()
            .zip(parents)
            .take_while(|(a, b)| a.as_slice() == **b)
            .count();
        self.names.truncate(common);
        self.fds.truncate(common + 1);
        if self.fds.is_empty() {
            self.fds.push(open_dir_at(store, base).ok()?);
        }
        for name in &parents[common..] {
            let fd = open_dir_at(self.fds.last().expect("the top").as_fd(), *name).ok()?;
            self.fds.push(fd);
            self.names.push(name.to_vec());
        }
        self.fds.last().map(|d| d.as_fd())
    }
}

/// Open the regular file at `rel` (tree entry names) inside the store path `base` of `store`
/// (`rel` empty: the path itself), if it is a regular file of exactly `size` bytes. Every
/// component is opened relative to a descriptor of the directory holding it, never through a
/// symlink; the file is looked at before it is opened (opening a FIFO or a device can block
/// or act) and checked again after, through its descriptor. `None` when it is absent, is not
/// such a file, or anything fails: the caller then has no source.
#[cfg(test)]
pub fn open_file(store: BorrowedFd<'_>, base: &str, rel: &[&[u8]], size: u64) -> Option<fs::File> {
    open_file_via(&mut DirCursor::default(), store, base, rel, size)
}

/// [`open_file`], its directories opened through (and kept in) `dirs`.
pub fn open_file_via(
    dirs: &mut DirCursor,
    store: BorrowedFd<'_>,
    base: &str,
    rel: &[&[u8]],
    size: u64,
) -> Option<fs::File> {
    let (at, last, st) = looked_at(dirs, store, base, rel, size)?;
    let fd = rustix::fs::openat(
        at,
        last,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let now = rustix::fs::fstat(&fd).ok()?;
    (is_file_of(&now, size) && (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino))
        .then(|| fs::File::from(fd))
}

/// The directory holding the entry at `rel` inside the store path `base` (opened as
/// [`open_file_via`] opens it), the entry's name and its status, if it is a regular file of
/// exactly `size` bytes; nothing opened or read of the entry itself.
fn looked_at<'d, 'r>(
    dirs: &'d mut DirCursor,
    store: BorrowedFd<'d>,
    base: &'r str,
    rel: &[&'r [u8]],
    size: u64,
) -> Option<(BorrowedFd<'d>, &'r [u8], rustix::fs::Stat)> {
    let (last, at) = match rel.split_last() {
        Some((last, parents)) => (*last, dirs.dir(store, base, parents)?),
        None => (base.as_bytes(), store),
    };
    let st = rustix::fs::statat(at, last, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    is_file_of(&st, size).then_some((at, last, st))
}

/// Whether `st` is a regular file's of `size` bytes.
fn is_file_of(st: &rustix::fs::Stat, size: u64) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size as u64 == size
}

/// The blob id `src` would have as a file of `size` bytes with references at the offsets of
/// `rewrites`: BLAKE3 of its bytes with the placeholder there. `None` when it holds more or
/// fewer than `size` bytes, or cannot be read.
pub fn masked_id(src: fs::File, size: u64, rewrites: &[Rewrite]) -> Option<BlobId> {
    let mut hasher = blake3::Hasher::new();
    let mut masker = Masker::new(rewrites);
    read_exactly(src, size, &mut |chunk| {
        hasher.update(masker.apply(chunk));
        Ok(())
    })
    .ok()?
    .then(|| BlobId(*hasher.finalize().as_bytes()))
}

/// Feed `out` exactly the `size` bytes of `src`, in chunks of at most [`CHUNK`] bytes.
/// `Ok(false)` when it holds more or fewer; `Err` for an error reading it, or of `out`.
fn read_exactly(
    src: fs::File,
    size: u64,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    // One byte past the size, to see a file that grew.
    let mut src = src.take(size + 1);
    let mut buf = crate::scratch::Scratch::with_len(CHUNK);
    let mut seen = 0u64;
    loop {
        let n = match src.read(&mut buf[..CHUNK]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(seen == size);
        }
        seen += n as u64;
        if seen > size {
            return Ok(false);
        }
        out(&buf[..n])?;
    }
}

/// How a [`copy`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum Copied {
    /// The source held the blob: `out` received the wanted file's bytes.
    Done,
    /// The source did not hold the blob (changed since it was found, shorter, longer) or
    /// could not be read: what `out` received must be discarded.
    Mismatch,
}

/// Read the source `src` (a file of `size` bytes that held `blob` once masked at the offsets
/// of `rewrites`) and give `out` the wanted file's bytes: the source's, with the hash parts of
/// `rewrites` put in at their offsets. Each chunk is masked and hashed as it goes by, so
/// whether the source still holds the blob is known at the end ([`Copied`]).
///
/// # Errors
/// Those of `out` (the new file cannot be written).
pub fn copy(
    src: fs::File,
    size: u64,
    blob: &BlobId,
    rewrites: &[Rewrite],
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Copied> {
    let mut hasher = blake3::Hasher::new();
    let mut masker = Masker::new(rewrites);
    let mut substituter = Substituter::new(rewrites);
    let mut out_err = None;
    let read = read_exactly(src, size, &mut |chunk| {
        let masked = masker.apply(chunk);
        hasher.update(masked);
        let real = substituter
            .apply(masked)
            .expect("a masked chunk holds the placeholder at every recorded offset");
        out(real).map_err(|e| {
            let kept = io::Error::new(e.kind(), e.to_string());
            out_err = Some(e);
            kept
        })
    });
    if let Some(e) = out_err {
        return Err(e);
    }
    Ok(match read {
        Ok(true) if BlobId(*hasher.finalize().as_bytes()) == *blob => Copied::Done,
        _ => Copied::Mismatch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const B: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";

    fn store() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (dir, fd)
    }

    /// A file of `len` bytes naming `part` at each of `offsets`.
    fn contents(part: &str, len: usize, offsets: &[usize]) -> Vec<u8> {
        let mut data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for &o in offsets {
            data[o..o + 32].copy_from_slice(part.as_bytes());
        }
        data
    }

    fn rewrites(part: &str, offsets: &[usize]) -> Vec<Rewrite> {
        offsets
            .iter()
            .map(|&o| Rewrite {
                offset: o as u64,
                hash_part: part.as_bytes().try_into().unwrap(),
            })
            .collect()
    }

    fn blob_of(data: &[u8], rw: &[Rewrite]) -> BlobId {
        let mut blob = data.to_vec();
        for r in rw {
            let o = r.offset as usize;
            blob[o..o + 32].copy_from_slice(&crate::cache::rewrite::PLACEHOLDER);
        }
        BlobId::of(&blob)
    }

    #[test]
    fn a_cursor_opens_what_open_file_opens_and_each_directory_once() {
        let (dir, fd) = store();
        for d in ["a/x/y", "a/x/z", "a/w", "b/x", "c"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let files = [
            "a/top", "a/w/f", "a/x/f", "a/x/y/f", "a/x/y/g", "a/x/z/f", "b/x/f", "a/w/g", "c/f",
        ];
        for (n, f) in files.iter().enumerate() {
            fs::write(dir.path().join(f), vec![b'.'; n + 1]).unwrap();
        }
        // `c` is a symlink to `a`: nothing is opened through it.
        fs::remove_dir_all(dir.path().join("c")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("c")).unwrap();
        fs::write(dir.path().join("a/x/y/h"), b"h").unwrap();
        let mut cursor = DirCursor::default();
        let split = |f: &'static str| -> (&'static str, Vec<&'static [u8]>) {
            let mut parts = f.split('/');
            let base = parts.next().unwrap();
            (base, parts.map(str::as_bytes).collect())
        };
        let read = |f: Option<fs::File>| {
            f.map(|mut f| {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut v).unwrap();
                v
            })
        };
        let mut opened = Vec::new();
        for (n, f) in files.iter().enumerate() {
            let (base, rel) = split(f);
            let size = n as u64 + 1;
            let via = read(open_file_via(&mut cursor, fd.as_fd(), base, &rel, size));
            assert_eq!(via, read(open_file(fd.as_fd(), base, &rel, size)), "{f}");
            assert_eq!(via.is_some(), !f.starts_with("c/"), "{f}");
            opened.push((cursor.base.clone(), cursor.names.clone()));
        }
        // Directories kept: after `a/x/y/g`, the cursor holds a, x, y.
        assert_eq!(
            opened[4],
            ("a".to_owned(), vec![b"x".to_vec(), b"y".to_vec()])
        );
        // A wrong size or a missing name through a kept directory: nothing.
        let (base, rel) = split("a/x/y/h");
        assert!(open_file_via(&mut cursor, fd.as_fd(), base, &rel, 2).is_none());
        assert!(open_file_via(&mut cursor, fd.as_fd(), base, &rel, 1).is_some());
        let (base, rel) = split("a/x/y/nothing");
        assert!(open_file_via(&mut cursor, fd.as_fd(), base, &rel, 1).is_none());
    }

    #[test]
    fn an_older_build_differing_in_hash_parts_is_the_source_of_the_new_bytes() {
        let (dir, fd) = store();
        let offsets = [0, 1000, (CHUNK - 10), 3 * CHUNK - 32];
        let old = contents(A, 3 * CHUNK, &offsets);
        let new = contents(B, 3 * CHUNK, &offsets);
        let rw = rewrites(B, &offsets);
        let blob = blob_of(&new, &rw);
        fs::create_dir_all(dir.path().join("old/lib")).unwrap();
        fs::write(dir.path().join("old/lib/f"), &old).unwrap();
        let rel: [&[u8]; 2] = [b"lib", b"f"];
        let size = old.len() as u64;
        let src = open_file(fd.as_fd(), "old", &rel, size).unwrap();
        assert_eq!(masked_id(src, size, &rw), Some(blob));
        let mut got = Vec::new();
        let src = open_file(fd.as_fd(), "old", &rel, size).unwrap();
        let r = copy(src, size, &blob, &rw, &mut |c| {
            got.extend_from_slice(c);
            Ok(())
        });
        assert_eq!(r.unwrap(), Copied::Done);
        assert!(got == new, "the wanted file's bytes");
        // Wrong size asked, a changed byte, a longer file: not the source.
        assert!(open_file(fd.as_fd(), "old", &rel, size - 1).is_none());
        let mut changed = old.clone();
        changed[500] ^= 1;
        fs::write(dir.path().join("old/lib/f"), &changed).unwrap();
        let src = open_file(fd.as_fd(), "old", &rel, size).unwrap();
        assert_eq!(masked_id(src, size, &rw).map(|b| b == blob), Some(false));
        let src = open_file(fd.as_fd(), "old", &rel, size).unwrap();
        let r = copy(src, size, &blob, &rw, &mut |_| Ok(())).unwrap();
        assert_eq!(r, Copied::Mismatch);
        // Grown after it was opened: a mismatch too.
        fs::write(dir.path().join("old/lib/f"), &old).unwrap();
        let src = open_file(fd.as_fd(), "old", &rel, size).unwrap();
        let mut longer = old.clone();
        longer.push(0);
        fs::write(dir.path().join("old/lib/f"), &longer).unwrap();
        let r = copy(src, size, &blob, &rw, &mut |_| Ok(())).unwrap();
        assert_eq!(r, Copied::Mismatch);
        // An error of `out` is returned.
        fs::write(dir.path().join("old/lib/f"), &old).unwrap();
        let src = open_file(fd.as_fd(), "old", &rel, size).unwrap();
        let r = copy(src, size, &blob, &rw, &mut |_| {
            Err(io::Error::other("full"))
        });
        assert_eq!(r.unwrap_err().to_string(), "full");
    }

    #[test]
    fn symlinks_anywhere_and_other_file_types_are_not_opened() {
        let (dir, fd) = store();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(outside.path().join("lib")).unwrap();
        fs::write(outside.path().join("lib/f"), b"0123456789").unwrap();
        let rel: [&[u8]; 2] = [b"lib", b"f"];
        // The file a symlink.
        fs::create_dir_all(dir.path().join("a/lib")).unwrap();
        symlink(outside.path().join("lib/f"), dir.path().join("a/lib/f")).unwrap();
        assert!(open_file(fd.as_fd(), "a", &rel, 10).is_none());
        // A parent directory a symlink.
        fs::create_dir_all(dir.path().join("b")).unwrap();
        symlink(outside.path().join("lib"), dir.path().join("b/lib")).unwrap();
        assert!(open_file(fd.as_fd(), "b", &rel, 10).is_none());
        // The store path itself a symlink.
        symlink(outside.path(), dir.path().join("c")).unwrap();
        assert!(open_file(fd.as_fd(), "c", &rel, 10).is_none());
        symlink(outside.path().join("lib/f"), dir.path().join("d")).unwrap();
        assert!(open_file(fd.as_fd(), "d", &[], 10).is_none());
        // A FIFO and a directory.
        fs::create_dir_all(dir.path().join("e/lib/f")).unwrap();
        assert!(open_file(fd.as_fd(), "e", &rel, 10).is_none());
        rustix::fs::mknodat(&fd, "f", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        assert!(open_file(fd.as_fd(), "f", &[], 0).is_none());
        // The genuine article, for contrast.
        fs::create_dir_all(dir.path().join("g/lib")).unwrap();
        fs::write(dir.path().join("g/lib/f"), b"0123456789").unwrap();
        assert!(open_file(fd.as_fd(), "g", &rel, 10).is_some());
        fs::write(dir.path().join("h"), b"0123456789").unwrap();
        assert!(open_file(fd.as_fd(), "h", &[], 10).is_some());
    }

    #[test]
    fn siblings_are_valid_paths_of_the_same_name_and_another_hash_at_most_three_sorted() {
        use crate::cache::SnapshotPath;
        use crate::store::path::StorePath;
        let h = |c: char| c.to_string().repeat(32);
        let path = |base: &str| SnapshotPath {
            info: crate::store::PathInfo {
                path: StorePath::from_base_name(base).unwrap(),
                nar_hash: crate::store::path_info::NarHash([0; 32]),
                nar_size: 0,
                registration_time: 0,
                deriver: None,
                references: Vec::new(),
                nix: None,
            },
            tree: crate::cache::TreeId([0; 32]),
        };
        let snapshot = Snapshot {
            version: 2,
            key: String::new(),
            flavor: crate::store::Flavor::Guix,
            store_dir: "/gnu/store".into(),
            created: 0,
            tool: String::new(),
            indexes: Vec::new(),
            parent: None,
            roots: Vec::new(),
            paths: vec![
                path(&format!("{}-hello-2.12", h('a'))),
                path(&format!("{}-hello-2.12-doc", h('b'))),
                path(&format!("{}-alone-1", h('c'))),
            ],
            derivation_outputs: Vec::new(),
        };
        let valid: HashMap<String, String> = [
            format!("/gnu/store/{}-hello-2.12", h('z')),
            format!("/gnu/store/{}-hello-2.12", h('1')),
            format!("/gnu/store/{}-hello-2.12", h('9')),
            format!("/gnu/store/{}-hello-2.12", h('5')),
            format!("/gnu/store/{}-hello-2.13", h('2')),
            format!("/gnu/store/{}-hello-2.12-doc", h('3')),
            format!("/nix/store/{}-alone-1", h('4')),
            format!("/gnu/store/{}-alone-1/x", h('6')),
            "/gnu/store/short-alone-1".into(),
        ]
        .into_iter()
        .map(|p| (p, String::new()))
        .collect();
        let store = StoreDir::new("/gnu/store").unwrap();
        let got = siblings_of(&snapshot, &[0, 1, 2], &valid, &store);
        let want = |cs: &[char], name: &str| -> Vec<String> {
            cs.iter().map(|&c| format!("{}-{name}", h(c))).collect()
        };
        assert_eq!(got[&0], want(&['1', '5', '9'], "hello-2.12"));
        assert_eq!(got[&1], want(&['3'], "hello-2.12-doc"));
        assert!(!got.contains_key(&2), "{got:?}");
        // A valid path is not its own sibling; only missing paths have siblings.
        let mut valid = valid;
        valid.insert(
            format!("/gnu/store/{}-hello-2.12-doc", h('b')),
            String::new(),
        );
        let got = siblings_of(&snapshot, &[1], &valid, &store);
        assert_eq!(got[&1], want(&['3'], "hello-2.12-doc"));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn files_are_visited_in_the_order_the_writer_and_for_each_file_visit_them() {
        let file = |n: u8| Node::Regular {
            executable: false,
            size: 1,
            blob: BlobId([n; 32]),
            file_nar_hash: [0; 32],
        };
        let entry = |name: &str, node| crate::cache::Entry {
            name: name.as_bytes().to_vec(),
            node,
        };
        let tree = Node::Directory(vec![
            entry("a", file(1)),
            entry(
                "b",
                Node::Directory(vec![
                    entry("c", file(2)),
                    entry("d", Node::Directory(vec![entry("e", file(3))])),
                    entry("f", file(4)),
                ]),
            ),
            entry(
                "g",
                Node::Symlink {
                    target: b"a".to_vec(),
                },
            ),
            entry("h", file(5)),
        ]);
        let mut want = Vec::new();
        tree.for_each_file(&mut |f| want.push(f.blob));
        let mut got = Vec::new();
        let mut rels = Vec::new();
        for_each_file_at(&tree, &mut Vec::new(), &mut |rel, f| {
            got.push(f.blob);
            rels.push(rel.join(&b'/'));
        });
        assert_eq!(got, want);
        assert_eq!(rels, [&b"a"[..], b"b/c", b"b/d/e", b"b/f", b"h"]);
    }
}
