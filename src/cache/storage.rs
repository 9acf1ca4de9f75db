//! Where cache files live, behind one small trait: a local directory now, an object store
//! (S3 through `object_store`) later. Keys are `/`-separated relative names such as
//! `packs/<id>.pack`. Every write is atomic: a reader sees the whole object or nothing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

/// An error of a storage backend, naming the key (or file) it failed on.
#[derive(Debug, thiserror::Error)]
#[error("cache storage {0}: {1}")]
pub struct StorageError(pub String, #[source] pub io::Error);

/// The operations the cache needs from a place to keep files.
pub trait Storage: Send + Sync {
    /// Read a whole object.
    fn read(&self, key: &str) -> Result<Vec<u8>, StorageError>;
    /// A reader over `len` bytes at `offset` of an object.
    fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError>;
    /// Write an object atomically (whole or not at all), durably.
    fn write(&self, key: &str, data: &[u8]) -> Result<(), StorageError>;
    /// A local scratch file whose contents [`Storage::commit_file`] can publish.
    fn scratch_file(&self) -> Result<tempfile::NamedTempFile, StorageError>;
    /// Publish a finished scratch file as `key`, atomically. It is durable only after the next
    /// [`Storage::sync`] (one sync for many large files beats an fsync each).
    fn commit_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<(), StorageError>;
    /// Make every file committed so far durable.
    fn sync(&self) -> Result<(), StorageError>;
    /// Keys under a prefix (a "directory"), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Size of an object, or `None` when absent.
    fn size(&self, key: &str) -> Result<Option<u64>, StorageError>;
    /// A human-readable location for messages.
    fn describe(&self, key: &str) -> String;
}

/// A cache kept in a local directory.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Committed files being made durable in the background (see [`Storage::commit_file`]).
    syncer: Mutex<Option<PackSyncer>>,
}

/// A thread that `fdatasync`s committed files one after the other, so that a save's packs
/// reach the disk while later ones are being compressed, instead of all at once in the final
/// [`Storage::sync`]. Its first error is reported by that `sync`.
#[derive(Debug)]
struct PackSyncer {
    files: mpsc::Sender<(File, String)>,
    thread: JoinHandle<Result<(), StorageError>>,
}

impl PackSyncer {
    fn start() -> io::Result<Self> {
        let (files, rx) = mpsc::channel::<(File, String)>();
        let thread = std::thread::Builder::new()
            .name("pack-syncer".into())
            .spawn(move || {
                let mut first_error = Ok(());
                for (f, name) in rx {
                    if let Err(e) = f.sync_data() {
                        if first_error.is_ok() {
                            first_error = Err(StorageError(name, e));
                        }
                    }
                }
                first_error
            })?;
        Ok(PackSyncer { files, thread })
    }

    /// Wait until every file sent is durable.
    fn finish(self) -> Result<(), StorageError> {
        drop(self.files);
        self.thread.join().unwrap_or_else(|_| {
            Err(StorageError(
                "pack syncer".into(),
                io::Error::other("the thread panicked"),
            ))
        })
    }
}

impl Drop for LocalDir {
    fn drop(&mut self) {
        if let Some(f) = self.syncer.get_mut().ok().and_then(Option::take) {
            let _ = f.finish();
        }
    }
}

impl LocalDir {
    /// Use `root` as it is, without creating anything: a directory that does not exist reads as
    /// an empty cache (a CI cache that was not restored yet).
    pub fn open_existing(root: &Path) -> Self {
        LocalDir {
            root: root.to_owned(),
            syncer: Mutex::default(),
        }
    }

