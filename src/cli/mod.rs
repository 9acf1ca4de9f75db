//! The command line: clap definitions, progress bars, text and JSON output, exit codes.
//! Everything else lives in the library.

mod demo;
mod ls;
mod progress;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use storesync::cache::location::Location;
use storesync::cache::Cache;
use storesync::error::{Error, Result};
use storesync::restore::{self, RestoreOptions, RestoreReport};
use storesync::save::{self, SaveOptions, SaveReport};
use storesync::store::layout::{Flavor, Layout};
use storesync::verify;

/// Save a Guix or Nix store into a content-addressed cache, and restore only the missing paths,
/// registered in the daemon's database exactly as the daemon would.
#[derive(Parser, Debug)]
#[command(name = "storesync", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  # CI, before guix-daemon starts (cache directory restored by actions/cache):
  sudo storesync restore --cache ~/.cache/storesync
  # after the job (the daemon may still be running):
  sudo storesync save --cache ~/.cache/storesync
  # seed another machine with a profile's closure:
  storesync save --cache /mnt/team-cache $(readlink -f ~/.guix-profile)

Exit codes: 0 success, 1 failure (integrity, I/O), 2 usage, 3 the store is busy.";

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Daemon conventions: store and DB locations, schema, lock kind.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "guix",
        env = "STORESYNC_FLAVOR"
    )]
    pub flavor: Flavor,
    /// Treat DIR as `/`: the store is DIR/gnu/store and the DB DIR/var/guix/db, while paths in
    /// the DB stay /gnu/store/... (a chroot, or an image being prepared).
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Logical store directory [default: /gnu/store or /nix/store; env NIX_STORE_DIR].
    #[arg(long, global = true, value_name = "DIR")]
    pub store_dir: Option<String>,
    /// Logical DB directory [default: /var/guix/db or /nix/var/nix/db; env
    /// GUIX_DATABASE_DIRECTORY, GUIX_STATE_DIRECTORY/db, NIX_STATE_DIR/db].
    #[arg(long, global = true, value_name = "DIR")]
    pub db_dir: Option<String>,
    /// Worker threads [default: number of CPUs]. A restore runs two writer threads per job:
    /// writers often wait for the file system.
    #[arg(long, short = 'j', global = true, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// More detail (list paths).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Snapshot the closure of PATHs (default: every valid path) into the cache.
    Save(SaveArgs),
    /// Restore a snapshot's missing paths into the store and register them.
    Restore(RestoreArgs),
    /// List snapshots, or the paths of one with their sizes.
    Ls(LsArgs),
    /// Read every object of the cache and check every hash.
    Verify(CacheArg),
    /// Write the NAR serialisation of a store path (under --root) to stdout.
    DumpNar {
        /// A store path, e.g. /gnu/store/...-hello-2.12.
        path: String,
    },
    /// Build a sample store in a temporary directory, save it, restore it into an empty root,
    /// verify it, and print what happened.
    Demo {
        /// Keep the temporary directory and print its location.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Args, Debug)]
pub struct CacheArg {
    /// Where the cache lives: a directory (DIR or file://DIR), or s3://BUCKET/PREFIX
    /// (configured from the AWS_* environment; see docs/REMOTE.md).
    #[arg(long, value_name = "LOCATION", env = "STORESYNC_CACHE", value_parser = Location::parse)]
    pub cache: Location,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// Drop paths whose content does not match the DB (and everything referring to them) instead
    /// of failing; they are listed.
    #[arg(long)]
    pub skip_corrupt: bool,
    /// zstd compression level for new contents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Store paths, or links to them (profiles, GC roots), resolved inside --root.
    pub paths: Vec<String>,
}

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
    /// Restore only the closure of these store paths.
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// Show the paths of this snapshot (id or unique prefix).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
}

impl Global {
    pub fn layout(&self) -> Result<Layout> {
        Layout::from_env(
            self.flavor,
            &self.root,
            self.store_dir.as_deref(),
            self.db_dir.as_deref(),
        )
        .map_err(Error::Usage)
    }
}

fn open_cache(arg: &CacheArg, write: bool) -> Result<Cache> {
    Ok(arg.cache.open(write)?)
}

fn print_warnings(cache: &Cache) {
    for w in cache.loaded_warnings() {
        eprintln!("storesync: warning: {w}");
    }
}

