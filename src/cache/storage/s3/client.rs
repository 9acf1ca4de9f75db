//! The S3 client shared by the store and its background tasks: configuration from the
//! environment, object names under the prefix, requests (HEAD, ranged GET) and the mapping of
//! `object_store` errors to [`StorageError`]s that name the object and say what to do.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpResponseBody, HttpService,
    ReqwestConnector,
};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutPayload, RetryConfig,
};

use super::{CREATE_TRIES, RETRIES, RETRY_TIMEOUT};
use crate::cache::storage::{check_key, StorageError, Transfer};

/// What background tasks share with the store.
pub(super) struct Inner {
    pub(super) store: AmazonS3,
    pub(super) bucket: String,
    /// `""` or `a/b` (no slash at either end).
    pub(super) prefix: String,
    /// For messages: where requests go.
    pub(super) endpoint: String,
    /// Set once a request failed for want of an answer: later requests fail at once.
    down: Mutex<Option<String>>,
    /// Transfer figures (requests and retries counted by [`Counting`]).
    pub(super) transfer: Arc<Transfer>,
}

/// The HTTP client under `object_store`'s retry loop, counting each attempt, its body, and
/// the attempts that will be retried (5xx, 429, 408, no answer).
#[derive(Debug)]
struct Counting {
    inner: HttpClient,
    transfer: Arc<Transfer>,
}

impl HttpService for Counting {
    fn call<'a, 'b>(
        &'a self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            self.transfer.request();
            self.transfer.uploaded(req.body().content_length() as u64);
            let capped = !(req.method().as_str() == "GET" && req.uri().query().is_none());
            let r = self.inner.execute(req).await.map(|resp| {
                // Not an object's bytes (a listing page, an error reply, ...): `object_store`
                // reads those whole into memory.
                if capped || !resp.status().is_success() {
                    resp.map(|body| {
                        HttpResponseBody::new(Capped {
                            body,
                            left: MAX_REPLY,
                        })
                    })
                } else {
                    resp
                }
            });
            let transient = match &r {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    s >= 500 || s == 429 || s == 408
                }
                Err(_) => true,
            };
            if transient {
                self.transfer.retry();
            }
            r
        })
    }
}

/// The most bytes of a reply that is not an object's contents (a listing page, an error
/// reply, a multipart upload's answers) that are read: `object_store` reads those whole into
/// memory before parsing them, so a server sending an endless one (chunked) would be read
/// until memory runs out. A page of 1,000 keys is about 300 KB.
pub const MAX_REPLY: u64 = 16 << 20;

/// A response body refused at its first byte beyond `left`.
struct Capped {
    body: HttpResponseBody,
    left: u64,
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        use std::task::Poll;
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n > self.left {
                self.left = 0;
                return Poll::Ready(Some(Err(HttpError::new(
                    object_store::client::HttpErrorKind::Decode,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the server's reply is more than {MAX_REPLY} bytes (not an object's \
                             contents: a listing page or an error)"
                        ),
                    ),
                ))));
            }
            self.left -= n;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // A declared length beyond the cap is not room to reserve.
        let mut h = http_body::SizeHint::new();
        h.set_upper(self.left);
        h.set_lower(self.body.size_hint().lower().min(self.left));
        h
    }
}

/// Builds [`Counting`] clients over `object_store`'s own (reqwest) client.
#[derive(Debug)]
struct CountingConnector(Arc<Transfer>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Counting {
            inner: ReqwestConnector::default().connect(options)?,
            transfer: self.0.clone(),
        }))
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl Inner {
    /// The client for `s3://bucket/prefix` configured from the `AWS_*` names of `vars`.
    ///
    /// # Errors
    /// [`StorageError`] naming the location when the configuration is invalid.
    pub(super) fn configure(
        bucket: &str,
        prefix: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Inner, StorageError> {
        let prefix = prefix.trim_matches('/').to_string();
        let here = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let invalid = |why: String| {
            StorageError(
                here.clone(),
                io::Error::new(io::ErrorKind::InvalidInput, why),
            )
        };
        if bucket.is_empty() || bucket.contains('/') {
            return Err(invalid("not a bucket name".into()));
        }
        if !prefix.is_empty() && !check_key(&prefix) {
            return Err(invalid(
                "the prefix must be `/`-separated names of letters, digits, `.`, `_` and `-`"
                    .into(),
            ));
        }
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|k| vars.get(*k).filter(|v| !v.is_empty()).cloned());
        if let Some(e) = &endpoint {
            let allowed = vars.get("AWS_ALLOW_HTTP").is_some_and(|v| truthy(v));
            if e.to_ascii_lowercase().starts_with("http://") && !allowed {
                return Err(invalid(format!(
                    "the endpoint {e} is plain HTTP: set AWS_ALLOW_HTTP=true to allow it"
                )));
            }
        }
        let region = vars
            .get("AWS_REGION")
            .or_else(|| vars.get("AWS_DEFAULT_REGION"))
            .cloned()
            .unwrap_or_else(|| "us-east-1".into());
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_read_timeout(Duration::from_secs(30))
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            });
        // As `AmazonS3Builder::from_env` does, over the defaults above.
        for (k, v) in &vars {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                if !matches!(key, AmazonS3ConfigKey::Bucket) {
                    b = b.with_config(key, v);
                }
            }
        }
        let transfer = Arc::new(Transfer::default());
        let store = b
            .with_http_connector(CountingConnector(transfer.clone()))
            .build()
            .map_err(|e| invalid(format!("S3 configuration: {e}")))?;
        Ok(Inner {
            store,
            bucket: bucket.to_string(),
            prefix,
            endpoint: endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
            down: Mutex::default(),
            transfer,
        })
    }
}

