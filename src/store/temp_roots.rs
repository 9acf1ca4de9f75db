//! Temporary GC roots: how a store client keeps the daemon's garbage collector away from the
//! paths it is adding, following the daemons' own protocol (Guix `nix/libstore/gc.cc`, Nix
//! 2.x `src/libstore/gc.cc`, `addTempRoot` and `readTempRoots` / `findTempRoots`).
//!
//! Each client process owns `<state>/temproots/<pid>`, a list of store paths each followed by
//! a NUL, and keeps it locked while it lives; a collector treats every path listed there as a
//! root, and a file it can lock exclusively as left by a dead process (it deletes it). The
//! collector holds `<state>/gc.lock` exclusively while it runs.
//!
//! - Guix: the file is created while holding `gc.lock` shared (so a collector in progress is
//!   waited for), then held shared; adding a root upgrades it to exclusive for the append,
//!   which waits while a collector holds the file shared (it does from reading the roots to
//!   its end), then downgrades. Locks are POSIX record locks. Unlike the daemon's own clients,
//!   storesync keeps `gc.lock` shared for its whole life, so a collector waits for the restore
//!   instead of running beside it (one that did was seen to delete paths the restore then
//!   wrote and registered). Roots are compared as whole
//!   strings, so every name this process creates in the store is listed.
//! - Nix 2.4 and later: the file is held exclusively (`flock`) for the process's life. To add
//!   roots, the client tries `gc.lock` shared without blocking: granted, no collector runs and
//!   the roots are appended under it; refused, a collector runs and is told each root through
//!   its socket `<state>/gc-socket/socket` (one line each, acknowledged by `1`) before they are
//!   appended. The collector compares hash parts, and deletes outright any store entry whose
//!   name is not a store path, so every name listed must parse as one.
//!
//! A stale file of this process's pid (from a dead process) is removed before creating ours,
//! as the daemons do. The file is removed when [`TempRoots`] is dropped.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::store::fs::open_dir_at;
use crate::store::layout::{Flavor, Layout};
use crate::store::locks::{lock, lock_saying, open_lock_file, LockMode};

/// How long a Nix client keeps trying to reach a collector's socket that is not there yet
/// before it waits for `gc.lock` instead (a collector of the older protocol, without one).
const SOCKET_PATIENCE: Duration = Duration::from_secs(10);

/// This process's temporary roots file, locked; removed on drop.
pub struct TempRoots {
    flavor: Flavor,
    dir: OwnedFd,
    name: String,
    path: PathBuf,
    file: File,
    gc_lock: PathBuf,
    gc_file: Option<File>,
    socket_path: PathBuf,
    socket: Option<UnixStream>,
    listed: usize,
    told: bool,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::Io(path.to_owned(), e)
}

/// Create `dir` (mode 0755) if missing; refuse a symlink; give what was created to `owner`.
fn ensure_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<OwnedFd> {
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some((u, g)) = owner {
                std::os::unix::fs::lchown(dir, Some(u), Some(g)).map_err(io_at(dir))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::Io(dir.to_owned(), e)),
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let p = File::open(parent).map_err(io_at(parent))?;
    let name = dir.file_name().unwrap_or(OsStr::new("."));
    open_dir_at(&p, name).map_err(|e| {
        Error::Io(
            dir.to_owned(),
            io::Error::new(
                e.kind(),
                format!("{e} (it must be a directory, not a symlink)"),
            ),
        )
    })
}

/// Who should own what this process creates in the state directory: its owner, when that is
/// not us (Guix 1.5's daemon runs as the unprivileged `guix-daemon` user and must be able to
/// open our files read-write to lock them).
fn state_owner(state: &Path) -> Option<(u32, u32)> {
    let m = fs::metadata(state).ok()?;
    let me = rustix::process::geteuid().as_raw();
    (me == 0 && m.uid() != 0).then_some((m.uid(), m.gid()))
}

