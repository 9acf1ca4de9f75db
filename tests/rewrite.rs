//! Issue 14: dedup that survives reference rewrites, and incremental saves that read only
//! what the cache cannot know. Through the built binary (`--json` reports), against stores
//! laid out here: two generations of a package whose files differ only in the store paths
//! they name, and a store deduplicated through `.links` as guix-daemon leaves it.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use storesync::nar;
use storesync::store::{Flavor, Layout};
use util::{json, noise, World};

const DEP1: &str = "11111111111111111111111111111111-dep-1";
/// A rebuild of the dependency: same name, another hash (the bytes that differ in what
/// names it are the hash part only, the case placeholders cover).
const DEP2: &str = "22222222222222222222222222222222-dep-1";
const PKG1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-pkg-1";
const PKG2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-pkg-1";

/// Lay out and register a store path of `files` (relative path, contents, executable).
fn add_path(layout: &Layout, base: &str, files: &[(&str, Vec<u8>, bool)], refs: &[&str]) {
    let files: Vec<(&str, &[u8], bool)> = files
        .iter()
        .map(|(rel, contents, x)| (*rel, contents.as_slice(), *x))
        .collect();
    util::add_files_path(layout, base, &files, refs);
}

/// `data` with `text` written over it at each of `offsets`.
fn with_at(mut data: Vec<u8>, text: &str, offsets: &[usize]) -> Vec<u8> {
    for &o in offsets {
        data[o..o + text.len()].copy_from_slice(text.as_bytes());
    }
    data
}

/// The files of a package built against `dep`, installed as `me`: an "ELF" whose RUNPATH
/// names the dependency, a 6 MiB library (streamed in 1 MiB reads at save) naming it across
/// a read boundary and naming itself, a script, and a file holding the placeholder bytes and
/// a hash part of no reference literally.
fn package(dep: &str, me: &str) -> Vec<(&'static str, Vec<u8>, bool)> {
    let runpath = format!("/gnu/store/{dep}/lib");
    let own = format!("/gnu/store/{me}/share");
    let elf = with_at(noise(1, 300_000), &runpath, &[1000, 150_000, 299_000]);
    let big = with_at(
        noise(2, 6 << 20),
        &runpath,
        &[(1 << 20) - 20, 3 << 20, (1 << 20) + 4096],
    );
    let big = with_at(big, &own, &[(5 << 20) + 7]);
    let script = format!("#!/gnu/store/{dep}/bin/sh\nexec /gnu/store/{me}/bin/prog \"$@\"\n");
    let odd = format!(
        "{}/gnu/store/{}-unrelated {}\n",
        "e".repeat(40),
        "3".repeat(32),
        "e".repeat(32)
    );
    vec![
        ("bin/prog", elf, true),
        ("bin/run", script.into_bytes(), true),
        ("lib/libpkg.so", big, false),
        ("share/odd", odd.into_bytes(), false),
    ]
}

fn save(w: &World, root: &str, extra: &[&str]) -> serde_json::Value {
    let out = w
        .cmd(root)
        .args(["--json", "save", "--cache"])
        .arg(w.cache_dir())
        .args(extra)
        .assert()
        .success();
    json(&out.get_output().stdout)
}

