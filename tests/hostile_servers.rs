//! Remote backends against hostile servers: tiny HTTP servers on loopback answering with
//! what an attacker controlling S3 or the GitHub cache service could send. Each test failed
//! before its check (found by review); docs/SECURITY.md lists them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storesync::cache::storage::gha::{GhaConfig, GhaStore, RestConfig};
use storesync::cache::storage::{S3Store, Storage};

/// A request head as received: first line and headers (lowercased names).
struct Req {
    line: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serve on a free loopback port; `handle` writes one response per request (keep-alive
/// connections carry several). Returns the base URL and a counter of requests.
fn serve(
    handle: impl Fn(&Req, &mut TcpStream) -> std::io::Result<()> + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let handle = Arc::new(handle);
    let c2 = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let handle = handle.clone();
            let count = c2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    let req = Req {
                        line: line.trim_end().to_string(),
                        headers,
                    };
                    if let Some(n) = req
                        .header("content-length")
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        std::io::copy(&mut (&mut r).take(n), &mut std::io::sink()).unwrap();
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if handle(&req, &mut s).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, count)
}

fn s3_on(url: &str) -> S3Store {
    S3Store::with_env(
        "bkt",
        "pre",
        [
            ("AWS_ENDPOINT_URL", url),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

/// The GitHub cache service's client on the server at `url` (scope `sc`, one try).
fn gha_on(url: &str, rest: Option<RestConfig>) -> GhaStore {
    GhaStore::new(GhaConfig {
        results_url: url.to_owned(),
        runtime_token: "t".into(),
        scope: "sc".into(),
        max_throttle_wait: Duration::from_secs(5),
        block_size: 4 << 20,
        tries: 1,
        retry_pause: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        rest,
    })
    .unwrap()
}

fn peak_rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// A ranged GET of 10 bytes answered with a correct `206`/`Content-Range`/`Content-Length`
/// but a chunked body of 512 MiB: the whole body is buffered before its length is checked.
/// Run `f` on a thread; its result if it ends within `limit`, `None` if it still runs.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// A ranged GET of 10 bytes answered with a correct `206`, `Content-Range` and
/// `Content-Length`, but a chunked body of 512 MiB: the whole body was held before its
/// length was checked (521 MiB of peak RSS). It is refused at the first byte too many.
#[test]
fn s3_ranged_get_with_a_body_longer_than_asked_is_refused_as_it_comes() {
    const BODY: usize = 512 << 20;
    let (url, _) = serve(|req, s| {
        if !req.line.starts_with("GET ") {
            write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
        write!(
            s,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 10\r\n\
             Last-Modified: Sun, 06 Dec 2026 08:00:00 GMT\r\nETag: \"e\"\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )?;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..BODY / chunk.len() {
            write!(s, "{:x}\r\n", chunk.len())?;
            s.write_all(&chunk)?;
            s.write_all(b"\r\n")?;
        }
        s.write_all(b"0\r\n\r\n")?;
        Ok(())
    });
    let before = peak_rss_mib();
    let r = within(Duration::from_secs(60), move || {
        let store = s3_on(&url);
        let r = store.get_range("packs/x.pack", 0, 10).map(|mut r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v.len())
        });
        r.map_err(|e| e.to_string())
    })
    .expect("the ranged GET still runs after 60 s");
    let after = peak_rss_mib();
    let err = r.expect_err("a body longer than asked for was taken");
    assert!(err.contains("received more"), "{err}");
    assert!(
        after < before + 128,
        "a 10-byte ranged GET held {} MiB of the server's body",
        after - before
    );
}

/// `ListObjectsV2` pages that never end (the same `NextContinuationToken` every time, 1,000
/// keys a page): the listing ran for ever, holding every key (1.2 GB after 20 s). It is an
/// error at the first repeated token.
#[test]
fn s3_listing_whose_continuation_tokens_repeat_is_an_error() {
    let (url, count) = serve(|req, s| {
        let n = req.line.len() % 1000;
        let mut body = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Name>bkt</Name><Prefix>pre/snapshots/</Prefix><KeyCount>1000</KeyCount>\
             <MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>",
        );
        for i in 0..1000 {
            body.push_str(&format!(
                "<Contents><Key>pre/snapshots/{n}-{i}.snap</Key>\
                 <LastModified>2026-12-06T08:00:00.000Z</LastModified><Size>1</Size>\
                 <ETag>\"e\"</ETag></Contents>"
            ));
        }
        body.push_str("<NextContinuationToken>again</NextContinuationToken></ListBucketResult>");
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    let r = within(Duration::from_secs(60), move || {
        let store = s3_on(&url);
        let r = store.list("snapshots").map_err(|e| e.to_string());
        std::mem::forget(store);
        r
    });
    let pages = count.load(Ordering::SeqCst);
    let r = r.unwrap_or_else(|| panic!("the listing still runs after {pages} pages"));
    let err = r.expect_err("an endless listing ended without an error");
    assert!(err.contains("continuation token"), "{err}");
    assert_eq!(pages, 2);
}

/// The REST listing of GitHub's cache service answered with the same 100 entries on every
/// page: each id is listed once, so the count never reached the bound and the pages never
/// ended, each a request of the rate limit. Full pages of nothing new end it, with an error.
#[test]
fn gha_rest_listing_repeating_one_page_is_an_error() {
    let (url, count) = serve(|_req, s| {
        let entries: Vec<String> = (1..=100)
            .map(|i| {
                format!(
                    "{{\"id\":{i},\"key\":\"sc/packs/{i}.pack\",\"version\":\"v\",\
                     \"ref\":\"refs/heads/main\",\"size_in_bytes\":1,\
                     \"last_accessed_at\":\"2026-12-06T08:00:00Z\"}}"
                )
            })
            .collect();
        let body = format!(
            "{{\"total_count\":1000,\"actions_caches\":[{}]}}",
            entries.join(",")
        );
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    let api = url.clone();
    let r = within(Duration::from_secs(60), move || {
        let store = gha_on(
            &api,
            Some(RestConfig {
                api_url: api.clone(),
                repository: "o/r".into(),
                token: "g".into(),
                git_ref: Some("refs/heads/main".into()),
            }),
        );
        store
            .rest_list("sc/")
            .map(|v| v.len())
            .map_err(|e| e.to_string())
    });
    let pages = count.load(Ordering::SeqCst);
    let r = r.unwrap_or_else(|| panic!("the REST listing still runs after {pages} pages"));
    let err = r.expect_err("a listing of repeated pages ended without an error");
    assert!(err.contains("do not advance"), "{err}");
    assert!(pages <= 6, "{pages} pages requested");
}

/// A ranged read from GitHub's cache service answered `206` with bytes from another offset
/// (`Content-Range` says so): they were taken as the bytes asked for, and only the BLAKE3
/// check of what was decoded from them failed, naming no cause. The answer is refused
/// naming the range asked for and the range sent.
#[test]
fn gha_ranged_read_answered_with_another_range_is_refused() {
    let (url, _) = serve(|req, s| {
        if req.line.starts_with("POST") && req.line.contains("GetCacheEntryDownloadURL") {
            let addr = req.header("host").unwrap_or_default().to_string();
            let body = format!(
                "{{\"ok\":true,\"signed_download_url\":\"http://{addr}/blob/x?sig=1\",\
                 \"matched_key\":\"sc/packs/p.pack\"}}"
            );
            return write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        // Whatever range is asked for: the first ten bytes.
        write!(
            s,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\n\
             Content-Length: 10\r\n\r\n0123456789"
        )
    });
    let store = gha_on(&url, None);
    let err = match store.get_range("packs/p.pack", 50, 10) {
        Ok(mut r) => {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            panic!(
                "read {:?} from another range",
                String::from_utf8_lossy(&got)
            );
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("bytes 50-59 asked for") && err.contains("bytes 0-9"),
        "{err}"
    );
}

/// AWS answers a create-only PUT (`If-None-Match: *`) with `409 ConditionalRequestConflict`
/// while another conditional write of the key is in progress, or when a delete raced it: the
/// object may well never exist (that other writer killed, or the delete won). `object_store`
/// maps 409 to "already exists", so the PUT counted as done and a save went on to write an
/// index and a snapshot naming an object that was never stored. A 409 or 412 counts as done
/// only once a HEAD finds the object; otherwise the PUT is tried again, and a conflict that
/// does not clear is an error naming the object.
#[test]
fn s3_create_answered_409_conflict_is_done_only_once_the_object_is_there() {
    // Every PUT: 409. HEAD: 404 (nothing was ever stored).
    let (url, puts) = serve(|req, s| {
        if req.line.starts_with("PUT ") {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error>\
                        <Code>ConditionalRequestConflict</Code><Message>A conflicting \
                        conditional operation is currently in progress against this resource. \
                        Please try again.</Message></Error>";
            write!(
                s,
                "HTTP/1.1 409 Conflict\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        }
    });
    let store = s3_on(&url);
    let e = store
        .put_if_absent("index/a.idx", b"index bytes")
        .expect_err("a conflicted PUT of an absent object counted as already there");
    let msg = e.to_string();
    assert!(msg.contains("s3://bkt/pre/index/a.idx"), "{msg}");
    assert!(msg.contains("ConditionalRequestConflict"), "{msg}");
    assert!(
        puts.load(Ordering::SeqCst) > 2,
        "the PUT was not tried again"
    );
    // A pack: its upload runs in the background, and `sync` must report it.
    let mut w = store.writer().unwrap();
    w.write_all(b"pack bytes").unwrap();
    w.commit("packs/p.pack").unwrap();
    let e = store
        .sync()
        .expect_err("a conflicted pack upload counted as done");
    assert!(e.to_string().contains("packs/p.pack"), "{e}");

    // The first PUT conflicts, the second lands: written.
    let tried = Arc::new(AtomicUsize::new(0));
    let t = tried.clone();
    let (url, _) = serve(move |req, s| {
        if req.line.starts_with("PUT ") && t.fetch_add(1, Ordering::SeqCst) == 0 {
            write!(s, "HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\n\r\n")
        } else if req.line.starts_with("PUT ") {
            write!(
                s,
                "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n"
            )
        } else {
            write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        }
    });
    assert!(s3_on(&url).put_if_absent("index/b.idx", b"x").unwrap());
    assert_eq!(tried.load(Ordering::SeqCst), 2);
}

/// A GitHub cache service whose control plane accepts connections and never answers: each
/// request waited its timeout on every try, and every later request (one per object of a
/// restore) as long again. After one request got no answer, later ones fail at once, saying
/// so.
#[test]
fn gha_service_that_never_answers_fails_later_requests_at_once() {
    let (url, _) = serve(|_req, _s| {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(())
    });
    let r = within(Duration::from_secs(60), move || {
        let mut store = gha_on(&url, None);
        let first = std::time::Instant::now();
        let e1 = store.get("index/a.idx", 100).unwrap_err().to_string();
        let first = first.elapsed();
        let later = std::time::Instant::now();
        let e2 = store.get("index/b.idx", 100).unwrap_err().to_string();
        let e3 = store
            .get_range("packs/c.pack", 0, 10)
            .err()
            .map(|e| e.to_string());
        let later = later.elapsed();
        std::mem::forget(std::mem::replace(
            &mut store,
            gha_on("http://127.0.0.1:9", None),
        ));
        (e1, first, e2, e3, later)
    })
    .expect("requests to a silent service still wait after 60 s");
    let (e1, first, e2, e3, later) = r;
    assert!(e1.contains("index/a.idx"), "{e1}");
    assert!(
        first < Duration::from_secs(20),
        "the first request took {first:?}"
    );
    assert!(
        e2.contains("index/b.idx") && e2.contains("stopped answering"),
        "{e2}"
    );
    assert!(e3.is_some_and(|e| e.contains("stopped answering")));
    assert!(
        later < Duration::from_millis(500),
        "later requests took {later:?}"
    );
}

/// The answer to a GitHub cache request whose body trickles in (a byte every 200 ms, so
/// that no single read waits long): nothing bounded the whole body, and a 64 KiB read of a
/// pack would have taken 3.6 hours, a restore hanging with no word. A body is now refused
/// once it takes longer than the timeout plus a second per 64 KiB.
#[test]
fn gha_answers_trickling_in_are_cut_off() {
    fn trickle(s: &mut TcpStream, head: &str, body: &[u8]) -> std::io::Result<()> {
        s.write_all(head.as_bytes())?;
        for b in body {
            s.write_all(&[*b])?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
    // The blob storage trickles a ranged read.
    let (url, _) = serve(|req, s| {
        if req.line.starts_with("POST") {
            let addr = req.header("host").unwrap_or_default().to_string();
            let body = format!(
                "{{\"ok\":true,\"signed_download_url\":\"http://{addr}/blob/x?sig=1\",\
                 \"matched_key\":\"sc/packs/p.pack\"}}"
            );
            return write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        let len = 64 << 10;
        trickle(
            s,
            &format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{}/{len}\r\n\
                 Content-Length: {len}\r\n\r\n",
                len - 1
            ),
            &vec![b'x'; len],
        )
    });
    let t = std::time::Instant::now();
    let r = within(Duration::from_secs(60), move || {
        let store = gha_on(&url, None);
        let r = store.get_range("packs/p.pack", 0, 64 << 10).map(|mut r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v.len())
        });
        std::mem::forget(store);
        match r {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .expect("a trickled download still runs after 60 s");
    let err = r.expect_err("a trickled download was taken");
    assert!(err.contains("too slow"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // The control plane trickles its JSON reply.
    let (url, _) = serve(|_req, s| {
        let body = format!("{{\"ok\":false,\"pad\":\"{}\"}}", "x".repeat(1000));
        trickle(
            s,
            &format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        )
    });
    let t = std::time::Instant::now();
    let r = within(Duration::from_secs(60), move || {
        let store = gha_on(&url, None);
        let r = store
            .get("index/i.idx", 100)
            .map(drop)
            .map_err(|e| e.to_string());
        std::mem::forget(store);
        r
    })
    .expect("a trickled reply still runs after 60 s");
    let err = r.expect_err("a trickled reply was taken");
    assert!(
        err.contains("index/i.idx") && err.contains("reading the reply"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A `ListObjectsV2` page (or an error reply) whose body never ends: `object_store` reads a
/// listing page, and the body of an error reply, whole into memory before parsing it, so a
/// chunked page of 512 MiB (endless, but for the machine running the test) was held whole
/// until it ended. A reply that is not an object's bytes is refused at its first
/// `MAX_REPLY` bytes.
#[test]
fn s3_listing_page_or_error_reply_that_never_ends_is_refused_early() {
    fn endless(s: &mut TcpStream, status: &str, head: &str) -> std::io::Result<()> {
        write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )?;
        let mut chunk = String::from(head);
        while chunk.len() < 1 << 20 {
            chunk.push_str("<Contents><Key>pre/snapshots/x.snap</Key><Size>1</Size></Contents>");
        }
        for _ in 0..512 {
            write!(s, "{:x}\r\n", chunk.len())?;
            s.write_all(chunk.as_bytes())?;
            s.write_all(b"\r\n")?;
            chunk.truncate(0);
            while chunk.len() < 1 << 20 {
                chunk
                    .push_str("<Contents><Key>pre/snapshots/x.snap</Key><Size>1</Size></Contents>");
            }
        }
        // The connection closes without the last chunk.
        Err(std::io::Error::other("end"))
    }
    let before = peak_rss_mib();
    let (url, _) = serve(|req, s| {
        if req.line.contains("list-type=2") {
            endless(
                s,
                "200 OK",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult>",
            )
        } else {
            endless(
                s,
                "400 Bad Request",
                "<?xml version=\"1.0\"?><Error><Code>X</Code>",
            )
        }
    });
    let r = within(Duration::from_secs(60), move || {
        let store = s3_on(&url);
        let listed = store
            .list("snapshots")
            .map(|v| v.len())
            .map_err(|e| e.to_string());
        let got = store
            .get("index/i.idx", 100)
            .map(|v| v.len())
            .map_err(|e| e.to_string());
        std::mem::forget(store);
        (listed, got)
    })
    .expect("reading endless replies still runs after 60 s");
    let after = peak_rss_mib();
    assert!(
        after < before + 128,
        "endless replies held {} MiB ({r:?})",
        after - before
    );
    let listed = r.0.expect_err("an endless listing page was taken");
    assert!(listed.contains("more than"), "{listed}");
    let got = r.1.expect_err("an endless error reply was taken");
    assert!(got.contains("more than"), "{got}");
}

/// A control plane answering a lookup with a download URL of another scheme (`file:`): it is
/// not read (ureq speaks only HTTP), the read is an error naming the object
/// (docs/REMOTE.md, "Whom storesync trusts here").
#[test]
fn gha_download_url_of_another_scheme_is_not_followed() {
    let (url, _) = serve(|_req, s| {
        let body = "{\"ok\":true,\"signed_download_url\":\"file:///etc/hostname\",\
                    \"matched_key\":\"sc/index/i.idx\"}";
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    let store = gha_on(&url, None);
    let e = store.get("index/i.idx", 1 << 20).unwrap_err().to_string();
    assert!(e.contains("index/i.idx"), "{e}");
}

/// A GitHub cache request throttled (HTTP 429, waited as asked) for longer than the timeout,
/// then met by one dropped connection: the time waiting on answers counted as time without
/// one, so the drop was not tried again and the host was taken for one that stopped
/// answering (every later request failing at once). Only time without any answer counts.
#[test]
fn gha_request_throttled_longer_than_the_timeout_is_still_tried_again_after_a_drop() {
    let (url, count) = serve(|_req, s| {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        match SEEN.fetch_add(1, Ordering::SeqCst) {
            0 => write!(
                s,
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n"
            ),
            // Dropped without an answer.
            1 => Err(std::io::Error::other("dropped")),
            _ => {
                let body = "{\"ok\":false}";
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\
                     \r\n\r\n{body}",
                    body.len()
                )
            }
        }
    });
    let r = within(Duration::from_secs(60), move || {
        let store = GhaStore::new(GhaConfig {
            results_url: url,
            runtime_token: "t".into(),
            scope: "sc".into(),
            max_throttle_wait: Duration::from_secs(10),
            block_size: 4 << 20,
            tries: 3,
            retry_pause: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
            rest: None,
        })
        .unwrap();
        let r = store.get("index/a.idx", 100).map(drop);
        std::mem::forget(store);
        r
    })
    .expect("the request still runs after 60 s");
    let e = r.expect_err("nothing is there to read");
    assert!(e.is_not_found(), "{e}");
    assert!(count.load(Ordering::SeqCst) >= 3);
}

/// The blob storage answering a download with an error (404, 500) whose body trickles in (a
/// byte every 200 ms): a download's body is bounded by its reader, not by the request, so the
/// error's text, read for the message, had no bound (1,000 bytes took 200 s; 64 KiB would
/// take 3.6 hours). It is cut off as any other body is.
#[test]
fn gha_error_reply_to_a_download_trickling_in_is_cut_off() {
    for status in ["404 Not Found", "500 Internal Server Error"] {
        let (url, _) = serve(move |req, s| {
            if req.line.starts_with("POST") {
                let addr = req.header("host").unwrap_or_default().to_string();
                let body = format!(
                    "{{\"ok\":true,\"signed_download_url\":\"http://{addr}/blob/x?sig=1\",\
                     \"matched_key\":\"sc/packs/p.pack\"}}"
                );
                return write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\
                     \r\n\r\n{body}",
                    body.len()
                );
            }
            write!(s, "HTTP/1.1 {status}\r\nContent-Length: 1000\r\n\r\n")?;
            for _ in 0..1000 {
                s.write_all(b"x")?;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        });
        let t = std::time::Instant::now();
        let r = within(Duration::from_secs(60), move || {
            let store = gha_on(&url, None);
            let r = store
                .get_range("packs/p.pack", 0, 10)
                .map(drop)
                .map_err(|e| e.to_string());
            std::mem::forget(store);
            r
        })
        .unwrap_or_else(|| panic!("{status}: a trickled error reply still runs after 60 s"));
        let err = r.expect_err("an error reply was taken");
        assert!(err.contains("packs/p.pack"), "{status}: {err}");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    }
}
