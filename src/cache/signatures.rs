//! Signed snapshots (see [`crate::trust`]): detached signature files `snapshots/<id>.sig`
//! next to the snapshots they sign. They are not content-addressed: adding a signature
//! replaces the file with [`super::Storage::put`]. With trusted keys, a snapshot's signature is
//! checked before anything of the snapshot itself is read.

use super::{Cache, CacheError, Snapshot, SnapshotId, SnapshotRef, FUTURE_MARGIN_NANOS};

/// A snapshot whose signature passed the check, as [`Cache::find_signed_snapshot`] chose it.
#[derive(Debug, Clone)]
pub struct SignedSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its contents.
    pub snapshot: Snapshot,
    /// The name of the trusted key whose signature verified.
    pub signed_by: String,
    /// Snapshots refused while choosing the newest (unsigned, not trusted, bad signature,
    /// unreadable), one message each naming the snapshot.
    pub passed_over: Vec<String>,
}

impl Cache {
    /// The date a snapshot of files `refs` (one id) is ranked by when choosing the newest:
    /// that of the first of its files, newest name first, whose head reads; else the error
    /// reading the last. Every head that reads gives the same date, the id committing to it
    /// ([`Cache::read_head`] checks a head against its name's id): a file named after the
    /// snapshot holding anything else (any cache writer can add one, dated later, earlier,
    /// in the future, or no snapshot at all) is not read as its head, so neither passes the
    /// snapshot over nor ranks it below an older one.
    fn group_date(&self, refs: &[SnapshotRef], again: bool) -> Result<i64, CacheError> {
        let mut last_err = None;
        for r in refs.iter().rev() {
            match self.read_head(r) {
                Ok(h) => return Ok(h.created),
                Err(e) if again && super::lookup::gone(&e) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("a group has a file"))
    }

    /// The signature file of snapshot `id`, or `None` when it has none.
    ///
    /// # Errors
    /// [`CacheError::Storage`] when it cannot be read or is larger than
    /// [`crate::trust::MAX_SIG_FILE`].
    pub fn read_signatures(&self, id: &SnapshotId) -> Result<Option<Vec<u8>>, CacheError> {
        let key = crate::trust::signature_key(&id.0);
        match self.storage.get(&key, crate::trust::MAX_SIG_FILE as u64) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Add `sig` to the signature file of snapshot `id` (a signature by the same key name is
    /// replaced, others are kept). Two writers signing the same snapshot at once may lose one
    /// signature (the last write wins); the snapshot itself is never touched.
    ///
    /// # Errors
    /// [`crate::Error::Cache`] when the file cannot be read or written,
    /// [`crate::Error::Trust`] when the existing file is malformed (delete it to start afresh)
    /// or full.
    pub fn add_signature(
        &self,
        id: &SnapshotId,
        sig: crate::trust::SignatureLine,
    ) -> Result<(), crate::Error> {
        let existing = self.read_signatures(id)?;
        let bytes = crate::trust::merge(existing.as_deref(), sig).map_err(|e| match e {
            crate::trust::TrustError::BadSignatureFile { reason, .. } => {
                crate::trust::TrustError::BadSignatureFile {
                    id: Some(id.0),
                    reason,
                }
            }
            e => e,
        })?;
        self.storage
            .put(&crate::trust::signature_key(&id.0), &bytes)
            .map_err(CacheError::from)?;
        Ok(())
    }

    /// Check the signature of snapshot `id` against `keys`, reading only its signature file.
    /// Returns the name of the key whose signature verified.
    ///
    /// # Errors
    /// [`crate::Error::Trust`] (unsigned, signed only by untrusted keys, a signature that does
    /// not verify, a malformed file), or [`crate::Error::Cache`] when the signature file
    /// cannot be read.
    pub fn check_signature(
        &self,
        id: &SnapshotId,
        keys: &crate::trust::TrustedKeys,
    ) -> Result<String, crate::Error> {
        let sigs = self.read_signatures(id)?;
        Ok(keys.check_snapshot(&id.0, sigs.as_deref())?)
    }

    /// Like [`Cache::find_snapshot`], taking only snapshots signed by one of `keys` (which
    /// must not be empty): each snapshot's signature is checked before the snapshot is read.
    /// The newest is the newest of those that pass; the others that did not pass are listed
    /// in [`SignedSnapshot::passed_over`].
    ///
    /// # Errors
    /// For a prefix: [`CacheError::NoSnapshot`], [`CacheError::AmbiguousSnapshot`], the
    /// signature check's error, or the error reading the snapshot. For the newest:
    /// [`CacheError::Empty`] when there is no snapshot, [`crate::Error::NoTrustedSnapshot`]
    /// when none passes.
    pub fn find_signed_snapshot(
        &self,
        prefix: Option<&str>,
        keys: &crate::trust::TrustedKeys,
    ) -> Result<SignedSnapshot, crate::Error> {
        assert!(!keys.is_empty(), "find_signed_snapshot without keys");
        super::lookup::relook(|again| self.find_signed_snapshot_once(prefix, keys, again))
    }

    /// [`Cache::find_signed_snapshot`] from one listing; `Ok(None)` when `again` and a
    /// snapshot file listed was gone when read (see [`super::lookup::relook`]).
    fn find_signed_snapshot_once(
        &self,
        prefix: Option<&str>,
        keys: &crate::trust::TrustedKeys,
        again: bool,
    ) -> Result<Option<SignedSnapshot>, crate::Error> {
        let gone = |e: &CacheError| again && super::lookup::gone(e);
        if let Some(p) = prefix {
            let (id, refs) = self.refs_of_prefix(p)?;
            let signed_by = self.check_signature(&id, keys)?;
            let snapshot = match self.read_any(&refs) {
                Err(e) if gone(&e) => return Ok(None),
                r => r?,
            };
            return Ok(Some(SignedSnapshot {
                id,
                snapshot,
                signed_by,
                passed_over: Vec::new(),
            }));
        }
        let limit = crate::clock::now_nanos().saturating_add(FUTURE_MARGIN_NANOS);
        // One listing; each snapshot's signature checked and its head read (small reads);
        // then, newest first, bodies read until one reads and checks: one body, whatever the
        // number of snapshots.
        let groups = self.snapshot_groups()?;
        if groups.is_empty() {
            return Err(CacheError::Empty.into());
        }
        let mut passed_over = Vec::new();
        let mut candidates = Vec::new();
        for (id, refs) in groups {
            let checked = self
                .check_signature(&id, keys)
                .and_then(|signer| Ok((signer, self.group_date(&refs, again)?)));
            match checked {
                Err(crate::Error::Cache(e)) if gone(&e) => return Ok(None),
                Err(e) => passed_over.push(match e {
                    // Trust errors name the snapshot; others name its file.
                    crate::Error::Trust(_) => crate::error::Chain(&e).to_string(),
                    e => format!("snapshot {}: {}", id.short(), crate::error::Chain(&e)),
                }),
                Ok((_, created)) if created > limit => passed_over.push(format!(
                    "snapshot {} is dated in the future ({created} ns); not taken as the newest",
                    id.short(),
                )),
                Ok((signed_by, created)) => candidates.push((created, id, refs, signed_by)),
            }
        }
        candidates.sort_by_key(|(created, id, _, _)| std::cmp::Reverse((*created, *id)));
        for (created, id, refs, signed_by) in candidates {
            match self.read_any(&refs) {
                Ok(snapshot) if snapshot.created == created => {
                    return Ok(Some(SignedSnapshot {
                        id,
                        snapshot,
                        signed_by,
                        passed_over,
                    }))
                }
                Err(e) if gone(&e) => return Ok(None),
                Ok(_) => passed_over.push(format!(
                    "snapshot {}: its head differs from its checked contents",
                    id.short()
                )),
                Err(e) => passed_over.push(format!(
                    "snapshot {}: {}",
                    id.short(),
                    crate::error::Chain(&crate::Error::from(e))
                )),
            }
        }
        Err(crate::Error::NoTrustedSnapshot(passed_over))
    }
}