    /// Use (and create if needed) `root`.
    ///
    /// # Errors
    /// [`StorageError`] when the directory cannot be created.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        if root.exists() && !root.is_dir() {
            return Err(StorageError(
                root.display().to_string(),
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        for sub in ["", "packs", "index", "snapshots", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| StorageError(d.display().to_string(), e))?;
        }
        Ok(LocalDir {
            root: root.to_owned(),
            syncer: Mutex::default(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        debug_assert!(!key.split('/').any(|c| c == ".." || c.is_empty()));
        self.root.join(key)
    }

    fn err(&self, key: &str) -> impl Fn(io::Error) -> StorageError + '_ {
        let d = self.describe(key);
        move |e| StorageError(d.clone(), e)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for LocalDir {
    fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        fs::read(self.path(key)).map_err(self.err(key))
    }

    fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        let f = File::open(self.path(key)).map_err(self.err(key))?;
        let size = f.metadata().map_err(self.err(key))?.len();
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
        Ok(Box::new(RangeReader {
            f,
            pos: offset,
            end: offset + len,
        }))
    }

    fn write(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let mut tmp = self.scratch_file()?;
        tmp.write_all(data).map_err(self.err(key))?;
        tmp.as_file().sync_all().map_err(self.err(key))?;
        let dest = self.path(key);
        tmp.persist(&dest)
            .map_err(|e| StorageError(self.describe(key), e.error))?;
        sync_dir(dest.parent().expect("keys have a directory")).map_err(self.err(key))
    }

    fn scratch_file(&self) -> Result<tempfile::NamedTempFile, StorageError> {
        tempfile::NamedTempFile::new_in(self.root.join("tmp")).map_err(self.err("tmp"))
    }

    fn commit_file(&self, key: &str, file: tempfile::NamedTempFile) -> Result<(), StorageError> {
        let file = file
            .persist(self.path(key))
            .map_err(|e| StorageError(self.describe(key), e.error))?;
        // Start making it durable now; without the thread, `sync` does it all.
        let mut syncer = self.syncer.lock().expect("syncer");
        if syncer.is_none() {
            *syncer = PackSyncer::start().ok();
        }
        if let Some(f) = syncer.as_ref() {
            let _ = f.files.send((file, self.describe(key)));
        }
        Ok(())
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
        let dir = self.path(prefix);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.err(prefix)(e)),
        };
        for e in entries {
            let e = e.map_err(self.err(prefix))?;
            if let Some(name) = e.file_name().to_str() {
                if !name.starts_with('.') {
                    out.push(format!("{prefix}/{name}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match fs::metadata(self.path(key)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(key)(e)),
        }
    }

    fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }
}

struct RangeReader {
    f: File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.f.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conformance suite every backend must pass.
    pub fn conformance(s: &dyn Storage) {
        s.write("snapshots/a", b"hello world").unwrap();
        assert_eq!(s.read("snapshots/a").unwrap(), b"hello world");
        let mut r = String::new();
        s.read_range("snapshots/a", 6, 5)
            .unwrap()
            .read_to_string(&mut r)
            .unwrap();
        assert_eq!(r, "world");
        assert!(s.read_range("snapshots/a", 6, 6).is_err());
        assert_eq!(s.size("snapshots/a").unwrap(), Some(11));
        assert_eq!(s.size("snapshots/b").unwrap(), None);
        let mut f = s.scratch_file().unwrap();
        f.write_all(b"pack").unwrap();
        s.commit_file("packs/p", f).unwrap();
        s.sync().unwrap();
        assert_eq!(s.list("packs").unwrap(), vec!["packs/p".to_string()]);
        // Commits after a sync are made durable by the next one.
        for name in ["packs/q", "packs/r"] {
            let mut f = s.scratch_file().unwrap();
            f.write_all(name.as_bytes()).unwrap();
            s.commit_file(name, f).unwrap();
        }
        s.sync().unwrap();
        assert_eq!(s.read("packs/r").unwrap(), b"packs/r");
        assert_eq!(s.list("packs").unwrap().len(), 3);
        assert!(s.read("index/missing").is_err());
        s.write("snapshots/a", b"replaced").unwrap();
        assert_eq!(s.read("snapshots/a").unwrap(), b"replaced");
    }

    #[test]
    fn local_dir_conforms() {
        let d = tempfile::tempdir().unwrap();
        conformance(&LocalDir::open(d.path()).unwrap());
        // No scratch files are left behind.
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
