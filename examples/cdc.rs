//! Would content-defined chunking (FastCDC) on top of whole-file blobs pay? A measurement, not
//! part of the shipped binary (issue 14; the result is in docs/BENCHMARKS.md).
//!
//! For pairs of files (old, new) it prints what a cache that already holds the old file adds
//! for the new one:
//!
//! * whole-file blobs (storesync today): nothing when the contents are identical, else the
//!   whole file, zstd level 3 in 4 MiB pieces (as `compress_chunked` does);
//! * FastCDC 2020 chunks (`fastcdc` crate, min = avg / 4, max = avg * 4) for a few average
//!   sizes: the chunks of the new file not among the old file's, concatenated and zstd'd in
//!   frames of 1 MiB (as the packer frames small objects), plus 40 bytes per chunk of the new
//!   file for its chunk list (32-byte id + length) in the tree;
//!
//! each without and with reference placeholders (every `/gnu/store/<32 nix-base32 chars>-`
//! has its hash part replaced by a fixed placeholder before hashing/chunking, which is what
//! the issue's rewriting does for a path's references). It also prints the CPU cost of
//! chunking per GiB next to BLAKE3 and zstd -3 on the same bytes.
//!
//! ```text
//! cargo run --release --example cdc -- [--gen GEN_DIR] [--synthetic MB] [--lib N] [--pair OLD NEW]...
//! ```
//!
//! * `--synthetic MB` (default 50): an MB-MiB "binary" made of the largest ELF files in
//!   /usr/lib (real code and data), with a RUNPATH of store paths at its start; the new file
//!   (a) has other hashes in those paths, (b) also has a version string changed in 5 places;
//! * `--lib N` (default 6): the N largest ELF files of /usr/lib/x86_64-linux-gnu, each with a
//!   RUNPATH in `.dynstr` (as the bench generator writes), against the same with other hashes
//!   in it, and the same plus 8 bytes changed at 3 places; and libLLVM-14 against libLLVM-15
//!   when both are installed (a real new upstream version);
//! * `--gen DIR`: a generation directory of the e2e bench's `upgrade` model
//!   (`/var/tmp/storesync-bench/gen-1024mb-upgrade`): every ELF file of a v2 output path not in
//!   v1, against the file at the same place in v1's output of the same name (summed);
//! * `--pair OLD NEW`: any two files.
//!
//! Memory: one pair's two files at a time (files over 512 MiB are skipped).

#[path = "../benches/e2e/refs.rs"]
#[allow(dead_code)]
mod refs;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

const AVGS: [usize; 4] = [8 << 10, 16 << 10, 64 << 10, 256 << 10];
const MAX_FILE: u64 = 512 << 20;
const PER_CHUNK_META: u64 = 40;
const NIXBASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("cdc: {msg}");
    std::process::exit(1)
}

