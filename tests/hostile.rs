//! Restores from hostile caches and into hostile targets. Every cache here is valid format-v2
//! (ids, envelopes and index entries all correct, see `util::write_cache`): only the content
//! lies, as it can in a cache anyone with the repository token may have written. Each test
//! names the check it holds; docs/SECURITY.md lists them.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use storesync::cache::{BlobId, Cache, Node};
use storesync::progress::{NoProgress, Progress};
use storesync::restore::{RestoreOptions, RestoreReport};
use storesync::store::layout::{Flavor, Layout};
use storesync::store::path::nixbase32_encode;
use storesync::store::DerivationOutput;
use util::{
    assert_registered_paths_are_on_disk, base_name, db_rows, dir_node, dir_state, file_nar_hash,
    file_node, nar_of, nar_str, row_for, write_cache, Blobs, World,
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
            Node::Symlink { .. } | Node::Rewritten { .. } => unreachable!(),
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
// 2. `.links`: entries named by the bytes written; entries linked from checked first.

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

/// Every `.links` entry holds what its name says.
fn assert_links_entries_are_sound(store: &Path) {
    let Ok(entries) = fs::read_dir(store.join(".links")) else {
        return;
    };
    for e in entries {
        let e = e.unwrap();
        let hash = storesync::nar::hash_path(&e.path()).unwrap().0;
        assert_eq!(
            nixbase32_encode(&hash.0),
            e.file_name().to_str().unwrap(),
            "a .links entry holds other bytes than its name says"
        );
    }
}

#[test]
fn links_entries_are_named_by_the_bytes_written_not_by_the_tree() {
    // A genuine path whose tree gives its large file the `.links` name of OTHER contents: the
    // daemon would link every later file with those contents to this one.
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let contents = noise(7, 20_000);
    let other = noise(8, 20_000);
    let Node::Regular {
        executable,
        size,
        blob,
        ..
    } = file_node(&mut blobs, false, &contents)
    else {
        unreachable!()
    };
    let lying = Node::Regular {
        executable,
        size,
        blob,
        file_nar_hash: file_nar_hash(false, &other),
    };
    let node = dir_node(vec![("f", lying)]);
    let base = base_name(4, "lying-links-name");
    one_path_cache(&w, &base, &node, &blobs);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(r.failures[0].error.contains(".links"), "{:?}", r.failures);
    assert_links_entries_are_sound(&dst.real_store_dir());
    let poisoned = nixbase32_encode(&file_nar_hash(false, &other));
    assert!(!dst.real_store_dir().join(".links").join(poisoned).exists());
    assert_registered_paths_are_on_disk(&dst);
}

#[test]
fn unusable_links_entries_are_not_linked() {
    // The target's `.links` holds, under the name of a file about to be restored, something
    // that is not that file: a symlink to a file outside with the right bytes, a FIFO, the
    // right bytes with the executable bit, the right bytes owned by another user, the right
    // bytes and more. None may be linked; the file is written from the cache.
    let mut cases = vec!["symlink", "fifo", "executable", "longer"];
    if rustix::process::geteuid().is_root() {
        cases.push("other owner");
    }
    for case in cases {
        let w = World::new(Flavor::Guix);
        let (base, node, blobs) = sample_path(5);
        one_path_cache(&w, &base, &node, &blobs);
        let contents = noise(5, 10_240);
        let name = nixbase32_encode(&file_nar_hash(false, &contents));
        let dst = w.layout("dst");
        let links = dst.real_store_dir().join(".links");
        fs::create_dir_all(&links).unwrap();
        let entry = links.join(&name);
        let outside = w.root("outside");
        fs::create_dir_all(&outside).unwrap();
        let plain = |p: &Path, bytes: &[u8], mode: u32| {
            fs::write(p, bytes).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        };
        match case {
            "symlink" => {
                plain(&outside.join("f"), &contents, 0o444);
                std::os::unix::fs::symlink(outside.join("f"), &entry).unwrap();
            }
            "fifo" => rustix::fs::mknodat(
                rustix::fs::CWD,
                &entry,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o444),
                0,
            )
            .unwrap(),
            "executable" => plain(&entry, &contents, 0o555),
            "longer" => plain(&entry, &[&contents[..], b"more"].concat(), 0o444),
            "other owner" => {
                plain(&entry, &contents, 0o444);
                std::os::unix::fs::chown(&entry, Some(4242), Some(4242)).unwrap();
            }
            _ => unreachable!(),
        }
        let before = dir_state(&outside);
        let entry_before = fs::symlink_metadata(&entry).unwrap();
        // A FIFO would block a reader forever: run the binary, with a deadline.
        let out = w
            .cmd("dst")
            .args(["--json", "restore", "--cache"])
            .arg(w.cache_dir())
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_registered_paths_are_on_disk(&dst);
        let file = dst.real_store_dir().join(&base).join("data");
        let m = fs::symlink_metadata(&file).unwrap();
        assert!(m.is_file(), "{case}");
        assert_ne!(m.ino(), entry_before.ino(), "{case}: linked to the entry");
        let me = rustix::process::geteuid().as_raw();
        assert_eq!((m.uid(), m.mode() & 0o7777), (me, 0o444), "{case}");
        assert_eq!(dir_state(&outside), before, "{case}: outside changed");
    }
}

