//! File system operations on the store directory: creating it as the daemon would, finding
//! who owns it, removing read-only trees, and the umask during a restore.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::store::layout::{Flavor, Layout};

/// Create a missing store directory the way the daemon would: Guix's package ships it 0755
/// root:root; Nix makes it 1775 root:nixbld (group from `<root>/etc/group`, when it exists).
pub fn create_store_dir(layout: &Layout) -> io::Result<()> {
    let store = layout.real_store_dir();
    fs::create_dir_all(&store)?;
    if layout.flavor == Flavor::Nix {
        fs::set_permissions(&store, fs::Permissions::from_mode(0o1775))?;
        let group = fs::read_to_string(layout.root.join("etc/group")).unwrap_or_default();
        let gid = group.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some("nixbld")).then(|| f.nth(1)?.parse::<u32>().ok())?
        });
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&store, None, Some(gid))?;
        }
    }
    Ok(())
}

/// A store directory that exists must be a directory.
pub fn check_store_dir(layout: &Layout) -> Result<()> {
    let store = layout.real_store_dir();
    if store.exists() && !store.is_dir() {
        return Err(Error::Io(
            store,
            io::Error::new(
                io::ErrorKind::NotADirectory,
                "the store directory is not a directory",
            ),
        ));
    }
    Ok(())
}

/// Who owns restored files: the owner of the store directory (the unprivileged `guix-daemon`
/// user on Guix 1.5 installs); group root when that owner is root, as the daemons do.
pub fn store_owner(store: &Path) -> Result<(u32, u32)> {
    let m = fs::metadata(store).map_err(|e| Error::Io(store.to_owned(), e))?;
    Ok(if m.uid() == 0 {
        (0, 0)
    } else {
        (m.uid(), m.gid())
    })
}

/// Remove a tree the daemon made read-only (directories 0555).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        for e in fs::read_dir(path)? {
            remove_tree(&e?.path())?;
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    }
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
