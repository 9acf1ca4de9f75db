//! `storesync demo`: the whole round trip on the embedded sample store.

use storesync::cache::Cache;
use storesync::error::{Error, Result};
use storesync::progress::Progress;
use storesync::restore::{self, RestoreOptions};
use storesync::save::{self, SaveOptions};
use storesync::store::layout::Layout;
use storesync::{db, nar, sample, verify};

use std::io::Write;

use clap::Args;

use super::output::human;
use super::Global;

pub const EXAMPLES: &str = "\
Examples:
  storesync demo
  # the Nix flavour, keeping the stores and the cache to look at:
  storesync --flavor nix demo --keep

Exit codes: 0 the round trip gave identical stores (prints `demo OK`), 1 it did not.";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory and print its location.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(g: &Global, a: &DemoArgs, progress: &dyn Progress) -> Result<u8> {
    let keep = a.keep;
    let mut out = std::io::stdout().lock();
    macro_rules! say {
        ($out:expr, $($t:tt)*) => {
            writeln!($out, $($t)*).map_err(super::output::stdout_err)?
        };
    }
    let flavor = g.flavor();
    let tmp = tempfile::Builder::new()
        .prefix("storesync-demo-")
        .tempdir()
        .map_err(|e| Error::Io(std::env::temp_dir(), e))?;
    let dir = tmp.path();
    let source = Layout::new(flavor, &dir.join("source"), None, None).map_err(Error::Usage)?;
    let target = Layout::new(flavor, &dir.join("target"), None, None).map_err(Error::Usage)?;
    let cache_dir = dir.join("cache");
    say!(
        out,
        "storesync demo ({} flavour) in {}",
        flavor.name(),
        dir.display()
    );

    let v1 = sample::build(&source, 1)?;
    say!(
        out,
        "1. built a sample store: {} paths at {}",
        v1.len(),
        source.real_store_dir().display()
    );
    let cache = Cache::open_dir(&cache_dir)?;
    let opts = SaveOptions {
        gc_roots: false,
        key: String::new(),
        roots: vec![],
        skip_corrupt: false,
        level: 3,
        verify_source: false,
        base_keys: Default::default(),
    };
    let r = save::save(&source, &cache, &opts, progress)?;
    say!(
        out,
        "2. saved snapshot {}: {} paths ({} NAR), {} objects, {} in packs",
        &r.snapshot[..12],
        r.paths,
        human(r.nar_bytes),
        r.new_objects,
        human(r.packed_bytes)
    );
    let r = restore::restore(&target, &cache, &RestoreOptions::default(), progress)?;
    say!(
        out,
        "3. restored into an empty root: {} paths restored, {} files hard-linked via .links, \
         {} failed",
        r.restored,
        r.linked_files,
        r.failed.len()
    );
    for f in &r.failures {
        say!(out, "   failed: {}: {}", f.path, f.error);
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
    say!(
        out,
        "4. compared: {same}/{} paths have the same NAR hash, references and deriver",
        source_db.paths.len()
    );

    sample::build(&source, 2)?;
    let r = save::save(&source, &Cache::open_dir(&cache_dir)?, &opts, progress)?;
    say!(
        out,
        "5. upgraded the sample (generation 2) and saved again: {} new paths read of {}",
        r.new_paths,
        r.paths
    );
    let r = restore::restore(
        &target,
        &Cache::open_dir(&cache_dir)?,
        &RestoreOptions::default(),
        progress,
    )?;
    say!(
        out,
        "6. incremental restore: {} already valid, {} restored",
        r.already_valid,
        r.restored
    );
    let v = verify::verify(&Cache::open_dir(&cache_dir)?, progress)?;
    say!(
        out,
        "7. verified the cache: {} packs, {} objects, {} snapshots, {} problems",
        v.packs,
        v.objects,
        v.snapshots,
        v.problems.len()
    );
    let ok = same == source_db.paths.len() && r.failed.is_empty() && v.problems.is_empty();
    if keep {
        say!(out, "kept {}", tmp.keep().display());
    }
    say!(out, "{}", if ok { "demo OK" } else { "demo FAILED" });
    Ok(if ok { 0 } else { 1 })
}
