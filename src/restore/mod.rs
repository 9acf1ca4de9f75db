//! `restore`: bring a store up to a snapshot, writing only the paths it lacks.
//!
//! 1. [`plan`]: the snapshot's paths (or the closure of the requested ones) that are not valid
//!    in the target DB, references first. Valid paths are never touched.
//! 2. [`execute`], under the daemon's big-lock: each missing path is written in parallel under
//!    a temporary name inside the store directory, with canonical metadata (mtime 1, 0444/0555,
//!    owner of the store directory), computing the NAR SHA-256 of what was written; only a path
//!    whose hash matches the snapshot is renamed into place (an invalid leftover at that name is
//!    moved aside first). Files of 8 KiB or more are shared through `<store>/.links` exactly as
//!    the daemon's deduplication does, so identical contents become hard links of one file.
//! 3. Every verified path whose references are all valid is registered in one SQLite
//!    transaction; a path that failed, and everything referring to it (or to a broken path:
//!    valid, not on disk, of another hash), is removed from disk and not registered.

mod error;
mod execute;
mod extract;
mod live;
mod order;
mod plan;
mod resources;
mod siblings;

pub use error::PathError;
pub(crate) use execute::FRAME_CACHE_BYTES;
pub use live::scratch_kind;
pub use plan::{plan, RestorePlan};

use std::collections::HashMap;

use serde::Serialize;

use crate::cache::{Cache, Snapshot, SnapshotId};
use crate::db::{self, BigLock};
use crate::error::Result;
use crate::progress::Progress;
use crate::store::fs::check_store_dir;
use crate::store::fs::open_store_dir;
use crate::store::layout::Layout;
use crate::trust::TrustedKeys;

/// Options of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Snapshot id or unique prefix; newest when `None`.
    pub snapshot: Option<String>,
    /// Restore only the closure of these paths (full store paths, or paths inside them).
    pub roots: Vec<String>,
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Block while the big-lock is held exclusively (a schema upgrade) instead of failing
    /// with "busy".
    pub wait: bool,
    /// Use only a snapshot signed by one of these keys (checked before the snapshot is
    /// read); none means no signature check.
    pub trusted: TrustedKeys,
    /// Choose by key, as actions/cache does: the newest snapshot saved under this key...
    pub key: Option<String>,
    /// ...else the newest whose key starts with the first of these that matches any.
    pub restore_keys: Vec<String>,
}

/// A path that could not be restored.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The store path.
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a restore did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Snapshot id.
    pub snapshot: String,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// Paths in the selected closure.
    pub selected: usize,
    /// Paths already valid in the target, left untouched.
    pub already_valid: usize,
    /// Paths to write (dry run) or attempted.
    pub planned: usize,
    /// Paths written, verified and registered.
    pub restored: usize,
    /// NAR bytes planned.
    pub bytes: u64,
    /// File bytes written from the cache.
    pub bytes_written: u64,
    /// Files hard-linked to an identical file already in `.links`.
    pub linked_files: u64,
    /// Files copied from an older build of the same package in the store (a valid path with
    /// the same name, whose file at the same place holds the same blob: the same bytes but
    /// for the hash parts of the store paths it names) instead of read from the cache.
    pub local_files: u64,
    /// Their bytes.
    pub local_bytes: u64,
    /// Invalid leftovers at a missing path's name, moved aside and replaced.
    pub replaced_leftovers: usize,
    /// Paths that failed verification or could not be written.
    pub failed: Vec<String>,
    /// Why each failed.
    pub failures: Vec<Failure>,
    /// Paths not registered because something they refer to failed, was refused, or is
    /// broken (valid in the DB but not on disk, with another hash than the snapshot's).
    pub skipped: Vec<String>,
    /// Paths not attempted because the restore stopped at a failure that would fail every
    /// path (a full, read-only or unwritable store; the first such failure is in `failures`).
    pub not_attempted: Vec<String>,
    /// The planned (dry run) or registered paths, references first.
    pub paths: Vec<String>,
    /// Paths the DB called valid but that were missing from disk, written again.
    pub repaired: Vec<String>,
    /// Paths the DB calls valid, missing from disk, with a hash other than the snapshot's.
    pub broken: Vec<String>,
    /// Paths missing when the restore started that the running daemon made valid meanwhile
    /// (built, substituted, imported): left as the daemon made them, not registered again.
    pub became_valid: Vec<String>,
    /// With trusted keys: the name of the key whose signature of the snapshot verified.
    pub signed_by: Option<String>,
    /// With trusted keys: snapshots refused while choosing the newest, one message each.
    pub passed_over: Vec<String>,
    /// Chosen by key: the key of the snapshot restored.
    pub matched_key: Option<String>,
    /// Chosen by key: true when it equals `--key`, false when a `--restore-key` prefix matched.
    pub exact_match: bool,
}

/// Restore threads per `--jobs` (see [`execute`]).
pub const WRITERS_PER_JOB: usize = 2;