#[test]
fn links_dir_that_is_a_symlink_or_not_a_directory_is_refused() {
    let mut cases = vec!["symlink", "file"];
    if rustix::process::geteuid().is_root() {
        cases.push("other owner");
    }
    for case in cases {
        let w = World::new(Flavor::Guix);
        let (base, node, blobs) = sample_path(6);
        one_path_cache(&w, &base, &node, &blobs);
        let dst = w.layout("dst");
        let store = dst.real_store_dir();
        fs::create_dir_all(&store).unwrap();
        let outside = w.root("outside");
        fs::create_dir_all(&outside).unwrap();
        let links = store.join(".links");
        match case {
            "symlink" => std::os::unix::fs::symlink(&outside, &links).unwrap(),
            "file" => fs::write(&links, b"").unwrap(),
            "other owner" => {
                fs::create_dir(&links).unwrap();
                std::os::unix::fs::chown(&links, Some(4242), Some(4242)).unwrap();
            }
            _ => unreachable!(),
        }
        let before = dir_state(&outside);
        let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
        assert!(err.contains(".links"), "{case}: {err}");
        assert_eq!(dir_state(&outside), before, "{case}: outside changed");
        assert!(!store.join(&base).exists(), "{case}");
    }
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
    let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
    assert!(err.contains("hash part"), "{err}");
    assert!(!dst.real_store_dir().join(base_name(9, "x")).exists());
    assert!(!dst.db_file().exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Nothing outside the store and DB directories is touched, whatever is a symlink.

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
    let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(dir_state(&outside), before);
}

#[test]
fn symlinked_db_dir_is_refused() {
    let (w, dst, outside) = world_with_outside();
    fs::create_dir_all(dst.real_db_dir().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, dst.real_db_dir()).unwrap();
    let before = dir_state(&outside);
    let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(dir_state(&outside), before);
}

/// Each of the DB directory's state files as a symlink to a file outside: refused, named,
/// and the file outside unchanged. `db.sqlite` and its WAL files are tried with a DB
/// present, `schema` and `big-lock` without one too.
#[test]
fn symlinked_db_state_files_are_refused() {
    for (name, with_db) in [
        ("big-lock", false),
        ("schema", false),
        ("schema", true),
        ("db.sqlite", true),
        ("db.sqlite-wal", true),
        ("db.sqlite-shm", true),
    ] {
        let (w, dst, outside) = world_with_outside();
        let case = format!("{name} (DB present: {with_db})");
        if with_db {
            // A real DB (from a first restore), its paths taken off so there is work to do.
            restore(&dst, &w.cache_dir()).unwrap();
            let conn = rusqlite::Connection::open(dst.db_file()).unwrap();
            conn.execute_batch("delete from Refs; delete from ValidPaths;")
                .unwrap();
            drop(conn);
            storesync::store::fs::remove_tree(&dst.real_store_dir()).unwrap();
        }
        let db = dst.real_db_dir();
        fs::create_dir_all(&db).unwrap();
        let victim = outside.join(name);
        if name == "db.sqlite" {
            // A database outside: the symlinked DB must not be written through.
            fs::rename(db.join(name), &victim).unwrap();
        } else if with_db || name != "big-lock" {
            fs::write(&victim, b"precious").unwrap();
        }
        let _ = fs::remove_file(db.join(name));
        std::os::unix::fs::symlink(&victim, db.join(name)).unwrap();
        let before = dir_state(&outside);
        let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
        assert!(
            err.contains(name) && err.contains("symlink"),
            "{case}: {err}"
        );
        assert_eq!(dir_state(&outside), before, "{case}: outside changed");
    }
}

/// Found by review: a root restore gives the DB directory and its files to the owner of the
/// directory above it (Guix 1.5's unprivileged daemon user owns `/var/guix`), and did so by
/// path, once the restore was done: that owner, able to rename `db` in its own directory,
/// swapped it for a symlink meanwhile, and root's `schema` and `big-lock` files in the
/// directory it pointed to became theirs. The DB directory is now opened without following a
/// symlink, its files changed relative to it, and the swap is an error naming it.
#[test]
fn a_db_dir_swapped_for_a_symlink_during_restore_gives_nothing_outside_away() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (files given to another user)");
        return;
    }
    struct SwapDbDir {
        db: std::path::PathBuf,
        outside: std::path::PathBuf,
        done: AtomicBool,
    }
    impl Progress for SwapDbDir {
        fn advance(&self, _: u64) {
            if !self.done.swap(true, Ordering::Relaxed) {
                fs::rename(&self.db, self.db.with_extension("moved")).unwrap();
                std::os::unix::fs::symlink(&self.outside, &self.db).unwrap();
            }
        }
    }
    let (w, dst, outside) = world_with_outside();
    // The state directory of an unprivileged daemon, owned by its user (here `nobody`).
    let state = dst.state_dir();
    fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    for name in ["schema", "big-lock"] {
        fs::write(outside.join(name), b"root's").unwrap();
    }
    let before = dir_state(&outside);
    let owners = || {
        fs::read_dir(&outside)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().uid())
            })
            .collect::<Vec<_>>()
    };
    let owners_before = owners();
    let swap = SwapDbDir {
        db: dst.real_db_dir(),
        outside: outside.clone(),
        done: AtomicBool::new(false),
    };
    let r = restore_lib(&dst, &w.cache_dir(), None, &swap);
    assert!(swap.done.load(Ordering::Relaxed), "never swapped");
    assert_eq!(owners(), owners_before, "files outside given away: {r:?}");
    assert_eq!(dir_state(&outside), before, "outside changed: {r:?}");
    let err = storesync::error::Chain(&r.unwrap_err()).to_string();
    assert!(
        err.contains(&dst.real_db_dir().display().to_string()),
        "{err}"
    );
}

/// A root restore gives the DB's files to the owner of the directory above; where
/// `fs.protected_hardlinks` is off, that owner can make one of them a hard link to a file of
/// root's elsewhere (here `big-lock`, which a restore opens and keeps): a file of more than
/// one name is not given, and the restore says which.
#[test]
fn a_db_file_hard_linked_elsewhere_is_not_given_away() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (files given to another user)");
        return;
    }
    let (w, dst, outside) = world_with_outside();
    let state = dst.state_dir();
    fs::create_dir_all(dst.real_db_dir()).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let victim = outside.join("precious");
    fs::hard_link(&victim, dst.real_db_dir().join("big-lock")).unwrap();
    let r = restore(&dst, &w.cache_dir());
    assert_eq!(fs::metadata(&victim).unwrap().uid(), 0, "given away: {r:?}");
    let err = storesync::error::Chain(&r.unwrap_err()).to_string();
    assert!(err.contains("big-lock") && err.contains("2 names"), "{err}");
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
    // This version's scratch names, of a process that holds no temporary roots (dead).
    let dead = format!("{}-storesync-4000000", "0".repeat(32));
    link(&format!("{dead}-tmp-0-x"));
    link(&format!("{dead}-trash-1-x"));
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
        .filter(|n| storesync::restore::scratch_kind(n).is_some() || n.ends_with(".lock"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn remove_tree_never_follows_a_directory_swapped_for_a_symlink() {
    // A tree being removed whose subdirectories are swapped for symlinks to a directory
    // outside while the removal is inside them (as the owner of a leftover could): the
    // outside directory keeps its files, which have the names of the files in the tree (a
    // removal by path through a swapped directory would delete them), and its mode.
    let w = World::new(Flavor::Guix);
    let outside = w.root("outside");
    fs::create_dir_all(&outside).unwrap();
    for f in 0..100 {
        fs::write(outside.join(format!("f{f}")), b"x").unwrap();
    }
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    let before = dir_state(&outside);
    // At least three rounds, and more until the racer has swapped something: on a loaded
    // machine the removal can finish a round before the racer is scheduled at all.
    let mut swaps = 0;
    for round in 0..40 {
        if round >= 3 && swaps > 0 {
            break;
        }
        let victim = w.root(&format!("victim-{round}"));
        for d in 0..20 {
            let sub = victim.join(format!("d{d}"));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..100 {
                fs::write(sub.join(format!("f{f}")), b"y").unwrap();
            }
        }
        let done = AtomicBool::new(false);
        swaps += std::thread::scope(|s| {
            let racer = s.spawn(|| {
                let mut swapped = [false; 20];
                while !done.load(Ordering::Relaxed) {
                    for (d, swapped) in swapped.iter_mut().enumerate() {
                        let sub = victim.join(format!("d{d}"));
                        // Swapped once the removal has started emptying it.
                        let emptying = !*swapped
                            && fs::read_dir(&sub).is_ok_and(|e| e.count() < 100)
                            && fs::symlink_metadata(&sub).is_ok_and(|m| m.is_dir());
                        if emptying && fs::rename(&sub, victim.join(format!("moved-{d}"))).is_ok() {
                            let _ = std::os::unix::fs::symlink(&outside, &sub);
                            *swapped = true;
                        }
                    }
                }
                swapped.iter().filter(|s| **s).count()
            });
            let _ = storesync::store::fs::remove_tree(&victim);
            done.store(true, Ordering::Relaxed);
            racer.join().unwrap()
        });
        assert_eq!(dir_state(&outside), before, "round {round}");
    }
    assert!(
        swaps > 0,
        "the racing thread never swapped a directory being removed"
    );
}

#[test]
fn directory_swapped_for_a_symlink_during_restore_writes_nothing_outside() {
    // While a path is written under its temporary name, a racing thread swaps a directory of
    // it for a symlink to a directory outside (as another local user who could reach it
    // would): the files of that directory must not land outside.
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let files: Vec<(String, Node)> = (0..1500)
        .map(|i| {
            let name = format!("f{i:05}");
            let node = file_node(&mut blobs, false, name.as_bytes());
            (name, node)
        })
        .collect();
    let node = dir_node(vec![(
        "d",
        dir_node(files.iter().map(|(n, f)| (n.as_str(), f.clone())).collect()),
    )]);
    let base = base_name(11, "many-files");
    one_path_cache(&w, &base, &node, &blobs);
    let outside = w.root("outside");
    let mut swapped = 0;
    for round in 0..5 {
        fs::create_dir_all(&outside).unwrap();
        let before = dir_state(&outside);
        let dst = w.layout(&format!("dst-{round}"));
        let store = dst.real_store_dir();
        fs::create_dir_all(&store).unwrap();
        let done = AtomicBool::new(false);
        let swaps = AtomicUsize::new(0);
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut seen = std::collections::HashSet::new();
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(entries) = fs::read_dir(&store) else {
                        continue;
                    };
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if storesync::restore::scratch_kind(&name) != Some("tmp")
                            || seen.contains(&name)
                        {
                            continue;
                        }
                        let d = e.path().join("d");
                        if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir())
                            && fs::rename(&d, e.path().join("d-moved")).is_ok()
                        {
                            let _ = std::os::unix::fs::symlink(&outside, &d);
                            swaps.fetch_add(1, Ordering::Relaxed);
                            seen.insert(name);
                        }
                    }
                }
            });
            let r = restore(&dst, &w.cache_dir());
            done.store(true, Ordering::Relaxed);
            r
        });
        assert_eq!(
            dir_state(&outside),
            before,
            "round {round}: outside changed"
        );
        let r = r.unwrap();
        eprintln!("round {round}: {swaps:?} swaps; failures: {:?}", r.failures);
        // A directory swapped while written fails its attempt; what is registered is on disk.
        assert_registered_paths_are_on_disk(&dst);
        swapped += swaps.load(Ordering::Relaxed);
        if swapped > 0 {
            break;
        }
    }
    assert!(
        swapped > 0,
        "the racing thread never caught a temporary tree"
    );
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
        let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
        assert!(err.contains(bad), "{case}: {err}");
        assert!(!dst.db_file().exists(), "{case}");
    }
}

