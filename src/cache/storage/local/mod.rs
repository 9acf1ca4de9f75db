//! A cache kept in a local directory: `packs/`, `index/`, `snapshots/`, `gc/` (lists of
//! retired files) and `tmp/` (scratch of
//! writers in progress, named `<pid>.<random>.tmp` so a later save can tell a killed writer's
//! leftovers from a live one's).
//!
//! Reading never follows a symlink below the cache's directory, in the file's name or in the
//! subdirectory holding it (`packs/` swapped for a symlink to elsewhere is refused, not read
//! through), and never opens anything but a regular file (a key pointing at `/dev/zero` or
//! a FIFO is an error, not a hang). Publishing is a rename of a
//! fully written scratch file (or a hard link for create-only puts), so readers see whole
//! files; committed packs are `fdatasync`ed by a background thread so a save's final
//! [`Storage::sync`] has little left to wait for.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags};

mod objects;

use self::objects::{LocalWriter, PackSyncer, RangeReader};
use super::transfer::Counted;
use super::{check_key, ObjectWriter, Storage, StorageError, Transfer};

/// The subdirectories of a cache directory.
const SUBDIRS: [&str; 5] = ["packs", "index", "snapshots", "tmp", "gc"];

/// A cache kept in a local directory.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Committed files being made durable in the background (see [`ObjectWriter::commit`]).
    syncer: Mutex<Option<PackSyncer>>,
    /// Operations and bytes read and written (see [`Transfer`]).
    transfer: Transfer,
    /// Descriptors of the directories below `root` files were read from (`packs`, ...),
    /// each opened without following a symlink: opened once, not per read.
    dirs: Mutex<Vec<(String, Arc<OwnedFd>)>>,
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        if let Some(f) = self.syncer.get_mut().ok().and_then(Option::take) {
            let _ = f.finish();
        }
    }
}

fn not_dir(path: &Path, why: &str) -> StorageError {
    StorageError(
        path.display().to_string(),
        io::Error::new(io::ErrorKind::NotADirectory, why.to_owned()),
    )
}

/// `e`, or, for `ELOOP` (a symlink met where `O_NOFOLLOW` forbids it), an error saying so.
fn symlink_said(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => io::Error::new(
            io::ErrorKind::InvalidData,
            "is a symlink, or below one; refusing to follow it",
        ),
        _ => e,
    }
}

impl LocalDir {
    /// Use `root` as it is, without creating anything: a directory that does not exist reads as
    /// an empty cache (a CI cache that was not restored yet).
    pub fn open_existing(root: &Path) -> Self {
        LocalDir {
            root: root.to_owned(),
            syncer: Mutex::default(),
            transfer: Transfer::default(),
            dirs: Mutex::default(),
        }
    }

