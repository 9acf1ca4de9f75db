//! Issue 14: dedup that survives reference rewrites, and incremental saves that read only
//! what the cache cannot know. Through the built binary (`--json` reports), against stores
//! laid out here: two generations of a package whose files differ only in the store paths
//! they name, and a store deduplicated through `.links` as guix-daemon leaves it.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use storesync::nar;
use storesync::store::path_info::NarHash;
use storesync::store::Flavor;
use util::{
    add_path, edit, json, noise, package, ChangeWhenWriting, World, DEP1, DEP2, PKG1, PKG2,
};

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

/// A cache holding issue 14's generation 1, then 2 (`util::add_generation`, saved from one
/// source store): their snapshot ids.
fn two_generations(w: &World) -> (String, String) {
    let src = w.layout("src");
    util::add_generation(&src, 1);
    let id1 = save(w, "src", &[])["snapshot"].as_str().unwrap().to_owned();
    util::add_generation(&src, 2);
    let id2 = save(w, "src", &[])["snapshot"].as_str().unwrap().to_owned();
    (id1, id2)
}

fn restore_id(w: &World, root: &str, id: &str) -> serde_json::Value {
    let out = w
        .cmd(root)
        .args(["--json", "restore", "--snapshot", id, "--cache"])
        .arg(w.cache_dir())
        .assert()
        .success();
    json(&out.get_output().stdout)
}

/// `PKG2`'s files are in `root` as built, and both of generation 2's paths were restored.
fn assert_generation_2(w: &World, root: &str, r: &serde_json::Value) {
    assert_eq!(r["restored"], 2, "{r}");
    assert_generation_2_files(w, root, r);
}

/// `PKG2`'s files are in `root` as built, and generation 2's paths are registered with their
/// NAR hashes; nothing failed.
fn assert_generation_2_files(w: &World, root: &str, r: &serde_json::Value) {
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let store = w.layout(root).real_store_dir();
    for (rel, contents, _) in package(DEP2, PKG2) {
        let got = fs::read(store.join(PKG2).join(rel)).unwrap();
        assert!(got == contents, "{PKG2}/{rel} differs");
    }
    // Registered with their NAR hashes (the restore checks them; checked again here).
    let rows = util::db_rows(&w.layout(root));
    for base in [DEP2, PKG2] {
        let (hash, _) = nar::hash_path(&store.join(base)).unwrap();
        let row = &rows.paths[&format!("/gnu/store/{base}")];
        assert_eq!(Some(hash), NarHash::parse_db(&row.0), "{base}");
    }
}

/// Bytes of `PKG2`'s files, all but those named in `but`.
fn pkg2_bytes(but: &[&str]) -> u64 {
    package(DEP2, PKG2)
        .iter()
        .filter(|f| !but.contains(&f.0))
        .map(|f| f.1.len() as u64)
        .sum()
}

#[test]
fn issue_13_a_warm_restore_copies_files_differing_only_in_hash_parts_from_the_older_build() {
    let w = World::new(Flavor::Guix);
    let (id1, id2) = two_generations(&w);
    let r = restore_id(&w, "dst", &id1);
    assert_eq!(
        (&r["restored"], &r["local_files"]),
        (&2.into(), &0.into()),
        "{r}"
    );
    // Generation 2 over 1: `PKG1` (valid, same name) holds every blob of `PKG2`'s four files
    // (three with references in them, one without); `DEP1` is a sibling of `DEP2` but its
    // file (same size, other bytes) is not `DEP2`'s blob.
    let r = restore_id(&w, "dst", &id2);
    assert_generation_2(&w, "dst", &r);
    assert_eq!(r["local_files"], 4, "{r}");
    assert_eq!(r["local_bytes"], pkg2_bytes(&[]), "{r}");
    // From the cache: DEP2's 20,000 bytes only.
    assert_eq!(r["bytes_written"], 20_000, "{r}");
}

/// Watches directories for opens and reads of what they hold, and of themselves (inotify).
struct Watch(std::os::fd::OwnedFd);

