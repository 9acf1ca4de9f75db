//! Everything about `<store>/.links`, the daemon's deduplication directory: a regular file of
//! [`LINKS_MIN_SIZE`] bytes or more is hard-linked to `.links/<nix-base32 of the SHA-256 of
//! its own NAR>`, and a new file with the same name is linked to the entry instead of being
//! kept twice. The daemon trusts those names without reading the entries again, so an entry
//! must only ever hold bytes whose file NAR hash is its name.
//!
//! [`SourceLinks`] reads a source store's entries (save); [`LinksDir`] is a restore's use of
//! the target's: the checks before linking from an entry and before adding one.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::store::fs::{entry_names, open_dir_at, remove_at};
use crate::store::path::{nixbase32_decode, nixbase32_encode};

/// The daemon deduplicates regular files of at least this size into `.links`.
pub const LINKS_MIN_SIZE: u64 = 8192;

/// The source store's `.links` entries by inode (one directory read, no `stat` per entry).
#[derive(Default)]
pub struct SourceLinks {
    /// Device of the `.links` directory.
    pub dev: u64,
    /// Entry names by inode.
    pub by_inode: HashMap<u64, [u8; 32]>,
}

impl SourceLinks {
    /// Read `dir`; a missing or unreadable directory (an undeduplicated store, as Nix's by
    /// default) gives an empty map, and names that are not canonical nix-base32 SHA-256s
    /// (the daemon's temporary names) are skipped.
    pub fn read(dir: &Path) -> Self {
        let (Ok(meta), Ok(entries)) = (fs::metadata(dir), fs::read_dir(dir)) else {
            return SourceLinks::default();
        };
        let mut by_inode = HashMap::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(hash) = nixbase32_decode(name, 32) else {
                continue;
            };
            if nixbase32_encode(&hash) == name {
                let mut h = [0; 32];
                h.copy_from_slice(&hash);
                by_inode.insert(e.ino(), h);
            }
        }
        SourceLinks {
            dev: meta.dev(),
            by_inode,
        }
    }
}

/// Why a store's `.links` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}: {reason}", reason = self.reason())]
    NotADirectory(PathBuf),
    #[error("{0}: {reason}", reason = self.reason())]
    Owner(PathBuf, u32),
}

impl LinksError {
    /// The `.links` directory (or staging directory) it is about.
    pub fn path(&self) -> &Path {
        match self {
            LinksError::Io(p, _) | LinksError::NotADirectory(p) | LinksError::Owner(p, _) => p,
        }
    }

    /// What is wrong with it, and what to do.
    pub fn reason(&self) -> String {
        match self {
            LinksError::Io(_, e) => e.to_string(),
            LinksError::NotADirectory(_) => "a symlink or not a directory: refusing to use it \
                 (the daemon recreates it; move it aside)"
                .into(),
            LinksError::Owner(_, uid) => format!(
                "belongs to uid {uid}, not to the store's owner: refusing to use it \
                 (move it aside)"
            ),
        }
    }
}

/// Where a file linked by [`LinksDir::link_to`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSource {
    /// An entry of `.links`.
    Links,
    /// A file this restore wrote for a path not verified yet.
    Staged,
}

/// A restore's view of the target store's `<store>/.links`: which entries exist, linking new
/// files from them, and adding entries for verified files.
///
/// Invariants: an entry is only ever added under the name computed from the bytes of the
/// file as this restore wrote them (never a name a cache's tree gives), and only once the
/// path holding that file was verified. A file is only linked from an entry (or from a file
/// written for a path not verified yet, kept in a private staging directory of the run) after
/// checking that the entry is a regular file, not a symlink, FIFO or device, owned by the
/// store's owner, with the size and canonical mode (0444 or 0555) of the file wanted; and
/// the link is checked to be that very inode. Everything happens relative to descriptors of
/// the two directories, never through a path.
pub struct LinksDir {
    dir: OwnedFd,
    path: PathBuf,
    store: OwnedFd,
    staging: OwnedFd,
    staging_name: String,
    known: Mutex<HashSet<[u8; 32]>>,
    staged: Mutex<HashSet<[u8; 32]>>,
    locks: Vec<Mutex<()>>,
    owner: u32,
}

