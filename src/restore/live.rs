//! Restoring as a well-behaved client of a store whose daemon may be running (and whose
//! garbage collector may run), following the daemons' own protocol for adding paths:
//!
//! 1. The big-lock is held shared (by the caller), as every daemon worker holds it.
//! 2. This process's temporary roots file is created ([`TempRoots`]; a Guix collector in
//!    progress is waited for, with a message).
//! 3. Every path of the selected closure, valid or not, becomes a temporary root before
//!    validity is read again: a path valid now stays valid (no collector deletes it), so the
//!    restored paths' references stay valid until registration.
//! 4. Each missing path is locked as the daemon locks a path before writing it
//!    (`<store>/<path>.lock`, in sorted order, waiting with a message while the daemon builds
//!    or substitutes it), then validity is read once more: what the daemon made valid
//!    meanwhile is left alone (not written, not registered).
//! 5. Every name the restore creates in the store (temporary trees, the `.links` staging
//!    directory, moved-aside leftovers) is shaped as a store path of a random per-run hash
//!    part, `<hash>-storesync-<pid>-<kind>-<n>-<base>`, and listed as a temporary root before
//!    it exists: a Nix collector deletes any entry whose name is not a store path, a Guix one
//!    any invalid entry that is not a root.
//!
//! The locks are released (their files deleted) after registration commits, the roots file
//! removed after that. Leftovers of an interrupted restore are removed by the next restore
//! when their process (the pid in the name) no longer holds its temporary roots file, and by
//! the daemon's collector otherwise.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::fs::AtFlags;

use crate::cache::{Snapshot, SnapshotId};
use crate::db::{self, LockWait};
use crate::error::{Error, Result};
use crate::store::fs::{entry_names, remove_at, store_owner};
use crate::store::layout::Layout;
use crate::store::locks::PathLocks;
use crate::store::path::nixbase32_encode;
use crate::store::temp_roots::{holds_temp_roots, TempRoots};

use super::plan::{plan, RestorePlan};

/// What every scratch name holds after its hash part.
const MARK: &str = "-storesync-";
/// Names of scratch entries of versions that held the big-lock exclusively: no such restore
/// can run beside one holding it shared, so they are always leftovers.
const OLD_PREFIXES: [&str; 2] = [".storesync-tmp-", ".storesync-trash-"];

/// A temporary tree being written (or the `.links` staging directory).
pub(super) const TMP: &str = "tmp";
/// An invalid leftover moved aside, to be deleted.
pub(super) const TRASH: &str = "trash";

/// The kind (`"tmp"` or `"trash"`) of a scratch entry of a restore (this version's or an
/// older one's) in the store directory, or `None` for any other name.
pub fn scratch_kind(name: &str) -> Option<&'static str> {
    if name.starts_with(OLD_PREFIXES[0]) {
        return Some(TMP);
    }
    if name.starts_with(OLD_PREFIXES[1]) {
        return Some(TRASH);
    }
    let (_, rest) = parse_scratch(name)?;
    let kind = rest.split('-').next()?;
    [TMP, TRASH].into_iter().find(|k| *k == kind)
}

/// The pid and the rest (`<kind>-<n>-<base>`) of a scratch name of this version.
fn parse_scratch(name: &str) -> Option<(u32, &str)> {
    let hash = name.get(..32)?;
    if !hash
        .bytes()
        .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"eotu".contains(&b)))
    {
        return None;
    }
    let rest = name[32..].strip_prefix(MARK)?;
    let (pid, rest) = rest.split_once('-')?;
    Some((pid.parse().ok()?, rest))
}

/// Names of a run's scratch entries: unique per run (a random hash part) and per use (a
/// counter), at most 211 bytes after the hash part as a store path's name must be for Nix
/// (the base they are named for, up to 222 in a Guix store, is cut: the counter before it
/// keeps them unique).
pub(super) struct ScratchNames {
    hash: String,
    counter: AtomicU64,
}

