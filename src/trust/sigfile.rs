//! Signature files: one `NAME:BASE64` line per signature of a snapshot, bounded in size and
//! lines, one signature per key name.

use std::collections::HashSet;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::Signature;

use super::*;

/// One signature of a signature file: the signing key's name and a 64-byte Ed25519
/// signature; its text form is `NAME:BASE64(64 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureLine {
    pub(super) name: String,
    pub(super) signature: Signature,
}

impl SignatureLine {
    /// Parse `NAME:BASE64(64 bytes)` (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// [`TrustError::NotKeyText`], [`TrustError::BadName`] or [`TrustError::BadKey`].
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let (name, bytes) = decode_text::<SIGNATURE_LEN>("signature", text.trim(), false)?;
        Ok(SignatureLine {
            name,
            signature: Signature::from_bytes(&bytes),
        })
    }

    /// The name of the key that made it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw signature.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.signature.to_bytes()
    }
}

impl fmt::Display for SignatureLine {
    /// `NAME:BASE64(64 bytes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            BASE64.encode(self.signature.to_bytes())
        )
    }
}

impl fmt::Debug for SignatureLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureLine({self})")
    }
}

/// Encode a signature file: one line of text per signature. [`decode_signatures`] accepts it
/// when it holds at most [`MAX_SIG_LINES`] signatures with distinct names ([`merge`] keeps to
/// that).
pub fn encode_signatures(sigs: &[SignatureLine]) -> Vec<u8> {
    let mut out = String::new();
    for s in sigs {
        out.push_str(&s.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// Decode a signature file. Blank lines and whitespace around lines are ignored; anything else
/// must be a valid signature line. Signatures by unknown keys are returned too (checking
/// ignores them).
///
/// # Errors
/// [`TrustError::BadSignatureFile`] (without a snapshot id) when the file is larger than
/// [`MAX_SIG_FILE`], is not UTF-8, holds more than [`MAX_SIG_LINES`] signatures, names a key
/// twice, or has a malformed line.
pub fn decode_signatures(bytes: &[u8]) -> Result<Vec<SignatureLine>, TrustError> {
    let bad = |reason: String| TrustError::BadSignatureFile { id: None, reason };
    if bytes.len() > MAX_SIG_FILE {
        return Err(bad(format!(
            "{} bytes, more than the {MAX_SIG_FILE} allowed",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut sigs: Vec<SignatureLine> = Vec::new();
    let mut names = HashSet::new();
    for (no, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if sigs.len() == MAX_SIG_LINES {
            return Err(bad(format!("more than {MAX_SIG_LINES} signatures")));
        }
        let sig = SignatureLine::parse(line).map_err(|e| bad(format!("line {}: {e}", no + 1)))?;
        if !names.insert(sig.name.clone()) {
            return Err(bad(format!(
                "line {}: a second signature by key `{}`",
                no + 1,
                sig.name
            )));
        }
        sigs.push(sig);
    }
    Ok(sigs)
}

/// Add `new` to a signature file (`existing`, or none yet): other keys' signatures are kept in
/// their order, one by the same key name is replaced in place, otherwise `new` is appended.
/// Returns the new file's bytes.
///
/// # Errors
/// [`TrustError::BadSignatureFile`] when `existing` does not decode (delete the file to start
/// afresh) or the result would exceed [`MAX_SIG_LINES`] signatures.
pub fn merge(existing: Option<&[u8]>, new: SignatureLine) -> Result<Vec<u8>, TrustError> {
    let mut sigs = match existing {
        Some(bytes) => decode_signatures(bytes)?,
        None => Vec::new(),
    };
    let same_name = sigs.iter().position(|s| s.name == new.name);
    match same_name {
        Some(i) => sigs[i] = new,
        None if sigs.len() >= MAX_SIG_LINES => {
            return Err(TrustError::BadSignatureFile {
                id: None,
                reason: format!(
                    "already {MAX_SIG_LINES} signatures, no room for `{}`",
                    new.name
                ),
            })
        }
        None => sigs.push(new),
    }
    Ok(encode_signatures(&sigs))
}
