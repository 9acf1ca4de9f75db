//! What a restore asks of the system besides the store's contents: descriptors (the
//! open-files limit, raised for the writer threads and for a lock file per missing path;
//! [`lock_budget`] says how many path locks fit) and early writeback ([`Flusher`], so the
//! final `syncfs` that makes the paths durable before registration finds little to do).

use std::fs;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// A thread that starts writeback of the store's file system every [`Flusher::EVERY`] bytes
/// written, so that dirty pages reach the disk while later paths are still being written
/// instead of all at once in the final `syncfs`. Stops when dropped.
pub(super) struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    const EVERY: u64 = 64 * 1024 * 1024;

    pub(super) fn start(store: &OwnedFd, written: &std::sync::Arc<AtomicU64>) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let written = written.clone();
        let dir = store.try_clone().ok().map(fs::File::from);
        let thread = dir.map(|dir| {
            std::thread::spawn(move || {
                let mut synced = 0;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(std::time::Duration::from_millis(50))
                {
                    let now = written.load(Ordering::Relaxed);
                    if now - synced >= Self::EVERY {
                        synced = now;
                        // Best effort: the final `syncfs` reports errors.
                        let _ = rustix::fs::syncfs(&dir);
                    }
                }
            })
        });
        Flusher {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The most path locks held at once, whatever the open-files limit: beyond this a restore
/// into a live store asks to be split.
pub(super) fn lock_budget() -> usize {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let cur = lim.current.unwrap_or(1 << 20) as usize;
    // The rest serves the writers (a descriptor per directory level per thread), SQLite, the
    // cache.
    cur - (cur / 4).clamp(64.min(cur), 1024)
}