    /// Use (and create if needed) `root` for writing. Scratch files left by writers that were
    /// killed are removed.
    ///
    /// # Errors
    /// [`StorageError`] when the directory cannot be created, or when it or one of its
    /// subdirectories is not a directory (a symlink there is refused: writes would land
    /// elsewhere).
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        if root.exists() && !root.is_dir() {
            return Err(not_dir(root, "not a directory"));
        }
        fs::create_dir_all(root).map_err(|e| StorageError(root.display().to_string(), e))?;
        for sub in SUBDIRS {
            let d = root.join(sub);
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(not_dir(
                        &d,
                        "not a directory (a symlink or file where a cache directory belongs)",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&d).map_err(|e| StorageError(d.display().to_string(), e))?
                }
                Err(e) => return Err(StorageError(d.display().to_string(), e)),
            }
        }
        let dir = LocalDir {
            root: root.to_owned(),
            syncer: Mutex::default(),
            transfer: Transfer::default(),
            dirs: Mutex::default(),
        };
        for name in dir.leftovers() {
            let _ = fs::remove_file(dir.root.join(name));
        }
        Ok(dir)
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if !check_key(key) {
            return Err(StorageError(
                key.to_owned(),
                io::Error::new(io::ErrorKind::InvalidInput, "not a valid cache key"),
            ));
        }
        Ok(self.root.join(key))
    }

    fn err(&self, key: &str) -> impl Fn(io::Error) -> StorageError + '_ {
        let d = self.describe(key);
        move |e| StorageError(d.clone(), e)
    }

    /// A descriptor of the directory `rel` (components separated by `/`) below the root, each
    /// component opened relative to the one above without following a symlink (the root
    /// itself is where the user said, symlinks and all).
    ///
    /// # Errors
    /// Those of `openat`, a symlink where a directory belongs said so.
    fn dir(&self, rel: &str) -> io::Result<Arc<OwnedFd>> {
        if let Some((_, fd)) = self
            .dirs
            .lock()
            .expect("dirs")
            .iter()
            .find(|(d, _)| d == rel)
        {
            return Ok(fd.clone());
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = rustix::fs::open(&self.root, flags, Mode::empty())?;
        for c in rel.split('/') {
            fd = rustix::fs::openat(&fd, c, flags | OFlags::NOFOLLOW, Mode::empty()).map_err(
                |e| match e {
                    // What `O_DIRECTORY | O_NOFOLLOW` gives for a symlink, as for a file.
                    rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!(
                            "{c} is not a directory (a symlink or file where a cache \
                             directory belongs); refusing to follow it"
                        ),
                    ),
                    e => e.into(),
                },
            )?;
        }
        let fd = Arc::new(fd);
        self.dirs
            .lock()
            .expect("dirs")
            .push((rel.to_owned(), fd.clone()));
        Ok(fd)
    }

    /// The directory holding `key` (see [`LocalDir::dir`]) and the key's last component.
    fn parent<'k>(&self, key: &'k str) -> Result<(Arc<OwnedFd>, &'k str), StorageError> {
        self.path(key)?; // the key is checked
        let (dir, name) = key.rsplit_once('/').ok_or_else(|| {
            StorageError(
                key.to_owned(),
                io::Error::new(io::ErrorKind::InvalidInput, "not a key of a cache file"),
            )
        })?;
        Ok((self.dir(dir).map_err(self.err(key))?, name))
    }

    /// Open a cache file for reading: a regular file, reached without following a symlink.
    fn open_regular(&self, key: &str) -> Result<(File, u64), StorageError> {
        let (dir, name) = self.parent(key)?;
        let f = rustix::fs::openat(
            &*dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| symlink_said(e.into()))
        .map_err(self.err(key))?;
        let m = f.metadata().map_err(self.err(key))?;
        if !m.is_file() {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
            ));
        }
        Ok((f, m.len()))
    }

    fn scratch(&self) -> Result<tempfile::NamedTempFile, StorageError> {
        tempfile::Builder::new()
            .prefix(&format!("{}.", std::process::id()))
            .suffix(".tmp")
            .tempfile_in(self.root.join("tmp"))
            .map_err(self.err("tmp"))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether a process with this id runs (on this machine).
fn process_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(p) => rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH),
        None => false,
    }
}

/// Scratch older than this is a leftover whatever its name says.
const SCRATCH_MAX_AGE_SECS: i64 = 7 * 24 * 3600;

