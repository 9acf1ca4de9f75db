//! The error policy.
//!
//! Each module has its own `thiserror` enum whose I/O variants carry the path or object they
//! failed on, so a message always says what failed, where, and (where it helps) what to do.
//! [`Error`] gathers them for the commands; only the CLI turns errors into text and exit codes:
//! 1 for failures (integrity, I/O), 2 for usage, 3 when the store is busy.
//!
//! A variant that wraps a cause says so through `std::error::Error::source` and leaves the
//! cause out of its own `Display` (`Io` displays the path; its `source` says what happened).
//! Whoever turns an error into text prints the whole chain once with [`Chain`]: each level's
//! text, joined by ": ", a level left out when the text so far already contains it (variants
//! of other modules that still print their cause as well are not repeated).

use std::fmt;
use std::path::PathBuf;

use crate::cache::CacheError;
use crate::db::{DbError, LockError};
use crate::nar::NarError;
use crate::trust::TrustError;

/// Any error of a storesync command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Trusted keys were given and no snapshot of the cache passed the signature check;
    /// one message per snapshot, each naming it and saying why.
    #[error(
        "no snapshot of the cache is signed by a trusted key, so none is used; passed over:\n  {}",
        .0.join("\n  ")
    )]
    NoTrustedSnapshot(Vec<String>),
    /// A save could not write to the cache (a full disk, a read-only file system,
    /// permissions): it was aborted before writing a snapshot.
    #[error(
        "cannot write to the cache, so the save was aborted and no snapshot written (what was \
         already indexed stays usable by the next save)"
    )]
    CacheWrite(#[source] CacheError),
    /// A save ran out of a resource of the system (open files, memory, room on a device;
    /// see [`is_exhaustion`]) while reading a path: a limit of the run, not a fault of the
    /// path, so no `--skip-corrupt` drops it. The source is the error, naming the path.
    #[error(
        "the save ran out of a resource of the system (open files, memory or room on a \
         device), so it was aborted and no snapshot written: this is a limit of the run, not \
         a fault of the path (raise `ulimit -n`, free memory or room, and run again)"
    )]
    Exhausted(#[source] Box<Error>),
    /// An I/O error on a file of the store or the system (not of the cache); displays the
    /// path, the cause is the source.
    #[error("{0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Integrity(String),
}

impl Error {
    /// The exit code the CLI uses for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Lock(LockError::Busy(_)) => 3,
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// An error and its causes as one line: each level's text joined by ": ", a level left out
/// when the text so far already contains it.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut next = self.0.source();
        while let Some(e) = next {
            let t = e.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            next = e.source();
        }
        f.write_str(&text)
    }
}

/// The first I/O error in `e`'s chain (`e` itself included), if any.
pub fn find_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// Whether `e` says the system ran out of a resource: open files (`EMFILE`, `ENFILE`),
/// memory (`ENOMEM`, `ENOBUFS`, or Rust's own out-of-memory), room on a device (`ENOSPC`,
/// `EDQUOT`). Such an error is the run's, whatever file it happened on: the same file reads
/// fine once the limit is raised or the room freed. `EIO` is not one: a read error of a file
/// is the file's (its blocks on the disk), and stays that file's.
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    if e.kind() == std::io::ErrorKind::OutOfMemory {
        return true;
    }
    e.raw_os_error().is_some_and(|code| {
        [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOMEM,
            Errno::NOBUFS,
            Errno::NOSPC,
            Errno::DQUOT,
        ]
        .contains(&Errno::from_raw_os_error(code))
    })
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn the_chain_is_printed_once() {
        let e = Error::Io("/x/y".into(), io::Error::other("disk on fire"));
        assert_eq!(e.to_string(), "/x/y");
        assert_eq!(Chain(&e).to_string(), "/x/y: disk on fire");
        // A variant that repeats its cause in its own text is not printed twice.
        let e = Error::Nar(NarError::Io("/s".into(), io::Error::other("gone")));
        assert_eq!(Chain(&e).to_string(), "reading /s: gone");
    }

    #[test]
    fn an_io_error_is_found_at_any_depth() {
        let e = Error::Nar(NarError::Io(
            "/s".into(),
            io::Error::from(io::ErrorKind::BrokenPipe),
        ));
        assert_eq!(find_io(&e).unwrap().kind(), io::ErrorKind::BrokenPipe);
        assert!(find_io(&Error::Usage("u".into())).is_none());
    }

    #[test]
    fn running_out_of_a_resource_is_told_from_other_errors() {
        for code in [24, 23, 12, 105, 28, 122] {
            // EMFILE, ENFILE, ENOMEM, ENOBUFS, ENOSPC, EDQUOT
            assert!(is_exhaustion(&io::Error::from_raw_os_error(code)), "{code}");
        }
        assert!(is_exhaustion(&io::Error::from(io::ErrorKind::OutOfMemory)));
        for code in [13, 5, 2, 30, 40] {
            // EACCES, EIO, ENOENT, EROFS, ELOOP
            assert!(
                !is_exhaustion(&io::Error::from_raw_os_error(code)),
                "{code}"
            );
        }
        assert!(!is_exhaustion(&io::Error::other("too many open files")));
    }
}