/// A Nix snapshot naming a path longer than Nix's 211 characters, as one of its paths, a
/// deriver or a derivation output, is refused before anything is written, naming it: Nix
/// could not load the DB row (its `StorePath` throws), and every Nix command reading it would
/// fail. (A Guix store may hold names of up to 222 characters: tests/save.rs.)
#[test]
fn a_nix_snapshot_naming_a_path_longer_than_nix_allows_is_refused() {
    let long = base_name(14, &"n".repeat(215));
    for case in ["path", "deriver", "output"] {
        let w = World::new(Flavor::Nix);
        let mut blobs = Blobs::new();
        let drv = file_node(&mut blobs, false, b"Derive()");
        let out = file_node(&mut blobs, false, b"out");
        let drv_row = row_for(&base_name(12, "x.drv"), &nar_of(&drv, &blobs));
        let out_base = match case {
            "path" => long.clone(),
            _ => base_name(13, "x"),
        };
        let mut out_row = row_for(&out_base, &nar_of(&out, &blobs));
        let mut outputs = vec![DerivationOutput {
            drv: drv_row.path.clone(),
            id: "out".into(),
            path: format!("/nix/store/{}", out_row.path),
        }];
        match case {
            "deriver" => out_row.deriver = Some(format!("/nix/store/{long}")),
            "output" => outputs[0].path = format!("/nix/store/{long}"),
            _ => {}
        }
        write_cache(
            &w.cache_dir(),
            w.flavor,
            &[(drv_row, drv), (out_row, out)],
            &blobs,
            outputs,
        );
        let dst = w.layout("dst");
        let err = storesync::error::Chain(&restore(&dst, &w.cache_dir()).unwrap_err()).to_string();
        assert!(
            err.contains(&long) && err.contains("215 characters") && err.contains("211"),
            "{case}: {err}"
        );
        assert!(!dst.db_file().exists(), "{case}");
        assert!(!dst.real_store_dir().join(&long).exists(), "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Target failures stop the restore; a locked DB is reported, and waited for a bounded time.

#[test]
fn full_store_stops_the_restore_at_the_first_failure() {
    // The store is a 256 KiB tmpfs (in a private mount namespace); a dozen paths of 64 KiB
    // each cannot all fit. Once the disk is full no path can be written: the restore must
    // stop there, not try every remaining path twice.
    let usable = rustix::process::geteuid().is_root()
        && std::process::Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("skipped: needs root and unshare -m");
        return;
    }
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let rows: Vec<_> = (0..12)
        .map(|i| {
            let node = file_node(&mut blobs, false, &noise(100 + i, 64 * 1024));
            (
                row_for(&base_name(100 + i, "big"), &nar_of(&node, &blobs)),
                node,
            )
        })
        .collect();
    write_cache(&w.cache_dir(), w.flavor, &rows, &blobs, vec![]);
    let dst = w.layout("dst");
    fs::create_dir_all(dst.real_store_dir()).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("storesync");
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(
            "mount --make-rprivate / && mount -t tmpfs -o size=256k tmpfs \"$1\" && shift && exec \"$@\"",
        )
        .arg("sh")
        .arg(dst.real_store_dir())
        .arg(&bin)
        .args(["--flavor", "guix", "--root"])
        .arg(&dst.root)
        .args(["--no-progress", "--jobs", "1", "--json", "restore", "--cache"])
        .arg(w.cache_dir())
        .env_remove("GUIX_DATABASE_DIRECTORY")
        .env_remove("GUIX_STATE_DIRECTORY")
        .env_remove("NIX_STORE_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let r = util::json(&out.stdout);
    let failed = r["failed"].as_array().unwrap().len();
    let not_attempted = r["not_attempted"].as_array().map_or(0, |a| a.len());
    let restored = r["restored"].as_u64().unwrap() as usize;
    // Two writer threads for one job: at most two paths attempted once the disk is full.
    assert!(failed <= 2, "{r}");
    assert!(not_attempted >= 12 - 2 - restored - failed, "{r}");
    assert_eq!(restored + failed + not_attempted, 12, "{r}");
    assert!(
        r["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{r}"
    );
}

/// Found by review: a path whose writing runs out of descriptors (`EMFILE`, a low `ulimit -n`
/// and a deeply nested path) was tried again under the same temporary name, which the first
/// attempt's removal, itself out of descriptors while the writer still held its own, had left:
/// the error said `File exists` instead of the cause, and the temporary tree stayed in the
/// store after the restore exited.
#[test]
fn a_path_out_of_descriptors_fails_naming_the_cause_and_leaves_no_temporary_tree() {
    use std::os::unix::process::CommandExt;
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let mut node = file_node(&mut blobs, false, b"deep\n");
    for _ in 0..200 {
        node = dir_node(vec![("d", node)]);
    }
    let base = base_name(31, "deep");
    write_cache(
        &w.cache_dir(),
        w.flavor,
        &[(row_for(&base, &nar_of(&node, &blobs)), node)],
        &blobs,
        vec![],
    );
    let dst = w.layout("dst");
    fs::create_dir_all(dst.real_store_dir()).unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("storesync"));
    cmd.args(["--flavor", "guix", "--root"])
        .arg(&dst.root)
        .args([
            "--no-progress",
            "--jobs",
            "1",
            "--json",
            "restore",
            "--cache",
        ])
        .arg(w.cache_dir())
        .env_remove("GUIX_DATABASE_DIRECTORY")
        .env_remove("GUIX_STATE_DIRECTORY")
        .env_remove("NIX_STORE_DIR");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let r = util::json(&out.stdout);
    assert_eq!(r["failed"][0], format!("/gnu/store/{base}"), "{r}");
    let error = r["failures"][0]["error"].as_str().unwrap();
    assert!(error.contains("Too many open files"), "{error}");
    assert!(
        util::leftovers(&dst).is_empty(),
        "{:?}",
        util::leftovers(&dst)
    );
    assert!(!dst.real_store_dir().join(&base).exists());
    assert!(db_rows(&dst).paths.is_empty());
}

/// Notes received, with when.
struct Notes {
    start: Instant,
    notes: Mutex<Vec<(Duration, String)>>,
}

impl Progress for Notes {
    fn note(&self, msg: &str) {
        self.notes
            .lock()
            .unwrap()
            .push((self.start.elapsed(), msg.to_owned()));
    }
}

/// A cache of two sample paths (`a`, `b`) whose first snapshot holds `a` only, and a target
/// `dst` restored from that snapshot. Returns the target and the two base names.
fn one_path_restored_of_two(w: &World, a: u64, b: u64) -> (Layout, String, String) {
    let (base, node, blobs) = sample_path(a);
    let first = one_path_cache(w, &base, &node, &blobs);
    let (base2, node2, blobs2) = sample_path(b);
    let mut all = blobs.clone();
    all.extend(blobs2.clone());
    write_cache(
        &w.cache_dir(),
        w.flavor,
        &[
            (row_for(&base, &nar_of(&node, &blobs)), node.clone()),
            (row_for(&base2, &nar_of(&node2, &blobs2)), node2),
        ],
        &all,
        vec![],
    );
    let dst = w.layout("dst");
    restore_lib(&dst, &w.cache_dir(), Some(&first), &NoProgress).unwrap();
    (dst, base, base2)
}

#[test]
fn db_locked_by_another_writer_is_reported_within_seconds() {
    let w = World::new(Flavor::Guix);
    let (dst, _, _) = one_path_restored_of_two(&w, 20, 21);
    // Another process writing the DB: this test's own connection, holding the write lock.
    let other = rusqlite::Connection::open(dst.db_file()).unwrap();
    other.execute_batch("begin immediate").unwrap();
    let notes = Notes {
        start: Instant::now(),
        notes: Mutex::new(Vec::new()),
    };
    let held = Duration::from_secs(6);
    let r = std::thread::scope(|s| {
        let h = s.spawn(|| restore_lib(&dst, &w.cache_dir(), None, &notes));
        std::thread::sleep(held);
        other.execute_batch("commit").unwrap();
        h.join().unwrap()
    });
    let r = r.unwrap();
    assert_eq!(r.restored, 1, "{r:?}");
    let notes = notes.notes.into_inner().unwrap();
    let waiting = notes
        .iter()
        .find(|(_, m)| m.contains("waiting for the DB lock"))
        .unwrap_or_else(|| panic!("no note about the lock: {notes:?}"));
    assert!(waiting.0 < held, "{notes:?}");
    assert_eq!(db_rows(&dst).paths.len(), 2);
}

#[test]
fn a_registration_that_fails_leaves_nothing_it_wrote_on_disk() {
    let w = World::new(Flavor::Guix);
    let (dst, base, base2) = one_path_restored_of_two(&w, 22, 23);
    // The DB refuses every new row (a full disk, a damaged DB, a daemon's schema check: a
    // trigger stands for them here), after the paths were written and verified.
    rusqlite::Connection::open(dst.db_file())
        .unwrap()
        .execute_batch(
            "create trigger refuse before insert on ValidPaths \
             begin select raise(abort, 'refused by the test'); end;",
        )
        .unwrap();
    let e = restore_lib(&dst, &w.cache_dir(), None, &NoProgress).unwrap_err();
    assert!(
        storesync::error::Chain(&e)
            .to_string()
            .contains("refused by the test"),
        "{e}"
    );
    assert_eq!(db_rows(&dst).paths.len(), 1, "nothing registered");
    // What it wrote is gone: no path, no scratch entry; the valid path untouched.
    let store = dst.real_store_dir();
    let mut names: Vec<String> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".links")
        .collect();
    names.sort();
    assert_eq!(names, std::slice::from_ref(&base), "{names:?}");
    assert!(!store.join(&base2).exists());
    assert_registered_paths_are_on_disk(&dst);
}

// ---------------------------------------------------------------------------------------------
// Rewritten files (issue 14): hash parts put back only where a sound tree says, the result
// checked like any other file.

const H: [u8; 32] = *b"0123456789abcdfghijklmnpqrsvwxyz";
const H2: [u8; 32] = *b"zyxwvsrqpnmlkjihgfdcba9876543210";

/// A genuine file of 20 KB naming `H` at byte 100 and 10000, and its rewritten blob.
fn naming_h() -> (Vec<u8>, Vec<u8>) {
    let mut genuine = noise(9, 20_000);
    let mut blob = genuine.clone();
    for at in [100, 10_000] {
        genuine[at..at + 32].copy_from_slice(&H);
        blob[at..at + 32].copy_from_slice(&[b'e'; 32]);
    }
    (genuine, blob)
}

fn rewritten(
    blob: &[u8],
    genuine: &[u8],
    rewrites: Vec<storesync::cache::Rewrite>,
    blobs: &mut Blobs,
) -> Node {
    let id = BlobId::of(blob);
    blobs.insert(id, blob.to_vec());
    Node::Rewritten {
        executable: false,
        size: genuine.len() as u64,
        blob: id,
        file_nar_hash: file_nar_hash(false, genuine),
        rewrites,
    }
}

fn rw(offset: u64, hash_part: [u8; 32]) -> storesync::cache::Rewrite {
    storesync::cache::Rewrite { offset, hash_part }
}

/// Restore a cache of one path `base` whose DB row vouches for `genuine` (one file `f`) and
/// whose tree is `hostile`; returns the failures' messages. Nothing may be registered.
fn restore_hostile(
    w: &World,
    base: &str,
    genuine: &[u8],
    hostile: Node,
    blobs: &Blobs,
) -> Vec<String> {
    let mut gb = Blobs::new();
    let row = row_for(
        base,
        &nar_of(
            &dir_node(vec![("f", file_node(&mut gb, false, genuine))]),
            &gb,
        ),
    );
    write_cache(
        &w.cache_dir(),
        w.flavor,
        &[(row, dir_node(vec![("f", hostile)]))],
        blobs,
        vec![],
    );
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 0, "{r:?}");
    assert_registered_paths_are_on_disk(&dst);
    assert!(db_rows(&dst).paths.is_empty());
    assert!(!dst.real_store_dir().join(base).exists());
    r.failures.iter().map(|f| f.error.clone()).collect()
}

#[test]
fn a_sound_rewritten_tree_restores_the_genuine_bytes() {
    let w = World::new(Flavor::Guix);
    let (genuine, blob) = naming_h();
    let mut blobs = Blobs::new();
    let node = dir_node(vec![(
        "f",
        rewritten(&blob, &genuine, vec![rw(100, H), rw(10_000, H)], &mut blobs),
    )]);
    let base = base_name(20, "rewritten");
    let mut gb = Blobs::new();
    let row = row_for(
        &base,
        &nar_of(
            &dir_node(vec![("f", file_node(&mut gb, false, &genuine))]),
            &gb,
        ),
    );
    write_cache(&w.cache_dir(), w.flavor, &[(row, node)], &blobs, vec![]);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 1, "{r:?}");
    assert!(fs::read(dst.real_store_dir().join(&base).join("f")).unwrap() == genuine);
    assert_links_entries_are_sound(&dst.real_store_dir());
}

