//! Saves whose base snapshot no longer matches the store or the cache: what they keep, what
//! they read again, and how they are dated.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use storesync::progress::NoProgress;
use storesync::save::{save, SaveOptions};
use storesync::store::layout::Flavor;
use util::World;

const ONE: &str = "0123456789abcdfghijklmnpqrsvwxyz-one";
const TWO: &str = "1123456789abcdfghijklmnpqrsvwxyz-two";

fn opts(skip_corrupt: bool) -> SaveOptions {
    SaveOptions {
        roots: vec![],
        skip_corrupt,
        level: 3,
        key: "k".into(),
        gc_roots: false,
        verify_source: false,
        base_keys: Default::default(),
    }
}

/// Take `base` out of `layout`'s store and DB, as the daemon's garbage collector would.
fn collect(layout: &storesync::store::layout::Layout, base: &str) {
    let conn = rusqlite::Connection::open(layout.db_file()).unwrap();
    conn.execute(
        "delete from ValidPaths where path = ?1",
        [format!("/gnu/store/{base}")],
    )
    .unwrap();
    drop(conn);
    storesync::store::fs::remove_tree(&layout.real_store_dir().join(base)).unwrap();
}

#[test]
fn a_save_keeping_no_path_is_not_its_base_unchanged() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
    let first = save(&src, &w.cache(), &opts(true), &NoProgress).unwrap();
    assert_eq!(first.paths, 1);
    // ONE is collected, TWO built, and TWO's file then damaged: nothing is left to keep.
    collect(&src, ONE);
    util::add_files_path(&src, TWO, &[("f", b"two\n", false)], &[]);
    let f = src.real_store_dir().join(TWO).join("f");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&f, b"TWO\n").unwrap();
    let cache = w.cache();
    let r = save(&src, &cache, &opts(true), &NoProgress).unwrap();
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    assert_eq!(r.paths, 0, "{r:?}");
    assert!(!r.unchanged, "{r:?}");
    let (_, snap) = cache.find_snapshot(Some(&r.snapshot)).unwrap();
    assert!(snap.paths.is_empty(), "{:?}", snap.paths);
}

#[test]
fn a_path_whose_blob_is_gone_is_read_again_not_taken_from_the_base() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let shared: &[u8] = b"the same contents in two paths\n";
    util::add_files_path(&src, ONE, &[("f", shared, false)], &[]);
    let s1 = save(&src, &w.cache(), &opts(false), &NoProgress).unwrap();
    util::add_files_path(&src, TWO, &[("g", shared, false)], &[]);
    let s2 = save(&src, &w.cache(), &opts(false), &NoProgress).unwrap();
    assert_eq!(s2.new_paths, 1, "{s2:?}");
    // ONE is collected from the store; the first save's index file (holding TWO's blob,
    // which TWO's tree, in the second save's, names) is lost.
    collect(&src, ONE);
    let (_, first) = w.cache().find_snapshot(Some(&s1.snapshot)).unwrap();
    assert_eq!(first.indexes.len(), 1);
    fs::remove_file(
        w.cache_dir()
            .join(storesync::cache::index_key(&first.indexes[0])),
    )
    .unwrap();
    let s3 = save(&src, &w.cache(), &opts(false), &NoProgress).unwrap();
    assert_eq!((s3.paths, s3.new_paths), (1, 1), "{s3:?}");
    let cache = w.cache();
    let (_, snap) = cache.find_snapshot(Some(&s3.snapshot)).unwrap();
    for sp in &snap.paths {
        let tree = cache.read_tree(&sp.tree).unwrap();
        storesync::cache::Node::for_each_blob(&tree, &mut |id, _| {
            assert!(cache.contains(*id), "{}: blob {id} missing", sp.info.path);
        });
    }
    let v = storesync::verify::verify(&cache, &NoProgress).unwrap();
    assert!(
        v.problems.iter().all(|p| !p.contains(&s3.snapshot[..12])),
        "{v:?}"
    );
}

