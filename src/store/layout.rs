//! Where a store lives: the flavour (Guix or Nix), the logical store directory spelled in the
//! DB (`/gnu/store`), and the physical directories on this machine, under `--root`.
//!
//! `--root DIR` treats DIR as `/`, like a chroot or an image being prepared: the store is read
//! and written at `DIR/gnu/store` and the DB at `DIR/var/guix/db`, while paths in the DB stay
//! `/gnu/store/...`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::path::{under_root, StoreDir};

/// Which daemon's conventions to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flavor {
    /// GNU Guix: /gnu/store, /var/guix/db, DB schema 7, fcntl big-lock.
    Guix,
    /// Nix: /nix/store, /nix/var/nix/db, DB schema 10, flock big-lock.
    Nix,
}

impl Flavor {
    /// The default logical store directory.
    pub fn default_store_dir(self) -> &'static str {
        match self {
            Flavor::Guix => "/gnu/store",
            Flavor::Nix => "/nix/store",
        }
    }
    /// The default logical DB directory.
    pub fn default_db_dir(self) -> &'static str {
        match self {
            Flavor::Guix => "/var/guix/db",
            Flavor::Nix => "/nix/var/nix/db",
        }
    }
    /// The version the daemon writes to `<db>/schema`.
    pub fn schema_version(self) -> u32 {
        match self {
            Flavor::Guix => 7,
            Flavor::Nix => 10,
        }
    }
    /// Longest store path name the daemon accepts: Nix's `StorePath` refuses names of more
    /// than 211 characters; Guix's daemon has no limit of its own, so a file name's (see
    /// [`crate::store::path::MAX_NAME_LEN`]) is the only one.
    pub fn max_name_len(self) -> usize {
        match self {
            Flavor::Guix => crate::store::path::MAX_NAME_LEN,
            Flavor::Nix => crate::store::path::NIX_MAX_NAME_LEN,
        }
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Guix => "guix",
            Flavor::Nix => "nix",
        }
    }
}

/// The resolved locations of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Daemon conventions.
    pub flavor: Flavor,
    /// The directory treated as `/`.
    pub root: PathBuf,
    /// Logical store directory, as spelled in the DB.
    pub store_dir: StoreDir,
    /// Logical DB directory (before `root` is applied).
    pub db_dir_logical: String,
}

impl Layout {
    /// Resolve a layout. `store_dir` and `db_dir` default to the flavour's, after the
    /// environment variables the daemons honour (see [`Layout::from_env`]).
    ///
    /// # Errors
    /// A message when a directory is not absolute.
    pub fn new(
        flavor: Flavor,
        root: &Path,
        store_dir: Option<&str>,
        db_dir: Option<&str>,
    ) -> Result<Self, String> {
        let store_dir = StoreDir::new(store_dir.unwrap_or(flavor.default_store_dir()))?;
        let db = db_dir.unwrap_or(flavor.default_db_dir());
        if !db.starts_with('/') {
            return Err(format!("DB directory `{db}` must be absolute"));
        }
        Ok(Layout {
            flavor,
            root: root.to_owned(),
            store_dir,
            db_dir_logical: db.trim_end_matches('/').to_owned(),
        })
    }

    /// Like [`Layout::new`], taking defaults from the environment the daemons read:
    /// Guix: `GUIX_DATABASE_DIRECTORY`, else `GUIX_STATE_DIRECTORY`/db, and `NIX_STORE_DIR`;
    /// Nix: `NIX_STORE_DIR`, `NIX_STATE_DIR`/db.
    ///
    /// # Errors
    /// As [`Layout::new`].
    pub fn from_env(
        flavor: Flavor,
        root: &Path,
        store_dir: Option<&str>,
        db_dir: Option<&str>,
    ) -> Result<Self, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let env_store = env("NIX_STORE_DIR");
        let env_db = match flavor {
            Flavor::Guix => env("GUIX_DATABASE_DIRECTORY")
                .or_else(|| env("GUIX_STATE_DIRECTORY").map(|s| format!("{s}/db"))),
            Flavor::Nix => env("NIX_STATE_DIR").map(|s| format!("{s}/db")),
        };
        Self::new(
            flavor,
            root,
            store_dir.or(env_store.as_deref()),
            db_dir.or(env_db.as_deref()),
        )
    }

    /// The store directory on this machine.
    pub fn real_store_dir(&self) -> PathBuf {
        under_root(&self.root, self.store_dir.as_str())
    }
    /// The DB directory on this machine.
    pub fn real_db_dir(&self) -> PathBuf {
        under_root(&self.root, &self.db_dir_logical)
    }
    /// The SQLite file.
    pub fn db_file(&self) -> PathBuf {
        self.real_db_dir().join("db.sqlite")
    }
    /// The daemon's global lock file.
    pub fn big_lock_file(&self) -> PathBuf {
        self.real_db_dir().join("big-lock")
    }
    /// The daemon's state directory on this machine: the DB directory's parent (`/var/guix`,
    /// `/nix/var/nix`), which holds `gc.lock`, `temproots/` and (Nix) `gc-socket/`.
    pub fn state_dir(&self) -> PathBuf {
        let db = self.real_db_dir();
        db.parent().map(Path::to_path_buf).unwrap_or(db)
    }
}
