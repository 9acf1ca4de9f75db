//! File system operations on the store directory: creating it as the daemon would, finding
//! who owns it, removing trees, and the umask during a restore.
//!
//! Invariant: inside the store, nothing is looked up through a path. Every creation, removal,
//! link, rename, chmod and chown is relative to a descriptor of the directory it happens in
//! ([`open_dir_at`]), with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`: a directory swapped for a
//! symlink by someone who can create entries in the store (Nix's store is 1775 root:nixbld)
//! is never followed, and the store directory itself is refused when it is a symlink.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::store::layout::{Flavor, Layout};

/// Deepest directory nesting [`remove_at`] descends (the cache's trees nest at most 256 deep;
/// a deeper leftover was not made by a restore).
pub const MAX_REMOVE_DEPTH: usize = 1024;

fn not_a_dir(store: &Path, why: &str) -> Error {
    Error::Io(
        store.to_owned(),
        io::Error::new(io::ErrorKind::NotADirectory, why.to_owned()),
    )
}

/// A store directory that exists must be a directory, and not a symlink: everything in it is
/// written relative to it, and a symlink would take those writes elsewhere.
///
/// # Errors
/// [`Error::Io`] naming the store directory.
pub fn check_store_dir(layout: &Layout) -> Result<()> {
    let store = layout.real_store_dir();
    match fs::symlink_metadata(&store) {
        Ok(m) if m.file_type().is_symlink() => Err(not_a_dir(
            &store,
            "the store directory is a symlink: refusing to write through it (point --root or \
             --store-dir at the directory itself)",
        )),
        Ok(m) if !m.is_dir() => Err(not_a_dir(&store, "the store directory is not a directory")),
        _ => Ok(()),
    }
}

/// Open the store directory (never through a symlink), creating it first when missing the
/// way the daemon would: Guix's package ships it 0755 root:root; Nix makes it 1775
/// root:nixbld (group from `<root>/etc/group`, when it exists).
///
/// # Errors
/// [`Error::Io`] naming the store directory: it cannot be created or opened, or it is a
/// symlink or not a directory.
pub fn open_store_dir(layout: &Layout) -> Result<OwnedFd> {
    let store = layout.real_store_dir();
    let io = |e: io::Error| Error::Io(store.clone(), e);
    check_store_dir(layout)?;
    let mut created = false;
    if fs::symlink_metadata(&store).is_err() {
        if let Some(parent) = store.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        match fs::create_dir(&store) {
            Ok(()) => created = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    let fd = rustix::fs::open(
        &store,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => not_a_dir(
            &store,
            "the store directory is a symlink or not a directory: refusing to write through it",
        ),
        e => io(e.into()),
    })?;
    if created && layout.flavor == Flavor::Nix {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o1775)).map_err(|e| io(e.into()))?;
        let group = fs::read_to_string(layout.root.join("etc/group")).unwrap_or_default();
        let gid = group.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some("nixbld")).then(|| f.nth(1)?.parse::<u32>().ok())?
        });
        if let Some(gid) = gid {
            std::os::unix::fs::fchown(&fd, None, Some(gid)).map_err(io)?;
        }
    }
    Ok(fd)
}

/// Who owns restored files: the owner of the store directory (the unprivileged `guix-daemon`
/// user on Guix 1.5 installs); group root when that owner is root, as the daemons do.
///
/// # Errors
/// Errors of `fstat`.
pub fn store_owner(store: impl AsFd) -> io::Result<(u32, u32)> {
    let st = rustix::fs::fstat(store)?;
    Ok(if st.st_uid == 0 {
        (0, 0)
    } else {
        (st.st_uid, st.st_gid)
    })
}

/// The ACL xattrs a node may carry: its own, and (a directory) the default its entries inherit.
const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";

/// Whether the directory `dir` has a default ACL. Every entry created in it inherits that ACL,
/// which masks the mode asked for whatever the umask (`o::---` makes a file created 0444 come
/// out 0440); a directory inherits it as its own default, so it reaches every level below.
/// False where the file system has no ACLs.
pub fn has_default_acl(dir: impl AsFd) -> bool {
    rustix::fs::fgetxattr_query(dir, ACL_DEFAULT).is_ok()
}

/// Remove the ACLs a node inherited from a directory with a default ACL (its own, and for a
/// directory the default it would pass on), then give it `mode`: as the daemons leave it
/// (both reset a store node's mode to 0444/0555, Nix also removes its ACLs), and so that
/// what is created in a directory afterwards gets the mode asked for.
///
/// # Errors
/// Errors of `fremovexattr` (but for an ACL absent) and `fchmod`.
pub fn drop_acls(fd: impl AsFd, dir: bool, mode: u32) -> io::Result<()> {
    let names: &[&str] = if dir {
        &[ACL_DEFAULT, ACL_ACCESS]
    } else {
        &[ACL_ACCESS]
    };
    for name in names {
        match rustix::fs::fremovexattr(&fd, *name) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?)
}

