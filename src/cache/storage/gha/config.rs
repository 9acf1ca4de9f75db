//! Where the GitHub Actions cache service is and how to reach it: [`GhaConfig`] (from the
//! runner's environment), the REST API's [`RestConfig`], the `gha://SCOPE` location, and the
//! escaping of snapshot user keys into entry keys.

use std::time::Duration;

use sha2::Digest as _;

use super::{
    invalid, GhaStore, StorageError, DEFAULT_BLOCK_SIZE, DEFAULT_MAX_THROTTLE_WAIT, DEFAULT_SCOPE,
    DEFAULT_TIMEOUT,
};

/// The `version` of every entry: hex SHA-256 of `storesync-v2` (actions/cache puts a hash of
/// paths and compression there; ours keeps our entries apart from theirs).
pub fn version() -> String {
    crate::hex::hex(&sha2::Sha256::digest(b"storesync-v2"))
}

/// Where and how to reach the cache service.
#[derive(Debug, Clone)]
pub struct GhaConfig {
    /// `ACTIONS_RESULTS_URL`.
    pub results_url: String,
    /// `ACTIONS_RUNTIME_TOKEN`.
    pub runtime_token: String,
    /// Prefix of every entry key: `[A-Za-z0-9._-]`, at most 64 bytes.
    pub scope: String,
    /// Longest total wait for one request that the service keeps throttling (HTTP 429);
    /// `STORESYNC_GHA_MAX_WAIT` in seconds.
    pub max_throttle_wait: Duration,
    /// Upload block size (Put Block); objects up to this size go up as one Put Blob.
    pub block_size: usize,
    /// Tries for a request failing with 500/502/503/504 or a transport error.
    pub tries: u32,
    /// First pause between those tries (doubled each time).
    pub retry_pause: Duration,
    /// How long a request may wait for a connection and for the head of an answer, and may
    /// be tried again after getting none; a body may take this plus a second per
    /// [`super::MIN_RATE`] bytes ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// The REST API, for deleting (and listing) entries, when a token is given.
    pub rest: Option<RestConfig>,
}

/// The GitHub REST API: `GET/DELETE /repos/{repository}/actions/caches`.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// `GITHUB_API_URL` (default `https://api.github.com`).
    pub api_url: String,
    /// `GITHUB_REPOSITORY`: `owner/name`.
    pub repository: String,
    /// `GITHUB_TOKEN`, with `actions: write` to delete.
    pub token: String,
    /// The ref whose entries a garbage collection lists and deletes (`refs/heads/main`,
    /// `refs/pull/7/merge`): `STORESYNC_GHA_REF`, else `GITHUB_REF` (the job's own ref, the
    /// only scope it writes). [`ALL_REFS`] takes every ref's entries; `None` (no variable)
    /// makes a collection refuse to start.
    pub git_ref: Option<String>,
}

/// [`RestConfig::git_ref`] meaning every ref (`STORESYNC_GHA_REF=*`).
pub const ALL_REFS: &str = "*";

/// Whether `scope` may name a scope: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn check_scope(scope: &str) -> bool {
    (1..=64).contains(&scope.len())
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl GhaConfig {
    /// The configuration a runner gives a JavaScript action: `ACTIONS_RESULTS_URL`,
    /// `ACTIONS_RUNTIME_TOKEN`; optionally `STORESYNC_GHA_MAX_WAIT` (seconds), and
    /// `GITHUB_TOKEN` with `GITHUB_REPOSITORY` (and `GITHUB_API_URL`, `GITHUB_REF` or
    /// `STORESYNC_GHA_REF`) for listing and deleting.
    ///
    /// # Errors
    /// [`StorageError`] (`InvalidInput`) for a bad scope or a missing variable, saying that
    /// only JavaScript actions receive the runtime variables.
    pub fn from_env(scope: &str) -> Result<Self, StorageError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let what = format!("gha://{scope}");
        let (Some(results_url), Some(runtime_token)) =
            (var("ACTIONS_RESULTS_URL"), var("ACTIONS_RUNTIME_TOKEN"))
        else {
            return Err(invalid(
                &what,
                "the GitHub Actions cache needs ACTIONS_RESULTS_URL and ACTIONS_RUNTIME_TOKEN; \
                 the runner gives them only to JavaScript (and Docker) actions, not to `run:` \
                 steps: export them from an actions/github-script step (see docs/REMOTE.md)"
                    .into(),
            ));
        };
        let max_throttle_wait = match var("STORESYNC_GHA_MAX_WAIT") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                invalid(
                    &what,
                    format!("STORESYNC_GHA_MAX_WAIT={s}: not a number of seconds"),
                )
            })?),
            None => DEFAULT_MAX_THROTTLE_WAIT,
        };
        let rest = match (var("GITHUB_TOKEN"), var("GITHUB_REPOSITORY")) {
            (Some(token), Some(repository)) => Some(RestConfig {
                api_url: var("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into()),
                repository,
                token,
                git_ref: var("STORESYNC_GHA_REF").or_else(|| var("GITHUB_REF")),
            }),
            _ => None,
        };
        Ok(GhaConfig {
            results_url,
            runtime_token,
            scope: scope.to_owned(),
            max_throttle_wait,
            block_size: DEFAULT_BLOCK_SIZE,
            tries: 5,
            retry_pause: Duration::from_millis(500),
            timeout: DEFAULT_TIMEOUT,
            rest,
        })
    }
}

/// Open the location `gha://{rest}`: `rest` is the scope (empty: [`DEFAULT_SCOPE`]; a
/// trailing `/` is ignored), the service comes from the environment
/// ([`GhaConfig::from_env`]).
///
/// # Errors
/// As [`GhaConfig::from_env`] and [`GhaStore::new`].
pub fn open_gha(rest: &str) -> Result<GhaStore, StorageError> {
    let scope = rest.strip_suffix('/').unwrap_or(rest);
    GhaStore::from_env(if scope.is_empty() {
        DEFAULT_SCOPE
    } else {
        scope
    })
}

/// Escape a snapshot's user key for an entry key: bytes of `[A-Za-z0-9._-]` stay, every
/// other byte becomes `%XX` (upper-case hex). Never produces `/` or `,`; the escape of a
/// prefix of `k` is a prefix of the escape of `k`.
pub fn escape_user_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
