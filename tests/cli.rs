//! The command line through the real binary: help texts, exit codes, error messages, `--json`
//! output, dry runs, and signed snapshots.

mod util;

use std::fs;
use std::io::Read;
use std::process::Stdio;

use assert_cmd::Command;
use predicates::prelude::*;
use storesync::sample;
use storesync::store::layout::Flavor;
use util::{add_files_path, json, noise, World};

const SUBCOMMANDS: [&str; 7] = ["save", "restore", "ls", "verify", "dump-nar", "demo", "key"];

fn bin() -> Command {
    Command::cargo_bin("storesync").unwrap()
}

#[test]
fn every_subcommand_help_has_examples() {
    let subs = SUBCOMMANDS.iter().map(|s| vec![*s]);
    for sub in subs.chain([vec!["key", "generate"]]) {
        let out = bin().args(&sub).arg("--help").assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(text.contains("Examples:"), "{sub:?} --help:\n{text}");
        assert!(text.contains("Exit codes"), "{sub:?} --help:\n{text}");
        assert!(
            text.contains(&format!("storesync {}", sub.join(" "))),
            "{text}"
        );
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

/// Found by review: a closed stdout (`storesync verify | head -1`, `| true`) turned a failure
/// into success: `verify` that found problems exited 0 once its report met the closed pipe.
/// The reader going away is no failure, and no success either: the command's code stands.
#[test]
fn a_closed_stdout_does_not_turn_a_failure_into_success() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    w.on_cache("src", &["save"]).assert().success();
    let pack = fs::read_dir(w.cache_dir().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&pack).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 0xff;
    fs::write(&pack, bytes).unwrap();
    for json in [false, true] {
        let mut cmd = w.std_cmd("src");
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .arg("verify")
            .arg("--cache")
            .arg(w.cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written.
        drop(child.stdout.take());
        assert_eq!(child.wait().unwrap().code(), Some(1), "json {json}");
    }
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
    let out = w.on_cache("src", &["--json", "save"]).assert().success();
    let s = json(&out.get_output().stdout);
    assert_eq!(s["paths"], 6);
    let out = w.on_cache("src", &["--json", "ls"]).assert().success();
    let l = json(&out.get_output().stdout);
    assert_eq!(l[0]["id"], s["snapshot"]);
}

/// Found by review: a restore took an older snapshot in silence when the newest could not be
/// read (damaged, or written by a newer storesync in a format this one does not read), exit 0
/// and nothing on stderr: a CI job then ran on an older store without a word. It is said,
/// naming the snapshot and why, and a newer format asks for an upgrade.
#[test]
fn a_newest_snapshot_that_cannot_be_read_is_named_when_an_older_one_is_restored() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let old = json(
        &w.on_cache("src", &["--json", "save"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    sample::build(&w.layout("src"), 2).unwrap();
    let new = json(
        &w.on_cache("src", &["--json", "save"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let new_id = new["snapshot"].as_str().unwrap();
    // As a later storesync would write it: format version 3.
    let file = util::snapshot_file(&w.cache_dir(), new_id);
    let mut bytes = fs::read(&file).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    fs::write(&file, bytes).unwrap();
    let out = w.on_cache("dst", &["--json", "restore"]).assert().success();
    let r = json(&out.get_output().stdout);
    assert_eq!(r["snapshot"], old["snapshot"]);
    let err = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(
        err.contains(&new_id[..12]) && err.contains("upgrade storesync"),
        "{err}"
    );
}

#[test]
fn save_dry_run_lists_new_paths_and_writes_nothing() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    // A cache never written: the dry run must not even create its directory.
    let out = w
        .on_cache("src", &["--json", "save", "--dry-run"])
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
    w.on_cache("src", &["save"]).assert().success();
    let base = "0123456789abcdfghijklmnpqrsvwxyz-added-1.0";
    add_files_path(&src, base, &[("f", b"new contents\n", false)], &[]);
    let before = util::tree_listing(&w.cache_dir());
    let out = w.on_cache("src", &["save", "--dry-run"]).assert().success();
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
        .on_cache("src", &["--json", "save", "--dry-run"])
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
            .on_cache("src", &["save"])
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

/// A key pair made by `storesync key generate` in `w`'s directory: (secret file, public file).
fn key_pair(w: &World, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (sec, public) = (
        w.dir.path().join(format!("{name}.sec")),
        w.dir.path().join(format!("{name}.pub")),
    );
    bin()
        .args(["key", "generate", "--name", name, "--secret"])
        .arg(&sec)
        .arg("--public")
        .arg(&public)
        .assert()
        .success();
    (sec, public)
}

fn save_with(w: &World, extra: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = w
        .on_cache("src", &["--json", "save"])
        .args(extra)
        .assert()
        .success();
    json(&out.get_output().stdout)
}

fn os(s: &std::path::Path) -> &std::ffi::OsStr {
    s.as_os_str()
}

#[test]
fn key_generate_writes_a_key_pair_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(Flavor::Guix);
    let (sec, public) = (w.dir.path().join("k.sec"), w.dir.path().join("k.pub"));
    let out = bin()
        .args(["--json", "key", "generate", "--secret"])
        .arg(&sec)
        .arg("--public")
        .arg(&public)
        .assert()
        .success();
    let j = json(&out.get_output().stdout);
    let text = std::fs::read_to_string(&public).unwrap();
    assert_eq!(j["public_key"].as_str().unwrap(), text.trim());
    let name = j["name"].as_str().unwrap();
    assert!(text.starts_with(&format!("{name}:")), "{text}");
    // The default name is the host name (when it is a valid key name).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if !host.trim().is_empty() {
        assert_eq!(name, host.trim());
    }
    let secret = storesync::trust::load_secret_key(sec.to_str().unwrap()).unwrap();
    assert_eq!(secret.public().to_string(), text.trim());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sec), 0o600);
    assert_eq!(mode(&public), 0o644);
    // The secret never reaches stdout.
    let secret_text = std::fs::read_to_string(&sec).unwrap();
    let b64 = secret_text.trim().split(':').nth(1).unwrap();
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains(b64));
    // Existing files are never replaced.
    bin()
        .args(["key", "generate", "--secret"])
        .arg(&sec)
        .arg("--public")
        .arg(w.dir.path().join("other.pub"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("k.sec"));
    assert_eq!(std::fs::read_to_string(&sec).unwrap(), secret_text);
    assert!(!w.dir.path().join("other.pub").exists());
    // A name that cannot be a key name is a usage error.
    bin()
        .args(["key", "generate", "--name", "a:b", "--secret"])
        .arg(w.dir.path().join("n.sec"))
        .arg("--public")
        .arg(w.dir.path().join("n.pub"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--name"));
    assert!(!w.dir.path().join("n.sec").exists());
}

#[test]
fn signed_save_restores_with_the_right_key_only() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let (sec, public) = key_pair(&w, "ci-1");
    let (_, other) = key_pair(&w, "intruder");
    let s = save_with(&w, &["--sign-key".as_ref(), os(&sec)]);
    assert_eq!(s["signed_by"], "ci-1");
    let id = s["snapshot"].as_str().unwrap().to_owned();
    let sig = w.cache_dir().join(format!("snapshots/{id}.sig"));
    assert!(sig.exists());
    // Another key: refused, naming the snapshot, and nothing is written.
    let out = w
        .on_cache("dst", &["restore"])
        .arg("--trusted-key")
        .arg(&other)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&id[..12]), "{err}");
    assert!(err.contains("not trusted"), "{err}");
    assert!(!w.root("dst").exists(), "a refused restore wrote something");
    // The same through --snapshot.
    w.cmd("dst")
        .args(["restore", "--snapshot", &id[..8], "--cache"])
        .arg(w.cache_dir())
        .arg("--trusted-key")
        .arg(&other)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(&id[..12]).and(predicate::str::contains("not trusted")));
    // The right key, as a file and as key text among others.
    let key_text = std::fs::read_to_string(&public).unwrap();
    let out = w
        .on_cache("dst", &["--json", "restore"])
        .arg("--trusted-key")
        .arg(&other)
        .arg("--trusted-key")
        .arg(key_text.trim())
        .assert()
        .success();
    let r = json(&out.get_output().stdout);
    assert_eq!(r["snapshot"].as_str().unwrap(), id);
    assert_eq!(r["signed_by"], "ci-1");
    assert_eq!(r["restored"], 6);
    // ls and verify agree.
    w.on_cache("src", &["ls"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .success()
        .stdout(predicate::str::contains(&id[..12]).and(predicate::str::contains("ci-1")));
    w.on_cache("src", &["verify"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .success();
    w.on_cache("src", &["verify"])
        .arg("--trusted-key")
        .arg(&other)
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("problem: snapshot").and(predicate::str::contains(&id[..12])),
        );
}

#[test]
fn a_tampered_signature_is_refused() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let (sec, public) = key_pair(&w, "ci-1");
    let id = save_with(&w, &["--sign-key".as_ref(), os(&sec)])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = w.cache_dir().join(format!("snapshots/{id}.sig"));
    let text = std::fs::read_to_string(&sig).unwrap();
    // Flip one character of the base64 signature (keeping it base64 of the same length).
    let at = text.find(':').unwrap() + 5;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&sig, &bytes).unwrap();
    w.on_cache("dst", &["restore"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains(&id[..12]).and(predicate::str::contains("does not verify")),
        );
    // A signature file that is not one at all.
    std::fs::write(&sig, b"garbage\n").unwrap();
    w.on_cache("dst", &["restore"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(&id[..12]).and(predicate::str::contains("malformed")));
    assert!(!w.root("dst").exists());
}

#[test]
fn the_newest_unsigned_snapshot_is_passed_over_for_an_older_signed_one() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    let (sec, public) = key_pair(&w, "ci-1");
    let signed = save_with(&w, &["--sign-key".as_ref(), os(&sec)])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    sample::build(&src, 2).unwrap();
    let unsigned = save_with(&w, &[])["snapshot"].as_str().unwrap().to_owned();
    assert_ne!(signed, unsigned);
    let out = w
        .on_cache("dst", &["--json", "restore"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .success()
        .get_output()
        .clone();
    let r = json(&out.stdout);
    assert_eq!(r["snapshot"].as_str().unwrap(), signed);
    let passed = r["passed_over"].as_array().unwrap();
    assert_eq!(passed.len(), 1, "{r}");
    assert!(passed[0].as_str().unwrap().contains(&unsigned[..12]));
    assert!(passed[0].as_str().unwrap().contains("not signed"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("passed over") && err.contains(&unsigned[..12]),
        "{err}"
    );
    // Without keys the newest is taken; ls with the key lists only the signed one.
    let out = w
        .on_cache("src", &["--json", "ls"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .success();
    let l = json(&out.get_output().stdout);
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(l[0]["id"].as_str().unwrap(), signed);
    assert_eq!(l[0]["signed_by"], "ci-1");
    // Saving again with the key does not sign the unsigned snapshot, whose trees it never
    // read (tests/hostile.rs: a_signed_save_does_not_build_on_a_snapshot_its_key_did_not_sign):
    // it builds on the signed one, reads the paths that one lacks, and signs a new snapshot.
    let again = save_with(&w, &["--sign-key".as_ref(), os(&sec)]);
    assert_eq!(again["unchanged"], false);
    let resigned = again["snapshot"].as_str().unwrap().to_owned();
    assert!(resigned != unsigned && resigned != signed, "{again}");
    let out = w
        .on_cache("dst", &["--json", "restore", "--dry-run"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .success();
    let r = json(&out.get_output().stdout);
    assert_eq!(r["snapshot"].as_str().unwrap(), resigned);
    let passed = r["passed_over"].as_array().unwrap();
    assert!(
        passed.len() == 1 && passed[0].as_str().unwrap().contains(&unsigned[..12]),
        "{r}"
    );
}

#[test]
fn keys_from_the_environment() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let (sec, public) = key_pair(&w, "ci-1");
    let (_, other) = key_pair(&w, "intruder");
    // STORESYNC_SIGN_KEY holding the key text (as a CI secret would).
    let secret_text = std::fs::read_to_string(&sec).unwrap();
    let out = w
        .cmd("src")
        .env("STORESYNC_SIGN_KEY", secret_text.trim())
        .args(["--json", "save", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    let s = json(&out.get_output().stdout);
    assert_eq!(s["signed_by"], "ci-1");
    // --help must not show the secret in the environment.
    w.cmd("src")
        .env("STORESYNC_SIGN_KEY", secret_text.trim())
        .args(["save", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains(secret_text.trim()).not());
    // STORESYNC_TRUSTED_KEYS: a list of key files or texts.
    let list = format!("{},{}", other.display(), public.display());
    w.cmd("dst")
        .env("STORESYNC_TRUSTED_KEYS", &list)
        .args(["restore", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    w.cmd("dst2")
        .env("STORESYNC_TRUSTED_KEYS", other.as_os_str())
        .args(["restore", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not trusted"));
    // Set but empty (an undefined CI variable) must not turn checks off.
    w.cmd("dst2")
        .env("STORESYNC_TRUSTED_KEYS", "")
        .args(["restore", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("STORESYNC_TRUSTED_KEYS"));
    assert!(!w.root("dst2").exists());
}

/// With trusted keys, an unsigned snapshot is refused on its signature alone: its body is
/// never read (a damaged or hostile body is not even decoded).
#[test]
fn an_unsigned_snapshot_is_refused_before_its_body_is_read() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let (_, public) = key_pair(&w, "ci-1");
    let id = save_with(&w, &[])["snapshot"].as_str().unwrap().to_owned();
    let snap = w.cache_dir().join(format!("snapshots/{id}.snap"));
    std::fs::write(&snap, b"not a snapshot at all").unwrap();
    let out = w
        .on_cache("dst", &["restore"])
        .arg("--trusted-key")
        .arg(&public)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&id[..12]) && err.contains("not signed"),
        "{err}"
    );
    assert!(!err.contains("checksum") && !err.contains("magic"), "{err}");
}

#[test]
fn save_gc_roots_takes_the_closure_of_what_the_daemon_would_keep() {
    use std::os::unix::fs::symlink;
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let roots = sample::build(&src, 1).unwrap();
    let root = w.root("src");
    let a = "0123456789abcdfghijklmnpqrsvwxyz-rooted-a";
    let b = "1123456789abcdfghijklmnpqrsvwxyz-rooted-b";
    add_files_path(&src, a, &[("f", b"a\n", false)], &[]);
    add_files_path(&src, b, &[("f", b"b\n", false)], &[a]);
    // gcroots/profiles -> /var/guix/profiles, where a user's profile links lead to b; an
    // auto root leads, through a link outside the store, to a sample root; another is dangling.
    let gcroots = root.join("var/guix/gcroots");
    let profiles = root.join("var/guix/profiles/per-user/alice");
    fs::create_dir_all(gcroots.join("auto")).unwrap();
    fs::create_dir_all(&profiles).unwrap();
    symlink("/var/guix/profiles", gcroots.join("profiles")).unwrap();
    symlink(
        format!("/gnu/store/{b}"),
        profiles.join("guix-profile-1-link"),
    )
    .unwrap();
    symlink("guix-profile-1-link", profiles.join("guix-profile")).unwrap();
    fs::create_dir_all(root.join("home/alice")).unwrap();
    let sample_root = src.store_dir.display(&roots[0]);
    symlink(&sample_root, root.join("home/alice/result")).unwrap();
    symlink("/home/alice/result", gcroots.join("auto/k1")).unwrap();
    symlink("/home/alice/gone", gcroots.join("auto/k2")).unwrap();
    let out = w
        .on_cache("src", &["--json", "save", "--gc-roots", "--dry-run"])
        .assert()
        .success();
    let s = json(&out.get_output().stdout);
    let names: Vec<String> = s["new_path_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&format!("/gnu/store/{a}")), "{names:?}");
    assert!(names.contains(&format!("/gnu/store/{b}")), "{names:?}");
    assert!(names.contains(&sample_root), "{names:?}");
    assert!(
        s["paths"].as_u64().unwrap() < 8,
        "only the closure of the roots: {s}"
    );
    // Without any root leading into the store, --gc-roots is a usage error.
    fs::remove_dir_all(&gcroots).unwrap();
    w.on_cache("src", &["save", "--gc-roots"]).assert().code(2);
}

#[test]
fn diff_between_snapshots_and_the_live_store() {
    let w = World::new(Flavor::Nix);
    let src = w.layout("src");
    sample::build(&src, 1).unwrap();
    let save = || {
        let out = w
            .on_cache("src", &["--json", "save", "--key", "k"])
            .assert()
            .success();
        json(&out.get_output().stdout)["snapshot"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = save();
    let base = "0123456789abcdfghijklmnpqrsvwxyz-new-1.0";
    add_files_path(&src, base, &[("f", &noise(7, 100_000), false)], &[]);
    let second = save();
    let diff = |args: &[&str], root: &str| {
        let out = w
            .cmd(root)
            .args(["--json", "diff", "--cache"])
            .arg(w.cache_dir())
            .args(args)
            .assert()
            .success();
        json(&out.get_output().stdout)
    };
    let d = diff(&[&first[..8], "key:k"], "src");
    assert_eq!(d["to"], second.as_str());
    assert_eq!(
        d["added"],
        serde_json::json!([format!("/nix/store/{base}")])
    );
    assert_eq!(d["removed"].as_array().unwrap().len(), 0);
    let t = d["transfer_bytes"].as_u64().unwrap();
    assert!(
        t > 90_000 && t < 120_000,
        "the new 100 KB of noise, compressed: {t}"
    );
    // An empty store lacks everything of the snapshot.
    let d = diff(&["@live", "key:k"], "empty");
    assert_eq!(d["added"].as_array().unwrap().len(), 7);
    // The live source store has nothing the newest snapshot lacks.
    let d = diff(&["key:k", "@live"], "src");
    assert_eq!(d["added"].as_array().unwrap().len(), 0);
}

/// Save as a user who may search the store directory but not list it (mode 0311; the old
/// walk by path needed no more): every path is still saved. Found by review: the store
/// directory was opened for reading, and every path failed with `Permission denied`. Needs
/// root (to switch to `nobody` with `setpriv`).
#[test]
fn a_store_directory_searchable_but_not_readable_is_saved_by_another_user() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let w = World::new(Flavor::Guix);
    fs::set_permissions(w.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = w.layout("src");
    let base = "0123456789abcdfghijklmnpqrsvwxyz-one";
    add_files_path(&src, base, &[("bin/tool", b"#!/bin/sh\n", true)], &[]);
    // The DB (SQLite writes its `-shm` even to read) and the cache are the user's.
    fs::create_dir(w.cache_dir()).unwrap();
    let db = src.real_db_dir();
    for p in std::iter::once(db.clone())
        .chain(fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()))
        .chain([w.cache_dir()])
    {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    fs::set_permissions(src.real_store_dir(), fs::Permissions::from_mode(0o311)).unwrap();
    let out = save_as_nobody(&w);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v = json(&out.stdout);
    assert_eq!(v["new_paths"], 1, "{v}\n{err}");
}

/// This world's `--json save` of `src` into its cache, run by `nobody` (uid 65534) through
/// `setpriv`.
fn save_as_nobody(w: &World) -> std::process::Output {
    let inner = w.std_cmd("src");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .args(["--json", "save", "--cache"])
        .arg(w.cache_dir());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().unwrap()
}

/// Found by review: a save by a user who may not write the DB's directory (the README's
/// `storesync save` of a profile on a developer machine, without sudo), while no process has
/// the DB open, failed with SQLite's "attempt to write a readonly database", said of a read.
/// The error says why and what to do; nothing is read or saved.
#[test]
fn a_save_by_a_user_who_cannot_read_the_db_says_why() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let w = World::new(Flavor::Guix);
    fs::set_permissions(w.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = w.layout("src");
    let base = "0123456789abcdfghijklmnpqrsvwxyz-one";
    add_files_path(&src, base, &[("f", b"one\n", false)], &[]);
    // The DB stays root's, as the daemon leaves it; the cache is the user's.
    fs::create_dir(w.cache_dir()).unwrap();
    std::os::unix::fs::chown(w.cache_dir(), Some(65534), Some(65534)).unwrap();
    let out = save_as_nobody(&w);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    let db = src.db_file();
    assert!(
        err.contains(&db.display().to_string())
            && err.contains("cannot be read by this user")
            && err.contains("sudo")
            && !err.contains("attempt to write"),
        "{err}"
    );
    assert!(fs::read_dir(w.cache_dir().join("snapshots")).map_or(true, |mut d| d.next().is_none()));
}

/// The full path of `prog` on `PATH`.
fn which(prog: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}

#[test]
fn a_miss_on_an_empty_cache_prints_its_json_with_or_without_fail_on_miss() {
    // The first run of a CI job: no cache yet. `--json` prints the (empty) result whether
    // the miss exits 0 or, with --fail-on-miss, 1, as a miss on a cache with snapshots does.
    let w = World::new(Flavor::Guix);
    for (extra, code) in [(&[][..], 0), (&["--fail-on-miss"][..], 1)] {
        let out = w
            .cmd("dst")
            .args(["--json", "restore", "--key", "k", "--cache"])
            .arg(w.cache_dir())
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{extra:?}");
        let r = json(&out.stdout);
        assert_eq!(r["snapshot"], "", "{extra:?}: {r}");
        assert_eq!(r["restored"], 0, "{extra:?}: {r}");
    }
}

/// Fill the file system of `dir` with a file `dir/filler`, leaving about `leave` bytes free.
fn fill_leaving(dir: &std::path::Path, leave: u64) {
    use std::io::Write;
    let filler = dir.join("filler");
    let _ = fs::remove_file(&filler);
    let st = rustix::fs::statvfs(dir).unwrap();
    let avail = st.f_bavail * st.f_frsize;
    let mut f = fs::File::create(&filler).unwrap();
    let mut left = avail.saturating_sub(leave);
    let chunk = vec![0u8; 4096];
    while left > 0 {
        let n = left.min(4096) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
}

/// Found by review: a DB whose directory's device is full gave SQLite's bare "disk I/O error"
/// (at open: it could not make its -shm file) or "database or disk is full" (when a restore's
/// rows did not fit its -wal file), and on a read-only file system "unable to open database
/// file". Save and restore now say which DB, that its device is full (or read-only), and what
/// to do. A restore whose rows do not fit registers nothing and leaves none of the paths it
/// wrote on disk, nor any temporary.
#[test]
fn a_db_on_a_full_or_read_only_device_says_so_and_registers_nothing() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let one = "0123456789abcdfghijklmnpqrsvwxyz-one";
    let two = "1123456789abcdfghijklmnpqrsvwxyz-two";
    add_files_path(&src, one, &[("f", b"one\n", false)], &[]);
    w.on_cache("src", &["save", "--key", "a"])
        .assert()
        .success();
    add_files_path(&src, two, &[("g", b"two\n", false)], &[one]);
    w.on_cache("src", &["save", "--key", "b"])
        .assert()
        .success();
    let dst = w.layout("dst");
    let db_dir = dst.real_db_dir();
    let Some(mount) = Tmpfs::mount(&db_dir, "size=1m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    w.on_cache("dst", &["restore", "--key", "a"])
        .assert()
        .success();
    let db = dst.db_file().display().to_string();
    let first = util::db_rows(&dst);
    assert_eq!(first.paths.len(), 1);
    let check = |out: &std::process::Output, ctx: &str, cause: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{ctx}: {err}");
        assert!(err.contains(&db), "{ctx}: the DB is not named: {err}");
        assert!(err.contains(cause), "{ctx}: {err}");
        assert!(!err.contains("disk I/O error"), "{ctx}: {err}");
        assert!(!err.contains("unable to open"), "{ctx}: {err}");
    };
    let restore_fails = |ctx: &str| {
        let out = w
            .on_cache("dst", &["restore", "--key", "b"])
            .output()
            .unwrap();
        if out.status.success() {
            return false;
        }
        check(&out, ctx, "is full");
        // Room again, for the rows to be read here.
        fs::remove_file(db_dir.join("filler")).unwrap();
        assert_eq!(util::db_rows(&dst), first, "{ctx}");
        assert!(!dst.real_store_dir().join(two).exists(), "{ctx}");
        assert_eq!(util::leftovers(&dst), Vec::<String>::new(), "{ctx}");
        true
    };
    // Full at open: no room for SQLite's -shm file, needed even to read.
    fill_leaving(&db_dir, 0);
    assert!(restore_fails("no room at all"), "a restore succeeded");
    fill_leaving(&db_dir, 0);
    let out = w.on_cache("dst", &["save"]).output().unwrap();
    check(&out, "save, no room", "is full");
    // Full while the rows are written: room for the -shm file, not for the -wal's growth.
    let mut failed_with_room = 0;
    for leave in (36..).step_by(4).map(|k| k << 10) {
        for f in ["db.sqlite-shm", "db.sqlite-wal"] {
            let _ = fs::remove_file(db_dir.join(f));
        }
        fill_leaving(&db_dir, leave);
        if !restore_fails(&format!("{leave} bytes free")) {
            break;
        }
        failed_with_room += 1;
        assert!(leave < 1 << 20, "never restored");
    }
    assert!(
        failed_with_room > 0,
        "no restore failed for the -wal's room"
    );
    assert_eq!(util::db_rows(&dst).paths.len(), 2);
    // Read-only: the save cannot make the -shm file.
    for f in ["filler", "db.sqlite-shm", "db.sqlite-wal"] {
        let _ = fs::remove_file(db_dir.join(f));
    }
    mount.remount("ro");
    let out = w.on_cache("dst", &["save"]).output().unwrap();
    check(&out, "save, read-only", "read-only file system");
}

/// A DB whose file system has room but no inode left (a store of many small files on the
/// same file system can use them all): SQLite cannot make its -shm file, even to read the DB,
/// and said only "unable to open database file", naming no cause. Save and restore now say
/// which DB, that its file system has no inode left, and what to do; nothing is registered.
#[test]
fn a_db_on_a_file_system_out_of_inodes_says_so() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let one = "0123456789abcdfghijklmnpqrsvwxyz-one";
    let two = "1123456789abcdfghijklmnpqrsvwxyz-two";
    add_files_path(&src, one, &[("f", b"one\n", false)], &[]);
    w.on_cache("src", &["save", "--key", "a"])
        .assert()
        .success();
    add_files_path(&src, two, &[("g", b"two\n", false)], &[one]);
    w.on_cache("src", &["save", "--key", "b"])
        .assert()
        .success();
    let dst = w.layout("dst");
    let db_dir = dst.real_db_dir();
    let Some(_mount) = Tmpfs::mount(&db_dir, "size=8m,nr_inodes=64") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    w.on_cache("dst", &["restore", "--key", "a"])
        .assert()
        .success();
    let first = util::db_rows(&dst);
    for f in ["db.sqlite-shm", "db.sqlite-wal"] {
        let _ = fs::remove_file(db_dir.join(f));
    }
    let mut made = 0;
    while fs::File::create(db_dir.join(format!("filler{made}"))).is_ok() {
        made += 1;
    }
    assert!(made > 0);
    let db = dst.db_file().display().to_string();
    for (ctx, args) in [
        ("save", vec!["save"]),
        ("restore", vec!["restore", "--key", "b"]),
    ] {
        let out = w.on_cache("dst", &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{ctx}: {err}");
        assert!(err.contains(&db), "{ctx}: the DB is not named: {err}");
        assert!(err.contains("no inode left"), "{ctx}: {err}");
        assert!(!err.contains("unable to open"), "{ctx}: {err}");
    }
    for i in 0..made {
        fs::remove_file(db_dir.join(format!("filler{i}"))).unwrap();
    }
    assert_eq!(util::db_rows(&dst), first);
    assert!(!dst.real_store_dir().join(two).exists());
}