impl ScratchNames {
    pub(super) fn new() -> Self {
        let mut r = [0u8; 20];
        if getrandom::fill(&mut r).is_err() {
            // Unique enough without randomness: the pid and the time, hashed.
            let seed = format!("{}-{}", std::process::id(), crate::clock::now_nanos());
            r.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..20]);
        }
        ScratchNames {
            hash: nixbase32_encode(&r),
            counter: Default::default(),
        }
    }

    /// Reserve `count` uses: the names numbered `first..first + count` (see
    /// [`ScratchNames::name`]) are given to no other use. Returns `first`.
    pub(super) fn reserve(&self, count: u64) -> u64 {
        self.counter.fetch_add(count, Ordering::Relaxed)
    }

    /// The name of use `n`, of `kind`, for `base`.
    pub(super) fn name(&self, n: u64, kind: &str, base: &str) -> String {
        let mut name = format!(
            "{}{MARK}{}-{kind}-{n}-{base}",
            self.hash,
            std::process::id()
        );
        // Store path names are ASCII: any cut is at a character boundary.
        name.truncate(32 + 1 + crate::store::path::NIX_MAX_NAME_LEN);
        name
    }

    /// Whether `name` is one of this run's.
    pub(super) fn is_ours(&self, name: &str) -> bool {
        name.strip_prefix(self.hash.as_str())
            .is_some_and(|r| r.starts_with(MARK))
    }
}

/// Scratch names reserved and rooted by [`Client::scratch_batch`].
pub(super) struct ScratchBatch {
    first: u64,
    kind: &'static str,
    count: usize,
}

/// A restore's standing as a store client: its temporary roots and scratch names.
pub(super) struct Client<'a> {
    roots: Mutex<TempRoots>,
    note: &'a (dyn Fn(&str) + Sync),
    store_dir: String,
    names: ScratchNames,
}

impl<'a> Client<'a> {
    /// Create the temporary roots file (see [`TempRoots::create`]).
    ///
    /// # Errors
    /// As [`TempRoots::create`].
    pub(super) fn start(layout: &Layout, note: &'a (dyn Fn(&str) + Sync)) -> Result<Self> {
        Ok(Client {
            roots: Mutex::new(TempRoots::create(layout, note)?),
            note,
            store_dir: layout.store_dir.as_str().to_owned(),
            names: ScratchNames::new(),
        })
    }

    /// Make `paths` (full store paths) temporary roots.
    ///
    /// # Errors
    /// As [`TempRoots::add`].
    pub(super) fn protect(&self, paths: &[String]) -> Result<()> {
        self.roots.lock().expect("roots").add(paths, self.note)
    }

    /// Scratch names of `kind` for `bases` (`count` of them), each a temporary root already,
    /// not kept: the `j`th is [`Client::batch_name`]`(&batch, j, base)`, made again when
    /// needed (at 100,000 missing paths the names kept took 15 MB). Rooted in chunks, so
    /// that the full names never all exist at once either.
    ///
    /// # Errors
    /// As [`TempRoots::add`].
    pub(super) fn scratch_batch<'b>(
        &self,
        kind: &'static str,
        bases: impl Iterator<Item = &'b str>,
        count: usize,
    ) -> Result<ScratchBatch> {
        const CHUNK: usize = 4096;
        let batch = ScratchBatch {
            first: self.names.reserve(count as u64),
            kind,
            count,
        };
        let mut full: Vec<String> = Vec::with_capacity(CHUNK.min(count));
        for (j, b) in bases.take(count).enumerate() {
            full.push(format!(
                "{}/{}",
                self.store_dir,
                self.batch_name(&batch, j, b)
            ));
            if full.len() == CHUNK {
                self.protect(&full)?;
                full.clear();
            }
        }
        self.protect(&full)?;
        Ok(batch)
    }

    /// The `j`th name of `batch`, for `base` (the `j`th base it was made for).
    pub(super) fn batch_name(&self, batch: &ScratchBatch, j: usize, base: &str) -> String {
        assert!(j < batch.count, "name {j} of a batch of {}", batch.count);
        self.names.name(batch.first + j as u64, batch.kind, base)
    }

    /// One fresh scratch name, a temporary root already (see [`Client::scratch_batch`]).
    ///
    /// # Errors
    /// As [`TempRoots::add`].
    pub(super) fn scratch_name(&self, kind: &'static str, base: &str) -> Result<String> {
        let batch = self.scratch_batch(kind, std::iter::once(base), 1)?;
        Ok(self.batch_name(&batch, 0, base))
    }

    /// Whether `name` is one of this run's scratch names.
    pub(super) fn is_ours(&self, name: &str) -> bool {
        self.names.is_ours(name)
    }
}

