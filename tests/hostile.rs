//! Restores from hostile caches and into hostile targets. Every cache here is valid format-v1
//! (ids, envelopes and index entries all correct, see `util::write_cache`): only the content
//! lies, as it can in a cache anyone with the repository token may have written. Each test
//! names the check it holds; docs/SECURITY.md lists them.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use storesync::cache::{BlobId, Cache, Node};
use storesync::progress::{NoProgress, Progress};
use storesync::restore::{RestoreOptions, RestoreReport};
use storesync::store::layout::{Flavor, Layout};
use storesync::store::DerivationOutput;
use util::{
    assert_registered_paths_are_on_disk, base_name, dir_node, dir_state, file_node, nar_of,
    nar_str, row_for, write_cache, Blobs, World,
};

fn restore_lib(
    layout: &Layout,
    cache_dir: &Path,
    snapshot: Option<&str>,
    progress: &dyn Progress,
) -> storesync::error::Result<RestoreReport> {
    let cache = Cache::open_dir(cache_dir).unwrap();
    let opts = RestoreOptions {
        snapshot: snapshot.map(Into::into),
        ..RestoreOptions::default()
    };
    storesync::restore::restore(layout, &cache, &opts, progress)
}

fn restore(layout: &Layout, cache_dir: &Path) -> storesync::error::Result<RestoreReport> {
    restore_lib(layout, cache_dir, None, &NoProgress)
}

// ---------------------------------------------------------------------------------------------
// 1. What is registered is what is on disk: bytes counted against the declared size.

/// What the encoder of the old restore hashed: the declared size and executable bit from the
/// tree, and whatever bytes the blob holds.
fn nar_as_declared(node: &Node, blobs: &Blobs) -> Vec<u8> {
    fn walk(n: &Node, blobs: &Blobs, out: &mut Vec<u8>) {
        nar_str(out, b"(");
        nar_str(out, b"type");
        match n {
            Node::Regular {
                executable,
                size,
                blob,
                ..
            } => {
                nar_str(out, b"regular");
                if *executable {
                    nar_str(out, b"executable");
                    nar_str(out, b"");
                }
                nar_str(out, b"contents");
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&blobs[blob]);
                out.extend(std::iter::repeat_n(0u8, ((8 - size % 8) % 8) as usize));
            }
            Node::Symlink { .. } => unreachable!(),
            Node::Directory(entries) => {
                nar_str(out, b"directory");
                for e in entries {
                    for s in [&b"entry"[..], b"(", b"name", &e.name, b"node"] {
                        nar_str(out, s);
                    }
                    walk(&e.node, blobs, out);
                    nar_str(out, b")");
                }
            }
        }
        nar_str(out, b")");
    }
    let mut out = Vec::new();
    nar_str(&mut out, b"nix-archive-1");
    walk(node, blobs, &mut out);
    out
}

/// The NAR bytes between file `a`'s contents and file `b`'s contents in a directory of two
/// regular files `a` and `b` (`a`'s size a multiple of 8: no padding).
fn between_a_and_b(size_b: u64) -> Vec<u8> {
    let mut x = Vec::new();
    for s in [
        ")", ")", "entry", "(", "name", "b", "node", "(", "type", "regular", "contents",
    ] {
        nar_str(&mut x, s.as_bytes());
    }
    x.extend_from_slice(&size_b.to_le_bytes());
    x
}

fn regular(size: u64, contents: &[u8], blobs: &mut Blobs) -> Node {
    let blob = BlobId::of(contents);
    blobs.insert(blob, contents.to_vec());
    Node::Regular {
        executable: false,
        size,
        blob,
        file_nar_hash: [0; 32],
    }
}

