//! The moving parts of a local cache directory: writers of new objects (scratch files in
//! `tmp/`, published by rename), the thread that makes committed packs durable in the
//! background, and the reader of a range of a file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::LocalDir;
use crate::cache::storage::{ObjectWriter, Storage, StorageError};

/// A thread that `fdatasync`s committed files one after the other, so that a save's packs
/// reach the disk while later ones are being compressed, instead of all at once in the final
/// [`Storage::sync`]. Its first error is reported by that `sync`.
#[derive(Debug)]
pub(super) struct PackSyncer {
    pub(super) files: mpsc::Sender<(File, String)>,
    pub(super) thread: JoinHandle<Result<(), StorageError>>,
}

impl PackSyncer {
    pub(super) fn start() -> io::Result<Self> {
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
    pub(super) fn finish(self) -> Result<(), StorageError> {
        drop(self.files);
        self.thread.join().unwrap_or_else(|_| {
            Err(StorageError(
                "pack syncer".into(),
                io::Error::other("the thread panicked"),
            ))
        })
    }
}

pub(super) struct LocalWriter<'a> {
    pub(super) dir: &'a LocalDir,
    pub(super) file: tempfile::NamedTempFile,
}

impl Write for LocalWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.dir.transfer.uploaded(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for LocalWriter<'_> {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }
    fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError> {
        let dest = self.dir.path(key)?;
        self.dir.transfer.request();
        let file = self
            .file
            .persist(&dest)
            .map_err(|e| StorageError(self.dir.describe(key), e.error))?;
        // Start making it durable now; without the thread, `sync` does it all.
        let mut syncer = self.dir.syncer.lock().expect("syncer");
        if syncer.is_none() {
            *syncer = PackSyncer::start().ok();
        }
        if let Some(f) = syncer.as_ref() {
            let _ = f.files.send((file, self.dir.describe(key)));
        }
        Ok(())
    }
}

pub(super) struct RangeReader {
    pub(super) f: File,
    pub(super) pos: u64,
    pub(super) end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.f.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being read",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
