//! `storesync gc`, and the retention options `save --prune` shares with it.

use std::io::{self, Write};

use clap::Args;
use storesync::cache::gc::{self, Defragment, GcPolicy, GcReport};
use storesync::error::{Error, Result};
use storesync::progress::Progress;

use super::output::{human, render, short, transfer_line, WithTransfer};
use super::{print_warnings, CacheArg, Global};

pub const EXAMPLES: &str = "\
Examples:
  # keep the two newest snapshots of each key and at most 8 GiB of packs:
  storesync gc --cache ~/.cache/storesync --keep-last 2 --max-size 8GiB
  # everything younger than a week, only among keys starting with guix-:
  storesync gc --cache s3://team-cache/guix --keep-within 7d --key-prefix guix-
  # lay the live data out again for the newest snapshot (by default only when scattered):
  storesync gc --cache ~/.cache/storesync --keep-last 2 --defragment always
  # what would go, and what it would free, changing nothing:
  storesync gc --cache ~/.cache/storesync --keep-last 1 --dry-run
  # on the GitHub Actions cache (a workflow job with `permissions: actions: write`):
  GITHUB_TOKEN=${{ github.token }} storesync gc --cache gha:// --keep-last 2 --max-size 8GiB

The newest snapshot of every key is always kept. Files are deleted only after the grace
period (--grace, default 1h) since a collection retired them, so that saves and restores
running meanwhile keep what they use. On gha:// the entries are listed and deleted through
the REST API (GITHUB_TOKEN with `actions: write`, one deletion a second), only those of the
job's ref (GITHUB_REF; STORESYNC_GHA_REF names another, `*` every ref), and live entries
unused for 5 days are touched so that the 7-day idle eviction does not take them.

Exit codes: 0 collected, 1 an error (nothing is deleted when a snapshot cannot be read), 2 usage.";

/// Retention: which snapshots to keep (for `gc`, and `save --prune`).
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Keep the newest N snapshots of each key.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep every snapshot younger than this (e.g. 7d, 12h, 30m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<u64>,
    /// Then drop the oldest snapshots until the packs fit this size (e.g. 8GiB, 500M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Apply the policy only to snapshots whose key starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub key_prefix: Option<String>,
    /// Delete retired files only this long after a collection retired them.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub grace: u64,
    /// Write the live small objects again, newest snapshot first, so that its restore reads
    /// each frame about once: `auto` when a restore of it would read its frames more than
    /// twice each on average (and 256 times more than once), `always`, or `never`.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = DefragmentArg::Auto)]
    pub defragment: DefragmentArg,
}

/// `--defragment`: the library's [`Defragment`], spelled for the command line.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefragmentArg {
    /// When a restore of the newest snapshot would read its frames more than twice each.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl From<DefragmentArg> for Defragment {
    fn from(d: DefragmentArg) -> Self {
        match d {
            DefragmentArg::Auto => Defragment::Auto,
            DefragmentArg::Always => Defragment::Always,
            DefragmentArg::Never => Defragment::Never,
        }
    }
}

impl RetentionArgs {
    /// The library's policy.
    pub fn policy(&self, dry_run: bool) -> GcPolicy {
        GcPolicy {
            keep_last: self.keep_last,
            keep_within_secs: self.keep_within,
            max_size: self.max_size,
            key_prefix: self.key_prefix.clone(),
            grace_secs: self.grace,
            defragment: self.defragment.into(),
            dry_run,
            ..GcPolicy::default()
        }
    }

