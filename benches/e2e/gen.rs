//! The benchmark's store generator: a Guix-layout store (`<root>/gnu/store`, DB at
//! `<root>/var/guix/db`) built from the Debian packages installed on this machine.
//!
//! * one output path per package: the package's real files (`/var/lib/dpkg/info/<pkg>.list`,
//!   the data of `dpkg -L`) under `<out>/usr/...`, `<out>/etc/...`, plus
//!   `<out>/nix-support/references` naming the output itself and its dependencies; scripts'
//!   `#!` lines are patched to name a dependency's output, as Guix's `patch-shebangs` does;
//! * one source path per package, `<hash>-<name>-<version>.tar.gz`: a gzip'd tarball of the
//!   package's text files (everything but ELF objects and already-compressed data, at most
//!   4 MiB before compression);
//! * one `.drv` per package naming its output, its source and its dependencies' `.drv`s, with
//!   the `DerivationOutputs` row;
//! * references: output → outputs of its `Depends`/`Pre-Depends` (cycles broken), and itself;
//!   `.drv` → source and dependencies' `.drv`s;
//! * paths are input-addressed: an output's hash covers its name, version, source and the
//!   `.drv`s of its dependencies, so a changed package gives new paths to every dependent;
//! * regular files of 8192 bytes or more are deduplicated through `<store>/.links/<nix-base32
//!   of the file's NAR SHA-256>` by hard links, as the daemon's `optimiseStore` does;
//! * metadata canonical (mtime 1, 0444/0555), NAR hashes computed with `storesync::nar`,
//!   registered with `storesync::db::register`.
//!
//! Two models ([`Model`]), each in its own generation directory:
//!
//! * `text` (the original, `gen-<MB>mb/`, unchanged so that old numbers stay comparable): v2
//!   changes one package: new version (`<version>-bench2`), every regular file altered (8 bytes
//!   at the middle), so it and all its dependents get new paths. Dependents' files are copied
//!   again and are identical to v1's except those naming changed paths (references file,
//!   patched `#!` lines). Only text files name store paths; no v3.
//! * `upgrade` (`gen-<MB>mb-upgrade/`): a Guix upgrade of a core input. The same packages and
//!   store paths as `text`'s v1, but every ELF file carries a RUNPATH naming its own output,
//!   the core packages it depends on (directly or not: they are then references too, as
//!   glibc is for every Guix binary) and its direct dependencies (see `refs.rs` for where the
//!   bytes go), and pkg-config files' `prefix=` names the output. v2 rebuilds one core package
//!   with the same name and version (a patch or a graft: only its hash changes, and its files
//!   are altered as in `text`); v3 does the same to a second core package on top of v2. Every
//!   dependent's ELF files, scripts and text files differ from the previous generation's
//!   exactly in the hash parts of the store paths they name.
//!
//! Paths that did not change are hard links of the previous generation's files.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::refs;
use storesync::db;
use storesync::nar::{self, FileNarHasher};
use storesync::sample::canonicalise;
use storesync::store::layout::{Flavor, Layout};
use storesync::store::path::{compress_hash, nixbase32_encode, StorePath};
use storesync::store::path_info::NarHash;
use storesync::store::{DerivationOutput, PathInfo};

/// Bump when the `text` model's output changes, so stale work dirs are rebuilt.
pub const GEN_VERSION: u32 = 1;
/// The same for the `upgrade` model.
pub const UPGRADE_GEN_VERSION: u32 = 1;
const STORE: &str = "/gnu/store";
const REGISTRATION_TIME: i64 = 1_700_000_000;
const SOURCE_INPUT_CAP: u64 = 4 << 20;
const LINKS_MIN: u64 = 8192;

type Res<T> = Result<T, String>;

fn ioerr(p: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File { exec: bool },
    Symlink(PathBuf),
}

#[derive(Debug, Clone)]
struct SrcEntry {
    /// Path on this machine (absolute).
    src: PathBuf,
    /// Path inside the output (relative).
    rel: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct Pkg {
    name: String,
    version: String,
    /// Indices into the chosen list, in Depends order, acyclic.
    deps: Vec<usize>,
    entries: Vec<SrcEntry>,
    bytes: u64,
}

/// Which upgrade the generations model (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Only text files name store paths; v2 bumps a version; no v3.
    Text,
    /// ELF files name store paths; v2 and v3 rebuild core packages under the same name.
    Upgrade,
}