#[test]
fn a_save_on_a_base_dated_ahead_is_the_newest_of_its_key() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
    let cache = w.cache();
    let first = save(&src, &cache, &opts(false), &NoProgress).unwrap();
    // The same snapshot as a runner whose clock is 10 minutes ahead would have written it.
    let (_, mut snap) = cache.find_snapshot(Some(&first.snapshot)).unwrap();
    snap.created += 600 * 1_000_000_000;
    cache.write_snapshot(&snap).unwrap();
    util::add_files_path(&src, TWO, &[("f", b"two\n", false)], &[]);
    let second = save(&src, &w.cache(), &opts(false), &NoProgress).unwrap();
    assert_eq!(second.new_paths, 1, "{second:?}");
    let newest = w.cache().find_by_key("k", &[], &|_, _| Ok(())).unwrap();
    assert_eq!(newest.id.hex(), second.snapshot);
}

/// Save `src`'s one path into `w`'s empty cache, restore that snapshot into a fresh root;
/// the restored store directory.
fn saved_and_restored(w: &World, src: &storesync::store::layout::Layout) -> std::path::PathBuf {
    use storesync::restore::{self, RestoreOptions};
    let r = save(src, &w.cache(), &opts(false), &NoProgress).unwrap();
    assert_eq!(r.new_paths, 1, "{r:?}");
    let dst = w.layout("dst");
    let opts_r = RestoreOptions {
        snapshot: Some(r.snapshot.clone()),
        ..RestoreOptions::default()
    };
    let got = restore::restore(&dst, &w.cache(), &opts_r, &NoProgress).unwrap();
    assert_eq!(got.restored, 1, "{:?}", got.failures);
    dst.real_store_dir()
}

/// Save walks each path through a descriptor per directory level: as deep as a tree may nest
/// (256 levels below the top, `cache::tree::MAX_DEPTH`) is saved and restored byte for byte;
/// one level more is refused at save, naming the path and the depth, not packed into a tree
/// restore would refuse.
#[test]
fn a_path_as_deep_as_a_tree_may_be_is_saved_and_restored_and_deeper_is_refused() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let deepest = format!("{}f", "d/".repeat(storesync::cache::tree::MAX_DEPTH - 1));
    util::add_files_path(&src, ONE, &[(&deepest, b"deep\n", false)], &[]);
    let restored = saved_and_restored(&w, &src);
    assert_eq!(
        fs::read(restored.join(ONE).join(&deepest)).unwrap(),
        b"deep\n"
    );

    let deeper = format!("{}f", "d/".repeat(storesync::cache::tree::MAX_DEPTH));
    util::add_files_path(&src, TWO, &[(&deeper, b"deeper\n", false)], &[]);
    let r = save(&src, &w.cache(), &opts(true), &NoProgress).unwrap();
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    let (path, why) = &r.unreadable[0];
    assert!(path.ends_with(TWO), "{path}");
    assert!(
        why.contains("nested deeper than 256") && why.contains(TWO),
        "{why}"
    );
}

/// Save counts a path's nodes as a tree's decoder does, each rewrite as a node: a path of
/// exactly `MAX_TREE_NODES` is saved and restored byte for byte; one more is refused at save,
/// naming the path, not packed into a tree restore would refuse (nor walked without bound).
#[test]
fn a_path_of_as_many_nodes_as_a_tree_may_hold_is_saved_and_restored_and_more_is_refused() {
    let max = storesync::cache::MAX_TREE_NODES;
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    // The top directory and one file made of the path's own hash part over and over: two
    // nodes and one rewrite per 32 bytes.
    let full = ONE[..32].repeat(max - 2).into_bytes();
    util::add_files_path(&src, ONE, &[("f", &full, false)], &[]);
    let restored = saved_and_restored(&w, &src);
    assert!(fs::read(restored.join(ONE).join("f")).unwrap() == full);
    drop(full);

    let over = TWO[..32].repeat(max - 1).into_bytes();
    util::add_files_path(&src, TWO, &[("f", &over, false)], &[]);
    let r = save(&src, &w.cache(), &opts(true), &NoProgress).unwrap();
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    let (path, why) = &r.unreadable[0];
    assert!(path.ends_with(TWO), "{path}");
    assert!(why.contains(&format!("more than {max} nodes")), "{why}");
}

