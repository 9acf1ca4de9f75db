//! Walking one store path: its tree, NAR SHA-256 and size in one pass, new file contents
//! handed to the packer as blobs, each file's `.links` name found or computed.
//!
//! A file's blob is its contents with the hash parts of the path's references (and its own)
//! replaced by the placeholder (`cache::rewrite`); the NAR and the `.links` name are those of
//! the real bytes. A file that is a hard link to a `.links` entry whose name the base
//! snapshot's trees know is not read at all (`known`): its node comes from the old tree, and
//! the path's NAR hash then cannot be computed (the walk says None; its NAR size still is).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::fs::{AtFlags, Dir, FileType, Stat};

use super::known::{KnownFile, KnownFiles};
use crate::cache::rewrite::HashParts;
use crate::cache::tree::MAX_DEPTH;
use crate::cache::MAX_TREE_NODES;
use crate::cache::{BlobId, Entry, Node, Packer, PathFrames, Rewrite, TreeId};
use crate::error::{Error, Result};
use crate::nar::{NarEncoder, NarError, NarHasher};
use crate::store::links::SourceLinks;
use crate::store::path_info::NarHash;

/// (device, inode) of a hard-linked file → its blob, `.links` hash and rewrites, so it is
/// hashed once.
type InodeCache = Mutex<HashMap<(u64, u64), (BlobId, [u8; 32], Vec<Rewrite>)>>;

pub(super) struct Walker<'a, 'c> {
    pub(super) packer: &'a Packer<'c>,
    pub(super) inodes: InodeCache,
    pub(super) bytes_read: AtomicU64,
    /// Bytes of files not read: contents the base snapshot's trees know by `.links` name.
    pub(super) bytes_known: AtomicU64,
    /// `.links` hashes recorded by the cache's trees, by content key, read on first need.
    pub(super) cached_links: OnceLock<HashMap<[u8; 32], [u8; 32]>>,
    /// `.links` hashes computed by this save, by content key.
    pub(super) new_links: Mutex<HashMap<[u8; 32], [u8; 32]>>,
    /// The source store's `.links` directory, and its entries once read.
    pub(super) links_dir: PathBuf,
    pub(super) source_links: OnceLock<SourceLinks>,
    /// The base snapshot's files by `.links` name (None: every file is read, as
    /// `--verify-source` asks), indexed on first need.
    pub(super) known: Option<OnceLock<KnownFiles<'c>>>,
    /// The base snapshot's trees, for `known`.
    pub(super) base_trees: Vec<TreeId>,
}

/// Where a walk sends the NAR: SHA-256 and length, or only the length once a file was
/// taken from the cache unread (the hash is then unknown; `blind` says so).
pub(super) struct NarSink<'b> {
    hasher: NarHasher,
    len: u64,
    blind: &'b Cell<bool>,
    /// The NAR size the DB gives (`u64::MAX` when it gives none): a NAR growing past it
    /// cannot be the path's, and is not read further (a sparse file of terabytes in a path
    /// of a few bytes would otherwise be read, hashed and packed whole before the sizes are
    /// compared). `over` says it happened.
    limit: u64,
    over: &'b Cell<bool>,
}

impl Write for NarSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len.saturating_add(buf.len() as u64) > self.limit {
            self.over.set(true);
            return Err(io::Error::other("larger than the DB's NAR size"));
        }
        if !self.blind.get() {
            self.hasher.write_all(buf)?;
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) type Enc<'e, 'b> = NarEncoder<'e, NarSink<'b>>;

/// Zeros, fed to the NAR length in place of contents not read.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

