//! What a garbage collection needs beyond the runtime API: a listing view of the cache
//! (entries listed through the REST API, in one ref's scope, mapped back to storage keys),
//! deletes by entry id, and keeping live entries from the 7-day idle eviction.
//!
//! Entry keys map back as they were made: `{scope}/snap/{escaped user key}/{storage key}`
//! for snapshot files, `{scope}/{storage key}` for the rest, and a replacement
//! `{entry}~{16 hex}` (see [`Storage::put`]) under the entry it replaces. Entries of another
//! `version` (not ours) and keys that are not valid storage keys are passed over.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::check_key;
use super::{is_replacement_of, GhaStore, RestEntry, Storage, StorageError};

/// Live entries last used longer ago than this are touched by a collection, so that the
/// service's eviction of entries unused for 7 days never takes them (5 days leaves two
/// days for a collection scheduled daily or a few times a week to run).
pub const TOUCH_AFTER: Duration = Duration::from_secs(5 * 86_400);

/// The entry a key of a listing stands for: a replacement's base entry, else itself.
fn base_entry(key: &str) -> &str {
    match key.rsplit_once('~') {
        Some((base, _)) if is_replacement_of(key, base) => base,
        _ => key,
    }
}

impl GhaStore {
    /// A listing view sharing this store's connection, lookups and pacing.
    ///
    /// # Errors
    /// [`StorageError`] without `GITHUB_TOKEN`/`GITHUB_REPOSITORY`, or without a ref.
    pub(super) fn view(&self) -> Result<Box<dyn Storage>, StorageError> {
        let what = format!("gha://{} (garbage collection)", self.scope());
        self.inner.rest_ref(&what)?;
        Ok(Box::new(GhaStore {
            inner: Arc::clone(&self.inner),
            uploader: Mutex::default(),
            listing: true,
        }))
    }

    /// The storage keys under `prefix` that the REST API lists in the configured ref's
    /// scope, sorted; remembers the entries for deletes, sizes and touches.
    pub(super) fn list_entries(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let what = self.describe(prefix);
        let git_ref = self.inner.rest_ref(&what)?;
        let scope = self.scope();
        let prefix = prefix.trim_end_matches('/');
        let entry_prefixes = if prefix == "snapshots" {
            vec![format!("{scope}/snap/"), format!("{scope}/snapshots/")]
        } else {
            vec![format!("{scope}/{prefix}/")]
        };
        let mut keys = BTreeSet::new();
        let mut found: HashMap<String, Vec<RestEntry>> = HashMap::new();
        for entry_prefix in &entry_prefixes {
            for e in self.inner.rest_list(&what, entry_prefix, git_ref)? {
                if e.version != self.inner.version {
                    continue;
                }
                let base = base_entry(&e.key).to_owned();
                let storage_key = match self.parse_snapshot_entry(&base) {
                    Some(k) => {
                        self.inner
                            .snapshots
                            .lock()
                            .expect("snapshots")
                            .insert(k.clone(), base.clone());
                        k
                    }
                    None => match base.strip_prefix(&format!("{scope}/")) {
                        Some(k) if check_key(k) && k.starts_with(&format!("{prefix}/")) => {
                            k.to_owned()
                        }
                        _ => continue,
                    },
                };
                keys.insert(storage_key);
                found.entry(base).or_default().push(e);
            }
        }
        let mut listed = self.inner.listed.lock().expect("listed");
        listed.retain(|k, _| !entry_prefixes.iter().any(|p| k.starts_with(p.as_str())));
        listed.extend(found);
        self.inner
            .listed_dirs
            .lock()
            .expect("listed dirs")
            .insert(prefix.to_owned());
        Ok(keys.into_iter().collect())
    }

    /// The size a listing showed for `key`'s own entry (not a replacement), listing its
    /// directory first if that was not done yet (one REST request per 100 entries rather
    /// than a lookup and a HEAD per object); `None` when not listed.
    pub(super) fn listed_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        if !self.listing {
            return Ok(None);
        }
        let dir = key.split('/').next().unwrap_or(key);
        let done = self
            .inner
            .listed_dirs
            .lock()
            .expect("listed dirs")
            .contains(dir);
        if !done {
            self.list_entries(dir)?;
        }
        let entry = self.entry(key)?;
        let listed = self.inner.listed.lock().expect("listed");
        Ok(listed
            .get(&entry)
            .and_then(|es| es.iter().find(|e| e.key == entry))
            .map(|e| e.size_in_bytes))
    }

    /// Delete `key`'s entry and its replacements in the configured ref's scope, by id: the
    /// entries a listing showed, else those a listing of the entry key shows now.
    pub(super) fn delete_entries(&self, key: &str) -> Result<(), StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        let git_ref = self.inner.rest_ref(&what)?;
        let known = self.inner.listed.lock().expect("listed").remove(&entry);
        let doomed = match known {
            Some(es) => es,
            None => self
                .inner
                .rest_list(&what, &entry, git_ref)?
                .into_iter()
                .filter(|e| e.key == entry || is_replacement_of(&e.key, &entry))
                .collect(),
        };
        self.inner.forget(&entry);
        for e in doomed.iter().filter(|e| e.version == self.inner.version) {
            self.inner.rest_delete_id(&what, e.id)?;
        }
        self.inner.forget(&entry);
        Ok(())
    }

    /// Touch the entries of `keys` that a listing showed last used more than [`TOUCH_AFTER`]
    /// ago (an unparsable date counts as old): a fresh lookup, which the service counts as a
    /// use, and a one-byte ranged read of the blob. An entry gone meanwhile is passed over.
    pub(super) fn touch_stale(&self, keys: &[String]) -> Result<usize, StorageError> {
        let now = crate::clock::now_nanos() / 1_000_000_000;
        let limit = now - TOUCH_AFTER.as_secs() as i64;
        let mut touched = 0;
        for key in keys {
            let entry = self.entry(key)?;
            let stale = {
                let listed = self.inner.listed.lock().expect("listed");
                listed.get(&entry).is_some_and(|es| {
                    es.iter()
                        .all(|e| parse_rfc3339(&e.last_accessed_at).is_none_or(|t| t < limit))
                })
            };
            if !stale {
                continue;
            }
            self.inner.forget(&entry);
            let what = self.describe(key);
            let mut byte = [0u8; 1];
            match self.get_range(key, 0, 1) {
                Ok(mut r) => {
                    r.read_exact(&mut byte).map_err(|e| StorageError(what, e))?;
                    touched += 1;
                }
                Err(e) if e.is_not_found() || e.1.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
        }
        Ok(touched)
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2026-12-03T12:00:00Z`, with optional
/// fractional seconds and a `Z` or `±hh:mm` offset); `None` when malformed.
pub(super) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339("2026-12-03T12:34:56.789Z"),
            Some(1_796_301_296)
        );
        assert_eq!(
            parse_rfc3339("2026-12-03T14:34:56+02:00"),
            parse_rfc3339("2026-12-03T12:34:56Z")
        );
        for bad in [
            "",
            "2026-12-03",
            "2026-13-03T00:00:00Z",
            "2026-12-03T00:00:00",
            "x".repeat(30).as_str(),
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn replacements_list_under_the_entry_they_replace() {
        assert_eq!(
            base_entry("s/snapshots/a.sig~0123456789abcdef"),
            "s/snapshots/a.sig"
        );
        assert_eq!(base_entry("s/packs/a.pack"), "s/packs/a.pack");
        assert_eq!(base_entry("s/x~y"), "s/x~y");
    }
}
