//! Garbage collection: keep the snapshots a retention policy wants, and only the objects they
//! need, within a size budget.
//!
//! 1. **Retention** (from heads only): per key, the newest `keep_last` snapshots and every
//!    snapshot younger than `keep_within` are kept (with neither, all are), and the newest
//!    snapshot of every key always is. Then, newest first, snapshots are kept while the live
//!    data of those kept fits `max_size`; older ones are dropped. Snapshots whose key does
//!    not start with `key_prefix` are outside the policy: always kept.
//! 2. **Mark**: every tree of the kept snapshots and every blob they name is live, and so is
//!    the zstd frame holding each (a frame is kept or moved whole).
//! 3. **Repack**: packs without a live frame are retired; packs whose live fraction is below
//!    `repack_below` have their live frames copied, compressed bytes unchanged, into new packs
//!    and are retired too.
//!    When the newest snapshot's small objects lie scattered over many saves' frames (or when
//!    asked), every live small object is written again in new frames, kept snapshots newest
//!    first, each in its paths' order (see [`defragment`]); every pack holding one is then
//!    repacked.
//! 4. **Publish**: one index file naming every live object (in the packs kept and the new
//!    ones) is written after the new packs are durable; kept v2 snapshots are rewritten to
//!    name only it (their signing ids do not cover the index list, so signatures stay valid),
//!    then the old snapshot files and the dropped snapshots are deleted.
//! 5. **Delete late**: what this run retired (packs, index files) is listed in
//!    `gc/<time>.retired`; files listed by runs at least `grace` ago and still not needed are
//!    deleted, then their lists. A save that started before a collection and reuses objects
//!    of a retired pack names them in its snapshot, so the next run keeps them; a save that
//!    runs longer than `grace` is not protected (see docs/FORMAT.md, "Garbage collection").
//!    Then the live objects are kept from idle eviction ([`Storage::keep_alive`]).
//!
//! A backend that cannot list (the GitHub Actions cache's runtime API) is collected through
//! its [`Storage::listing_view`] (the REST API, one ref's entries); kept snapshots are
//! rewritten oldest first there, since its lookups take the newest entry written.
//!
//! [`Storage::keep_alive`]: super::storage::Storage::keep_alive
//! [`Storage::listing_view`]: super::storage::Storage::listing_view
//!
//! Every step writes before it deletes, and deletes are idempotent: a kill at any instant
//! leaves a cache whose kept snapshots all restore, and a rerun completes the work.

use std::collections::HashSet;

use serde::Serialize;

use super::{Cache, CacheError, StorageError};
use crate::progress::Progress;

/// What to keep.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Keep the newest N snapshots of each key.
    pub keep_last: Option<usize>,
    /// Keep every snapshot younger than this many seconds.
    pub keep_within_secs: Option<u64>,
    /// Drop the oldest snapshots until the live data (compressed) fits this many bytes.
    pub max_size: Option<u64>,
    /// Apply the policy only to snapshots whose key starts with this.
    pub key_prefix: Option<String>,
    /// Delete retired files only this many seconds after they were retired.
    pub grace_secs: u64,
    /// Repack packs whose live fraction is below this.
    pub repack_below: f64,
    /// Whether to write the live small objects again in the kept snapshots' order.
    pub defragment: Defragment,
    /// Decide and report; change nothing.
    pub dry_run: bool,
}

/// The live fraction under which a pack is repacked. Copying a frame costs reading and
/// writing it (no recompression); a pack half dead wastes as much space as it would cost to
/// copy its live half. restic's default tolerates 5% unused data overall; per pack, half is
/// the break-even of space against transfer for a cache that is mostly read whole.
pub const DEFAULT_REPACK_BELOW: f64 = 0.5;

/// The default grace period: one hour, longer than any CI save.
pub const DEFAULT_GRACE_SECS: u64 = 3600;

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            keep_last: None,
            keep_within_secs: None,
            max_size: None,
            key_prefix: None,
            grace_secs: DEFAULT_GRACE_SECS,
            repack_below: DEFAULT_REPACK_BELOW,
            defragment: Defragment::Auto,
            dry_run: false,
        }
    }
}

/// What a collection did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// Snapshots kept: id, key.
    pub kept: Vec<(String, String)>,
    /// Snapshots dropped: id, key, why.
    pub dropped: Vec<(String, String, String)>,
    /// Compressed bytes of the live frames.
    pub live_bytes: u64,
    /// Bytes of all packs before.
    pub pack_bytes_before: u64,
    /// Packs without live data, retired.
    pub packs_retired: usize,
    /// Packs whose live frames were copied into new packs, then retired.
    pub packs_repacked: usize,
    /// Bytes copied by repacking.
    pub bytes_repacked: u64,
    /// Files deleted by this run (retired earlier, or now with a zero grace period).
    pub files_deleted: usize,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Bytes retired by this run and waiting for the grace period.
    pub bytes_pending: u64,
    /// Live entries touched so that idle eviction does not take them (the GitHub Actions
    /// cache: entries last used more than 5 days ago).
    pub entries_touched: usize,
    /// The index file naming every live object, when one was written.
    pub index: Option<String>,
    /// Distinct frames holding the newest snapshot's small objects.
    pub newest_frames: u64,
    /// Frame reads a restore of the newest snapshot would make (see [`defragment`]).
    pub newest_frame_reads: u64,
    /// Whether the live small objects were (or, for a dry run, would be) written again.
    pub defragmented: bool,
    /// Objects written again by defragmenting.
    pub objects_reframed: u64,
    /// Their bytes, uncompressed.
    pub bytes_reframed: u64,
    /// The budget (`max_size`) when the snapshots always kept (the newest of each key, and
    /// those `keep_last`/`keep_within` keep) hold more live data than it: the cache stays
    /// over its budget, which only fewer keys or a larger budget can change.
    pub over_budget: Option<u64>,
}

