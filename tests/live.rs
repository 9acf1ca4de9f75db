//! Restore into a live store (issue 16): the store-client protocol checked against the
//! daemons' side of it, played by this test process: workers holding the big-lock, a
//! collector holding `gc.lock` before the restore starts, collectors running in a loop that
//! delete whatever is not protected (Guix: invalid entries that are not temporary roots; Nix:
//! entries that are not store paths or whose hash part is not a root, told through its
//! socket), and a builder holding a path's lock and making it valid meanwhile.
//!
//! The restore runs as a child process: POSIX locks do not conflict within one process.

mod util;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storesync::db::{self, BigLock};
use storesync::sample;
use storesync::store::layout::{Flavor, Layout};
use storesync::store::locks::{delete_lock_file, lock, open_lock_file, LockMode};
use storesync::store::path::StorePath;
use util::{assert_registered_paths_are_on_disk, json, World};

/// A world whose cache holds a snapshot of the sample store `src`.
fn saved(flavor: Flavor) -> World {
    let w = World::new(flavor);
    sample::build(&w.layout("src"), 1).unwrap();
    w.cmd("src")
        .args(["save", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    w
}

/// A restore running as a child, its stderr collected as it comes.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

fn spawn_restore(w: &World, root: &str, extra: &[&str]) -> Running {
    let mut c = w.std_cmd(root);
    c.args(["--json", "restore", "--cache"])
        .arg(w.cache_dir())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = BufReader::new(child.stderr.take().unwrap());
    let sink = stderr.clone();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        while pipe.read_line(&mut line).unwrap_or(0) > 0 {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    Running {
        child,
        stderr,
        reader,
    }
}

impl Running {
    fn wait_for_stderr(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.stderr.lock().unwrap().contains(needle) {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!(
                    "restore ended ({s}) before saying {needle:?}: {}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never said {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn finish(mut self) -> (i32, serde_json::Value, String) {
        let mut out = Vec::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        let err = self.stderr.lock().unwrap().clone();
        let v = if out.is_empty() {
            serde_json::Value::Null
        } else {
            json(&out)
        };
        (status.code().unwrap_or(-1), v, err)
    }
}

fn complete(code: i32, report: &serde_json::Value, err: &str) {
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0, "{report}");
}

fn open_state_lock(layout: &Layout, name: &str) -> File {
    let state = layout.state_dir();
    fs::create_dir_all(&state).unwrap();
    open_lock_file(File::open(&state).unwrap(), OsStr::new(name), true)
        .unwrap()
        .unwrap()
}

#[test]
fn workers_holding_the_big_lock_shared_do_not_block_a_restore_an_exclusive_holder_does() {
    for flavor in [Flavor::Guix, Flavor::Nix] {
        let w = saved(flavor);
        let dst = w.layout("dst");
        let worker = BigLock::shared(&dst.big_lock_file(), flavor, false).unwrap();
        let (code, report, err) = spawn_restore(&w, "dst", &[]).finish();
        complete(code, &report, &err);
        drop(worker);
        // A schema upgrade holds it exclusively: busy without --wait, waited for with it.
        let dst2 = w.layout("dst2");
        let upgrade = BigLock::acquire(&dst2.big_lock_file(), flavor, false).unwrap();
        let (code, _, err) = spawn_restore(&w, "dst2", &[]).finish();
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("held exclusively") && err.contains("--wait"),
            "{err}"
        );
        let mut r = spawn_restore(&w, "dst2", &["--wait"]);
        std::thread::sleep(Duration::from_millis(500));
        assert!(r.running(), "--wait must wait for the exclusive holder");
        drop(upgrade);
        let (code, report, err) = r.finish();
        complete(code, &report, &err);
        assert_registered_paths_are_on_disk(&dst2);
    }
}

#[test]
fn a_guix_collector_running_before_the_restore_is_waited_for_then_the_restore_completes() {
    let w = saved(Flavor::Guix);
    let dst = w.layout("dst");
    let gc = open_state_lock(&dst, "gc.lock");
    assert!(lock(&gc, Flavor::Guix, LockMode::Exclusive, false).unwrap());
    let mut r = spawn_restore(&w, "dst", &[]);
    r.wait_for_stderr("waiting for the garbage collector to finish");
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.running());
    let store_entries = |l: &Layout| {
        fs::read_dir(l.real_store_dir())
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        store_entries(&dst),
        0,
        "nothing is written while the collector runs"
    );
    drop(gc);
    let (code, report, err) = r.finish();
    complete(code, &report, &err);
    assert_eq!(report["restored"], report["planned"]);
    assert_registered_paths_are_on_disk(&dst);
    assert!(!dst
        .state_dir()
        .join("temproots")
        .read_dir()
        .unwrap()
        .any(|_| true));
}

#[test]
fn a_nix_collector_running_before_the_restore_is_told_every_root_through_its_socket() {
    let w = saved(Flavor::Nix);
    let src = db::read(&w.layout("src")).unwrap();
    let dst = w.layout("dst");
    let gc = open_state_lock(&dst, "gc.lock");
    assert!(lock(&gc, Flavor::Nix, LockMode::Exclusive, false).unwrap());
    let sock = dst.state_dir().join("gc-socket/socket");
    fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let roots = Arc::new(Mutex::new(Roots::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (l, roots, stop) = (
            UnixListener::bind(&sock).unwrap(),
            roots.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || serve_roots(l, roots, stop))
    };
    // Nix clients do not wait for the collector: they tell it.
    let (code, report, err) = spawn_restore(&w, "dst", &[]).finish();
    complete(code, &report, &err);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let roots = roots.lock().unwrap();
    for p in &src.paths {
        assert!(
            roots.paths.contains(&dst.store_dir.display(&p.path)),
            "{}",
            p.path
        );
    }
    let scratch = roots
        .paths
        .iter()
        .filter(|p| p.contains("-storesync-"))
        .count();
    assert!(
        scratch > src.paths.len(),
        "every scratch name is told: {scratch}"
    );
    assert_registered_paths_are_on_disk(&dst);
}

/// Roots a fake collector knows of: whole paths (Guix) and hash parts (Nix).
#[derive(Default)]
struct Roots {
    paths: HashSet<String>,
    hashes: HashSet<String>,
}

impl Roots {
    fn add(&mut self, p: &str) {
        let base = p.rsplit('/').next().unwrap_or(p);
        self.hashes
            .insert(base.get(..32).unwrap_or(base).to_owned());
        self.paths.insert(p.to_owned());
    }
}

/// One run of a fake collector over `layout`'s store, following `flavor`'s daemon: everything
/// that is neither reachable from a valid permanent root nor a temporary root is deleted (a
/// valid path is invalidated first). Returns the names deleted.
fn collect(layout: &Layout, permanent: &HashSet<String>, roots: &Mutex<Roots>) -> Vec<String> {
    let flavor = layout.flavor;
    let mut kept_fds = Vec::new();
    // Read the temporary roots files, as readTempRoots / findTempRoots do.
    let tdir = layout.state_dir().join("temproots");
    for e in fs::read_dir(&tdir).into_iter().flatten().flatten() {
        let Ok(mut f) = fs::OpenOptions::new().read(true).write(true).open(e.path()) else {
            continue;
        };
        if lock(&f, flavor, LockMode::Exclusive, false).unwrap() {
            let _ = fs::remove_file(e.path());
            let _ = f.write_all(b"d");
            continue;
        }
        if flavor == Flavor::Guix {
            lock(&f, flavor, LockMode::Shared, true).unwrap();
        }
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        for r in text.split('\0').filter(|r| !r.is_empty()) {
            roots.lock().unwrap().add(r);
        }
        kept_fds.push(f);
    }
    let store_dir = layout.store_dir.as_str();
    let mut deleted = Vec::new();
    if !layout.db_file().exists() {
        return deleted;
    }
    let conn = rusqlite::Connection::open(layout.db_file()).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let contents = db::read(layout).unwrap();
    let valid: BTreeMap<String, Vec<String>> = contents
        .paths
        .iter()
        .map(|p| {
            let refs = p
                .references
                .iter()
                .map(|r| layout.store_dir.display(r))
                .collect();
            (layout.store_dir.display(&p.path), refs)
        })
        .collect();
    // Held while deciding and deleting: a root told meanwhile is acknowledged after.
    let roots = roots.lock().unwrap();
    let is_root = |full: &str, name: &str| match flavor {
        Flavor::Guix => roots.paths.contains(full),
        Flavor::Nix => name.get(..32).is_some_and(|h| roots.hashes.contains(h)),
    };
    let mut live: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = valid
        .keys()
        .filter(|p| permanent.contains(*p) || is_root(p, p.rsplit('/').next().unwrap()))
        .cloned()
        .collect();
    while let Some(p) = todo.pop() {
        if live.insert(p.clone()) {
            todo.extend(valid[&p].iter().filter(|r| valid.contains_key(*r)).cloned());
        }
    }
    let real = layout.real_store_dir();
    for e in fs::read_dir(&real).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".links" {
            continue;
        }
        let full = format!("{store_dir}/{name}");
        let keep = if valid.contains_key(&full) {
            live.contains(&full)
        } else {
            match flavor {
                Flavor::Guix => {
                    is_root(&full, &name)
                        || name
                            .strip_suffix(".lock")
                            .is_some_and(|p| is_root(&format!("{store_dir}/{p}"), p))
                }
                Flavor::Nix => StorePath::from_base_name(&name).is_ok() && is_root(&full, &name),
            }
        };
        if keep {
            continue;
        }
        if valid.contains_key(&full) {
            let id: i64 = conn
                .query_row("select id from ValidPaths where path = ?1", [&full], |r| {
                    r.get(0)
                })
                .unwrap();
            conn.execute_batch("begin immediate").unwrap();
            conn.execute(
                "delete from Refs where referrer = ?1 or reference = ?1",
                [id],
            )
            .unwrap();
            conn.execute("delete from DerivationOutputs where drv = ?1", [id])
                .unwrap();
            conn.execute("delete from ValidPaths where id = ?1", [id])
                .unwrap();
            conn.execute_batch("commit").unwrap();
        }
        storesync::store::fs::remove_tree(&e.path()).unwrap();
        deleted.push(name);
    }
    drop(kept_fds);
    deleted
}

/// A Nix collector's socket: each line a root, acknowledged with `1` once recorded.
fn serve_roots(listener: UnixListener, roots: Arc<Mutex<Roots>>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).unwrap();
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                let roots = roots.clone();
                let s2 = s.try_clone().unwrap();
                conns.push(s2);
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { break };
                        roots.lock().unwrap().add(&line);
                        if w.write_all(b"1").is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    for c in conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
}

#[test]
fn collectors_running_in_a_loop_delete_nothing_a_restore_protects() {
    for flavor in [Flavor::Guix, Flavor::Nix] {
        let w = saved(flavor);
        let src = db::read(&w.layout("src")).unwrap();
        let dst = w.layout("dst");
        let referenced: HashSet<&StorePath> = src
            .paths
            .iter()
            .flat_map(|p| p.references.iter().filter(move |r| **r != p.path))
            .collect();
        // Some of the closure valid already, unreferenced: a collector's prey until the
        // restore makes it a temporary root.
        let leaf = src
            .paths
            .iter()
            .find(|p| p.references.iter().all(|r| *r == p.path) && referenced.contains(&p.path))
            .unwrap();
        let leaf_full = dst.store_dir.display(&leaf.path);
        let (code, report, err) = spawn_restore(&w, "dst", &[&leaf_full]).finish();
        complete(code, &report, &err);
        // Decoys every collector deletes: proof that it ran.
        let store = dst.real_store_dir();
        fs::create_dir(store.join(format!("{}-decoy", "0".repeat(32)))).unwrap();
        fs::write(store.join(".junk"), b"x").unwrap();
        // The user's profile: the snapshot's top paths, roots once valid.
        let permanent: HashSet<String> = src
            .paths
            .iter()
            .filter(|p| !referenced.contains(&p.path))
            .map(|p| dst.store_dir.display(&p.path))
            .collect();
        let roots = Arc::new(Mutex::new(Roots::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let runs = AtomicUsize::new(0);
        let deleted = Mutex::new(Vec::new());
        // The collector loops from before the restore starts until after it ends.
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let gc = open_state_lock(&dst, "gc.lock");
                    if !lock(&gc, flavor, LockMode::Exclusive, false).unwrap() {
                        continue;
                    }
                    *roots.lock().unwrap() = Roots::default();
                    let server_stop = Arc::new(AtomicBool::new(false));
                    let server = (flavor == Flavor::Nix).then(|| {
                        let sock = dst.state_dir().join("gc-socket/socket");
                        fs::create_dir_all(sock.parent().unwrap()).unwrap();
                        let _ = fs::remove_file(&sock);
                        let l = UnixListener::bind(&sock).unwrap();
                        let (roots, server_stop) = (roots.clone(), server_stop.clone());
                        std::thread::spawn(move || serve_roots(l, roots, server_stop))
                    });
                    let gone = collect(&dst, &permanent, &roots);
                    deleted.lock().unwrap().extend(gone);
                    server_stop.store(true, Ordering::Relaxed);
                    if let Some(t) = server {
                        t.join().unwrap();
                        let _ = fs::remove_file(dst.state_dir().join("gc-socket/socket"));
                    }
                    drop(gc);
                    runs.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            while runs.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut r = spawn_restore(&w, "dst", &[]);
            while r.running() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let after = runs.load(Ordering::Relaxed);
            while runs.load(Ordering::Relaxed) == after {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Relaxed);
            r
        });
        let (code, report, err) = r.finish();
        complete(code, &report, &err);
        assert!(
            runs.load(Ordering::Relaxed) >= 2,
            "{flavor:?}: the collector hardly ran"
        );
        let deleted = deleted.into_inner().unwrap();
        assert!(
            deleted.iter().any(|n| n.ends_with("-decoy")),
            "{flavor:?}: {deleted:?}"
        );
        assert!(
            deleted.iter().any(|n| n == ".junk"),
            "{flavor:?}: {deleted:?}"
        );
        // The already valid leaf may go before the restore protects it (then it is written
        // again); nothing the restore creates may go.
        let ours: Vec<_> = deleted
            .iter()
            .filter(|n| !n.ends_with("-decoy") && *n != ".junk" && *n != leaf.path.base_name())
            .collect();
        assert!(
            ours.is_empty(),
            "{flavor:?}: the collector deleted {ours:?}"
        );
        assert_registered_paths_are_on_disk(&dst);
        let rows = util::db_rows(&dst);
        for p in &src.paths {
            assert!(
                rows.paths.contains_key(&dst.store_dir.display(&p.path)),
                "{}",
                p.path
            );
        }
    }
}

#[test]
fn a_path_the_daemon_builds_meanwhile_is_waited_for_and_left_as_it_made_it() {
    for flavor in [Flavor::Guix, Flavor::Nix] {
        let w = saved(flavor);
        let src_layout = w.layout("src");
        let src = db::read(&src_layout).unwrap();
        let dst = w.layout("dst");
        let leaf = src
            .paths
            .iter()
            .find(|p| p.references.iter().all(|r| *r == p.path))
            .unwrap();
        let base = leaf.path.base_name().to_owned();
        // The daemon is building the leaf: it holds its lock.
        let store = dst.real_store_dir();
        fs::create_dir_all(&store).unwrap();
        let sfd = File::open(&store).unwrap();
        let name = format!("{base}.lock");
        let held = open_lock_file(&sfd, OsStr::new(&name), true)
            .unwrap()
            .unwrap();
        assert!(lock(&held, flavor, LockMode::Exclusive, false).unwrap());
        let mut r = spawn_restore(&w, "dst", &[]);
        r.wait_for_stderr("waiting for the lock on");
        assert!(r.running());
        // Guix: while the restore runs it holds gc.lock shared, so no collector can start
        // (seen with guix-daemon: one that did deleted paths the restore then registered).
        if flavor == Flavor::Guix {
            let gc = open_state_lock(&dst, "gc.lock");
            assert!(
                !lock(&gc, flavor, LockMode::Exclusive, false).unwrap(),
                "a collector could start during the restore"
            );
        }
        // It finishes: the output on disk, then registered, then the lock released.
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(src_layout.real_store_dir().join(&base))
            .arg(&store)
            .status()
            .unwrap();
        assert!(status.success());
        let inode =
            |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(p).unwrap());
        let built = inode(&store.join(&base));
        let mut conn = db::open_or_create(&dst).unwrap();
        db::register(&mut conn, &dst, &[leaf], &[]).unwrap();
        drop(conn);
        delete_lock_file(&sfd, OsStr::new(&name), &held);
        drop(held);
        let (code, report, err) = r.finish();
        complete(code, &report, &err);
        let full = dst.store_dir.display(&leaf.path);
        assert_eq!(
            report["became_valid"],
            serde_json::json!([full]),
            "{report}"
        );
        assert!(!report["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some(full.as_str())));
        assert_eq!(
            inode(&store.join(&base)),
            built,
            "the daemon's output was rewritten"
        );
        assert_registered_paths_are_on_disk(&dst);
        let rows = util::db_rows(&dst);
        assert_eq!(rows.paths.len(), src.paths.len());
        assert!(
            !store.join(&name).exists(),
            "lock files are deleted after use"
        );
    }
}

/// Whether this process may raise its hard limit of open files (root with
/// `CAP_SYS_RESOURCE`); a child restore may then raise its own instead of being bound by it.
fn can_raise_hard_nofile() -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    match lim.maximum {
        None => true,
        Some(max) => {
            let mut up = lim;
            up.maximum = Some(max + 1);
            setrlimit(Resource::Nofile, up).is_ok()
        }
    }
}

#[test]
fn more_missing_paths_than_path_locks_take_the_big_lock_exclusively_when_no_client_runs() {
    // 300 one-file paths, restored with 256 descriptors: more than can be locked one by one.
    let n = 300;
    for flavor in [Flavor::Guix, Flavor::Nix] {
        let w = World::new(flavor);
        let src = w.layout("src");
        for i in 0..n {
            let base = util::base_name(i, &format!("p{i}"));
            util::add_files_path(&src, &base, &[("f", format!("{i}").as_bytes(), false)], &[]);
        }
        w.cmd("src")
            .args(["save", "--cache"])
            .arg(w.cache_dir())
            .assert()
            .success();
        let capped = |root: &str| {
            let mut c = w.std_cmd(root);
            c.args(["--json", "restore", "--cache"]).arg(w.cache_dir());
            // SAFETY: only an async-signal-safe system call between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                    let lim = rustix::process::Rlimit {
                        current: Some(256),
                        maximum: Some(256),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)
                        .map_err(std::io::Error::from)
                });
            }
            c.output().unwrap()
        };
        let bounded = !can_raise_hard_nofile();
        // No other store client: the big-lock is taken exclusively, everything restored.
        let out = capped("dst");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(json(&out.stdout)["restored"], n, "{err}");
        if bounded {
            assert!(err.contains("held exclusively instead"), "{err}");
        }
        assert_registered_paths_are_on_disk(&w.layout("dst"));
        // A worker holds it shared: the restore cannot lock every path, says so and what to
        // do, and changes nothing.
        if bounded {
            let dst2 = w.layout("dst2");
            let worker = BigLock::shared(&dst2.big_lock_file(), flavor, false).unwrap();
            let out = capped("dst2");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            assert!(
                err.contains("ulimit -n") && err.contains("clients are running"),
                "{err}"
            );
            drop(worker);
            assert!(db::read(&dst2).map(|c| c.paths.is_empty()).unwrap_or(true));
        }
    }
}

