//! A small sample store, built from `fixtures/sample/` (embedded in the binary): the DB in the
//! daemon's schema plus store items with files, executables, symlinks, empty files and
//! directories, a file shared by hard link between two items (as the daemon's `.links`
//! deduplication leaves it), references (including a self-reference) and a `.drv` with
//! `DerivationOutputs` rows, and a 320 KiB file (a zstd frame of its own in the cache). `demo` and the tests use it; `generation` 2 simulates an
//! upgrade: `hello` changes, so it and its `.drv` get new paths while the rest stays.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::db;
use crate::error::{Error, Result};
use crate::nar;
use crate::store::layout::Layout;
use crate::store::path::{compress_hash, nixbase32_encode, StorePath};
use crate::store::path_info::{DerivationOutput, PathInfo};

const GREETING: &str = include_str!("../fixtures/sample/greeting.txt");
const HELLO_SH: &str = include_str!("../fixtures/sample/hello.sh");
const README: &str = include_str!("../fixtures/sample/README");
const HEADER: &str = include_str!("../fixtures/sample/sample.h");

/// One file system node of a sample item, at a relative path ("" = the item itself).
enum Spec {
    File(Vec<u8>, bool),
    Link(String),
    Dir,
    HardLink(String),
}

struct Item {
    name: String,
    nodes: Vec<(String, Spec)>,
    refs: Vec<StorePath>,
    self_ref: bool,
    deriver: Option<StorePath>,
}

fn path_for(layout: &Layout, name: &str, fingerprint: &[u8]) -> StorePath {
    let mut h = Sha256::new();
    h.update(b"storesync-sample:");
    h.update(layout.store_dir.as_str().as_bytes());
    h.update(name.as_bytes());
    h.update(fingerprint);
    let hash = nixbase32_encode(&compress_hash(&h.finalize(), 20));
    StorePath::from_base_name(&format!("{hash}-{name}")).expect("sample names are valid")
}

fn fingerprint(item: &Item) -> Vec<u8> {
    let mut v = Vec::new();
    for (rel, spec) in &item.nodes {
        v.extend_from_slice(rel.as_bytes());
        match spec {
            Spec::File(c, x) => {
                v.extend_from_slice(c);
                v.push(*x as u8);
            }
            Spec::Link(t) | Spec::HardLink(t) => v.extend_from_slice(t.as_bytes()),
            Spec::Dir => v.push(b'/'),
        }
    }
    v
}