impl Walker<'_, '_> {
    /// Walk the store path `name` in the store directory `store` (`real` names it in errors)
    /// whose files may name the hash parts `parts`: its tree, NAR SHA-256 (None when some file
    /// was taken unread from the base snapshot) and NAR size. `nar_size`: the DB's; a NAR
    /// growing past it is not read further ([`NarError::Larger`]). 0 is an unknown one (old
    /// DBs): nothing to check a path not read whole against, so then every file is read.
    pub(super) fn walk(
        &self,
        store: BorrowedFd<'_>,
        name: &str,
        real: &Path,
        parts: &HashParts,
        nar_size: u64,
    ) -> Result<(Node, Option<NarHash>, u64)> {
        let blind = Cell::new(false);
        let over = Cell::new(false);
        let mut sink = NarSink {
            hasher: NarHasher::new(),
            len: 0,
            blind: &blind,
            limit: if nar_size == 0 { u64::MAX } else { nar_size },
            over: &over,
        };
        let enc = NarEncoder::new(&mut sink).expect("hashing cannot fail");
        let mut frames = PathFrames::default();
        let mut ctx = Ctx {
            frames: &mut frames,
            parts,
            read_all: nar_size == 0,
            blind: &blind,
            nodes: 0,
        };
        let node = self.node(
            At {
                dir: store,
                name: OsStr::new(name),
                path: real,
            },
            enc,
            &mut ctx,
            0,
        );
        // Whatever happened to the walk, the objects claimed so far must reach a pack.
        self.packer.finish_path(frames)?;
        if over.get() {
            return Err(Error::Nar(NarError::Larger(real.to_owned(), nar_size)));
        }
        let node = node?;
        let (hash, _) = sink.hasher.finish();
        Ok((node, (!blind.get()).then_some(hash), sink.len))
    }

    /// The node of `at`, looked at without following a symlink, at `depth` directories
    /// below the store path's top.
    fn node(
        &self,
        at: At<'_>,
        enc: Enc<'_, '_>,
        ctx: &mut Ctx<'_, '_>,
        depth: usize,
    ) -> Result<Node> {
        let path = at.path;
        let io = |e: io::Error| Error::Nar(NarError::Io(path.to_owned(), e));
        let too_many = || {
            io(io::Error::other(format!(
                "more than {MAX_TREE_NODES} nodes"
            )))
        };
        ctx.nodes += 1;
        if ctx.nodes > MAX_TREE_NODES {
            return Err(too_many());
        }
        let st = rustix::fs::statat(at.dir, at.name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io(e.into()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(at.dir, at.name, Vec::new())
                    .map_err(|e| io(e.into()))?
                    .into_bytes();
                enc.symlink(&target).map_err(io)?;
                Ok(Node::Symlink { target })
            }
            FileType::Directory => {
                if depth >= MAX_DEPTH {
                    return Err(io(io::Error::other(format!(
                        "directories nested deeper than {MAX_DEPTH}"
                    ))));
                }
                // Held open while its entries are walked: they are reached through it.
                let (held, names) = open_dir_looked(at.dir, at.name, &st).map_err(io)?;
                let dir = held.fd().map_err(|e| io(e.into()))?;
                let mut w = enc.directory().map_err(io)?;
                let mut entries = Vec::with_capacity(names.len());
                for name in names {
                    let name = OsStr::from_bytes(name.to_bytes());
                    let entry = w.entry(name.as_bytes()).map_err(io)?;
                    let child = path.join(name);
                    let at = At {
                        dir,
                        name,
                        path: &child,
                    };
                    let node = self.node(at, entry, ctx, depth + 1)?;
                    entries.push(Entry {
                        name: name.as_bytes().to_vec(),
                        node,
                    });
                }
                w.close().map_err(io)?;
                Ok(Node::Directory(entries))
            }
            FileType::RegularFile => {
                let node = self.file(at, &Looked::from(&st), enc, ctx)?;
                if let Node::Rewritten { rewrites, .. } = &node {
                    ctx.nodes += rewrites.len();
                    if ctx.nodes > MAX_TREE_NODES {
                        return Err(too_many());
                    }
                }
                Ok(node)
            }
            _ => Err(NarError::FileType(path.to_owned()).into()),
        }
    }