/// A Guix path of a 222-character name (a 255-byte file name) has no lock file: its
/// `<path>.lock` would be 260 bytes (`ENAMETOOLONG`), which the daemon cannot take either,
/// so it cannot write that path. Another restore could: with no other store client the
/// big-lock is taken exclusively instead, said on stderr, and the path restored; with a
/// worker holding it shared, the restore fails naming the path and why, and changes nothing.
#[test]
fn a_path_too_long_to_lock_takes_the_big_lock_exclusively_when_no_client_runs() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let long = util::base_name(7, &"n".repeat(222));
    util::add_files_path(&src, &long, &[("f", b"long", false)], &[]);
    w.cmd("src")
        .args(["save", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let restore = |root: &str| {
        w.std_cmd(root)
            .args(["--json", "restore", "--cache"])
            .arg(w.cache_dir())
            .output()
            .unwrap()
    };
    let out = restore("dst");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(json(&out.stdout)["restored"], 1, "{err}");
    assert!(
        err.contains(&long) && err.contains("held exclusively instead"),
        "{err}"
    );
    assert_registered_paths_are_on_disk(&w.layout("dst"));

    let dst2 = w.layout("dst2");
    let worker = BigLock::shared(&dst2.big_lock_file(), Flavor::Guix, false).unwrap();
    let out = restore("dst2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("/gnu/store/{long}")) && err.contains("clients are running"),
        "{err}"
    );
    drop(worker);
    assert!(db::read(&dst2).map(|c| c.paths.is_empty()).unwrap_or(true));
    assert!(!dst2.real_store_dir().join(&long).exists());
}
