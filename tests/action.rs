//! What the GitHub Action (action/) relies on in the binary, checked from this side so that a
//! change to the command line shows up in `cargo test`, not only in the action's tests: the
//! `--json` fields it reads (restore: `matched_key`, `exact_match`, `restored`,
//! `bytes_written`, `failed`, `skipped`; a miss as the empty report with exit 0; save
//! `--dry-run`: `new_paths`), the flags it passes, `--version` as it parses it, and the
//! completions and man pages `just dist` packs.

mod util;

use assert_cmd::Command;
use storesync::sample;
use storesync::store::layout::Flavor;
use util::{json, World};

fn bin() -> Command {
    Command::cargo_bin("storesync").unwrap()
}

#[test]
fn restore_json_gives_what_the_action_reads_for_a_miss_a_hit_and_a_prefix() {
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let cache = w.cache_dir();
    // The action's restore command line: global flags first, --json, key and prefixes.
    let restore = |root: &str, key: &str| {
        let out = w
            .cmd(root)
            .args(["--json", "restore", "--cache"])
            .arg(&cache)
            .args([
                "--key",
                key,
                "--restore-key",
                "guix-1-",
                "--restore-key",
                "guix-",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        json(&out.stdout)
    };
    let miss = restore("t0", "guix-1-abc");
    assert_eq!(miss["snapshot"], "");
    assert_eq!(miss["matched_key"], serde_json::Value::Null);
    assert_eq!(miss["exact_match"], false);
    assert_eq!(miss["restored"], 0);

    // The post step: dry run first (anything new?), then the save with --prune.
    let dry = w
        .cmd("src")
        .args(["--json", "save", "--cache"])
        .arg(&cache)
        .args(["--key", "guix-1-abc", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(json(&dry.stdout)["new_paths"], 6, "{dry:?}");
    let saved = w
        .cmd("src")
        .args(["--json", "save", "--cache"])
        .arg(&cache)
        .args(["--key", "guix-1-abc", "--prune", "--keep-last", "2"])
        .output()
        .unwrap();
    let saved = json(&saved.stdout);
    assert_eq!(saved["new_paths"], 6);
    assert!(saved["snapshot"].as_str().unwrap().len() == 64);
    assert!(saved["pruned"].is_object());

    let hit = restore("t1", "guix-1-abc");
    assert_eq!(hit["matched_key"], "guix-1-abc");
    assert_eq!(hit["exact_match"], true);
    assert_eq!(hit["restored"], 6);
    assert!(hit["bytes_written"].as_u64().unwrap() > 0);
    assert_eq!(hit["failed"], serde_json::json!([]));
    assert_eq!(hit["skipped"], serde_json::json!([]));

    let prefix = restore("t2", "guix-1-def");
    assert_eq!(prefix["matched_key"], "guix-1-abc");
    assert_eq!(prefix["exact_match"], false);

    // Restored: nothing new for the dry run of the post step.
    let dry = w
        .cmd("t1")
        .args(["--json", "save", "--cache"])
        .arg(&cache)
        .args(["--key", "guix-1-abc", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(json(&dry.stdout)["new_paths"], 0, "{dry:?}");
}

#[test]
fn version_is_storesync_then_the_crate_version() {
    // action/src/lib/binary.js takes the second word.
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("storesync {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_action_is_the_crate_version() {
    let pkg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/action/package.json"))
        .unwrap();
    let pkg: serde_json::Value = serde_json::from_str(&pkg).unwrap();
    assert_eq!(pkg["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("restore") && text.contains("--restore-key"),
            "{shell}"
        );
    }
    bin().args(["completions", "tcsh"]).assert().code(2);
    let man = bin().arg("man").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH storesync 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    bin()
        .args(["man", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    for page in ["storesync.1", "storesync-restore.1", "storesync-gc.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
}

#[test]
fn option_values_that_start_with_a_dash_and_errors_as_the_action_reads_them() {
    // action/src/lib/command.js passes a value that starts with a dash as `--name=value`;
    // action/src/lib/report.js quotes the last `storesync: error: ` line of stderr in the
    // step's annotation; steps.js asks `save --dry-run --gc-roots` after an exact hit.
    let w = World::new(Flavor::Guix);
    sample::build(&w.layout("src"), 1).unwrap();
    let cache = w.cache_dir();
    let cache_arg = format!("--cache={}", cache.display());
    let saved = w
        .cmd("src")
        .args(["--json", "save", &cache_arg, "--key=-guix-1"])
        .output()
        .unwrap();
    assert_eq!(saved.status.code(), Some(0), "{saved:?}");
    let hit = w
        .cmd("t0")
        .args([
            "--json",
            "restore",
            &cache_arg,
            "--key=-guix-2",
            "--restore-key=-guix-",
        ])
        .output()
        .unwrap();
    assert_eq!(hit.status.code(), Some(0), "{hit:?}");
    assert_eq!(json(&hit.stdout)["matched_key"], "-guix-1");

    let dry = w
        .cmd("src")
        .args([
            "--json",
            "save",
            &cache_arg,
            "--key=k",
            "--dry-run",
            "--gc-roots",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(
        dry.status.code() == Some(0) || stderr.contains("storesync: error: --gc-roots"),
        "{dry:?}"
    );

    let blocked = w.dir.path().join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let failed = w
        .cmd("src")
        .args(["--json", "save", "--key", "k", "--cache"])
        .arg(blocked.join("cache"))
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("storesync: error: ") && l.contains("not-a-dir")),
        "{stderr}"
    );
}
