//! The scale benchmark's store generator: a Guix-layout store (`<root>/gnu/store`, DB at
//! `<root>/var/guix/db`) of N small paths (1,000 to 100,000 and more), made from a seeded
//! pseudo-random generator so that every run builds the same store.
//!
//! Path `i` (0 ≤ i < N) is, by `i % 10`:
//! * 0-5, a package: a directory with `bin/<name>` (an executable script of 200-700 bytes
//!   naming its references' store paths, as Guix's patched shebangs and wrappers do),
//!   `share/doc/<name>/README` (0.5-3 KiB of text), `lib` with a symlink, and for every
//!   fourth package `share/licenses/COPYING`: one of 32 licence texts of 9-17 KiB, shared by
//!   hard links through `<store>/.links/<nix-base32 of its file NAR SHA-256>` as the daemon's
//!   deduplication leaves them;
//! * 6-7, a source: one file of 1-4 KiB;
//! * 8-9, a `.drv`: one text file naming its inputs.
//!
//! References: each path refers to 0-4 earlier paths (so index order is a topological order),
//! half of them among the first 1% ("core" libraries), the rest anywhere before it, but never
//! to the last 30% of paths (the "leaves": applications and profiles nothing depends on).
//!
//! Generations: generation `g` upgrades about 10% of the leaves (3% of all paths) chosen
//! afresh for each generation: a new version, new contents, a new store path. Since nothing
//! refers to a leaf, the other paths stay the same and the store keeps N paths. A store is
//! advanced from one generation to the next in place (old leaves deleted from disk and DB,
//! new ones written and registered), so 20 snapshots of a 100,000-path store cost 20 small
//! updates, not 20 stores.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use storesync::db;
use storesync::nar::{self, FileNarHasher};
use storesync::store::layout::{Flavor, Layout};
use storesync::store::path::{compress_hash, nixbase32_encode, StorePath};
use storesync::store::PathInfo;

/// Bump when the generator's output changes, so stale stores are rebuilt.
pub const GEN_VERSION: u32 = 1;
const REGISTRATION_TIME: i64 = 1_700_000_000;
/// Licence texts shared through `.links`.
const LICENCES: u64 = 32;
/// Out of 1000: how many leaves a generation upgrades.
const LEAF_CHANGE_PER_MILLE: u64 = 100;

pub type Res<T> = Result<T, String>;

/// What a generated store is; written to `<dir>/state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub gen_version: u32,
    pub paths: usize,
    pub generation: u32,
}

/// splitmix64: a seeded, fast, good-enough stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn new(seed: &[u64]) -> Self {
        let mut r = Rng(0x5eed_5ca1_e000_0001);
        for &s in seed {
            r.0 ^= s;
            r.next();
        }
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn first_leaf(n: usize) -> usize {
    n - n * 3 / 10
}

/// The version of path `i` at `generation`: how many generations up to it upgraded it.
fn version(n: usize, i: usize, generation: u32) -> u32 {
    if i < first_leaf(n) {
        return 0;
    }
    (1..=generation)
        .filter(|&g| Rng::new(&[i as u64, g as u64, 7]).below(1000) < LEAF_CHANGE_PER_MILLE)
        .count() as u32
}

