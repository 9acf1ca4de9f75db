//! Finding snapshots: listing them by name, reading one (head alone or whole, checked),
//! choosing by id prefix, by date (the newest not dated in the future) or by key and
//! restore-key prefixes as actions/cache does, and writing one as the commit point of a save.
//! Choosing never decodes more than one snapshot body at a time.

use super::format::{self, unseal, SnapshotHead, MAX_SNAPSHOT_FILE, SNAPSHOT_MAGIC};
use super::{
    decode, manifest, Cache, CacheError, Snapshot, SnapshotId, SnapshotRef, StorageError,
    FUTURE_MARGIN_NANOS,
};

impl Cache {
    /// Every snapshot file of the cache, oldest first as far as names tell (v2 names carry
    /// the creation time; v1 names sort before them, by id). Reads nothing but the listing.
    ///
    /// A backend that cannot list (the GitHub Actions cache) shows only what a lookup by key
    /// finds: the newest snapshot saved without a key and the newest of all.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, CacheError> {
        let keys = if self.storage.can_list() {
            self.storage.list("snapshots")?
        } else {
            self.storage
                .find_snapshots("", &[String::new()])?
                .unwrap_or_default()
        };
        Ok(snapshot_refs(keys))
    }

    /// Ids of all snapshots, in the order of [`Cache::list_snapshots`].
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, CacheError> {
        Ok(self.list_snapshots()?.into_iter().map(|r| r.id).collect())
    }

    /// Read one snapshot by id, checking its checksum, encoding and consistency.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file; [`CacheError::NoSnapshot`] when absent.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, CacheError> {
        relook(|again| {
            let refs: Vec<SnapshotRef> = self
                .list_snapshots()?
                .into_iter()
                .filter(|r| r.id == *id)
                .collect();
            if refs.is_empty() {
                return Err(CacheError::NoSnapshot(id.hex()));
            }
            match self.read_any(&refs) {
                Err(e) if again && gone(&e) => Ok(None),
                r => r.map(Some),
            }
        })
    }

    /// Read one of `refs`, files of one snapshot (several after a collection killed between
    /// writing a snapshot's new file and deleting the old one): the newest that reads.
    pub(crate) fn read_any(&self, refs: &[SnapshotRef]) -> Result<Snapshot, CacheError> {
        let mut last = None;
        for r in refs.iter().rev() {
            match self.read_snapshot_ref(r) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CacheError::Empty))
    }

    /// The snapshot whose id starts with `prefix` (any case), and its files.
    ///
    /// # Errors
    /// [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`].
    pub(super) fn refs_of_prefix(
        &self,
        prefix: &str,
    ) -> Result<(SnapshotId, Vec<SnapshotRef>), CacheError> {
        let p = prefix.to_ascii_lowercase();
        let refs: Vec<SnapshotRef> = self
            .list_snapshots()?
            .into_iter()
            .filter(|r| r.id.hex().starts_with(&p))
            .collect();
        let mut ids: Vec<SnapshotId> = refs.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        match ids.as_slice() {
            [] => Err(CacheError::NoSnapshot(p)),
            [id] => Ok((*id, refs)),
            _ => Err(CacheError::AmbiguousSnapshot(p)),
        }
    }

    /// Every snapshot file, grouped by snapshot (in the order of [`Cache::list_snapshots`]).
    pub(crate) fn snapshot_groups(
        &self,
    ) -> Result<Vec<(SnapshotId, Vec<SnapshotRef>)>, CacheError> {
        let mut groups: Vec<(SnapshotId, Vec<SnapshotRef>)> = Vec::new();
        let mut at: std::collections::HashMap<SnapshotId, usize> = std::collections::HashMap::new();
        for r in self.list_snapshots()? {
            match at.get(&r.id) {
                Some(&i) => groups[i].1.push(r),
                None => {
                    at.insert(r.id, groups.len());
                    groups.push((r.id, vec![r]));
                }
            }
        }
        Ok(groups)
    }

    /// Read the snapshot file `r`, checking its checksum, encoding and consistency.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file.
    pub fn read_snapshot_ref(&self, r: &SnapshotRef) -> Result<Snapshot, CacheError> {
        let manifest = self.snapshot_manifest(r)?;
        self.decode_snapshot(r, manifest)
    }

    /// The tree ids of the snapshot file `r`, in path order, checked as
    /// [`Cache::read_snapshot_ref`] checks the file, but without decoding the paths' strings
    /// of a v2 file (nor validating them): what a collection marks from. A v1 file is decoded
    /// and validated whole.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file.
    pub fn read_snapshot_trees(&self, r: &SnapshotRef) -> Result<Vec<super::TreeId>, CacheError> {
        match self.snapshot_manifest(r)? {
            Manifest::V2 { head, file, frame } => {
                let frame = &file[frame];
                manifest::trees_v2_frame(&head, frame, decode::snapshot_cap(frame.len())).map_err(
                    |e| CacheError::Corrupt(format!("{}: {e}", self.storage.describe(&r.key))),
                )
            }
            v1 => Ok(self
                .decode_snapshot(r, v1)?
                .paths
                .iter()
                .map(|p| p.tree)
                .collect()),
        }
    }

    /// The snapshot the manifest of the file `r` holds, decoded and validated.
    fn decode_snapshot(&self, r: &SnapshotRef, manifest: Manifest) -> Result<Snapshot, CacheError> {
        let corrupt =
            |e: String| CacheError::Corrupt(format!("{}: {e}", self.storage.describe(&r.key)));
        let snap = match manifest {
            Manifest::V1(raw) => decode::decode_snapshot(&raw).map_err(corrupt)?,
            Manifest::V2 { head, file, frame } => {
                let frame = &file[frame];
                manifest::decode_v2_frame(*head, frame, decode::snapshot_cap(frame.len()))
                    .map_err(corrupt)?
            }
        };
        snap.validate().map_err(corrupt)?;
        Ok(snap)
    }

    /// The snapshot file `r` read, its name checked against its contents; a v1 body
    /// decompressed (the file's bytes let go before it is decoded), a v2 file kept whole.
    fn snapshot_manifest(&self, r: &SnapshotRef) -> Result<Manifest, CacheError> {
        let what = self.storage.describe(&r.key);
        let corrupt = |e: String| CacheError::Corrupt(format!("{what}: {e}"));
        let bytes = self.storage.get(&r.key, MAX_SNAPSHOT_FILE)?;
        let (sum, version, body) = unseal(SNAPSHOT_MAGIC, &bytes, &what)?;
        if version == 1 {
            if r.created.is_some() || sum != r.id.0 {
                return Err(corrupt("name does not match its checksum".into()));
            }
            let raw = decode::decompress_bounded(body, decode::snapshot_cap(body.len()))
                .map_err(corrupt)?;
            Ok(Manifest::V1(raw))
        } else {
            let (head, frame) = format::split_v2(body).map_err(corrupt)?;
            let head = decode::decode_head_v2(head).map_err(corrupt)?;
            if r.file_sum.is_none_or(|s| s[..] != sum[..8]) {
                return Err(corrupt("name does not match its checksum".into()));
            }
            if r.created != Some(head.created.max(0)) {
                return Err(corrupt("name does not match its creation time".into()));
            }
            if head.id(&sum) != r.id {
                return Err(corrupt("name does not match its contents' id".into()));
            }
            let start = frame.as_ptr() as usize - bytes.as_ptr() as usize;
            let frame = start..start + frame.len();
            Ok(Manifest::V2 {
                head: Box::new(head),
                file: bytes,
                frame,
            })
        }
    }

    /// The head of the snapshot file `r`: key, date, flavour, counts, index files. For a v2
    /// file this reads only the head (two ranged reads), checked only against the id its name
    /// gives (which covers the key, date, flavour and store directory, not the counts or index
    /// files): use it to choose, then read the chosen snapshot whole with
    /// [`Cache::read_snapshot_ref`], which checks it. A v1 file is read and checked whole.
    ///
    /// # Errors
    /// [`CacheError`] naming the snapshot file.
    pub fn read_head(&self, r: &SnapshotRef) -> Result<SnapshotHead, CacheError> {
        if r.created.is_none() {
            return Ok(format::head_of(&self.read_snapshot_ref(r)?));
        }
        let what = self.storage.describe(&r.key);
        let corrupt = |e: String| CacheError::Corrupt(format!("{what}: {e}"));
        let read = |offset: u64, len: u64| -> Result<Vec<u8>, CacheError> {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut self.storage.get_range(&r.key, offset, len)?, &mut out)
                .map_err(|e| StorageError(what.clone(), e))?;
            Ok(out)
        };
        let start = read(0, format::HEADER_LEN as u64 + 4)?;
        if &start[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt("not a v2 snapshot file".into()));
        }
        let version = u32::from_le_bytes(start[8..12].try_into().expect("4 bytes"));
        if version > format::FORMAT_VERSION {
            return Err(corrupt(format::unknown_version(version)));
        }
        if version != 2 {
            return Err(corrupt("not a v2 snapshot file".into()));
        }
        let len = u32::from_le_bytes(start[16..20].try_into().expect("4 bytes"));
        if len > format::MAX_HEAD_LEN {
            return Err(corrupt(format!("head of {len} bytes")));
        }
        let head = read(format::HEADER_LEN as u64 + 4, u64::from(len))?;
        let head = decode::decode_head_v2(&head).map_err(corrupt)?;
        // The name's id commits to the head's key, date, flavour and store directory: a file
        // named after another snapshot (anyone who can add a file can name one so) is not
        // taken for that snapshot's head when choosing or listing.
        if head.id(&[0; 32]) != r.id {
            return Err(corrupt(format!(
                "its head is not that of snapshot {} its name gives (its key, date, flavour \
                 or store directory differ)",
                r.id.short()
            )));
        }
        Ok(head)
    }

    /// All readable snapshots, oldest first; unreadable ones are returned as errors in place.
    /// Holds every snapshot in memory: for listings of small caches; choosing one is
    /// [`Cache::find_snapshot`]'s work.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when listing fails.
    #[allow(clippy::type_complexity)]
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Result<Snapshot, CacheError>)>, CacheError> {
        let mut all: Vec<_> = self
            .snapshot_ids()?
            .into_iter()
            .map(|id| (id, self.read_snapshot(&id)))
            .collect();
        all.sort_by_key(|(id, s)| (s.as_ref().map(|s| s.created).unwrap_or(i64::MIN), *id));
        Ok(all)
    }

    /// Find a snapshot by id prefix, or the newest readable one when `prefix` is `None`.
    ///
    /// "Newest" is the largest `created` not beyond now plus [`FUTURE_MARGIN_NANOS`]: a
    /// snapshot dated in the future (a wrong clock, or a writer trying to pin "newest") is
    /// passed over, with a warning in [`Cache::loaded_warnings`]. Only heads are read to choose
    /// (newest first); the first whose whole file reads and checks is returned, so the cost
    /// is one snapshot body whatever the number of snapshots.
    ///
    /// # Errors
    /// [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`], [`CacheError::Empty`],
    /// or the error reading the chosen snapshot.
    pub fn find_snapshot(
        &self,
        prefix: Option<&str>,
    ) -> Result<(SnapshotId, Snapshot), CacheError> {
        relook(|again| self.find_snapshot_once(prefix, again))
    }

    /// [`Cache::find_snapshot`] from one listing; `Ok(None)` when `again` and a file listed
    /// was gone when read (see [`relook`]).
    fn find_snapshot_once(
        &self,
        prefix: Option<&str>,
        again: bool,
    ) -> Result<Option<(SnapshotId, Snapshot)>, CacheError> {
        if let Some(p) = prefix {
            let (id, refs) = self.refs_of_prefix(p)?;
            return match self.read_any(&refs) {
                Err(e) if again && gone(&e) => Ok(None),
                r => Ok(Some((id, r?))),
            };
        }
        let limit = crate::clock::now_nanos().saturating_add(FUTURE_MARGIN_NANOS);
        // Heads only (two ranged reads each), newest first; then the first that reads whole
        // and checks. Cost: one snapshot body, whatever the number of snapshots.
        let mut heads = Vec::new();
        let mut last_err = None;
        // Snapshots that could not be read, said when an older one is taken instead: a
        // restore of an older state must not look like one of the newest.
        let mut unreadable = Vec::new();
        for r in self.list_snapshots()? {
            match self.read_head(&r) {
                Ok(h) if h.created > limit => self.warn(format!(
                    "snapshot {} is dated in the future ({} ns); not taken as the newest",
                    r.id.short(),
                    h.created
                )),
                Ok(h) => heads.push((r, h.created)),
                Err(e) if again && gone(&e) => return Ok(None),
                Err(e) => {
                    unreadable.push((r.id, r.created, e.to_string()));
                    last_err = Some(e);
                }
            }
        }
        heads.sort_by_key(|(r, created)| std::cmp::Reverse((*created, r.id)));
        for (r, created) in heads {
            match self.read_snapshot_ref(&r) {
                Ok(s) if s.created == created => {
                    // Those dated after the one taken by their names (a v1 name has no
                    // date: said too).
                    for (id, _, e) in unreadable
                        .iter()
                        .filter(|(_, date, _)| date.is_none_or(|d| d > created))
                    {
                        self.warn(format!(
                            "snapshot {} cannot be read, an older one is taken: {e}",
                            id.short()
                        ));
                    }
                    return Ok(Some((r.id, s)));
                }
                Err(e) if again && gone(&e) => return Ok(None),
                Ok(_) => {
                    let e = CacheError::Corrupt(format!(
                        "{}: its head differs from its checked contents",
                        self.storage.describe(&r.key)
                    ));
                    unreadable.push((r.id, r.created, e.to_string()));
                    last_err = Some(e);
                }
                Err(e) => {
                    unreadable.push((r.id, r.created, e.to_string()));
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(CacheError::Empty))
    }

    /// Choose a snapshot as actions/cache chooses an entry: the newest whose key equals `key`;
    /// else, for each of `restore_keys` in order, the newest whose key starts with it (the
    /// first prefix that matches any wins). Only heads are read (newest first, stopping at the
    /// first match); the chosen snapshot is then read whole and checked. Snapshots dated
    /// beyond now plus [`FUTURE_MARGIN_NANOS`] are passed over, as are those `accept`
    /// refuses (given the file id and head: a signature check), each with the reason.
    ///
    /// # Errors
    /// [`CacheError::NoSnapshot`] when nothing matches (with what was passed over), or the
    /// error reading the chosen snapshot.
    pub fn find_by_key(
        &self,
        key: &str,
        restore_keys: &[String],
        accept: &dyn Fn(&SnapshotId, &SnapshotHead) -> Result<(), String>,
    ) -> Result<KeyMatch, CacheError> {
        self.find_by_key_admitting(key, restore_keys, &|_| Ok(()), accept)
    }

    /// [`Cache::find_by_key`], with `admit` asked about a v1 file before its head is read: a
    /// v1 file's head is the whole file (up to 256 MiB, inflated to at most 1 GiB), so a
    /// signature check belongs there too, or an unsigned file planted by a cache writer is
    /// read whole before `accept` refuses it. A file `admit` refuses is passed over unread,
    /// with its reason as given (which names the snapshot).
    ///
    /// # Errors
    /// As [`Cache::find_by_key`].
    pub fn find_by_key_admitting(
        &self,
        key: &str,
        restore_keys: &[String],
        admit: &dyn Fn(&SnapshotId) -> Result<(), String>,
        accept: &dyn Fn(&SnapshotId, &SnapshotHead) -> Result<(), String>,
    ) -> Result<KeyMatch, CacheError> {
        relook(|again| self.find_by_key_once(key, restore_keys, admit, accept, again))
    }

    /// [`Cache::find_by_key_admitting`] from one listing; `Ok(None)` when `again` and a file
    /// listed was gone when read (see [`relook`]).
    fn find_by_key_once(
        &self,
        key: &str,
        restore_keys: &[String],
        admit: &dyn Fn(&SnapshotId) -> Result<(), String>,
        accept: &dyn Fn(&SnapshotId, &SnapshotHead) -> Result<(), String>,
        again: bool,
    ) -> Result<Option<KeyMatch>, CacheError> {
        let limit = crate::clock::now_nanos().saturating_add(FUTURE_MARGIN_NANOS);
        // A backend that cannot list looks the keys up itself (the newest per key and
        // prefix); the others list every snapshot and read heads.
        let mut refs = match self.storage.find_snapshots(key, restore_keys)? {
            Some(keys) => snapshot_refs(keys),
            None => self.list_snapshots()?,
        };
        refs.reverse(); // newest first, as far as names tell
        let mut heads = Vec::new();
        let mut passed_over = Vec::new();
        for r in refs {
            if r.created.is_none() {
                if let Err(why) = admit(&r.id) {
                    passed_over.push(why);
                    continue;
                }
            }
            match self.read_head(&r) {
                Ok(h) if h.created > limit => passed_over.push(format!(
                    "snapshot {}: dated in the future ({} ns)",
                    r.id.short(),
                    h.created
                )),
                Ok(h) => heads.push((r, h)),
                Err(e) if again && gone(&e) => return Ok(None),
                Err(e) => passed_over.push(format!("snapshot {}: {e}", r.id.short())),
            }
        }
        // v1 names do not sort by date: order by the heads' dates, newest first.
        heads.sort_by_key(|(r, h)| std::cmp::Reverse((h.created, r.id)));
        let wanted =
            std::iter::once((key, true)).chain(restore_keys.iter().map(|k| (k.as_str(), false)));
        for (want, exact) in wanted {
            for (r, h) in &heads {
                let hit = if exact {
                    h.key == want
                } else {
                    h.key.starts_with(want)
                };
                if !hit {
                    continue;
                }
                if let Err(why) = accept(&r.id, h) {
                    passed_over.push(format!("snapshot {} ({}): {why}", r.id.short(), h.key));
                    continue;
                }
                match self.read_snapshot_ref(r) {
                    Ok(snapshot) if snapshot.key == h.key && snapshot.created == h.created => {
                        return Ok(Some(KeyMatch {
                            id: r.id,
                            snapshot,
                            matched_key: h.key.clone(),
                            exact,
                            passed_over,
                        }));
                    }
                    Ok(_) => passed_over.push(format!(
                        "snapshot {}: its head differs from its checked contents",
                        r.id.short()
                    )),
                    Err(e) if again && gone(&e) => return Ok(None),
                    Err(e) => passed_over.push(format!("snapshot {}: {e}", r.id.short())),
                }
            }
        }
        let mut what = format!("key `{key}`");
        for k in restore_keys {
            what.push_str(&format!(", prefix `{k}`"));
        }
        if !passed_over.is_empty() {
            what.push_str(&format!(" (passed over: {})", passed_over.join("; ")));
        }
        Err(CacheError::NoSnapshot(what))
    }

    /// Write a snapshot (after every object it names is durable), create-only, findable by
    /// its key ([`Storage::put_snapshot`]). Returns its id.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId, CacheError> {
        let (id, key, bytes) = format::encode_snapshot_v2(snap, 3);
        self.storage.put_snapshot(&key, &snap.key, &bytes)?;
        Ok(id)
    }

    /// [`Cache::write_snapshot`], returning the storage key written.
    ///
    /// # Errors
    /// [`CacheError::Storage`].
    pub(crate) fn write_snapshot_file(&self, snap: &Snapshot) -> Result<String, CacheError> {
        let (_, key, bytes) = format::encode_snapshot_v2(snap, 3);
        self.storage.put_snapshot(&key, &snap.key, &bytes)?;
        Ok(key)
    }
}

