//! Crash safety, through the real binary only (each test drives `storesync` as a child process
//! and then reads the cache, the store and the DB), so the tests hold whatever the internals
//! look like:
//!
//! - `save` killed with SIGKILL at seeded random instants: the cache still verifies, every
//!   snapshot in it restores completely, and a second save completes.
//! - `restore` killed at random instants, into an empty root and onto a root holding an older
//!   generation: every registered path is on disk with its hash, the DB names nothing else,
//!   and a second restore completes the store and removes the leftovers.
//! - `save` and `restore` out of space on a small tmpfs (needs root to mount; skipped
//!   otherwise): a clear error, nothing half-done published or registered, and a rerun with
//!   room works.
//!
//! `STORESYNC_CRASH_CASES` (default 6) sets the kills per test, `STORESYNC_CRASH_SEED` the
//! seed (`just soak` runs many more); every assertion names the seed and the case.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use storesync::db;
use storesync::nar;
use storesync::store::fs::remove_tree;
use storesync::store::layout::{Flavor, Layout};
use storesync::store::path::{nixbase32_encode, StorePath};
use storesync::store::PathInfo;
use util::{check_clean, db_rows, leftovers, DbRows, Tmpfs, World};

// ---------------------------------------------------------------------------------------------
// Seeded randomness and configuration.

/// xorshift64* seeded through splitmix64: small and deterministic, so a failing case replays
/// from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            };
            parsed.unwrap_or_else(|| panic!("{key}={v}: not a number"))
        }
        Err(_) => default,
    }
}

/// Kills per test.
fn cases() -> u64 {
    env_u64("STORESYNC_CRASH_CASES", 6)
}

/// The seed of the kill instants (the store contents are fixed).
fn seed() -> u64 {
    env_u64("STORESYNC_CRASH_SEED", 0xc4a5_4ed5)
}

// ---------------------------------------------------------------------------------------------
// A generated store, large enough that save and restore take a while.

/// Items of generation 1; generation 2 adds [`GEN2_ITEMS`] more, referring to the first ones.
const GEN1_ITEMS: usize = 60;
const GEN2_ITEMS: usize = 30;

fn item_path(i: usize) -> StorePath {
    let mut r = Rng::new(0x5707_e000 ^ ((i as u64) << 20));
    let hash = nixbase32_encode(&r.bytes(20));
    StorePath::from_base_name(&format!("{hash}-crash-item-{i}")).expect("a valid name")
}

/// Compressible text of `n` bytes.
fn text(r: &mut Rng, n: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "store",
        "path",
        "guix",
        "nix",
        "closure",
        "reference",
        "derivation",
        "hash",
        "sha256",
        "output",
        "build",
        "daemon",
        "profile",
        "lib",
        "bin",
        "share",
    ];
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        let x = r.next();
        v.extend_from_slice(WORDS[(x & 15) as usize].as_bytes());
        v.push(if (x >> 8) % 12 == 0 { b'\n' } else { b' ' });
    }
    v.truncate(n);
    v
}

/// Contents several items hold (8 KiB or more: shared through `.links` once restored).
fn shared_blob(k: u64) -> Vec<u8> {
    let mut r = Rng::new(0x05a4_ed00 ^ k);
    let n = r.between(8 * 1024, 64 * 1024) as usize;
    text(&mut r, n)
}

