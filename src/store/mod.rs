//! The store as the daemons see it: store paths and the store directory ([`path`]), what the
//! DB knows about a path ([`path_info`]), where a store and its DB live ([`layout`]), the
//! daemon's deduplication directory `<store>/.links` ([`links`]), and symlink-safe file
//! system operations inside the store ([`fs`]).

pub mod fs;
pub mod layout;
pub mod links;
pub mod path;
pub mod path_info;

pub use layout::{Flavor, Layout};
pub use path::{StoreDir, StorePath};
pub use path_info::{DerivationOutput, PathInfo};
