//! Test harness: temporary roots holding sample stores, a cache directory, and a command
//! builder for the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use storesync::cache::Cache;
use storesync::store::layout::{Flavor, Layout};

pub struct World {
    pub dir: tempfile::TempDir,
    pub flavor: Flavor,
}

impl World {
    pub fn new(flavor: Flavor) -> Self {
        World {
            dir: tempfile::tempdir().unwrap(),
            flavor,
        }
    }
    pub fn root(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn layout(&self, name: &str) -> Layout {
        Layout::new(self.flavor, &self.root(name), None, None).unwrap()
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    pub fn cache(&self) -> Cache {
        Cache::open_dir(&self.cache_dir()).unwrap()
    }
    /// The storesync binary with --flavor and --root set.
    pub fn cmd(&self, root: &str) -> Command {
        Command::from_std(self.std_cmd(root))
    }
    /// `storesync ARGS --cache <this world's cache>` with --flavor and --root set.
    #[allow(dead_code)]
    pub fn on_cache(&self, root: &str, args: &[&str]) -> Command {
        let mut c = self.cmd(root);
        c.args(args).arg("--cache").arg(self.cache_dir());
        c
    }
}

/// hash, registrationTime, deriver, narSize, ultimate, sigs, ca.
pub type Row = (
    String,
    i64,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Rows of a DB as comparable text, ids replaced by paths.
#[derive(Debug, PartialEq, Eq)]
pub struct DbRows {
    pub paths: BTreeMap<String, Row>,
    pub refs: Vec<(String, String)>,
    pub outputs: Vec<(String, String, String)>,
}

pub fn db_rows(layout: &Layout) -> DbRows {
    let conn = rusqlite::Connection::open(layout.db_file()).unwrap();
    let nix = layout.flavor == Flavor::Nix;
    let q = if nix {
        "select path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths"
    } else {
        "select path, hash, registrationTime, deriver, narSize, null, null, null from ValidPaths"
    };
    let mut st = conn.prepare(q).unwrap();
    let paths = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                (
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut refs: Vec<(String, String)> = conn
        .prepare("select a.path, b.path from Refs join ValidPaths a on a.id = referrer join ValidPaths b on b.id = reference")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    refs.sort();
    let mut outputs: Vec<(String, String, String)> = conn
        .prepare("select v.path, o.id, o.path from DerivationOutputs o join ValidPaths v on v.id = o.drv")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    outputs.sort();
    DbRows {
        paths,
        refs,
        outputs,
    }
}

/// (relative path, kind, mode, mtime, link target or size) for every node under `dir`.
pub fn tree_listing(dir: &Path) -> Vec<(String, String, u32, i64, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, p: &Path, out: &mut Vec<(String, String, u32, i64, String)>) {
        let m = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let (kind, extra) = if m.file_type().is_symlink() {
            ("link", fs::read_link(p).unwrap().display().to_string())
        } else if m.is_dir() {
            ("dir", String::new())
        } else {
            ("file", m.len().to_string())
        };
        let mode = if kind == "link" { 0 } else { m.mode() & 0o7777 };
        out.push((rel, kind.to_string(), mode, m.mtime(), extra));
        if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for n in names {
                walk(base, &n, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Inode numbers of the top-level store items.
pub fn inodes(store: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

pub fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

impl World {
    /// [`World::cmd`] as a plain `std::process::Command`, for a child that is spawned and then
    /// killed or waited for with a timeout.
    pub fn std_cmd(&self, root: &str) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("storesync"));
        c.arg("--flavor")
            .arg(self.flavor.name())
            .arg("--root")
            .arg(self.root(root))
            .arg("--no-progress")
            .env_remove("GUIX_DATABASE_DIRECTORY")
            .env_remove("GUIX_STATE_DIRECTORY")
            .env_remove("NIX_STORE_DIR")
            .env_remove("NIX_STATE_DIR")
            .env_remove("STORESYNC_TRUSTED_KEYS")
            .env_remove("STORESYNC_SIGN_KEY");
        c
    }
}

/// The file of snapshot `id` (full hex) in a cache directory, whatever its format's naming.
pub fn snapshot_file(cache: &Path, id: &str) -> PathBuf {
    fs::read_dir(cache.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains(id))
        .unwrap_or_else(|| panic!("no snapshot file for {id}"))
}

/// Write and register (in `layout`'s DB, created if needed) a store path of regular files
/// `(relative path, contents, executable)` (parent directories made as needed), with
/// references `refs` (base names).
pub fn add_files_path(layout: &Layout, base: &str, files: &[(&str, &[u8], bool)], refs: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    use storesync::store::path::StorePath;
    let path = StorePath::from_base_name(base).unwrap();
    let top = layout.real_store_dir().join(base);
    fs::create_dir_all(&top).unwrap();
    for (name, contents, x) in files {
        let p = top.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        fs::set_permissions(
            &p,
            fs::Permissions::from_mode(if *x { 0o555 } else { 0o444 }),
        )
        .unwrap();
    }
    storesync::sample::canonicalise(&top).unwrap();
    let (nar_hash, nar_size) = storesync::nar::hash_path(&top).unwrap();
    let info = storesync::store::PathInfo {
        path,
        nar_hash,
        nar_size,
        registration_time: 1,
        deriver: None,
        references: refs
            .iter()
            .map(|r| StorePath::from_base_name(r).unwrap())
            .collect(),
        nix: None,
    };
    let mut conn = storesync::db::open_or_create(layout).unwrap();
    storesync::db::register(&mut conn, layout, &[&info], &[]).unwrap();
}

/// Bytes that zstd cannot shrink much (a simple xorshift stream), `len` of them.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
// ---------------------------------------------------------------------------------------------
// Hostile caches: valid format-v1 files (every envelope, index entry and object id correct)
// holding whatever trees and blobs a test chooses, so that only the content lies.

/// File contents by blob id.
pub type Blobs = std::collections::HashMap<storesync::cache::BlobId, Vec<u8>>;

/// Append a NAR string: little-endian u64 length, the bytes, zero padding to 8.
pub fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend(std::iter::repeat_n(0u8, (8 - s.len() % 8) % 8));
}

/// The NAR of `node` with contents from `blobs`, written here independently of the library's
/// encoder (a genuine tree's NAR: each file's blob must hold exactly its declared size).
pub fn nar_of(node: &storesync::cache::Node, blobs: &Blobs) -> Vec<u8> {
    fn walk(n: &storesync::cache::Node, blobs: &Blobs, out: &mut Vec<u8>) {
        use storesync::cache::Node;
        nar_str(out, b"(");
        nar_str(out, b"type");
        match n {
            Node::Regular { .. } | Node::Rewritten { .. } => {
                let f = n.file().unwrap();
                nar_str(out, b"regular");
                if f.executable {
                    nar_str(out, b"executable");
                    nar_str(out, b"");
                }
                nar_str(out, b"contents");
                let mut c = blobs[&f.blob].clone();
                assert_eq!(c.len() as u64, f.size, "nar_of wants a genuine tree");
                // Hash parts put back where the tree says, independently of the library.
                for r in f.rewrites {
                    let at = r.offset as usize;
                    c[at..at + 32].copy_from_slice(&r.hash_part);
                }
                nar_str(out, &c);
            }
            Node::Symlink { target } => {
                nar_str(out, b"symlink");
                nar_str(out, b"target");
                nar_str(out, target);
            }
            Node::Directory(entries) => {
                nar_str(out, b"directory");
                for e in entries {
                    nar_str(out, b"entry");
                    nar_str(out, b"(");
                    nar_str(out, b"name");
                    nar_str(out, &e.name);
                    nar_str(out, b"node");
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

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The `.links` name of a file: SHA-256 of the NAR of the file alone.
pub fn file_nar_hash(executable: bool, contents: &[u8]) -> [u8; 32] {
    let mut h = std::collections::HashMap::new();
    let blob = storesync::cache::BlobId::of(contents);
    h.insert(blob, contents.to_vec());
    sha256(&nar_of(
        &storesync::cache::Node::Regular {
            executable,
            size: contents.len() as u64,
            blob,
            file_nar_hash: [0; 32],
        },
        &h,
    ))
}

/// A regular file node for `contents` (added to `blobs`), with its true `.links` name when it
/// is 8 KiB or more, as a save records it.
pub fn file_node(blobs: &mut Blobs, executable: bool, contents: &[u8]) -> storesync::cache::Node {
    let blob = storesync::cache::BlobId::of(contents);
    blobs.insert(blob, contents.to_vec());
    let big = contents.len() as u64 >= storesync::store::links::LINKS_MIN_SIZE;
    storesync::cache::Node::Regular {
        executable,
        size: contents.len() as u64,
        blob,
        file_nar_hash: if big {
            file_nar_hash(executable, contents)
        } else {
            [0; 32]
        },
    }
}

/// A directory node; entries are sorted here.
pub fn dir_node(mut entries: Vec<(&str, storesync::cache::Node)>) -> storesync::cache::Node {
    entries.sort_by(|a, b| a.0.cmp(b.0));
    storesync::cache::Node::Directory(
        entries
            .into_iter()
            .map(|(name, node)| storesync::cache::Entry {
                name: name.as_bytes().to_vec(),
                node,
            })
            .collect(),
    )
}

/// A store path base name: hash part `n` in decimal digits (valid nix-base32), then `name`.
pub fn base_name(n: u64, name: &str) -> String {
    format!("{n:032}-{name}")
}

/// A DB row for `base` vouching for the NAR `nar` (hash and size), no references.
pub fn row_for(base: &str, nar: &[u8]) -> storesync::store::PathInfo {
    storesync::store::PathInfo {
        path: storesync::store::StorePath::from_base_name(base).unwrap(),
        nar_hash: storesync::store::path_info::NarHash(sha256(nar)),
        nar_size: nar.len() as u64,
        registration_time: 1_700_000_000,
        deriver: None,
        references: Vec::new(),
        nix: None,
    }
}

/// Write every blob and every path's tree into the cache at `dir` (ids all correct), then one
/// snapshot of `paths` (references first) for `flavor`'s default store. Returns its id in hex.
pub fn write_cache(
    dir: &Path,
    flavor: Flavor,
    paths: &[(storesync::store::PathInfo, storesync::cache::Node)],
    blobs: &Blobs,
    derivation_outputs: Vec<storesync::store::DerivationOutput>,
) -> String {
    use storesync::cache::{ObjectKind, Packer, Snapshot, SnapshotPath};
    let cache = Cache::open_dir(dir).unwrap();
    let packer = Packer::new(&cache, 3);
    for (id, bytes) in blobs {
        if packer.claim(*id) {
            packer.add(ObjectKind::Blob, *id, bytes).unwrap();
        }
    }
    let mut snap_paths = Vec::new();
    for (info, node) in paths {
        let (tree, bytes) = node.encode();
        if packer.claim(tree) {
            packer.add(ObjectKind::Tree, tree, &bytes).unwrap();
        }
        snap_paths.push(SnapshotPath {
            info: info.clone(),
            tree,
        });
    }
    packer.finish().unwrap();
    let snap = Snapshot {
        version: storesync::cache::FORMAT_VERSION,
        key: String::new(),
        indexes: cache.index_files(),
        parent: None,
        flavor,
        store_dir: flavor.default_store_dir().to_string(),
        created: storesync::clock::now_nanos(),
        tool: "hostile test".into(),
        roots: Vec::new(),
        paths: snap_paths,
        derivation_outputs,
    };
    cache.write_snapshot(&snap).unwrap().hex()
}

/// What a directory holds, to compare before and after: every node's kind, mode, mtime, size
/// or link target (see [`tree_listing`]) and the SHA-256 of every regular file. An absent
/// directory is an empty listing.
pub fn dir_state(dir: &Path) -> Vec<(String, String, u32, i64, String, [u8; 32])> {
    if fs::symlink_metadata(dir).is_err() {
        return Vec::new();
    }
    tree_listing(dir)
        .into_iter()
        .map(|(rel, kind, mode, mtime, extra)| {
            let p = if rel.is_empty() {
                dir.to_owned()
            } else {
                dir.join(&rel)
            };
            let sum = if kind == "file" {
                sha256(&fs::read(p).unwrap())
            } else {
                [0; 32]
            };
            (rel, kind, mode, mtime, extra, sum)
        })
        .collect()
}

/// Every registered path of `layout` is on disk with the registered NAR hash and size.
pub fn assert_registered_paths_are_on_disk(layout: &Layout) {
    if !layout.db_file().exists() {
        return;
    }
    for (path, row) in db_rows(layout).paths {
        let on_disk = layout.root.join(path.trim_start_matches('/'));
        let (hash, size) = storesync::nar::hash_path(&on_disk)
            .unwrap_or_else(|e| panic!("{path} registered, unreadable: {e}"));
        assert_eq!(
            storesync::store::path_info::NarHash::parse_db(&row.0),
            Some(hash),
            "{path}: registered hash is not what is on disk"
        );
        assert_eq!(row.3, size as i64, "{path}");
    }
}

// Issue 14's two generations (tests/rewrite.rs, tests/s3.rs): a dependency rebuilt under
// another hash, and a package whose files name it.

pub const DEP1: &str = "11111111111111111111111111111111-dep-1";
/// A rebuild of the dependency: same name, another hash (the bytes that differ in what
/// names it are the hash part only, the case placeholders cover).
pub const DEP2: &str = "22222222222222222222222222222222-dep-1";
pub const PKG1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-pkg-1";
pub const PKG2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-pkg-1";

/// Lay out and register a store path of `files` (relative path, contents, executable).
pub fn add_path(layout: &Layout, base: &str, files: &[(&str, Vec<u8>, bool)], refs: &[&str]) {
    let files: Vec<(&str, &[u8], bool)> = files
        .iter()
        .map(|(rel, contents, x)| (*rel, contents.as_slice(), *x))
        .collect();
    add_files_path(layout, base, &files, refs);
}

/// `data` with `text` written over it at each of `offsets`.
pub fn with_at(mut data: Vec<u8>, text: &str, offsets: &[usize]) -> Vec<u8> {
    for &o in offsets {
        data[o..o + text.len()].copy_from_slice(text.as_bytes());
    }
    data
}

/// The files of a package built against `dep`, installed as `me`: an "ELF" whose RUNPATH
/// names the dependency, a 6 MiB library (streamed in 1 MiB reads at save) naming it across
/// a read boundary and naming itself, a script, and a file holding the placeholder bytes and
/// a hash part of no reference literally.
pub fn package(dep: &str, me: &str) -> Vec<(&'static str, Vec<u8>, bool)> {
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

/// Lay out issue 14's generation `n` in `layout`: 1 is `DEP1` and `PKG1` built against it; 2
/// adds `DEP2` (other contents, same size) and `PKG2`, built against it (its files are
/// `PKG1`'s but for the hash parts they name).
pub fn add_generation(layout: &Layout, n: u8) {
    let (dep, pkg, seed) = match n {
        1 => (DEP1, PKG1, 10),
        _ => (DEP2, PKG2, 12),
    };
    add_path(
        layout,
        dep,
        &[("lib/libdep.so", noise(seed, 20_000), false)],
        &[],
    );
    add_path(layout, pkg, &package(dep, pkg), &[dep, pkg]);
}

/// Change `path` (in a restored store: read-only, in a read-only directory) with `f`, its
/// directory and itself made writable meanwhile.
pub fn edit(path: &Path, f: impl FnOnce(&Path)) {
    let parent = path.parent().unwrap();
    let mode = fs::metadata(parent).unwrap().permissions().mode();
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    f(path);
    fs::set_permissions(parent, fs::Permissions::from_mode(mode)).unwrap();
}

/// Changes PKG1's `bin/prog` and `lib/libpkg.so` (at a byte where no reference is) when the
/// restore starts writing: after the plan found them to hold PKG2's blobs.
pub struct ChangeWhenWriting(pub std::path::PathBuf);

impl storesync::progress::Progress for ChangeWhenWriting {
    fn start_bytes(&self, phase: &str, _total: u64) {
        if phase != "restoring paths" {
            return;
        }
        for rel in ["bin/prog", "lib/libpkg.so"] {
            edit(&self.0.join(rel), |p| {
                let mut b = fs::read(p).unwrap();
                b[5] ^= 1;
                fs::write(p, b).unwrap();
            });
        }
    }
}

/// A size-limited tmpfs mounted for the guard's lifetime.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount, or `None` (with the reason printed) when this process may not mount (not root).
    pub fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_owned())),
            Ok(o) => {
                eprintln!(
                    "cannot mount a tmpfs on {} (needs root): {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("cannot run mount: {e}");
                None
            }
        }
    }

    pub fn resize(&self, kib: u64) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "remounting {} with {kib} KiB",
            self.0.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Names in the store directory left by an interrupted restore.
pub fn leftovers(layout: &Layout) -> Vec<String> {
    match fs::read_dir(layout.real_store_dir()) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| storesync::restore::scratch_kind(n).is_some())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// After a completed restore: the store holds exactly the registered paths (and `.links`),
/// no temporary or trash entry, and every `.links` entry holds what its name says.
pub fn check_clean(layout: &Layout, rows: &DbRows, ctx: &str) {
    let store = layout.real_store_dir();
    for e in fs::read_dir(&store).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name == ".links" {
            continue;
        }
        assert!(
            rows.paths
                .contains_key(&format!("{}/{name}", layout.store_dir.as_str())),
            "{ctx}: {name} is in the store but not registered"
        );
    }
    for e in fs::read_dir(store.join(".links")).unwrap() {
        let e = e.unwrap();
        let hash = storesync::nar::hash_path(&e.path()).unwrap().0;
        assert_eq!(
            storesync::store::path::nixbase32_encode(&hash.0),
            e.file_name().to_string_lossy(),
            "{ctx}: a .links entry does not hold what its name says"
        );
    }
}
