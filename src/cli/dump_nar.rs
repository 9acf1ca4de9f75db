//! `storesync dump-nar`.

use std::io::Write;

use clap::Args;
use storesync::error::{Error, Result};

use super::Global;

pub const EXAMPLES: &str = "\
Examples:
  storesync dump-nar /gnu/store/...-hello-2.12 > hello.nar
  # the same bytes as Nix's own serialisation:
  cmp <(storesync --flavor nix dump-nar /nix/store/...-hello) <(nix-store --dump /nix/store/...-hello)
  # the NAR SHA-256 the DB records (nix-base32 aside):
  storesync dump-nar /gnu/store/...-hello-2.12 | sha256sum

Exit codes: 0 written (also when the reader closes the pipe early), 1 an unreadable path,
2 usage (not a store path).";

#[derive(Args, Debug)]
pub struct DumpNarArgs {
    /// A store path, e.g. /gnu/store/...-hello-2.12.
    pub path: String,
}

pub fn run(g: &Global, a: &DumpNarArgs) -> Result<u8> {
    let layout = g.layout()?;
    let sp = layout
        .store_dir
        .parse(&a.path)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let real = layout.real_store_dir().join(sp.base_name());
    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut out = storesync::nar::dump_path(&real, out)?;
    out.flush().map_err(|e| Error::Io("<stdout>".into(), e))?;
    Ok(0)
}