    /// Whether any rule is given.
    pub fn any(&self) -> bool {
        self.keep_last.is_some() || self.keep_within.is_some() || self.max_size.is_some()
    }
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Print what would be dropped and freed, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(g: &Global, a: &GcArgs, progress: &dyn Progress) -> Result<u8> {
    let cache = if a.dry_run {
        a.cache.open_read_only()?
    } else {
        a.cache.open_for_writing()?
    };
    let r = gc::gc(&cache, &a.retention.policy(a.dry_run), progress);
    print_warnings(&cache);
    if let Ok(r) = &r {
        warn_over_budget(r);
    }
    let with = WithTransfer {
        report: &r?,
        transfer: cache.transfer(),
    };
    render(g.format(), &with, |out, w| {
        text(out, w.report)?;
        if a.cache.cache.is_remote() {
            transfer_line(out, "transfer", &w.transfer)?;
        }
        Ok(())
    })?;
    Ok(0)
}

/// The text report of a collection (also printed by `save --prune`).
pub fn text(out: &mut dyn Write, r: &GcReport) -> io::Result<()> {
    for (id, key, why) in &r.dropped {
        let verb = if r.dry_run { "would drop" } else { "dropped" };
        writeln!(out, "{verb} snapshot {} `{key}` ({why})", short(id))?;
    }
    writeln!(
        out,
        "{}{} snapshots kept, {} dropped; live data {} of {} in packs; {} packs retired, \
         {} repacked ({} copied); {} files deleted ({} freed), {} waiting for the grace period",
        if r.dry_run { "dry run: " } else { "" },
        r.kept.len(),
        r.dropped.len(),
        human(r.live_bytes),
        human(r.pack_bytes_before),
        r.packs_retired,
        r.packs_repacked,
        human(r.bytes_repacked),
        r.files_deleted,
        human(r.bytes_freed),
        human(r.bytes_pending),
    )?;
    if r.defragmented {
        write!(
            out,
            "{}: a restore of the newest snapshot reads its {} frames {} times",
            if r.dry_run {
                "would defragment"
            } else {
                "defragmented"
            },
            r.newest_frames,
            r.newest_frame_reads,
        )?;
        if !r.dry_run {
            write!(
                out,
                "; {} objects ({}) written again in its order",
                r.objects_reframed,
                human(r.bytes_reframed)
            )?;
        }
        writeln!(out)?;
    }
    if let Some(max) = r.over_budget {
        writeln!(out, "{}", over_budget(r.live_bytes, max))?;
    }
    if r.entries_touched > 0 {
        writeln!(
            out,
            "{} live entries touched (unused for 5 days; the GitHub Actions cache evicts \
             entries unused for 7)",
            r.entries_touched
        )?;
    }
    Ok(())
}

/// What a collection that could not bring the cache within `--max-size` says (in its report,
/// and on stderr through [`warn_over_budget`]).
fn over_budget(live: u64, max: u64) -> String {
    format!(
        "over budget: the snapshots kept whatever the budget (the newest of each key, and \
         those --keep-last or --keep-within keep) hold {} of live data, more than --max-size {}: \
         raise the budget, save under fewer keys (--key-prefix limits a collection to some), or \
         keep fewer",
        human(live),
        human(max)
    )
}

/// A warning on stderr when a collection left the cache over its budget: the report on
/// stdout may be JSON or unread, and a CI log should show it.
pub fn warn_over_budget(r: &GcReport) {
    if let Some(max) = r.over_budget {
        super::output::warn(over_budget(r.live_bytes, max));
    }
}

/// `7d`, `12h`, `30m`, `90s` or plain seconds, into seconds.
pub fn parse_duration(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected a number then s, m, h, d or w"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (s, m, h, d, w)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("`{s}`: too long"))
}

/// `8GiB`, `500M`, `1.5G`, `10000` (bytes): K/M/G/T are powers of 1000 with `B` or alone,
/// of 1024 with `iB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| {
        format!("`{s}`: expected a number then an optional unit (K, M, G, T, KiB, ...)")
    })?;
    let mul: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0f64.powi(4),
        u => return Err(format!("`{s}`: unknown unit `{u}`")),
    };
    let v = n * mul;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(v as u64)
}

/// `save --prune` without a rule is a usage error.
pub fn check_prune(prune: bool, r: &RetentionArgs) -> Result<()> {
    if prune && !r.any() {
        return Err(Error::Usage(
            "--prune needs a rule: --keep-last, --keep-within or --max-size".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert!(parse_duration("3 fortnights").is_err());
        assert_eq!(parse_size("500M"), Ok(500_000_000));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("2 parsecs").is_err());
    }
}
