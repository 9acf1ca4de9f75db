//! The control plane: twirp calls to `{ACTIONS_RESULTS_URL}/twirp/github.actions.results.
//! api.v1.CacheService/*` (create, finalize, look up an entry) with the runtime token; an
//! object is published as create, upload (see `blob`), finalize.

use std::io::{self, Read};

use serde::Deserialize;

use super::retry::{body_text, error_message, TOKEN_EXPIRED};
use super::{invalid, is_replacement_of, other, Inner, StorageError, MAX_ENTRY_KEY, SERVICE};

/// What [`Inner::publish`] does with an entry reserved by a job that never finished it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stuck {
    /// Write the object as a replacement entry (content-addressed objects).
    Replace,
    /// An error.
    Fail,
}

/// What the control plane said to a create.
pub(super) enum Created {
    Url(String),
    Exists,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct CreateReply {
    ok: bool,
    signed_upload_url: String,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct FinalizeReply {
    ok: bool,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LookupReply {
    ok: bool,
    signed_download_url: String,
    matched_key: String,
}

impl Inner {
    pub(super) fn twirp_url(&self, method: &str) -> String {
        let base = self.cfg.results_url.trim_end_matches('/');
        format!("{base}/{SERVICE}/{method}")
    }

    /// One twirp call; `Ok(None)` for HTTP 409 (`already_exists`).
    pub(super) fn twirp<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        what: &str,
        body: &serde_json::Value,
    ) -> Result<Option<T>, StorageError> {
        let url = self.twirp_url(method);
        let payload = serde_json::to_vec(body).expect("JSON of a JSON value");
        let resp = self.send(what, &url, &|| {
            self.agent
                .post(&url)
                .header(
                    "Authorization",
                    &format!("Bearer {}", self.cfg.runtime_token),
                )
                .header("Content-Type", "application/json")
                .send(&payload[..])
        })?;
        let status = resp.status().as_u16();
        match status {
            200 => {
                let text = resp
                    .into_body()
                    .with_config()
                    .limit(super::CONTROL_BODY)
                    .read_to_string()
                    .map_err(|e| other(what, format!("{method}: reading the reply: {e}")))?;
                let reply = serde_json::from_str(&text).map_err(|e| {
                    other(
                        what,
                        format!("{method}: the reply is not what the service sends: {e}"),
                    )
                })?;
                Ok(Some(reply))
            }
            409 => Ok(None),
            401 => Err(StorageError(
                what.to_owned(),
                io::Error::new(io::ErrorKind::PermissionDenied, TOKEN_EXPIRED),
            )),
            403 => Err(StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{method} refused: {}",
                        error_message(status, &body_text(resp, self.cfg.timeout))
                    ),
                ),
            )),
            _ => Err(other(
                what,
                format!(
                    "{method}: {}",
                    error_message(status, &body_text(resp, self.cfg.timeout))
                ),
            )),
        }
    }

    /// The newest entry whose key is `key` (or starts with it), else starts with one of
    /// `restore_keys` in order: (matched entry key, download URL).
    pub(super) fn lookup(
        &self,
        what: &str,
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<(String, String)>, StorageError> {
        let mut body = serde_json::json!({ "key": key, "version": self.version });
        if !restore_keys.is_empty() {
            body["restore_keys"] = serde_json::json!(restore_keys);
        }
        let reply: LookupReply = self
            .twirp("GetCacheEntryDownloadURL", what, &body)?
            .unwrap_or_default();
        if !reply.ok || reply.signed_download_url.is_empty() {
            return Ok(None);
        }
        self.urls
            .lock()
            .expect("urls")
            .insert(reply.matched_key.clone(), reply.signed_download_url.clone());
        Ok(Some((reply.matched_key, reply.signed_download_url)))
    }

    /// The download URL of the entry `entry`, or of its newest replacement
    /// (`{entry}~{16 hex}`, see [`Storage::put`]); from an earlier lookup if any. One round
    /// trip, two when the service answers with another entry that starts with `entry`.
    pub(super) fn url_of(&self, what: &str, entry: &str) -> Result<Option<String>, StorageError> {
        if let Some(u) = self.urls.lock().expect("urls").get(entry) {
            return Ok(Some(u.clone()));
        }
        let replaced = format!("{entry}~");
        let found = match self.lookup(what, entry, std::slice::from_ref(&replaced))? {
            Some((m, url)) if m == entry || is_replacement_of(&m, entry) => Some(url),
            Some(_) => match self.lookup(what, &replaced, std::slice::from_ref(&replaced))? {
                Some((m, url)) if is_replacement_of(&m, entry) => Some(url),
                _ => None,
            },
            None => None,
        };
        if let Some(u) = &found {
            self.urls
                .lock()
                .expect("urls")
                .insert(entry.to_owned(), u.clone());
        }
        Ok(found)
    }

    /// A stamp for a replacement entry: the time in nanoseconds, strictly increasing.
    pub(super) fn next_stamp(&self) -> u64 {
        let mut last = self.last_stamp.lock().expect("stamp");
        *last = (crate::clock::now_nanos().max(0) as u64).max(*last + 1);
        *last
    }

    pub(super) fn forget(&self, entry: &str) {
        self.urls.lock().expect("urls").remove(entry);
    }

    /// Create the entry, upload `size` bytes from `source`, finalize. False when the entry
    /// exists already and is readable.
    ///
    /// An entry that exists but does not become readable was reserved by a job that never
    /// finished it (a save killed between create and finalize): the service refuses every
    /// create of it for a day or for ever. With `stuck`, [`Stuck::Replace`], the object is
    /// then written as a replacement `{entry}~{stamp}`, which reads take for the object (see
    /// [`Inner::url_of`]): sound for a content-addressed object (any copy holds the same
    /// bytes; a job that was really uploading it meanwhile only costs a duplicate). A
    /// snapshot's entry ([`Stuck::Fail`]) cannot be replaced that way: an error.
    pub(super) fn publish(
        &self,
        what: &str,
        entry: &str,
        size: u64,
        source: &mut dyn Read,
        stuck: Stuck,
    ) -> Result<bool, StorageError> {
        if entry.len() > MAX_ENTRY_KEY {
            return Err(invalid(
                what,
                format!(
                    "the entry key would be {} characters, more than the {MAX_ENTRY_KEY} the \
                     GitHub Actions cache allows (use a shorter key or scope)",
                    entry.len()
                ),
            ));
        }
        let body = serde_json::json!({ "key": entry, "version": self.version });
        let url = match self.twirp::<CreateReply>("CreateCacheEntry", what, &body)? {
            None => Created::Exists,
            Some(r) if r.ok && !r.signed_upload_url.is_empty() => Created::Url(r.signed_upload_url),
            Some(r) => {
                return Err(StorageError(
                    what.to_owned(),
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("CreateCacheEntry refused: {}", r.message),
                    ),
                ))
            }
        };
        let url = match url {
            Created::Url(u) => u,
            Created::Exists => {
                // Readable: done. Not yet: another job (a parallel save of the same object)
                // may be uploading it right now; give it a few pauses to finish.
                let mut pause = self.cfg.retry_pause;
                for attempt in 1..=self.cfg.tries {
                    if self.url_of(what, entry)?.is_some() {
                        return Ok(false);
                    }
                    if attempt < self.cfg.tries {
                        std::thread::sleep(pause);
                        pause *= 2;
                    }
                }
                if stuck == Stuck::Replace {
                    let replacement = format!("{entry}~{:016x}", self.next_stamp());
                    eprintln!(
                        "storesync: {what}: its cache entry was reserved but never finished (a \
                         save killed before the end?); writing it as {replacement}"
                    );
                    self.publish(what, &replacement, size, source, Stuck::Fail)?;
                    self.forget(entry);
                    return Ok(true);
                }
                return Err(StorageError(
                    what.to_owned(),
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "the entry is reserved by another job that has not finished uploading \
                         it (or gave up); try again later",
                    ),
                ));
            }
        };
        self.upload(what, &url, size, source)?;
        let body = serde_json::json!({
            "key": entry,
            "version": self.version,
            "size_bytes": size.to_string(),
        });
        match self.twirp::<FinalizeReply>("FinalizeCacheEntryUpload", what, &body)? {
            Some(r) if r.ok => Ok(true),
            Some(r) => Err(other(
                what,
                format!("FinalizeCacheEntryUpload refused: {}", r.message),
            )),
            None => Err(other(what, "FinalizeCacheEntryUpload: HTTP 409".into())),
        }
    }
}
