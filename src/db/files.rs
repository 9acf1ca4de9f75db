//! The daemon's files in the DB directory (`db.sqlite` and its WAL files, `schema`,
//! `big-lock`): never used through a symlink, read and written without following one, and
//! given back to the directory's owner after a root restore.

use std::fs;
use std::path::{Path, PathBuf};

use super::DbError;
use crate::store::layout::Layout;

/// The files the daemon keeps in its DB directory.
const STATE_FILES: [&str; 5] = [
    "db.sqlite",
    "db.sqlite-wal",
    "db.sqlite-shm",
    "schema",
    "big-lock",
];

/// `path`, if it exists, is itself (not a symlink) and of the kind expected: the DB
/// directory a directory, the files in it regular files.
pub(crate) fn check_not_symlink(path: &Path) -> Result<(), DbError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(DbError::NotAFile(path.to_owned())),
        Ok(m)
            if path
                .file_name()
                .is_some_and(|n| STATE_FILES.iter().any(|f| n == *f)) =>
        {
            if m.is_file() {
                Ok(())
            } else {
                Err(DbError::NotAFile(path.to_owned()))
            }
        }
        Ok(m) if !m.is_dir() && !m.is_file() => Err(DbError::NotAFile(path.to_owned())),
        _ => Ok(()),
    }
}

/// The DB file to open, after checking that the DB directory and every state file in it are
/// not symlinks: the directory's own path with its parents resolved (they are the system's),
/// so that SQLite, opened with `SQLITE_OPEN_NOFOLLOW`, refuses any symlink it meets.
pub(super) fn checked_db_file(layout: &Layout) -> Result<PathBuf, DbError> {
    let dir = layout.real_db_dir();
    check_not_symlink(&dir)?;
    for f in STATE_FILES {
        check_not_symlink(&dir.join(f))?;
    }
    let real = fs::canonicalize(&dir).map_err(|e| DbError::Io(dir.clone(), e))?;
    Ok(real.join("db.sqlite"))
}

/// Open a state file of the DB directory for reading, never through a symlink.
pub(super) fn read_state_file(path: &Path) -> Result<Option<String>, DbError> {
    use std::io::Read;
    let fd = match rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(DbError::NotAFile(path.to_owned())),
        Err(e) => return Err(DbError::Io(path.to_owned(), e.into())),
    };
    let mut f = fs::File::from(fd);
    if !f
        .metadata()
        .map_err(|e| DbError::Io(path.to_owned(), e))?
        .is_file()
    {
        return Err(DbError::NotAFile(path.to_owned()));
    }
    let mut s = String::new();
    f.read_to_string(&mut s)
        .map_err(|e| DbError::Io(path.to_owned(), e))?;
    Ok(Some(s))
}

/// Write a state file of the DB directory, never through a symlink.
pub(super) fn write_state_file(path: &Path, contents: &[u8]) -> Result<(), DbError> {
    use std::io::Write;
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::TRUNC
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => DbError::NotAFile(path.to_owned()),
        e => DbError::Io(path.to_owned(), e.into()),
    })?;
    fs::File::from(fd)
        .write_all(contents)
        .map_err(|e| DbError::Io(path.to_owned(), e))
}

/// Give the DB directory and the daemon's files in it to the owner of the directory above it
/// (`/var/guix`), when they belong to someone else: Guix 1.5's unprivileged daemon runs as the
/// `guix-daemon` user that owns `/var/guix` and must be able to write what a root restore
/// created. Call after the connection is closed. Nothing changes when the owners already agree.
///
/// That owner may rename entries of its directory, so the DB directory may have been swapped
/// for a symlink since the restore checked it: it is opened relative to its parent without
/// following one, and its files are changed relative to it, never through a symlink (root's
/// files elsewhere were given away through such a swap). Only the directory and its regular
/// files of one name are given.
///
/// # Errors
/// [`DbError::NotAFile`] when the DB directory is now a symlink or not a directory;
/// [`DbError::Io`] naming the file that could not be chowned.
pub fn give_to_owner(layout: &Layout) -> Result<(), DbError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dir = layout.real_db_dir();
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let Ok(parent) = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(());
    };
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e: rustix::io::Errno| DbError::Io(p, e.into())
    };
    let above = rustix::fs::fstat(&parent).map_err(io(&dir))?;
    let owner = (above.st_uid, above.st_gid);
    let db = match rustix::fs::openat(
        &parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return Err(DbError::NotAFile(dir))
        }
        Err(e) => return Err(io(&dir)(e)),
    };
    let give = |st: &rustix::fs::Stat, at: &str, path: &Path| -> Result<(), DbError> {
        if (st.st_uid, st.st_gid) == owner {
            return Ok(());
        }
        rustix::fs::chownat(
            &db,
            at,
            Some(rustix::fs::Uid::from_raw(owner.0)),
            Some(rustix::fs::Gid::from_raw(owner.1)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io(path))
    };
    give(&rustix::fs::fstat(&db).map_err(io(&dir))?, ".", &dir)?;
    for f in STATE_FILES {
        let path = dir.join(f);
        let st = match rustix::fs::statat(&db, f, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            continue;
        }
        // A second name would be a hard link made by that owner to a file of root's
        // elsewhere (where `fs.protected_hardlinks` is off): the daemon's files have one.
        if st.st_nlink > 1 && (st.st_uid, st.st_gid) != owner {
            return Err(DbError::Io(
                path,
                std::io::Error::other(format!(
                    "has {} names (a hard link to a file elsewhere?): not given to the owner \
                     of the directory above",
                    st.st_nlink
                )),
            ));
        }
        give(&st, f, &path)?;
    }
    Ok(())
}
