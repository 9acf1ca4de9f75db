//! `storesync restore`.

use std::io::{self, Write};

use clap::Args;
use storesync::error::Result;
use storesync::progress::Progress;
use storesync::restore::{self, RestoreOptions, RestoreReport};

use super::output::{human, note, render, short};
use super::{print_warnings, CacheArg, Global, TrustArgs};

pub const EXAMPLES: &str = "\
Examples:
  # CI, before guix-daemon starts (an absent or empty cache restores nothing):
  sudo storesync restore --cache ~/.cache/storesync
  # what would be written, changing nothing:
  storesync restore --cache /mnt/team-cache --dry-run
  # only a snapshot signed by the CI key (see `storesync key generate`):
  sudo storesync restore --cache ~/.cache/storesync --trusted-key ci-key.pub
  # only the closure of one path, from a given snapshot, into an image being prepared:
  sudo storesync --root /mnt/image restore --cache /mnt/team-cache --snapshot 3f2a9c \\
      /gnu/store/...-hello-2.12

Exit codes: 0 restored (or nothing to do), 1 some paths failed and were not registered (the
rest were) or an error, 2 usage, 3 the store is busy (see --wait).";

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// Snapshot id (or a unique prefix) [default: the newest].
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Print what would be written and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for the daemon's big-lock instead of exiting with code 3.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Restore only the closure of these store paths.
    pub paths: Vec<String>,
}

pub fn run(g: &Global, a: &RestoreArgs, progress: &dyn Progress) -> Result<u8> {
    let layout = g.layout()?;
    let trusted = a.trust.keys()?;
    let cache = a.cache.open_read_only()?;
    if cache.snapshot_ids()?.is_empty() && a.snapshot.is_none() {
        note(format_args!(
            "the cache {} holds no snapshot yet: nothing to restore",
            a.cache.cache.display()
        ));
        if g.json {
            super::output::print_json(&RestoreReport::default())?;
        }
        return Ok(0);
    }
    let opts = RestoreOptions {
        snapshot: a.snapshot.clone(),
        roots: a.paths.clone(),
        dry_run: a.dry_run,
        wait: a.wait,
        trusted,
    };
    let r = restore::restore(&layout, &cache, &opts, progress);
    print_warnings(&cache);
    let r = r?;
    for p in &r.passed_over {
        note(format_args!("passed over: {p}"));
    }
    if !r.dry_run {
        for f in &r.failures {
            eprintln!("failed: {}: {}", f.path, f.error);
        }
        for p in &r.skipped {
            eprintln!("not registered (refers to a failed path): {p}");
        }
        for p in &r.repaired {
            eprintln!("repaired (valid in the DB but missing from disk): {p}");
        }
        for p in &r.broken {
            eprintln!(
                "warning: {p} is valid in the DB with another hash than the snapshot's, but \
                 missing from disk; left alone (run the daemon's verify/repair)"
            );
        }
    }
    render(g.format(), &r, |out, r| text(out, r, g.verbose > 0))?;
    Ok(if r.failed.is_empty() { 0 } else { 1 })
}

fn text(out: &mut dyn Write, r: &RestoreReport, verbose: bool) -> io::Result<()> {
    if let Some(k) = &r.signed_by {
        writeln!(
            out,
            "snapshot {} is signed by trusted key `{k}`",
            short(&r.snapshot)
        )?;
    }
    if r.dry_run {
        for p in &r.paths {
            writeln!(out, "would restore {p}")?;
        }
        return writeln!(
            out,
            "dry run, snapshot {}: {} paths selected, {} already valid, {} to restore ({})",
            short(&r.snapshot),
            r.selected,
            r.already_valid,
            r.planned,
            human(r.bytes)
        );
    }
    if verbose {
        for p in &r.paths {
            writeln!(out, "restored {p}")?;
        }
    }
    writeln!(
        out,
        "snapshot {}: {} paths selected, {} already valid, {} restored ({} written, {} files \
         linked), {} failed, {} skipped",
        short(&r.snapshot),
        r.selected,
        r.already_valid,
        r.restored,
        human(r.bytes_written),
        r.linked_files,
        r.failed.len(),
        r.skipped.len()
    )
}
