//! The command line: clap definitions, progress bars, text and JSON output, exit codes.
//! Everything else lives in the library. One file per subcommand holds its arguments, its
//! `--help` examples and how its result is printed; [`output`] prints.

mod completions;
mod copy;
mod demo;
mod diff;
mod dump_nar;
mod gc;
mod key;
mod ls;
pub mod output;
mod progress;
mod restore;
mod save;
mod verify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use storesync::cache::location::Location;
use storesync::cache::Cache;
use storesync::error::{Error, Result};
use storesync::store::layout::{Flavor, Layout};
use storesync::trust::TrustedKeys;

use output::Format;

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

/// `--flavor`: the library's [`Flavor`], spelled for the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlavorArg {
    /// GNU Guix: /gnu/store, /var/guix/db, DB schema 7, fcntl big-lock.
    Guix,
    /// Nix: /nix/store, /nix/var/nix/db, DB schema 10, flock big-lock.
    Nix,
}

impl From<FlavorArg> for Flavor {
    fn from(f: FlavorArg) -> Self {
        match f {
            FlavorArg::Guix => Flavor::Guix,
            FlavorArg::Nix => Flavor::Nix,
        }
    }
}

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
    pub flavor: FlavorArg,
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
    /// Print a machine-readable JSON summary on stdout (schemas: docs/CLI.md).
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// More detail (list paths).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The daemon conventions chosen.
    pub fn flavor(&self) -> Flavor {
        self.flavor.into()
    }

    /// The store to work on.
    ///
    /// # Errors
    /// [`Error::Usage`] for a directory that is not absolute.
    pub fn layout(&self) -> Result<Layout> {
        Layout::from_env(
            self.flavor(),
            &self.root,
            self.store_dir.as_deref(),
            self.db_dir.as_deref(),
        )
        .map_err(Error::Usage)
    }

    /// Text or JSON.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Text
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Snapshot the closure of PATHs (default: every valid path) into the cache.
    #[command(after_help = save::EXAMPLES)]
    Save(save::SaveArgs),
    /// Restore a snapshot's missing paths into the store and register them.
    #[command(after_help = restore::EXAMPLES)]
    Restore(restore::RestoreArgs),
    /// List snapshots, or the paths of one with their sizes.
    #[command(after_help = ls::EXAMPLES)]
    Ls(ls::LsArgs),
    /// Read every object of the cache and check every hash.
    #[command(after_help = verify::EXAMPLES)]
    Verify(verify::VerifyArgs),
    /// Write the NAR serialisation of a store path (under --root) to stdout.
    #[command(after_help = dump_nar::EXAMPLES)]
    DumpNar(dump_nar::DumpNarArgs),
    /// Build a sample store in a temporary directory, save it, restore it into an empty root,
    /// verify it, and print what happened.
    #[command(after_help = demo::EXAMPLES)]
    Demo(demo::DemoArgs),
    /// Compare two snapshots, or a snapshot and the live store: paths added and removed,
    /// NAR bytes, and what a restore would download.
    #[command(after_help = diff::EXAMPLES)]
    Diff(diff::DiffArgs),
    /// Drop snapshots a retention policy does not keep, and the data only they need, within
    /// a size budget.
    #[command(after_help = gc::EXAMPLES)]
    Gc(gc::GcArgs),
    /// Copy snapshots from one cache location to another (directory, s3://, gha://),
    /// sending only the objects the target lacks.
    #[command(after_help = copy::EXAMPLES)]
    Copy(copy::CopyArgs),
    /// Make the Ed25519 keys that sign snapshots (`save --sign-key`) and check them
    /// (`restore --trusted-key`).
    #[command(after_help = key::EXAMPLES)]
    Key(key::KeyArgs),
    /// Write shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = completions::COMPLETIONS_EXAMPLES)]
    Completions(completions::CompletionsArgs),
    /// Write the man page (or, with --dir, a page per command).
    #[command(after_help = completions::MAN_EXAMPLES)]
    Man(completions::ManArgs),
}