impl Watch {
    fn new(dirs: &[&Path]) -> Self {
        use rustix::fs::inotify;
        let fd =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        for d in dirs {
            inotify::add_watch(
                &fd,
                *d,
                inotify::WatchFlags::OPEN | inotify::WatchFlags::ACCESS,
            )
            .unwrap();
        }
        Watch(fd)
    }

    /// The events since the last call, as `(flags, name)`.
    fn events(&self) -> Vec<String> {
        let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
        let mut r = rustix::fs::inotify::Reader::new(&self.0, &mut buf);
        let mut out = Vec::new();
        while let Ok(e) = r.next() {
            out.push(format!("{:?} {:?}", e.events(), e.file_name()));
        }
        out
    }
}

#[test]
fn issue_13_a_tampered_or_symlinked_older_build_is_not_used_and_nothing_outside_is_read() {
    let w = World::new(Flavor::Guix);
    let (id1, id2) = two_generations(&w);
    // Outside the store: PKG1's genuine files, which a symlink in the store points at.
    let outside = w.root("outside");
    fs::create_dir_all(outside.join("bin")).unwrap();
    for (rel, contents, _) in package(DEP1, PKG1) {
        let p = outside.join(rel.replace("lib/", ""));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
    }
    let watch = Watch::new(&[&outside, &outside.join("bin")]);
    // (root, what is done to PKG1, its files not to be taken, their bytes copied)
    type Harm = Box<dyn Fn(&Path)>;
    let outside_lib = outside.join("libpkg.so");
    let outside_bin = outside.join("bin");
    let cases: Vec<(&str, Harm, Vec<&str>)> = vec![
        (
            "changed",
            Box::new(|pkg: &Path| {
                edit(&pkg.join("bin/prog"), |p| {
                    let mut b = fs::read(p).unwrap();
                    b[5] ^= 1; // not where a reference is
                    fs::write(p, b).unwrap();
                })
            }),
            vec!["bin/prog"],
        ),
        (
            "longer",
            Box::new(|pkg: &Path| {
                edit(&pkg.join("share/odd"), |p| {
                    let mut b = fs::read(p).unwrap();
                    b.push(b'\n');
                    fs::write(p, b).unwrap();
                })
            }),
            vec!["share/odd"],
        ),
        (
            "file-symlink",
            Box::new(move |pkg: &Path| {
                edit(&pkg.join("lib/libpkg.so"), |p| {
                    fs::remove_file(p).unwrap();
                    std::os::unix::fs::symlink(&outside_lib, p).unwrap();
                })
            }),
            vec!["lib/libpkg.so"],
        ),
        (
            "dir-symlink",
            Box::new(move |pkg: &Path| {
                edit(&pkg.join("bin"), |p| {
                    for f in ["prog", "run"] {
                        edit(&p.join(f), |f| fs::remove_file(f).unwrap());
                    }
                    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
                    fs::remove_dir(p).unwrap();
                    std::os::unix::fs::symlink(&outside_bin, p).unwrap();
                })
            }),
            vec!["bin/prog", "bin/run"],
        ),
    ];
    for (root, harm, not_taken) in &cases {
        let r = restore_id(&w, root, &id1);
        assert_eq!(r["restored"], 2, "{root}: {r}");
        harm(&w.layout(root).real_store_dir().join(PKG1));
        assert!(watch.events().is_empty());
        let r = restore_id(&w, root, &id2);
        assert_generation_2(&w, root, &r);
        assert_eq!(r["local_files"], 4 - not_taken.len(), "{root}: {r}");
        assert_eq!(r["local_bytes"], pkg2_bytes(not_taken), "{root}: {r}");
        let from_cache = 20_000 + pkg2_bytes(&[]) - pkg2_bytes(not_taken);
        assert_eq!(r["bytes_written"], from_cache, "{root}: {r}");
        let events = watch.events();
        assert!(
            events.is_empty(),
            "{root}: files outside the store were opened or read: {events:?}"
        );
    }
}

