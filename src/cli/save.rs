//! `storesync save`.

use std::io::{self, Write};

use clap::Args;
use serde::Serialize;
use storesync::cache::SnapshotId;
use storesync::error::Result;
use storesync::progress::Progress;
use storesync::save::{self, SaveOptions, SavePlanSummary, SaveReport};
use storesync::trust;

use super::output::{human, render, short};
use super::{print_warnings, CacheArg, Global};

pub const EXAMPLES: &str = "\
Examples:
  # every valid path (in CI, after the job; the daemon may still run):
  sudo storesync save --cache ~/.cache/storesync
  # the closure of a profile, resolved inside --root:
  storesync save --cache /mnt/team-cache /var/guix/profiles/per-user/alice/guix-profile
  # under a key, as actions/cache names entries (restore finds it by key or prefix):
  storesync save --cache ~/.cache/storesync --key guix-$(guix describe -f channels | sha256sum | cut -c1-16)
  # and keep the cache within a budget (the two newest snapshots of each key, 8 GiB):
  storesync save --cache ~/.cache/storesync --key guix-ci --prune --keep-last 2 --max-size 8GiB
  # what the daemon's garbage collector would keep (profiles, auto roots):
  sudo storesync save --cache ~/.cache/storesync --gc-roots
  # which paths a save would read, writing nothing (not even the cache directory):
  storesync save --cache ~/.cache/storesync --dry-run
  # signed, so that restores given the public key (--trusted-key) accept it:
  storesync save --cache ~/.cache/storesync --sign-key /etc/storesync/ci-key.sec
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
    /// Sign the snapshot with this secret key (key text NAME:BASE64 or, better, the path of
    /// a key file; see `storesync key generate`): writes snapshots/<id>.sig next to it. An
    /// unchanged snapshot is signed too. The save builds only on a snapshot this key signed (the
    /// paths of that one are not read again); with none, every path is read.
    #[arg(
        long,
        value_name = "FILE|KEY",
        env = "STORESYNC_SIGN_KEY",
        hide_env_values = true
    )]
    pub sign_key: Option<String>,
    /// Save the snapshot under this key (as actions/cache's `key`: any text up to 512 bytes,
    /// no control characters), so that `restore --key`/`--restore-key` and `gc` find it.
    #[arg(long, value_name = "KEY", env = "STORESYNC_KEY")]
    pub key: Option<String>,
    /// zstd compression level for new contents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// After saving, collect garbage with the retention rules given (--keep-last,
    /// --keep-within, --max-size; see `storesync gc`), so one command keeps a CI cache within
    /// its budget.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub retention: super::gc::RetentionArgs,
    /// Also save the closure of the daemon's GC roots (Guix: /var/guix/gcroots, Nix:
    /// /nix/var/nix/gcroots, and the profiles they link to), i.e. what `guix gc` would keep.
    #[arg(long)]
    pub gc_roots: bool,
    /// Read and hash every file of the new paths, and check each path's NAR hash against the
    /// DB. Without it, a file hard-linked to a `.links` entry whose name the base snapshot
    /// knows is not read (its contents are in the cache already): such a path's NAR size,
    /// structure and `.links` names are checked instead (restore checks every NAR hash).
    #[arg(long)]
    pub verify_source: bool,
    /// Store paths, or links to them (profiles, GC roots), resolved inside --root.
    pub paths: Vec<String>,
}

