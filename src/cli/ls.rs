//! `storesync ls`.

use std::io::{self, Write};

use clap::Args;
use serde::Serialize;
use storesync::error::Result;

use super::output::{human, render, short, warn};
use super::{CacheArg, Global};

pub const EXAMPLES: &str = "\
Examples:
  storesync ls --cache ~/.cache/storesync
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
}

/// One snapshot of the listing.
#[derive(Serialize)]
struct SnapshotLine {
    id: String,
    created: i64,
    flavor: String,
    store_dir: String,
    paths: usize,
    nar_bytes: u64,
    roots: Vec<String>,
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
    let cache = a.cache.open_read_only();
    match &a.snapshot {
        None => {
            let mut lines = Vec::new();
            for (id, s) in cache.snapshots()? {
                match s {
                    Ok(s) => lines.push(SnapshotLine {
                        id: id.hex(),
                        created: s.created / 1_000_000_000,
                        flavor: s.flavor.name().into(),
                        store_dir: s.store_dir.clone(),
                        paths: s.paths.len(),
                        nar_bytes: s.nar_bytes(),
                        roots: s
                            .roots
                            .iter()
                            .map(|r| format!("{}/{r}", s.store_dir))
                            .collect(),
                    }),
                    Err(e) => warn(format_args!("snapshot {id}: {e}")),
                }
            }
            render(g.format(), &lines, snapshots_text)?;
        }
        Some(prefix) => {
            let (_, s) = cache.find_snapshot(Some(prefix))?;
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
            if l.roots.is_empty() {
                "(all valid paths)".to_string()
            } else {
                l.roots.join(" ")
            }
        )?;
    }
    Ok(())
}

fn paths_text(out: &mut dyn Write, lines: &Vec<PathLine>) -> io::Result<()> {
    for l in lines {
        writeln!(out, "{:>10}  {}", human(l.nar_size), l.path)?;
    }
    Ok(())
}