fn restore(w: &World, root: &str) -> serde_json::Value {
    let out = w
        .cmd(root)
        .args(["--json", "restore", "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    json(&out.get_output().stdout)
}

/// Bytes of the cache's pack files.
fn packed(cache: &Path) -> u64 {
    fs::read_dir(cache.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn issue_14_files_differing_only_in_reference_hash_parts_share_blobs() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    add_path(
        &src,
        DEP1,
        &[("lib/libdep.so", noise(10, 20_000), false)],
        &[],
    );
    add_path(&src, PKG1, &package(DEP1, PKG1), &[DEP1, PKG1]);
    save(&w, "src", &[]);
    let before = packed(&w.cache_dir());
    assert!(before > 6 << 20, "{before}");
    // The upgrade: a new dependency, and the package rebuilt against it.
    add_path(
        &src,
        DEP2,
        &[("lib/libdep.so", noise(12, 20_000), false)],
        &[],
    );
    add_path(&src, PKG2, &package(DEP2, PKG2), &[DEP2, PKG2]);
    let r = save(&w, "src", &[]);
    assert_eq!(r["new_paths"], 2, "{r}");
    let grown = packed(&w.cache_dir()) - before;
    eprintln!(
        "pack bytes: {before} after v1, +{grown} for v2 (v2's NAR: {})",
        r["nar_bytes"]
    );
    // The new dependency's 20 KB of noise, two trees and pack headers; not 6.3 MB again.
    assert!(grown < 40_000, "the cache grew by {grown} bytes: {r}");
    // Both generations restore byte for byte (the restore checks every NAR hash).
    let r = restore(&w, "dst");
    assert_eq!(r["restored"], 4, "{r}");
    let dst = w.layout("dst");
    for base in [PKG1, PKG2] {
        for (rel, contents, _) in package(if base == PKG1 { DEP1 } else { DEP2 }, base) {
            let got = fs::read(dst.real_store_dir().join(base).join(rel)).unwrap();
            assert!(got == contents, "{base}/{rel} differs");
        }
    }
    let rows = util::db_rows(&dst);
    assert_eq!(rows.paths.len(), 4);
}

/// Hard-link every file of 8 KiB or more under `top` to `<store>/.links/<its file NAR
/// hash>`, as guix-daemon's deduplication does.
fn deduplicate(store: &Path, top: &Path) {
    let links = store.join(".links");
    fs::create_dir_all(&links).unwrap();
    for (rel, kind, ..) in util::tree_listing(top) {
        let p = top.join(&rel);
        if kind != "file" {
            continue;
        }
        let data = fs::read(&p).unwrap();
        if (data.len() as u64) < storesync::store::links::LINKS_MIN_SIZE {
            continue;
        }
        let exec = fs::metadata(&p).unwrap().permissions().mode() & 0o100 != 0;
        let mut h = nar::FileNarHasher::new(exec, data.len() as u64);
        h.update(&data);
        let entry = links.join(storesync::store::path::nixbase32_encode(&h.finish()));
        if entry.exists() {
            fs::remove_file(&p).unwrap();
            fs::hard_link(&entry, &p).unwrap();
        } else {
            fs::hard_link(&p, &entry).unwrap();
        }
    }
}

#[test]
fn issue_14_incremental_save_reads_no_file_the_cache_knows_by_its_links_entry() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let store = src.real_store_dir();
    add_path(
        &src,
        DEP1,
        &[("lib/libdep.so", noise(10, 20_000), false)],
        &[],
    );
    add_path(&src, PKG1, &package(DEP1, DEP1), &[DEP1]);
    deduplicate(&store, &store.join(DEP1));
    deduplicate(&store, &store.join(PKG1));
    let r = save(&w, "src", &[]);
    assert_eq!(r["bytes_known"], 0, "{r}");
    // A new path with the very same files (a rebuild that changed nothing but its own hash):
    // hard links to the same `.links` entries. One of them then changes in place (same size,
    // same inode, so still under its old `.links` name): the store is corrupt.
    add_path(&src, PKG2, &package(DEP1, DEP1), &[DEP1]);
    deduplicate(&store, &store.join(PKG2));
    let prog = store.join(PKG2).join("bin/prog");
    let genuine = fs::read(&prog).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let mut bytes = genuine.clone();
    bytes[5] ^= 1;
    fs::write(&prog, &bytes).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o555)).unwrap();
    // --verify-source reads everything and finds it.
    let out = w
        .cmd("src")
        .args(["--json", "save", "--verify-source", "--cache"])
        .arg(w.cache_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains(PKG2), "{err}");
    // Without it, no file of the new path is read: their contents come from the cache, by
    // the names of their `.links` entries, and the NAR size is what is checked.
    let big: u64 = package(DEP1, DEP1)
        .iter()
        .map(|f| f.1.len() as u64)
        .filter(|&n| n >= storesync::store::links::LINKS_MIN_SIZE)
        .sum();
    let r = save(&w, "src", &[]);
    assert_eq!(r["new_paths"], 1, "{r}");
    assert_eq!(r["bytes_known"], big, "{r}");
    assert!(r["bytes_read"].as_u64().unwrap() < 1000, "{r}");
    assert_eq!(r["unverified_paths"], 1, "{r}");
    // What the snapshot holds is what the DB vouches for: the restore checks every NAR hash.
    let r = restore(&w, "dst");
    assert_eq!(r["restored"], 3, "{r}");
    let dst = w.layout("dst");
    let got = fs::read(dst.real_store_dir().join(PKG2).join("bin/prog")).unwrap();
    assert!(got == genuine);
}