impl Model {
    /// `text` or `upgrade`.
    pub fn parse(s: &str) -> Res<Model> {
        match s {
            "text" => Ok(Model::Text),
            "upgrade" => Ok(Model::Upgrade),
            _ => Err(format!("unknown model {s:?} (text or upgrade)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Model::Text => "text",
            Model::Upgrade => "upgrade",
        }
    }
    /// The generation directory's name for `mb` MiB (the `text` model keeps the old name).
    pub fn dir_name(self, mb: u64) -> String {
        match self {
            Model::Text => format!("gen-{mb}mb"),
            Model::Upgrade => format!("gen-{mb}mb-upgrade"),
        }
    }
    fn gen_version(self) -> u32 {
        match self {
            Model::Text => GEN_VERSION,
            Model::Upgrade => UPGRADE_GEN_VERSION,
        }
    }
}

fn text_model() -> String {
    "text".into()
}

/// What was generated; written to `info.json` in the generation directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenInfo {
    pub gen_version: u32,
    /// `text` or `upgrade` (absent in the `text` model's older `info.json`).
    #[serde(default = "text_model")]
    pub model: String,
    pub budget_mb: u64,
    pub packages: usize,
    pub changed_package: String,
    pub changed_packages: usize,
    pub v1: StoreStats,
    pub v2: StoreStats,
    /// v2 paths not in v1.
    pub v2_new_paths: usize,
    /// NAR bytes of those.
    pub v2_new_nar_bytes: u64,
    /// v3's core package (`upgrade` model only), and its dependents (itself included).
    #[serde(default)]
    pub changed_package3: Option<String>,
    #[serde(default)]
    pub changed_packages3: usize,
    #[serde(default)]
    pub v3: Option<StoreStats>,
    /// v3 paths not in v2, and their NAR bytes.
    #[serde(default)]
    pub v3_new_paths: usize,
    #[serde(default)]
    pub v3_new_nar_bytes: u64,
    /// ELF files of v1 whose RUNPATH went into `.dynstr`, and into the appended region.
    #[serde(default)]
    pub elf_dynstr: u64,
    #[serde(default)]
    pub elf_appended: u64,
    /// ELF files in v2 paths not in v1, and their bytes.
    #[serde(default)]
    pub v2_new_elf_files: u64,
    #[serde(default)]
    pub v2_new_elf_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreStats {
    pub paths: usize,
    pub nar_bytes: u64,
    pub regular_files: u64,
    pub regular_bytes: u64,
    pub symlinks: u64,
    pub dirs: u64,
    /// Distinct inodes among regular files (after `.links` deduplication).
    pub inodes: u64,
    /// Bytes of distinct inodes: what the store occupies.
    pub inode_bytes: u64,
}

pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.starts_with('.') {
        out.remove(0);
    }
    out.truncate(100);
    out
}

fn path_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"storesync-bench:");
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    nixbase32_encode(&compress_hash(&h.finalize(), 20))
}

fn sp(hash: &str, name: &str) -> StorePath {
    StorePath::from_base_name(&format!("{hash}-{name}"))
        .unwrap_or_else(|e| panic!("generated an invalid store path: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Reading dpkg's database and choosing packages.

struct Deb {
    binary: String,
    short: String,
    version: String,
    depends: String,
}

fn read_dpkg() -> Res<Vec<Deb>> {
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${binary:Package}\\t${Package}\\t${Version}\\t${db:Status-Abbrev}\\t${Depends}, ${Pre-Depends}\\n",
        ])
        .output()
        .map_err(|e| format!("dpkg-query: {e} (this generator needs a Debian system)"))?;
    if !out.status.success() {
        return Err(format!(
            "dpkg-query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut debs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5 || !f[3].starts_with("ii") {
            continue;
        }
        debs.push(Deb {
            binary: f[0].to_owned(),
            short: f[1].to_owned(),
            version: f[2].to_owned(),
            depends: f[4].to_owned(),
        });
    }
    debs.sort_by(|a, b| a.binary.cmp(&b.binary));
    Ok(debs)
}

fn provides_of() -> Res<HashMap<String, String>> {
    // virtual name -> first providing binary package (sorted).
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${binary:Package}\\t${db:Status-Abbrev}\\t${Provides}\\n",
        ])
        .output()
        .map_err(|e| format!("dpkg-query: {e}"))?;
    let mut m: HashMap<String, String> = HashMap::new();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 || !f[1].starts_with("ii") {
            continue;
        }
        for p in f[2].split(',') {
            let name = p.split_whitespace().next().unwrap_or("");
            if !name.is_empty() {
                m.entry(name.to_owned()).or_insert_with(|| f[0].to_owned());
            }
        }
    }
    Ok(m)
}

