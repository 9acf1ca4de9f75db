//! `storesync copy`: snapshots from one cache location to another.

use std::io::{self, Write};

use clap::Args;
use storesync::cache::copy::{self, CopyReport, Select};
use storesync::cache::location::Location;
use storesync::error::{Error, Result};
use storesync::progress::Progress;

use serde::Serialize;
use storesync::cache::storage::TransferFigures;

use super::output::{human, render, short, transfer_line, warn};
use super::{print_warnings, Global};

pub const EXAMPLES: &str = "\
Examples:
  # seed a team bucket from a laptop's cache (only what the bucket lacks is sent):
  storesync copy --from ~/.cache/storesync --to s3://team-cache/guix/x86_64-linux
  # pull the newest CI snapshot of a key family onto a local disk:
  storesync copy --from s3://team-cache/guix --to /mnt/cache --key guix-main --restore-key guix-
  # move every snapshot of a directory cache into the GitHub Actions cache:
  storesync copy --from ./cache --to gha://guix --all
  # what would be sent, changing nothing:
  storesync copy --from ./cache --to s3://team-cache/guix --all --dry-run

Objects are sent in a save's order: packs, then one index file, then the snapshot last,
create-only; signatures travel with their snapshot. An interrupted copy run again sends
nothing that landed. Every object read is checked against its id before it is written.

Exit codes: 0 copied (or nothing to do), 1 an error, 2 usage.";

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The cache to copy from (DIR, file://DIR, s3://BUCKET/PREFIX, gha://SCOPE).
    #[arg(long, value_name = "LOCATION", value_parser = Location::parse)]
    pub from: Location,
    /// The cache to copy to (created if it is a directory that does not exist).
    #[arg(long, value_name = "LOCATION", value_parser = Location::parse)]
    pub to: Location,
    /// Copy this snapshot (id or a unique prefix) [default: the newest].
    #[arg(long, value_name = "ID", conflicts_with_all = ["key", "all"])]
    pub snapshot: Option<String>,
    /// Copy the newest snapshot saved under this key; with none, the --restore-key prefixes
    /// are tried in order (as `restore --key`).
    #[arg(long, value_name = "KEY", conflicts_with = "all")]
    pub key: Option<String>,
    /// A key prefix to fall back to (repeatable).
    #[arg(long, value_name = "PREFIX", requires = "key")]
    pub restore_key: Vec<String>,
    /// Copy every snapshot of the source (on gha://, those its key lookups find: the newest).
    #[arg(long)]
    pub all: bool,
    /// Print what would be copied and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(g: &Global, a: &CopyArgs, progress: &dyn Progress) -> Result<u8> {
    if a.from.to_string() == a.to.to_string() {
        return Err(Error::Usage(format!(
            "--from and --to are the same cache ({})",
            a.from
        )));
    }
    let select = match (&a.snapshot, &a.key, a.all) {
        (Some(id), _, _) => Select::Id(id.clone()),
        (None, Some(key), _) => Select::Key {
            key: key.clone(),
            restore_keys: a.restore_key.clone(),
        },
        (None, None, true) => Select::All,
        (None, None, false) => Select::Newest,
    };
    let source = a.from.open(false)?;
    let target = a.to.open(!a.dry_run)?;
    let r = copy::copy(&source, &target, &select, a.dry_run, progress);
    print_warnings(&source);
    print_warnings(&target);
    let r = r?;
    for s in &r.snapshots {
        if let Some(why) = &s.signatures_left {
            warn(format_args!(
                "snapshot {}: signatures not copied: {why}",
                short(&s.id)
            ));
        }
    }
    let copied = Copied {
        report: &r,
        transfer_from: source.transfer(),
        transfer_to: target.transfer(),
    };
    render(g.format(), &copied, |out, c| {
        text(out, c.report)?;
        if a.from.is_remote() {
            transfer_line(out, &format!("transfer from {}", a.from), &c.transfer_from)?;
        }
        if a.to.is_remote() {
            transfer_line(out, &format!("transfer to {}", a.to), &c.transfer_to)?;
        }
        Ok(())
    })?;
    Ok(0)
}

/// `copy --json`: the library's report and the transfer figures of both caches.
#[derive(Serialize)]
struct Copied<'a> {
    #[serde(flatten)]
    report: &'a CopyReport,
    transfer_from: TransferFigures,
    transfer_to: TransferFigures,
}

fn text(out: &mut dyn Write, r: &CopyReport) -> io::Result<()> {
    for s in &r.snapshots {
        let key = if s.key.is_empty() {
            String::new()
        } else {
            format!(" `{}`", s.key)
        };
        let renamed = if s.target_id != s.id {
            format!(" (as {}, v2)", short(&s.target_id))
        } else {
            String::new()
        };
        match s.status {
            "present" => writeln!(out, "snapshot {}{key}: already in the target", short(&s.id))?,
            status => writeln!(
                out,
                "{} snapshot {}{key}{renamed}: {} paths, {} objects ({} already there); \
                 {} in {} frames ({} whole packs){}{}",
                if status == "copied" {
                    "copied"
                } else {
                    "would copy"
                },
                short(&s.id),
                s.paths,
                s.objects,
                s.objects_present,
                human(s.bytes),
                s.frames,
                s.packs_whole,
                if status == "copied" {
                    format!(
                        "; {} packs written ({}), {} already there",
                        s.packs_written,
                        human(s.bytes_written),
                        s.packs_present
                    )
                } else {
                    String::new()
                },
                if s.signatures > 0 {
                    format!("; {} signature(s)", s.signatures)
                } else {
                    String::new()
                },
            )?,
        }
    }
    Ok(())
}
