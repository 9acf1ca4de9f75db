//! Criterion micro-benchmarks of the kernels the end-to-end numbers are made of, for catching
//! regressions: NAR walk (`nar::dump_path`, `nar::hash_path`), hashing (BLAKE3, SHA-256 as
//! the NAR hashers use it), the packer (add + finish into a fresh cache), tree encode/decode,
//! and save/restore of one synthetic store path (walk + pack; unpack + write + verify).
//!
//! `cargo bench --bench kernels` (about two minutes); `cargo bench --bench kernels -- packer`
//! runs a subset. The data is synthetic and deterministic (text-like and binary-like files of
//! mixed sizes), so numbers compare across commits on one machine.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use storesync::cache::{BlobId, Cache, Entry, Node, ObjectKind, Packer};
use storesync::db;
use storesync::nar::{self, FileNarHasher, NarHasher};
use storesync::progress::NoProgress;
use storesync::restore::{self, RestoreOptions};
use storesync::save::{self, SaveOptions};
use storesync::store::layout::{Flavor, Layout};
use storesync::store::path::StorePath;
use storesync::store::PathInfo;

/// xorshift64*: deterministic pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const WORDS: &[&str] = &[
    "static",
    "int",
    "return",
    "struct",
    "const",
    "char",
    "void",
    "the",
    "of",
    "and",
    "if",
    "else",
    "for",
    "while",
    "#include",
    "<stdio.h>",
    "size_t",
    "buffer",
    "length",
    "error",
    "license",
    "GNU",
    "General",
    "Public",
    "free",
    "software",
    "(",
    ")",
    "{",
    "}",
    ";",
    "\n",
];

/// Text-like data (compresses about 4:1).
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        v.extend_from_slice(w.as_bytes());
        v.push(b' ');
    }
    v.truncate(len);
    v
}

/// Binary-like data: runs of zeros, small integers and random bytes, like object code
/// (compresses about 2:1).
fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        let r = rng.next();
        let run = 8 + (r >> 8) as usize % 56;
        match r % 3 {
            0 => v.extend(std::iter::repeat_n(0u8, run)),
            1 => v.extend((0..run).map(|i| (i as u8) & 0x0f)),
            _ => v.extend((0..run).map(|_| rng.next() as u8)),
        }
    }
    v.truncate(len);
    v
}

/// A store-path-like tree: `bin/` (binaries, scripts), `lib/` (libraries, symlinks),
/// `include/`, `share/doc/` (texts), about 9 MiB in 366 files.
fn make_tree(top: &Path) {
    let mut rng = Rng(0x5eed);
    let w = |p: &Path, data: &[u8], exec: bool| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        fs::set_permissions(
            p,
            fs::Permissions::from_mode(if exec { 0o555 } else { 0o444 }),
        )
        .unwrap();
    };
    for i in 0..20 {
        let len = 16_384 + (rng.next() % 200_000) as usize;
        w(
            &top.join(format!("bin/tool{i}")),
            &binary(&mut rng, len),
            true,
        );
        let mut script =
            b"#!/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bash-5.2/bin/sh\n".to_vec();
        script.extend(text(&mut rng, 2_000));
        w(&top.join(format!("bin/script{i}")), &script, true);
    }
    for i in 0..6 {
        let len = 300_000 + (rng.next() % 900_000) as usize;
        let so = format!("libthing{i}.so.1.2.3");
        w(&top.join("lib").join(&so), &binary(&mut rng, len), false);
        std::os::unix::fs::symlink(&so, top.join(format!("lib/libthing{i}.so"))).unwrap();
    }
    for i in 0..120 {
        let len = 500 + (rng.next() % 12_000) as usize;
        w(
            &top.join(format!("include/thing/h{i}.h")),
            &text(&mut rng, len),
            false,
        );
    }
    for i in 0..200 {
        let len = 100 + (rng.next() % 6_000) as usize;
        w(
            &top.join(format!("share/doc/thing/d{i:03}.txt")),
            &text(&mut rng, len),
            false,
        );
    }
    fs::create_dir_all(top.join("share/empty")).unwrap();
    storesync::sample::canonicalise(top).unwrap();
}

const SYNTH: &str = "0123456789abcdfghijklmnpqrsvwxyz-synthetic-1.0";

/// A store with one registered path holding [`make_tree`].
fn make_store(root: &Path) -> Layout {
    let layout = Layout::new(Flavor::Guix, root, None, None).unwrap();
    let store = layout.real_store_dir();
    fs::create_dir_all(&store).unwrap();
    let sp = StorePath::from_base_name(SYNTH).unwrap();
    let top = store.join(sp.base_name());
    make_tree(&top);
    let (nar_hash, nar_size) = nar::hash_path(&top).unwrap();
    let mut conn = db::open_or_create(&layout).unwrap();
    let info = PathInfo {
        path: sp,
        nar_hash,
        nar_size,
        registration_time: 1,
        deriver: None,
        references: Vec::new(),
        nix: None,
    };
    db::register(&mut conn, &layout, &[&info], &[]).unwrap();
    layout
}