#[test]
fn a_rewrite_where_the_blob_holds_no_placeholder_fails_its_path() {
    let w = World::new(Flavor::Guix);
    let (genuine, _) = naming_h();
    let mut blobs = Blobs::new();
    // The blob is the genuine bytes: the tree's positions hold H, not the placeholder.
    let hostile = rewritten(&genuine, &genuine, vec![rw(100, H)], &mut blobs);
    let errors = restore_hostile(
        &w,
        &base_name(21, "no-placeholder"),
        &genuine,
        hostile,
        &blobs,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no placeholder at byte 100")),
        "{errors:?}"
    );
}

#[test]
fn a_rewrite_naming_another_hash_part_is_not_registered() {
    let w = World::new(Flavor::Guix);
    let (genuine, blob) = naming_h();
    let mut blobs = Blobs::new();
    let hostile = rewritten(
        &blob,
        &genuine,
        vec![rw(100, H), rw(10_000, H2)],
        &mut blobs,
    );
    let errors = restore_hostile(&w, &base_name(22, "other-hash"), &genuine, hostile, &blobs);
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn rewrites_out_of_range_overlapping_or_unsorted_are_refused_at_decode() {
    let (genuine, blob) = naming_h();
    for (n, rewrites, why) in [
        (23, vec![rw(19_990, H)], "beyond the file"),
        (24, vec![rw(100, H), rw(120, H)], "overlaps"),
        (25, vec![rw(10_000, H), rw(100, H)], "overlaps or precedes"),
        (26, vec![], "without rewrites"),
    ] {
        let w = World::new(Flavor::Guix);
        let mut blobs = Blobs::new();
        let hostile = rewritten(&blob, &genuine, rewrites, &mut blobs);
        let errors = restore_hostile(&w, &base_name(n, "bad-rewrites"), &genuine, hostile, &blobs);
        assert!(
            errors.iter().any(|e| e.contains("tree") && e.contains(why)),
            "{why}: {errors:?}"
        );
    }
}

#[test]
fn verify_names_each_unsound_tree_once_with_the_first_snapshot_path_naming_it() {
    // Snapshot 1: a path whose tree names a blob no index has, and a sound one. Snapshot 2
    // (written after) names the same unsound tree, and a tree no index has.
    let w = World::new(Flavor::Guix);
    let dir = w.cache_dir();
    let mut blobs = Blobs::new();
    let lost = file_node(&mut blobs, false, b"no index has me");
    let Node::Regular {
        blob: lost_blob, ..
    } = lost
    else {
        unreachable!()
    };
    blobs.remove(&lost_blob);
    let sound = file_node(&mut blobs, false, b"sound");
    let (a, b) = (base_name(1, "a"), base_name(2, "b"));
    let paths = vec![
        (row_for(&a, b"-"), dir_node(vec![("f", lost)])),
        (row_for(&b, b"-"), sound),
    ];
    write_cache(&dir, Flavor::Guix, &paths, &blobs, Vec::new());
    let cache = Cache::open_dir(&dir).unwrap();
    let first_id = cache.list_snapshots().unwrap()[0].id;
    let first = first_id.hex();
    let mut snap = cache.read_snapshot(&first_id).unwrap();
    snap.created += 1;
    let c = base_name(3, "c");
    snap.paths.push(storesync::cache::SnapshotPath {
        info: row_for(&c, b"-"),
        tree: storesync::cache::TreeId([9; 32]),
    });
    let second = cache.write_snapshot(&snap).unwrap().hex();
    let cache = Cache::open_dir(&dir).unwrap();
    let v = storesync::verify::verify(&cache, &NoProgress).unwrap();
    assert_eq!(v.snapshots, 2);
    let lost_tree: Vec<&String> = v
        .problems
        .iter()
        .filter(|p| p.contains(&lost_blob.to_string()))
        .collect();
    assert_eq!(lost_tree.len(), 1, "{:#?}", v.problems);
    assert!(
        lost_tree[0].starts_with(&format!("snapshot {}: {a}: ", &first[..12])),
        "{lost_tree:?}"
    );
    let missing: Vec<&String> = v.problems.iter().filter(|p| p.contains(&c)).collect();
    assert_eq!(missing.len(), 1, "{:#?}", v.problems);
    assert!(missing[0].starts_with(&format!("snapshot {}: ", &second[..12])));
    assert_eq!(v.problems.len(), 2, "{:#?}", v.problems);
    assert_eq!(v.garbage_files, 0, "not counted on a damaged cache");
}

// ---------------------------------------------------------------------------------------------
// 8. The target's valid paths: never taken for a restore's own files, never shadowed.

/// A cache of two paths sharing one 9,000-byte file (so `.links` holds it): `<n>-Cargo.lock`,
/// that file itself, and `<n + 1>-pkg` holding it as `Cargo.lock`. Returns the snapshot's id
/// and `pkg`'s base name.
fn lock_named_cache(w: &World, n: u64) -> (String, String) {
    let mut blobs = Blobs::new();
    let contents = noise(n, 9000);
    let lock_path = base_name(n, "Cargo.lock");
    let pkg = base_name(n + 1, "pkg");
    let a = file_node(&mut blobs, false, &contents);
    let b = dir_node(vec![(
        "Cargo.lock",
        file_node(&mut blobs, false, &contents),
    )]);
    let rows = vec![
        (row_for(&lock_path, &nar_of(&a, &blobs)), a),
        (row_for(&pkg, &nar_of(&b, &blobs)), b),
    ];
    (
        write_cache(&w.cache_dir(), w.flavor, &rows, &blobs, vec![]),
        pkg,
    )
}

#[test]
fn a_valid_path_named_like_a_lock_file_is_neither_deleted_nor_written() {
    // `<hash>-Cargo.lock` is a valid store path whose name ends in `.lock` and whose prefix
    // is a store path: a restore must not take it for a path lock left by a killed process.
    // Its bytes are shared through `.links` with `pkg/Cargo.lock`.
    let w = World::new(Flavor::Guix);
    lock_named_cache(&w, 11);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 2, "{r:?}");
    assert_registered_paths_are_on_disk(&dst);
    // Any later restore: here the same snapshot again, which has nothing to write.
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 0, "{r:?}");
    assert_links_entries_are_sound(&dst.real_store_dir());
    assert_registered_paths_are_on_disk(&dst);
}

