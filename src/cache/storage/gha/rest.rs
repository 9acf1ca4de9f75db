//! The GitHub REST API for the cache entries of a repository: `GET /repos/{owner}/{repo}/
//! actions/caches?key=PREFIX&ref=REF` (listing by key prefix, 100 a page) and `DELETE
//! /repos/{owner}/{repo}/actions/caches/{id}` (one entry, with a `GITHUB_TOKEN` that has
//! `actions: write`). Deletes are at least one second apart; an entry already gone (404)
//! counts as deleted; a throttled call waits as the reply says (`Retry-After`, or a spent
//! rate limit's `x-ratelimit-reset`, see `retry`).
//!
//! Only one ref's entries are listed and deleted ([`RestConfig::git_ref`]): a job writes
//! only its own ref's scope, and deleting by key prefix must not empty another branch's.

use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

use serde::Deserialize;
use ureq::http;

use super::retry::{body_text, error_message};
use super::{body_time, other, GhaStore, Inner, RestConfig, StorageError, ALL_REFS};

/// Most entries one listing returns (the service's 10 GB per repository holds far fewer of
/// ours); a listing beyond it is an error rather than unbounded memory.
pub const MAX_LISTED: usize = 200_000;

/// One entry as the REST API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct RestEntry {
    /// The service's id of the entry.
    pub id: u64,
    /// Its entry key.
    pub key: String,
    /// Its version.
    pub version: String,
    /// The ref whose scope holds it (`refs/heads/main`).
    #[serde(default, rename = "ref")]
    pub git_ref: String,
    /// Its size.
    #[serde(default)]
    pub size_in_bytes: u64,
    /// When it was last read (RFC 3339).
    #[serde(default)]
    pub last_accessed_at: String,
}

#[derive(Deserialize)]
struct RestPage {
    #[serde(default)]
    total_count: u64,
    actions_caches: Vec<RestEntry>,
}

/// The pause between two deletes: the service allows one a second; the extra tenth keeps
/// network jitter from making two paced requests arrive less than a second apart.
pub const DELETE_PACE: Duration = Duration::from_millis(1100);

/// Entries per page (the API's maximum).
const PER_PAGE: usize = 100;