/// Each `/gnu/store/<hash>-` with its 32-character hash replaced by a placeholder.
fn placeholders(data: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"/gnu/store/";
    let mut out = data.to_vec();
    let mut i = 0;
    while let Some(at) = memfind(&out[i..], PREFIX) {
        let h = i + at + PREFIX.len();
        if h + 33 <= out.len()
            && out[h + 32] == b'-'
            && out[h..h + 32].iter().all(|b| NIXBASE32.contains(b))
        {
            out[h..h + 32].fill(b'_');
        }
        i = h;
    }
    out
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let at = hay[i..].iter().position(|&b| b == first)?;
        i += at;
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// zstd level 3 of `pieces` concatenated, cut into frames of `frame` bytes.
fn framed(pieces: &[&[u8]], frame: usize) -> u64 {
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(frame);
    let mut flush = |buf: &mut Vec<u8>| {
        if !buf.is_empty() {
            total += zstd::bulk::compress(buf, 3).expect("zstd").len() as u64;
            buf.clear();
        }
    };
    for p in pieces {
        for part in p.chunks(frame) {
            if buf.len() + part.len() > frame {
                flush(&mut buf);
            }
            buf.extend_from_slice(part);
        }
    }
    flush(&mut buf);
    total
}

fn chunks(data: &[u8], avg: usize) -> Vec<&[u8]> {
    fastcdc::v2020::FastCDC::new(data, avg / 4, avg, avg * 4)
        .map(|c| &data[c.offset..c.offset + c.length])
        .collect()
}

/// What a cache holding `old` adds for `new`, per scheme: [whole file, CDC for each of AVGS].
#[derive(Default, Clone, Copy)]
struct Added {
    new_bytes: u64,
    whole: u64,
    cdc: [u64; AVGS.len()],
    /// What the old file alone costs (first save), per scheme.
    old_whole: u64,
    old_cdc: [u64; AVGS.len()],
}

impl std::ops::AddAssign for Added {
    fn add_assign(&mut self, o: Added) {
        self.new_bytes += o.new_bytes;
        self.whole += o.whole;
        self.old_whole += o.old_whole;
        for i in 0..AVGS.len() {
            self.cdc[i] += o.cdc[i];
            self.old_cdc[i] += o.old_cdc[i];
        }
    }
}

/// CPU seconds spent, and bytes processed, per kernel.
#[derive(Default)]
struct Cpu {
    bytes: u64,
    /// Bytes of the old files (what zstd was timed on).
    old_bytes: u64,
    chunk: [f64; AVGS.len()],
    blake3: f64,
    zstd: f64,
    /// Finding store paths and writing placeholders over their hashes (this example's naive
    /// scan: an upper bound).
    placeholders: f64,
}

/// CPU time of this thread, in seconds (not wall time: other sessions share the cores).
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn measure(old: &[u8], new: &[u8], cpu: &mut Cpu) -> Added {
    let mut a = Added {
        new_bytes: new.len() as u64,
        ..Added::default()
    };
    let t = cpu_now();
    let same = blake3::hash(old) == blake3::hash(new);
    cpu.blake3 += cpu_now() - t;
    let t = cpu_now();
    a.old_whole = framed(&[old], 4 << 20);
    cpu.zstd += cpu_now() - t;
    a.whole = if same { 0 } else { framed(&[new], 4 << 20) };
    cpu.bytes += (old.len() + new.len()) as u64;
    cpu.old_bytes += old.len() as u64;
    for (k, &avg) in AVGS.iter().enumerate() {
        let t = cpu_now();
        let (co, cn) = (chunks(old, avg), chunks(new, avg));
        cpu.chunk[k] += cpu_now() - t;
        let mut known: HashSet<blake3::Hash> = co.iter().map(|c| blake3::hash(c)).collect();
        let fresh: Vec<&[u8]> = cn
            .iter()
            .copied()
            .filter(|c| known.insert(blake3::hash(c)))
            .collect();
        a.old_cdc[k] = framed(&co, 1 << 20) + PER_CHUNK_META * co.len() as u64;
        a.cdc[k] = framed(&fresh, 1 << 20) + PER_CHUNK_META * cn.len() as u64;
    }
    a
}

/// Both variants of one pair: (without placeholders, with).
fn pair(old: &[u8], new: &[u8], cpu: &mut Cpu) -> (Added, Added) {
    let raw = measure(old, new, cpu);
    let t = cpu_now();
    let (po, pn) = (placeholders(old), placeholders(new));
    cpu.placeholders += cpu_now() - t;
    let ph = measure(&po, &pn, &mut Cpu::default());
    (raw, ph)
}

fn read(p: &Path) -> Option<Vec<u8>> {
    let m = fs::symlink_metadata(p).ok()?;
    (m.is_file() && m.len() <= MAX_FILE)
        .then(|| fs::read(p).ok())
        .flatten()
}

fn is_elf(p: &Path) -> bool {
    let mut head = [0u8; 4];
    fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && head == *b"\x7fELF"
}

/// A deterministic store path (`seed` picks the hash) with `name`.
fn store_path(seed: &str, name: &str) -> String {
    let h = blake3::hash(seed.as_bytes());
    let hash: String = h.as_bytes()[..32]
        .iter()
        .map(|b| NIXBASE32[(*b & 31) as usize] as char)
        .collect();
    format!("/gnu/store/{hash}-{name}")
}

fn runpath(generation: &str) -> String {
    let dirs: Vec<String> = ["self-1.0", "glibc-2.39", "zlib-1.3.1", "gcc-14.2.0-lib"]
        .iter()
        .map(|n| store_path(&format!("{generation}{n}"), n))
        .collect();
    refs::runpath(&dirs)
}

/// `data` with `rp` over the start of its `.dynstr` (or appended), as the generator does.
fn with_runpath(path: &Path, data: &[u8], rp: &str) -> Vec<u8> {
    let mut out = data.to_vec();
    let f = fs::File::open(path).unwrap_or_else(|e| die(format!("{}: {e}", path.display())));
    match refs::dynstr(&f) {
        Ok(Some((off, size))) if rp.len() as u64 + 2 <= size => {
            let at = off as usize + 1;
            out[at..at + rp.len()].copy_from_slice(rp.as_bytes());
            out[at + rp.len()] = 0;
        }
        _ => {
            out.push(0);
            out.extend_from_slice(rp.as_bytes());
            out.push(0);
        }
    }
    out
}

fn poke(data: &mut [u8], at: &[usize], bytes: &[u8]) {
    for &a in at {
        let a = a.min(data.len().saturating_sub(bytes.len()));
        data[a..a + bytes.len()].copy_from_slice(bytes);
    }
}

fn largest_libs(n: usize) -> Vec<PathBuf> {
    let dir = Path::new("/usr/lib/x86_64-linux-gnu");
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = fs::symlink_metadata(e.path()).ok()?;
                    (m.is_file() && m.len() <= MAX_FILE && is_elf(&e.path()))
                        .then(|| (m.len(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v.into_iter().take(n).map(|x| x.1).collect()
}

struct Line {
    what: String,
    raw: Added,
    ph: Added,
}

fn synthetic(mb: usize, cpu: &mut Cpu) -> Vec<Line> {
    let want = mb << 20;
    let mut body = Vec::with_capacity(want);
    for p in largest_libs(64).iter().rev() {
        if body.len() >= want {
            break;
        }
        if let Some(d) = read(p) {
            body.extend_from_slice(&d[..d.len().min(want - body.len())]);
        }
    }
    if body.len() < want {
        die("not enough ELF bytes in /usr/lib/x86_64-linux-gnu for --synthetic");
    }
    let make = |generation: &str, version: &[u8]| {
        let mut d = body.clone();
        let rp = runpath(generation);
        d[64..64 + rp.len()].copy_from_slice(rp.as_bytes());
        let at: Vec<usize> = (1..=5).map(|k| want / 6 * k).collect();
        poke(&mut d, &at, version);
        d
    };
    let old = make("v1", b"1.2.3");
    let paths_only = make("v2", b"1.2.3");
    let both = make("v2", b"1.2.4");
    let (raw, ph) = pair(&old, &paths_only, cpu);
    let (raw2, ph2) = pair(&old, &both, cpu);
    vec![
        Line {
            what: format!("{mb} MiB binary, store paths' hashes changed"),
            raw,
            ph,
        },
        Line {
            what: format!("{mb} MiB binary, hashes + version string changed in 5 places"),
            raw: raw2,
            ph: ph2,
        },
    ]
}

fn libs(n: usize, cpu: &mut Cpu) -> Vec<Line> {
    let mut out = Vec::new();
    let (mut raw_p, mut ph_p) = (Added::default(), Added::default());
    let (mut raw_b, mut ph_b) = (Added::default(), Added::default());
    let libs = largest_libs(n);
    for p in &libs {
        let Some(d) = read(p) else { continue };
        let old = with_runpath(p, &d, &runpath("v1"));
        let paths_only = with_runpath(p, &d, &runpath("v2"));
        let mut both = paths_only.clone();
        let at: Vec<usize> = (1..=3).map(|k| d.len() / 4 * k).collect();
        poke(&mut both, &at, b"STSYv2!\n");
        let (r, h) = pair(&old, &paths_only, cpu);
        raw_p += r;
        ph_p += h;
        let (r, h) = pair(&old, &both, cpu);
        raw_b += r;
        ph_b += h;
    }
    let names: Vec<String> = libs
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    out.push(Line {
        what: format!(
            "{} /usr/lib ELF files ({}), RUNPATH hashes changed",
            libs.len(),
            names.join(", ")
        ),
        raw: raw_p,
        ph: ph_p,
    });
    out.push(Line {
        what: "same, + 8 bytes changed at 3 places".into(),
        raw: raw_b,
        ph: ph_b,
    });
    let (l14, l15) = (
        Path::new("/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"),
        Path::new("/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"),
    );
    if let (Some(a), Some(b)) = (read(l14), read(l15)) {
        let (raw, ph) = pair(&a, &b, cpu);
        out.push(Line {
            what: "libLLVM-14.so.1 -> libLLVM-15.so.1 (a new upstream version)".into(),
            raw,
            ph,
        });
    }
    out
}

/// ELF files of v2's new output paths against v1's files of the same output name and place.
fn gen_pairs(dir: &Path, cpu: &mut Cpu) -> Vec<Line> {
    let (s1, s2) = (dir.join("v1/gnu/store"), dir.join("v2/gnu/store"));
    let list = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap_or_else(|e| die(format!("{}: {e}", d.display())))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let name = |base: &str| {
        base.split_once('-')
            .map(|x| x.1.to_owned())
            .unwrap_or_default()
    };
    let old: std::collections::HashMap<String, String> =
        list(&s1).into_iter().map(|b| (name(&b), b)).collect();
    let (mut raw, mut ph) = (Added::default(), Added::default());
    let (mut files, mut paths) = (0u64, 0u64);
    for base in list(&s2) {
        let Some(old_base) = old.get(&name(&base)).filter(|o| **o != base) else {
            continue;
        };
        let (top2, top1) = (s2.join(&base), s1.join(old_base));
        if !fs::symlink_metadata(&top2).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        paths += 1;
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let Ok(rd) = fs::read_dir(top2.join(&rel)) else {
                continue;
            };
            for e in rd.flatten() {
                let r = rel.join(e.file_name());
                let p2 = top2.join(&r);
                let Ok(m) = fs::symlink_metadata(&p2) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(r);
                } else if m.is_file() && is_elf(&p2) {
                    if let (Some(a), Some(b)) = (read(&top1.join(&r)), read(&p2)) {
                        let (x, y) = pair(&a, &b, cpu);
                        raw += x;
                        ph += y;
                        files += 1;
                    }
                }
            }
        }
    }
    vec![Line {
        what: format!(
            "generator v1 -> v2: {files} ELF files of {paths} rebuilt outputs ({})",
            dir.display()
        ),
        raw,
        ph,
    }]
}

fn table(lines: &[Line]) {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut head = String::from("| pair | new file MiB | placeholders | whole file |");
    let mut rule = String::from("|---|---:|---|---:|");
    for a in AVGS {
        head.push_str(&format!(" CDC {} KiB |", a >> 10));
        rule.push_str("---:|");
    }
    println!("Bytes a cache holding the old file adds for the new one (MiB, zstd -3; in brackets what the old file alone costs):\n");
    println!("{head}\n{rule}");
    for l in lines {
        for (tag, a) in [("no", &l.raw), ("yes", &l.ph)] {
            let mut row = format!(
                "| {} | {:.1} | {tag} | {:.2} ({:.1}) |",
                l.what,
                mib(a.new_bytes),
                mib(a.whole),
                mib(a.old_whole)
            );
            for k in 0..AVGS.len() {
                row.push_str(&format!(
                    " {:.2} ({:.1}) |",
                    mib(a.cdc[k]),
                    mib(a.old_cdc[k])
                ));
            }
            println!("{row}");
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut gen, mut synth, mut nlib, mut pairs) = (None, 50usize, 6usize, Vec::new());
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--gen" => gen = Some(PathBuf::from(val())),
            "--synthetic" => synth = val().parse().unwrap_or_else(|_| die("--synthetic MB")),
            "--lib" => nlib = val().parse().unwrap_or_else(|_| die("--lib N")),
            "--pair" => {
                let old = PathBuf::from(val());
                pairs.push((old, PathBuf::from(val())));
            }
            _ => die(format!(
                "unknown argument {a} (see the doc at the top of examples/cdc.rs)"
            )),
        }
    }
    let mut cpu = Cpu::default();
    let mut lines = Vec::new();
    if synth > 0 {
        lines.extend(synthetic(synth, &mut cpu));
    }
    if nlib > 0 {
        lines.extend(libs(nlib, &mut cpu));
    }
    if let Some(g) = &gen {
        lines.extend(gen_pairs(g, &mut cpu));
    }
    for (a, b) in &pairs {
        let (x, y) = (
            read(a).unwrap_or_else(|| die(format!("{}: unreadable or too large", a.display()))),
            read(b).unwrap_or_else(|| die(format!("{}: unreadable or too large", b.display()))),
        );
        let (raw, ph) = pair(&x, &y, &mut cpu);
        lines.push(Line {
            what: format!("{} -> {}", a.display(), b.display()),
            raw,
            ph,
        });
    }
    table(&lines);
    let gib = cpu.bytes as f64 / (1u64 << 30) as f64;
    println!(
        "\nCPU seconds per GiB (thread CPU time, {:.2} GiB processed): BLAKE3 {:.2} s, placeholder scan {:.2} s, zstd -3 {:.2} s, FastCDC {}",
        gib,
        cpu.blake3 / gib,
        cpu.placeholders / gib,
        cpu.zstd / (cpu.old_bytes as f64 / (1u64 << 30) as f64),
        AVGS.iter()
            .zip(cpu.chunk)
            .map(|(a, t)| format!("{} KiB {:.2} s", a >> 10, t / gib))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