fn nar_walk(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("tree");
    make_tree(&top);
    let (_, size) = nar::hash_path(&top).unwrap();
    let mut g = c.benchmark_group("nar");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("dump_path to sink (9 MiB, 366 files)", |b| {
        b.iter(|| nar::dump_path(&top, std::io::sink()).unwrap())
    });
    g.bench_function("hash_path (9 MiB, 366 files)", |b| {
        b.iter(|| nar::hash_path(&top).unwrap())
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut rng = Rng(7);
    let big = binary(&mut rng, 1 << 20);
    let small = text(&mut rng, 4096);
    let mut g = c.benchmark_group("hash");
    for (name, data) in [("1 MiB", &big), ("4 KiB", &small)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("blake3 {name}"), |b| b.iter(|| BlobId::of(data)));
        g.bench_function(format!("blake3 incremental 64 KiB updates {name}"), |b| {
            b.iter(|| {
                let mut h = blake3::Hasher::new();
                for c in data.chunks(65536) {
                    h.update(c);
                }
                h.finalize()
            })
        });
        g.bench_function(format!("sha256 (NarHasher) {name}"), |b| {
            b.iter(|| {
                let mut h = NarHasher::new();
                h.write_all(data).unwrap();
                h.finish()
            })
        });
        g.bench_function(format!("file NAR sha256 (FileNarHasher) {name}"), |b| {
            b.iter(|| {
                let mut h = FileNarHasher::new(false, data.len() as u64);
                h.update(data);
                h.finish()
            })
        });
    }
    g.finish();
}

fn packer(c: &mut Criterion) {
    let mut rng = Rng(11);
    // 1000 small text/binary objects (4-16 KiB) and 4 large ones (1 MiB): about 14 MiB.
    let mut objs: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let len = 4096 + (rng.next() % 12_288) as usize;
            if i % 3 == 0 {
                binary(&mut rng, len)
            } else {
                text(&mut rng, len)
            }
        })
        .collect();
    objs.extend((0..4).map(|_| binary(&mut rng, 1 << 20)));
    let ids: Vec<BlobId> = objs.iter().map(|o| BlobId::of(o)).collect();
    let total: u64 = objs.iter().map(|o| o.len() as u64).sum();
    let mut g = c.benchmark_group("packer");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total));
    for level in [1, 3] {
        g.bench_function(format!("add+finish 1004 objects level {level}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let cache = Cache::open_dir(dir.path()).unwrap();
                    let p = Packer::new(&cache, level);
                    for (id, o) in ids.iter().zip(&objs) {
                        assert!(p.claim(*id));
                        p.add(ObjectKind::Blob, *id, o).unwrap();
                    }
                    p.finish().unwrap();
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn trees(c: &mut Criterion) {
    // A directory of 40 subdirectories of 50 files each, plus symlinks: 2040 entries.
    let mut rng = Rng(13);
    let mut id = || {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        b
    };
    let node = Node::Directory(
        (0..40)
            .map(|d| Entry {
                name: format!("dir{d:02}").into_bytes(),
                node: Node::Directory(
                    (0..51)
                        .map(|f| Entry {
                            name: format!("file-{f:03}.so").into_bytes(),
                            node: if f == 50 {
                                Node::Symlink {
                                    target: b"file-000.so".to_vec(),
                                }
                            } else {
                                Node::Regular {
                                    executable: f % 5 == 0,
                                    size: 1000 + f as u64,
                                    blob: BlobId(id()),
                                    file_nar_hash: id(),
                                }
                            },
                        })
                        .collect(),
                ),
            })
            .collect(),
    );
    let (tid, bytes) = node.encode();
    let mut g = c.benchmark_group("tree");
    g.throughput(Throughput::Elements(2040));
    g.bench_function("encode 2040 entries", |b| b.iter(|| node.encode()));
    g.bench_function("decode+validate 2040 entries", |b| {
        b.iter(|| Node::decode(&tid, &bytes).unwrap())
    });
    g.finish();
}

fn save_restore(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let layout = make_store(&dir.path().join("source"));
    let cache_dir = dir.path().join("cache");
    let opts = SaveOptions {
        gc_roots: false,
        key: String::new(),
        roots: Vec::new(),
        skip_corrupt: false,
        level: 3,
        verify_source: false,
        base_keys: Default::default(),
    };
    let nar_size: u64 = db::read(&layout).unwrap().paths[0].nar_size;
    let mut g = c.benchmark_group("store path");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(nar_size));
    g.bench_function("save into an empty cache (9 MiB, 366 files)", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |d| {
                let cache = Cache::open_dir(d.path()).unwrap();
                save::save(&layout, &cache, &opts, &NoProgress).unwrap();
                d
            },
            BatchSize::PerIteration,
        )
    });
    {
        let cache = Cache::open_dir(&cache_dir).unwrap();
        save::save(&layout, &cache, &opts, &NoProgress).unwrap();
    }
    g.bench_function("restore into an empty root (9 MiB, 366 files)", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |d| {
                let target = Layout::new(Flavor::Guix, d.path(), None, None).unwrap();
                let cache = Cache::open_dir(&cache_dir).unwrap();
                let r = restore::restore(&target, &cache, &RestoreOptions::default(), &NoProgress)
                    .unwrap();
                assert_eq!(r.restored, 1);
                d
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = nar_walk, hashing, packer, trees, save_restore
);
criterion_main!(benches);