/// The references of path `i` (indices, sorted, unique, all < i and below the leaves).
fn references(n: usize, i: usize) -> Vec<usize> {
    let limit = i.min(first_leaf(n));
    if limit == 0 {
        return Vec::new();
    }
    let mut r = Rng::new(&[i as u64, 1]);
    let core = (n / 100).max(1).min(limit);
    let count = r.below(5);
    let mut v: Vec<usize> = (0..count)
        .map(|k| {
            if k % 2 == 0 {
                r.below(core as u64) as usize
            } else {
                r.below(limit as u64) as usize
            }
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn kind_name(i: usize) -> &'static str {
    match i % 10 {
        0..=5 => "pkg",
        6 | 7 => "src",
        _ => "drv",
    }
}

/// The store path of path `i` at `version`.
fn store_path(i: usize, version: u32) -> StorePath {
    let mut h = Sha256::new();
    h.update(format!("storesync-scale:{GEN_VERSION}:{i}:{version}").as_bytes());
    let hash = nixbase32_encode(&compress_hash(&h.finalize(), 20));
    let name = match kind_name(i) {
        "pkg" => format!("pkg{i}-1.{version}"),
        "src" => format!("pkg{i}-1.{version}.tar.gz"),
        _ => format!("pkg{i}-1.{version}.drv"),
    };
    StorePath::from_base_name(&format!("{hash}-{name}")).expect("generated names are valid")
}

/// Text of `len` bytes: words from a small vocabulary (compresses like documentation does).
fn text(r: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the",
        "store",
        "path",
        "closure",
        "reference",
        "daemon",
        "build",
        "output",
        "derivation",
        "profile",
        "garbage",
        "collector",
        "substitute",
        "narinfo",
        "hash",
        "generation",
    ];
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(WORDS[r.below(16) as usize].as_bytes());
        v.push(if r.below(12) == 0 { b'\n' } else { b' ' });
    }
    v.truncate(len);
    v
}

fn licence(k: u64) -> Vec<u8> {
    let mut r = Rng::new(&[k, 3]);
    let len = 9 * 1024 + r.below(8 * 1024) as usize;
    text(&mut r, len)
}

fn io<'a>(p: &'a Path) -> impl Fn(std::io::Error) -> String + 'a {
    move |e| format!("{}: {e}", p.display())
}

fn write_file(p: &Path, bytes: &[u8], exec: bool) -> Res<()> {
    fs::write(p, bytes).map_err(io(p))?;
    let mode = if exec { 0o555 } else { 0o444 };
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io(p))
}

fn mkdir(p: &Path) -> Res<()> {
    fs::create_dir(p).map_err(io(p))
}

/// Canonical directory metadata (mode 0555, mtime 1), deepest first.
fn seal_dirs(dirs: &[PathBuf]) -> Res<()> {
    let one = filetime::FileTime::from_unix_time(1, 0);
    for d in dirs.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).map_err(io(d))?;
        filetime::set_file_mtime(d, one).map_err(io(d))?;
    }
    Ok(())
}

/// Write path `i` at `version` under `store` (absent before). Files get mtime 1 from
/// `canonical_mtime` afterwards.
fn write_path(store: &Path, links: &Path, n: usize, i: usize, ver: u32) -> Res<()> {
    let me = store_path(i, ver);
    let top = store.join(me.base_name());
    let refs: Vec<String> = references(n, i)
        .into_iter()
        .map(|j| {
            format!(
                "/gnu/store/{}",
                store_path(j, version_of_ref(n, j)).base_name()
            )
        })
        .collect();
    let mut r = Rng::new(&[i as u64, ver as u64, 2]);
    let one = filetime::FileTime::from_unix_time(1, 0);
    let set_one = |p: &Path| filetime::set_symlink_file_times(p, one, one).map_err(io(p));
    match kind_name(i) {
        "pkg" => {
            let name = format!("pkg{i}");
            let dirs = [
                top.clone(),
                top.join("bin"),
                top.join("lib"),
                top.join("share"),
                top.join("share/doc"),
                top.join(format!("share/doc/{name}")),
            ];
            for d in &dirs {
                mkdir(d)?;
            }
            let mut script = format!("#!/gnu/store/{}/bin/sh\n", me.base_name()).into_bytes();
            for rf in &refs {
                writeln!(script, "export PATH={rf}/bin:$PATH").expect("in memory");
            }
            let pad = 200 + r.below(500) as usize;
            script.extend(text(&mut r, pad));
            let f = top.join("bin").join(&name);
            write_file(&f, &script, true)?;
            set_one(&f)?;
            let len = 512 + r.below(2560) as usize;
            let f = top.join(format!("share/doc/{name}/README"));
            write_file(&f, &text(&mut r, len), false)?;
            set_one(&f)?;
            let l = top.join(format!("lib/lib{name}.so"));
            symlink(format!("lib{name}.so.1"), &l).map_err(io(&l))?;
            set_one(&l)?;
            let mut all_dirs = dirs.to_vec();
            if i % 4 == 0 {
                let d = top.join("share/licenses");
                mkdir(&d)?;
                let k = r.below(LICENCES);
                let entry = links.join(licence_name(k));
                let f = d.join("COPYING");
                fs::hard_link(&entry, &f).map_err(io(&f))?;
                all_dirs.push(d);
            }
            seal_dirs(&all_dirs)
        }
        "src" => {
            let len = 1024 + r.below(3072) as usize;
            write_file(&top, &text(&mut r, len), false)?;
            set_one(&top)
        }
        _ => {
            let mut t = format!("Derive([(\"out\",\"/gnu/store/{}\")],[", me.base_name());
            for rf in &refs {
                t.push_str(&format!("(\"{rf}\",[\"out\"]),"));
            }
            t.push_str("],\"x86_64-linux\",\"/bin/sh\")");
            write_file(&top, t.as_bytes(), false)?;
            set_one(&top)
        }
    }
}

