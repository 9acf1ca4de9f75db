//! The daemons' lock files, taken the way each daemon takes them, so that storesync and a
//! running daemon (its workers, its garbage collector) exclude each other where they must.
//!
//! - The lock primitive: Guix locks whole files with POSIX record locks (`fcntl`,
//!   `F_RDLCK`/`F_WRLCK`), Nix 2.x with `flock(2)`. The two kinds do not see each other, so the
//!   flavour decides. POSIX locks belong to the process: closing any descriptor of a locked
//!   file drops them, so each lock file here is opened once and kept open while locked.
//! - [`PathLocks`]: the lock a daemon takes on `<store>/<path>.lock` before it writes `<path>`
//!   (a build output, a substitute, an import). Taken exclusively; a lock file found non-empty
//!   after locking was deleted by its previous holder and is opened again (the daemon's
//!   staleness rule). On release the files are unlinked and marked stale with a `d`, as the
//!   daemon's `PathLocks::setDeletion` does, so nothing is left behind. A file at a lock's
//!   name that is not shaped as a lock file ([`is_lock_file`]: a valid store path may be
//!   named `<hash>-Cargo.lock`, the lock name of `<hash>-Cargo`) is refused, never truncated
//!   or written.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::store::layout::Flavor;

/// Shared (read) or exclusive (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once (`F_RDLCK`, `LOCK_SH`).
    Shared,
    /// One holder (`F_WRLCK`, `LOCK_EX`).
    Exclusive,
}