pub fn run(g: &Global, a: &SaveArgs, progress: &dyn Progress) -> Result<u8> {
    let layout = g.layout()?;
    super::gc::check_prune(a.prune, &a.retention)?;
    // A bad key fails before anything is read or written.
    let key = a
        .sign_key
        .as_deref()
        .map(trust::load_secret_key)
        .transpose()?;
    // A signed snapshot builds only on one this key signed (see `SaveOptions::base_keys`).
    let mut base_keys = trust::TrustedKeys::new();
    if let Some(k) = &key {
        base_keys.add(k.public());
    }
    let opts = SaveOptions {
        gc_roots: a.gc_roots,
        key: a.key.clone().unwrap_or_default(),
        roots: a.paths.clone(),
        skip_corrupt: a.skip_corrupt,
        level: a.level,
        verify_source: a.verify_source,
        base_keys,
    };
    if a.dry_run {
        let cache = a.cache.open_read_only()?;
        let plan = save::plan(&layout, &cache, &opts);
        print_warnings(&cache);
        let summary = plan?.summary(&layout);
        if summary.missing_packs > 0 {
            super::output::note(missing_packs(summary.missing_packs, summary.reread_paths));
        }
        render(g.format(), &summary, dry_run_text)?;
        return Ok(0);
    }
    let cache = a.cache.open_for_writing()?;
    let r = save::save(&layout, &cache, &opts, progress);
    print_warnings(&cache);
    let r = r?;
    if r.missing_packs > 0 {
        super::output::note(missing_packs(r.missing_packs, r.reread_paths));
    }
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
    // The snapshot is the commit point; its signature follows it (a restore that trusts
    // only signed snapshots passes over it until then).
    let signed_by = match &key {
        Some(k) => {
            let id = SnapshotId::parse(&r.snapshot).expect("a snapshot id");
            cache.add_signature(&id, k.sign_snapshot(&id.0))?;
            Some(k.name().to_owned())
        }
        None => None,
    };
    // The snapshot is saved whatever the collection does: a failed prune is reported with
    // the save (`prune_error`), then as the command's error.
    let (pruned, prune_failure) = if a.prune {
        match storesync::cache::gc::gc(&cache, &a.retention.policy(false), progress) {
            Ok(p) => {
                super::gc::warn_over_budget(&p);
                (Some(p), None)
            }
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let saved = Saved {
        report: &r,
        signed_by,
        pruned,
        prune_error: prune_failure.as_ref().map(|e| error_chain(e)),
        transfer: cache.transfer(),
    };
    render(g.format(), &saved, |out, s| {
        text(out, s, g.verbose > 0)?;
        if let Some(p) = &s.pruned {
            super::gc::text(out, p)?;
        }
        if a.cache.cache.is_remote() {
            super::output::transfer_line(out, "transfer", &s.transfer)?;
        }
        Ok(())
    })?;
    match prune_failure {
        Some(e) => Err(e.into()),
        None => Ok(0),
    }
}

/// The note of a save whose base snapshot's index files name packs the cache lacks.
fn missing_packs(missing: usize, reread: usize) -> String {
    let s = |n: usize| if n == 1 { "" } else { "s" };
    format!(
        "{missing} pack{} named by the base snapshot's index files {} missing from the cache \
         (evicted, expired or deleted); {reread} path{} whose objects were only there read \
         again from the store and their objects written again",
        s(missing),
        if missing == 1 { "is" } else { "are" },
        s(reread)
    )
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cause = c.source();
    }
    s
}

/// `save --json`: the library's report and who signed the snapshot.
#[derive(Serialize)]
struct Saved<'a> {
    #[serde(flatten)]
    report: &'a SaveReport,
    /// The name of the key that signed the snapshot (`--sign-key`).
    signed_by: Option<String>,
    /// What `--prune` collected.
    pruned: Option<storesync::cache::gc::GcReport>,
    /// Why `--prune` failed after the snapshot was saved (the command then exits 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    prune_error: Option<String>,
    /// Bytes, requests and retries of the cache's backend.
    transfer: storesync::cache::storage::TransferFigures,
}

fn text(out: &mut dyn Write, s: &Saved, verbose: bool) -> io::Result<()> {
    let r = s.report;
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
    )?;
    if r.bytes_known > 0 {
        writeln!(
            out,
            "{} of files not read (known to the cache by their .links names); {} paths' NAR \
             hashes not recomputed (--verify-source reads everything)",
            human(r.bytes_known),
            r.unverified_paths
        )?;
    }
    if let Some(name) = &s.signed_by {
        writeln!(out, "signed by `{name}`")?;
    }
    Ok(())
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