fn list_entries(binary: &str) -> Vec<SrcEntry> {
    let list = format!("/var/lib/dpkg/info/{binary}.list");
    let Ok(text) = fs::read_to_string(&list) else {
        return Vec::new();
    };
    let paths: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('/') && *l != "/." && *l != "/")
        .collect();
    let mut ancestors: HashSet<&str> = HashSet::new();
    for p in &paths {
        let mut s = *p;
        while let Some(i) = s.rfind('/') {
            s = &s[..i];
            if s.is_empty() || !ancestors.insert(s) {
                break;
            }
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in paths {
        if !seen.insert(p) {
            continue;
        }
        let src = PathBuf::from(p);
        let rel = PathBuf::from(&p[1..]);
        if ancestors.contains(p) {
            out.push(SrcEntry {
                src,
                rel,
                kind: Kind::Dir,
            });
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&src) else {
            continue; // excluded by dpkg path-exclude, or removed
        };
        let kind = if meta.file_type().is_symlink() {
            match fs::read_link(&src) {
                Ok(t) if !t.as_os_str().is_empty() => Kind::Symlink(t),
                _ => continue,
            }
        } else if meta.is_file() {
            if fs::File::open(&src).is_err() {
                continue;
            }
            Kind::File {
                exec: meta.permissions().mode() & 0o100 != 0,
            }
        } else if meta.is_dir() {
            Kind::Dir
        } else {
            continue;
        };
        out.push(SrcEntry { src, rel, kind });
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn entry_bytes(entries: &[SrcEntry]) -> u64 {
    entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .filter_map(|e| fs::metadata(&e.src).ok())
        .map(|m| m.len())
        .sum()
}

/// Choose packages: a dependency-closed prefix of a topological order (names sorted), skipping
/// packages larger than `cap` (and their dependents) and stopping at `budget` bytes.
fn choose(budget: u64, cap: u64) -> Res<Vec<Pkg>> {
    let debs = read_dpkg()?;
    let provides = provides_of()?;
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, d) in debs.iter().enumerate() {
        by_name.insert(d.binary.clone(), i);
        by_name.entry(d.short.clone()).or_insert(i);
    }
    let resolve = |name: &str| -> Option<usize> {
        let n = name.split(':').next().unwrap_or(name);
        by_name
            .get(name)
            .or_else(|| by_name.get(n))
            .copied()
            .or_else(|| provides.get(n).and_then(|b| by_name.get(b).copied()))
    };
    let deps: Vec<Vec<usize>> = debs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut v = Vec::new();
            for clause in d.depends.split(',') {
                for alt in clause.split('|') {
                    let name = alt.split_whitespace().next().unwrap_or("");
                    if name.is_empty() {
                        continue;
                    }
                    if let Some(j) = resolve(name) {
                        if j != i && !v.contains(&j) {
                            v.push(j);
                        }
                        break;
                    }
                }
            }
            v
        })
        .collect();
    // DFS topological order, breaking cycles by dropping back edges.
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        New,
        Active,
        Done,
    }
    let mut state = vec![St::New; debs.len()];
    let mut kept: Vec<Vec<usize>> = vec![Vec::new(); debs.len()];
    let mut order = Vec::new();
    for root in 0..debs.len() {
        if state[root] != St::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = St::Active;
        while let Some(&mut (n, ref mut k)) = stack.last_mut() {
            if *k < deps[n].len() {
                let d = deps[n][*k];
                *k += 1;
                match state[d] {
                    St::New => {
                        state[d] = St::Active;
                        kept[n].push(d); // done before `n` is
                        stack.push((d, 0));
                    }
                    St::Done => kept[n].push(d),
                    St::Active => {} // back edge: the cycle is broken here
                }
            } else {
                state[n] = St::Done;
                order.push(n);
                stack.pop();
            }
        }
    }
    let mut chosen_idx: HashMap<usize, usize> = HashMap::new();
    let mut chosen = Vec::new();
    let mut total = 0u64;
    for &n in &order {
        if kept[n].iter().any(|d| !chosen_idx.contains_key(d)) {
            continue;
        }
        let entries = list_entries(&debs[n].binary);
        if entries.is_empty() {
            continue;
        }
        let bytes = entry_bytes(&entries);
        if bytes > cap || total + bytes > budget {
            continue;
        }
        total += bytes;
        chosen_idx.insert(n, chosen.len());
        chosen.push(Pkg {
            name: sanitize(&debs[n].short),
            version: sanitize(&debs[n].version),
            deps: kept[n].iter().map(|d| chosen_idx[d]).collect(),
            entries,
            bytes,
        });
    }
    Ok(chosen)
}

/// Number of packages depending on each package, directly or not (itself included).
fn dependents(pkgs: &[Pkg]) -> Vec<usize> {
    (0..pkgs.len())
        .map(|i| changed_set(pkgs, i).iter().filter(|&&c| c).count())
        .collect()
}

