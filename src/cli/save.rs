//! `storesync save`.

use std::io::{self, Write};

use clap::Args;
use storesync::error::Result;
use storesync::progress::Progress;
use storesync::save::{self, SaveOptions, SavePlanSummary, SaveReport};

use super::output::{human, render, short};
use super::{print_warnings, CacheArg, Global};

pub const EXAMPLES: &str = "\
Examples:
  # every valid path (in CI, after the job; the daemon may still run):
  sudo storesync save --cache ~/.cache/storesync
  # the closure of a profile, resolved inside --root:
  storesync save --cache /mnt/team-cache /var/guix/profiles/per-user/alice/guix-profile
  # which paths a save would read, writing nothing (not even the cache directory):
  storesync save --cache ~/.cache/storesync --dry-run
  # a Nix store, dropping paths whose content does not match the DB:
  storesync --flavor nix save --cache /tmp/c --skip-corrupt

Exit codes: 0 saved (or unchanged), 1 corrupt store or an I/O error, 2 usage.";

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// Drop paths whose content does not match the DB (and everything referring to them) instead
    /// of failing; they are listed.
    #[arg(long)]
    pub skip_corrupt: bool,
    /// Print which paths would be read (those not in the cache yet) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// zstd compression level for new contents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Store paths, or links to them (profiles, GC roots), resolved inside --root.
    pub paths: Vec<String>,
}

pub fn run(g: &Global, a: &SaveArgs, progress: &dyn Progress) -> Result<u8> {
    let layout = g.layout()?;
    let opts = SaveOptions {
        roots: a.paths.clone(),
        skip_corrupt: a.skip_corrupt,
        level: a.level,
    };
    if a.dry_run {
        let cache = a.cache.open_read_only();
        let plan = save::plan(&layout, &cache, &opts);
        print_warnings(&cache);
        let summary = plan?.summary(&layout);
        render(g.format(), &summary, dry_run_text)?;
        return Ok(0);
    }
    let cache = a.cache.open_for_writing()?;
    let r = save::save(&layout, &cache, &opts, progress);
    print_warnings(&cache);
    let r = r?;
    for (p, why) in &r.corrupt {
        eprintln!("corrupt, skipped: {p}: {why}");
    }
    for (p, why) in &r.unreadable {
        eprintln!("unreadable, skipped: {p}: {why}");
    }
    for p in &r.vanished {
        eprintln!("skipped (deleted by the daemon during the save): {p}");
    }
    for p in &r.dropped_referrers {
        eprintln!("skipped (refers to a path not saved): {p}");
    }
    render(g.format(), &r, |out, r| text(out, r, g.verbose > 0))?;
    Ok(0)
}

fn text(out: &mut dyn Write, r: &SaveReport, verbose: bool) -> io::Result<()> {
    if verbose {
        for p in &r.new_path_names {
            writeln!(out, "saved {p}")?;
        }
    }
    writeln!(
        out,
        "snapshot {}{}: {} paths ({}), {} new paths read ({}), {} new objects ({} packed)",
        short(&r.snapshot),
        if r.unchanged { " (unchanged)" } else { "" },
        r.paths,
        human(r.nar_bytes),
        r.new_paths,
        human(r.bytes_read),
        r.new_objects,
        human(r.packed_bytes)
    )
}

fn dry_run_text(out: &mut dyn Write, s: &SavePlanSummary) -> io::Result<()> {
    for p in &s.new_path_names {
        writeln!(out, "would save {p}")?;
    }
    writeln!(
        out,
        "dry run: {} paths selected ({}), {} already cached, {} to read ({}); nothing written",
        s.paths,
        human(s.nar_bytes),
        s.cached_paths,
        s.new_paths,
        human(s.nar_bytes_to_read)
    )
}
