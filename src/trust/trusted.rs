//! The public keys a restore trusts, and the check of a snapshot's signature file against
//! them.

use super::*;

/// The public keys a restore trusts. Empty means no signature checks; otherwise a snapshot
/// is used only when [`TrustedKeys::check_snapshot`] accepts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys from command-line arguments (for example repeated `--trusted-key`), each key text
    /// or a key file path (see [`load_public_key`]).
    ///
    /// # Errors
    /// The first argument's error from [`load_public_key`].
    pub fn from_args(args: &[String]) -> Result<Self, TrustError> {
        let mut keys = Self::new();
        for a in args {
            keys.add(load_public_key(a)?);
        }
        Ok(keys)
    }

    /// Keys from [`TRUSTED_KEYS_ENV`] (see [`TrustedKeys::parse_list`]); none when it is unset.
    ///
    /// # Errors
    /// [`TrustError::EnvNotUnicode`], [`TrustError::EnvEmpty`] when it is set but names no
    /// key (an undefined CI variable must not silently turn checks off), or
    /// [`TrustError::Env`] wrapping an entry's error.
    pub fn from_env() -> Result<Self, TrustError> {
        match std::env::var_os(TRUSTED_KEYS_ENV) {
            None => Ok(Self::new()),
            Some(v) => {
                let v = v.to_str().ok_or(TrustError::EnvNotUnicode)?;
                let keys =
                    Self::parse_list(v).map_err(|e| TrustError::Env { error: Box::new(e) })?;
                if keys.is_empty() {
                    return Err(TrustError::EnvEmpty);
                }
                Ok(keys)
            }
        }
    }

    /// Keys from a list separated by whitespace or commas, each key text or a key file path
    /// (see [`load_public_key`]). An empty list gives no keys.
    ///
    /// # Errors
    /// The first entry's error from [`load_public_key`].
    pub fn parse_list(list: &str) -> Result<Self, TrustError> {
        let mut keys = Self::new();
        for entry in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            keys.add(load_public_key(entry)?);
        }
        Ok(keys)
    }

    /// Trust one more key (a key already trusted is not added twice).
    pub fn add(&mut self, key: PublicKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Trust the keys of `other` too (for example [`TrustedKeys::from_env`] after
    /// [`TrustedKeys::from_args`]).
    pub fn extend(&mut self, other: TrustedKeys) {
        for k in other.keys {
            self.add(k);
        }
    }

    /// Whether no key is trusted (then no signature is checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Accept or refuse snapshot `id` given its signature file (`None` when there is none).
    /// Signatures by untrusted key names are ignored; the snapshot is accepted when any
    /// signature by a trusted key verifies. Returns the name of that key.
    ///
    /// # Errors
    /// [`TrustError::Unsigned`] without a signature file (or an empty one),
    /// [`TrustError::BadSignatureFile`] when it does not decode,
    /// [`TrustError::BadSignature`] when a signature by a trusted name fails to verify and
    /// none verifies, [`TrustError::NoTrustedSignature`] when no signature is by a trusted
    /// name.
    pub fn check_snapshot(
        &self,
        id: &[u8; 32],
        sig_file: Option<&[u8]>,
    ) -> Result<String, TrustError> {
        let Some(bytes) = sig_file else {
            return Err(TrustError::Unsigned { id: *id });
        };
        let sigs = decode_signatures(bytes).map_err(|e| match e {
            TrustError::BadSignatureFile { reason, .. } => TrustError::BadSignatureFile {
                id: Some(*id),
                reason,
            },
            other => other,
        })?;
        if sigs.is_empty() {
            return Err(TrustError::Unsigned { id: *id });
        }
        let mut failed = None;
        for sig in &sigs {
            for key in self.keys.iter().filter(|k| k.name == sig.name) {
                match key.verify_snapshot(id, sig) {
                    Ok(()) => return Ok(key.name.clone()),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        Err(failed.unwrap_or_else(|| TrustError::NoTrustedSignature {
            id: *id,
            names: sigs.into_iter().map(|s| s.name).collect(),
            trusted: self.keys.iter().map(|k| k.name.clone()).collect(),
        }))
    }
}
