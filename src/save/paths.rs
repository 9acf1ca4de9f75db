//! Walking a save's new paths, in parallel or one at a time: each path's tree packed and
//! checked against the DB (its NAR hash, or when some file was taken unread from the base
//! snapshot, its NAR size), and each failure sorted into the path's (corrupt, vanished,
//! unreadable) or the run's (the cache cannot be written, the system ran out of a resource:
//! either stops the save).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use super::walk::Walker;
use crate::cache::rewrite::HashParts;
use crate::cache::{Cache, CacheError, ObjectId, ObjectKind, Packer, TreeId};
use crate::db;
use crate::error::Error;
use crate::nar::NarError;
use crate::progress::Progress;
use crate::store::layout::Layout;
use crate::store::path_info::PathInfo;

/// Why one path could not be saved. A failure to write the cache, or the system running
/// out of a resource, is none of these: it aborts the whole save (see [`classify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathError {
    /// The content differs from what the DB records (NAR hash or size), a file changed while
    /// it was read, or a file is of a type a store cannot hold: the store is corrupt.
    Corrupt(String),
    /// The path is no longer valid: the daemon deleted it while the save ran.
    Vanished,
    /// The store could not be read (permissions, an I/O error of its disk), with the error.
    Source(String),
}

/// A path saved: its tree, NAR size, and whether its NAR hash was recomputed and matched
/// (false: some file was taken unread from the base snapshot; the NAR size matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Saved {
    pub(super) tree: TreeId,
    pub(super) nar_size: u64,
    pub(super) verified: bool,
}

/// One path's outcome: saved, or why it could not be.
pub(super) type Walked = std::result::Result<Saved, PathError>;

/// What [`walk_paths`] walks with, besides the paths.
pub(super) struct WalkWith<'a, 'c> {
    pub(super) layout: &'a Layout,
    pub(super) db: &'a db::DbContents,
    pub(super) packer: &'a Packer<'c>,
    /// The base snapshot's trees (files hard-linked to `.links` entries they know are not
    /// read), unless `--verify-source`.
    pub(super) base_trees: Option<&'a [TreeId]>,
}

/// What the walks read and did not.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Bytes {
    pub(super) read: u64,
    pub(super) known: u64,
}

/// Sort an error of a walk: the run's, returned as the error that stops the save
/// ([`Error::CacheWrite`] when the cache cannot be written, [`Error::Exhausted`] when the
/// system ran out of open files, memory or room, see [`crate::error::is_exhaustion`]: the
/// path would read fine in another run, so no `--skip-corrupt` may drop it), or the path's.
pub(super) fn classify(e: Error) -> std::result::Result<PathError, Error> {
    match e {
        Error::Cache(e) | Error::CacheWrite(e) => Err(Error::CacheWrite(e)),
        e if crate::error::find_io(&e).is_some_and(crate::error::is_exhaustion) => {
            Err(Error::Exhausted(Box::new(e)))
        }
        Error::Nar(e @ (NarError::Changed(..) | NarError::FileType(_) | NarError::Larger(..))) => {
            Ok(PathError::Corrupt(e.to_string()))
        }
        e => Ok(PathError::Source(crate::error::Chain(&e).to_string())),
    }
}

/// Walk one new path, check it against the DB, and pack its tree.
///
/// # Errors
/// As [`classify`] sorts them: the run's (the cache cannot be written, the system ran out of
/// a resource); the path's own failures are in the [`Walked`].
fn walk_one(
    walker: &Walker,
    (store, store_fd): (
        &std::path::Path,
        std::result::Result<&OwnedFd, &std::io::Error>,
    ),
    info: &PathInfo,
) -> std::result::Result<Walked, Error> {
    let store_fd = match store_fd {
        Ok(fd) => fd.as_fd(),
        Err(e) => {
            // The error again for each path (an `io::Error` is not `Clone`), errno kept.
            let e = match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            };
            return classify(Error::Io(store.to_owned(), e)).map(Err);
        }
    };
    let parts = HashParts::new(
        info.references
            .iter()
            .map(|r| r.hash_part())
            .chain([info.path.hash_part()]),
    );
    let real = store.join(info.path.base_name());
    let (node, hash, size) = match walker.walk(
        store_fd,
        info.path.base_name(),
        &real,
        &parts,
        info.nar_size,
    ) {
        Ok(w) => w,
        Err(e) => return classify(e).map(Err),
    };
    if let Some(hash) = hash {
        if hash != info.nar_hash {
            return Ok(Err(PathError::Corrupt(format!(
                "NAR hash {} differs from the DB's {}",
                hash,
                info.nar_hash.to_db()
            ))));
        }
    }
    if info.nar_size != 0 && info.nar_size != size {
        return Ok(Err(PathError::Corrupt(format!(
            "NAR size {size} differs from the DB's {}",
            info.nar_size
        ))));
    }
    let (id, bytes) = node.encode();
    if walker.packer.claim(id) {
        walker
            .packer
            .add(ObjectKind::Tree, id, &bytes)
            .map_err(Error::CacheWrite)?;
    }
    Ok(Ok(Saved {
        tree: id,
        nar_size: size,
        verified: hash.is_some(),
    }))
}