#[test]
fn a_valid_path_named_like_a_scratch_entry_is_not_removed() {
    // Shaped as a scratch entry of a dead process (no pid 999999 holds temporary roots), but
    // valid: not a leftover.
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let node = dir_node(vec![("f", file_node(&mut blobs, false, b"hello\n"))]);
    let base = base_name(13, "storesync-999999-tmp-0-x");
    one_path_cache(&w, &base, &node, &blobs);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 1, "{r:?}");
    assert_registered_paths_are_on_disk(&dst);
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 0, "{r:?}");
    assert_registered_paths_are_on_disk(&dst);
}

#[test]
fn a_snapshot_path_sharing_a_hash_part_with_a_valid_path_is_not_registered() {
    // The daemons find a path by its hash part: a second path with a valid path's hash part
    // would shadow it, or be shadowed.
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let node = dir_node(vec![("f", file_node(&mut blobs, false, b"evil\n"))]);
    let user_node = dir_node(vec![("g", file_node(&mut blobs, false, b"user\n"))]);
    let bash = base_name(31, "bash-5.2");
    let row = row_for(&bash, &nar_of(&node, &blobs));
    let user = base_name(32, "user");
    let mut user_row = row_for(&user, &nar_of(&user_node, &blobs));
    user_row.references = vec![row.path.clone()];
    write_cache(
        &w.cache_dir(),
        w.flavor,
        &[(row, node), (user_row, user_node)],
        &blobs,
        vec![],
    );
    let dst = w.layout("dst");
    util::add_files_path(
        &dst,
        &base_name(31, "glibc-2.39"),
        &[("g", b"real\n", false)],
        &[],
    );
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(
        r.failures[0].error.contains("glibc-2.39"),
        "{:?}",
        r.failures
    );
    let rows = db_rows(&dst);
    let parts: Vec<&str> = rows
        .paths
        .keys()
        .map(|p| &p.rsplit('/').next().unwrap()[..32])
        .collect();
    let unique: std::collections::HashSet<&&str> = parts.iter().collect();
    assert_eq!(unique.len(), parts.len(), "{:?}", rows.paths.keys());
    assert!(!dst.real_store_dir().join(&bash).exists(), "{bash} on disk");
    // What refers to it is skipped, as the referrers of any failed path.
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert!(!dst.real_store_dir().join(&user).exists(), "{user} on disk");
    assert_registered_paths_are_on_disk(&dst);
}

