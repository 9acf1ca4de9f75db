//! Sending a request to the service with the waits it asks for: HTTP 429 waits as
//! `Retry-After` says (exponential back-off without it) within [`GhaConfig::max_throttle_wait`]
//! in all, 500/502/503/504 and transport errors are retried [`GhaConfig::tries`] times; and
//! the messages of error replies.
//!
//! [`GhaConfig::max_throttle_wait`]: super::GhaConfig::max_throttle_wait
//! [`GhaConfig::tries`]: super::GhaConfig::tries

use std::io;
use std::time::Duration;

use serde::Deserialize;
use ureq::http;

use super::blob::Paced;
use super::{other, Inner, StorageError};

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct TwirpError {
    code: String,
    msg: String,
}

pub(super) const TOKEN_EXPIRED: &str =
    "the runtime token expired or is missing (ACTIONS_RUNTIME_TOKEN): it \
                             lives about 6 hours and only JavaScript actions receive it";

/// How long a throttled reply asks to wait, at least one second: `Retry-After` in seconds (an
/// HTTP date is not parsed), else, as GitHub's REST API says a spent rate limit,
/// `x-ratelimit-remaining: 0` until `x-ratelimit-reset` (epoch seconds). Never zero: a stream
/// of "429, Retry-After: 0" must still use up the wait allowed.
pub(super) fn retry_after(resp: &http::Response<ureq::Body>) -> Option<Duration> {
    let header = |name: &str| resp.headers().get(name)?.to_str().ok().map(str::trim);
    if let Some(s) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(s.max(1)));
    }
    if header("x-ratelimit-remaining")? != "0" {
        return None;
    }
    let reset: u64 = header("x-ratelimit-reset")?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

/// The text of an error reply, for its message: empty when longer than 64 KiB
/// ([`super::CONTROL_BODY`]), not UTF-8, or not read within the time a body of 64 KiB may take
/// ([`Paced`], of `timeout`): a download's request bounds no body's time itself (its reader
/// does), and an error reply trickling in was read for hours.
pub(super) fn body_text(resp: http::Response<ureq::Body>, timeout: Duration) -> String {
    use io::Read as _;
    let mut out = Vec::new();
    match Paced::new(timeout, resp, super::CONTROL_BODY)
        .take(super::CONTROL_BODY + 1)
        .read_to_end(&mut out)
    {
        Ok(n) if n as u64 <= super::CONTROL_BODY => String::from_utf8(out).unwrap_or_default(),
        _ => String::new(),
    }
}

/// The message of an error reply: a twirp `{code, msg}`, else the first line of the body.
pub(super) fn error_message(status: u16, text: &str) -> String {
    match serde_json::from_str::<TwirpError>(text) {
        Ok(e) if !e.code.is_empty() || !e.msg.is_empty() => {
            format!("HTTP {status} {}: {}", e.code, e.msg)
        }
        _ => {
            let line = text.lines().next().unwrap_or("").trim();
            let line: String = line.chars().take(300).collect();
            format!("HTTP {status} {line}")
        }
    }
}

/// The host (and port) of `url`, for messages and to remember a host that stopped
/// answering.
pub(super) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// Whether the request got no answer: no connection, or none in time.
fn no_answer(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Timeout(_)
            | ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
    )
}

