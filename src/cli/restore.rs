//! `storesync restore`.

use std::io::{self, Write};

use clap::Args;
use storesync::error::Result;
use storesync::progress::Progress;
use storesync::restore::{self, RestoreOptions, RestoreReport};

use super::output::{human, note, render, short, transfer_line, WithTransfer};
use super::{print_warnings, CacheArg, Global, TrustArgs};

pub const EXAMPLES: &str = "\
Examples:
  # CI, before guix-daemon starts (an absent or empty cache restores nothing):
  sudo storesync restore --cache ~/.cache/storesync
  # by key, falling back to the newest snapshot of any key with that prefix (actions/cache):
  sudo storesync restore --cache ~/.cache/storesync --key guix-ci-abc123 --restore-key guix-ci-
  # what would be written, changing nothing:
  storesync restore --cache /mnt/team-cache --dry-run
  # only a snapshot signed by the CI key (see `storesync key generate`):
  sudo storesync restore --cache ~/.cache/storesync --trusted-key ci-key.pub
  # only the closure of one path, from a given snapshot, into an image being prepared:
  sudo storesync --root /mnt/image restore --cache /mnt/team-cache --snapshot 3f2a9c \\
      /gnu/store/...-hello-2.12

Exit codes: 0 restored (or nothing to do), 1 some paths failed or refer to a broken path and
were not registered (the rest were) or an error, 2 usage, 3 the store is busy (see --wait).

The daemon may keep running: restore is one more client of it (big-lock shared, temporary GC
roots, the daemon's path locks), waits for a running `guix gc`, and leaves alone what the
daemon builds meanwhile.";

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
    /// Wait while the daemon's big-lock is held exclusively (a schema upgrade) instead of
    /// exiting with code 3.
    #[arg(long)]
    pub wait: bool,
    /// Restore the newest snapshot saved under this key (`save --key`), as actions/cache's
    /// `key`; with no such snapshot, the --restore-key prefixes are tried in order.
    #[arg(
        long,
        value_name = "KEY",
        env = "STORESYNC_KEY",
        conflicts_with = "snapshot"
    )]
    pub key: Option<String>,
    /// A key prefix to fall back to, as actions/cache's `restore-keys` (repeatable, tried in
    /// order; the newest snapshot whose key starts with the first that matches is used).
    #[arg(long, value_name = "PREFIX", requires = "key")]
    pub restore_key: Vec<String>,
    /// Exit 1 when no snapshot matches (a cache miss exits 0 otherwise, restoring nothing).
    #[arg(long)]
    pub fail_on_miss: bool,
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
        if a.fail_on_miss {
            note(format_args!(
                "cache miss: the cache {} holds no snapshot (--fail-on-miss)",
                a.cache.cache
            ));
        } else {
            note(format_args!(
                "the cache {} holds no snapshot yet: nothing to restore",
                a.cache.cache
            ));
        }
        // The empty result either way, as for a miss on a cache holding snapshots: a
        // script reading `--json` gets one on a CI job's first run too.
        if g.json {
            super::output::print_json(&RestoreReport::default())?;
        }
        return Ok(u8::from(a.fail_on_miss));
    }
    let opts = RestoreOptions {
        snapshot: a.snapshot.clone(),
        roots: a.paths.clone(),
        dry_run: a.dry_run,
        wait: a.wait,
        trusted,
        key: a.key.clone(),
        restore_keys: a.restore_key.clone(),
    };
    let r = restore::restore(&layout, &cache, &opts, progress);
    print_warnings(&cache);
    let r = match r {
        Err(storesync::Error::Cache(storesync::cache::CacheError::NoSnapshot(what)))
            if a.key.is_some() =>
        {
            // A cache miss, as actions/cache has them: nothing restored.
            note(format_args!("cache miss: no snapshot matches {what}"));
            if g.json {
                super::output::print_json(&RestoreReport::default())?;
            }
            return Ok(u8::from(a.fail_on_miss));
        }
        r => r?,
    };
    if let Some(k) = &r.matched_key {
        note(format_args!(
            "snapshot {} matched key `{k}`{}",
            short(&r.snapshot),
            if r.exact_match {
                ""
            } else {
                " (a --restore-key prefix)"
            }
        ));
    }
    for p in &r.passed_over {
        note(format_args!("passed over: {p}"));
    }
    if !r.dry_run {
        for f in &r.failures {
            eprintln!("failed: {}: {}", f.path, f.error);
        }
        for p in &r.skipped {
            eprintln!("not registered (refers to a path that failed or is broken): {p}");
        }
        for p in &r.repaired {
            eprintln!("repaired (valid in the DB but missing from disk): {p}");
        }
        for p in &r.became_valid {
            eprintln!("made valid by the daemon meanwhile (left as it is): {p}");
        }
        for p in &r.broken {
            eprintln!(
                "warning: {p} is valid in the DB with another hash than the snapshot's, but \
                 missing from disk; left alone (run the daemon's verify/repair)"
            );
        }
    }
    let with = WithTransfer {
        report: &r,
        transfer: cache.transfer(),
    };
    render(g.format(), &with, |out, w| {
        text(out, w.report, g.verbose > 0)?;
        if a.cache.cache.is_remote() {
            transfer_line(out, "transfer", &w.transfer)?;
        }
        Ok(())
    })?;
    // A path skipped (it refers to a path that failed, or to a broken one: nothing may have
    // failed) is not registered either: the snapshot's paths were not all restored.
    Ok(if r.failed.is_empty() && r.skipped.is_empty() {
        0
    } else {
        1
    })
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
    let local = if r.local_files > 0 {
        format!(
            ", {} files ({}) copied from older builds in the store",
            r.local_files,
            human(r.local_bytes)
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "snapshot {}: {} paths selected, {} already valid, {} restored ({} written, {} files \
         linked{local}), {} failed, {} skipped",
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