    /// The base snapshot's file this one is a hard link to (through its `.links` entry), if
    /// it may be taken unread.
    fn lookup_known(
        &self,
        meta: &Looked,
        executable: bool,
        ctx: &Ctx<'_, '_>,
    ) -> Option<KnownFile> {
        let known = self.known.as_ref()?;
        if ctx.read_all || meta.size < crate::store::links::LINKS_MIN_SIZE {
            return None;
        }
        let name = self.source_links_hash(meta)?;
        known
            .get_or_init(|| KnownFiles::build(self.packer.cache(), self.base_trees.iter().copied()))
            .get(&name, executable, meta.size)
    }

    /// Take `f` as this file's node without reading it: the NAR gets zeros of its length
    /// (its hash is then unknown).
    fn take_known(
        &self,
        f: KnownFile,
        meta: &Looked,
        path: &Path,
        enc: Enc<'_, '_>,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<Node> {
        let io = |e| Error::Nar(NarError::Io(path.to_owned(), e));
        ctx.blind.set(true);
        let mut w = enc.regular(f.executable, f.size).map_err(io)?;
        let mut left = f.size;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            w.write_all(&ZEROS[..n]).map_err(io)?;
            left -= n as u64;
        }
        w.finish().map_err(io)?;
        self.bytes_known.fetch_add(f.size, Ordering::Relaxed);
        if meta.nlink > 1 {
            self.inodes.lock().expect("inodes").insert(
                (meta.dev, meta.ino),
                (f.blob, f.file_nar_hash, f.rewrites.clone()),
            );
        }
        Ok(Node::regular(
            f.executable,
            f.size,
            f.blob,
            f.file_nar_hash,
            f.rewrites,
        ))
    }

    fn file(
        &self,
        at: At<'_>,
        meta: &Looked,
        enc: Enc<'_, '_>,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<Node> {
        if meta.mode & 0o004 == 0 {
            // The daemons make every store file 0444 or 0555. One that not everyone may read
            // is none of theirs: a hard link to a private file, made in a path's directory
            // by whoever can write it (where `fs.protected_hardlinks` is off); save, run as
            // root, would pack its bytes for every reader of the cache.
            return Err(Error::Nar(NarError::Io(
                at.path.to_owned(),
                io::Error::other(format!(
                    "mode {:04o} is not readable by everyone, as every store file is \
                     (0444 or 0555): not read",
                    meta.mode & 0o7777
                )),
            )));
        }
        let executable = meta.executable();
        let inode = (meta.dev, meta.ino);
        let seen = if meta.nlink > 1 {
            self.inodes.lock().expect("inodes").get(&inode).cloned()
        } else {
            None
        };
        if seen.is_none() {
            if let Some(f) = self.lookup_known(meta, executable, ctx) {
                return self.take_known(f, meta, at.path, enc, ctx);
            }
        }
        self.read_file(at, meta, executable, seen, enc, ctx)
    }

    /// The name of the source store's `.links` entry sharing this file's inode, if any: the
    /// daemon named it by the SHA-256 of the file's NAR when it deduplicated the file, and
    /// trusts that name itself whenever it links another file to it.
    pub(super) fn source_links_hash(&self, meta: &Looked) -> Option<[u8; 32]> {
        if meta.nlink < 2 {
            return None;
        }
        let links = self
            .source_links
            .get_or_init(|| SourceLinks::read(&self.links_dir));
        (links.dev == meta.dev)
            .then(|| links.by_inode.get(&meta.ino).copied())
            .flatten()
    }

    /// The `.links` hash of the file whose blob is `blob` and content key `key`, if a tree
    /// of the cache or a file already walked by this save records it.
    pub(super) fn known_links_hash(&self, blob: &BlobId, key: &[u8; 32]) -> Option<[u8; 32]> {
        if self.packer.cache().contains(*blob) {
            let cached = self
                .cached_links
                .get_or_init(|| self.packer.cache().links_hashes());
            if let Some(h) = cached.get(key) {
                return Some(*h);
            }
        }
        self.new_links.lock().expect("new links").get(key).copied()
    }
}

/// A name in a directory the walk holds open, and its path (for errors).
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    pub(super) dir: BorrowedFd<'a>,
    pub(super) name: &'a OsStr,
    pub(super) path: &'a Path,
}

