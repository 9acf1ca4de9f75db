//! Why one store path could not be restored, by what to do about it.

use std::io;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::cache::CacheError;

/// A failure to restore one path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// What the cache gave is not what the snapshot vouches for: a tree that lies (sizes,
    /// `.links` names), a damaged or substituted blob, or a NAR hash that does not match. The
    /// path is tried once more with every blob checked against its id (which names a
    /// damaged blob); then it fails and its referrers are skipped.
    #[error("{0}")]
    Content(String),
    /// The cache lacks an object the path needs, or cannot be read: the path fails.
    #[error("{0}")]
    Cache(String),
    /// Writing to the store failed. When it will fail every path (see
    /// [`PathError::stops_restore`]) the restore stops.
    #[error("{0}: {1}")]
    Target(PathBuf, #[source] io::Error),
}

impl PathError {
    /// A cache error met while restoring `shown`: damage is [`PathError::Content`], the rest
    /// [`PathError::Cache`].
    pub(super) fn cache(shown: &Path, e: CacheError) -> Self {
        match e {
            CacheError::Corrupt(_) => PathError::Content(format!("{}: {e}", shown.display())),
            e => PathError::Cache(format!("{}: {e}", shown.display())),
        }
    }

    /// A store error met while writing `shown`.
    pub(super) fn target(shown: &Path) -> impl Fn(io::Error) -> Self + '_ {
        move |e| PathError::Target(shown.to_owned(), e)
    }

    /// Whether this failure will fail every other path as well: the store's file system is
    /// full, read-only, over quota, or not writable by this user.
    pub fn stops_restore(&self) -> bool {
        match self {
            PathError::Target(_, e) => e.raw_os_error().is_some_and(|n| {
                let e = Errno::from_raw_os_error(n);
                [
                    Errno::NOSPC,
                    Errno::ROFS,
                    Errno::DQUOT,
                    Errno::ACCESS,
                    Errno::PERM,
                ]
                .contains(&e)
            }),
            _ => false,
        }
    }

    /// Whether a second attempt, every blob checked and nothing linked, may succeed.
    pub(super) fn worth_retrying(&self) -> bool {
        match self {
            PathError::Content(_) => true,
            PathError::Target(..) => !self.stops_restore(),
            PathError::Cache(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_failures_that_fail_every_path_stop_the_restore() {
        let t = |errno: Errno| PathError::Target("/s/x".into(), io::Error::from(errno));
        for e in [
            Errno::NOSPC,
            Errno::ROFS,
            Errno::DQUOT,
            Errno::ACCESS,
            Errno::PERM,
        ] {
            assert!(t(e).stops_restore(), "{e:?}");
            assert!(!t(e).worth_retrying(), "{e:?}");
        }
        for e in [Errno::EXIST, Errno::LOOP, Errno::NAMETOOLONG, Errno::MLINK] {
            assert!(!t(e).stops_restore(), "{e:?}");
            assert!(t(e).worth_retrying(), "{e:?}");
        }
        assert!(PathError::Content("x".into()).worth_retrying());
        assert!(!PathError::Cache("x".into()).worth_retrying());
        assert!(!PathError::Content("x".into()).stops_restore());
    }
}
