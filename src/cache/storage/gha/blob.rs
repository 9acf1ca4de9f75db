//! The data plane: Azure Blob through the signed URLs the control plane returns. Uploads are
//! one Put Blob up to [`GhaConfig::block_size`], else Put Block per block and Put Block List
//! (memory: one block); downloads are GETs, with `Range` for part of an object, streamed. A
//! writer spools to an anonymous temporary file that a background thread uploads after
//! [`ObjectWriter::commit`].
//!
//! [`GhaConfig::block_size`]: super::GhaConfig::block_size

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use base64::Engine as _;
use ureq::http;

use super::super::Storage as _;
use super::retry::{body_text, error_message};
use super::twirp::Stuck;
use super::{
    body_time, not_found, other, GhaStore, Inner, ObjectWriter, StorageError, UPLOAD_QUEUE,
    X_MS_VERSION,
};

impl Inner {
    /// Upload to a signed URL: one Put Blob up to a block, else Put Block per block and Put
    /// Block List. Memory: one block.
    pub(super) fn upload(
        &self,
        what: &str,
        url: &str,
        size: u64,
        source: &mut dyn Read,
    ) -> Result<(), StorageError> {
        let block = self.cfg.block_size.max(1);
        let read_err = |e: io::Error| StorageError(what.to_owned(), e);
        if size <= block as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            source.take(size).read_to_end(&mut buf).map_err(read_err)?;
            if buf.len() as u64 != size {
                return Err(read_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spooled object is shorter than written",
                )));
            }
            return self.put(what, "Put Blob", url, &buf, true);
        }
        let mut buf = vec![0u8; block];
        let mut ids = Vec::new();
        let mut left = size;
        while left > 0 {
            let n = (left.min(block as u64)) as usize;
            source.read_exact(&mut buf[..n]).map_err(read_err)?;
            let id = base64::engine::general_purpose::STANDARD
                .encode(format!("storesync-block-{:08}", ids.len()));
            let block_url = format!("{url}&comp=block&blockid={}", percent(&id));
            self.put(what, "Put Block", &block_url, &buf[..n], false)?;
            ids.push(id);
            left -= n as u64;
        }
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for id in &ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        self.put(
            what,
            "Put Block List",
            &format!("{url}&comp=blocklist"),
            xml.as_bytes(),
            false,
        )
    }

    pub(super) fn put(
        &self,
        what: &str,
        op: &str,
        url: &str,
        data: &[u8],
        blob: bool,
    ) -> Result<(), StorageError> {
        let resp = self.send(what, url, &|| {
            let mut r = self
                .agent
                .put(url)
                .config()
                .timeout_send_body(Some(body_time(self.cfg.timeout, data.len() as u64)))
                .build()
                .header("x-ms-version", X_MS_VERSION);
            if blob {
                r = r.header("x-ms-blob-type", "BlockBlob");
            }
            self.transfer.uploaded(data.len() as u64);
            r.send(data)
        })?;
        let status = resp.status().as_u16();
        if status == 201 || status == 200 {
            return Ok(());
        }
        Err(other(
            what,
            format!(
                "{op} to the cache's blob storage: {}",
                error_message(status, &body_text(resp, self.cfg.timeout))
            ),
        ))
    }

    /// GET an entry's blob (a range of it, or all), retrying once with a fresh URL when a
    /// remembered one was refused (signed URLs expire).
    pub(super) fn download(
        &self,
        what: &str,
        entry: &str,
        range: Option<(u64, u64)>,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        for attempt in 0..2 {
            let Some(url) = self.url_of(what, entry)? else {
                return Err(not_found(what));
            };
            let resp = self.send(what, &url, &|| {
                // The body's time is bounded by its reader (see `Paced`), from its length.
                let mut r = self
                    .agent
                    .get(&url)
                    .config()
                    .timeout_recv_body(None)
                    .build()
                    .header("x-ms-version", X_MS_VERSION);
                if let Some((offset, len)) = range {
                    r = r.header("Range", &format!("bytes={offset}-{}", offset + len - 1));
                }
                r.call()
            })?;
            let status = resp.status().as_u16();
            match status {
                200 | 206 => return Ok(resp),
                404 => {
                    self.forget(entry);
                    return Err(StorageError(
                        what.to_owned(),
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "evicted from the GitHub Actions cache ({})",
                                error_message(status, &body_text(resp, self.cfg.timeout))
                            ),
                        ),
                    ));
                }
                403 if attempt == 0 => {
                    self.forget(entry);
                    continue;
                }
                416 => {
                    return Err(StorageError(
                        what.to_owned(),
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the range is beyond the end of the object: truncated",
                        ),
                    ))
                }
                _ => {
                    return Err(other(
                        what,
                        format!(
                            "download from the cache's blob storage: {}",
                            error_message(status, &body_text(resp, self.cfg.timeout))
                        ),
                    ))
                }
            }
        }
        unreachable!("the loop returns")
    }
}

