//! `storesync verify`.

use std::io::{self, Write};

use clap::Args;
use storesync::error::Result;
use storesync::progress::Progress;
use storesync::verify::{self, VerifyReport};

use super::output::render;
use super::{CacheArg, Global};

pub const EXAMPLES: &str = "\
Examples:
  storesync verify --cache ~/.cache/storesync
  # problems as JSON, for a CI step that keeps a log:
  storesync --json verify --cache ~/.cache/storesync > verify.json

Exit codes: 0 no problem, 1 problems found (each listed) or an error, 2 usage.";

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub cache: CacheArg,
}

pub fn run(g: &Global, a: &VerifyArgs, progress: &dyn Progress) -> Result<u8> {
    let cache = a.cache.open_read_only();
    let r = verify::verify(&cache, progress)?;
    render(g.format(), &r, text)?;
    Ok(if r.problems.is_empty() { 0 } else { 1 })
}

fn text(out: &mut dyn Write, r: &VerifyReport) -> io::Result<()> {
    for p in &r.problems {
        writeln!(out, "problem: {p}")?;
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