/// A store file not everyone may read is no file the daemons made (they make them 0444 or
/// 0555): a hard link to a private file, put in a path's directory by whoever can write it
/// where `fs.protected_hardlinks` is off. Save does not read it (as root it could), and says
/// which file and why; the rest of the store is saved.
#[test]
fn a_store_file_not_everyone_may_read_is_not_read() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
    util::add_files_path(&src, TWO, &[("secret", b"a private file\n", false)], &[]);
    let secret = src.real_store_dir().join(TWO).join("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o400)).unwrap();
    let r = save(&src, &w.cache(), &opts(true), &NoProgress).unwrap();
    assert_eq!(r.paths, 1, "{r:?}");
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    let (path, why) = &r.unreadable[0];
    assert!(path.ends_with(TWO), "{path}");
    assert!(why.contains(&secret.display().to_string()), "{why}");
    if rustix::process::geteuid().is_root() {
        assert!(
            why.contains("mode 0400 is not readable by everyone"),
            "{why}"
        );
    }
}

/// A file holding more references than a tree may hold nodes is refused as it is read, not
/// once every rewrite is held: anyone who may build can put in the store a file of its own
/// path's hash part over and over (a self-reference is rewritten like any), and a save run by
/// root over every valid path held 40 bytes per 32 of it, twice (the read, then the packing
/// pass): 670 MB for a file of 256 MiB, 1.25 times any size before it was refused. Found by
/// review. Measured in a run of this test alone (a process's peak is that of all its threads).
#[test]
fn a_file_of_more_rewrites_than_a_tree_may_hold_is_refused_in_bounded_memory() {
    const NAME: &str = "a_file_of_more_rewrites_than_a_tree_may_hold_is_refused_in_bounded_memory";
    if std::env::var_os("STORESYNC_TEST_ALONE").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env("STORESYNC_TEST_ALONE", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.contains("1 passed"), "{said}");
        return;
    }
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    let big = ONE[..32].repeat(8 << 20).into_bytes();
    util::add_files_path(&src, ONE, &[("f", &big, false)], &[]);
    drop(big);
    let status = |field: &str| -> u64 {
        let s = fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with(field)).unwrap();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    // The peak reset to what is resident now.
    fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status("VmRSS:");
    let r = save(&src, &w.cache(), &opts(true), &NoProgress).unwrap();
    let grew = status("VmHWM:").saturating_sub(before);
    let max = storesync::cache::MAX_TREE_NODES;
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    assert!(
        r.unreadable[0]
            .1
            .contains(&format!("more than {max} nodes")),
        "{r:?}"
    );
    assert!(grew < 300, "the save grew by {grew} MiB at its peak: {r:?}");
}

/// A file grown far past what the DB says of its path (here a sparse file of 64 GiB where
/// the path's NAR is a few hundred bytes) is not read further once the path's NAR passes the
/// DB's size: it was read, hashed and packed whole before the sizes were compared (review
/// suspicion: terabytes of a sparse file for hours). The path is corrupt, said why.
#[test]
fn a_path_larger_than_the_db_says_is_not_read_past_its_size() {
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
    let f = src.real_store_dir().join(ONE).join("f");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
    let r = save(&src, &w.cache(), &opts(true), &NoProgress).unwrap();
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    let (path, why) = &r.corrupt[0];
    assert!(path.ends_with(ONE), "{r:?}");
    assert!(
        why.contains("larger than the") && why.contains("DB says"),
        "{why}"
    );
}