/// Remove the scratch entries of interrupted restores: those of older versions, and those
/// whose process no longer holds its temporary roots file. Call before this run creates any.
/// Best effort per entry: one that cannot be removed is left to the daemon's collector.
///
/// # Errors
/// [`Error::Io`] when the store directory cannot be read.
///
/// Path locks (`<path>.lock`) a killed process left are removed too, when they can be taken
/// without waiting, as their holder would have removed them (unlinked, then marked deleted so
/// that a process that opened one meanwhile opens it again). `held` names the paths whose locks
/// this process holds ([`PathLocks::bases`]; POSIX locks never conflict within a process):
/// those are left alone.
///
/// Names are only shaped like leftovers: a store path may be named `<hash>-Cargo.lock` or
/// `<hash>-storesync-1-tmp-0-x`. `valid` says whether a base name is a valid path (of the
/// validity read for the plan): such a name is never touched, nor is a lock file that is not
/// one by [`crate::store::locks::is_lock_file`] (a valid path's file shares its inode with
/// `.links` and every deduplicated copy), nor an entry whose own path lock exists (a path
/// the daemon is writing, valid only once it is done).
pub(super) fn remove_leftovers(
    layout: &Layout,
    store: &OwnedFd,
    held: &dyn Fn(&str) -> bool,
    valid: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let names = entry_names(store).map_err(|e| Error::Io(layout.real_store_dir(), e))?;
    let being_written = |name: &str| {
        rustix::fs::statat(store, format!("{name}.lock"), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    };
    for name in names {
        let Ok(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(".lock") {
            if !held(base)
                && crate::store::path::StorePath::from_base_name(base).is_ok()
                && !valid(name)
                && !being_written(name)
            {
                let _ = remove_stale_lock(layout, store, name);
            }
            continue;
        }
        let dead = if OLD_PREFIXES.iter().any(|p| name.starts_with(p)) {
            true
        } else if let Some((pid, _)) = parse_scratch(name) {
            // This process has created none yet: one with its pid is a dead process's.
            (pid == std::process::id() || !holds_temp_roots(layout, pid))
                && !valid(name)
                && !being_written(name)
        } else {
            false
        };
        if dead {
            let _ = remove_at(store, name);
        }
    }
    Ok(())
}

/// Remove the path lock `name` if it is a lock file and no one holds it (best effort, as the
/// daemons do). Whether it is a lock file another process holds (then left alone).
fn remove_stale_lock(layout: &Layout, store: &OwnedFd, name: &str) -> bool {
    use crate::store::locks::{delete_lock_file, lock, open_path_lock, LockMode};
    let name = std::ffi::OsStr::new(name);
    let Ok(Some(f)) = open_path_lock(store, name, false) else {
        return false; // absent, or not a lock file
    };
    if lock(&f, layout.flavor, LockMode::Exclusive, false).unwrap_or(false) {
        delete_lock_file(store, name, &f);
        false
    } else {
        true
    }
}

/// Whether the entry `base` of the store, in the way of a path about to be renamed there, is
/// the path lock of another store path that a process holds: a path may be named
/// `<path>.lock` (`<hash>-x.lock`), and while the daemon builds `<hash>-x` it holds a lock
/// file of that name, which it unlinks by name when done. Moved aside, the lock would be lost
/// to its holder, and its unlink would then remove the restored path the DB lists. A lock
/// file no process holds is removed as a stale lock ([`remove_stale_lock`], as leftovers'
/// are), and is not in the way any more.
pub(super) fn held_lock_in_the_way(layout: &Layout, store: &OwnedFd, base: &str) -> bool {
    base.strip_suffix(".lock")
        .is_some_and(|locked| crate::store::path::StorePath::from_base_name(locked).is_ok())
        && remove_stale_lock(layout, store, base)
}

/// What [`plan_locked`] gives: the plan to execute, the locks on its missing paths, the
/// paths that were missing at first but that the daemon made valid meanwhile, and the
/// validity the plan was made from (full path to DB hash), which [`remove_leftovers`] needs.
pub(super) struct Locked {
    pub plan: RestorePlan,
    pub locks: PathLocks,
    pub became_valid: Vec<String>,
    pub valid: HashMap<String, String>,
}

/// Plan the restore as a store client (steps 3 and 4 of the module doc): protect the closure,
/// lock the missing paths, and plan again until every missing path is locked.
///
/// # Errors
/// As [`plan`]; [`Error::Db`] reading validity; [`Error::Io`] taking a path lock or adding
/// roots; [`Error::Usage`] when more paths are missing than locks can be held (the open-files
/// limit), or a missing path's lock file's name would be longer than a file name may be,
/// while other store clients run (alone, the big-lock is taken exclusively instead).
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_locked(
    layout: &Layout,
    conn: &rusqlite::Connection,
    wait: &LockWait<'_>,
    big_lock: &crate::db::BigLock,
    client: &Client<'_>,
    store: &OwnedFd,
    id: SnapshotId,
    snapshot: Snapshot,
    roots: &[String],
) -> Result<Locked> {
    let valid = db::valid_paths_waiting(conn, layout, wait)?;
    let first = plan(layout, id, snapshot, &valid, roots)?;
    let display =
        |p: &RestorePlan, i: usize| layout.store_dir.display(&p.snapshot.paths[i].info.path);
    // Nothing missing: nothing will be written, so nothing needs protecting or locking (a
    // no-op restore of 100,000 paths would write them all as temporary roots).
    if !first.missing.is_empty() {
        let closure: Vec<String> = first.closure.iter().map(|&i| display(&first, i)).collect();
        client.protect(&closure)?;
    }
    let owner = store_owner(store).map_err(|e| Error::Io(layout.real_store_dir(), e))?;
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let mut locks = PathLocks::new(
        layout.flavor,
        store,
        &layout.real_store_dir(),
        (owner != me).then_some(owner),
    )
    .map_err(|e| Error::Io(layout.real_store_dir(), e))?;
    // A lock file per missing path, plus the writers' descriptors (see [`super::resources::lock_budget`]).
    crate::store::fs::raise_open_files_limit(first.missing.len() as u64 * 4 / 3 + 1024);
    let budget = super::resources::lock_budget();
    let mut locked: BTreeSet<String> = BTreeSet::new();
    if first.missing.is_empty() {
        return Ok(Locked {
            plan: first,
            locks,
            became_valid: Vec::new(),
            valid,
        });
    }
    let mut current = first;
    let mut missing_at_first: Option<Vec<String>> = None;
    let mut alone = false;
    loop {
        // Validity read with the closure protected: only the daemon adding paths changes it.
        let valid = db::valid_paths_waiting(conn, layout, wait)?;
        let p = plan(layout, id, current.snapshot, &valid, roots)?;
        let missing: Vec<String> = p.missing.iter().map(|&i| display(&p, i)).collect();
        let missing_at_first = missing_at_first.get_or_insert_with(|| missing.clone());
        let bases: BTreeSet<String> = p
            .missing
            .iter()
            .map(|&i| p.snapshot.paths[i].info.path.base_name().to_owned())
            .filter(|b| !locked.contains(b))
            .collect();
        if bases.is_empty() || alone {
            // Not valid, but refused since (a valid path took its hash part): failed, not
            // made valid by the daemon.
            let shadowed = p.shadowing.iter().map(|&(i, _)| display(&p, i));
            let now: std::collections::HashSet<String> =
                missing.iter().cloned().chain(shadowed).collect();
            let became_valid = missing_at_first
                .iter()
                .filter(|m| !now.contains(*m))
                .cloned()
                .collect();
            return Ok(Locked {
                plan: p,
                locks,
                became_valid,
                valid,
            });
        }
        if locked.len() + bases.len() > budget {
            // Every store client holds the big-lock shared: held exclusively, no one else can
            // add or delete a path until the restore is done, and path locks are not needed.
            // Validity is read again under it.
            if big_lock
                .try_exclusive()
                .map_err(|e| Error::Io(layout.big_lock_file(), e))?
            {
                (client.note)(&format!(
                    "{} paths are missing, more than the open-files limit lets a restore lock \
                     one by one ({budget}): the store's big-lock is held exclusively instead \
                     (the daemon's clients wait until the restore is done)",
                    locked.len() + bases.len()
                ));
                alone = true;
                current = p;
                continue;
            }
            return Err(Error::Usage(format!(
                "{} paths are missing, and a restore into a store holds a lock file open for \
                 each until they are registered, but the open-files limit allows about {budget} \
                 and the daemon's clients are running: raise the limit (ulimit -n), restore \
                 part of the closure at a time (name the paths to restore), or restore while \
                 no build or other store client runs",
                locked.len() + bases.len()
            )));
        }
        let mut unlockable = None;
        for b in bases {
            let held = locks
                .lock(&b, client.note)
                .map_err(|e| Error::Io(layout.real_store_dir().join(format!("{b}.lock")), e))?;
            if !held {
                unlockable = Some(b);
                break;
            }
            locked.insert(b);
        }
        if let Some(b) = unlockable {
            // A name too long for its lock file (a Guix name of 218 to 222 characters): no
            // daemon can write that path (it fails to lock it too), but another restore
            // could, so the big-lock is held exclusively instead, as above.
            let path = format!("{}/{b}", layout.store_dir.as_str());
            if !big_lock
                .try_exclusive()
                .map_err(|e| Error::Io(layout.big_lock_file(), e))?
            {
                return Err(Error::Usage(format!(
                    "{path}: its lock file's name would be longer than a file name may be, so \
                     it cannot be locked alone (nor can the daemon lock it), and restoring it \
                     needs the store's big-lock exclusively, but the daemon's clients are \
                     running: restore while no build or other store client runs, or restore \
                     the paths that do not need it (name them)"
                )));
            }
            (client.note)(&format!(
                "{path}: its lock file's name would be longer than a file name may be: the \
                 store's big-lock is held exclusively instead (the daemon's clients wait until \
                 the restore is done)"
            ));
            alone = true;
        }
        current = p;
    }
}

/// Count of paths per kind of scratch entry, for tests.
#[cfg(test)]
fn kinds(names: &[String]) -> std::collections::HashMap<&'static str, usize> {
    let mut m = std::collections::HashMap::new();
    for n in names {
        if let Some(k) = scratch_kind(n) {
            *m.entry(k).or_default() += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::path::StorePath;

    /// A fresh name of `kind` for `base`, as a one-name batch gets.
    fn next(names: &ScratchNames, kind: &str, base: &str) -> String {
        names.name(names.reserve(1), kind, base)
    }

    #[test]
    fn a_batch_of_scratch_names_is_rooted_whole_across_chunks() {
        for flavor in [
            crate::store::layout::Flavor::Guix,
            crate::store::layout::Flavor::Nix,
        ] {
            let root = tempfile::tempdir().unwrap();
            let layout = Layout::new(flavor, root.path(), None, None).unwrap();
            let client = Client::start(&layout, &|_| {}).unwrap();
            let bases: Vec<String> = (0..5000)
                .map(|k| format!("{}-p{k}", "1".repeat(32)))
                .collect();
            let batch = client
                .scratch_batch(TMP, bases.iter().map(String::as_str), bases.len())
                .unwrap();
            let file = layout
                .state_dir()
                .join("temproots")
                .join(std::process::id().to_string());
            let listed = std::fs::read(&file).unwrap();
            let listed: std::collections::HashSet<&[u8]> = listed
                .split(|&b| b == 0)
                .filter(|r| !r.is_empty())
                .collect();
            for (j, b) in bases.iter().enumerate() {
                let name = client.batch_name(&batch, j, b);
                let full = format!("{}/{name}", layout.store_dir.as_str());
                assert!(listed.contains(full.as_bytes()), "{full} is not a root");
            }
            assert_eq!(listed.len(), 5000);
        }
    }

    #[test]
    fn only_lock_files_and_scratch_entries_that_are_no_valid_path_are_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        // Nix: `flock` locks conflict within a process too, so a held lock can be modelled.
        let flavor = crate::store::layout::Flavor::Nix;
        let layout = Layout::new(flavor, root.path(), None, None).unwrap();
        let store_fd = crate::store::fs::open_store_dir(&layout).unwrap();
        let store = layout.real_store_dir();
        let h = |n: u8| format!("{n:032}");
        let put = |name: &str, mode: u32| {
            std::fs::write(store.join(name), b"genuine").unwrap();
            std::fs::set_permissions(store.join(name), PermissionsExt::from_mode(mode)).unwrap();
        };
        // Not valid, but a store file, not a lock: canonical modes, or several names.
        put(&format!("{}-r.lock", h(1)), 0o444);
        put(&format!("{}-x.lock", h(2)), 0o555);
        put(&format!("{}-l.lock", h(3)), 0o600);
        std::fs::hard_link(store.join(format!("{}-l.lock", h(3))), store.join("other")).unwrap();
        // Valid: a lock file's shape, a dead process's scratch entry's name.
        let valid_lock = format!("{}-v.lock", h(4));
        put(&valid_lock, 0o600);
        let valid_scratch = format!("{}-storesync-999999-tmp-0-x", h(5));
        put(&valid_scratch, 0o444);
        // Being written: its own path lock exists (held).
        let written = format!("{}-storesync-999999-tmp-1-x", h(6));
        put(&written, 0o444);
        put(&format!("{written}.lock"), 0o600);
        let writer = std::fs::File::options()
            .write(true)
            .open(store.join(format!("{written}.lock")))
            .unwrap();
        use crate::store::locks::{lock, LockMode};
        assert!(lock(&writer, flavor, LockMode::Exclusive, false).unwrap());
        // Leftovers.
        let stale = format!("{}-s.lock", h(7));
        put(&stale, 0o600);
        let dead = format!("{}-storesync-999999-tmp-2-x", h(8));
        put(&dead, 0o444);
        let valid = [valid_lock.clone(), valid_scratch.clone()];
        remove_leftovers(&layout, &store_fd, &|_| false, &|b| {
            valid.iter().any(|v| v == b)
        })
        .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!("{}-r.lock", h(1)),
            format!("{}-x.lock", h(2)),
            format!("{}-l.lock", h(3)),
            "other".to_owned(),
            valid_lock,
            valid_scratch,
            written.clone(),
            format!("{written}.lock"),
        ];
        want.sort();
        assert_eq!(left, want);
        for name in &left {
            assert_eq!(
                std::fs::read(store.join(name)).unwrap(),
                b"genuine",
                "{name}"
            );
        }
    }

    #[test]
    fn reserved_scratch_names_are_unique_and_never_handed_out_again() {
        let a = ScratchNames::new();
        let before = next(&a, TMP, "x");
        let first = a.reserve(3);
        let batch: Vec<String> = (0..3).map(|j| a.name(first + j, TMP, "x")).collect();
        let after = next(&a, TMP, "x");
        let mut all = batch.clone();
        all.push(before);
        all.push(after);
        let distinct: std::collections::HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), 5, "{all:?}");
        assert!(all.iter().all(|n| a.is_ours(n)));
        // Made again, a name is the same.
        assert_eq!(a.name(first + 1, TMP, "x"), batch[1]);
    }

    #[test]
    fn scratch_names_are_store_paths_unique_per_use_and_run_and_recognised() {
        // The longest base name a (Guix) store holds: 255 bytes, a file name's limit.
        let base = format!("{}-{}", "0".repeat(32), "n".repeat(222));
        let (a, b) = (ScratchNames::new(), ScratchNames::new());
        let names = vec![
            next(&a, TMP, &base),
            next(&a, TMP, &base),
            next(&a, TRASH, &base),
            next(&b, TMP, &base),
            next(&a, TMP, "links"),
        ];
        for (i, n) in names.iter().enumerate() {
            assert!(n.len() <= 244, "{n}");
            // A path of either flavour: Nix's 211 characters at most after the hash part.
            StorePath::from_base_name(n)
                .and_then(|p| p.check_for(crate::store::Flavor::Nix))
                .unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(parse_scratch(n).unwrap().0, std::process::id());
            for m in &names[i + 1..] {
                assert_ne!(n, m);
            }
        }
        assert!(a.is_ours(&names[0]) && !a.is_ours(&names[3]));
        assert_eq!(
            kinds(&names),
            std::collections::HashMap::from([(TMP, 4), (TRASH, 1)])
        );
        assert_eq!(scratch_kind(".storesync-tmp-x"), Some(TMP));
        assert_eq!(scratch_kind(".storesync-trash-x"), Some(TRASH));
        assert_eq!(scratch_kind(&base), None);
        assert_eq!(
            scratch_kind(&format!("{}-storesync-1-tmp", "e".repeat(32))),
            None
        );
    }
}