/// From a local cache an older build's file is read once, as it is copied: the copy checks
/// its bytes against the blob, so it is not also read and hashed when the restore is planned
/// (a remote cache does that, to leave the blob out of its prefetch: tests/s3.rs).
#[test]
fn issue_13_from_a_local_cache_each_older_file_is_opened_once_and_copied() {
    let w = World::new(Flavor::Guix);
    let (id1, id2) = two_generations(&w);
    restore_id(&w, "dst", &id1);
    let pkg1 = w.layout("dst").real_store_dir().join(PKG1);
    let dirs = ["bin", "lib", "share"].map(|d| pkg1.join(d));
    let watch = Watch::new(&dirs.iter().map(|d| d.as_path()).collect::<Vec<_>>());
    let r = restore_id(&w, "dst", &id2);
    assert_generation_2(&w, "dst", &r);
    assert_eq!(r["local_files"], 4, "{r}");
    let events = watch.events();
    for (rel, _, _) in package(DEP2, PKG2) {
        let name = rel.rsplit('/').next().unwrap();
        let opens = events
            .iter()
            .filter(|e| e.contains("OPEN") && e.ends_with(&format!("{name:?})")))
            .count();
        assert_eq!(opens, 1, "{rel} opened {opens} times: {events:?}");
    }
}

#[test]
fn issue_13_an_older_build_changed_between_plan_and_write_is_not_used() {
    let w = World::new(Flavor::Guix);
    let (id1, id2) = two_generations(&w);
    restore_id(&w, "dst", &id1);
    let dst = w.layout("dst");
    let progress = ChangeWhenWriting(dst.real_store_dir().join(PKG1));
    let opts = storesync::restore::RestoreOptions {
        snapshot: Some(id2),
        ..Default::default()
    };
    let r = storesync::restore::restore(&dst, &w.cache(), &opts, &progress).unwrap();
    let r = serde_json::to_value(&r).unwrap();
    assert_generation_2(&w, "dst", &r);
    let changed = ["bin/prog", "lib/libpkg.so"];
    assert_eq!(r["local_files"], 2, "{r}");
    assert_eq!(r["local_bytes"], pkg2_bytes(&changed), "{r}");
    let from_cache = 20_000 + pkg2_bytes(&[]) - pkg2_bytes(&changed);
    assert_eq!(r["bytes_written"], from_cache, "{r}");
}

/// A store that fills up while a file is copied from the older build: the restore fails
/// saying so, registers nothing it did not verify, leaves no scratch entry, and a restore with
/// room completes the store, copying from the older build again.
#[test]
fn issue_13_a_store_full_during_a_copy_from_the_older_build_registers_nothing_unverified() {
    let w = World::new(Flavor::Guix);
    let (id1, id2) = two_generations(&w);
    let dst = w.layout("dst");
    let Some(tmpfs) = util::Tmpfs::mount(&dst.real_store_dir(), 64 << 10) else {
        eprintln!("skipped: no tmpfs");
        return;
    };
    restore_id(&w, "dst", &id1);
    let gen1 = util::db_rows(&dst);
    // Room for DEP2 (20,000 bytes from the cache) and about half of PKG2's files.
    let st = rustix::fs::statvfs(dst.real_store_dir()).unwrap();
    let used = (st.f_blocks - st.f_bfree) * st.f_frsize;
    let kib = (used + 20_000 + pkg2_bytes(&[]) / 2) / 1024 + 4;
    tmpfs.resize(kib);
    let out = w
        .cmd("dst")
        .args(["--json", "restore", "--snapshot", &id2, "--cache"])
        .arg(w.cache_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains(PKG2),
        "{err}"
    );
    let rows = util::db_rows(&dst);
    assert!(
        !rows.paths.contains_key(&format!("/gnu/store/{PKG2}")),
        "registered while its files did not fit: {err}"
    );
    for (p, row) in &gen1.paths {
        assert_eq!(rows.paths.get(p), Some(row), "{p}");
    }
    assert_eq!(util::leftovers(&dst), Vec::<String>::new(), "left behind");
    util::check_clean(&dst, &rows, "after the full store");
    tmpfs.resize(64 << 10);
    let r = restore_id(&w, "dst", &id2);
    assert_eq!(
        r["paths"],
        serde_json::json!([format!("/gnu/store/{PKG2}")]),
        "{r}"
    );
    assert_generation_2_files(&w, "dst", &r);
    assert_eq!(r["local_files"], 4, "{r}");
    util::check_clean(&dst, &util::db_rows(&dst), "with room");
    drop(tmpfs);
}