/// Open the directory `name` in `dir` for use as the base of further operations: never
/// through a symlink (`ELOOP` or `ENOTDIR` if `name` is not a directory).
///
/// # Errors
/// Errors of `openat`.
pub fn open_dir_at(dir: impl AsFd, name: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a directory (without `.` and `..`).
///
/// # Errors
/// Errors of reading the directory.
pub fn entry_names(dir: impl AsFd) -> io::Result<Vec<CString>> {
    entry_names_of(&mut rustix::fs::Dir::read_from(dir)?)
}

/// The names `dir` lists (without `.` and `..`), read through the stream itself: for a
/// directory whose descriptor the caller keeps in the [`rustix::fs::Dir`] (no second open).
///
/// # Errors
/// Errors of reading the directory.
pub fn entry_names_of(dir: &mut rustix::fs::Dir) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for e in dir {
        let e = e?;
        let name = e.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Remove `name` in `dir`, whatever it is, never following a symlink: a symlink is unlinked,
/// not descended; a directory (made writable first: the daemon leaves them 0555) is emptied
/// through a descriptor of its own, so one swapped for a symlink meanwhile is not followed
/// either. Nothing there is not an error.
///
/// # Errors
/// Errors of the removal; an error when directories nest deeper than [`MAX_REMOVE_DEPTH`].
pub fn remove_at(dir: impl AsFd, name: impl AsRef<OsStr>) -> io::Result<()> {
    remove_at_depth(dir.as_fd(), name.as_ref(), 0)
}

fn remove_at_depth(dir: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    let gone = |r: rustix::io::Result<()>| match r {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    };
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        // A directory (Linux says EISDIR, POSIX EPERM).
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    // An empty directory goes without a descriptor of its own: a tree whose writing ran out
    // of descriptors (`EMFILE`) ends in one, and can then still be removed with the
    // descriptors its writer held.
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        _ => {}
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(io::Error::other(format!(
            "{}: directories nested deeper than {MAX_REMOVE_DEPTH}",
            Path::new(name).display()
        )));
    }
    let sub = match open_dir_at(dir, name) {
        Ok(fd) => fd,
        // Replaced by something else since: unlink that.
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw_os_error),
                Some(Errno::LOOP) | Some(Errno::NOTDIR)
            ) =>
        {
            return gone(rustix::fs::unlinkat(dir, name, AtFlags::empty()));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&sub)?;
    if st.st_mode & 0o700 != 0o700 {
        rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o755))?;
    }
    // Names read through `sub` itself (no second descriptor per level, see above).
    let mut sub = rustix::fs::Dir::new(sub)?;
    for child in entry_names_of(&mut sub)? {
        remove_at_depth(sub.fd()?, OsStr::from_bytes(child.to_bytes()), depth + 1)?;
    }
    drop(sub);
    gone(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))
}

/// Remove the tree at `path` (see [`remove_at`]; only its last component is not followed).
///
/// # Errors
/// As [`remove_at`]; an error when `path` has no last component.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: nothing to remove", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    remove_at(&parent, name)
}

/// The process umask, set for a scope and put back when dropped.
pub struct Umask(rustix::fs::Mode);

impl Umask {
    pub fn set(mask: u32) -> Self {
        Umask(rustix::process::umask(rustix::fs::Mode::from_raw_mode(
            mask,
        )))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

/// Raise the soft limit of open files to at least `need` (and 65536), within the hard limit,
/// which root raises too when `need` passes it (up to the kernel's `nr_open`): a path is
/// written (restore) or walked (save) holding a descriptor of each directory from its top to
/// the one being written or read, on each thread, and a restore into a store holds a lock
/// file per missing path until registration. Never lowers a limit.
pub fn raise_open_files_limit(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let (Some(cur), Some(max)) = (lim.current, lim.maximum) else {
        return; // unlimited
    };
    let want = need.max(1 << 16);
    if cur >= want {
        return;
    }
    // Root (CAP_SYS_RESOURCE) may raise the hard limit too, up to the kernel's `nr_open`: a
    // restore of 100,000 missing paths into a store holds as many path locks.
    if want > max {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let high = want.min(nr_open).max(max);
        if high > max
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(high),
                    maximum: Some(high),
                },
            )
            .is_ok()
        {
            return;
        }
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want.min(max)),
            maximum: Some(max),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn remove_tree_removes_read_only_trees_and_symlinks_not_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/out")).unwrap();
        for d in ["a/b", "a", ""] {
            fs::set_permissions(t.join(d), fs::Permissions::from_mode(0o555)).unwrap();
        }
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").exists());
        // A symlink at the top is removed, not followed.
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&outside, &l).unwrap();
        remove_tree(&l).unwrap();
        assert!(fs::symlink_metadata(&l).is_err());
        assert!(outside.join("keep").exists());
        // Nothing there: fine.
        remove_tree(&l).unwrap();
    }
}