/// `--cache LOCATION`.
#[derive(Args, Debug)]
pub struct CacheArg {
    /// Where the cache lives: a directory (DIR or file://DIR), s3://BUCKET/PREFIX (configured
    /// from the AWS_* environment), or gha://SCOPE for the GitHub Actions cache (SCOPE
    /// prefixes its entry keys, default `storesync`); see docs/REMOTE.md.
    #[arg(long, value_name = "LOCATION", env = "STORESYNC_CACHE", value_parser = Location::parse)]
    pub cache: Location,
}

/// `--trusted-key`, for the commands that choose or read snapshots.
#[derive(Args, Debug)]
pub struct TrustArgs {
    /// Use only snapshots signed by this public key: key text NAME:BASE64 or the path of a
    /// file holding it (repeatable; also STORESYNC_TRUSTED_KEYS, keys or files separated by
    /// commas or spaces). A snapshot's signature is checked before the snapshot is read;
    /// unsigned or wrongly signed snapshots are refused.
    #[arg(long = "trusted-key", value_name = "FILE|KEY")]
    pub trusted_keys: Vec<String>,
}

impl TrustArgs {
    /// The keys of `--trusted-key` and of STORESYNC_TRUSTED_KEYS (none: no checks).
    ///
    /// # Errors
    /// [`Error::Trust`] for a key that cannot be read or parsed, or a variable that is set
    /// but names no key.
    pub fn keys(&self) -> Result<TrustedKeys> {
        let mut keys = TrustedKeys::from_args(&self.trusted_keys)?;
        keys.extend(TrustedKeys::from_env()?);
        Ok(keys)
    }
}

impl CacheArg {
    /// Open the cache for reading only: nothing is created, a missing directory is an empty
    /// cache.
    ///
    /// # Errors
    /// [`Error::Cache`] for a remote cache that cannot be reached as configured.
    pub fn open_read_only(&self) -> Result<Cache> {
        Ok(self.cache.open(false)?)
    }

    /// [`CacheArg::open_read_only`], through a view that lists every snapshot when the
    /// backend cannot list but has such a view configured (the GitHub Actions cache with a
    /// `GITHUB_TOKEN`: its REST API lists the ref's entries). Without one, the backend as is
    /// (on `gha://`, only the newest snapshots a lookup by key finds).
    ///
    /// # Errors
    /// As [`CacheArg::open_read_only`], and a listing view that cannot be made.
    pub fn open_listed(&self) -> Result<Cache> {
        let cache = self.open_read_only()?;
        if cache.storage().can_list() {
            return Ok(cache);
        }
        match cache.storage().listing_view() {
            Some(Ok(view)) => Ok(Cache::open(view)),
            Some(Err(_)) | None => Ok(cache),
        }
    }

    /// Open (creating if needed) the cache for writing.
    ///
    /// # Errors
    /// [`Error::Cache`] when the directory cannot be created or is not a cache directory, or
    /// a remote cache cannot be reached as configured.
    pub fn open_for_writing(&self) -> Result<Cache> {
        Ok(self.cache.open(true)?)
    }
}

/// Warnings the cache collected (damaged index files, snapshots passed over).
fn print_warnings(cache: &Cache) {
    for w in cache.loaded_warnings() {
        output::warn(w);
    }
}

/// Run a parsed command; returns the exit code for completed runs with per-path failures.
///
/// # Errors
/// Whatever ends the command; the caller prints it and exits with [`Error::exit_code`].
pub fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    if let Some(n) = g.jobs {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let bars = progress::Bars::new(!(g.no_progress || g.json));
    match &cli.command {
        Command::Save(a) => save::run(g, a, &bars),
        Command::Restore(a) => restore::run(g, a, &bars),
        Command::Ls(a) => ls::run(g, a),
        Command::Verify(a) => verify::run(g, a, &bars),
        Command::DumpNar(a) => dump_nar::run(g, a),
        Command::Demo(a) => demo::run(g, a, &bars),
        Command::Gc(a) => gc::run(g, a, &bars),
        Command::Diff(a) => diff::run(g, a),
        Command::Key(a) => key::run(g, a),
        Command::Copy(a) => copy::run(g, a, &bars),
        Command::Completions(a) => completions::completions(g, a),
        Command::Man(a) => completions::man(g, a),
    }
}