/// Take (or convert to) `mode` on `file` the way `flavor`'s daemon does. With `wait`, block
/// until granted (retrying on `EINTR`); without, return `Ok(false)` when another process holds
/// a conflicting lock.
///
/// # Errors
/// Errors of `fcntl` / `flock` other than "held by another".
pub fn lock(file: impl AsFd, flavor: Flavor, mode: LockMode, wait: bool) -> io::Result<bool> {
    let op = match (mode, wait) {
        (LockMode::Shared, true) => FlockOperation::LockShared,
        (LockMode::Shared, false) => FlockOperation::NonBlockingLockShared,
        (LockMode::Exclusive, true) => FlockOperation::LockExclusive,
        (LockMode::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        let r = match flavor {
            Flavor::Guix => rustix::fs::fcntl_lock(&file, op),
            Flavor::Nix => rustix::fs::flock(&file, op),
        };
        match r {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) | Err(Errno::ACCESS) if !wait => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Take `mode` on `file`, without blocking first; when that fails, tell `waiting` (once) with
/// `why` and block.
///
/// # Errors
/// As [`lock`].
pub fn lock_saying(
    file: impl AsFd,
    flavor: Flavor,
    mode: LockMode,
    waiting: &(dyn Fn(&str) + Sync),
    why: impl FnOnce() -> String,
) -> io::Result<()> {
    if !lock(&file, flavor, mode, false)? {
        waiting(&why());
        lock(&file, flavor, mode, true)?;
    }
    Ok(())
}

/// Open the lock file `name` in `dir` read-write, creating it (mode 0600) when `create`, never
/// through a symlink, and check that it is a regular file. `None` when absent and not
/// created.
///
/// # Errors
/// Errors of `openat`; `ELOOP` / an "not a regular file" error for anything but a file.
pub fn open_lock_file(dir: impl AsFd, name: &OsStr, create: bool) -> io::Result<Option<File>> {
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if create {
        flags |= OFlags::CREATE;
    }
    let fd = match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => fd,
        Err(Errno::NOENT) if !create => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(
            "not a regular file: refusing to use it as a lock",
        ));
    }
    Ok(Some(file))
}

/// Whether `st` is that of a path lock file: a regular file with no permission beyond its
/// owner's read and write (storesync and both daemons create them with `open(…, O_CREAT,
/// 0600)`, which no umask widens) and at most one name (none once its holder unlinked it).
/// A store path's files are never that: canonical modes are 0444 and 0555, and `.links`
/// gives every deduplicated file several names. So a valid path whose name ends in `.lock`
/// (`<hash>-Cargo.lock`) is never taken for the lock of another (`<hash>-Cargo`), truncated or
/// marked deleted.
pub fn is_lock_file(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        && st.st_mode & 0o7777 & !0o600 == 0
        && st.st_nlink <= 1
}

/// [`open_lock_file`] for a path lock (`<store>/<path>.lock`), refusing a file that is not one
/// by [`is_lock_file`].
///
/// # Errors
/// As [`open_lock_file`]; an "not a lock file" error naming its mode and links.
pub fn open_path_lock(dir: impl AsFd, name: &OsStr, create: bool) -> io::Result<Option<File>> {
    let Some(file) = open_lock_file(dir, name, create)? else {
        return Ok(None);
    };
    let st = rustix::fs::fstat(&file)?;
    if !is_lock_file(&st) {
        return Err(io::Error::other(format!(
            "not a lock file (mode {:o}, {} links; a store path of that name?): refusing to \
             use it as a lock",
            st.st_mode & 0o7777,
            st.st_nlink
        )));
    }
    Ok(Some(file))
}

/// Mark a lock file deleted: unlink it and write a byte into it, so that a process that opened
/// it before the unlink and is waiting for the lock sees, once granted, a non-empty file and
/// opens the lock file again (the daemons' `deleteLockFile`).
pub fn delete_lock_file(dir: impl AsFd, name: &OsStr, mut file: &File) {
    // Both best effort, as in the daemons: removing the file is an optimisation.
    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
    let _ = file.write_all(b"d");
}

/// Exclusive locks on `<store>/<base>.lock` for store paths being written, released (and the
/// lock files deleted) on drop.
pub struct PathLocks {
    flavor: Flavor,
    store: OwnedFd,
    store_path: PathBuf,
    owner: Option<(u32, u32)>,
    held: Vec<(File, String)>,
}

impl PathLocks {
    /// No locks yet, in the store directory `store` (shown as `store_path`); lock files this
    /// process creates are given to `owner` when set (the store's owner, when a root restore
    /// writes a store an unprivileged daemon owns).
    ///
    /// # Errors
    /// Errors of duplicating the store's descriptor.
    pub fn new(
        flavor: Flavor,
        store: impl AsFd,
        store_path: &Path,
        owner: Option<(u32, u32)>,
    ) -> io::Result<Self> {
        Ok(PathLocks {
            flavor,
            store: store.as_fd().try_clone_to_owned()?,
            store_path: store_path.to_owned(),
            owner,
            held: Vec::new(),
        })
    }

    /// How many locks are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Base names of the store paths whose locks are held here.
    pub fn bases(&self) -> std::collections::HashSet<&str> {
        self.held
            .iter()
            .filter_map(|(_, name)| name.strip_suffix(".lock"))
            .collect()
    }

    /// Lock the store path whose base name is `base`: without blocking when possible; else
    /// tell `waiting` (the daemon holds it while it builds or substitutes that path) and
    /// block. Callers lock in sorted order, as the daemon does, so two lockers of overlapping
    /// sets cannot deadlock.
    ///
    /// Whether the lock is held: `false`, holding nothing, when `<base>.lock` is longer than
    /// a file name of the store's file system may be (`ENAMETOOLONG`: a name of more than
    /// 217 characters, which a Guix store may hold, makes a 256-byte lock name). Such a lock
    /// exists for no one: the daemon, which opens the same name, fails to lock, so cannot
    /// write, that path; the caller excludes other restores some other way.
    ///
    /// # Errors
    /// [`io::Error`] with the lock file's path in its text.
    pub fn lock(&mut self, base: &str, waiting: &(dyn Fn(&str) + Sync)) -> io::Result<bool> {
        let name = format!("{base}.lock");
        let shown = self.store_path.join(&name);
        let err = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", shown.display()));
        let mut told = false;
        loop {
            let file = match open_path_lock(&self.store, OsStr::new(&name), true) {
                Ok(file) => file.expect("created"),
                Err(e) if e.raw_os_error() == Some(Errno::NAMETOOLONG.raw_os_error()) => {
                    return Ok(false);
                }
                Err(e) => return Err(err(e)),
            };
            if let Some((uid, gid)) = self.owner {
                let st = rustix::fs::fstat(&file).map_err(|e| err(e.into()))?;
                if (st.st_uid, st.st_gid) != (uid, gid) {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(err)?;
                }
            }
            if !lock(&file, self.flavor, LockMode::Exclusive, false).map_err(err)? {
                if !told {
                    waiting(&format!(
                        "waiting for the lock on {} (the daemon is building or substituting \
                         that path)",
                        shown.display()
                    ));
                    told = true;
                }
                lock(&file, self.flavor, LockMode::Exclusive, true).map_err(err)?;
            }
            if file.metadata().map_err(err)?.len() == 0 {
                self.held.push((file, name));
                return Ok(true);
            }
            // Marked deleted by its previous holder. Unlinked too (the usual case): open the
            // name again. Still at the name (its unlink failed): ours now, emptied.
            let here = rustix::fs::fstat(&file).map_err(|e| err(e.into()))?;
            match rustix::fs::statat(&self.store, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino) => {
                    file.set_len(0).map_err(err)?;
                    self.held.push((file, name));
                    return Ok(true);
                }
                _ => {}
            }
        }
    }
}