/// Percent-encode base64 for a query string.
pub(super) fn percent(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A background thread uploading committed writers one after the other; its first error
/// is reported by [`Storage::sync`].
pub(super) struct Uploader {
    jobs: mpsc::SyncSender<(File, u64, String, String)>,
    thread: JoinHandle<Result<(), StorageError>>,
}

impl Uploader {
    pub(super) fn start(inner: Arc<Inner>) -> io::Result<Self> {
        let (jobs, rx) = mpsc::sync_channel::<(File, u64, String, String)>(UPLOAD_QUEUE);
        let thread = std::thread::Builder::new()
            .name("gha-uploader".into())
            .spawn(move || {
                let mut first_error = Ok(());
                for (mut file, size, entry, what) in rx {
                    if first_error.is_err() {
                        continue;
                    }
                    let r = file
                        .rewind()
                        .map_err(|e| StorageError(what.clone(), e))
                        .and_then(|()| {
                            inner.publish(&what, &entry, size, &mut file, Stuck::Replace)
                        });
                    if let Err(e) = r {
                        first_error = Err(e);
                    }
                }
                first_error
            })?;
        Ok(Uploader { jobs, thread })
    }

    pub(super) fn finish(self) -> Result<(), StorageError> {
        drop(self.jobs);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(other("gha uploader", "the thread panicked".into())))
    }
}

/// A writer spooling to an anonymous temporary file.
pub(super) struct GhaWriter<'a> {
    pub(super) store: &'a GhaStore,
    pub(super) file: File,
    pub(super) len: u64,
}

impl Write for GhaWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for GhaWriter<'_> {
    fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError> {
        let entry = self.store.entry(key)?;
        let what = self.store.describe(key);
        let mut slot = self.store.uploader.lock().expect("uploader");
        if slot.is_none() {
            *slot = Some(
                Uploader::start(Arc::clone(&self.store.inner))
                    .map_err(|e| StorageError(what.clone(), e))?,
            );
        }
        let up = slot.as_ref().expect("started above");
        up.jobs
            .send((self.file, self.len, entry, what.clone()))
            .map_err(|_| other(&what, "the upload thread stopped".into()))
    }
}

/// A response body that must arrive within [`body_time`] of its length (from when its
/// reading starts): an error once it takes longer, or a read waits longer than the timeout.
pub(super) struct Paced {
    body: ureq::BodyReader<'static>,
    bytes: u64,
    allowed: std::time::Duration,
    deadline: std::time::Instant,
}

impl Paced {
    /// `resp`'s body, of `bytes`, allowed [`body_time`] of `timeout`.
    pub(super) fn new(
        timeout: std::time::Duration,
        resp: http::Response<ureq::Body>,
        bytes: u64,
    ) -> Self {
        let allowed = body_time(timeout, bytes);
        Paced {
            body: resp.into_body().into_reader(),
            bytes,
            allowed,
            deadline: std::time::Instant::now() + allowed,
        }
    }
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let too_slow = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the download is too slow: {} bytes not received within {} s (at least \
                     {} KiB/s after the first {} s are expected)",
                    self.bytes,
                    self.allowed.as_secs(),
                    super::MIN_RATE >> 10,
                    self.allowed.as_secs() - self.bytes / super::MIN_RATE,
                ),
            )
        };
        if std::time::Instant::now() > self.deadline {
            return Err(too_slow());
        }
        match self.body.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the download stopped: {e}"),
            )),
            Err(e) => Err(e),
            Ok(n) if n > 0 && std::time::Instant::now() > self.deadline => Err(too_slow()),
            Ok(n) => Ok(n),
        }
    }
}

/// A reader of exactly `left` bytes of a response body.
pub(super) struct ExactReader<'t> {
    body: Paced,
    left: u64,
    transfer: &'t super::super::Transfer,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.body.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the download ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        self.transfer.downloaded(n as u64);
        Ok(n)
    }
}

pub(super) fn content_length(resp: &http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The first and last byte of a partial answer's `Content-Range: bytes FIRST-LAST/SIZE`.
pub(super) fn content_range(resp: &http::Response<ureq::Body>) -> Option<(u64, u64)> {
    parse_content_range(resp.headers().get("content-range")?.to_str().ok()?)
}

/// `bytes FIRST-LAST/SIZE` (the unit in any case, as RFC 9110 allows; SIZE may be `*`):
/// FIRST and LAST, digits only.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let (unit, rest) = v.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (span, _size) = rest.trim_start().split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (digits(first)?, digits(last)?);
    (first <= last).then_some((first, last))
}