/// Whether the error, or one it wraps, is a request that got no answer: no connection, a
/// timeout, a connection cut.
pub(super) fn no_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        cur = err.source();
    }
    false
}

/// The HTTP status of a failed request, from the message `object_store` gives: it maps
/// 403 and 404 to their own variants for most requests, but not for listings.
pub(super) fn http_status(msg: &str) -> Option<u16> {
    let start = msg.find("non-2xx status code: ")? + "non-2xx status code: ".len();
    msg.get(start..start + 3)?.parse().ok()
}

/// The text of element `tag` in a server's XML error body, if the message carries one.
pub(super) fn xml_field<'a>(msg: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = msg.find(&open)? + open.len();
    let len = msg[start..].find(&format!("</{tag}>"))?;
    Some(&msg[start..start + len])
}

/// The S3 error code in a server's XML error body, if the message carries one.
pub(super) fn s3_code(msg: &str) -> Option<&str> {
    xml_field(msg, "Code")
}

/// An `object_store` message with a server's XML error body replaced by its code and message.
pub(super) fn brief(msg: &str) -> String {
    match msg.find("<?xml").or_else(|| msg.find("<Error>")) {
        Some(at) => {
            let mut out = msg[..at].trim_end_matches([' ', ':']).to_string();
            if let Some(code) = s3_code(msg) {
                out.push_str(&format!(": {code}"));
            }
            if let Some(m) = xml_field(msg, "Message") {
                out.push_str(&format!(": {m}"));
            }
            out
        }
        None => msg.to_string(),
    }
}