impl TempRoots {
    /// Create this process's temporary roots file in `layout`'s state directory (the DB
    /// directory's parent), waiting while a Guix collector holds `gc.lock` (said through
    /// `waiting`, once).
    ///
    /// # Errors
    /// [`Error::Io`] naming the state directory, `temproots`, `gc.lock` or our file.
    pub fn create(layout: &Layout, waiting: &(dyn Fn(&str) + Sync)) -> Result<Self> {
        let state = layout.state_dir();
        let owner = state_owner(&state);
        fs::create_dir_all(&state).map_err(io_at(&state))?;
        let state_fd = ensure_dir(&state, None)?;
        let temproots = state.join("temproots");
        let dir = ensure_dir(&temproots, owner)?;
        let name = std::process::id().to_string();
        let path = temproots.join(&name);
        let gc_lock = state.join("gc.lock");
        let open_gc = || -> Result<File> {
            let f = open_lock_file(&state_fd, OsStr::new("gc.lock"), true)
                .map_err(io_at(&gc_lock))?
                .expect("created");
            give(&f, owner).map_err(io_at(&gc_lock))?;
            Ok(f)
        };
        let gc_waiting = || {
            format!(
                "waiting for the garbage collector to finish (it holds {}); the restore goes on \
                 when it is done",
                gc_lock.display()
            )
        };
        let (file, guix_gc) = loop {
            let gc = match layout.flavor {
                Flavor::Guix => {
                    let gc = open_gc()?;
                    lock_saying(&gc, Flavor::Guix, LockMode::Shared, waiting, gc_waiting)
                        .map_err(io_at(&gc_lock))?;
                    Some(gc)
                }
                Flavor::Nix => None,
            };
            // No two live processes share a pid: a file of ours is a dead process's.
            match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::Io(path.clone(), e.into())),
            }
            let file = open_lock_file(&dir, OsStr::new(&name), true)
                .map_err(io_at(&path))?
                .expect("created");
            give(&file, owner).map_err(io_at(&path))?;
            let mode = match layout.flavor {
                Flavor::Guix => LockMode::Shared,
                Flavor::Nix => LockMode::Exclusive,
            };
            lock(&file, layout.flavor, mode, true).map_err(io_at(&path))?;
            // A collector that found the file unlocked in between took it for a dead
            // process's and marked it deleted: start again.
            if file.metadata().map_err(io_at(&path))?.len() == 0 {
                break (file, gc);
            }
            drop(gc);
        };
        // Guix: `gc.lock` stays held shared while this process lives, so no collector starts
        // until the restore is done. Seen with guix-daemon: a collector that started while
        // this process waited for `gc.lock` deleted paths the restore then wrote and
        // registered (its temporary roots notwithstanding); held shared, a collector waits
        // ("waiting for the big garbage collector lock...") instead of running beside it.
        let gc_file = match layout.flavor {
            Flavor::Nix => Some(open_gc()?),
            Flavor::Guix => guix_gc,
        };
        Ok(TempRoots {
            flavor: layout.flavor,
            dir,
            name,
            path,
            file,
            gc_lock,
            gc_file,
            socket_path: state.join("gc-socket").join("socket"),
            socket: None,
            listed: 0,
            told: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many roots were added.
    pub fn len(&self) -> usize {
        self.listed
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.listed == 0
    }

    /// Make `roots` (full store paths, as the daemon spells them) temporary roots: once this
    /// returns, no collector deletes them until the file is removed. Waits (Guix) while a
    /// collector is reading roots; tells a running collector (Nix).
    ///
    /// # Errors
    /// [`Error::Io`] naming our file, `gc.lock` or the collector's socket.
    pub fn add<S: AsRef<str>>(
        &mut self,
        roots: &[S],
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        if roots.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for r in roots {
            let r = r.as_ref();
            if r.contains('\0') || r.contains('\n') {
                return Err(Error::Integrity(format!(
                    "temporary root `{}` holds a NUL or a newline",
                    r.escape_debug()
                )));
            }
            text.extend_from_slice(r.as_bytes());
            text.push(0);
        }
        // Said once per process: a restore adds roots many times while collectors come and go.
        let already = self.told;
        let said = std::sync::atomic::AtomicBool::new(false);
        let once = |m: &str| {
            if !already && !said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                waiting(m);
            }
        };
        let waiting: &(dyn Fn(&str) + Sync) = &once;
        match self.flavor {
            Flavor::Guix => {
                let path = self.path.clone();
                lock_saying(
                    &self.file,
                    Flavor::Guix,
                    LockMode::Exclusive,
                    waiting,
                    || {
                        format!(
                            "waiting for the garbage collector to finish (it holds a lock on \
                             {}); the restore goes on when it is done",
                            path.display()
                        )
                    },
                )
                .map_err(io_at(&self.path))?;
                let r = (&self.file).write_all(&text);
                lock(&self.file, Flavor::Guix, LockMode::Shared, true)
                    .map_err(io_at(&self.path))?;
                r.map_err(io_at(&self.path))?;
            }
            Flavor::Nix => self.add_nix(roots, &text, waiting)?,
        }
        self.told |= said.into_inner();
        self.listed += roots.len();
        Ok(())
    }

    fn add_nix<S: AsRef<str>>(
        &mut self,
        roots: &[S],
        text: &[u8],
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        let gc = self.gc_file.take().expect("Nix keeps gc.lock open");
        let r = self.add_nix_with(&gc, roots, text, waiting);
        self.gc_file = Some(gc);
        r
    }

    fn add_nix_with<S: AsRef<str>>(
        &mut self,
        gc: &File,
        roots: &[S],
        text: &[u8],
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        let start = Instant::now();
        let mut told = false;
        loop {
            if lock(gc, Flavor::Nix, LockMode::Shared, false).map_err(io_at(&self.gc_lock))? {
                // No collector runs, and none starts before the roots are in the file.
                let r = (&self.file).write_all(text);
                let _ = rustix::fs::flock(gc, FlockOperation::Unlock);
                return r.map_err(io_at(&self.path));
            }
            match self.tell_collector(roots) {
                Ok(()) => return (&self.file).write_all(text).map_err(io_at(&self.path)),
                Err(e) if start.elapsed() < SOCKET_PATIENCE => {
                    // Not listening yet, or gone: look at gc.lock again.
                    if !told {
                        waiting(&format!(
                            "waiting for the garbage collector (it holds {}; its socket {}: \
                             {e}); the restore goes on when it answers or finishes",
                            self.gc_lock.display(),
                            self.socket_path.display()
                        ));
                        told = true;
                    }
                    self.socket = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => {
                    // A collector without a socket (Nix before 2.4): wait for it to finish.
                    self.socket = None;
                    let lock_path = self.gc_lock.clone();
                    lock_saying(gc, Flavor::Nix, LockMode::Shared, waiting, || {
                        format!(
                            "waiting for the garbage collector to finish (it holds {}); the \
                             restore goes on when it is done",
                            lock_path.display()
                        )
                    })
                    .map_err(io_at(&self.gc_lock))?;
                    let r = (&self.file).write_all(text);
                    let _ = rustix::fs::flock(gc, FlockOperation::Unlock);
                    return r.map_err(io_at(&self.path));
                }
            }
        }
    }

    /// Send each root to the running collector and wait for its acknowledgement (it answers
    /// only once it is not deleting that path).
    fn tell_collector<S: AsRef<str>>(&mut self, roots: &[S]) -> io::Result<()> {
        if self.socket.is_none() {
            self.socket = Some(UnixStream::connect(&self.socket_path)?);
        }
        let s = self.socket.as_mut().expect("connected");
        for r in roots {
            s.write_all(r.as_ref().as_bytes())?;
            s.write_all(b"\n")?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)?;
            if ack != *b"1" {
                return Err(io::Error::other(format!(
                    "{}: the collector answered {:?}, not 1",
                    self.socket_path.display(),
                    ack[0] as char
                )));
            }
        }
        Ok(())
    }
}