/// Write item `i` (files of 0 to 700 KiB, random or text, some shared with other items, a
/// symlink, references to earlier items and sometimes to itself) and return its DB row.
fn write_item(layout: &Layout, i: usize) -> PathInfo {
    let mut r = Rng::new(0x0f11_e500 ^ ((i as u64) << 20));
    let path = item_path(i);
    let top = layout.real_store_dir().join(path.base_name());
    for d in ["", "bin", "lib", "share", "share/doc"] {
        fs::create_dir(top.join(d)).unwrap();
    }
    for f in 0..r.between(3, 10) {
        let dir = ["bin", "lib", "share/doc"][r.below(3) as usize];
        let size = match r.below(100) {
            0..=59 => r.between(0, 12 * 1024),
            60..=84 => r.between(12 * 1024, 96 * 1024),
            85..=96 => r.between(96 * 1024, 300 * 1024),
            _ => r.between(300 * 1024, 700 * 1024),
        } as usize;
        let contents = match r.below(10) {
            0..=1 => shared_blob(r.below(6)),
            2..=5 => r.bytes(size),
            _ => text(&mut r, size),
        };
        let p = top.join(dir).join(format!("f{f}"));
        fs::write(&p, &contents).unwrap();
        if dir == "bin" {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::os::unix::fs::symlink("bin", top.join("sbin")).unwrap();
    let mut references: Vec<StorePath> = (0..r.below(4))
        .filter(|_| i > 0)
        .map(|_| item_path(r.below(i as u64) as usize))
        .collect();
    if r.below(3) == 0 {
        references.push(path.clone());
    }
    references.sort();
    references.dedup();
    let listing: String = references
        .iter()
        .map(|p| layout.store_dir.display(p) + "\n")
        .collect();
    fs::write(top.join("share/doc/refs"), listing).unwrap();
    storesync::sample::canonicalise(&top).unwrap();
    let (nar_hash, nar_size) = nar::hash_path(&top).unwrap();
    PathInfo {
        path,
        nar_hash,
        nar_size,
        registration_time: 1_700_000_000 + i as i64,
        deriver: None,
        references,
        nix: None,
    }
}

/// Write and register the items of a generation (1 or 2).
fn build_generation(layout: &Layout, generation: u32) {
    let items = if generation == 1 {
        0..GEN1_ITEMS
    } else {
        GEN1_ITEMS..GEN1_ITEMS + GEN2_ITEMS
    };
    fs::create_dir_all(layout.real_store_dir()).unwrap();
    let infos: Vec<PathInfo> = items.map(|i| write_item(layout, i)).collect();
    let mut conn = db::open_or_create(layout).unwrap();
    let refs: Vec<&PathInfo> = infos.iter().collect();
    db::register(&mut conn, layout, &refs, &[]).unwrap();
}

/// Write and register one item holding a single incompressible file of `size` bytes.
fn add_big_item(layout: &Layout, name: &str, size: usize) {
    let mut r = Rng::new(size as u64);
    let hash = nixbase32_encode(&r.bytes(20));
    let path = StorePath::from_base_name(&format!("{hash}-{name}")).unwrap();
    let top = layout.real_store_dir().join(path.base_name());
    fs::create_dir(&top).unwrap();
    fs::write(top.join("data.bin"), r.bytes(size)).unwrap();
    storesync::sample::canonicalise(&top).unwrap();
    let (nar_hash, nar_size) = nar::hash_path(&top).unwrap();
    let info = PathInfo {
        path,
        nar_hash,
        nar_size,
        registration_time: 1_700_000_000,
        deriver: None,
        references: vec![],
        nix: None,
    };
    let mut conn = db::open_or_create(layout).unwrap();
    db::register(&mut conn, layout, &[&info], &[]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Child processes: bounded in time, killed on demand.

/// Any child still running after this is killed and the test fails.
const TIMEOUT: Duration = Duration::from_secs(300);

struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
    fn json(&self) -> serde_json::Value {
        util::json(&self.stdout)
    }
}

/// Output files of the child runs, numbered so that each run keeps its own.
struct Logs {
    dir: PathBuf,
    n: std::cell::Cell<u64>,
}

impl Logs {
    fn new(w: &World) -> Self {
        let dir = w.root("logs");
        fs::create_dir_all(&dir).unwrap();
        Logs {
            dir,
            n: std::cell::Cell::new(0),
        }
    }

    fn spawn(&self, mut cmd: Command) -> (Child, PathBuf, PathBuf) {
        let n = self.n.get();
        self.n.set(n + 1);
        let out = self.dir.join(format!("{n}.out"));
        let err = self.dir.join(format!("{n}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        (child, out, err)
    }

    fn collect(status: ExitStatus, out: &Path, err: &Path, elapsed: Duration) -> Run {
        let stdout = fs::read(out).unwrap();
        let stderr = String::from_utf8_lossy(&fs::read(err).unwrap()).into_owned();
        let _ = fs::remove_file(out);
        let _ = fs::remove_file(err);
        Run {
            status,
            stdout,
            stderr,
            elapsed,
        }
    }

    /// Run to completion (killed, and the test failed, after [`TIMEOUT`]).
    fn run(&self, cmd: Command, ctx: &str) -> Run {
        let what = format!("{cmd:?}");
        let start = Instant::now();
        let (mut child, out, err) = self.spawn(cmd);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Self::collect(status, &out, &err, start.elapsed());
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{ctx}: still running after {TIMEOUT:?}, killed: {what}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Run, and SIGKILL the child once `delay` has passed since the spawn (or once `when`
    /// says so). `Ok` with the elapsed time when it was killed, `Err` with the run when it
    /// ended before. Still running after [`TIMEOUT`]: killed, and the test fails.
    fn run_killed(
        &self,
        cmd: Command,
        delay: Duration,
        when: &mut dyn FnMut() -> bool,
    ) -> Result<Duration, Run> {
        let cmd_text = format!("{cmd:?}");
        let start = Instant::now();
        let (mut child, out, err) = self.spawn(cmd);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(Self::collect(status, &out, &err, start.elapsed()));
            }
            let elapsed = start.elapsed();
            if elapsed >= TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("still running after {TIMEOUT:?}, killed: {cmd_text}");
            }
            if elapsed >= delay || when() {
                let _ = child.kill(); // SIGKILL
                let status = child.wait().unwrap();
                if status.signal() != Some(9) {
                    // It ended by itself between the check and the kill.
                    return Err(Self::collect(status, &out, &err, elapsed));
                }
                let _ = fs::remove_file(&out);
                let _ = fs::remove_file(&err);
                return Ok(elapsed);
            }
            std::thread::sleep((delay - elapsed).min(Duration::from_micros(100)));
        }
    }
}

fn save_cmd(w: &World, root: &str, cache: &Path) -> Command {
    let mut c = w.std_cmd(root);
    c.args(["--json", "save", "--cache"]).arg(cache);
    c
}

fn restore_cmd(w: &World, root: &str, cache: &Path, extra: &[&str]) -> Command {
    let mut c = w.std_cmd(root);
    c.args(["--json", "restore", "--cache"])
        .arg(cache)
        .args(extra);
    c
}

/// A restore printing its failures as text on stderr.
fn plain_restore_cmd(w: &World, root: &str, cache: &Path) -> Command {
    let mut c = w.std_cmd(root);
    c.args(["restore", "--cache"]).arg(cache);
    c
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn remove(path: &Path) {
    remove_tree(path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
}

/// A kill instant: a seeded fraction of how long the uninterrupted run took, from 0 to 1, or
/// in every third case from 0.85 to 1 (the end, where the DB and the snapshot are written).
fn kill_delay(rng: &mut Rng, span: Duration, case: u64) -> Duration {
    let permille = if case % 3 == 2 {
        rng.between(850, 1000)
    } else {
        rng.below(1001)
    };
    span.mul_f64(permille as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// Where the tests work.

/// A [`World`] whose directory is a tmpfs when this process may mount one (root), so that the
/// many trees written and removed cost no disk I/O: a kill -9 leaves the page cache as it is,
/// so the file system under it makes no difference to what these tests check.
/// `STORESYNC_CRASH_ON_DISK=1` keeps the world on the disk's file system.
struct Scene {
    // Fields drop in order: unmounted first, then the (then empty) directory removed.
    _tmpfs: Option<Tmpfs>,
    w: World,
}

impl std::ops::Deref for Scene {
    type Target = World;
    fn deref(&self) -> &World {
        &self.w
    }
}

fn scene(flavor: Flavor) -> Scene {
    let w = World::new(flavor);
    let on_disk = std::env::var("STORESYNC_CRASH_ON_DISK").is_ok_and(|v| v == "1");
    let tmpfs = if on_disk || rustix::process::geteuid().as_raw() != 0 {
        None
    } else {
        Tmpfs::mount(w.dir.path(), 8 << 20)
    };
    Scene { _tmpfs: tmpfs, w }
}

// ---------------------------------------------------------------------------------------------
// What must hold of a cache, a store and a DB.

/// Snapshot ids in a cache, through `storesync ls`.
fn snapshot_ids(w: &World, logs: &Logs, cache: &Path, ctx: &str) -> Vec<String> {
    let mut c = w.std_cmd("ls-root");
    c.args(["--json", "ls", "--cache"]).arg(cache);
    let r = logs.run(c, ctx);
    assert_eq!(r.code(), Some(0), "{ctx}: ls failed: {}", r.stderr);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// What `storesync verify` says of a cache: its problems other than leftover scratch files in
/// its `tmp/` (which an interrupted save leaves and which no snapshot names), and how many
/// packs the index names.
fn verify(w: &World, logs: &Logs, cache: &Path, ctx: &str) -> (Vec<String>, u64) {
    let mut c = w.std_cmd("verify-root");
    c.args(["--json", "verify", "--cache"]).arg(cache);
    let r = logs.run(c, ctx);
    assert!(
        matches!(r.code(), Some(0 | 1)),
        "{ctx}: verify: {}\n{}",
        r.stderr,
        String::from_utf8_lossy(&r.stdout)
    );
    let v = r.json();
    let tmp = cache.join("tmp").display().to_string();
    let problems: Vec<String> = v["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: verify printed no problems array: {}", r.stderr))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .filter(|p| !p.contains(&tmp))
        .collect();
    assert_eq!(
        r.code() == Some(0),
        v["problems"].as_array().unwrap().is_empty(),
        "{ctx}: verify's exit code and problems disagree: {v}"
    );
    (problems, v["packs"].as_u64().unwrap())
}

fn no_rows() -> DbRows {
    DbRows {
        paths: Default::default(),
        refs: Vec::new(),
        outputs: Vec::new(),
    }
}

/// The DB's rows; none when there is no DB, or no tables in it. SQLite's integrity check
/// passes and no `Refs` or `DerivationOutputs` row names a path that is not valid.
fn rows_of(layout: &Layout, ctx: &str) -> DbRows {
    if !layout.db_file().exists() {
        return no_rows();
    }
    let conn = rusqlite::Connection::open(layout.db_file())
        .unwrap_or_else(|e| panic!("{ctx}: opening the DB: {e}"));
    let q = |sql: &str| -> i64 {
        conn.query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{ctx}: {sql}: {e}"))
    };
    let tables = q("select count(*) from sqlite_master where type = 'table' \
                    and name in ('ValidPaths', 'Refs', 'DerivationOutputs')");
    if tables < 3 {
        // A DB whose creation was interrupted: it may not name any path.
        if tables > 0 && q("select count(*) from sqlite_master where name = 'ValidPaths'") == 1 {
            assert_eq!(
                q("select count(*) from ValidPaths"),
                0,
                "{ctx}: rows in a half-made DB"
            );
        }
        return no_rows();
    }
    let ok: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{ctx}: SQLite integrity check");
    let dangling = q(
        "select count(*) from Refs where referrer not in (select id from ValidPaths) \
                      or reference not in (select id from ValidPaths)",
    ) + q(
        "select count(*) from DerivationOutputs where drv not in (select id from ValidPaths)",
    );
    assert_eq!(dangling, 0, "{ctx}: DB rows naming no valid path");
    drop(conn);
    db_rows(layout)
}

fn store_entry(layout: &Layout, db_path: &str) -> PathBuf {
    layout
        .real_store_dir()
        .join(db_path.rsplit('/').next().unwrap())
}

/// Every registered path has the source's row, is on disk with the registered NAR hash and
/// size, and its references are registered too (with their `Refs` rows). Returns the rows.
fn check_registered(layout: &Layout, source: &DbRows, ctx: &str) -> DbRows {
    let rows = rows_of(layout, ctx);
    let refs: BTreeSet<&(String, String)> = rows.refs.iter().collect();
    for (path, row) in &rows.paths {
        assert_eq!(
            Some(row),
            source.paths.get(path),
            "{ctx}: {path}: the registered row is not the source's"
        );
        let (hash, size) = nar::hash_path(&store_entry(layout, path))
            .unwrap_or_else(|e| panic!("{ctx}: {path} is registered but not on disk: {e}"));
        assert_eq!(
            storesync::store::path_info::NarHash::parse_db(&row.0),
            Some(hash),
            "{ctx}: {path} is registered, its content does not match"
        );
        assert_eq!(row.3, size as i64, "{ctx}: {path}: NAR size");
        for want in source.refs.iter().filter(|(a, _)| a == path) {
            assert!(
                rows.paths.contains_key(&want.1),
                "{ctx}: {path} is registered, its reference {} is not",
                want.1
            );
            assert!(refs.contains(want), "{ctx}: Refs lacks {want:?}");
        }
    }
    for r in &rows.refs {
        assert!(
            source.refs.contains(r),
            "{ctx}: Refs row {r:?} not in the source"
        );
    }
    rows
}

/// `storesync dump-nar` of a registered path hashes to the DB's hash.
fn check_dump_nar(w: &World, logs: &Logs, root: &str, rows: &DbRows, pick: u64, ctx: &str) {
    let Some((path, row)) = rows
        .paths
        .iter()
        .nth(pick as usize % rows.paths.len().max(1))
    else {
        return;
    };
    let mut c = w.std_cmd(root);
    c.arg("dump-nar").arg(path);
    let r = logs.run(c, ctx);
    assert_eq!(r.code(), Some(0), "{ctx}: dump-nar {path}: {}", r.stderr);
    use sha2::Digest;
    let hash: [u8; 32] = sha2::Sha256::digest(&r.stdout).into();
    assert_eq!(
        storesync::store::path_info::NarHash::parse_db(&row.0),
        Some(storesync::store::path_info::NarHash(hash)),
        "{ctx}: dump-nar {path} differs from the DB hash"
    );
}

fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 1. save killed.

#[test]
fn save_killed_at_random_instants_leaves_a_usable_cache() {
    let seed = seed();
    let w = scene(Flavor::Guix);
    let logs = Logs::new(&w);
    let src = w.layout("src");
    build_generation(&src, 1);
    let rows_v1 = db_rows(&src);
    let gen1_cache = w.root("cache-gen1");
    let r = logs.run(save_cmd(&w, "src", &gen1_cache), "saving generation 1");
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    build_generation(&src, 2);
    let rows_v2 = db_rows(&src);
    // How long uninterrupted saves take, from nothing and on top of generation 1 (the
    // quicker of two runs: the first one may pay for a cold start).
    let timed = |k: usize, base: Option<&Path>| -> Duration {
        let cache = w.root(&format!("timing-{k}"));
        if let Some(base) = base {
            cp_a(base, &cache);
        }
        let r = logs.run(save_cmd(&w, "src", &cache), "timing");
        assert_eq!(r.code(), Some(0), "{}", r.stderr);
        remove(&cache);
        r.elapsed
    };
    let full = timed(0, None).min(timed(1, None));
    let incr = timed(2, Some(&gen1_cache)).min(timed(3, Some(&gen1_cache)));
    eprintln!(
        "save of {} paths ({} MiB) takes {:?} from nothing, {:?} on top of generation 1",
        rows_v2.paths.len(),
        rows_v2.paths.values().map(|r| r.3).sum::<i64>() >> 20,
        full,
        incr
    );
    let mut rng = Rng::new(seed);
    let (mut killed, mut with_tmp_leftovers, mut tmp_left_after_rerun) = (0, 0, 0);
    let mut unindexed_packs = 0;
    for case in 0..cases() {
        let incremental = case % 2 == 1;
        let span = if incremental { incr } else { full };
        let delay = kill_delay(&mut rng, span, case);
        let ctx = format!(
            "seed {seed:#x}, case {case} ({} save killed after {delay:?} of {span:?})",
            if incremental { "incremental" } else { "first" }
        );
        let cache = w.root(&format!("cache-{case}"));
        if incremental {
            cp_a(&gen1_cache, &cache);
        }
        match logs.run_killed(save_cmd(&w, "src", &cache), delay, &mut || false) {
            Ok(_) => killed += 1,
            Err(r) => assert_eq!(r.code(), Some(0), "{ctx}: {}", r.stderr),
        }
        let tmp_left = count_entries(&cache.join("tmp"));
        if tmp_left > 0 {
            with_tmp_leftovers += 1;
        }
        // The cache verifies (scratch files aside).
        let (problems, indexed) = verify(&w, &logs, &cache, &ctx);
        assert!(problems.is_empty(), "{ctx}: verify: {problems:#?}");
        unindexed_packs += count_entries(&cache.join("packs")) as u64 - indexed;
        // Every snapshot in it restores completely: generation 1's is still there.
        let ids = snapshot_ids(&w, &logs, &cache, &ctx);
        assert!(
            !incremental || !ids.is_empty(),
            "{ctx}: the previous snapshot is gone"
        );
        for (k, id) in ids.iter().enumerate() {
            let root = format!("snap-{case}-{k}");
            let r = logs.run(restore_cmd(&w, &root, &cache, &["--snapshot", id]), &ctx);
            assert_eq!(r.code(), Some(0), "{ctx}: restoring {id}: {}", r.stderr);
            let dst = w.layout(&root);
            let rows = check_registered(&dst, &rows_v2, &ctx);
            assert!(
                rows == rows_v1 || rows == rows_v2,
                "{ctx}: snapshot {id} restored {} of the paths",
                rows.paths.len()
            );
            check_clean(&dst, &rows, &ctx);
            remove(&w.root(&root));
        }
        // The save again completes, and its snapshot restores into an empty root.
        let again = logs.run(save_cmd(&w, "src", &cache), &ctx);
        assert_eq!(
            again.code(),
            Some(0),
            "{ctx}: the second save: {}",
            again.stderr
        );
        assert_eq!(
            again.json()["paths"],
            rows_v2.paths.len(),
            "{ctx}: the second save"
        );
        tmp_left_after_rerun += count_entries(&cache.join("tmp"));
        let root = format!("final-{case}");
        let r = logs.run(restore_cmd(&w, &root, &cache, &[]), &ctx);
        assert_eq!(
            r.code(),
            Some(0),
            "{ctx}: restore after the second save: {}",
            r.stderr
        );
        let dst = w.layout(&root);
        let rows = check_registered(&dst, &rows_v2, &ctx);
        assert_eq!(rows, rows_v2, "{ctx}: restore after the second save");
        check_clean(&dst, &rows, &ctx);
        remove(&w.root(&root));
        remove(&cache);
    }
    eprintln!(
        "seed {seed:#x}: {killed} of {} saves killed; {with_tmp_leftovers} left scratch files \
         in tmp/; {tmp_left_after_rerun} scratch files still there after the second saves; \
         {unindexed_packs} packs named by no index",
        cases()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. restore killed.

#[test]
fn restore_killed_into_an_empty_root_leaves_a_consistent_store() {
    restore_killed(Flavor::Guix, false);
}

#[test]
fn restore_killed_onto_an_older_generation_leaves_a_consistent_store() {
    restore_killed(Flavor::Nix, true);
}

/// A world holding a source store of both generations and a cache with a snapshot of each;
/// returns the id of the first snapshot and the source's rows.
fn two_snapshots(w: &World, logs: &Logs) -> (String, DbRows) {
    let src = w.layout("src");
    build_generation(&src, 1);
    let r = logs.run(save_cmd(w, "src", &w.cache_dir()), "saving generation 1");
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let v1 = r.json()["snapshot"].as_str().unwrap().to_string();
    build_generation(&src, 2);
    let r = logs.run(save_cmd(w, "src", &w.cache_dir()), "saving generation 2");
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    (v1, db_rows(&src))
}

fn restore_killed(flavor: Flavor, onto_older: bool) {
    let seed = seed();
    let w = scene(flavor);
    let logs = Logs::new(&w);
    let (v1, rows_v2) = two_snapshots(&w, &logs);
    let cache = w.cache_dir();
    if onto_older {
        let r = logs.run(
            restore_cmd(&w, "base", &cache, &["--snapshot", &v1]),
            "base",
        );
        assert_eq!(r.code(), Some(0), "{}", r.stderr);
    }
    let prepare = |root: &str| {
        if onto_older {
            cp_a(&w.root("base"), &w.root(root));
        }
    };
    // How long an uninterrupted restore takes (the quicker of two runs).
    let mut span = TIMEOUT;
    for k in 0..2 {
        let root = format!("timing-{k}");
        prepare(&root);
        let r = logs.run(restore_cmd(&w, &root, &cache, &[]), "timing");
        assert_eq!(r.code(), Some(0), "{}", r.stderr);
        span = span.min(r.elapsed);
        remove(&w.root(&root));
    }
    eprintln!(
        "restore of {} paths takes {span:?}",
        rows_v2.paths.len() - if onto_older { GEN1_ITEMS } else { 0 }
    );
    let mut rng = Rng::new(seed ^ if onto_older { 0x01d } else { 0 });
    let (mut killed, mut left, mut registered_some) = (0, 0, 0);
    for case in 0..cases() {
        let delay = kill_delay(&mut rng, span, case);
        let ctx = format!(
            "seed {seed:#x}, case {case} (restore {} killed after {delay:?} of {span:?})",
            if onto_older {
                "onto an older generation"
            } else {
                "into an empty root"
            }
        );
        let root = format!("dst-{case}");
        prepare(&root);
        let dst = w.layout(&root);
        let before = onto_older.then(|| (db_rows(&dst), util::inodes(&dst.real_store_dir())));
        match logs.run_killed(restore_cmd(&w, &root, &cache, &[]), delay, &mut || false) {
            Ok(_) => killed += 1,
            Err(r) => assert_eq!(r.code(), Some(0), "{ctx}: {}", r.stderr),
        }
        // Whatever is registered is on disk, whole; the older generation is untouched.
        let rows = check_registered(&dst, &rows_v2, &ctx);
        if let Some((old_rows, old_inodes)) = &before {
            assert!(rows.paths.len() >= old_rows.paths.len());
            let now = util::inodes(&dst.real_store_dir());
            for (path, row) in &old_rows.paths {
                assert_eq!(rows.paths.get(path), Some(row), "{ctx}: {path} changed");
                let name = path.rsplit('/').next().unwrap();
                assert_eq!(
                    now.get(name),
                    old_inodes.get(name),
                    "{ctx}: {path} was rewritten"
                );
            }
            if rows.paths.len() > old_rows.paths.len() {
                registered_some += 1;
            }
        } else if !rows.paths.is_empty() {
            registered_some += 1;
        }
        check_dump_nar(&w, &logs, &root, &rows, rng.next(), &ctx);
        if !leftovers(&dst).is_empty() {
            left += 1;
        }
        // A second restore completes the store and removes the leftovers.
        let r = logs.run(restore_cmd(&w, &root, &cache, &[]), &ctx);
        assert_eq!(r.code(), Some(0), "{ctx}: the second restore: {}", r.stderr);
        let rows = check_registered(&dst, &rows_v2, &ctx);
        assert_eq!(rows, rows_v2, "{ctx}: after the second restore");
        assert_eq!(
            leftovers(&dst),
            Vec::<String>::new(),
            "{ctx}: left after the second restore: {}",
            r.stderr
        );
        check_clean(&dst, &rows, &ctx);
        if let Some((old_rows, old_inodes)) = &before {
            let now = util::inodes(&dst.real_store_dir());
            for path in old_rows.paths.keys() {
                let name = path.rsplit('/').next().unwrap();
                assert_eq!(
                    now.get(name),
                    old_inodes.get(name),
                    "{ctx}: {path} rewritten"
                );
            }
        }
        remove(&w.root(&root));
    }
    eprintln!(
        "seed {seed:#x}: {killed} of {} restores killed; {registered_some} had registered paths, \
         {left} left temporary or trash entries",
        cases()
    );
}

/// The window in which a restore creates the target DB: killed right after `db.sqlite`
/// appears (plus a seeded instant under a millisecond), a second restore must still work.
#[test]
fn restore_killed_while_creating_the_db_recovers() {
    let seed = seed();
    let w = scene(Flavor::Guix);
    let logs = Logs::new(&w);
    let (_, rows_v2) = two_snapshots(&w, &logs);
    let cache = w.cache_dir();
    let mut rng = Rng::new(seed ^ 0xdb);
    let mut without_schema = 0;
    // Cheap cases (the kill comes early), and the window is narrow: three times as many.
    for case in 0..3 * cases() {
        let root = format!("dst-{case}");
        let dst = w.layout(&root);
        let after = Duration::from_micros(rng.below(1000));
        let ctx = format!(
            "seed {seed:#x}, case {case} (restore killed {after:?} after db.sqlite appeared)"
        );
        let db_file = dst.db_file();
        let mut seen: Option<Instant> = None;
        let mut when = || {
            if seen.is_none() && db_file.exists() {
                seen = Some(Instant::now());
            }
            seen.is_some_and(|t| t.elapsed() >= after)
        };
        match logs.run_killed(restore_cmd(&w, &root, &cache, &[]), TIMEOUT, &mut when) {
            Ok(_) => {}
            Err(r) => assert_eq!(r.code(), Some(0), "{ctx}: {}", r.stderr),
        }
        if dst.db_file().exists() && !dst.real_db_dir().join("schema").exists() {
            without_schema += 1;
        }
        check_registered(&dst, &rows_v2, &ctx);
        let r = logs.run(restore_cmd(&w, &root, &cache, &[]), &ctx);
        assert_eq!(r.code(), Some(0), "{ctx}: the second restore: {}", r.stderr);
        let rows = check_registered(&dst, &rows_v2, &ctx);
        assert_eq!(rows, rows_v2, "{ctx}: after the second restore");
        check_clean(&dst, &rows, &ctx);
        remove(&w.root(&root));
    }
    eprintln!(
        "seed {seed:#x}: {without_schema} of {} kills left db.sqlite without a schema file",
        3 * cases()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Out of space.

/// Bytes a tree takes on a tmpfs: each inode once, rounded up to pages.
fn pages_used(dir: &Path) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if seen.insert(m.ino()) {
            total += m.len().div_ceil(4096) * 4096;
        }
    }
    total
}

/// The fractions of the room needed that the tmpfs gets.
const TIGHT: [f64; 3] = [0.15, 0.5, 0.9];

#[test]
fn save_out_of_space_says_so_and_leaves_the_cache_usable() {
    // Many paths: the shared pack fills the tmpfs.
    let w = scene(Flavor::Guix);
    build_generation(&w.layout("src"), 1);
    save_out_of_space(&w, &|needed| {
        TIGHT
            .iter()
            .map(|f| (needed as f64 * f / 1024.0) as u64)
            .collect()
    });
}

#[test]
fn save_out_of_space_while_streaming_a_large_file_is_no_corruption() {
    // A small store and one 6 MiB file (over the 4 MiB streaming threshold: packed on its own
    // while it is read): the tmpfs takes the small paths, not the large file.
    let w = scene(Flavor::Guix);
    let src = w.layout("src");
    storesync::sample::build(&src, 1).unwrap();
    add_big_item(&src, "big-data", 6 << 20);
    save_out_of_space(&w, &|_| vec![1024, 3 * 1024, 5 * 1024]);
}

/// Save the source store of `w` into caches on tmpfs of the sizes `sizes` gives (KiB, from the
/// bytes a full cache takes): each save fails saying the device is full, naming the cache,
/// not calling the store corrupt; the cache verifies, what it holds restores, and with room
/// the same cache takes the save.
fn save_out_of_space(w: &Scene, sizes: &dyn Fn(u64) -> Vec<u64>) {
    let logs = Logs::new(w);
    let rows = db_rows(&w.layout("src"));
    let roomy = w.root("roomy");
    let r = logs.run(save_cmd(w, "src", &roomy), "roomy");
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let needed = pages_used(&roomy);
    for (k, kib) in sizes(needed).into_iter().enumerate() {
        let dir = w.root(&format!("small-{k}"));
        let ctx = format!("cache on a tmpfs of {kib} KiB (a full cache takes {needed} bytes)");
        let Some(tmpfs) = Tmpfs::mount(&dir, kib) else {
            eprintln!("skipped: no tmpfs");
            return;
        };
        let cache = dir.join("cache");
        let r = logs.run(save_cmd(w, "src", &cache), &ctx);
        eprintln!("{ctx}: {}", r.stderr.trim());
        assert_eq!(r.code(), Some(1), "{ctx}: {}", r.stderr);
        let err = &r.stderr;
        assert!(
            err.contains("No space left on device"),
            "{ctx}: the error does not say the disk is full: {err}"
        );
        assert!(
            err.contains(&cache.display().to_string()),
            "{ctx}: the error does not name the cache: {err}"
        );
        assert!(
            !err.contains("corrupt"),
            "{ctx}: out of space is no corrupt store: {err}"
        );
        // The cache is sound, and what it holds restores.
        let (problems, _) = verify(w, &logs, &cache, &ctx);
        assert!(problems.is_empty(), "{ctx}: verify: {problems:#?}");
        for id in snapshot_ids(w, &logs, &cache, &ctx) {
            let root = format!("snap-{k}");
            let r = logs.run(restore_cmd(w, &root, &cache, &["--snapshot", &id]), &ctx);
            assert_eq!(r.code(), Some(0), "{ctx}: restoring {id}: {}", r.stderr);
            check_registered(&w.layout(&root), &rows, &ctx);
            remove(&w.root(&root));
        }
        // With room, the same cache takes the save, which restores completely.
        tmpfs.resize(needed * 3 / 1024 + 1024);
        let r = logs.run(save_cmd(w, "src", &cache), &ctx);
        assert_eq!(r.code(), Some(0), "{ctx}: save with room: {}", r.stderr);
        let root = format!("after-{k}");
        let r = logs.run(restore_cmd(w, &root, &cache, &[]), &ctx);
        assert_eq!(r.code(), Some(0), "{ctx}: restore: {}", r.stderr);
        let dst = w.layout(&root);
        let got = check_registered(&dst, &rows, &ctx);
        assert_eq!(got, rows, "{ctx}");
        check_clean(&dst, &got, &ctx);
        remove(&w.root(&root));
        drop(tmpfs);
    }
}

#[test]
fn restore_out_of_space_registers_only_what_is_on_disk() {
    let w = scene(Flavor::Guix);
    let logs = Logs::new(&w);
    let (_, rows_v2) = two_snapshots(&w, &logs);
    let cache = w.cache_dir();
    let r = logs.run(restore_cmd(&w, "roomy", &cache, &[]), "roomy");
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let needed = pages_used(&w.layout("roomy").real_store_dir());
    for (k, frac) in TIGHT.iter().enumerate() {
        let root = format!("dst-{k}");
        let dst = w.layout(&root);
        let kib = (needed as f64 * frac / 1024.0) as u64;
        let ctx = format!("store on a tmpfs of {kib} KiB ({frac} of the {needed} bytes needed)");
        let Some(tmpfs) = Tmpfs::mount(&dst.real_store_dir(), kib) else {
            eprintln!("skipped: no tmpfs");
            return;
        };
        let r = logs.run(plain_restore_cmd(&w, &root, &cache), &ctx);
        eprintln!("{ctx}: {}", r.stderr.trim());
        assert_eq!(r.code(), Some(1), "{ctx}: {}", r.stderr);
        assert!(
            r.stderr.contains("No space left on device"),
            "{ctx}: the error does not say the disk is full: {}",
            r.stderr
        );
        let rows = check_registered(&dst, &rows_v2, &ctx);
        assert!(rows.paths.len() < rows_v2.paths.len(), "{ctx}");
        assert_eq!(leftovers(&dst), Vec::<String>::new(), "{ctx}: left behind");
        check_clean(&dst, &rows, &ctx);
        // With room, a second restore completes the store.
        tmpfs.resize(needed * 2 / 1024 + 1024);
        let r = logs.run(restore_cmd(&w, &root, &cache, &[]), &ctx);
        assert_eq!(r.code(), Some(0), "{ctx}: with room: {}", r.stderr);
        let rows = check_registered(&dst, &rows_v2, &ctx);
        assert_eq!(rows, rows_v2, "{ctx}: with room");
        check_clean(&dst, &rows, &ctx);
        drop(tmpfs);
        remove(&w.root(&root));
    }
}