impl Inner {
    pub(super) fn describe(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, true) => format!("s3://{}", self.bucket),
            (true, false) => format!("s3://{}/{key}", self.bucket),
            (false, true) => format!("s3://{}/{}", self.bucket, self.prefix),
            (false, false) => format!("s3://{}/{}/{key}", self.bucket, self.prefix),
        }
    }

    pub(super) fn path(&self, key: &str) -> Result<Path, StorageError> {
        if !check_key(key) {
            return Err(StorageError(
                key.to_owned(),
                io::Error::new(io::ErrorKind::InvalidInput, "not a valid cache key"),
            ));
        }
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(full).map_err(|e| {
            StorageError(
                self.describe(key),
                io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            )
        })
    }

    /// Fail at once when an earlier request got no answer.
    pub(super) fn check_up(&self, key: &str) -> Result<(), StorageError> {
        match &*self.down.lock().expect("down") {
            Some(cause) => Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "not tried: {} stopped answering earlier ({cause}); \
                         run again once it answers",
                        self.endpoint
                    ),
                ),
            )),
            None => Ok(()),
        }
    }

    /// An `object_store` error as a [`StorageError`] naming `key`, with a hint where one
    /// helps. A request that got no answer marks the endpoint as down.
    pub(super) fn err(&self, key: &str, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        let what = self.describe(key);
        let raw = e.to_string();
        let msg = brief(&raw);
        let status = http_status(&raw);
        let denied = (
            io::ErrorKind::PermissionDenied,
            format!(
                "access denied by {}{}: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN) and the bucket's policy ({msg})",
                self.endpoint,
                s3_code(&raw).map(|c| format!(" ({c})")).unwrap_or_default()
            ),
        );
        let (kind, text) = match &e {
            E::NotFound { .. } => (io::ErrorKind::NotFound, format!("not found ({msg})")),
            E::Generic { .. } if status == Some(404) => {
                (io::ErrorKind::NotFound, format!("not found ({msg})"))
            }
            E::AlreadyExists { .. } | E::Precondition { .. } => (io::ErrorKind::AlreadyExists, msg),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => denied,
            E::Generic { .. } if matches!(status, Some(401 | 403)) => denied,
            E::NotSupported { .. } | E::NotImplemented { .. } => (io::ErrorKind::Unsupported, msg),
            _ if no_answer(&e) => {
                let mut down = self.down.lock().expect("down");
                if down.is_none() {
                    *down = Some(format!("a request for {what} got no answer after retries"));
                }
                (
                    io::ErrorKind::TimedOut,
                    format!("no answer from {} after retries ({msg})", self.endpoint),
                )
            }
            _ => (io::ErrorKind::Other, msg),
        };
        StorageError(what, io::Error::new(kind, text))
    }

    pub(super) fn too_short(&self, key: &str, offset: u64, len: u64, size: u64) -> StorageError {
        StorageError(
            self.describe(key),
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {offset}+{len} is beyond the end ({size} bytes): truncated object"),
            ),
        )
    }

    pub(super) async fn head_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.check_up(key)?;
        match self.store.head(&self.path(key)?).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Publish `data` as `key` unless it exists: a create-only PUT (`If-None-Match: *`), true
    /// when written. An answer that the key exists (412, or the 409 `ConditionalRequestConflict`
    /// AWS sends while another conditional write of the key is in progress or a delete raced
    /// this one; `object_store` reports both alike) counts as done only once a HEAD finds the
    /// object: that other write may never complete (its writer killed, or the delete won),
    /// and an index or snapshot must not name an object that was never stored. Otherwise the
    /// PUT is tried again, [`CREATE_TRIES`] times in all (0.2 s doubling), then it is an error.
    pub(super) async fn create(&self, key: &str, data: Bytes) -> Result<bool, StorageError> {
        let path = self.path(key)?;
        let mut pause = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            self.check_up(key)?;
            let payload = PutPayload::from(data.clone());
            let e = match self
                .store
                .put_opts(&path, payload, PutMode::Create.into())
                .await
            {
                Ok(_) => return Ok(true),
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => e,
                Err(e) => return Err(self.err(key, e)),
            };
            if self.head_size(key).await?.is_some() {
                return Ok(false);
            }
            if attempt >= CREATE_TRIES {
                return Err(StorageError(
                    self.describe(key),
                    io::Error::other(format!(
                        "the server answered {attempt} create-only PUTs with \"exists\" but holds \
                         no such object (a conflicting write or delete of it that did not end; \
                         try again): {}",
                        brief(&e.to_string())
                    )),
                ));
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt += 1;
        }
    }

    /// The body of `r` (a response for `key`), streamed, each chunk counted as downloaded:
    /// `None` at the first byte beyond `limit`. A body longer than its headers say (sent
    /// chunked, or until the connection closes) is refused as it comes, never held whole (a
    /// 10-byte range answered with 512 MiB was).
    pub(super) async fn body_within(
        &self,
        key: &str,
        r: object_store::GetResult,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let mut out = Vec::with_capacity(limit.min(r.meta.size) as usize);
        let mut body = r.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.err(key, e))?;
            self.transfer.downloaded(chunk.len() as u64);
            if (out.len() + chunk.len()) as u64 > limit {
                return Ok(None);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// Bytes `range` of `key`, all of them; also the object's size.
    pub(super) async fn fetch(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<(Bytes, u64), StorageError> {
        self.check_up(key)?;
        let want = range.end - range.start;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let r = match self.store.get_opts(&self.path(key)?, opts).await {
            Ok(r) => r,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(self.err(key, e)),
            Err(e) => {
                // A range starting beyond the end is refused (416): say so plainly.
                let err = self.err(key, e);
                if let Ok(Some(size)) = self.head_size(key).await {
                    if range.end > size {
                        return Err(self.too_short(key, range.start, want, size));
                    }
                }
                return Err(err);
            }
        };
        let size = r.meta.size;
        if range.end > size {
            return Err(self.too_short(key, range.start, want, size));
        }
        let Some(bytes) = self.body_within(key, r, want).await? else {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("asked for {want} bytes at {}, received more", range.start),
                ),
            ));
        };
        let bytes = Bytes::from(bytes);
        if bytes.len() as u64 != want {
            return Err(StorageError(
                self.describe(key),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "asked for {want} bytes at {}, received {}",
                        range.start,
                        bytes.len()
                    ),
                ),
            ));
        }
        Ok((bytes, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_told_briefly() {
        let raw = "Generic S3 error: Error performing GET http://h/b in 2ms - Server returned \
                   non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>\
                   SignatureDoesNotMatch</Code><Message>The signature does not match.</Message>\
                   </Error>";
        assert_eq!(http_status(raw), Some(403));
        assert_eq!(s3_code(raw), Some("SignatureDoesNotMatch"));
        assert_eq!(
            brief(raw),
            "Generic S3 error: Error performing GET http://h/b in 2ms - Server returned non-2xx \
             status code: 403 Forbidden: SignatureDoesNotMatch: The signature does not match."
        );
        assert_eq!(brief("plain"), "plain");
    }
}