fn changed_set(pkgs: &[Pkg], changed: usize) -> Vec<bool> {
    // Topological order: dependencies come first, so one pass suffices.
    let mut c = vec![false; pkgs.len()];
    c[changed] = true;
    for (i, p) in pkgs.iter().enumerate() {
        if p.deps.iter().any(|&d| c[d]) {
            c[i] = true;
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Naming the paths of one generation.

struct Names {
    src: StorePath,
    out: StorePath,
    drv: StorePath,
    drv_text: String,
}

/// One generation: the model, each package's revision (0: as installed; more: rebuilt that
/// many times) and, for the `upgrade` model, the core packages whose paths every dependent's
/// ELF files name.
struct Plan {
    model: Model,
    rev: Vec<u32>,
    cores: Vec<usize>,
}

fn names(pkgs: &[Pkg], plan: &Plan) -> Vec<Names> {
    let mut v: Vec<Names> = Vec::with_capacity(pkgs.len());
    for (i, p) in pkgs.iter().enumerate() {
        let rev = plan.rev[i];
        let version = if rev > 0 && plan.model == Model::Text {
            format!("{}-bench2", p.version)
        } else {
            p.version.clone()
        };
        let nv = format!("{}-{}", p.name, version);
        let rev_tag = format!("rev{rev}");
        let mut src_parts = vec!["src", &p.name, &version];
        if rev > 0 && plan.model == Model::Upgrade {
            // Same name and version, another source (a patch): another hash.
            src_parts.push(&rev_tag);
        }
        let src = sp(&path_hash(&src_parts), &format!("{nv}.tar.gz"));
        let mut parts: Vec<String> = vec!["out".into(), p.name.clone(), version.clone()];
        parts.push(src.base_name().to_owned());
        for &d in &p.deps {
            parts.push(v[d].drv.base_name().to_owned());
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let out = sp(&path_hash(&refs), &nv);
        let full = |s: &StorePath| format!("{STORE}/{}", s.base_name());
        let inputs: Vec<String> = p
            .deps
            .iter()
            .map(|&d| format!("(\"{}\",[\"out\"])", full(&v[d].drv)))
            .collect();
        let drv_text = format!(
            "Derive([(\"out\",\"{o}\",\"\",\"\")],[{inputs}],[\"{s}\"],\"x86_64-linux\",\"/bin/sh\",[\"-c\",\"unpack && build && install\"],[(\"name\",\"{nv}\"),(\"out\",\"{o}\"),(\"src\",\"{s}\"),(\"system\",\"x86_64-linux\")])",
            o = full(&out),
            s = full(&src),
            inputs = inputs.join(","),
        );
        let drv = sp(&path_hash(&["drv", &drv_text]), &format!("{nv}.drv"));
        v.push(Names {
            src,
            out,
            drv,
            drv_text,
        });
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Writing a generation.

fn mirror(src: &Path, dest: &Path) -> Res<()> {
    let meta = fs::symlink_metadata(src).map_err(ioerr(src))?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src).map_err(ioerr(src))?, dest)
            .map_err(ioerr(dest))
    } else if meta.is_dir() {
        fs::create_dir(dest).map_err(ioerr(dest))?;
        for e in fs::read_dir(src).map_err(ioerr(src))? {
            let e = e.map_err(ioerr(src))?;
            mirror(&e.path(), &dest.join(e.file_name()))?;
        }
        Ok(())
    } else {
        fs::hard_link(src, dest).map_err(ioerr(dest))
    }
}

fn patch_shebang(data: &[u8], interp_dir: &str) -> Option<Vec<u8>> {
    if !data.starts_with(b"#!") {
        return None;
    }
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = std::str::from_utf8(&data[2..end]).ok()?;
    let trimmed = line.trim_start();
    let (interp, rest) = trimmed.split_at(trimmed.find([' ', '\t']).unwrap_or(trimmed.len()));
    if !interp.starts_with('/') {
        return None;
    }
    let base = interp.rsplit('/').next().unwrap_or(interp);
    let mut out = format!("#!{interp_dir}/bin/{base}{rest}").into_bytes();
    out.extend_from_slice(&data[end..]);
    Some(out)
}

/// How the RUNPATHs of one package's ELF files were placed (see `refs.rs`).
#[derive(Debug, Default, Clone, Copy)]
struct Embedded {
    dynstr: u64,
    appended: u64,
    /// Size of those ELF files.
    bytes: u64,
}

/// Write one package's output tree (fresh, from this machine's files). `runpath`: the
/// `upgrade` model's RUNPATH for its ELF files (and its pkg-config files name the output).
fn write_out(
    p: &Pkg,
    nm: &Names,
    dep_outs: &[String],
    top: &Path,
    altered: bool,
    runpath: Option<&str>,
) -> Res<Embedded> {
    fs::create_dir(top).map_err(ioerr(top))?;
    let me = format!("{STORE}/{}", nm.out.base_name());
    let interp_dir = dep_outs.first().cloned().unwrap_or_else(|| me.clone());
    let mut embedded = Embedded::default();
    for e in &p.entries {
        let dest = top.join(&e.rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(ioerr(parent))?;
        }
        match &e.kind {
            Kind::Dir => {
                if !dest.exists() {
                    fs::create_dir(&dest).map_err(ioerr(&dest))?;
                }
            }
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &dest).map_err(ioerr(&dest))?,
            Kind::File { exec } => {
                let mode = if *exec { 0o755 } else { 0o644 };
                let mut patched = None;
                let mut head = [0u8; 4];
                let n = fs::File::open(&e.src)
                    .and_then(|mut f| f.read(&mut head))
                    .map_err(ioerr(&e.src))?;
                if *exec && head[..n].starts_with(b"#!") {
                    let data = fs::read(&e.src).map_err(ioerr(&e.src))?;
                    patched = patch_shebang(&data, &interp_dir);
                } else if runpath.is_some() && e.rel.extension().is_some_and(|x| x == "pc") {
                    let data = fs::read(&e.src).map_err(ioerr(&e.src))?;
                    patched = refs::pkgconfig_with_prefix(&data, &me);
                }
                match patched {
                    Some(data) => fs::write(&dest, data).map_err(ioerr(&dest))?,
                    None => {
                        fs::copy(&e.src, &dest).map_err(ioerr(&e.src))?;
                    }
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(ioerr(&dest))?;
                if let Some(rp) = runpath.filter(|_| head[..n] == *b"\x7fELF") {
                    embedded.bytes += fs::metadata(&dest).map_err(ioerr(&dest))?.len();
                    match refs::embed_runpath(&dest, rp)? {
                        refs::Placed::Dynstr(_) => embedded.dynstr += 1,
                        refs::Placed::Appended => embedded.appended += 1,
                    }
                }
                if altered {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(&dest)
                        .map_err(ioerr(&dest))?;
                    let len = f.metadata().map_err(ioerr(&dest))?.len();
                    let at = if len >= 16 { len / 2 } else { len };
                    f.write_at(b"STSYv2!\n", at).map_err(ioerr(&dest))?;
                }
            }
        }
    }
    let ns = top.join("nix-support");
    fs::create_dir_all(&ns).map_err(ioerr(&ns))?;
    let mut list = format!("{me}\n");
    for d in dep_outs {
        list.push_str(d);
        list.push('\n');
    }
    fs::write(ns.join("references"), list).map_err(ioerr(&ns))?;
    Ok(embedded)
}

fn is_compressed(head: &[u8], name: &Path) -> bool {
    let ext = name.extension().and_then(|e| e.to_str()).unwrap_or("");
    head.starts_with(b"\x7fELF")
        || head.starts_with(b"\x1f\x8b")
        || head.starts_with(b"\xfd7zXZ")
        || head.starts_with(b"BZh")
        || head.starts_with(b"\x28\xb5\x2f\xfd")
        || head.starts_with(b"PK\x03\x04")
        || head.starts_with(b"\x89PNG")
        || matches!(
            ext,
            "gz" | "xz" | "bz2" | "zst" | "jar" | "zip" | "png" | "jpg" | "jpeg" | "gif" | "mo"
        )
}

/// The source tarball: text files of the written output, gzip'd.
fn write_source(out_top: &Path, dest: &Path, tmp: &Path) -> Res<()> {
    let mut list = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = out_top.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(ioerr(&dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names.into_iter().rev() {
            let r = rel.join(&n);
            let p = out_top.join(&r);
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(r);
            } else if m.is_file() && total + m.len() <= SOURCE_INPUT_CAP {
                let mut head = [0u8; 8];
                let n = fs::File::open(&p)
                    .and_then(|mut f| f.read(&mut head))
                    .unwrap_or(0);
                if !is_compressed(&head[..n], &r) {
                    total += m.len();
                    list.push(r);
                }
            }
        }
    }
    if list.is_empty() {
        list.push(PathBuf::from("nix-support/references"));
    }
    let listfile = tmp.join(format!(
        "list-{}",
        dest.file_name().unwrap().to_string_lossy()
    ));
    let mut f = fs::File::create(&listfile).map_err(ioerr(&listfile))?;
    for r in &list {
        f.write_all(r.as_os_str().as_encoded_bytes())
            .and_then(|()| f.write_all(b"\0"))
            .map_err(ioerr(&listfile))?;
    }
    drop(f);
    let status = Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner --format=gnu -C \"$1\" --null -T \"$2\" -cf - | gzip -n -6 > \"$3\"",
            "bash",
        ])
        .arg(out_top)
        .arg(&listfile)
        .arg(dest)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    let _ = fs::remove_file(&listfile);
    if !status.success() {
        return Err(format!("making {} failed", dest.display()));
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(0o444)).map_err(ioerr(dest))
}

/// Deduplicate regular files of 8192 bytes or more under `tops` into `<store>/.links`.
fn dedup(store: &Path, tops: &[PathBuf]) -> Res<()> {
    let links = store.join(".links");
    fs::create_dir_all(&links).map_err(ioerr(&links))?;
    let mut files = Vec::new();
    for t in tops {
        collect_files(t, &mut files)?;
    }
    files.sort();
    let hashed: Vec<(PathBuf, String)> = files
        .par_iter()
        .map(|p| -> Res<(PathBuf, String)> {
            let m = fs::symlink_metadata(p).map_err(ioerr(p))?;
            let exec = m.permissions().mode() & 0o100 != 0;
            let mut h = FileNarHasher::new(exec, m.len());
            let mut f = fs::File::open(p).map_err(ioerr(p))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(ioerr(p))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok((p.clone(), nixbase32_encode(&h.finish())))
        })
        .collect::<Res<_>>()?;
    for (p, h) in hashed {
        let link = links.join(&h);
        match fs::symlink_metadata(&link) {
            Ok(lm) => {
                let pm = fs::symlink_metadata(&p).map_err(ioerr(&p))?;
                if lm.ino() != pm.ino() {
                    fs::remove_file(&p).map_err(ioerr(&p))?;
                    fs::hard_link(&link, &p).map_err(ioerr(&p))?;
                }
            }
            Err(_) => fs::hard_link(&p, &link).map_err(ioerr(&link))?,
        }
    }
    Ok(())
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    let m = fs::symlink_metadata(p).map_err(ioerr(p))?;
    if m.is_dir() {
        for e in fs::read_dir(p).map_err(ioerr(p))? {
            collect_files(&e.map_err(ioerr(p))?.path(), out)?;
        }
    } else if m.is_file() && m.len() >= LINKS_MIN {
        out.push(p.to_owned());
    }
    Ok(())
}

fn stats_of(store: &Path, paths: &[(StorePath, u64)]) -> Res<StoreStats> {
    let mut s = StoreStats {
        paths: paths.len(),
        nar_bytes: paths.iter().map(|p| p.1).sum(),
        ..StoreStats::default()
    };
    let mut inodes = HashSet::new();
    fn walk(p: &Path, s: &mut StoreStats, inodes: &mut HashSet<u64>) -> Res<()> {
        let m = fs::symlink_metadata(p).map_err(ioerr(p))?;
        if m.file_type().is_symlink() {
            s.symlinks += 1;
        } else if m.is_dir() {
            s.dirs += 1;
            for e in fs::read_dir(p).map_err(ioerr(p))? {
                walk(&e.map_err(ioerr(p))?.path(), s, inodes)?;
            }
        } else {
            s.regular_files += 1;
            s.regular_bytes += m.len();
            if inodes.insert(m.ino()) {
                s.inodes += 1;
                s.inode_bytes += m.len();
            }
        }
        Ok(())
    }
    for (p, _) in paths {
        walk(&store.join(p.base_name()), &mut s, &mut inodes)?;
    }
    Ok(s)
}

/// Build the generation `plan` describes at `root`. `donor` is the previous generation's root:
/// paths that did not change are hard-link copies of it. Returns every path with its NAR size,
/// and how the ELF files written fresh had their RUNPATH placed.
fn materialise(
    pkgs: &[Pkg],
    plan: &Plan,
    root: &Path,
    donor: Option<&Path>,
) -> Res<(Vec<(StorePath, u64)>, Embedded)> {
    let layout = Layout::new(Flavor::Guix, root, None, None)?;
    let store = layout.real_store_dir();
    fs::create_dir_all(&store).map_err(ioerr(&store))?;
    let tmp = root.join("tmp-gen");
    fs::create_dir_all(&tmp).map_err(ioerr(&tmp))?;
    let nm = names(pkgs, plan);
    let full = |s: &StorePath| format!("{STORE}/{}", s.base_name());
    // The core packages each package depends on, directly or not (not itself).
    let core_sets: Vec<(usize, Vec<bool>)> = plan
        .cores
        .iter()
        .map(|&c| (c, changed_set(pkgs, c)))
        .collect();
    let cores_of = |i: usize| -> Vec<usize> {
        core_sets
            .iter()
            .filter(|(c, set)| *c != i && set[i])
            .map(|(c, _)| *c)
            .collect()
    };
    let donor_store = donor.map(|d| d.join("gnu/store"));
    let have = |s: &StorePath| {
        donor_store
            .as_ref()
            .is_some_and(|d| d.join(s.base_name()).exists())
    };
    // Outputs, then sources (made from outputs), then .drvs.
    let embedded: Vec<Embedded> = (0..pkgs.len())
        .into_par_iter()
        .map(|i| -> Res<Embedded> {
            let mut embedded = Embedded::default();
            let (p, n) = (&pkgs[i], &nm[i]);
            let out_top = store.join(n.out.base_name());
            if have(&n.out) {
                mirror(
                    &donor_store.as_ref().unwrap().join(n.out.base_name()),
                    &out_top,
                )?;
            } else {
                let dep_outs: Vec<String> = p.deps.iter().map(|&d| full(&nm[d].out)).collect();
                let runpath = (plan.model == Model::Upgrade).then(|| {
                    let mut dirs = vec![full(&n.out)];
                    for d in cores_of(i).into_iter().chain(p.deps.iter().copied()) {
                        let dir = full(&nm[d].out);
                        if !dirs.contains(&dir) {
                            dirs.push(dir);
                        }
                    }
                    refs::runpath(&dirs)
                });
                embedded = write_out(
                    p,
                    n,
                    &dep_outs,
                    &out_top,
                    plan.rev[i] > 0,
                    runpath.as_deref(),
                )?;
            }
            let src_top = store.join(n.src.base_name());
            if have(&n.src) {
                mirror(
                    &donor_store.as_ref().unwrap().join(n.src.base_name()),
                    &src_top,
                )?;
            } else {
                write_source(&out_top, &src_top, &tmp)?;
            }
            let drv_top = store.join(n.drv.base_name());
            if have(&n.drv) {
                mirror(
                    &donor_store.as_ref().unwrap().join(n.drv.base_name()),
                    &drv_top,
                )?;
            } else {
                fs::write(&drv_top, &n.drv_text).map_err(ioerr(&drv_top))?;
            }
            Ok(embedded)
        })
        .collect::<Res<_>>()?;
    let embedded = embedded.iter().fold(Embedded::default(), |a, e| Embedded {
        dynstr: a.dynstr + e.dynstr,
        appended: a.appended + e.appended,
        bytes: a.bytes + e.bytes,
    });
    let _ = fs::remove_dir_all(&tmp);
    // All paths go through .links (mirrored ones get their v2 .links entries too).
    let all_tops: Vec<PathBuf> = nm
        .iter()
        .flat_map(|n| [&n.src, &n.out, &n.drv])
        .map(|s| store.join(s.base_name()))
        .collect();
    dedup(&store, &all_tops)?;
    all_tops
        .par_iter()
        .map(|t| canonicalise(t).map_err(|e| e.to_string()))
        .collect::<Res<()>>()?;
    // NAR hashes and registration, references first.
    let ordered: Vec<(StorePath, Vec<StorePath>, Option<String>)> = nm
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            let mut out_refs: Vec<StorePath> =
                pkgs[i].deps.iter().map(|&d| nm[d].out.clone()).collect();
            out_refs.push(n.out.clone());
            out_refs.extend(cores_of(i).into_iter().map(|c| nm[c].out.clone()));
            let mut drv_refs: Vec<StorePath> =
                pkgs[i].deps.iter().map(|&d| nm[d].drv.clone()).collect();
            drv_refs.push(n.src.clone());
            [
                (n.src.clone(), Vec::new(), None),
                (n.out.clone(), out_refs, Some(full(&n.drv))),
                (n.drv.clone(), drv_refs, None),
            ]
        })
        .collect();
    let hashes: Vec<(NarHash, u64)> = ordered
        .par_iter()
        .map(|(p, _, _)| nar::hash_path(&store.join(p.base_name())).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    let infos: Vec<PathInfo> = ordered
        .iter()
        .zip(&hashes)
        .map(|((p, refs, deriver), (h, size))| {
            let mut references = refs.clone();
            references.sort();
            references.dedup();
            PathInfo {
                path: p.clone(),
                nar_hash: *h,
                nar_size: *size,
                registration_time: REGISTRATION_TIME,
                deriver: deriver.clone(),
                references,
                nix: None,
            }
        })
        .collect();
    let outputs: Vec<DerivationOutput> = nm
        .iter()
        .map(|n| DerivationOutput {
            drv: n.drv.clone(),
            id: "out".into(),
            path: full(&n.out),
        })
        .collect();
    {
        let _lock = db::BigLock::acquire(&layout.big_lock_file(), layout.flavor, true)
            .map_err(|e| e.to_string())?;
        let mut conn = db::open_or_create(&layout).map_err(|e| e.to_string())?;
        let refs: Vec<&PathInfo> = infos.iter().collect();
        let outs: Vec<&DerivationOutput> = outputs.iter().collect();
        db::register(&mut conn, &layout, &refs, &outs).map_err(|e| e.to_string())?;
        conn.execute_batch("pragma wal_checkpoint(TRUNCATE)")
            .map_err(|e| e.to_string())?;
    }
    Ok((
        infos.iter().map(|i| (i.path.clone(), i.nar_size)).collect(),
        embedded,
    ))
}