/// References never name leaves, so they are always at version 0.
fn version_of_ref(_n: usize, _j: usize) -> u32 {
    0
}

fn licence_name(k: u64) -> String {
    let bytes = licence(k);
    let mut h = FileNarHasher::new(false, bytes.len() as u64);
    h.update(&bytes);
    nixbase32_encode(&h.finish())
}

/// Make `<store>/.links` hold the licence texts.
fn write_links(store: &Path) -> Res<PathBuf> {
    let links = store.join(".links");
    fs::create_dir_all(&links).map_err(io(&links))?;
    let one = filetime::FileTime::from_unix_time(1, 0);
    for k in 0..LICENCES {
        let p = links.join(licence_name(k));
        if !p.exists() {
            write_file(&p, &licence(k), false)?;
            filetime::set_file_mtime(&p, one).map_err(io(&p))?;
        }
    }
    Ok(links)
}

pub fn layout(root: &Path) -> Layout {
    Layout::new(Flavor::Guix, root, None, None).expect("default layout")
}

/// Write paths `which` (index, version), hash them and register them, references first.
fn add_paths(root: &Path, n: usize, which: &[(usize, u32)]) -> Res<()> {
    let lay = layout(root);
    let store = lay.real_store_dir();
    let links = write_links(&store)?;
    which
        .par_iter()
        .try_for_each(|&(i, v)| write_path(&store, &links, n, i, v))?;
    let infos: Vec<PathInfo> = which
        .par_iter()
        .map(|&(i, v)| -> Res<PathInfo> {
            let p = store_path(i, v);
            let (nar_hash, nar_size) =
                nar::hash_path(&store.join(p.base_name())).map_err(|e| e.to_string())?;
            let mut refs: Vec<StorePath> = references(n, i)
                .into_iter()
                .map(|j| store_path(j, version_of_ref(n, j)))
                .collect();
            if kind_name(i) == "pkg" {
                refs.push(p.clone()); // the script names its own path
            }
            refs.sort();
            Ok(PathInfo {
                path: p,
                nar_hash,
                nar_size,
                registration_time: REGISTRATION_TIME,
                deriver: None,
                references: refs,
                nix: None,
            })
        })
        .collect::<Res<_>>()?;
    let _lock =
        db::BigLock::acquire(&lay.big_lock_file(), lay.flavor, true).map_err(|e| e.to_string())?;
    let mut conn = db::open_or_create(&lay).map_err(|e| e.to_string())?;
    let refs: Vec<&PathInfo> = infos.iter().collect();
    db::register(&mut conn, &lay, &refs, &[]).map_err(|e| e.to_string())?;
    conn.execute_batch("pragma wal_checkpoint(TRUNCATE)")
        .map_err(|e| e.to_string())
}