/// What the walk's look at a file (`statat`, not following a symlink) found.
pub(super) struct Looked {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) nlink: u64,
    pub(super) size: u64,
    /// Permission bits.
    pub(super) mode: u32,
}

impl Looked {
    /// The executable bit of the NAR: the owner's.
    pub(super) fn executable(&self) -> bool {
        self.mode & 0o100 != 0
    }
}

impl From<&Stat> for Looked {
    fn from(st: &Stat) -> Self {
        Looked {
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
        }
    }
}

/// Open the directory `name` in `dir` that the walk looked at as `looked`, and read its
/// entries' names, sorted as a NAR lists them: never through a symlink (`O_NOFOLLOW`), and
/// only if it is still the directory looked at. Its files are then opened relative to it,
/// so that nothing swapped above them after this open is followed either.
fn open_dir_looked(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    looked: &Stat,
) -> io::Result<(Dir, Vec<CString>)> {
    let fd = crate::store::fs::open_dir_at(dir, name)?;
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != (looked.st_dev, looked.st_ino) {
        return Err(io::Error::other(
            "changed since the walk looked at it (another directory): not read",
        ));
    }
    let mut d = Dir::new(fd)?;
    let mut names = crate::store::fs::entry_names_of(&mut d)?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok((d, names))
}

/// What one path's walk carries down its tree.
pub(super) struct Ctx<'f, 'p> {
    pub(super) frames: &'f mut PathFrames,
    pub(super) parts: &'p HashParts,
    pub(super) read_all: bool,
    pub(super) blind: &'p Cell<bool>,
    /// Nodes walked so far, each file's rewrites counted as nodes, as a tree's decoder
    /// counts them: a path beyond [`MAX_TREE_NODES`] is refused, not packed into a tree no
    /// restore would read (and a walk that a writer of the path inflates, moving directories
    /// about while it runs, is bounded).
    pub(super) nodes: usize,
}

#[cfg(test)]
mod tests {
    use super::open_dir_looked;
    use std::ffi::OsStr;
    use std::fs;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    fn look(p: &std::path::Path) -> rustix::fs::Stat {
        rustix::fs::lstat(p).unwrap()
    }

    /// A directory of a path being saved swapped for a symlink (to a directory holding a
    /// root-only file under the same name) is not followed, whether the swap comes between
    /// the walk's look and its open, or after the open: the walk reads the directory it
    /// looked at, through the descriptor it holds, or nothing (found by review: the save
    /// opened files by path, through any directory swapped above them).
    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let elsewhere = root.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("f"), b"SECRET").unwrap();
        let p = root.join("p");
        fs::create_dir_all(p.join("dir")).unwrap();
        fs::write(p.join("dir/f"), b"plain!").unwrap();
        let top = crate::store::fs::open_dir_at(rustix::fs::CWD, &p).unwrap();
        let name = OsStr::new("dir");

        // Looked at, then opened: its entries, sorted.
        fs::write(p.join("dir/a"), b"").unwrap();
        let looked = look(&p.join("dir"));
        let (held, names) = open_dir_looked(top.as_fd(), name, &looked).unwrap();
        let names: Vec<_> = names.iter().map(|n| n.to_bytes().to_vec()).collect();
        assert_eq!(names, [b"a".to_vec(), b"f".to_vec()]);

        // Swapped after the open: the held descriptor still reads the directory looked at.
        fs::rename(p.join("dir"), root.join("aside")).unwrap();
        symlink(&elsewhere, p.join("dir")).unwrap();
        let mut f = fs::File::from(
            rustix::fs::openat(
                held.fd().unwrap(),
                "f",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        );
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, "plain!");

        // Swapped between the look and the open: not opened (a symlink, or another
        // directory than the one looked at).
        assert!(open_dir_looked(top.as_fd(), name, &looked).is_err());
        assert!(open_dir_looked(top.as_fd(), name, &look(&elsewhere)).is_err());
        fs::remove_file(p.join("dir")).unwrap();
        fs::create_dir(p.join("dir")).unwrap();
        let e = open_dir_looked(top.as_fd(), name, &looked).unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
    }
}