/// How many times a lookup starts again from a new listing when a snapshot file it listed
/// is gone by the time it reads it.
const RELOOKS: usize = 3;

/// Run a lookup (`f(again)`) from a new listing while it answers `None`, which it may only do
/// while `again`: a collection rewrites every kept snapshot (a new file under the same id,
/// then the old one deleted), so a file listed a moment ago may be gone although its
/// snapshot is there. Passing it over would take an older snapshot of the key, or call it
/// a cache miss. After [`RELOOKS`] new listings, `f` is run a last time with `again` false.
pub(crate) fn relook<T, E>(mut f: impl FnMut(bool) -> Result<Option<T>, E>) -> Result<T, E> {
    for n in 0..=RELOOKS {
        if let Some(t) = f(n < RELOOKS)? {
            return Ok(t);
        }
    }
    unreachable!("a lookup run with `again` false answers")
}

/// Whether `e` says a file was absent when read.
pub(crate) fn gone(e: &CacheError) -> bool {
    matches!(e, CacheError::Storage(s) if s.is_not_found())
}

/// Snapshot files by name, oldest first as far as names tell; other names are ignored.
fn snapshot_refs(keys: Vec<String>) -> Vec<SnapshotRef> {
    let mut out: Vec<SnapshotRef> = keys
        .into_iter()
        .filter_map(|key| {
            let n = format::parse_snapshot_key(&key)?;
            Some(SnapshotRef {
                id: n.id,
                created: n.created,
                file_sum: n.file_sum,
                key,
            })
        })
        .collect();
    out.sort_by_key(|r| (r.created, r.id));
    out
}