impl GhaStore {
    pub(super) fn read_whole(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        let resp = self.inner.download(&what, &entry, None)?;
        if let Some(size) = content_length(&resp).filter(|&s| s > max) {
            return Err(StorageError(
                what,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{size} bytes, more than the {max} an object of this kind may have"),
                ),
            ));
        }
        let expect = content_length(&resp).unwrap_or(max);
        let mut out = Vec::new();
        Paced::new(self.inner.cfg.timeout, resp, expect)
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| StorageError(what.clone(), e))?;
        self.inner.transfer.downloaded(out.len() as u64);
        if out.len() as u64 > max {
            return Err(StorageError(
                what,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than the {max} bytes an object of this kind may have"),
                ),
            ));
        }
        Ok(out)
    }

    pub(super) fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        let beyond = || {
            StorageError(
                what.clone(),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range {offset}+{len} is beyond the end of the object: truncated"),
                ),
            )
        };
        let Some(end) = offset.checked_add(len) else {
            return Err(beyond());
        };
        if len == 0 {
            return match self.size(key)? {
                Some(size) if end <= size => Ok(Box::new(io::empty())),
                Some(_) => Err(beyond()),
                None => Err(not_found(&what)),
            };
        }
        let resp = self.inner.download(&what, &entry, Some((offset, len)))?;
        let got = content_length(&resp);
        let whole_from_start = resp.status().as_u16() == 200 && offset == 0;
        if got.is_some_and(|g| g < len) || (resp.status().as_u16() == 200 && !whole_from_start) {
            return Err(beyond());
        }
        // A partial answer says which bytes it holds: those asked for, or fewer at the end
        // of the object; any others are not the object's bytes at this offset.
        if resp.status().as_u16() == 206 {
            match content_range(&resp) {
                Some((first, last)) if first == offset && last == end - 1 => {}
                Some((first, last)) if first == offset && last < end - 1 => return Err(beyond()),
                told => {
                    return Err(other(
                        &what,
                        format!(
                            "bytes {offset}-{} asked for, the blob storage answered with {}",
                            end - 1,
                            match told {
                                Some((a, b)) => format!("bytes {a}-{b}"),
                                None => "no valid Content-Range".to_owned(),
                            }
                        ),
                    ))
                }
            }
        }
        Ok(Box::new(ExactReader {
            body: Paced::new(self.inner.cfg.timeout, resp, len),
            left: len,
            transfer: &self.inner.transfer,
        }))
    }

    /// Costs a lookup (unless one was made for this object already) and a HEAD of the blob:
    /// two round trips. An evicted blob counts as absent.
    pub(super) fn blob_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let entry = self.entry(key)?;
        let what = self.describe(key);
        for attempt in 0..2 {
            let Some(url) = self.inner.url_of(&what, &entry)? else {
                return Ok(None);
            };
            let resp = self.inner.send(&what, &url, &|| {
                self.inner
                    .agent
                    .head(&url)
                    .header("x-ms-version", X_MS_VERSION)
                    .call()
            })?;
            match resp.status().as_u16() {
                200 => {
                    return content_length(&resp).map(Some).ok_or_else(|| {
                        other(&what, "the blob storage sent no Content-Length".into())
                    })
                }
                404 => {
                    self.inner.forget(&entry);
                    return Ok(None);
                }
                403 if attempt == 0 => self.inner.forget(&entry),
                s => {
                    return Err(other(
                        &what,
                        format!(
                            "HEAD of the blob: {}",
                            error_message(s, &body_text(resp, self.inner.cfg.timeout))
                        ),
                    ))
                }
            }
        }
        Err(other(
            &what,
            "the blob storage refused the signed URL twice".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_ranges_as_servers_send_them_and_nothing_else() {
        for (v, want) in [
            ("bytes 0-9/10", Some((0, 9))),
            ("bytes 50-59/*", Some((50, 59))),
            ("Bytes 0-9/10", Some((0, 9))),
            ("bytes  0-9/10", Some((0, 9))),
            ("bytes 0-9/10 ", Some((0, 9))),
            ("bytes +0-+9/10", None),
            ("bytes 9-0/10", None),
            ("bytes 0-9", None),
            ("bytes */10", None),
            ("items 0-9/10", None),
            ("bytes 0 - 9/10", None),
        ] {
            assert_eq!(parse_content_range(v), want, "{v:?}");
        }
    }
}