/// Choose the snapshot: by prefix or the newest; with trusted keys, only one whose signature
/// passes, checked before anything else of it is read.
fn choose(cache: &Cache, opts: &RestoreOptions) -> Result<Chosen> {
    if let Some(key) = &opts.key {
        let signed = |id: &SnapshotId| {
            if opts.trusted.is_empty() {
                return Ok(());
            }
            cache
                .check_signature(id, &opts.trusted)
                .map(drop)
                .map_err(|e| crate::error::Chain(&e).to_string())
        };
        // A v1 file is checked before its head (the whole file) is read, a v2 file after its
        // head says its key matches.
        let accept = |id: &SnapshotId, _: &crate::cache::SnapshotHead| signed(id);
        let m = cache.find_by_key_admitting(key, &opts.restore_keys, &signed, &accept)?;
        let signed_by = if opts.trusted.is_empty() {
            None
        } else {
            Some(cache.check_signature(&m.id, &opts.trusted)?)
        };
        return Ok(Chosen {
            id: m.id,
            snapshot: m.snapshot,
            signed_by,
            passed_over: m.passed_over,
            matched_key: Some((m.matched_key, m.exact)),
        });
    }
    let (id, snapshot, signed_by, passed_over) = choose_by_id(cache, opts)?;
    Ok(Chosen {
        id,
        snapshot,
        signed_by,
        passed_over,
        matched_key: None,
    })
}

/// The snapshot a restore uses, and how it was chosen.
struct Chosen {
    id: SnapshotId,
    snapshot: Snapshot,
    signed_by: Option<String>,
    passed_over: Vec<String>,
    matched_key: Option<(String, bool)>,
}

fn choose_by_id(
    cache: &Cache,
    opts: &RestoreOptions,
) -> Result<(SnapshotId, Snapshot, Option<String>, Vec<String>)> {
    if opts.trusted.is_empty() {
        let (id, s) = cache.find_snapshot(opts.snapshot.as_deref())?;
        return Ok((id, s, None, Vec::new()));
    }
    let s = cache.find_signed_snapshot(opts.snapshot.as_deref(), &opts.trusted)?;
    Ok((s.id, s.snapshot, Some(s.signed_by), s.passed_over))
}

/// Open the target, plan, and (unless a dry run) execute as a client of the store (see
/// [`live`]): big-lock shared, temporary roots, path locks.
///
/// # Errors
/// [`crate::Error::Lock`] when the big-lock is held exclusively; with trusted keys,
/// [`crate::Error::Trust`] for a chosen snapshot that fails the signature check and
/// [`crate::Error::NoTrustedSnapshot`] when no snapshot passes; and as [`plan`] and
/// [`execute`].
pub fn restore(
    layout: &Layout,
    cache: &Cache,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let c = choose(cache, opts)?;
    let report = restore_snapshot(layout, cache, opts, progress, c.id, c.snapshot)?;
    let (matched_key, exact_match) = match c.matched_key {
        Some((k, exact)) => (Some(k), exact),
        None => (None, false),
    };
    Ok(RestoreReport {
        signed_by: c.signed_by,
        passed_over: c.passed_over,
        matched_key,
        exact_match,
        ..report
    })
}

fn restore_snapshot(
    layout: &Layout,
    cache: &Cache,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    id: SnapshotId,
    snapshot: Snapshot,
) -> Result<RestoreReport> {
    if snapshot.version >= 2 {
        // Only the index files this snapshot names: nothing else is listed or read.
        cache.use_indexes(&snapshot.indexes);
    }
    if opts.dry_run {
        let valid = if layout.db_file().exists() {
            db::read(layout)?
                .paths
                .iter()
                .map(|p| (layout.store_dir.display(&p.path), p.nar_hash.to_db()))
                .collect()
        } else {
            HashMap::new()
        };
        let plan = plan(layout, id, snapshot, &valid, &opts.roots)?;
        let failures = plan.shadowing_failures(layout);
        return Ok(RestoreReport {
            snapshot: id.hex(),
            dry_run: true,
            failed: failures.iter().map(|f| f.path.clone()).collect(),
            failures,
            broken: plan.broken_paths(layout),
            repaired: plan
                .repair
                .iter()
                .map(|&i| layout.store_dir.display(&plan.snapshot.paths[i].info.path))
                .collect(),
            selected: plan.selected,
            already_valid: plan.already_valid,
            planned: plan.missing.len(),
            bytes: plan.bytes(),
            paths: plan
                .missing
                .iter()
                .map(|&i| layout.store_dir.display(&plan.snapshot.paths[i].info.path))
                .collect(),
            ..RestoreReport::default()
        });
    }
    let big_lock = BigLock::shared(&layout.big_lock_file(), layout.flavor, opts.wait)?;
    check_store_dir(layout)?; // before a DB is created for it
    let note = |m: &str| progress.note(m);
    let wait = db::LockWait {
        limit: db::DB_LOCK_WAIT,
        waiting: &note,
    };
    let mut conn = db::open_or_create_waiting(layout, &wait)?;
    let client = live::Client::start(layout, &note)?;
    let store_fd = open_store_dir(layout)?;
    let locked = live::plan_locked(
        layout,
        &conn,
        &wait,
        &big_lock,
        &client,
        &store_fd,
        id,
        snapshot,
        &opts.roots,
    )?;
    let report = execute::execute(
        layout,
        cache,
        &locked.plan,
        locked.valid,
        &mut conn,
        &client,
        &locked.locks,
        progress,
    );
    // Registration has committed (or failed): the locks go, then the roots.
    drop(locked.locks);
    drop(client);
    drop(conn);
    db::give_to_owner(layout)?;
    let mut report = report?;
    report.became_valid.extend(locked.became_valid);
    Ok(report)
}

#[cfg(test)]
mod scale_tests;