/// Build the sample store under `layout` (its store dir and DB must not hold these paths yet;
/// paths already valid are skipped). Returns the store paths of this generation, roots last.
///
/// # Errors
/// [`Error::Io`] when writing fails, [`Error::Db`] when registering fails.
pub fn build(layout: &Layout, generation: u32) -> Result<Vec<StorePath>> {
    let store = layout.store_dir.clone();
    let big: Vec<u8> = README.repeat(64).into_bytes(); // > 8 KiB: deduplicated via .links
    let mut items: Vec<(StorePath, Item)> = Vec::new();
    let add = |mut item: Item, items: &mut Vec<(StorePath, Item)>| -> StorePath {
        item.refs.sort();
        let mut fp = fingerprint(&item);
        for r in &item.refs {
            fp.extend_from_slice(r.base_name().as_bytes());
        }
        let p = path_for(layout, &item.name, &fp);
        items.push((p.clone(), item));
        p
    };
    let greeting = add(
        Item {
            name: "greeting.txt".into(),
            nodes: vec![("".into(), Spec::File(GREETING.into(), false))],
            refs: vec![],
            self_ref: false,
            deriver: None,
        },
        &mut items,
    );
    let lib = add(
        Item {
            name: "libsample-1.0".into(),
            nodes: vec![
                ("".into(), Spec::Dir),
                ("include".into(), Spec::Dir),
                ("include/sample.h".into(), Spec::File(HEADER.into(), false)),
                ("lib".into(), Spec::Dir),
                ("lib/libsample.so.1".into(), Spec::File(big.clone(), true)),
                (
                    "lib/libsample.so".into(),
                    Spec::Link("libsample.so.1".into()),
                ),
                ("share".into(), Spec::Dir),
                ("share/doc".into(), Spec::Dir),
                ("share/doc/README".into(), Spec::File(README.into(), false)),
                ("share/doc/empty".into(), Spec::File(Vec::new(), false)),
                ("share/empty-dir".into(), Spec::Dir),
            ],
            refs: vec![],
            self_ref: false,
            deriver: None,
        },
        &mut items,
    );
    let tool = add(
        Item {
            name: "sample-tool".into(),
            nodes: vec![(
                "".into(),
                Spec::File(b"#!/bin/sh\necho tool\n".to_vec(), true),
            )],
            refs: vec![],
            self_ref: false,
            deriver: None,
        },
        &mut items,
    );
    // 320 KiB of poorly compressible bytes: a blob with a zstd frame of its own.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..320 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let data = add(
        Item {
            name: "sample-data".into(),
            nodes: vec![
                ("".into(), Spec::Dir),
                ("data.bin".into(), Spec::File(data, false)),
            ],
            refs: vec![],
            self_ref: false,
            deriver: None,
        },
        &mut items,
    );
    let version = format!("2.{generation}");
    let hello_name = format!("hello-{version}");
    let script = HELLO_SH
        .replace("@lib@", &store.display(&lib))
        .replace("@greeting@", &store.display(&greeting))
        + &format!("echo version {version}, data in {}\n", store.display(&data));
    // The .drv names the output path, so the output's path is chosen first, then the .drv.
    let hello_fp = format!("{script}{generation}");
    let hello = path_for(layout, &hello_name, hello_fp.as_bytes());
    let drv_text = format!(
        "Derive([(\"out\",\"{out}\",\"\",\"\")],[],[\"{lib}\",\"{greeting}\",\"{tool}\"],\"x86_64-linux\",\"{tool}\",[],[(\"out\",\"{out}\")])",
        out = store.display(&hello),
        lib = store.display(&lib),
        greeting = store.display(&greeting),
        tool = store.display(&tool),
    );
    let drv = add(
        Item {
            name: format!("{hello_name}.drv"),
            nodes: vec![("".into(), Spec::File(drv_text.into_bytes(), false))],
            refs: vec![lib.clone(), greeting.clone(), tool.clone()],
            self_ref: false,
            deriver: None,
        },
        &mut items,
    );
    items.push((
        hello.clone(),
        Item {
            name: hello_name.clone(),
            nodes: vec![
                ("".into(), Spec::Dir),
                ("bin".into(), Spec::Dir),
                ("bin/hello".into(), Spec::File(script.into_bytes(), true)),
                ("bin/hi".into(), Spec::Link("hello".into())),
                ("share".into(), Spec::Dir),
                ("share/hello".into(), Spec::Dir),
                (
                    "share/hello/libsample.copy".into(),
                    Spec::HardLink(format!("{}/lib/libsample.so.1", lib.base_name())),
                ),
                (
                    "share/hello/self".into(),
                    Spec::File(format!("{}\n", store.display(&hello)).into_bytes(), false),
                ),
            ],
            refs: vec![lib.clone(), greeting.clone(), data.clone()],
            self_ref: true,
            deriver: Some(drv.clone()),
        },
    ));

    let real = layout.real_store_dir();
    fs::create_dir_all(&real).map_err(|e| Error::Io(real.clone(), e))?;
    let _lock = db::BigLock::acquire(&layout.big_lock_file(), layout.flavor, true)?;
    let mut conn = db::open_or_create(layout)?;
    let valid = db::valid_paths(&conn, layout)?;
    let mut infos = Vec::new();
    let mut outputs = Vec::new();
    let time = crate::clock::now_secs();
    for (path, item) in &items {
        if valid.contains_key(&store.display(path)) {
            continue;
        }
        let top = real.join(path.base_name());
        for (rel, spec) in &item.nodes {
            let p = if rel.is_empty() {
                top.clone()
            } else {
                top.join(rel)
            };
            let io = |e| Error::Io(p.clone(), e);
            match spec {
                Spec::Dir => fs::create_dir(&p).map_err(io)?,
                Spec::File(c, x) => {
                    fs::write(&p, c).map_err(io)?;
                    fs::set_permissions(
                        &p,
                        fs::Permissions::from_mode(if *x { 0o555 } else { 0o444 }),
                    )
                    .map_err(io)?;
                }
                Spec::Link(t) => std::os::unix::fs::symlink(t, &p).map_err(io)?,
                Spec::HardLink(t) => fs::hard_link(real.join(t), &p).map_err(io)?,
            }
        }
        canonicalise(&top)?;
        let (nar_hash, nar_size) = nar::hash_path(&top)?;
        let mut references = item.refs.clone();
        if item.self_ref {
            references.push(path.clone());
        }
        references.sort();
        infos.push(PathInfo {
            path: path.clone(),
            nar_hash,
            nar_size,
            registration_time: time,
            deriver: item.deriver.as_ref().map(|d| store.display(d)),
            references,
            nix: crate::store::path_info::NixColumns::boxed(
                (layout.flavor == crate::store::layout::Flavor::Nix && item.deriver.is_some())
                    .then_some(1),
                None,
                None,
            ),
        });
        if path == &drv {
            outputs.push(DerivationOutput {
                drv: drv.clone(),
                id: "out".into(),
                path: store.display(&hello),
            });
        }
    }
    let refs: Vec<&PathInfo> = infos.iter().collect();
    let outs: Vec<&DerivationOutput> = outputs.iter().collect();
    // `items` lists every path after the paths it refers to.
    db::register(&mut conn, layout, &refs, &outs)?;
    Ok(items.into_iter().map(|(p, _)| p).collect())
}

/// Give a tree the daemon's canonical metadata: mtime 1, directories and executables 0555,
/// other files 0444.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn canonicalise(path: &Path) -> Result<()> {
    let io = |e| Error::Io(path.to_owned(), e);
    let meta = fs::symlink_metadata(path).map_err(io)?;
    let one = filetime::FileTime::from_unix_time(1, 0);
    if meta.file_type().is_symlink() {
        return filetime::set_symlink_file_times(path, one, one).map_err(io);
    }
    if meta.is_dir() {
        for e in fs::read_dir(path).map_err(io)? {
            canonicalise(&e.map_err(io)?.path())?;
        }
    }
    let mode = if meta.is_dir() || meta.permissions().mode() & 0o100 != 0 {
        0o555
    } else {
        0o444
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)?;
    filetime::set_file_mtime(path, one).map_err(io)
}
