//! Golden caches: a tiny cache of each format version, checked in under `fixtures/cache/`,
//! that every later storesync must read to the same values forever. A change to a serde
//! derive, a field order or an encoding then fails here instead of silently changing the
//! format. The writer of the current version must also reproduce its golden bytes exactly.
//!
//! `STORESYNC_BLESS=1 cargo test --test golden` rewrites the fixture of the version being
//! written (do it only for a deliberate format change, with a new version number).

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use storesync::cache::{
    BlobId, Cache, Entry, IndexId, Node, ObjectKind, Packer, Rewrite, Snapshot, SnapshotPath,
    FORMAT_VERSION,
};
use storesync::nar;
use storesync::store::path_info::NarHash;
use storesync::store::{DerivationOutput, Flavor, PathInfo, StorePath};
use util::World;

const A: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-golden-a";
const B: &str = "1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-golden-b";
const C: &str = "2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c-golden-b.drv";
const CREATED: i64 = 1_764_000_000_000_000_000;

/// A file of the golden store: (relative path, contents, executable), or a symlink.
enum Item {
    Dir(&'static str),
    File(&'static str, Vec<u8>, bool),
    Link(&'static str, &'static str),
}

fn big() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn items() -> Vec<(&'static str, Vec<Item>)> {
    vec![
        (
            A,
            vec![
                Item::Dir(""),
                Item::Dir("bin"),
                Item::File("bin/hello", b"#!/bin/sh\necho hello\n".to_vec(), true),
                Item::Link("bin/hi", "hello"),
                Item::File("big", big(), false),
                Item::Dir("share"),
                Item::File("share/README", b"hello world\n".to_vec(), false),
            ],
        ),
        (
            B,
            vec![Item::File(
                "",
                format!("#!/gnu/store/{A}/bin/hello\n").into_bytes(),
                true,
            )],
        ),
        (
            C,
            vec![Item::File(
                "",
                format!("Derive([(\"out\",\"/gnu/store/{B}\",\"\",\"\")])").into_bytes(),
                false,
            )],
        ),
    ]
}

/// Lay the golden store paths out under `store`.
fn build_store(store: &Path) {
    for (base, its) in items() {
        let top = store.join(base);
        for it in its {
            match it {
                Item::Dir(rel) => fs::create_dir_all(top.join(rel)).unwrap(),
                Item::File(rel, data, exec) => {
                    let p = if rel.is_empty() {
                        top.clone()
                    } else {
                        top.join(rel)
                    };
                    fs::write(&p, data).unwrap();
                    let mode = if exec { 0o555 } else { 0o444 };
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                }
                Item::Link(rel, target) => {
                    std::os::unix::fs::symlink(target, top.join(rel)).unwrap()
                }
            }
        }
    }
}

fn file_nar_hash(data: &[u8], exec: bool) -> [u8; 32] {
    if (data.len() as u64) < storesync::store::links::LINKS_MIN_SIZE {
        return [0; 32];
    }
    let mut h = nar::FileNarHasher::new(exec, data.len() as u64);
    h.update(data);
    h.finish()
}

fn file(data: &[u8], exec: bool) -> Node {
    Node::Regular {
        executable: exec,
        size: data.len() as u64,
        blob: BlobId::of(data),
        file_nar_hash: file_nar_hash(data, exec),
    }
}

fn entry(name: &str, node: Node) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        node,
    }
}

/// B's only file, in v2: its blob holds the placeholder where it names A, and its node says
/// where A's hash part goes back (built by hand, not by the save code).
fn b_rewritten(data: &[u8], exec: bool) -> (Node, Vec<u8>) {
    let at = "#!/gnu/store/".len();
    assert_eq!(&data[at..at + 32], &A.as_bytes()[..32]);
    let mut blob = data.to_vec();
    blob[at..at + 32].copy_from_slice(&[b'e'; 32]);
    let node = Node::Rewritten {
        executable: exec,
        size: data.len() as u64,
        blob: BlobId::of(&blob),
        file_nar_hash: file_nar_hash(data, exec),
        rewrites: vec![Rewrite {
            offset: at as u64,
            hash_part: A.as_bytes()[..32].try_into().unwrap(),
        }],
    };
    (node, blob)
}

