//! `storesync ls`.

use serde::Serialize;
use storesync::cache::Cache;
use storesync::error::Result;

use super::{human, print_json, Global};

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

#[derive(Serialize)]
struct PathLine {
    path: String,
    nar_size: u64,
    nar_hash: String,
    references: usize,
}

pub fn run(cache: &Cache, snapshot: Option<&str>, g: &Global) -> Result<()> {
    match snapshot {
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
                    Err(e) => eprintln!("warning: snapshot {id}: {e}"),
                }
            }
            if g.json {
                print_json(&lines);
            } else {
                for l in &lines {
                    println!(
                        "{}  {}  {:4} {:>6} paths {:>10}  {}",
                        &l.id[..12],
                        l.created,
                        l.flavor,
                        l.paths,
                        human(l.nar_bytes),
                        if l.roots.is_empty() {
                            "(all valid paths)".to_string()
                        } else {
                            l.roots.join(" ")
                        }
                    );
                }
            }
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
            if g.json {
                print_json(&lines);
            } else {
                for l in &lines {
                    println!("{:>10}  {}", human(l.nar_size), l.path);
                }
            }
        }
    }
    Ok(())
}