/// The snapshot [`Cache::find_by_key`] chose, and why.
#[derive(Debug, Clone)]
pub struct KeyMatch {
    /// Its id.
    pub id: SnapshotId,
    /// The snapshot, read whole and checked.
    pub snapshot: Snapshot,
    /// Its key.
    pub matched_key: String,
    /// True when the key matched exactly, false when through a restore-key prefix.
    pub exact: bool,
    /// Snapshots that matched but were not used, each with the reason.
    pub passed_over: Vec<String>,
}

/// A snapshot file's manifest, checked against the file's name: a v1 body (decompressed), or
/// a v2 head and the file holding the manifest's zstd frame at `frame` (decoded as it is
/// decompressed, see [`manifest`]).
enum Manifest {
    V1(Vec<u8>),
    V2 {
        head: Box<format::SnapshotHead>,
        file: Vec<u8>,
        frame: std::ops::Range<usize>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{IndexId, FORMAT_VERSION};
    use crate::store::layout::Flavor;
    use std::path::Path;

    fn snap(key: &str, created: i64) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            key: key.into(),
            flavor: Flavor::Guix,
            store_dir: "/gnu/store".into(),
            created,
            tool: "t".into(),
            indexes: Vec::new(),
            parent: None,
            roots: Vec::new(),
            paths: Vec::new(),
            derivation_outputs: Vec::new(),
        }
    }

    #[test]
    fn keys_resolve_as_actions_cache_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let now = crate::clock::now_nanos();
        for (k, t) in [
            ("guix-linux-aaa", now - 50),
            ("guix-linux-bbb", now - 40),
            ("guix-linux-aaa", now - 30),
            ("guix-mac-ccc", now - 20),
            ("guix-linux-zzz", now + 2 * FUTURE_MARGIN_NANOS),
        ] {
            cache.write_snapshot(&snap(k, t)).unwrap();
        }
        let any = |_: &SnapshotId, _: &SnapshotHead| Ok(());
        let m = cache.find_by_key("guix-linux-aaa", &[], &any).unwrap();
        assert!(m.exact);
        assert_eq!(m.snapshot.created, now - 30, "the newest of that key");
        let keys = ["guix-linux-".to_string(), "guix-".to_string()];
        let m = cache.find_by_key("guix-linux-new", &keys, &any).unwrap();
        assert!(!m.exact);
        assert_eq!(m.matched_key, "guix-linux-aaa");
        assert!(m.passed_over.iter().any(|p| p.contains("future")), "{m:?}");
        // The first prefix that matches wins, even when a later one matches something newer.
        let m = cache
            .find_by_key("x", &["guix-linux-b".into(), "guix-".into()], &any)
            .unwrap();
        assert_eq!(m.matched_key, "guix-linux-bbb");
        // Refused snapshots are passed over with the reason.
        let only_old = |_: &SnapshotId, h: &SnapshotHead| {
            (h.created < now - 35)
                .then_some(())
                .ok_or_else(|| "not signed".to_string())
        };
        let m = cache.find_by_key("guix-linux-aaa", &[], &only_old).unwrap();
        assert_eq!(m.snapshot.created, now - 50);
        assert!(m.passed_over.iter().any(|p| p.contains("not signed")));
        let err = cache
            .find_by_key("nope", &["mac".into()], &any)
            .unwrap_err();
        assert!(
            err.to_string().contains("key `nope`, prefix `mac`"),
            "{err}"
        );
    }

    #[test]
    fn a_recycled_path_vector_brings_nothing_of_its_snapshot_into_the_next() {
        use crate::cache::snapshot::test_path;
        use crate::cache::{recycle_paths, release_spare_paths, TreeId};
        use crate::store::path_info::NarHash;
        let path = |i: usize, seed: u8| {
            let mut p = test_path(&format!("{:0>32}-p{seed}", i));
            p.info.nar_hash = NarHash([seed; 32]);
            p.info.nar_size = i as u64;
            p.tree = TreeId([seed; 32]);
            p
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let mut big = snap("big", 1);
        big.paths = (0..50).map(|i| path(i, 1)).collect();
        let mut small = snap("small", 2);
        small.paths = (0..3).map(|i| path(i, 2)).collect();
        let (big_id, small_id) = (
            cache.write_snapshot(&big).unwrap(),
            cache.write_snapshot(&small).unwrap(),
        );
        let (_, read) = cache.find_snapshot(Some(&big_id.hex())).unwrap();
        recycle_paths(read.paths);
        let (_, read) = cache.find_snapshot(Some(&small_id.hex())).unwrap();
        assert_eq!(read.paths, small.paths);
        assert!(read.paths.capacity() >= 50, "the spare vector was used");
        recycle_paths(read.paths);
        release_spare_paths();
        let (_, read) = cache.find_snapshot(Some(&big_id.hex())).unwrap();
        assert_eq!(read.paths, big.paths);
    }

    #[test]
    fn a_head_read_alone_matches_the_checked_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_dir(dir.path()).unwrap();
        let mut s = snap("k", 7);
        s.indexes = vec![IndexId([4; 32])];
        let id = cache.write_snapshot(&s).unwrap();
        let r = cache.list_snapshots().unwrap().pop().unwrap();
        assert_eq!(r.id, id);
        assert_eq!(r.created, Some(7));
        let head = cache.read_head(&r).unwrap();
        assert_eq!(head, format::head_of(&cache.read_snapshot_ref(&r).unwrap()));
        assert_eq!(head.indexes, vec![IndexId([4; 32])]);
        // A snapshot renamed to another date is refused when read whole.
        let moved = dir.path().join(r.key.replacen(
            &format!("{:016x}", 7),
            &format!("{:016x}", 8),
            1,
        ));
        fs_rename(&dir.path().join(&r.key), &moved);
        let r = cache.list_snapshots().unwrap().pop().unwrap();
        let err = cache.read_snapshot_ref(&r).unwrap_err().to_string();
        assert!(err.contains("creation time"), "{err}");
    }

    fn fs_rename(a: &Path, b: &Path) {
        std::fs::rename(a, b).unwrap();
    }
}
