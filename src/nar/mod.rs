//! The Nix ARchive format (NAR): the canonical serialisation of a store path whose SHA-256 the
//! daemons record as `ValidPaths.hash`.
//!
//! A NAR is a sequence of strings, each a little-endian u64 length, the bytes, and zero padding
//! to a multiple of 8. Directory entries appear sorted by name bytes; a regular file carries an
//! `executable` marker and its contents; a symlink its target. Nothing else (owner, mtime) is
//! recorded. [`writer`] emits that stream; [`dump`] walks a file system tree into it. Neither
//! buffers a whole archive: contents stream through.

pub mod dump;
pub mod writer;

use std::io;
use std::path::PathBuf;

pub use dump::{dump_path, hash_path, sorted_entries};
pub use writer::{string_len, DirectoryWriter, FileNarHasher, FileWriter, NarEncoder, NarHasher};

/// The magic string at the start of every NAR.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Errors while walking a tree into a NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("reading {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}: unsupported file type (only regular files, directories and symlinks can be in the store)")]
    FileType(PathBuf),
    #[error("{0}: file changed size while being read (expected {1} bytes)")]
    Changed(PathBuf, u64),
    #[error("{0}: its NAR is larger than the {1} bytes the DB says: not read further")]
    Larger(PathBuf, u64),
}
