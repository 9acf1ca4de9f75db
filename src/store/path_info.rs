//! What the daemon's DB records about a valid store path ([`PathInfo`], one `ValidPaths` row
//! with its `Refs`), a `DerivationOutputs` row, and the NAR SHA-256 as the `hash` column
//! spells it ([`NarHash`]). These are domain values: the cache keeps its own wire structs
//! (`cache::format`), so changing a field here never changes the cache format silently.

use std::fmt;

use crate::hex::{hex, parse_hex};
use crate::store::path::{nixbase32_decode, StorePath};

/// The SHA-256 of a path's NAR serialisation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NarHash(pub [u8; 32]);

impl NarHash {
    /// Parse the `hash` column: `sha256:` then 64 hex digits (what both daemons write) or 52
    /// nix-base32 characters (older Nix).
    pub fn parse_db(s: &str) -> Option<Self> {
        let h = s.strip_prefix("sha256:")?;
        match h.len() {
            64 => parse_hex::<32>(h).map(NarHash),
            52 => nixbase32_decode(h, 32).map(|v| NarHash(v.try_into().expect("32 bytes"))),
            _ => None,
        }
    }

    /// The `hash` column as the daemons write it: `sha256:<hex>`.
    pub fn to_db(&self) -> String {
        format!("sha256:{}", hex(&self.0))
    }
}

impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_db())
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarHash({})", self.to_db())
    }
}

/// Everything the DB knows about one valid path. Deriver is kept as the DB spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path.
    pub path: StorePath,
    /// SHA-256 of the NAR serialisation.
    pub nar_hash: NarHash,
    /// Length of the NAR serialisation in bytes.
    pub nar_size: u64,
    /// `registrationTime`, Unix seconds.
    pub registration_time: i64,
    /// The `.drv` that built it, as a full path, if recorded.
    pub deriver: Option<String>,
    /// Paths it refers to (may include itself), sorted.
    pub references: Vec<StorePath>,
    /// Nix's `ultimate`, `sigs` and `ca` columns; `None` when none is set (always, on
    /// Guix): boxed, so that a row without them takes 8 bytes for them instead of 64 (a
    /// decoded snapshot holds one row per path).
    pub nix: Option<Box<NixColumns>>,
}

/// The columns of a Nix `ValidPaths` row that Guix's lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NixColumns {
    /// Built locally (`ultimate`).
    pub ultimate: Option<i64>,
    /// Space-separated signatures (`sigs`).
    pub sigs: Option<String>,
    /// Content-address assertion (`ca`).
    pub ca: Option<String>,
}

impl NixColumns {
    /// The columns as [`PathInfo::nix`] holds them: `None` when none is set.
    pub fn boxed(
        ultimate: Option<i64>,
        sigs: Option<String>,
        ca: Option<String>,
    ) -> Option<Box<Self>> {
        (ultimate.is_some() || sigs.is_some() || ca.is_some())
            .then(|| Box::new(NixColumns { ultimate, sigs, ca }))
    }
}

impl PathInfo {
    /// Nix's `ultimate` column.
    pub fn ultimate(&self) -> Option<i64> {
        self.nix.as_ref().and_then(|n| n.ultimate)
    }

    /// Nix's `sigs` column.
    pub fn sigs(&self) -> Option<&str> {
        self.nix.as_ref().and_then(|n| n.sigs.as_deref())
    }

    /// Nix's `ca` column.
    pub fn ca(&self) -> Option<&str> {
        self.nix.as_ref().and_then(|n| n.ca.as_deref())
    }
}

/// One `DerivationOutputs` row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DerivationOutput {
    /// The `.drv`.
    pub drv: StorePath,
    /// Output name, usually `out`.
    pub id: String,
    /// Output path, full, as the DB spells it.
    pub path: String,
}