fn print_json<T: Serialize>(v: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Run a parsed command; returns the exit code for completed runs with per-path failures.
pub fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    if let Some(n) = g.jobs {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let bars = progress::Bars::new(!(g.no_progress || g.json));
    match &cli.command {
        Command::Save(a) => {
            let layout = g.layout()?;
            let cache = open_cache(&a.cache, true)?;
            let opts = SaveOptions {
                roots: a.paths.clone(),
                skip_corrupt: a.skip_corrupt,
                level: a.level,
            };
            let r = save::save(&layout, &cache, &opts, &bars);
            print_warnings(&cache);
            print_save(g, &r?);
            Ok(0)
        }
        Command::Restore(a) => {
            let layout = g.layout()?;
            let cache = open_cache(&a.cache, false)?;
            if cache.snapshot_ids()?.is_empty() && a.snapshot.is_none() {
                eprintln!(
                    "storesync: the cache {} holds no snapshot yet: nothing to restore",
                    a.cache.cache
                );
                if g.json {
                    print_json(&RestoreReport::default());
                }
                return Ok(0);
            }
            let opts = RestoreOptions {
                snapshot: a.snapshot.clone(),
                roots: a.paths.clone(),
                dry_run: a.dry_run,
                wait: a.wait,
            };
            let r = restore::restore(&layout, &cache, &opts, &bars);
            print_warnings(&cache);
            let r = r?;
            print_restore(g, &r);
            Ok(if r.failed.is_empty() { 0 } else { 1 })
        }
        Command::Ls(a) => {
            let cache = open_cache(&a.cache, false)?;
            ls::run(&cache, a.snapshot.as_deref(), g)?;
            Ok(0)
        }
        Command::Verify(a) => {
            let cache = open_cache(a, false)?;
            let r = verify::verify(&cache, &bars)?;
            if g.json {
                print_json(&r);
            } else {
                for p in &r.problems {
                    println!("problem: {p}");
                }
                for l in &r.leftovers {
                    println!(
                        "leftover (scratch of a killed writer; the next save removes it): {l}"
                    );
                }
                println!(
                    "checked {} packs, {} objects, {} snapshots: {}",
                    r.packs,
                    r.objects,
                    r.snapshots,
                    if r.problems.is_empty() {
                        "all good".to_string()
                    } else {
                        format!("{} problems", r.problems.len())
                    }
                );
            }
            Ok(if r.problems.is_empty() { 0 } else { 1 })
        }
        Command::DumpNar { path } => {
            let layout = g.layout()?;
            let sp = layout
                .store_dir
                .parse(path)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let real = layout.real_store_dir().join(sp.base_name());
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            let mut out = storesync::nar::dump_path(&real, out)?;
            out.flush().map_err(|e| Error::Io("<stdout>".into(), e))?;
            Ok(0)
        }
        Command::Demo { keep } => demo::run(g, *keep, &bars),
    }
}

fn print_save(g: &Global, r: &SaveReport) {
    if g.json {
        return print_json(r);
    }
    if g.verbose > 0 {
        for p in &r.new_path_names {
            println!("saved {p}");
        }
    }
    for (p, why) in &r.corrupt {
        eprintln!("corrupt, skipped: {p}: {why}");
    }
    for p in &r.vanished {
        eprintln!("skipped (deleted by the daemon during the save): {p}");
    }
    for p in &r.dropped_referrers {
        eprintln!("skipped (refers to a corrupt path): {p}");
    }
    println!(
        "snapshot {}{}: {} paths ({}), {} new paths read ({}), {} new objects ({} packed)",
        &r.snapshot[..12.min(r.snapshot.len())],
        if r.unchanged { " (unchanged)" } else { "" },
        r.paths,
        human(r.nar_bytes),
        r.new_paths,
        human(r.bytes_read),
        r.new_objects,
        human(r.packed_bytes)
    );
}

fn print_restore(g: &Global, r: &RestoreReport) {
    if g.json {
        return print_json(r);
    }
    if r.dry_run {
        for p in &r.paths {
            println!("would restore {p}");
        }
        println!(
            "dry run, snapshot {}: {} paths selected, {} already valid, {} to restore ({})",
            &r.snapshot[..12],
            r.selected,
            r.already_valid,
            r.planned,
            human(r.bytes)
        );
        return;
    }
    if g.verbose > 0 {
        for p in &r.paths {
            println!("restored {p}");
        }
    }
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
            "warning: {p} is valid in the DB with another hash than the snapshot's, but missing \
             from disk; left alone (run the daemon's verify/repair)"
        );
    }
    println!(
        "snapshot {}: {} paths selected, {} already valid, {} restored ({} written, {} files linked), {} failed, {} skipped",
        &r.snapshot[..12],
        r.selected,
        r.already_valid,
        r.restored,
        human(r.bytes_written),
        r.linked_files,
        r.failed.len(),
        r.skipped.len()
    );
}
