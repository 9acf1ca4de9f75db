//! `storesync verify`.

use std::io::{self, Write};

use clap::Args;
use storesync::error::{Chain, Result};
use storesync::progress::Progress;
use storesync::verify::{self, VerifyReport};

use super::output::render;
use super::{CacheArg, Global, TrustArgs};

pub const EXAMPLES: &str = "\
Examples:
  storesync verify --cache ~/.cache/storesync
  # also list every snapshot that a restore given this key would refuse:
  storesync verify --cache ~/.cache/storesync --trusted-key ci-key.pub
  # problems as JSON, for a CI step that keeps a log:
  storesync --json verify --cache ~/.cache/storesync > verify.json

Exit codes: 0 no problem, 1 problems found (each listed) or an error, 2 usage.";

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub fn run(g: &Global, a: &VerifyArgs, progress: &dyn Progress) -> Result<u8> {
    let keys = a.trust.keys()?;
    let cache = a.cache.open_listed()?;
    let mut r = verify::verify(&cache, progress)?;
    if !keys.is_empty() {
        for id in cache.snapshot_ids()? {
            if let Err(e) = cache.check_signature(&id, &keys) {
                r.problems.push(Chain(&e).to_string());
            }
        }
    }
    render(g.format(), &r, text)?;
    Ok(if r.problems.is_empty() { 0 } else { 1 })
}

fn text(out: &mut dyn Write, r: &VerifyReport) -> io::Result<()> {
    for p in &r.problems {
        writeln!(out, "problem: {p}")?;
    }
    for l in &r.leftovers {
        writeln!(
            out,
            "leftover (scratch of a killed writer; the next save removes it): {l}"
        )?;
    }
    if r.garbage_files > 0 {
        writeln!(
            out,
            "garbage: {} packs no snapshot needs ({}); `storesync gc` frees them",
            r.garbage_files,
            super::output::human(r.garbage_bytes)
        )?;
    }
    writeln!(
        out,
        "checked {} packs, {} objects, {} snapshots: {}",
        r.packs,
        r.objects,
        r.snapshots,
        if r.problems.is_empty() {
            "all good".to_string()
        } else {
            format!("{} problems", r.problems.len())
        }
    )
}