#[test]
fn blob_bytes_beyond_or_short_of_the_declared_size_cannot_forge_a_nar() {
    // Two genuine paths, each a directory of files `a` and `b`, and a tree for each whose
    // blobs hold NAR syntax: one blob short of its declared size, the other long by as much,
    // so that declared sizes plus blob bytes hash exactly like the genuine NAR while the disk
    // would hold other files.
    let w = World::new(Flavor::Guix);
    let mut genuine_blobs = Blobs::new();
    let mut blobs = Blobs::new();
    let mut paths = Vec::new();
    // `a` short: genuine a = A ++ X (256 bytes), b = 40 bytes; hostile a = A, b = X ++ b.
    let x = between_a_and_b(40);
    let a = [vec![b'a'; 256 - x.len()], x.clone()].concat();
    let b = vec![b'b'; 40];
    let genuine = dir_node(vec![
        ("a", file_node(&mut genuine_blobs, false, &a)),
        ("b", file_node(&mut genuine_blobs, false, &b)),
    ]);
    let hostile = dir_node(vec![
        ("a", regular(256, &a[..256 - x.len()], &mut blobs)),
        (
            "b",
            regular(40, &[x.clone(), b.clone()].concat(), &mut blobs),
        ),
    ]);
    paths.push((genuine, hostile, base_name(1, "short-a")));
    // `a` long: genuine a = 64 bytes, b = X ++ tail; hostile a = a ++ X, b = tail.
    let tail = vec![b'd'; 40];
    let x = between_a_and_b((between_a_and_b(0).len() + tail.len()) as u64);
    let a = vec![b'c'; 64];
    let b = [x.clone(), tail.clone()].concat();
    let genuine = dir_node(vec![
        ("a", file_node(&mut genuine_blobs, false, &a)),
        ("b", file_node(&mut genuine_blobs, false, &b)),
    ]);
    let hostile = dir_node(vec![
        (
            "a",
            regular(64, &[a.clone(), x.clone()].concat(), &mut blobs),
        ),
        ("b", regular(b.len() as u64, &tail, &mut blobs)),
    ]);
    paths.push((genuine, hostile, base_name(2, "long-a")));
    let mut rows = Vec::new();
    for (genuine, hostile, base) in &paths {
        let nar = nar_of(genuine, &genuine_blobs);
        // The forgery is real: what the old restore hashed is the genuine NAR.
        assert_eq!(nar_as_declared(hostile, &blobs), nar, "{base}");
        rows.push((row_for(base, &nar), hostile.clone()));
    }
    write_cache(&w.cache_dir(), w.flavor, &rows, &blobs, vec![]);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 0, "{r:?}");
    assert_eq!(r.failed.len(), 2, "{r:?}");
    for f in &r.failures {
        assert!(f.error.contains("bytes"), "{}", f.error);
    }
    assert_registered_paths_are_on_disk(&dst);
    for (_, _, base) in &paths {
        assert!(!dst.real_store_dir().join(base).exists(), "{base} on disk");
    }
}

#[test]
fn a_blob_longer_than_its_declared_size_is_not_written_past_it() {
    // A tiny cache declaring a 10-byte file whose blob is 16 MiB (of zeros: it compresses to
    // almost nothing) must not make the restore write 16 MiB, let alone twice.
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let mut genuine_blobs = Blobs::new();
    let genuine = file_node(&mut genuine_blobs, false, &[0u8; 10]);
    let hostile = regular(10, &vec![0u8; 16 << 20], &mut blobs);
    let base = base_name(3, "tiny");
    let row = row_for(&base, &nar_of(&genuine, &genuine_blobs));
    write_cache(&w.cache_dir(), w.flavor, &[(row, hostile)], &blobs, vec![]);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(
        r.failures[0].error.contains("10 bytes"),
        "{}",
        r.failures[0].error
    );
    assert!(r.bytes_written <= 10, "{} bytes written", r.bytes_written);
}
// ---------------------------------------------------------------------------------------------
// 3. Two paths, one hash part.