/// The key of this run's list of retired files.
fn retired_key(now_nanos: i64) -> String {
    format!("gc/{:016x}.retired", now_nanos.max(0) as u64)
}

/// A `gc/*.retired` list: the files a run retired, to delete once the grace period is over.
pub(super) struct RetiredList {
    /// Its storage key.
    pub key: String,
    /// When it was written (from its name).
    pub when: i64,
    /// The keys it names.
    pub files: Vec<String>,
}

/// Every `gc/*.retired` list in the cache, read once per run: marking merges the index
/// files they name last, the sweep deletes what they name.
fn retired_lists(cache: &Cache) -> Result<Vec<RetiredList>, CacheError> {
    let mut lists = Vec::new();
    // What all lists may hold together: a run retires a line per pack and index file, and
    // each run's list is deleted by the next one past the grace period; thousands of lists
    // planted in `gc/` would otherwise be read, whole, into memory.
    let mut budget: u64 = MAX_RETIRED_BYTES;
    for key in cache.storage().list("gc")? {
        let Some(when) = parse_retired_key(&key) else {
            continue;
        };
        let body = cache.storage().get(&key, budget.min(64 << 20))?;
        budget -= body.len() as u64;
        let files = String::from_utf8_lossy(&body)
            .lines()
            .map(str::to_owned)
            .collect();
        lists.push(RetiredList { key, when, files });
    }
    Ok(lists)
}

/// The most bytes of `gc/*.retired` lists a collection reads, all lists together (1 MiB in
/// unit tests).
#[cfg(not(test))]
const MAX_RETIRED_BYTES: u64 = 256 << 20;
#[cfg(test)]
const MAX_RETIRED_BYTES: u64 = 1 << 20;

fn parse_retired_key(key: &str) -> Option<i64> {
    let t = key.strip_prefix("gc/")?.strip_suffix(".retired")?;
    i64::try_from(u64::from_str_radix(t, 16).ok()?).ok()
}

pub mod defragment;
mod mark;
mod sweep;

pub use defragment::Defragment;

/// A frame of a pack: (pack number in the merged table, offset).
type FrameKey = (u32, u64);

/// Collect garbage in `cache` under `policy`.
///
/// # Errors
/// [`CacheError`] when a snapshot, tree or index cannot be read (nothing is deleted then: a
/// collection that cannot see everything a snapshot needs must not guess), or storage fails.
pub fn gc(
    cache: &Cache,
    policy: &GcPolicy,
    progress: &dyn Progress,
) -> Result<GcReport, CacheError> {
    // A backend that cannot list shows only the newest snapshots: marking from those would
    // take what older snapshots need for garbage. The collection runs on a view that lists
    // (the GitHub Actions cache's REST API), with an index loaded from every index file.
    if !cache.storage().can_list() {
        return match cache.storage().listing_view() {
            Some(view) => {
                let listed = Cache::open(view.map_err(CacheError::Storage)?);
                gc(&listed, policy, progress)
            }
            None => Err(CacheError::Storage(StorageError(
                cache.storage().describe(""),
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "gc needs a cache it can list",
                ),
            ))),
        };
    }
    // Marking sees every index file, whatever this cache was narrowed to before (`save
    // --prune` collects on the cache it saved with); those earlier runs retired are merged
    // last, so that what they copied is found in its new pack, not named again in the old.
    let retired = retired_lists(cache)?;
    let retired_files: HashSet<String> = retired
        .iter()
        .flat_map(|l| l.files.iter().cloned())
        .collect();
    cache.use_every_index(&retired_files);
    let now = crate::clock::now_nanos();
    let mut report = GcReport {
        dry_run: policy.dry_run,
        ..GcReport::default()
    };
    let marked = mark::mark(cache, policy, now, progress, &mut report)?;
    (report.newest_frames, report.newest_frame_reads) = marked.scatter.figures();
    report.defragmented = defragment::wanted(
        policy.defragment,
        report.newest_frames,
        report.newest_frame_reads,
    );
    let plan = sweep::plan(cache, policy, &marked, &mut report)?;
    if policy.dry_run {
        for key in &plan.retire {
            report.bytes_pending += cache.storage().size(key)?.unwrap_or(0);
        }
        return Ok(report);
    }
    sweep::publish_and_delete(cache, policy, now, marked, plan, retired, &mut report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists planted in `gc/` beyond what all lists may hold together are an error naming
    /// one, not read whole into memory one after the other (found by review).
    #[test]
    fn retired_lists_beyond_their_bound_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(d.path()).unwrap();
        let line = "packs/x.pack\n".repeat(22_000); // 286 KB
        for t in 1..=3 {
            let key = format!("gc/{t:016x}.retired");
            cache.storage().put(&key, line.as_bytes()).unwrap();
        }
        assert_eq!(retired_lists(&cache).unwrap().len(), 3);
        cache
            .storage()
            .put("gc/0000000000000004.retired", line.as_bytes())
            .unwrap();
        let e = retired_lists(&cache).err().expect("an error").to_string();
        assert!(e.contains("gc/0000000000000004.retired"), "{e}");
    }
}
