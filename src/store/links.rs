//! Everything about `<store>/.links`, the daemon's deduplication directory: a regular file of
//! [`LINKS_MIN_SIZE`] bytes or more is hard-linked to `.links/<nix-base32 of the SHA-256 of
//! its own NAR>`, and a new file with the same name is linked to the entry instead of being
//! kept twice. The daemon trusts those names without reading the entries again, so an entry
//! must only ever hold bytes whose file NAR hash is its name.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

/// The daemon deduplicates regular files of at least this size into `.links`.
pub const LINKS_MIN_SIZE: u64 = 8192;

/// The source store's `.links` entries by inode (one directory read, no `stat` per entry).
#[derive(Default)]
pub struct SourceLinks {
    /// Device of the `.links` directory.
    pub dev: u64,
    /// Entry names by inode.
    pub by_inode: HashMap<u64, [u8; 32]>,
}

impl SourceLinks {
    /// Read `dir`; a missing or unreadable directory (an undeduplicated store, as Nix's by
    /// default) gives an empty map, and names that are not canonical nix-base32 SHA-256s
    /// (the daemon's temporary names) are skipped.
    pub fn read(dir: &Path) -> Self {
        let (Ok(meta), Ok(entries)) = (fs::metadata(dir), fs::read_dir(dir)) else {
            return SourceLinks::default();
        };
        let mut by_inode = HashMap::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(hash) = crate::store::path::nixbase32_decode(name, 32) else {
                continue;
            };
            if crate::store::path::nixbase32_encode(&hash) == name {
                let mut h = [0; 32];
                h.copy_from_slice(&hash);
                by_inode.insert(e.ino(), h);
            }
        }
        SourceLinks {
            dev: meta.dev(),
            by_inode,
        }
    }
}