/// Delete paths (leaves: nothing refers to them) from disk and DB.
fn remove_paths(root: &Path, which: &[StorePath]) -> Res<()> {
    let lay = layout(root);
    let store = lay.real_store_dir();
    let _lock =
        db::BigLock::acquire(&lay.big_lock_file(), lay.flavor, true).map_err(|e| e.to_string())?;
    let mut conn = db::open_or_create(&lay).map_err(|e| e.to_string())?;
    let file = lay.db_file();
    let e = |e: rusqlite::Error| format!("{}: {e}", file.display());
    let tx = conn.transaction().map_err(e)?;
    for p in which {
        let full = format!("/gnu/store/{}", p.base_name());
        tx.execute(
            "delete from Refs where referrer = (select id from ValidPaths where path = ?1)",
            [&full],
        )
        .map_err(e)?;
        tx.execute("delete from ValidPaths where path = ?1", [&full])
            .map_err(e)?;
    }
    tx.commit().map_err(e)?;
    drop(conn);
    which.par_iter().try_for_each(|p| -> Res<()> {
        let top = store.join(p.base_name());
        let meta = fs::symlink_metadata(&top).map_err(io(&top))?;
        if meta.is_dir() {
            fs::remove_dir_all(&top).map_err(io(&top))
        } else {
            fs::remove_file(&top).map_err(io(&top))
        }
    })
}

fn read_state(dir: &Path) -> Option<State> {
    let text = fs::read_to_string(dir.join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(dir: &Path, s: State) -> Res<()> {
    let f = dir.join("state.json");
    fs::write(&f, serde_json::to_string(&s).expect("json")).map_err(io(&f))
}

/// Make `dir` hold the store of `paths` paths at `generation` (its root is `dir` itself):
/// reused when it already is, moved in place when it is of the same size at another
/// generation, rebuilt otherwise. Returns what was done, for the log.
pub fn ensure(dir: &Path, paths: usize, generation: u32) -> Res<String> {
    let want = State {
        gen_version: GEN_VERSION,
        paths,
        generation,
    };
    let t0 = std::time::Instant::now();
    match read_state(dir) {
        Some(s) if s == want => return Ok("reused".into()),
        Some(s) if s.gen_version == GEN_VERSION && s.paths == paths => {
            // Forwards or backwards in one step: the leaves whose version differs.
            let (old, new): (Vec<StorePath>, Vec<(usize, u32)>) = (first_leaf(paths)..paths)
                .filter_map(|i| {
                    let (a, b) = (
                        version(paths, i, s.generation),
                        version(paths, i, generation),
                    );
                    (a != b).then(|| (store_path(i, a), (i, b)))
                })
                .unzip();
            remove_paths(dir, &old)?;
            add_paths(dir, paths, &new)?;
            write_state(dir, want)?;
            return Ok(format!(
                "moved from generation {} in {:.1?}",
                s.generation,
                t0.elapsed()
            ));
        }
        _ => {}
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    fs::create_dir_all(layout(dir).real_store_dir()).map_err(io(dir))?;
    let which: Vec<(usize, u32)> = (0..paths)
        .map(|i| (i, version(paths, i, generation)))
        .collect();
    add_paths(dir, paths, &which)?;
    write_state(dir, want)?;
    Ok(format!("generated in {:.1?}", t0.elapsed()))
}

/// How many paths generation `g` changes (for the log and the tests).
pub fn changed_in(paths: usize, g: u32) -> usize {
    (first_leaf(paths)..paths)
        .filter(|&i| version(paths, i, g - 1) != version(paths, i, g))
        .count()
}