impl Storage for LocalDir {
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        self.transfer.request();
        let (mut f, size) = self.open_regular(key)?;
        if size > max {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{size} bytes, more than the {max} a file of this kind may have"),
                ),
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        (&mut f)
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(self.err(key))?;
        if out.len() as u64 > max {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(io::ErrorKind::InvalidData, "grew while being read"),
            ));
        }
        self.transfer.downloaded(out.len() as u64);
        Ok(out)
    }

    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        self.transfer.request();
        let (f, size) = self.open_regular(key)?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "range {offset}+{len} is beyond the end ({size} bytes): truncated file"
                    ),
                ),
            ));
        }
        Ok(Box::new(Counted {
            inner: RangeReader {
                f,
                pos: offset,
                end: offset + len,
            },
            transfer: &self.transfer,
        }))
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
        let dest = self.path(key)?;
        self.transfer.request();
        self.transfer.uploaded(data.len() as u64);
        let mut tmp = self.scratch()?;
        tmp.write_all(data).map_err(self.err(key))?;
        tmp.as_file().sync_all().map_err(self.err(key))?;
        match tmp.persist_noclobber(&dest) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(StorageError(self.describe(key), e.error)),
        }
        sync_dir(dest.parent().expect("keys have a directory")).map_err(self.err(key))?;
        Ok(true)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        self.transfer.request();
        self.transfer.uploaded(data.len() as u64);
        let mut tmp = self.scratch()?;
        tmp.write_all(data).map_err(self.err(key))?;
        tmp.as_file().sync_all().map_err(self.err(key))?;
        // rename(2) replaces atomically; a symlink at `dest` is replaced, not followed.
        tmp.persist(&dest)
            .map_err(|e| StorageError(self.describe(key), e.error))?;
        sync_dir(dest.parent().expect("keys have a directory")).map_err(self.err(key))
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        Ok(Box::new(LocalWriter {
            dir: self,
            file: self.scratch()?,
        }))
    }

    fn sync(&self) -> Result<(), StorageError> {
        let pending = self.syncer.lock().expect("syncer").take();
        if let Some(f) = pending {
            f.finish()?;
        }
        let err = |e: io::Error| StorageError(self.root.display().to_string(), e);
        let root = File::open(&self.root).map_err(err)?;
        rustix::fs::syncfs(&root).map_err(|e| err(e.into()))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.transfer.request();
        self.path(prefix)?;
        let mut out = Vec::new();
        let dir = match self.dir(prefix) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.err(prefix)(e)),
        };
        let names = crate::store::fs::entry_names(&*dir).map_err(self.err(prefix))?;
        for name in names {
            if let Ok(name) = name.to_str() {
                let key = format!("{prefix}/{name}");
                if check_key(&key) {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.transfer.request();
        let (dir, name) = match self.parent(key) {
            Ok(p) => p,
            Err(StorageError(_, e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st.st_size as u64)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(key)(e.into())),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.transfer.request();
        match fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(key)(e)),
        }
    }

    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn transfer(&self) -> Option<&Transfer> {
        Some(&self.transfer)
    }

    fn leftovers(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return Vec::new();
        };
        let now = crate::clock::now_secs();
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().and_then(|p| p.parse::<i32>().ok());
            let old = e
                .metadata()
                .is_ok_and(|m| now - m.mtime() > SCRATCH_MAX_AGE_SECS);
            let mine = pid == Some(std::process::id() as i32);
            if !mine && (old || !pid.is_some_and(process_alive)) {
                out.push(format!("tmp/{name}"));
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_conforms() {
        let d = tempfile::tempdir().unwrap();
        super::super::conformance(&LocalDir::open(d.path()).unwrap());
        // No scratch files are left behind.
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn symlinks_fifos_and_devices_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDir::open(d.path()).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("index/zero.idx")).unwrap();
        let fifo = d.path().join("snapshots/fifo.snap");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = s.get("index/zero.idx", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let e = s
            .get("snapshots/fifo.snap", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(s.get_range("snapshots/fifo.snap", 0, 1).is_err());
        assert!(s.get("../etc/passwd", 1 << 20).is_err());
    }

    #[test]
    fn a_symlinked_subdirectory_is_refused_for_writing() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("c")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("c/packs")).unwrap();
        let e = LocalDir::open(&d.path().join("c")).unwrap_err().to_string();
        assert!(e.contains("packs") && e.contains("symlink"), "{e}");
    }

    /// Found by review: `open_existing` (what `restore --cache DIR` uses) read through a
    /// `packs/` swapped for a symlink to a directory elsewhere (`O_NOFOLLOW` covers the last
    /// component only).
    #[test]
    fn a_symlinked_subdirectory_is_not_read_through() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let s = LocalDir::open(d.path()).unwrap();
        s.put("packs/a.pack", b"abc").unwrap();
        s.put("index/b.idx", b"de").unwrap();
        fs::rename(d.path().join("packs"), elsewhere.path().join("packs")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("packs"), d.path().join("packs")).unwrap();
        let s = LocalDir::open_existing(d.path());
        for e in [
            s.get("packs/a.pack", 10).unwrap_err(),
            s.get_range("packs/a.pack", 0, 1).map(|_| ()).unwrap_err(),
            s.list("packs").unwrap_err(),
            s.size("packs/a.pack").unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(e.contains("packs") && e.contains("symlink"), "{e}");
        }
        // The rest of the cache reads as before; an absent directory is an empty one.
        assert_eq!(s.get("index/b.idx", 10).unwrap(), b"de");
        assert_eq!(s.size("index/b.idx").unwrap(), Some(2));
        assert_eq!(s.list("index").unwrap(), ["index/b.idx"]);
        let absent = LocalDir::open_existing(&d.path().join("none"));
        assert!(absent.list("packs").unwrap().is_empty());
        assert_eq!(absent.size("packs/a.pack").unwrap(), None);
    }

    #[test]
    fn scratch_of_dead_writers_is_a_leftover_and_removed_on_open() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDir::open(d.path()).unwrap();
        // A pid that cannot be alive (above the kernel's maximum), and a live one: our own
        // parent process.
        fs::write(d.path().join("tmp/999999999.abc.tmp"), b"x").unwrap();
        let parent = rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get());
        fs::write(d.path().join(format!("tmp/{parent}.def.tmp")), b"y").unwrap();
        assert_eq!(s.leftovers(), vec!["tmp/999999999.abc.tmp".to_string()]);
        drop(s);
        let s = LocalDir::open(d.path()).unwrap();
        assert!(s.leftovers().is_empty());
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 1);
    }
}