fn give(f: &File, owner: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((u, g)) = owner {
        let m = f.metadata()?;
        if (m.uid(), m.gid()) != (u, g) {
            std::os::unix::fs::fchown(f, Some(u), Some(g))?;
        }
    }
    Ok(())
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        self.socket = None;
        let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
    }
}

/// Whether the process `pid` holds its temporary roots file in `layout`'s state directory (it
/// is alive and a store client): the file exists and cannot be locked exclusively. Never
/// asked about this process (opening and closing its own file would drop its POSIX locks).
pub fn holds_temp_roots(layout: &Layout, pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let dir = layout.state_dir().join("temproots");
    let Ok(d) = rustix::fs::open(
        &dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    match open_lock_file(&d, OsStr::new(&pid.to_string()), false) {
        Ok(Some(f)) => !lock(&f, layout.flavor, LockMode::Exclusive, false).unwrap_or(false),
        Ok(None) => false,
        // Unreadable: assume it is in use.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots_in(path: &Path) -> Vec<String> {
        fs::read(path)
            .unwrap()
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn roots_are_listed_nul_terminated_and_the_file_goes_on_drop() {
        for flavor in [Flavor::Guix, Flavor::Nix] {
            let root = tempfile::tempdir().unwrap();
            let layout = Layout::new(flavor, root.path(), None, None).unwrap();
            let stale = layout.state_dir().join("temproots");
            fs::create_dir_all(&stale).unwrap();
            let mine = stale.join(std::process::id().to_string());
            fs::write(&mine, b"/old\0").unwrap();
            let mut t = TempRoots::create(&layout, &|_| {}).unwrap();
            assert_eq!(t.path(), mine);
            assert!(
                roots_in(&mine).is_empty(),
                "a stale file of our pid is replaced"
            );
            let store = layout.store_dir.as_str();
            let a = format!("{store}/{}-a", "1".repeat(32));
            let b = format!("{store}/{}-b", "2".repeat(32));
            t.add(&[&a], &|_| {}).unwrap();
            t.add(&[&b], &|_| {}).unwrap();
            assert_eq!(roots_in(&mine), vec![a, b]);
            assert_eq!(t.len(), 2);
            assert!(t.add(&["x\ny"], &|_| {}).is_err());
            drop(t);
            assert!(!mine.exists());
            assert!(layout.state_dir().join("gc.lock").exists());
        }
    }

    #[test]
    fn a_dead_pid_holds_no_roots() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(Flavor::Nix, root.path(), None, None).unwrap();
        let dir = layout.state_dir().join("temproots");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("4000000"), b"").unwrap();
        assert!(!holds_temp_roots(&layout, 4_000_000));
        assert!(!holds_temp_roots(&layout, 4_000_001));
        assert!(holds_temp_roots(&layout, std::process::id()));
    }
}