#[test]
fn two_paths_with_one_hash_part_are_refused() {
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let x = file_node(&mut blobs, false, b"x");
    let y = file_node(&mut blobs, false, b"y");
    let rows = vec![
        (row_for(&base_name(9, "x"), &nar_of(&x, &blobs)), x),
        (row_for(&base_name(9, "y"), &nar_of(&y, &blobs)), y),
    ];
    write_cache(&w.cache_dir(), w.flavor, &rows, &blobs, vec![]);
    let dst = w.layout("dst");
    let err = restore(&dst, &w.cache_dir()).unwrap_err().to_string();
    assert!(err.contains("hash part"), "{err}");
    assert!(!dst.real_store_dir().join(base_name(9, "x")).exists());
    assert!(!dst.db_file().exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Nothing outside the store and DB directories is touched, whatever is a symlink.

/// Pseudo-random bytes (xorshift), distinct per seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A cache of one genuine path `base` holding `node`.
fn one_path_cache(w: &World, base: &str, node: &Node, blobs: &Blobs) -> String {
    let row = row_for(base, &nar_of(node, blobs));
    write_cache(
        &w.cache_dir(),
        w.flavor,
        &[(row, node.clone())],
        blobs,
        vec![],
    )
}

/// A small genuine store path: a directory with a script and a file of 10 KiB.
fn sample_path(n: u64) -> (String, Node, Blobs) {
    let mut blobs = Blobs::new();
    let node = dir_node(vec![
        (
            "bin",
            dir_node(vec![("run", file_node(&mut blobs, true, b"#!/bin/sh\n"))]),
        ),
        ("data", file_node(&mut blobs, false, &noise(n, 10_240))),
    ]);
    (base_name(n, "sample"), node, blobs)
}

/// A world with a one-path cache, a `dst` root and an `outside` directory holding a file.
fn world_with_outside() -> (World, Layout, std::path::PathBuf) {
    let w = World::new(Flavor::Guix);
    let (base, node, blobs) = sample_path(10);
    one_path_cache(&w, &base, &node, &blobs);
    let outside = w.root("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"precious").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    let dst = w.layout("dst");
    (w, dst, outside)
}

#[test]
fn symlinked_store_dir_is_refused() {
    let (w, dst, outside) = world_with_outside();
    fs::create_dir_all(dst.real_store_dir().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, dst.real_store_dir()).unwrap();
    let before = dir_state(&outside);
    let err = restore(&dst, &w.cache_dir()).unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(dir_state(&outside), before);
}

#[test]
fn symlinked_leftovers_are_removed_not_followed() {
    // Leftovers of an interrupted restore, and an invalid leftover at a path's own name, that
    // are symlinks to a directory outside or hold such symlinks: removed, never followed.
    let (w, dst, outside) = world_with_outside();
    let (_, snap) = Cache::open_dir(&w.cache_dir())
        .unwrap()
        .find_snapshot(None)
        .unwrap();
    let store = dst.real_store_dir();
    fs::create_dir_all(&store).unwrap();
    let link = |name: &str| std::os::unix::fs::symlink(&outside, store.join(name)).unwrap();
    link(".storesync-tmp-old");
    link(".storesync-trash-old");
    link(snap.paths[0].info.path.base_name());
    fs::create_dir_all(store.join(".storesync-tmp-dir/sub")).unwrap();
    std::os::unix::fs::symlink(&outside, store.join(".storesync-tmp-dir/sub/out")).unwrap();
    let before = dir_state(&outside);
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 1, "{r:?}");
    assert_eq!(r.replaced_leftovers, 1);
    assert_eq!(dir_state(&outside), before);
    assert_registered_paths_are_on_disk(&dst);
    let names: Vec<_> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".storesync"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn remove_tree_never_follows_a_directory_swapped_for_a_symlink() {
    // A tree being removed whose subdirectories are swapped for symlinks to a directory
    // outside while the removal runs (as the owner of a leftover could): the outside
    // directory keeps its files and its mode.
    // The outside files have the names of the files in the tree: a removal by path through a
    // swapped directory would delete them.
    let w = World::new(Flavor::Guix);
    let outside = w.root("outside");
    fs::create_dir_all(&outside).unwrap();
    for f in 0..100 {
        fs::write(outside.join(format!("f{f}")), b"x").unwrap();
    }
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    let before = dir_state(&outside);
    for round in 0..8 {
        let victim = w.root(&format!("victim-{round}"));
        for d in 0..40 {
            let sub = victim.join(format!("d{d}"));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..100 {
                fs::write(sub.join(format!("f{f}")), b"y").unwrap();
            }
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    for d in 0..40 {
                        let sub = victim.join(format!("d{d}"));
                        if fs::rename(&sub, victim.join(format!("moved-{d}"))).is_ok() {
                            let _ = std::os::unix::fs::symlink(&outside, &sub);
                        }
                    }
                }
            });
            let _ = storesync::store::fs::remove_tree(&victim);
            done.store(true, Ordering::Relaxed);
        });
        assert_eq!(dir_state(&outside), before, "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Derivers and derivation outputs are store paths of the snapshot's store.

#[test]
fn deriver_or_derivation_output_outside_the_store_is_refused() {
    for case in ["deriver", "output"] {
        let w = World::new(Flavor::Guix);
        let mut blobs = Blobs::new();
        let drv = file_node(&mut blobs, false, b"Derive()");
        let out = file_node(&mut blobs, false, b"out");
        let drv_base = base_name(12, "x.drv");
        let mut drv_row = row_for(&drv_base, &nar_of(&drv, &blobs));
        let mut out_row = row_for(&base_name(13, "x"), &nar_of(&out, &blobs));
        let mut outputs = vec![DerivationOutput {
            drv: drv_row.path.clone(),
            id: "out".into(),
            path: format!("/gnu/store/{}", out_row.path),
        }];
        let bad = "/gnu/store/../../etc/passwd";
        match case {
            "deriver" => out_row.deriver = Some(bad.into()),
            _ => outputs[0].path = bad.into(),
        }
        drv_row.deriver = None;
        write_cache(
            &w.cache_dir(),
            w.flavor,
            &[(drv_row, drv), (out_row, out)],
            &blobs,
            outputs,
        );
        let dst = w.layout("dst");
        let err = restore(&dst, &w.cache_dir()).unwrap_err().to_string();
        assert!(err.contains(bad), "{case}: {err}");
        assert!(!dst.db_file().exists(), "{case}");
    }
}