/// The blobs of the golden cache of `version`: file contents, B's rewritten from v2 on.
fn blobs(version: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (base, its) in items() {
        for it in its {
            if let Item::File(_, data, exec) = it {
                out.push(if base == B && version >= 2 {
                    b_rewritten(&data, exec).1
                } else {
                    data
                });
            }
        }
    }
    out
}

/// A tree's id in the encoding of `version`.
fn tree_id(node: &Node, version: u32) -> storesync::cache::TreeId {
    if version >= 2 {
        node.encode().0
    } else {
        node.encode_v1().unwrap().0
    }
}

/// The trees of the golden paths, built by hand (not by walking a store) so that they pin
/// the tree encoding independently of the save code.
fn trees(version: u32) -> BTreeMap<&'static str, Node> {
    let a = Node::Directory(vec![
        entry("big", file(&big(), false)),
        entry(
            "bin",
            Node::Directory(vec![
                entry("hello", file(b"#!/bin/sh\necho hello\n", true)),
                entry(
                    "hi",
                    Node::Symlink {
                        target: b"hello".to_vec(),
                    },
                ),
            ]),
        ),
        entry(
            "share",
            Node::Directory(vec![entry("README", file(b"hello world\n", false))]),
        ),
    ]);
    let mut out = BTreeMap::new();
    out.insert(A, a);
    for (base, its) in items().into_iter().skip(1) {
        let Item::File(_, data, exec) = &its[0] else {
            unreachable!()
        };
        if base == B && version >= 2 {
            out.insert(base, b_rewritten(data, *exec).0);
        } else {
            out.insert(base, file(data, *exec));
        }
    }
    out
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

/// The snapshot the golden cache of `version` holds; NAR hashes are those of the laid-out
/// store; `indexes` are the index files a v2 snapshot names.
fn snapshot(store: &Path, version: u32, indexes: Vec<IndexId>) -> Snapshot {
    let trees = trees(version);
    let info = |base: &str, refs: &[&str], deriver: Option<&str>| {
        let (nar_hash, nar_size) = nar::hash_path(&store.join(base)).unwrap();
        SnapshotPath {
            info: PathInfo {
                path: sp(base),
                nar_hash,
                nar_size,
                registration_time: 1_764_000_000,
                deriver: deriver.map(|d| format!("/gnu/store/{d}")),
                references: refs.iter().map(|r| sp(r)).collect(),
                nix: None,
            },
            tree: tree_id(&trees[base], version),
        }
    };
    Snapshot {
        version,
        key: if version >= 2 {
            "guix-golden-x86_64".into()
        } else {
            String::new()
        },
        indexes,
        parent: None,
        flavor: Flavor::Guix,
        store_dir: "/gnu/store".into(),
        created: CREATED,
        tool: "storesync golden".into(),
        roots: vec![sp(B)],
        paths: vec![
            info(A, &[], None),
            info(B, &[A, B], Some(C)),
            info(C, &[], None),
        ],
        derivation_outputs: vec![DerivationOutput {
            drv: sp(C),
            id: "out".into(),
            path: format!("/gnu/store/{B}"),
        }],
    }
}

/// Write the golden cache with today's writer: one packer, objects in a fixed order.
fn write_cache(dir: &Path, store: &Path) -> storesync::cache::SnapshotId {
    let cache = Cache::open_dir(dir).unwrap();
    let packer = Packer::new(&cache, 3);
    for data in blobs(FORMAT_VERSION) {
        let id = BlobId::of(&data);
        if packer.claim(id) {
            packer.add(ObjectKind::Blob, id, &data).unwrap();
        }
    }
    for node in trees(FORMAT_VERSION).values() {
        let (id, bytes) = node.encode();
        if packer.claim(id) {
            packer.add(ObjectKind::Tree, id, &bytes).unwrap();
        }
    }
    let index = packer.finish().unwrap().index.unwrap();
    cache
        .write_snapshot(&snapshot(store, FORMAT_VERSION, vec![index]))
        .unwrap()
}

/// Every file of a cache directory (but `tmp/`), by relative path.
fn cache_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["packs", "index", "snapshots"] {
        let Ok(entries) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            out.insert(
                format!("{sub}/{}", e.file_name().to_string_lossy()),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/cache/v{version}"))
}

/// The golden store laid out in a temporary directory.
fn golden_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("gnu/store");
    fs::create_dir_all(&store).unwrap();
    build_store(&store);
    (dir, store)
}