#[test]
fn a_snapshot_path_whose_lock_name_is_a_valid_path_does_not_truncate_it() {
    // A hostile snapshot's missing `<h>-Cargo` has the lock file name `<h>-Cargo.lock`, which
    // is a valid path of the target (its bytes shared through `.links`).
    let w = World::new(Flavor::Guix);
    let (genuine, pkg) = lock_named_cache(&w, 21);
    let dst = w.layout("dst");
    let r = restore_lib(&dst, &w.cache_dir(), Some(&genuine), &NoProgress).unwrap();
    assert_eq!(r.restored, 2, "{r:?}");
    let mut hblobs = Blobs::new();
    let h = file_node(&mut hblobs, false, b"x");
    let hostile = write_cache(
        &w.cache_dir(),
        w.flavor,
        &[(row_for(&base_name(21, "Cargo"), &nar_of(&h, &hblobs)), h)],
        &hblobs,
        vec![],
    );
    let _ = restore_lib(&dst, &w.cache_dir(), Some(&hostile), &NoProgress);
    let store = dst.real_store_dir();
    let size = fs::metadata(store.join(&pkg).join("Cargo.lock")).map(|m| m.len());
    assert_eq!(
        size.as_ref().ok(),
        Some(&9000),
        "{pkg}/Cargo.lock now: {size:?}"
    );
    assert_links_entries_are_sound(&store);
    assert_registered_paths_are_on_disk(&dst);
}

/// A cache of `dep` and `user` (which refers to it), and a target where `dep` is valid in the
/// DB, with another hash than the snapshot's, and gone from disk: broken, left alone.
fn world_with_a_broken_dep() -> (World, Layout, String, String) {
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let dep = base_name(14, "dep");
    let user = base_name(15, "user");
    let dep_node = dir_node(vec![("f", file_node(&mut blobs, false, b"dep\n"))]);
    let user_node = dir_node(vec![("g", file_node(&mut blobs, false, b"user\n"))]);
    let dep_row = row_for(&dep, &nar_of(&dep_node, &blobs));
    let mut user_row = row_for(&user, &nar_of(&user_node, &blobs));
    user_row.references = vec![dep_row.path.clone()];
    write_cache(
        &w.cache_dir(),
        w.flavor,
        &[(dep_row, dep_node), (user_row, user_node)],
        &blobs,
        vec![],
    );
    let dst = w.layout("dst");
    util::add_files_path(&dst, &dep, &[("f", b"other\n", false)], &[]);
    fs::set_permissions(
        dst.real_store_dir().join(&dep),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::remove_dir_all(dst.real_store_dir().join(&dep)).unwrap();
    (w, dst, dep, user)
}

#[test]
fn a_path_referring_to_a_broken_path_is_not_registered() {
    // `user` refers to the broken `dep`: registered, it would refer to nothing.
    let (w, dst, _, user) = world_with_a_broken_dep();
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.broken.len(), 1, "{r:?}");
    let rows = db_rows(&dst);
    for (referrer, reference) in &rows.refs {
        let on_disk = dst.root.join(reference.trim_start_matches('/'));
        assert!(
            fs::symlink_metadata(&on_disk).is_ok() || !r.paths.contains(referrer),
            "restored {referrer} registered referring to {reference}, which is not on disk: {r:?}"
        );
    }
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert!(!dst.real_store_dir().join(&user).exists(), "{user} on disk");
}

/// Found by review: a path left unregistered because it refers to a broken path (nothing
/// failed) exited 0, which says the snapshot's paths were restored: a CI job went on without
/// them, and the GitHub action called it a hit. Any path not registered is exit 1, and the
/// message says which path it refers to is broken.
#[test]
fn a_path_skipped_for_a_broken_reference_exits_1_naming_it() {
    let (w, dst, dep, user) = world_with_a_broken_dep();
    let out = w.on_cache("dst", &["restore"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&user) && l.contains("not registered")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&dep) && l.contains("missing from disk")),
        "{stderr}"
    );
    assert!(!dst.real_store_dir().join(&user).exists(), "{user} on disk");
}