impl Inner {
    /// The REST configuration, or the error saying what to set.
    pub(super) fn rest(&self, what: &str) -> Result<&RestConfig, StorageError> {
        self.cfg.rest.as_ref().ok_or_else(|| {
            StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "listing and deleting GitHub Actions cache entries (gc, save --prune) goes \
                     through the GitHub REST API: set GITHUB_TOKEN to a token with the \
                     `actions: write` permission (in a workflow: `permissions: actions: \
                     write`, and `GITHUB_TOKEN: ${{ github.token }}` or the action's \
                     `github-token` input) and GITHUB_REPOSITORY (owner/name)",
                ),
            )
        })
    }

    /// The ref whose entries are listed and deleted: `Some(ref)`, or `None` for every ref
    /// ([`ALL_REFS`]); an error when none is configured.
    pub(super) fn rest_ref(&self, what: &str) -> Result<Option<&str>, StorageError> {
        match self.rest(what)?.git_ref.as_deref() {
            Some(ALL_REFS) => Ok(None),
            Some(r) => Ok(Some(r)),
            None => Err(StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "listing and deleting GitHub Actions cache entries works on one ref's \
                     entries (a job writes only its own ref's scope): set GITHUB_REF (the \
                     runner does) or STORESYNC_GHA_REF (`*` for every ref)",
                ),
            )),
        }
    }

    fn caches_url(rest: &RestConfig) -> String {
        format!(
            "{}/repos/{}/actions/caches",
            rest.api_url.trim_end_matches('/'),
            rest.repository
        )
    }

    /// Every entry whose key starts with `prefix` in `git_ref`'s scope (every scope for
    /// `None`), oldest first as far as the pages tell, each id once.
    ///
    /// # Errors
    /// [`StorageError`]: no REST configuration, refused, unreachable, an unexpected reply,
    /// or more than [`MAX_LISTED`] entries.
    pub(super) fn rest_list(
        &self,
        what: &str,
        prefix: &str,
        git_ref: Option<&str>,
    ) -> Result<Vec<RestEntry>, StorageError> {
        let rest = self.rest(what)?;
        let url = Self::caches_url(rest);
        let per_page = PER_PAGE.to_string();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stale = 0;
        for page in 1u32.. {
            let page_s = page.to_string();
            let resp = self.send(what, &url, &|| {
                let mut r = self
                    .agent
                    .get(&url)
                    .config()
                    .timeout_recv_body(Some(body_time(self.cfg.timeout, REST_BODY)))
                    .build()
                    .header("Authorization", &format!("Bearer {}", rest.token))
                    .header("Accept", "application/vnd.github+json")
                    .header("X-GitHub-Api-Version", "2022-11-28")
                    .query("key", prefix)
                    .query("sort", "created_at")
                    .query("direction", "asc")
                    .query("per_page", &per_page)
                    .query("page", &page_s);
                if let Some(git_ref) = git_ref {
                    r = r.query("ref", git_ref);
                }
                r.call()
            })?;
            if resp.status().as_u16() != 200 {
                return Err(self.rest_status(what, resp));
            }
            let text = body_text_limited(resp);
            let p: RestPage = serde_json::from_str(&text)
                .map_err(|e| other(what, format!("REST API: unexpected reply: {e}")))?;
            let n = p.actions_caches.len();
            // Entries deleted meanwhile shift the pages: an id seen twice is listed once.
            let before = out.len();
            out.extend(p.actions_caches.into_iter().filter(|e| seen.insert(e.id)));
            // Full pages of nothing new: the pages do not advance (a server repeating one page
            // would be asked for pages for ever, each a request of the rate limit; deletions
            // meanwhile shift a page or two). Pages are bounded too, whatever their entries.
            stale = if n == PER_PAGE && out.len() == before {
                stale + 1
            } else {
                0
            };
            if stale > 3 || page as usize > MAX_LISTED / PER_PAGE + 10 {
                return Err(other(
                    what,
                    format!(
                        "the REST API's pages of {prefix} do not advance (page {page}: {stale} \
                         full pages in a row added nothing new)"
                    ),
                ));
            }
            if out.len() > MAX_LISTED {
                return Err(other(
                    what,
                    format!("the REST API lists more than {MAX_LISTED} entries under {prefix}"),
                ));
            }
            if n < PER_PAGE || (p.total_count > 0 && out.len() as u64 >= p.total_count) {
                break;
            }
        }
        Ok(out)
    }

    /// Delete the entry `id`, at least a second after the previous delete; an entry already
    /// gone counts as deleted.
    ///
    /// # Errors
    /// [`StorageError`]: refused (the token lacks `actions: write`), or unreachable.
    pub(super) fn rest_delete_id(&self, what: &str, id: u64) -> Result<(), StorageError> {
        let rest = self.rest(what)?;
        let url = format!("{}/{id}", Self::caches_url(rest));
        let resp = self.send(what, &url, &|| {
            self.pace_delete();
            self.agent
                .delete(&url)
                .header("Authorization", &format!("Bearer {}", rest.token))
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
                .call()
        })?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.rest_status(what, resp)),
        }
    }

    /// Wait until [`DELETE_PACE`] has passed since the previous delete (also before a retry).
    fn pace_delete(&self) {
        let mut last = self.last_delete.lock().expect("last delete");
        if let Some(t) = *last {
            let since = t.elapsed();
            if since < DELETE_PACE {
                std::thread::sleep(DELETE_PACE - since);
            }
        }
        *last = Some(Instant::now());
    }

    pub(super) fn rest_status(&self, what: &str, resp: http::Response<ureq::Body>) -> StorageError {
        let status = resp.status().as_u16();
        let msg = error_message(status, &body_text(resp, self.cfg.timeout));
        let kind = if status == 401 || status == 403 {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::Other
        };
        StorageError(
            what.to_owned(),
            io::Error::new(
                kind,
                format!("REST API: {msg} (the GITHUB_TOKEN needs the `actions: write` permission)"),
            ),
        )
    }
}

/// The most a REST page is read: a page of 100 entries is about 30 KB; 4 MiB leaves room and
/// bounds memory (and the time it may take, see [`body_time`]).
const REST_BODY: u64 = 4 << 20;

fn body_text_limited(resp: http::Response<ureq::Body>) -> String {
    resp.into_body()
        .with_config()
        .limit(REST_BODY)
        .read_to_string()
        .unwrap_or_default()
}

impl GhaStore {
    /// Every entry whose key starts with `prefix` (all versions), in the configured ref's
    /// scope ([`RestConfig::git_ref`]; every scope when it names none), through the REST API
    /// (100 a page).
    ///
    /// # Errors
    /// [`StorageError`]: no REST configuration, refused, or unreachable.
    pub fn rest_list(&self, prefix: &str) -> Result<Vec<RestEntry>, StorageError> {
        let what = format!("gha://{}/ (listing)", self.scope());
        let git_ref = match self.inner.rest(&what)?.git_ref.as_deref() {
            Some(ALL_REFS) | None => None,
            Some(r) => Some(r),
        };
        self.inner.rest_list(&what, prefix, git_ref)
    }
}
