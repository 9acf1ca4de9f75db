//! The store as the daemons see it: store paths and the store directory ([`path`]), what the
//! DB knows about a path ([`path_info`]), where a store and its DB live ([`layout`]), the
//! daemon's deduplication directory `<store>/.links` ([`links`]), symlink-safe file system
//! operations inside the store ([`fs`]), and what a client of a running daemon must do: the
//! daemons' lock files ([`locks`]) and temporary GC roots ([`temp_roots`]).

pub mod fs;
pub mod layout;
pub mod links;
pub mod locks;
pub mod path;
pub mod path_info;
pub mod temp_roots;

pub use layout::{Flavor, Layout};
pub use path::{StoreDir, StorePath};
pub use path_info::{DerivationOutput, PathInfo};
