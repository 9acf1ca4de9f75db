//! The command line through the real binary: help texts, exit codes, error messages, `--json`
//! output, dry runs, and signed snapshots.

mod util;

use std::io::Read;
use std::process::Stdio;

use assert_cmd::Command;
use predicates::prelude::*;
use storesync::sample;
use storesync::store::layout::Flavor;
use util::{add_files_path, json, noise, World};

const SUBCOMMANDS: [&str; 6] = ["save", "restore", "ls", "verify", "dump-nar", "demo"];

fn bin() -> Command {
    Command::cargo_bin("storesync").unwrap()
}

#[test]
fn every_subcommand_help_has_examples() {
    for sub in SUBCOMMANDS {
        let out = bin().args([sub, "--help"]).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(text.contains("Examples:"), "{sub} --help:\n{text}");
        assert!(text.contains("Exit codes"), "{sub} --help:\n{text}");
        assert!(text.contains(&format!("storesync {sub}")) || text.contains(sub));
    }
}

#[test]
fn flavor_is_parsed_by_the_cli_and_a_bad_one_exits_2() {
    bin()
        .args(["--flavor", "debian", "ls", "--cache", "/nonexistent"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("guix").and(predicate::str::contains("nix")));
    let w = World::new(Flavor::Nix);
    sample::build(&w.layout("src"), 1).unwrap();
    // STORESYNC_FLAVOR picks the Nix layout: the DB is found under nix/var/nix/db.
    bin()
        .env("STORESYNC_FLAVOR", "nix")
        .arg("--root")
        .arg(w.root("src"))
        .args(["--no-progress", "save", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success()
        .stdout(predicate::str::contains("6 paths"));
}

/// `storesync dump-nar P | head -c 10`: the reader closes the pipe early; storesync's writes
/// fail with EPIPE deep inside the NAR writer, and that is no error.
#[test]
fn dump_nar_into_a_closed_pipe_exits_0() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let base = "0123456789abcdfghijklmnpqrsvwxyz-big";
    add_files_path(&src, base, &[("data", &noise(1, 4 << 20), false)], &[]);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("storesync"))
        .arg("--root")
        .arg(w.root("src"))
        .args(["dump-nar", &format!("/gnu/store/{base}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first[..8], &13u64.to_le_bytes()); // "nix-archive-1"
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn an_error_prints_each_cause_once() {
    let w = World::new(Flavor::Guix);
    let missing = "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-missing";
    let out = w
        .cmd("src")
        .args(["dump-nar", missing])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(err.starts_with("storesync: error: "), "{err}");
    assert!(err.contains("-missing"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A usage error: exit 2, and the message names the argument.
    w.cmd("src")
        .args(["dump-nar", "/tmp/not-a-store-path"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/tmp/not-a-store-path"));
}

#[test]
fn json_output_is_one_value_on_stdout() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let out = w
        .cmd("src")
        .args(["--json", "save", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let s = json(&out.get_output().stdout);
    assert_eq!(s["paths"], 6);
    let out = w
        .cmd("src")
        .args(["--json", "ls", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let l = json(&out.get_output().stdout);
    assert_eq!(l[0]["id"], s["snapshot"]);
}

#[test]
fn save_dry_run_lists_new_paths_and_writes_nothing() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    // A cache never written: the dry run must not even create its directory.
    let out = w
        .cmd("src")
        .args(["--json", "save", "--dry-run", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let s = json(&out.get_output().stdout);
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["paths"], 6);
    assert_eq!(s["new_paths"], 6);
    assert_eq!(s["cached_paths"], 0);
    assert_eq!(s["new_path_names"].as_array().unwrap().len(), 6);
    assert!(s["nar_bytes_to_read"].as_u64().unwrap() > 0);
    assert_eq!(s["nar_bytes_to_read"], s["nar_bytes"]);
    assert!(!w.cache_dir().exists(), "a dry run created the cache");
    // After a save, only a path added since is new; the cache is left as it was.
    w.cmd("src")
        .args(["save", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let base = "0123456789abcdfghijklmnpqrsvwxyz-added-1.0";
    add_files_path(&src, base, &[("f", b"new contents\n", false)], &[]);
    let before = util::tree_listing(&w.cache_dir());
    let out = w
        .cmd("src")
        .args(["save", "--dry-run", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains(&format!("would save /gnu/store/{base}")),
        "{text}"
    );
    assert_eq!(text.matches("would save").count(), 1, "{text}");
    assert!(text.contains("6 already cached, 1 to read"), "{text}");
    assert_eq!(util::tree_listing(&w.cache_dir()), before);
    // With roots: the closure of one path.
    let out = w
        .cmd("src")
        .args(["--json", "save", "--dry-run", "--cache"])
        .arg(w.cache_dir())
        .arg(format!("/gnu/store/{base}"))
        .assert()
        .success();
    let s = json(&out.get_output().stdout);
    assert_eq!(s["paths"], 1);
    assert_eq!(s["roots"][0], format!("/gnu/store/{base}"));
    assert_eq!(s["new_path_names"][0], format!("/gnu/store/{base}"));
}

/// A tmpfs mounted for the length of a test (needs root; `None` where mounting fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, options: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }

    fn remount(&self, options: &str) {
        let s = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Security issue item 7: ENOSPC or EROFS in the cache is not a corrupt store: the save stops
/// with the cache file and the cause, and --skip-corrupt does not turn it into a snapshot
/// without the paths that did not fit.
#[test]
fn a_full_or_read_only_cache_aborts_the_save_and_is_no_corruption() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    let base = "0123456789abcdfghijklmnpqrsvwxyz-big";
    add_files_path(&src, base, &[("data", &noise(2, 5 << 20), false)], &[]);
    let Some(mount) = Tmpfs::mount(&w.cache_dir(), "size=1m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let check = |extra: &[&str], cause: &str| {
        let out = w
            .cmd("src")
            .args(["save", "--cache"])
            .arg(w.cache_dir())
            .args(extra)
            .assert()
            .code(1)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(cause), "{err}");
        assert!(err.contains(&w.cache_dir().display().to_string()), "{err}");
        assert!(err.contains("no snapshot written"), "{err}");
        assert!(!err.contains("corrupt"), "{err}");
        assert!(out.stdout.is_empty());
        assert!(w.cache().snapshot_ids().unwrap().is_empty());
    };
    check(&[], "No space left on device");
    check(&["--skip-corrupt"], "No space left on device");
    mount.remount("ro");
    check(&[], "Read-only file system");
    check(&["--skip-corrupt"], "Read-only file system");
}