/// Errors of linking that mean "this source cannot be used", not "the store is failing".
fn unusable_source(e: Errno) -> bool {
    matches!(
        e,
        Errno::MLINK | Errno::NOENT | Errno::PERM | Errno::XDEV | Errno::LOOP | Errno::EXIST
    )
}

impl LinksDir {
    /// Open `<store>/.links` (creating it, owned by `owner`, when missing) and create the
    /// staging directory `staging_name` in the store. `owner` is the owner restored files
    /// get; `chown` says whether files made here must be given to it.
    ///
    /// # Errors
    /// [`LinksError`] naming `.links`: a symlink or not a directory, owned by someone other
    /// than root or `owner`, or not readable; or naming the staging directory.
    pub fn open(
        store: BorrowedFd<'_>,
        store_path: &Path,
        staging_name: &str,
        owner: (u32, u32),
        chown: bool,
    ) -> Result<Self, LinksError> {
        let path = store_path.join(".links");
        let io = |p: &Path| {
            let p = p.to_owned();
            move |e: io::Error| LinksError::Io(p, e)
        };
        match rustix::fs::mkdirat(store, ".links", Mode::from_raw_mode(0o755)) {
            Ok(()) => {
                let dir = open_dir_at(store, ".links").map_err(io(&path))?;
                if chown {
                    std::os::unix::fs::fchown(&dir, Some(owner.0), Some(owner.1))
                        .map_err(io(&path))?;
                }
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(io(&path)(e.into())),
        }
        let dir = open_dir_at(store, ".links").map_err(|e| {
            match e.raw_os_error().map(Errno::from_raw_os_error) {
                Some(Errno::LOOP) | Some(Errno::NOTDIR) => LinksError::NotADirectory(path.clone()),
                _ => LinksError::Io(path.clone(), e),
            }
        })?;
        let uid = rustix::fs::fstat(&dir)
            .map_err(|e| io(&path)(e.into()))?
            .st_uid;
        if uid != 0 && uid != owner.0 {
            return Err(LinksError::Owner(path, uid));
        }
        let known = entry_names(&dir)
            .map_err(io(&path))?
            .iter()
            .filter_map(|n| {
                let n = n.to_str().ok()?;
                let h = nixbase32_decode(n, 32)?;
                (nixbase32_encode(&h) == n).then(|| h.try_into().expect("32 bytes"))
            })
            .collect();
        let staging_path = store_path.join(staging_name);
        rustix::fs::mkdirat(store, staging_name, Mode::from_raw_mode(0o700))
            .map_err(|e| io(&staging_path)(e.into()))?;
        let staging = open_dir_at(store, staging_name).map_err(io(&staging_path))?;
        Ok(LinksDir {
            dir,
            path,
            store: store.try_clone_to_owned().map_err(io(store_path))?,
            staging,
            staging_name: staging_name.to_owned(),
            known: Mutex::new(known),
            staged: Mutex::new(HashSet::new()),
            locks: (0..64).map(|_| Mutex::new(())).collect(),
            owner: owner.0,
        })
    }

    /// `<store>/.links`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A lock for the contents named `hash`: two threads writing the same contents at once
    /// then end up sharing one file instead of racing to write two.
    pub fn lock(&self, hash: &[u8; 32]) -> MutexGuard<'_, ()> {
        self.locks[hash[0] as usize % self.locks.len()]
            .lock()
            .expect("link lock")
    }

    /// Whether `st` is a file that may stand for a file of `size` bytes with `executable`.
    fn usable(&self, st: &rustix::fs::Stat, size: u64, executable: bool) -> bool {
        let mode = if executable { 0o555 } else { 0o444 };
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && st.st_size as u64 == size
            && st.st_mode & 0o7777 == mode
            && st.st_uid == self.owner
    }

