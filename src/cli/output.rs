//! Everything the commands print: results on stdout as text or (with `--json`) one JSON value,
//! warnings and notes on stderr, sizes in binary units, and errors as one line holding their
//! whole chain. Writing stdout can fail: a closed pipe ends a result quietly and leaves the
//! command its exit code ([`render`]); elsewhere (`dump-nar`, `man`) it is returned like any
//! error, and `storesync dump-nar P | head -c 10` ends quietly too (see [`is_broken_pipe`]).

use std::io::{self, Write};

use serde::Serialize;
use storesync::cache::storage::TransferFigures;
use storesync::error::{find_io, Chain, Error, Result};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines of text for people.
    Text,
    /// One pretty-printed JSON value.
    Json,
}

/// A failed write to stdout.
pub fn stdout_err(e: io::Error) -> Error {
    Error::Io("<stdout>".into(), e)
}

/// Print a result: `value` as JSON, or the text `text` writes. A reader that went away (a
/// closed pipe: `| head -1`) is no error here: the command goes on to its own exit code, so
/// that `verify` finding problems, or `restore` paths failing, still exits 1.
///
/// # Errors
/// [`Error::Io`] on `<stdout>` when stdout cannot be written.
pub fn render<T: Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce(&mut dyn Write, &T) -> io::Result<()>,
) -> Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let r = match format {
        Format::Json => serde_json::to_writer_pretty(&mut out, value)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out)),
        Format::Text => text(&mut out, value),
    }
    .and_then(|()| out.flush());
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            // What is still buffered would fail again when dropped: let it go.
            let _ = out.into_parts();
            Ok(())
        }
        r => r.map_err(stdout_err),
    }
}

/// Print `value` as JSON on stdout.
///
/// # Errors
/// As [`render`].
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    render(Format::Json, value, |_, _| Ok(()))
}

/// A library report with the transfer figures of the cache it used (`--json`: the report's
/// fields and `transfer`).
#[derive(Serialize)]
pub struct WithTransfer<'a, T: Serialize> {
    #[serde(flatten)]
    pub report: &'a T,
    pub transfer: TransferFigures,
}

/// The text summary's line of transfer figures, for a remote cache (`what` names it).
///
/// # Errors
/// A failed write.
pub fn transfer_line(out: &mut dyn Write, what: &str, t: &TransferFigures) -> io::Result<()> {
    writeln!(
        out,
        "{what}: {} downloaded, {} uploaded, {} requests, {} retries",
        human(t.bytes_downloaded),
        human(t.bytes_uploaded),
        t.requests,
        t.retries
    )
}

/// A warning on stderr.
pub fn warn(msg: impl std::fmt::Display) {
    eprintln!("storesync: warning: {msg}");
}

/// A note on stderr (something skipped, something worth knowing).
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("storesync: {msg}");
}

/// The first 12 hex digits of an id, as listings show it.
pub fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// `bytes` in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Whether `e` or any of its causes is a closed pipe: the reader went away (`| head`), which
/// is no failure of ours.
pub fn is_broken_pipe(e: &Error) -> bool {
    find_io(e).is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

/// The line printed for an error that ends a command.
pub fn error_line(e: &Error) -> String {
    format!("storesync: error: {}", Chain(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use storesync::nar::NarError;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_broken_pipe_is_found_under_other_errors() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&Error::Io("<stdout>".into(), pipe())));
        assert!(is_broken_pipe(&Error::Nar(NarError::Io(
            "/s".into(),
            pipe()
        ))));
        assert!(!is_broken_pipe(&Error::Io(
            "/s".into(),
            io::Error::from(io::ErrorKind::NotFound)
        )));
    }

    #[test]
    fn the_error_line_holds_each_cause_once() {
        let e = Error::Io("/a/b".into(), io::Error::other("No space left on device"));
        assert_eq!(
            error_line(&e),
            "storesync: error: /a/b: No space left on device"
        );
    }
}