/// A Guix store may hold names of up to 222 characters: `<hash>-<name>` is then 255 bytes, a
/// file name's limit, and guix-daemon's `checkStoreName` sets no length limit of its own (211
/// is Nix's). Each is saved and restored byte for byte and registered under its name; the save
/// refused the store's DB as malformed for any name of 212 to 222 characters.
#[test]
fn a_guix_path_named_as_long_as_a_file_name_may_be_is_saved_and_restored() {
    for len in LONG_GUIX_NAMES {
        let w = World::new(Flavor::Guix);
        let src = w.layout("src");
        let long = format!("{}-{}", &ONE[..32], "n".repeat(len));
        // Laid out under a short name, then renamed on disk and in the DB, as the daemon
        // would have registered it.
        util::add_files_path(&src, ONE, &[("bin/x", b"long\n", true)], &[]);
        fs::rename(
            src.real_store_dir().join(ONE),
            src.real_store_dir().join(&long),
        )
        .unwrap();
        rusqlite::Connection::open(src.db_file())
            .unwrap()
            .execute(
                "update ValidPaths set path = ?1 where path = ?2",
                [format!("/gnu/store/{long}"), format!("/gnu/store/{ONE}")],
            )
            .unwrap();
        let restored = saved_and_restored(&w, &src);
        assert_eq!(
            fs::read(restored.join(&long).join("bin/x")).unwrap(),
            b"long\n",
            "{len}"
        );
        let dst = w.layout("dst");
        let rows = util::db_rows(&dst);
        assert_eq!(
            rows.paths.keys().collect::<Vec<_>>(),
            [&format!("/gnu/store/{long}")],
            "{len}"
        );
        util::assert_registered_paths_are_on_disk(&dst);
        util::check_clean(&dst, &rows, &format!("{len}-character name"));
    }
}

/// Name lengths a Guix store may hold past Nix's 211: the first past it, the longest whose
/// `<path>.lock` fits in a 255-byte file name, and the longest of a 255-byte base name.
const LONG_GUIX_NAMES: [usize; 3] = [212, 217, 222];

/// Found by review: a save that ran out of open files (a deep path walked under `ulimit -n
/// 32`) called the path unreadable, and with `--skip-corrupt` saved a snapshot without it
/// (exit 0). Running out of a resource of the system is the run's fault, not the path's: the
/// save fails naming the path and the cause, whatever `--skip-corrupt` says, and writes no
/// snapshot. Run through `setpriv` without `CAP_SYS_RESOURCE`, so the limit cannot be raised.
#[test]
fn a_save_out_of_open_files_fails_naming_the_path_and_drops_nothing() {
    let have = |p: &str| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !rustix::process::geteuid().is_root() || !have("setpriv") || !have("prlimit") {
        eprintln!("skipped: needs root, setpriv and prlimit");
        return;
    }
    let w = World::new(Flavor::Guix);
    let src = w.layout("src");
    util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
    let deep = format!("{}f", "d/".repeat(64));
    util::add_files_path(&src, TWO, &[(&deep, b"deep\n", false)], &[]);
    let inner = w.std_cmd("src");
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--inh-caps=-sys_resource",
        "--bounding-set=-sys_resource",
        "prlimit",
        "--nofile=32:32",
    ])
    .arg(inner.get_program())
    .args(inner.get_args())
    .args(["--json", "save", "--skip-corrupt", "--cache"])
    .arg(w.cache_dir());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}\n{stdout}");
    assert!(err.contains(TWO), "{err}");
    assert!(err.contains("Too many open files"), "{err}");
    assert!(
        !err.contains("corrupt") && !err.contains("unreadable"),
        "{err}"
    );
    let snapshots = fs::read_dir(w.cache_dir().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(snapshots, 0, "a snapshot was written: {stdout}");
}