/// Walk `paths` with a fresh [`Walker`] on `packer`, all at once or one after the other.
/// Returns each path's outcome and the bytes of file contents read.
///
/// # Errors
/// As [`walk_one`]: the walks stop at the first error of the run.
pub(super) fn walk_paths(
    with: &WalkWith<'_, '_>,
    paths: &[usize],
    parallel: bool,
    progress: &dyn Progress,
) -> std::result::Result<(Vec<(usize, Walked)>, Bytes), Error> {
    let WalkWith {
        layout,
        db,
        packer,
        base_trees,
    } = *with;
    let walker = Walker {
        packer,
        inodes: Mutex::new(HashMap::new()),
        bytes_read: AtomicU64::new(0),
        bytes_known: AtomicU64::new(0),
        cached_links: OnceLock::new(),
        new_links: Mutex::new(HashMap::new()),
        links_dir: layout.real_store_dir().join(".links"),
        source_links: OnceLock::new(),
        known: base_trees.map(|_| OnceLock::new()),
        base_trees: base_trees.map(<[TreeId]>::to_vec).unwrap_or_default(),
    };
    // The store directory, opened once: each path is walked relative to it, each directory
    // below relative to its parent's descriptor (`Walker::walk`), held while its entries are
    // walked (hence the limit raised). If it cannot be opened, every path says why.
    let store = layout.real_store_dir();
    crate::store::fs::raise_open_files_limit(0);
    // `O_PATH`: only searched, never listed, so a store directory one may search but not
    // read (mode 0711, 0311) is walked as it was by path.
    let store_fd = rustix::fs::open(
        &store,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(std::io::Error::from);
    // Each outcome goes into its own slot of one vector made up front: collecting a parallel
    // iterator of results (not indexed) chained a vector per path and copied them all at
    // the end (at 100,000 paths, 16 MB at once for 6 MB of outcomes).
    let mut slots: Vec<(usize, Option<Walked>)> = paths.iter().map(|&i| (i, None)).collect();
    let one = |(i, slot): &mut (usize, Option<Walked>)| {
        let info = &db.paths[*i];
        let r = walk_one(&walker, (&store, store_fd.as_ref()), info);
        if parallel {
            progress.advance(info.nar_size);
        }
        *slot = Some(r?);
        Ok::<(), Error>(())
    };
    if parallel {
        slots
            .par_iter_mut()
            // One path per task: paths differ in size by orders of magnitude, so rayon's
            // default splitting into contiguous halves left one thread doing most of the work.
            .with_max_len(1)
            .try_for_each(one)?;
    } else {
        slots.iter_mut().try_for_each(one)?;
    }
    let results = slots
        .into_iter()
        .map(|(i, w)| (i, w.expect("every path walked")))
        .collect();
    let bytes = Bytes {
        read: walker.bytes_read.load(Ordering::Relaxed),
        known: walker.bytes_known.load(Ordering::Relaxed),
    };
    Ok((results, bytes))
}

/// The paths walked successfully whose tree names one of `missing`.
///
/// # Errors
/// [`CacheError`] when a tree just written cannot be read back.
pub(super) fn naming_any(
    cache: &Cache,
    results: &[(usize, Walked)],
    missing: &HashSet<ObjectId>,
) -> std::result::Result<Vec<usize>, CacheError> {
    let mut out = Vec::new();
    if missing.is_empty() {
        return Ok(out);
    }
    for (i, r) in results {
        let Ok(Saved { tree, .. }) = r else { continue };
        let mut names = false;
        cache
            .read_tree(tree)?
            .for_each_blob(&mut |b, _| names |= missing.contains(&ObjectId::from(*b)));
        if names {
            out.push(*i);
        }
    }
    out.sort_unstable();
    Ok(out)
}
