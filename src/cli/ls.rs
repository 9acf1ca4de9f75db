//! `storesync ls`.

use std::io::{self, Write};

use clap::Args;
use serde::Serialize;
use storesync::error::{Chain, Result};

use super::output::{human, note, render, short, warn};
use super::{CacheArg, Global, TrustArgs};

pub const EXAMPLES: &str = "\
Examples:
  storesync ls --cache ~/.cache/storesync
  # only the snapshots a restore given this key would accept:
  storesync ls --cache ~/.cache/storesync --trusted-key ci-key.pub
  # the paths of one snapshot (any unique prefix of its id), largest last:
  storesync ls --cache ~/.cache/storesync --snapshot 3f2a9c | sort -h

Exit codes: 0 listed, 1 no such snapshot or an unreadable cache, 2 usage.";

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// Show the paths of this snapshot (id or unique prefix).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// One snapshot of the listing.
#[derive(Serialize)]
struct SnapshotLine {
    id: String,
    /// The key it was saved under (empty for none).
    key: String,
    /// Unix seconds.
    created: i64,
    flavor: String,
    store_dir: String,
    paths: u64,
    nar_bytes: u64,
    /// With trusted keys: the key whose signature verified.
    signed_by: Option<String>,
}

/// One path of a snapshot.
#[derive(Serialize)]
struct PathLine {
    path: String,
    nar_size: u64,
    nar_hash: String,
    references: usize,
}

pub fn run(g: &Global, a: &LsArgs) -> Result<u8> {
    let keys = a.trust.keys()?;
    let cache = a.cache.open_listed()?;
    match &a.snapshot {
        None => {
            let mut lines = Vec::new();
            // Heads only: a listing costs one small read per snapshot, whatever its size.
            for r in cache.list_snapshots()? {
                let id = r.id;
                // With trusted keys, nothing of a snapshot is read before its signature passes.
                let signed_by = if keys.is_empty() {
                    None
                } else {
                    match cache.check_signature(&id, &keys) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            note(format_args!("passed over: {}", Chain(&e)));
                            continue;
                        }
                    }
                };
                match cache.read_head(&r) {
                    Ok(h) => lines.push((
                        h.created,
                        SnapshotLine {
                            id: id.hex(),
                            key: h.key.clone(),
                            created: h.created / 1_000_000_000,
                            flavor: h.flavor.name().into(),
                            store_dir: h.store_dir.clone(),
                            paths: h.paths,
                            nar_bytes: h.nar_bytes,
                            signed_by,
                        },
                    )),
                    Err(e) => warn(format_args!("snapshot {id}: {e}")),
                }
            }
            // Oldest first (by the nanosecond timestamps; listed in seconds).
            lines.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
            let lines: Vec<SnapshotLine> = lines.into_iter().map(|(_, l)| l).collect();
            render(g.format(), &lines, snapshots_text)?;
        }
        Some(prefix) => {
            let s = if keys.is_empty() {
                cache.find_snapshot(Some(prefix))?.1
            } else {
                cache.find_signed_snapshot(Some(prefix), &keys)?.snapshot
            };
            let lines: Vec<PathLine> = s
                .paths
                .iter()
                .map(|p| PathLine {
                    path: format!("{}/{}", s.store_dir, p.info.path),
                    nar_size: p.info.nar_size,
                    nar_hash: p.info.nar_hash.to_db(),
                    references: p.info.references.len(),
                })
                .collect();
            render(g.format(), &lines, paths_text)?;
        }
    }
    Ok(0)
}

fn snapshots_text(out: &mut dyn Write, lines: &Vec<SnapshotLine>) -> io::Result<()> {
    for l in lines {
        writeln!(
            out,
            "{}  {}  {:4} {:>6} paths {:>10}  {}",
            short(&l.id),
            l.created,
            l.flavor,
            l.paths,
            human(l.nar_bytes),
            if l.key.is_empty() { "(no key)" } else { &l.key }
        )?;
        if let Some(k) = &l.signed_by {
            writeln!(out, "              signed by trusted key `{k}`")?;
        }
    }
    Ok(())
}

fn paths_text(out: &mut dyn Write, lines: &Vec<PathLine>) -> io::Result<()> {
    for l in lines {
        writeln!(out, "{:>10}  {}", human(l.nar_size), l.path)?;
    }
    Ok(())
}
