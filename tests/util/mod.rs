//! Test harness: temporary roots holding sample stores, a cache directory, and a command
//! builder for the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
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
        let mut c = Command::cargo_bin("storesync").unwrap();
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
            .env_remove("NIX_STATE_DIR");
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
/// `(name, contents, executable)`, with references `refs` (base names).
pub fn add_files_path(layout: &Layout, base: &str, files: &[(&str, &[u8], bool)], refs: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    use storesync::store::path::StorePath;
    let path = StorePath::from_base_name(base).unwrap();
    let top = layout.real_store_dir().join(base);
    fs::create_dir_all(&top).unwrap();
    for (name, contents, x) in files {
        let p = top.join(name);
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
        ultimate: None,
        sigs: None,
        ca: None,
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