/// The generated roots (`<dir>/v1`, `v2`, and `v3` for the `upgrade` model) and what they hold.
pub struct Stores {
    pub info: GenInfo,
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub v3: Option<PathBuf>,
}

/// The package whose dependents (itself included) are closest to `share` of the store, other
/// than `not`; ties broken by name.
fn core_package(pkgs: &[Pkg], deps: &[usize], share: f64, not: Option<usize>) -> Option<usize> {
    let want = pkgs.len() as f64 * share;
    (0..pkgs.len())
        .filter(|&i| Some(i) != not)
        .min_by(|&a, &b| {
            let da = (deps[a] as f64 - want).abs();
            let db = (deps[b] as f64 - want).abs();
            da.total_cmp(&db).then(pkgs[a].name.cmp(&pkgs[b].name))
        })
}

fn by_name(pkgs: &[Pkg], name: &str) -> Res<usize> {
    pkgs.iter()
        .position(|p| p.name == sanitize(name))
        .ok_or_else(|| format!("package {name} is not among the chosen packages"))
}

/// Generate (or reuse) the generations of `model` under `dir`. `change`: v2's package (default:
/// the one depended on by about a quarter of the store); `change3`: v3's (`upgrade` only;
/// default: another one, depended on by about a third of the store).
pub fn ensure(
    dir: &Path,
    budget_mb: u64,
    model: Model,
    change: Option<&str>,
    change3: Option<&str>,
) -> Res<Stores> {
    let v1 = dir.join("v1");
    let v2 = dir.join("v2");
    let v3 = (model == Model::Upgrade).then(|| dir.join("v3"));
    let info_file = dir.join("info.json");
    if let Ok(text) = fs::read_to_string(&info_file) {
        if let Ok(info) = serde_json::from_str::<GenInfo>(&text) {
            if info.gen_version == model.gen_version()
                && info.model == model.name()
                && info.budget_mb == budget_mb
                && change.is_none_or(|c| sanitize(c) == info.changed_package)
                && change3.is_none_or(|c| Some(sanitize(c)) == info.changed_package3)
            {
                return Ok(Stores { info, v1, v2, v3 });
            }
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(ioerr(dir))?;
    }
    fs::create_dir_all(dir).map_err(ioerr(dir))?;
    let t0 = std::time::Instant::now();
    let budget = budget_mb << 20;
    let cap = (budget / 10).max(32 << 20);
    let pkgs = choose(budget, cap)?;
    if pkgs.is_empty() {
        return Err("no installed Debian package fits the budget".into());
    }
    let deps = dependents(&pkgs);
    let changed = match change {
        Some(name) => by_name(&pkgs, name)?,
        None => core_package(&pkgs, &deps, 0.25, None).expect("non-empty"),
    };
    let changed3 = match (model, change3) {
        (Model::Text, _) => None,
        (Model::Upgrade, Some(name)) => Some(by_name(&pkgs, name)?),
        (Model::Upgrade, None) => core_package(&pkgs, &deps, 1.0 / 3.0, Some(changed)),
    };
    let total: u64 = pkgs.iter().map(|p| p.bytes).sum();
    eprintln!(
        "generator ({} model): {} packages, {:.0} MiB of files; v2 changes {} ({} dependent packages){}",
        model.name(),
        pkgs.len(),
        total as f64 / 1048576.0,
        pkgs[changed].name,
        deps[changed],
        changed3
            .map(|c| format!("; v3 changes {} ({} dependent packages)", pkgs[c].name, deps[c]))
            .unwrap_or_default()
    );
    let cores: Vec<usize> = match model {
        Model::Text => Vec::new(),
        Model::Upgrade => [Some(changed), changed3].into_iter().flatten().collect(),
    };
    let mut plan = Plan {
        model,
        rev: vec![0; pkgs.len()],
        cores,
    };
    let (p1, e1) = materialise(&pkgs, &plan, &v1, None)?;
    eprintln!("generator: v1 done in {:.0?}", t0.elapsed());
    plan.rev[changed] += 1;
    let (p2, e2) = materialise(&pkgs, &plan, &v2, Some(&v1))?;
    eprintln!("generator: v2 done in {:.0?}", t0.elapsed());
    let new_of = |old: &[(StorePath, u64)], new: &[(StorePath, u64)]| -> (usize, u64) {
        let old: BTreeSet<&StorePath> = old.iter().map(|p| &p.0).collect();
        let fresh = new.iter().filter(|p| !old.contains(&p.0));
        fresh.fold((0, 0), |(n, b), p| (n + 1, b + p.1))
    };
    let (v2_new_paths, v2_new_nar_bytes) = new_of(&p1, &p2);
    let mut info = GenInfo {
        gen_version: model.gen_version(),
        model: model.name().into(),
        budget_mb,
        packages: pkgs.len(),
        changed_package: pkgs[changed].name.clone(),
        changed_packages: deps[changed],
        v1: stats_of(&v1.join("gnu/store"), &p1)?,
        v2: stats_of(&v2.join("gnu/store"), &p2)?,
        v2_new_paths,
        v2_new_nar_bytes,
        elf_dynstr: e1.dynstr,
        elf_appended: e1.appended,
        v2_new_elf_files: e2.dynstr + e2.appended,
        v2_new_elf_bytes: e2.bytes,
        ..GenInfo::default()
    };
    if let (Some(c3), Some(v3)) = (changed3, &v3) {
        plan.rev[c3] += 1;
        let (p3, _) = materialise(&pkgs, &plan, v3, Some(&v2))?;
        eprintln!("generator: v3 done in {:.0?}", t0.elapsed());
        let (n, b) = new_of(&p2, &p3);
        info.changed_package3 = Some(pkgs[c3].name.clone());
        info.changed_packages3 = deps[c3];
        info.v3 = Some(stats_of(&v3.join("gnu/store"), &p3)?);
        info.v3_new_paths = n;
        info.v3_new_nar_bytes = b;
    }
    fs::write(
        &info_file,
        serde_json::to_string_pretty(&info).expect("json"),
    )
    .map_err(ioerr(&info_file))?;
    Ok(Stores { info, v1, v2, v3 })
}