impl Drop for PathLocks {
    fn drop(&mut self) {
        for (file, name) in self.held.drain(..) {
            delete_lock_file(&self.store, OsStr::new(&name), &file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_of_a_flavour_exclude_each_other_and_shared_ones_coexist() {
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        for flavor in [Flavor::Guix, Flavor::Nix] {
            let name = OsStr::new(flavor.name());
            let a = open_lock_file(&d, name, true).unwrap().unwrap();
            assert!(lock(&a, flavor, LockMode::Shared, false).unwrap());
            // Another process's view: a child holding nothing. POSIX locks do not conflict
            // within one process, so the conflict is checked from a child.
            let path = dir.path().join(name);
            let probe = |mode: &str| {
                let flag = match (flavor, mode) {
                    (Flavor::Nix, "x") => "-x",
                    (Flavor::Nix, _) => "-s",
                    _ => return None,
                };
                Some(
                    std::process::Command::new("flock")
                        .args([flag, "-n"])
                        .arg(&path)
                        .arg("true")
                        .status()
                        .ok()?
                        .success(),
                )
            };
            if let (Some(x), Some(s)) = (probe("x"), probe("s")) {
                assert!(!x, "an exclusive flock must wait for our shared one");
                assert!(s, "a shared flock coexists with ours");
            }
        }
    }

    #[test]
    fn path_locks_are_deleted_on_release_and_stale_files_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        let mut locks = PathLocks::new(Flavor::Nix, &d, dir.path(), None).unwrap();
        // A lock file marked deleted whose unlink failed is taken over, not looped on.
        std::fs::write(dir.path().join("p.lock"), b"d").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(dir.path().join("p.lock"), mode).unwrap();
        assert!(locks.lock("p", &|_| {}).unwrap());
        assert_eq!(locks.len(), 1);
        assert_eq!(std::fs::read(dir.path().join("p.lock")).unwrap(), b"");
        drop(locks);
        assert!(!dir.path().join("p.lock").exists());
    }

    /// A lock name longer than a file name may be (`<hash>-<222 characters>.lock`, 260 bytes)
    /// is no error and holds nothing: no daemon can take it either. One of 255 bytes is taken.
    #[test]
    fn a_lock_name_longer_than_a_file_name_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        for flavor in [Flavor::Guix, Flavor::Nix] {
            let mut locks = PathLocks::new(flavor, &d, dir.path(), None).unwrap();
            let hash = "0".repeat(32);
            assert!(!locks
                .lock(&format!("{hash}-{}", "n".repeat(222)), &|_| {})
                .unwrap());
            assert!(locks.is_empty());
            assert!(locks
                .lock(&format!("{hash}-{}", "n".repeat(217)), &|_| {})
                .unwrap());
            assert_eq!(locks.len(), 1);
        }
    }

    #[test]
    fn a_symlink_is_not_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("x.lock")).unwrap();
        let d = File::open(dir.path()).unwrap();
        let mut locks = PathLocks::new(Flavor::Guix, &d, dir.path(), None).unwrap();
        let err = locks.lock("x", &|_| {}).unwrap_err().to_string();
        assert!(err.contains("x.lock"), "{err}");
    }

    #[test]
    fn a_store_file_is_not_a_lock_file() {
        // A valid `<hash>-x.lock` (0444, or 0555) and a file with several names (`.links`)
        // are refused, untouched; a lock file as created is taken.
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        let mut locks = PathLocks::new(Flavor::Guix, &d, dir.path(), None).unwrap();
        let put = |name: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"genuine").unwrap();
            let mode = std::os::unix::fs::PermissionsExt::from_mode(mode);
            std::fs::set_permissions(&p, mode).unwrap();
            p
        };
        put("r.lock", 0o444);
        put("x.lock", 0o555);
        let l = put("l.lock", 0o600);
        std::fs::hard_link(&l, dir.path().join("entry")).unwrap();
        for base in ["r", "x", "l"] {
            let err = locks.lock(base, &|_| {}).unwrap_err().to_string();
            assert!(err.contains(&format!("{base}.lock")), "{err}");
            assert!(err.contains("not a lock file"), "{err}");
            let name = dir.path().join(format!("{base}.lock"));
            assert_eq!(std::fs::read(name).unwrap(), b"genuine");
        }
        assert!(locks.is_empty());
        put("p.lock", 0o600);
        assert!(locks.lock("p", &|_| {}).unwrap());
        assert_eq!(locks.len(), 1);
    }
}