impl Inner {
    /// Fail at once when an earlier request to `host` got no answer.
    fn check_up(&self, what: &str, host: &str) -> Result<(), StorageError> {
        match self.down.lock().expect("down").get(host) {
            Some(cause) => Err(StorageError(
                what.to_owned(),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "not tried: {host} stopped answering earlier ({cause}); run again once \
                         it answers"
                    ),
                ),
            )),
            None => Ok(()),
        }
    }

    /// Send a request built by `make` (again for each try), honouring a throttled reply's wait
    /// ([`retry_after`]: HTTP 429, or the REST API's 403 with rate-limit headers) within the
    /// configured total wait and retrying 500/502/503/504 and transport errors; returns the
    /// first other reply, whatever its status.
    ///
    /// A request to `url`'s host that got no answer (no connection, or none within
    /// [`GhaConfig::timeout`]) is tried again only while less than that timeout has passed
    /// since the first of its tries that got none in a row (time spent on answers, a throttled
    /// wait or a 5xx, is not time without an answer); once it gives up, every later request to that host fails at
    /// once, saying so, instead of waiting as long again (a restore from a silent service
    /// would wait once per object).
    ///
    /// [`GhaConfig::timeout`]: super::GhaConfig::timeout
    pub(super) fn send(
        &self,
        what: &str,
        url: &str,
        make: &dyn Fn() -> Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        let host = host_of(url);
        self.check_up(what, host)?;
        // When the tries without an answer in a row began.
        let mut unanswered: Option<std::time::Instant> = None;
        let mut throttled = Duration::ZERO;
        let mut backoff = Duration::from_secs(1);
        let mut failures = 0u32;
        let mut pause = self.cfg.retry_pause;
        loop {
            self.transfer.request();
            let tried = std::time::Instant::now();
            let made = make();
            if made.as_ref().is_ok() {
                unanswered = None;
            }
            let why = match made {
                Ok(resp)
                    if resp.status().as_u16() == 429
                        || (resp.status().as_u16() == 403 && retry_after(&resp).is_some()) =>
                {
                    let status = resp.status().as_u16();
                    let wait = retry_after(&resp).unwrap_or_else(|| {
                        let b = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        b
                    });
                    let text = body_text(resp, self.cfg.timeout);
                    if throttled + wait > self.cfg.max_throttle_wait {
                        return Err(StorageError(
                            what.to_owned(),
                            io::Error::new(
                                io::ErrorKind::WouldBlock,
                                format!(
                                    "the GitHub Actions cache kept throttling ({}): waited {} s, \
                                     the next wait of {} s would pass the limit of {} s \
                                     (STORESYNC_GHA_MAX_WAIT); about 200 uploads a minute are \
                                     allowed per repository, and the REST API allows one \
                                     deletion a second",
                                    error_message(status, &text),
                                    throttled.as_secs(),
                                    wait.as_secs(),
                                    self.cfg.max_throttle_wait.as_secs()
                                ),
                            ),
                        ));
                    }
                    // Visible on purpose: a wait of minutes must not look like a hang.
                    eprintln!(
                        "storesync: the GitHub Actions cache is throttling (HTTP {status}) {what}; \
                         waiting {} s as it asks",
                        wait.as_secs_f32()
                    );
                    std::thread::sleep(wait);
                    throttled += wait;
                    self.transfer.retry();
                    continue;
                }
                Ok(resp) if [500, 502, 503, 504].contains(&resp.status().as_u16()) => {
                    let status = resp.status().as_u16();
                    let wait = retry_after(&resp);
                    let msg = error_message(status, &body_text(resp, self.cfg.timeout));
                    if let Some(w) = wait.filter(|w| throttled + *w <= self.cfg.max_throttle_wait) {
                        // Azure's 503 ServerBusy says how long to wait, like a 429.
                        std::thread::sleep(w);
                        throttled += w;
                        self.transfer.retry();
                        continue;
                    }
                    msg
                }
                Ok(resp) => return Ok(resp),
                Err(e) if no_answer(&e) => {
                    failures += 1;
                    self.transfer.retry();
                    let since = *unanswered.get_or_insert(tried);
                    if failures >= self.cfg.tries || since.elapsed() >= self.cfg.timeout {
                        let why = format!("{e} (after {failures} tries)");
                        self.down
                            .lock()
                            .expect("down")
                            .entry(host.to_owned())
                            .or_insert_with(|| format!("{what}: {why}"));
                        return Err(StorageError(
                            what.to_owned(),
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no answer from {host}: {why}"),
                            ),
                        ));
                    }
                    std::thread::sleep(pause);
                    pause *= 2;
                    continue;
                }
                Err(e) => format!("{e}"),
            };
            failures += 1;
            self.transfer.retry();
            if failures >= self.cfg.tries {
                return Err(other(what, format!("{why} (after {failures} tries)")));
            }
            std::thread::sleep(pause);
            pause *= 2;
        }
    }
}