/// Found by review (an evicted `gha://` entry, an S3 lifecycle rule, a pack deleted from a
/// shared directory): a save on an unchanged store built on the newest snapshot, whose index
/// files were all there, took every path as cached though a pack they name was gone, said
/// "unchanged" and wrote nothing, so the cache stayed broken under that key. Whichever pack
/// goes (the one of a large file, whose tree survives in another; the one of the trees), the
/// save finds it missing, reads again the paths needing its objects, writes a new snapshot,
/// and that snapshot restores every path into an empty root.
#[test]
fn a_save_writes_again_what_a_deleted_pack_held_and_its_snapshot_restores_whole() {
    let big = util::noise(7, 5 << 20);
    let packs_of = |w: &World| -> Vec<std::path::PathBuf> {
        let mut p: Vec<_> = fs::read_dir(w.cache_dir().join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        p.sort();
        p
    };
    let count = {
        let w = World::new(Flavor::Guix);
        let src = w.layout("src");
        util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
        util::add_files_path(&src, TWO, &[("big", &big, false)], &[ONE]);
        w.on_cache("src", &["save", "--key", "k"])
            .assert()
            .success();
        packs_of(&w).len()
    };
    assert!(count >= 2, "the large file has a pack of its own");
    for gone in 0..count {
        let w = World::new(Flavor::Guix);
        let src = w.layout("src");
        util::add_files_path(&src, ONE, &[("f", b"one\n", false)], &[]);
        util::add_files_path(&src, TWO, &[("big", &big, false)], &[ONE]);
        let first = util::json(
            &w.on_cache("src", &["--json", "save", "--key", "k"])
                .assert()
                .success()
                .get_output()
                .stdout,
        );
        let deleted = packs_of(&w)[gone].clone();
        fs::remove_file(&deleted).unwrap();
        let out = w
            .on_cache("src", &["--json", "save", "--key", "k"])
            .assert()
            .success();
        let second = util::json(&out.get_output().stdout);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert_eq!(second["unchanged"], false, "pack {gone}: {second}");
        assert_ne!(second["snapshot"], first["snapshot"], "{second}");
        assert_eq!(second["missing_packs"], 1, "{second}");
        let reread = second["reread_paths"].as_u64().unwrap();
        assert!(reread >= 1, "{second}");
        assert_eq!(second["new_paths"].as_u64().unwrap(), reread, "{second}");
        assert!(
            stderr.contains("1 pack") && stderr.contains(&format!("{reread} path")),
            "{stderr}"
        );
        assert!(second["new_objects"].as_u64().unwrap() >= 1, "{second}");
        // The new snapshot restores whole into an empty root.
        let snapshot = second["snapshot"].as_str().unwrap();
        w.on_cache("dst", &["restore", "--snapshot", snapshot])
            .assert()
            .success();
        let dst = w.layout("dst");
        assert_eq!(
            fs::read(dst.real_store_dir().join(TWO).join("big")).unwrap(),
            big
        );
        assert_eq!(util::db_rows(&dst), util::db_rows(&src));
        assert_eq!(first["missing_packs"], 0, "{first}");
        // verify finds nothing wrong but the missing pack, which the old index files (named
        // by the new snapshot too) may still name (unless the pack written again has the
        // same contents, so the same name); a third save has nothing to read nor write.
        let name = deleted.file_name().unwrap().to_string_lossy().into_owned();
        let v = storesync::verify::verify(&w.cache(), &NoProgress).unwrap();
        assert!(v.problems.iter().all(|p| p.contains(&name)), "{v:?}");
        let third = util::json(
            &w.on_cache("src", &["--json", "save", "--key", "k"])
                .assert()
                .success()
                .get_output()
                .stdout,
        );
        assert_eq!(third["unchanged"], true, "{third}");
        assert_eq!(third["reread_paths"], 0, "{third}");
        assert_eq!(third["new_objects"], 0, "{third}");
    }
}