#[test]
fn the_writer_reproduces_the_golden_cache_of_its_version() {
    let (_keep, store) = golden_store();
    let out = tempfile::tempdir().unwrap();
    write_cache(out.path(), &store);
    let fresh = cache_files(out.path());
    let golden = fixture(FORMAT_VERSION);
    if std::env::var_os("STORESYNC_BLESS").is_some() {
        let _ = fs::remove_dir_all(&golden);
        for (name, bytes) in &fresh {
            let p = golden.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
    }
    let pinned = cache_files(&golden);
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        pinned.keys().collect::<Vec<_>>(),
        "files written for format v{FORMAT_VERSION} differ from fixtures/cache/v{FORMAT_VERSION}: \
         a format change needs a new version (see docs/FORMAT.md)"
    );
    for (name, bytes) in &fresh {
        assert!(
            bytes == &pinned[name],
            "{name} differs from its golden bytes"
        );
    }
}

/// Read a golden cache of `version` and compare every value with what it must hold.
fn golden_cache_reads_to_known_values(version: u32) {
    let (_keep, store) = golden_store();
    let cache = Cache::open_dir_read_only(&fixture(version));
    let (id, snap) = cache.find_snapshot(None).unwrap();
    let indexes = if version >= 2 {
        cache
            .storage()
            .list("index")
            .unwrap()
            .iter()
            .map(|k| {
                IndexId::parse(
                    k.strip_prefix("index/")
                        .unwrap()
                        .strip_suffix(".idx")
                        .unwrap(),
                )
                .unwrap()
            })
            .collect()
    } else {
        Vec::new()
    };
    assert_eq!(
        snap,
        snapshot(&store, version, indexes),
        "v{version} snapshot {id}"
    );
    for (base, tree) in trees(version) {
        let p = snap.paths.iter().find(|p| p.info.path == sp(base)).unwrap();
        assert_eq!(
            cache.read_tree(&p.tree).unwrap(),
            tree,
            "v{version} tree of {base}"
        );
    }
    for data in blobs(version) {
        let got = cache.read_small(BlobId::of(&data)).unwrap();
        assert!(got == data, "v{version} blob {}", BlobId::of(&data));
    }
    let report = storesync::verify::verify(&cache, &storesync::progress::NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // A collection marks from the snapshot's trees (read alone from a v2 file, from the
    // decoded snapshot of a v1 file): everything is live, every snapshot kept.
    let policy = storesync::cache::gc::GcPolicy {
        dry_run: true,
        ..Default::default()
    };
    let g = storesync::cache::gc::gc(&cache, &policy, &storesync::progress::NoProgress).unwrap();
    assert_eq!(
        (
            g.kept.len(),
            g.dropped.len(),
            g.packs_retired,
            g.bytes_pending
        ),
        (1, 0, 0, 0),
        "v{version}: {g:?}"
    );
    assert!(g.live_bytes > 0, "v{version}: {g:?}");
}

#[test]
fn golden_v1_cache_reads_to_known_values() {
    golden_cache_reads_to_known_values(1);
}

#[test]
fn golden_v2_cache_reads_to_known_values() {
    golden_cache_reads_to_known_values(2);
}

#[test]
fn golden_v1_cache_restores_into_an_empty_store_with_the_daemons_hashes() {
    golden_cache_restores(1);
}

#[test]
fn golden_v2_cache_restores_into_an_empty_store_with_the_daemons_hashes() {
    golden_cache_restores(2);
}

fn golden_cache_restores(version: u32) {
    let w = World::new(Flavor::Guix);
    let (_keep, store) = golden_store();
    w.cmd("dst")
        .args(["restore", "--cache"])
        .arg(fixture(version))
        .assert()
        .success();
    let dst = w.layout("dst");
    let rows = util::db_rows(&dst);
    assert_eq!(rows.paths.len(), 3);
    for base in [A, B, C] {
        let (want, _) = nar::hash_path(&store.join(base)).unwrap();
        let (got, _) = nar::hash_path(&dst.real_store_dir().join(base)).unwrap();
        assert_eq!(got, want, "{base}");
        let row = &rows.paths[&format!("/gnu/store/{base}")];
        assert_eq!(NarHash::parse_db(&row.0), Some(want));
    }
    assert_eq!(
        rows.outputs,
        vec![(
            format!("/gnu/store/{C}"),
            "out".to_string(),
            format!("/gnu/store/{B}")
        )]
    );
}