/// A v2 head's list of index files is not covered by the snapshot's id (nor by a signature):
/// one naming the same large index file 400,000 times (12.8 MB of head) had the file's size
/// counted, and room for its entries reserved, each time (678 TB: the process aborted). Such a
/// head is refused, saying why, and nothing is restored.
#[test]
fn a_head_naming_one_index_file_many_times_is_refused() {
    use storesync::cache::{IndexId, ObjectKind, Packer, Snapshot, SnapshotPath};
    let w = World::new(Flavor::Guix);
    let cache = Cache::open_dir(&w.cache_dir()).unwrap();
    let mut blobs = Blobs::new();
    let node = dir_node(vec![("f", file_node(&mut blobs, false, b"hello\n"))]);
    let base = base_name(2, "small");
    let info = row_for(&base, &nar_of(&node, &blobs));
    let packer = Packer::new(&cache, 3);
    for (id, bytes) in &blobs {
        packer.add(ObjectKind::Blob, *id, bytes).unwrap();
    }
    let (tree, bytes) = node.encode();
    packer.add(ObjectKind::Tree, tree, &bytes).unwrap();
    packer.finish().unwrap();
    // A sparse file of the largest size an index file may have (1 GiB).
    let bogus = IndexId([0xab; 32]);
    fs::File::create(w.cache_dir().join(storesync::cache::index_key(&bogus)))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let mut indexes = cache.index_files();
    indexes.extend(std::iter::repeat_n(bogus, 400_000));
    let snap = Snapshot {
        version: storesync::cache::FORMAT_VERSION,
        key: String::new(),
        indexes,
        parent: None,
        flavor: w.flavor,
        store_dir: w.flavor.default_store_dir().to_string(),
        created: storesync::clock::now_nanos(),
        tool: "hostile".into(),
        roots: Vec::new(),
        paths: vec![SnapshotPath { info, tree }],
        derivation_outputs: vec![],
    };
    cache.write_snapshot(&snap).unwrap();
    let out = w.on_cache("dst", &["restore"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
    assert!(
        stderr.contains("names index file abababab") && stderr.contains("more than once"),
        "{stderr}"
    );
    let store = w.layout("dst").real_store_dir();
    assert!(!store.join(&base).exists());
}

/// A snapshot path may be named like the path lock of another (`<hash>-x.lock`): while a
/// store client (the daemon) builds `<hash>-x` it holds that lock file, and unlinks it by name
/// when done. The restore moved the held lock aside as a leftover and deleted it; the
/// holder's unlink then removed the restored path the DB listed. Now that path fails, saying
/// whose lock is in the way, and the lock stays its holder's.
#[test]
fn a_path_named_like_a_held_path_lock_is_not_written_over_it() {
    use std::os::unix::fs::OpenOptionsExt;
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let node = file_node(&mut blobs, false, b"restored contents\n");
    let building = base_name(3, "x");
    let base = format!("{building}.lock");
    let row = row_for(&base, &nar_of(&node, &blobs));
    write_cache(&w.cache_dir(), w.flavor, &[(row, node)], &blobs, vec![]);
    let dst = w.layout("dst");
    let store = dst.real_store_dir();
    fs::create_dir_all(&store).unwrap();
    // The daemon's lock of `<hash>-x`, as it makes it (0600), held.
    let lock_path = store.join(&base);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .unwrap();
    storesync::store::locks::lock(
        &lock,
        w.flavor,
        storesync::store::locks::LockMode::Exclusive,
        false,
    )
    .unwrap();
    // Another process: POSIX record locks do not conflict within one.
    let out = w.on_cache("dst", &["--json", "restore"]).output().unwrap();
    let r = util::json(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["restored"], 0, "{r}");
    assert!(
        r["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("held by another process"),
        "{r}"
    );
    let held = lock.metadata().unwrap();
    assert_eq!(held.nlink(), 1, "the held lock was unlinked");
    assert_eq!(fs::symlink_metadata(&lock_path).unwrap().ino(), held.ino());
    // Its holder is done: it unlinks its lock. Nothing registered is lost.
    fs::remove_file(&lock_path).unwrap();
    drop(lock);
    assert_registered_paths_are_on_disk(&dst);
    // With no one holding the lock, a stale lock file is no obstacle.
    fs::write(&lock_path, b"").unwrap();
    fs::set_permissions(&lock_path, fs::Permissions::from_mode(0o600)).unwrap();
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 1, "{r:?}");
    assert_eq!(fs::read(&lock_path).unwrap(), b"restored contents\n");
    assert_registered_paths_are_on_disk(&dst);
}

/// No symlink below the cache directory is followed: `packs/`, `index/` and `snapshots/`
/// swapped for symlinks to directories elsewhere were read through by `restore --cache DIR`
/// (its files were opened `O_NOFOLLOW`, which covers the last component only; found by
/// review). Refused, naming the directory; nothing restored.
#[test]
fn a_symlinked_cache_subdirectory_is_not_followed() {
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let node = dir_node(vec![("f", file_node(&mut blobs, false, b"hello\n"))]);
    let row = row_for(&base_name(5, "small"), &nar_of(&node, &blobs));
    write_cache(&w.cache_dir(), w.flavor, &[(row, node)], &blobs, vec![]);
    assert!(w
        .on_cache("ok", &["restore"])
        .output()
        .unwrap()
        .status
        .success());
    let elsewhere = w.root("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    for sub in ["packs", "index", "snapshots"] {
        fs::rename(w.cache_dir().join(sub), elsewhere.join(sub)).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(sub), w.cache_dir().join(sub)).unwrap();
    }
    let out = w.on_cache("dst", &["restore"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    assert!(!w
        .layout("dst")
        .real_store_dir()
        .join(base_name(5, "small"))
        .exists());
}

/// A path's writes are bounded by the NAR size its row declares: a tree describing a larger
/// NAR (here a 64 MiB file of zeros, a blob that compresses to almost nothing, under a row
/// declaring a 6-byte file) fails before anything is written. Before, the file was written
/// whole and the path failed only at its hash: a terabyte file would have filled the disk.
#[test]
fn a_tree_larger_than_its_row_declares_writes_nothing() {
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let big = dir_node(vec![(
        "f",
        file_node(&mut blobs, false, &vec![0; 64 << 20]),
    )]);
    let mut small_blobs = Blobs::new();
    let small = dir_node(vec![("f", file_node(&mut small_blobs, false, b"hello\n"))]);
    let base = base_name(6, "bounded");
    let row = row_for(&base, &nar_of(&small, &small_blobs));
    let big_nar = nar_of(&big, &blobs).len();
    write_cache(&w.cache_dir(), w.flavor, &[(row, big)], &blobs, vec![]);
    let dst = w.layout("dst");
    let r = restore(&dst, &w.cache_dir()).unwrap();
    assert_eq!(r.restored, 0, "{r:?}");
    assert_eq!(r.bytes_written, 0, "{r:?}");
    assert!(
        r.failures[0].error.contains(&format!(
            "its tree describes a NAR of {big_nar} bytes, the snapshot says 288"
        )),
        "{r:?}"
    );
    assert_registered_paths_are_on_disk(&dst);
}

// ---------------------------------------------------------------------------------------------
// Signed saves: what a save signs must be what its signer read or signed before.

/// A key pair written by `storesync key generate` under `w`'s directory: (secret, public).
fn key_pair(w: &World, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (sec, public) = (
        w.dir.path().join(format!("{name}.sec")),
        w.dir.path().join(format!("{name}.pub")),
    );
    let (s, _) = storesync::trust::generate(name).unwrap();
    s.write_key_files(&sec, &public).unwrap();
    (sec, public)
}

/// `storesync --json save --sign-key SEC` of the store `src`: its report.
fn signed_save(w: &World, sec: &Path) -> serde_json::Value {
    let out = w
        .on_cache("src", &["--json", "save"])
        .arg("--sign-key")
        .arg(sec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    util::json(&out.stdout)
}

/// A save signing its snapshot chose its base (the snapshot whose paths it does not read
/// again, and whose trees it names as they are) as the newest of its key, signed or not. A
/// cache writer holding no key added a newer unsigned snapshot listing a path with the row
/// the DB has (same NAR hash and size) but a tree of other bytes: the signed save took that
/// tree without reading the path, so its signed snapshot named bytes its signer never read,
/// and the path failed on every restore of it (and of every later signed save, each taking
/// the last as its base); with the store unchanged, the save even signed the hostile snapshot
/// itself. Now a signing save builds only on a snapshot that key signed (else reads every
/// path): the hostile snapshot is passed over and the restores succeed.
#[test]
fn a_signed_save_does_not_build_on_a_snapshot_its_key_did_not_sign() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let genuine = noise(7, 10_000);
    let p = base_name(1, "p");
    util::add_files_path(&src, &p, &[("f", &genuine, false)], &[]);
    let (sec, public) = key_pair(&w, "ci-1");
    let first = signed_save(&w, &sec)["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    // The hostile writer's snapshot: the DB's row of `p`, a tree of as many other bytes.
    let row = storesync::db::read(&src)
        .unwrap()
        .paths
        .into_iter()
        .find(|r| r.path.base_name() == p)
        .unwrap();
    let mut blobs = Blobs::new();
    let evil = dir_node(vec![("f", file_node(&mut blobs, false, &noise(8, 10_000)))]);
    let hostile = write_cache(&w.cache_dir(), w.flavor, &[(row, evil)], &blobs, vec![]);
    assert_ne!(hostile, first);
    // The store unchanged: the signed save finds the snapshot its key signed unchanged.
    let again = signed_save(&w, &sec);
    assert_eq!(again["snapshot"].as_str().unwrap(), first, "{again}");
    assert_eq!(again["unchanged"], true, "{again}");
    let keys =
        storesync::trust::TrustedKeys::from_args(&[public.to_str().unwrap().into()]).unwrap();
    let hostile_id = storesync::cache::SnapshotId::parse(&hostile).unwrap();
    assert!(w.cache().check_signature(&hostile_id, &keys).is_err());
    // A new path: the new signed snapshot takes `p` from the signed base, and restores whole.
    let q = base_name(2, "q");
    util::add_files_path(&src, &q, &[("g", b"q\n", false)], &[]);
    let third = signed_save(&w, &sec);
    assert_eq!(third["new_paths"], 1, "{third}");
    let out = w
        .on_cache("dst", &["--json", "restore"])
        .arg("--trusted-key")
        .arg(&public)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = util::json(&out.stdout);
    assert_eq!(r["snapshot"], third["snapshot"], "{r}");
    assert_eq!(r["restored"], 2, "{r}");
    let store = w.layout("dst").real_store_dir();
    assert_eq!(fs::read(store.join(&p).join("f")).unwrap(), genuine);
    assert_registered_paths_are_on_disk(&w.layout("dst"));
}

/// With trusted keys, a snapshot chosen by key had every listed file's head read before its
/// signature was checked, and the head of a v1 file (whose name gives no date) is the whole
/// file: an unsigned v1 file planted by a cache writer (up to 256 MiB, inflating to 1 GiB)
/// was read, inflated and decoded by every restore `--key` and every signed save, refused
/// only afterwards. Now a v1 file's signature is checked before it is read: it is passed over
/// as unsigned, unread.
#[test]
fn an_unsigned_v1_snapshot_is_not_read_when_choosing_by_key_with_trusted_keys() {
    let w = World::new(Flavor::Guix);
    let mut blobs = Blobs::new();
    let node = dir_node(vec![("f", file_node(&mut blobs, false, b"hello\n"))]);
    let base = base_name(3, "signed");
    let info = row_for(&base, &nar_of(&node, &blobs));
    let id = write_cache(&w.cache_dir(), w.flavor, &[(info, node)], &blobs, vec![]);
    let (secret, public) = storesync::trust::generate("ci-1").unwrap();
    let id = storesync::cache::SnapshotId::parse(&id).unwrap();
    let cache = w.cache();
    cache
        .add_signature(&id, secret.sign_snapshot(&id.0))
        .unwrap();
    // A v1 file name, bytes that are no snapshot: reading it would say so.
    let planted = "ab".repeat(32);
    fs::write(
        w.cache_dir().join(format!("snapshots/{planted}.snap")),
        noise(9, 4096),
    )
    .unwrap();
    let mut trusted = storesync::trust::TrustedKeys::new();
    trusted.add(public);
    let opts = RestoreOptions {
        key: Some(String::new()),
        trusted,
        dry_run: true,
        ..RestoreOptions::default()
    };
    let dst = w.layout("dst");
    let r = storesync::restore::restore(&dst, &cache, &opts, &NoProgress).unwrap();
    assert_eq!(r.snapshot, id.hex());
    assert_eq!(r.passed_over.len(), 1, "{:?}", r.passed_over);
    assert!(
        r.passed_over[0].contains(&planted[..12]) && r.passed_over[0].contains("not signed"),
        "{:?}",
        r.passed_over
    );
}

/// A writer of snapshots of one path `<hash n>-p` holding the file `f` ("hello"), each in
/// a cache of its own save: `snapshot_of(n)` returns the new snapshot's id.
fn one_file_snapshots(w: &World) -> impl Fn(u64) -> String + '_ {
    let mut blobs = Blobs::new();
    let node = dir_node(vec![("f", file_node(&mut blobs, false, b"hello\n"))]);
    move |n| {
        let info = row_for(&base_name(n, "p"), &nar_of(&node, &blobs));
        write_cache(
            &w.cache_dir(),
            w.flavor,
            &[(info, node.clone())],
            &blobs,
            vec![],
        )
    }
}

/// With trusted keys, the newest signed snapshot was passed over when another file was named
/// after it (its id, a later date) holding another snapshot: the head read to choose (that
/// file's, unchecked) gave the later date, the file that checks the real one, and "its head
/// differs from its checked contents" dropped the snapshot. A cache writer who can only add
/// files (no deletion, no key) thus rolled every restore back to an older signed snapshot.
/// Now the snapshot is ranked again at its checked date, and taken when still the newest.
#[test]
fn a_file_named_after_the_newest_signed_snapshot_does_not_roll_restores_back() {
    let w = World::new(Flavor::Guix);
    let snapshot_of = one_file_snapshots(&w);
    let (old, new, third) = (snapshot_of(4), snapshot_of(5), snapshot_of(6));
    let (secret, public) = storesync::trust::generate("ci-1").unwrap();
    let cache = w.cache();
    for id in [&old, &new] {
        let id = storesync::cache::SnapshotId::parse(id).unwrap();
        cache
            .add_signature(&id, secret.sign_snapshot(&id.0))
            .unwrap();
    }
    // The third snapshot's file, renamed after the newest signed one.
    let third_file = util::snapshot_file(&w.cache_dir(), &third);
    let fake = third_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace(&third, &new);
    fs::rename(&third_file, third_file.with_file_name(fake)).unwrap();
    let mut trusted = storesync::trust::TrustedKeys::new();
    trusted.add(public);
    let opts = RestoreOptions {
        trusted,
        dry_run: true,
        ..RestoreOptions::default()
    };
    let cache = w.cache();
    let r = storesync::restore::restore(&w.layout("dst"), &cache, &opts, &NoProgress).unwrap();
    assert_eq!(r.snapshot, new, "{:?}", r.passed_over);
    // The same with a file dated ten days ahead: its head is not taken for the snapshot's.
    let mut future = cache.find_snapshot(Some(&old)).unwrap().1;
    future.created += 10 * 86_400 * 1_000_000_000;
    let future_id = cache.write_snapshot(&future).unwrap().hex();
    let future_file = util::snapshot_file(&w.cache_dir(), &future_id);
    let fake = future_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace(&future_id, &new);
    fs::rename(&future_file, future_file.with_file_name(fake)).unwrap();
    let cache = w.cache();
    let r = storesync::restore::restore(&w.layout("dst"), &cache, &opts, &NoProgress).unwrap();
    assert_eq!(r.snapshot, new, "{:?}", r.passed_over);
    // And with a file that is no snapshot at all, named after it with the latest date.
    fs::write(
        w.cache_dir().join(format!(
            "snapshots/7fffffffffffffff-{new}-0123456789abcdef.snap"
        )),
        noise(3, 100),
    )
    .unwrap();
    let cache = w.cache();
    let r = storesync::restore::restore(&w.layout("dst"), &cache, &opts, &NoProgress).unwrap();
    assert_eq!(r.snapshot, new, "{:?}", r.passed_over);
}

/// A file named after the newest signed snapshot with the latest name, whose (unchecked)
/// head is dated before an older signed snapshot: the newest was ranked by that head alone,
/// below the older one, which was read, checked and taken first, so a cache writer who can
/// only add files still rolled restores back. A snapshot is ranked by the latest date of its
/// files' heads (then again at its checked date when that is earlier).
#[test]
fn a_file_named_after_the_newest_signed_snapshot_dated_earlier_does_not_roll_restores_back() {
    let w = World::new(Flavor::Guix);
    let snapshot_of = one_file_snapshots(&w);
    let (old, new) = (snapshot_of(4), snapshot_of(5));
    let (secret, public) = storesync::trust::generate("ci-1").unwrap();
    let cache = w.cache();
    for id in [&old, &new] {
        let id = storesync::cache::SnapshotId::parse(id).unwrap();
        cache
            .add_signature(&id, secret.sign_snapshot(&id.0))
            .unwrap();
    }
    // A snapshot dated a day before the older signed one, its file renamed after the newest
    // with the latest name a v2 file may have.
    let mut early = cache.find_snapshot(Some(&old)).unwrap().1;
    early.created -= 86_400 * 1_000_000_000;
    let early_id = cache.write_snapshot(&early).unwrap().hex();
    let early_file = util::snapshot_file(&w.cache_dir(), &early_id);
    let sum = early_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".snap")
        .rsplit('-')
        .next()
        .unwrap()
        .to_owned();
    fs::rename(
        &early_file,
        w.cache_dir()
            .join(format!("snapshots/7fffffffffffffff-{new}-{sum}.snap")),
    )
    .unwrap();
    let mut trusted = storesync::trust::TrustedKeys::new();
    trusted.add(public);
    let opts = RestoreOptions {
        trusted,
        dry_run: true,
        ..RestoreOptions::default()
    };
    let cache = w.cache();
    let r = storesync::restore::restore(&w.layout("dst"), &cache, &opts, &NoProgress).unwrap();
    assert_eq!(r.snapshot, new, "{:?}", r.passed_over);
}

/// Found by review: `ls` took a file named after another snapshot (anyone who can add a file
/// can name one so) for that snapshot: the id was listed twice, once with the planted file's
/// date, and with `--trusted-key` both lines said "signed". A v2 head must give the id its
/// file's name gives (the id commits to the key, date, flavour and store directory).
#[test]
fn a_file_named_after_another_snapshot_is_not_listed_as_it() {
    let w = World::new(Flavor::Guix);
    let snapshot_of = one_file_snapshots(&w);
    let (signed, planted) = (snapshot_of(4), snapshot_of(5));
    let (sec, public) = key_pair(&w, "ci-1");
    let secret = storesync::trust::load_secret_key(sec.to_str().unwrap()).unwrap();
    let id = storesync::cache::SnapshotId::parse(&signed).unwrap();
    w.cache()
        .add_signature(&id, secret.sign_snapshot(&id.0))
        .unwrap();
    let file = util::snapshot_file(&w.cache_dir(), &planted);
    let fake = file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace(&planted, &signed);
    fs::rename(&file, file.with_file_name(fake)).unwrap();
    let real_created = w.cache().find_snapshot(Some(&signed)).unwrap().1.created / 1_000_000_000;
    for trusted in [false, true] {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("storesync"));
        cmd.args(["--json", "ls", "--cache"]).arg(w.cache_dir());
        if trusted {
            cmd.arg("--trusted-key").arg(&public);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let lines: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let lines = lines.as_array().unwrap();
        assert_eq!(lines.len(), 1, "trusted {trusted}: {lines:?}");
        assert_eq!(lines[0]["id"], signed.as_str());
        assert_eq!(
            lines[0]["created"], real_created,
            "trusted {trusted}: {lines:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is not that of snapshot"), "{stderr}");
    }
}
