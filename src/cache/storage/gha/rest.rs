//! The GitHub REST API for the cache entries of a repository: `GET /repos/{owner}/{repo}/
//! actions/caches` (listing by key prefix, 100 a page) and `DELETE` (with a `GITHUB_TOKEN`
//! that has `actions: write`); deletes are at least one second apart.

use std::io;
use std::time::{Duration, Instant};

use serde::Deserialize;
use ureq::http;

use super::retry::{body_text, error_message};
use super::{other, GhaStore, Inner, RestConfig, StorageError};

/// One entry as the REST API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct RestEntry {
    /// The service's id of the entry.
    pub id: u64,
    /// Its entry key.
    pub key: String,
    /// Its version.
    pub version: String,
    /// Its size.
    #[serde(default)]
    pub size_in_bytes: u64,
    /// When it was last read (RFC 3339).
    #[serde(default)]
    pub last_accessed_at: String,
}

#[derive(Deserialize)]
pub(super) struct RestPage {
    total_count: u64,
    actions_caches: Vec<RestEntry>,
}

impl Inner {
    pub(super) fn rest(&self, what: &str) -> Result<&RestConfig, StorageError> {
        self.cfg.rest.as_ref().ok_or_else(|| {
            StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "deleting from (or listing) the GitHub Actions cache needs the REST API: \
                     set GITHUB_TOKEN (with `actions: write`) and GITHUB_REPOSITORY",
                ),
            )
        })
    }

    /// Delete the entries keyed `entry` (all versions) through the REST API; absent is done.
    pub(super) fn rest_delete(&self, what: &str, entry: &str) -> Result<(), StorageError> {
        let rest = self.rest(what)?;
        {
            let mut last = self.last_delete.lock().expect("last delete");
            if let Some(t) = *last {
                let since = t.elapsed();
                if since < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_secs(1) - since);
                }
            }
            *last = Some(Instant::now());
        }
        let url = format!(
            "{}/repos/{}/actions/caches",
            rest.api_url.trim_end_matches('/'),
            rest.repository
        );
        let resp = self.send(what, &|| {
            self.agent
                .delete(&url)
                .header("Authorization", &format!("Bearer {}", rest.token))
                .header("Accept", "application/vnd.github+json")
                .query("key", entry)
                .call()
        })?;
        self.forget(entry);
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.rest_status(what, resp)),
        }
    }

    pub(super) fn rest_status(&self, what: &str, resp: http::Response<ureq::Body>) -> StorageError {
        let status = resp.status().as_u16();
        let msg = error_message(status, &body_text(resp));
        let kind = if status == 401 || status == 403 {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::Other
        };
        StorageError(
            what.to_owned(),
            io::Error::new(
                kind,
                format!("REST API: {msg} (the GITHUB_TOKEN needs `actions: write`)"),
            ),
        )
    }
}

impl GhaStore {
    /// Every entry whose key starts with `prefix` (all versions), newest first, through the
    /// REST API (100 a page). For a garbage collection; needs [`GhaConfig::rest`].
    ///
    /// # Errors
    /// [`StorageError`]: no REST configuration, refused, or unreachable.
    pub fn rest_list(&self, prefix: &str) -> Result<Vec<RestEntry>, StorageError> {
        let what = format!("gha://{}/ (listing)", self.scope());
        let rest = self.inner.rest(&what)?;
        let url = format!(
            "{}/repos/{}/actions/caches",
            rest.api_url.trim_end_matches('/'),
            rest.repository
        );
        let mut out = Vec::new();
        for page in 1u32.. {
            let page_s = page.to_string();
            let resp = self.inner.send(&what, &|| {
                self.inner
                    .agent
                    .get(&url)
                    .header("Authorization", &format!("Bearer {}", rest.token))
                    .header("Accept", "application/vnd.github+json")
                    .query("key", prefix)
                    .query("per_page", "100")
                    .query("page", &page_s)
                    .call()
            })?;
            if resp.status().as_u16() != 200 {
                return Err(self.inner.rest_status(&what, resp));
            }
            let text = body_text(resp);
            let p: RestPage = serde_json::from_str(&text)
                .map_err(|e| other(&what, format!("REST API: unexpected reply: {e}")))?;
            let n = p.actions_caches.len();
            out.extend(p.actions_caches);
            if n == 0 || out.len() as u64 >= p.total_count {
                break;
            }
        }
        Ok(out)
    }
}