    /// Open `name` in `from` for reading if it may stand for the file wanted (see
    /// [`LinksDir`]); `None` when it may not or is gone.
    fn open_checked(
        &self,
        from: &OwnedFd,
        name: &str,
        size: u64,
        executable: bool,
    ) -> io::Result<Option<(fs::File, rustix::fs::Stat)>> {
        // Looked at before it is opened: opening a FIFO or a device can block or act.
        let st = match rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !self.usable(&st, size, executable) {
            return Ok(None);
        }
        let fd = match rustix::fs::openat(
            from,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::LOOP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let now = rustix::fs::fstat(&fd)?;
        if !self.usable(&now, size, executable)
            || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
        {
            return Ok(None);
        }
        Ok(Some((fs::File::from(fd), now)))
    }

    /// Hard-link to `name` in `dir` a file holding the contents `.links` calls `hash` (a
    /// file of `size` bytes, `executable` or not): an entry of `.links`, or else a file this
    /// restore wrote (staged). Returns the linked file opened for reading (the caller reads at most
    /// `size` bytes of it into the path's NAR hash, which checks the bytes) and where it came
    /// from; `None` when no usable source exists, and nothing was linked.
    ///
    /// # Errors
    /// Errors of the store (a full or read-only file system), not of the source.
    pub fn link_to(
        &self,
        hash: &[u8; 32],
        size: u64,
        executable: bool,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<Option<(fs::File, LinkSource)>> {
        let entry = nixbase32_encode(hash);
        // Both sets read under the staged set's lock, in `add`'s order: `add` moves an entry
        // from one to the other under it, and reading them one after the other could see it
        // in neither (then a second copy of the file was written, not linked).
        let (in_links, staged) = {
            let staged = self.staged.lock().expect("staged");
            let known = self.known.lock().expect("known");
            (known.contains(hash), staged.contains(hash))
        };
        // A staged file may be moved into `.links` between this read and its link: then it
        // is looked for there too.
        let sources = [
            (in_links, &self.dir, LinkSource::Links),
            (staged, &self.staging, LinkSource::Staged),
            (staged, &self.dir, LinkSource::Links),
        ];
        for (_, from, source) in sources.into_iter().filter(|s| s.0) {
            let Some((file, st)) = self.open_checked(from, &entry, size, executable)? else {
                continue;
            };
            match rustix::fs::linkat(from, entry.as_str(), dir, name, AtFlags::empty()) {
                Ok(()) => {}
                Err(e) if unusable_source(e) => continue,
                Err(e) => return Err(e.into()),
            }
            // The name linked must be the inode checked (it cannot have been swapped between:
            // only whoever owns the directory can, but this costs one `stat`).
            let linked = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino) {
                rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
                continue;
            }
            return Ok(Some((file, source)));
        }
        Ok(None)
    }

    /// Whether `.links` had an entry named `hash` when it was opened (a file with those
    /// contents will likely be linked from it, not read from the cache).
    pub fn has_entry(&self, hash: &[u8; 32]) -> bool {
        self.known.lock().expect("known").contains(hash)
    }

    /// Stage the file `name` in `dir`, just written, whose own bytes give the `.links` name
    /// `hash`: files of other paths with these contents may link to it, and once a path
    /// holding it is verified it gets its entry ([`LinksDir::add`]).
    ///
    /// # Errors
    /// Errors of the store; a file that cannot be staged (at its link limit) is not one.
    pub fn stage(&self, hash: &[u8; 32], dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let mut staged = self.staged.lock().expect("staged");
        if staged.contains(hash) {
            return Ok(());
        }
        match rustix::fs::linkat(
            dir,
            name,
            &self.staging,
            nixbase32_encode(hash).as_str(),
            AtFlags::empty(),
        ) {
            Ok(()) => {
                staged.insert(*hash);
                Ok(())
            }
            Err(e) if unusable_source(e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the staged file named `hash` its `.links` entry: call only once a path holding
    /// it (written or linked from the staged file) is verified. The staged name is moved
    /// into `.links` (one directory operation, and none left for the end of the run: the
    /// entry is where later files link from). Best effort: an entry that exists already
    /// stays as it is (and the staged name with it).
    pub fn add(&self, hash: &[u8; 32]) {
        let mut staged = self.staged.lock().expect("staged");
        if !staged.contains(hash) {
            return;
        }
        let name = nixbase32_encode(hash);
        match rustix::fs::renameat_with(
            &self.staging,
            name.as_str(),
            &self.dir,
            name.as_str(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                staged.remove(hash);
                self.known.lock().expect("known").insert(*hash);
            }
            Err(Errno::EXIST) => {
                self.known.lock().expect("known").insert(*hash);
            }
            Err(_) => {}
        }
    }
}

impl Drop for LinksDir {
    /// The staging directory goes (best effort: a later restore removes it as a leftover).
    fn drop(&mut self) {
        let _ = remove_at(&self.store, &self.staging_name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_only_from_checked_sources_and_adds_staged_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        fs::create_dir(&store).unwrap();
        let fd = crate::store::fs::open_dir_at(rustix::fs::CWD, &store).unwrap();
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let links =
            LinksDir::open(fd.as_fd(), &store, ".storesync-tmp-t-links", me, false).unwrap();
        let contents = vec![b'x'; 9000];
        fs::write(store.join("a"), &contents).unwrap();
        fs::set_permissions(store.join("a"), fs::Permissions::from_mode(0o444)).unwrap();
        let mut h = crate::nar::FileNarHasher::new(false, contents.len() as u64);
        h.update(&contents);
        let h = h.finish();
        let size = contents.len() as u64;
        let ino = |n: &str| fs::symlink_metadata(store.join(n)).unwrap().ino();
        // Nothing known: nothing linked.
        assert!(links
            .link_to(&h, size, false, fd.as_fd(), OsStr::new("b"))
            .unwrap()
            .is_none());
        links.stage(&h, fd.as_fd(), OsStr::new("a")).unwrap();
        let (_, source) = links
            .link_to(&h, size, false, fd.as_fd(), OsStr::new("b"))
            .unwrap()
            .unwrap();
        assert_eq!(source, LinkSource::Staged);
        assert_eq!(ino("b"), ino("a"));
        // Another executable bit or size: not this file.
        for (size, x) in [(size, true), (size + 1, false)] {
            assert!(links
                .link_to(&h, size, x, fd.as_fd(), OsStr::new("c"))
                .unwrap()
                .is_none());
        }
        assert!(fs::symlink_metadata(store.join("c")).is_err());
        links.add(&h);
        let name = nixbase32_encode(&h);
        assert_eq!(ino(&format!(".links/{name}")), ino("a"));
        let (_, source) = links
            .link_to(&h, size, false, fd.as_fd(), OsStr::new("d"))
            .unwrap()
            .unwrap();
        assert_eq!(source, LinkSource::Links);
        // The staged name was moved into `.links`, not copied: nothing is left to remove.
        assert!(fs::symlink_metadata(store.join(".storesync-tmp-t-links").join(&name)).is_err());
        // An entry that became a symlink is not linked through.
        fs::remove_file(store.join(".links").join(&name)).unwrap();
        std::os::unix::fs::symlink(store.join("a"), store.join(".links").join(&name)).unwrap();
        assert!(links
            .link_to(&h, size, false, fd.as_fd(), OsStr::new("e"))
            .unwrap()
            .is_none());
        assert!(fs::symlink_metadata(store.join("e")).is_err());
        // A second file with those contents, staged and added while `.links` has the entry:
        // the entry stays as it is.
        fs::write(store.join("f"), &contents).unwrap();
        fs::set_permissions(store.join("f"), fs::Permissions::from_mode(0o444)).unwrap();
        links.stage(&h, fd.as_fd(), OsStr::new("f")).unwrap();
        links.add(&h);
        assert!(fs::symlink_metadata(store.join(".links").join(&name))
            .unwrap()
            .file_type()
            .is_symlink());
        drop(links);
        assert!(fs::symlink_metadata(store.join(".storesync-tmp-t-links")).is_err());
    }
}
