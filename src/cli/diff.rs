//! `storesync diff`.

use std::io::{self, Write};

use clap::Args;
use storesync::diff::{self, DiffReport, Side};
use storesync::error::Result;

use super::output::{human, render, short};
use super::{print_warnings, CacheArg, Global};

pub const EXAMPLES: &str = "\
Examples:
  # what the newest snapshot of a key adds to an older snapshot, and what restoring it costs:
  storesync diff --cache ~/.cache/storesync 3f2a9c key:guix-ci
  # what a restore would write into this machine's store (@live is the store at --root):
  storesync diff --cache ~/.cache/storesync @live key:guix-ci
  # what this machine has that the cache's snapshot lacks (what a save would add):
  storesync diff --cache ~/.cache/storesync key:guix-ci @live

Each side is a snapshot id (or unique prefix), key:KEY (the newest snapshot of that key), or
@live. Exit codes: 0 compared, 1 a side cannot be read, 2 usage.";

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// The older side: a snapshot id or prefix, key:KEY, or @live.
    pub from: String,
    /// The newer side [default: @live].
    pub to: Option<String>,
}

pub fn run(g: &Global, a: &DiffArgs) -> Result<u8> {
    let layout = g.layout()?;
    let cache = a.cache.open_read_only();
    let to = Side::parse(a.to.as_deref().unwrap_or("@live"));
    let r = diff::diff(&layout, &cache, &Side::parse(&a.from), &to);
    print_warnings(&cache);
    render(g.format(), &r?, |out, r| text(out, r, g.verbose > 0))?;
    Ok(0)
}

fn text(out: &mut dyn Write, r: &DiffReport, verbose: bool) -> io::Result<()> {
    let name = |s: &str| {
        if s == "live" {
            "live".to_string()
        } else {
            short(s).to_string()
        }
    };
    if verbose {
        for p in &r.added {
            writeln!(out, "+ {p}")?;
        }
        for p in &r.removed {
            writeln!(out, "- {p}")?;
        }
    }
    writeln!(
        out,
        "{} -> {}: {} paths added ({}), {} removed ({}); a restore downloads {}",
        name(&r.from),
        name(&r.to),
        r.added.len(),
        human(r.added_nar_bytes),
        r.removed.len(),
        human(r.removed_nar_bytes),
        human(r.transfer_bytes)
    )
}
