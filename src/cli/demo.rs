//! `storesync demo`: the whole round trip on the embedded sample store.

use storesync::cache::Cache;
use storesync::error::{Error, Result};
use storesync::progress::Progress;
use storesync::restore::{self, RestoreOptions};
use storesync::save::{self, SaveOptions};
use storesync::store::layout::Layout;
use storesync::{db, nar, sample, verify};

use super::{human, Global};

pub fn run(g: &Global, keep: bool, progress: &dyn Progress) -> Result<u8> {
    let tmp = tempfile::Builder::new()
        .prefix("storesync-demo-")
        .tempdir()
        .map_err(|e| Error::Io(std::env::temp_dir(), e))?;
    let dir = tmp.path();
    let source = Layout::new(g.flavor, &dir.join("source"), None, None).map_err(Error::Usage)?;
    let target = Layout::new(g.flavor, &dir.join("target"), None, None).map_err(Error::Usage)?;
    let cache_dir = dir.join("cache");
    println!(
        "storesync demo ({} flavour) in {}",
        g.flavor.name(),
        dir.display()
    );

    let v1 = sample::build(&source, 1)?;
    println!(
        "1. built a sample store: {} paths at {}",
        v1.len(),
        source.real_store_dir().display()
    );
    let cache = Cache::open_dir(&cache_dir)?;
    let opts = SaveOptions {
        key: String::new(),
        roots: vec![],
        skip_corrupt: false,
        level: 3,
    };
    let r = save::save(&source, &cache, &opts, progress)?;
    println!(
        "2. saved snapshot {}: {} paths ({} NAR), {} objects, {} in packs",
        &r.snapshot[..12],
        r.paths,
        human(r.nar_bytes),
        r.new_objects,
        human(r.packed_bytes)
    );
    let r = restore::restore(&target, &cache, &RestoreOptions::default(), progress)?;
    println!(
        "3. restored into an empty root: {} paths restored, {} files hard-linked via .links, {} failed",
        r.restored, r.linked_files, r.failed.len()
    );
    for f in &r.failures {
        println!("   failed: {}: {}", f.path, f.error);
    }
    let source_db = db::read(&source)?;
    let target_db = db::read(&target)?;
    let mut same = 0;
    for p in &source_db.paths {
        let t = target_db.paths.iter().find(|t| t.path == p.path);
        let real = target.real_store_dir().join(p.path.base_name());
        let (h, _) = nar::hash_path(&real)?;
        if t.is_some_and(|t| {
            t.nar_hash == p.nar_hash && t.references == p.references && t.deriver == p.deriver
        }) && h == p.nar_hash
        {
            same += 1;
        }
    }
    println!(
        "4. compared: {same}/{} paths have the same NAR hash, references and deriver",
        source_db.paths.len()
    );

    sample::build(&source, 2)?;
    let r = save::save(&source, &Cache::open_dir(&cache_dir)?, &opts, progress)?;
    println!(
        "5. upgraded the sample (generation 2) and saved again: {} new paths read of {}",
        r.new_paths, r.paths
    );
    let r = restore::restore(
        &target,
        &Cache::open_dir(&cache_dir)?,
        &RestoreOptions::default(),
        progress,
    )?;
    println!(
        "6. incremental restore: {} already valid, {} restored",
        r.already_valid, r.restored
    );
    let v = verify::verify(&Cache::open_dir(&cache_dir)?, progress)?;
    println!(
        "7. verified the cache: {} packs, {} objects, {} snapshots, {} problems",
        v.packs,
        v.objects,
        v.snapshots,
        v.problems.len()
    );
    let ok = same == source_db.paths.len() && r.failed.is_empty() && v.problems.is_empty();
    if keep {
        println!("kept {}", tmp.keep().display());
    }
    println!("{}", if ok { "demo OK" } else { "demo FAILED" });
    Ok(if ok { 0 } else { 1 })
}
