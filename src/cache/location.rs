//! Where a cache lives, as `--cache LOCATION` (env `STORESYNC_CACHE`) spells it:
//!
//! - `DIR` or `file://DIR`: a local directory ([`LocalDir`](super::LocalDir));
//! - `s3://BUCKET/PREFIX`: objects under `PREFIX/` in an S3 bucket ([`S3Store`], configured
//!   from the `AWS_*` environment; the prefix may be empty);
//! - `gha://SCOPE`: the GitHub Actions cache, through the runner's `ACTIONS_*` environment
//!   (docs/REMOTE.md).
//!
//! Any other `SCHEME://` is refused rather than taken for a directory name. Parsing checks
//! the syntax only; [`Location::open`] builds the backend (and, for a directory opened for
//! writing, creates it).

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::storage::{check_key, S3Store, StorageError};
use super::{Cache, CacheError};

/// A parsed cache location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// `s3://bucket/prefix`; `prefix` has no slash at either end and may be empty.
    S3 { bucket: String, prefix: String },
    /// `gha://scope`: the GitHub Actions cache.
    Gha { scope: String },
}

/// A `--cache` value that is not a location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache location `{input}`: {why}")]
pub struct LocationError {
    input: String,
    why: String,
}

const FORMS: &str = "use DIR, file://DIR, s3://BUCKET/PREFIX or gha://SCOPE";

impl Location {
    /// Parse a `--cache` value.
    ///
    /// # Errors
    /// [`LocationError`]: empty, an unknown `SCHEME://`, or a malformed bucket or prefix.
    pub fn parse(s: &str) -> Result<Self, LocationError> {
        let bad = |why: String| LocationError {
            input: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(bad(format!("empty; {FORMS}")));
        }
        let Some((scheme, rest)) = split_scheme(s) else {
            return Ok(Location::Dir(PathBuf::from(s)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" if rest.is_empty() => Err(bad("no directory after file://".into())),
            "file" => Ok(Location::Dir(PathBuf::from(rest))),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if !valid_bucket(bucket) {
                    return Err(bad(format!(
                        "`{bucket}` is not a bucket name (3 to 63 letters, digits, `.`, `_`, `-`)"
                    )));
                }
                let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
                if !prefix.is_empty() && !check_key(prefix) {
                    return Err(bad(format!(
                        "the prefix `{prefix}` must be `/`-separated names of letters, digits, \
                         `.`, `_` and `-`, none empty nor starting with a dot"
                    )));
                }
                Ok(Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            "gha" => Ok(Location::Gha {
                scope: rest.to_string(),
            }),
            _ => Err(bad(format!("unknown scheme `{scheme}://`; {FORMS}"))),
        }
    }

    /// Open the cache: for writing (`write`: a directory is created if needed, and scratch of
    /// killed writers removed) or for reading only (a directory that does not exist is an
    /// empty cache). An S3 location requests nothing yet.
    ///
    /// # Errors
    /// [`CacheError::Storage`]: the directory cannot be created, or the S3 or GitHub cache
    /// configuration is invalid or missing.
    pub fn open(&self, write: bool) -> Result<Cache, CacheError> {
        match self {
            Location::Dir(dir) if write => Cache::open_dir(dir),
            Location::Dir(dir) => Ok(Cache::open_dir_read_only(dir)),
            Location::S3 { bucket, prefix } => {
                Ok(Cache::open(Box::new(S3Store::open(bucket, prefix)?)))
            }
            Location::Gha { scope } => {
                Ok(Cache::open(Box::new(super::storage::gha::open_gha(scope)?)))
            }
        }
    }
}

/// `(scheme, rest)` when `s` starts with `SCHEME://` (RFC 3986 scheme characters).
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    ok.then_some((scheme, rest))
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len()) && !b.contains('/') && check_key(b)
}

impl Location {
    /// Whether the cache is reached over the network (`s3://`, `gha://`).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Location::Dir(_))
    }
}

impl std::str::FromStr for Location {
    type Err = LocationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::parse(s)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(d) => write!(f, "{}", d.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Gha { scope } => write!(f, "gha://{scope}"),
        }
    }
}

impl From<&std::path::Path> for Location {
    fn from(p: &std::path::Path) -> Self {
        Location::Dir(p.to_owned())
    }
}

/// Open `--cache` as given: [`Location::parse`] then [`Location::open`].
///
/// # Errors
/// [`LocationError`] as text in [`CacheError::Storage`] (kind `InvalidInput`), or as
/// [`Location::open`].
pub fn open(location: &str, write: bool) -> Result<Cache, CacheError> {
    Location::parse(location)
        .map_err(|e| {
            CacheError::Storage(StorageError(
                location.to_string(),
                io::Error::new(io::ErrorKind::InvalidInput, e.why),
            ))
        })?
        .open(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn locations_parse() {
        let ok = [
            ("/var/cache/ss", Location::Dir("/var/cache/ss".into())),
            ("rel/dir", Location::Dir("rel/dir".into())),
            ("file:///var/cache", Location::Dir("/var/cache".into())),
            ("file://rel", Location::Dir("rel".into())),
            ("FILE:///x", Location::Dir("/x".into())),
            // Not a scheme: a directory whose name holds `://`.
            ("./odd://name", Location::Dir("./odd://name".into())),
            ("s3://bucket", s3("bucket", "")),
            ("s3://bucket/", s3("bucket", "")),
            ("s3://my.bucket-1/team/ci", s3("my.bucket-1", "team/ci")),
            ("s3://bucket/team/ci/", s3("bucket", "team/ci")),
            (
                "gha://refs/heads/main",
                Location::Gha {
                    scope: "refs/heads/main".into(),
                },
            ),
        ];
        for (s, want) in ok {
            assert_eq!(Location::parse(s).unwrap(), want, "{s}");
        }
        for (s, why) in [
            ("", "empty"),
            ("file://", "no directory"),
            ("s3://", "bucket name"),
            ("s3://ab/x", "bucket name"),
            ("s3://bucket//x", "prefix"),
            ("s3://bucket/a/../b", "prefix"),
            ("s3://bucket/a b", "prefix"),
            ("s3://bucket/.hidden", "prefix"),
            ("gs://bucket/x", "unknown scheme `gs://`"),
            ("http://host/x", "unknown scheme"),
        ] {
            let e = Location::parse(s).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&format!("`{s}`")), "{s}: {e}");
        }
    }

    #[test]
    fn locations_display_as_parsed() {
        for s in [
            "/var/cache/ss",
            "s3://bucket",
            "s3://bucket/team/ci",
            "gha://x",
        ] {
            assert_eq!(Location::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn directories_open_for_reading_without_being_created() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c");
        let loc = Location::parse(&format!("file://{}", dir.display())).unwrap();
        let cache = loc.open(false).unwrap();
        assert!(cache.snapshot_ids().unwrap().is_empty());
        assert!(!dir.exists());
        loc.open(true).unwrap();
        assert!(dir.join("packs").is_dir());
    }

    #[test]
    fn gha_without_the_runtime_variables_is_a_clear_error() {
        if std::env::var_os("ACTIONS_RUNTIME_TOKEN").is_none() {
            let e = open("gha://main", false).err().unwrap().to_string();
            assert!(
                e.contains("gha://main") && e.contains("ACTIONS_RUNTIME_TOKEN"),
                "{e}"
            );
        }
        let e = open("nope://x", false).err().unwrap().to_string();
        assert!(e.contains("unknown scheme"), "{e}");
    }
}
