//! storesync: save a Guix or Nix store into a content-addressed cache and restore only the
//! missing paths, registered in the daemon's database exactly as the daemon would.
//!
//! Start reading at [`save::save`] and [`restore::restore`]; each first builds a plan (a value
//! that `--dry-run` prints) and then executes it. `docs/DESIGN.md` shows the data flow.
#![forbid(unsafe_code)]

pub mod cache;
pub mod clock;
pub mod closure;
pub mod db;
pub mod diff;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod hex;
pub mod nar;
pub mod progress;
pub mod restore;
pub mod sample;
pub mod save;
pub(crate) mod scratch;
pub mod store;
pub mod trust;
pub mod verify;

pub use error::Error;
pub use store::{Flavor, Layout};
