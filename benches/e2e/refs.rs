//! Store paths written inside the generated files, as a Guix build leaves them (the `upgrade`
//! model of `gen.rs`; the `text` model does not use this module).
//!
//! * ELF files (binaries, shared libraries, objects): a RUNPATH-like string
//!   `/gnu/store/<hash>-<name>/lib:/gnu/store/<hash>-<name>/lib:...` written over the start of
//!   the `.dynstr` section (after its leading NUL), where `patchelf --set-rpath` or the linker
//!   put a Guix binary's RUNPATH; the file keeps its size. `.dynstr` is found as the string
//!   table linked (`sh_link`) from the `SHT_DYNAMIC` section, else from `SHT_DYNSYM`. When the
//!   file has no such section (static binaries, relocatable objects, 32-bit or big-endian ELF,
//!   truncated headers) or the section is too short for the string, the "appended region" is
//!   used instead: a NUL, the string, a NUL, added at the end of the file (its size grows by
//!   the string's length + 2).
//! * pkg-config files (`*.pc`): a `prefix=` line names the output itself.
//!
//! Headers are read with `read_at` and bounded (at most 65 535 section headers, 64 bytes
//! each), so a file of any size costs a few small reads, never a whole-file buffer.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where a RUNPATH string went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Over the start of `.dynstr`, at this file offset.
    Dynstr(u64),
    /// Appended at the end of the file (NUL, string, NUL).
    Appended,
}

/// `dirs` (store paths, `/gnu/store/<base>`) as a RUNPATH: each followed by `/lib`, joined by
/// `:`.
pub fn runpath(dirs: &[String]) -> String {
    dirs.iter()
        .map(|d| format!("{d}/lib"))
        .collect::<Vec<_>>()
        .join(":")
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}
fn u32_at(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

const SHT_DYNAMIC: u64 = 6;
const SHT_DYNSYM: u64 = 11;
const SHT_STRTAB: u64 = 3;
const SHDR: usize = 64;

/// File offset and size of the `.dynstr` section of a 64-bit little-endian ELF file, if it
/// has one that lies inside the file. `None` for anything else (not ELF included).
pub fn dynstr(f: &fs::File) -> std::io::Result<Option<(u64, u64)>> {
    let len = f.metadata()?.len();
    let mut eh = [0u8; 64];
    if len < 64 || f.read_exact_at(&mut eh, 0).is_err() {
        return Ok(None);
    }
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Ok(None);
    }
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3a);
    let shnum = u16_at(&eh, 0x3c);
    if shoff == 0 || shnum == 0 || shentsize != SHDR as u64 {
        return Ok(None);
    }
    let table = shnum * SHDR as u64; // at most 65 535 * 64 bytes
    if shoff.checked_add(table).is_none_or(|end| end > len) {
        return Ok(None);
    }
    let mut sh = vec![0u8; table as usize];
    f.read_exact_at(&mut sh, shoff)?;
    let field = |i: u64, at: usize, wide: bool| {
        let base = i as usize * SHDR + at;
        if wide {
            u64_at(&sh, base)
        } else {
            u32_at(&sh, base)
        }
    };
    let linked = |ty: u64| {
        (0..shnum)
            .find(|&i| field(i, 4, false) == ty)
            .map(|i| field(i, 40, false))
    };
    let Some(idx) = linked(SHT_DYNAMIC).or_else(|| linked(SHT_DYNSYM)) else {
        return Ok(None);
    };
    if idx >= shnum || field(idx, 4, false) != SHT_STRTAB {
        return Ok(None);
    }
    let (off, size) = (field(idx, 24, true), field(idx, 32, true));
    if off.checked_add(size).is_none_or(|end| end > len) {
        return Ok(None);
    }
    Ok(Some((off, size)))
}

/// Write `runpath` into the file at `path` (already a copy in the generated store): over the
/// start of `.dynstr` when it fits there with its NUL, else in the appended region.
pub fn embed_runpath(path: &Path, runpath: &str) -> Result<Placed, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let s = runpath.as_bytes();
    if let Some((off, size)) = dynstr(&f).map_err(err)? {
        // Leading NUL kept; the string and its terminating NUL fit before the section's end.
        if (s.len() as u64) + 2 <= size {
            let mut v = s.to_vec();
            v.push(0);
            f.write_all_at(&v, off + 1).map_err(err)?;
            return Ok(Placed::Dynstr(off + 1));
        }
    }
    let end = f.metadata().map_err(err)?.len();
    let mut v = Vec::with_capacity(s.len() + 2);
    v.push(0);
    v.extend_from_slice(s);
    v.push(0);
    f.write_all_at(&v, end).map_err(err)?;
    Ok(Placed::Appended)
}

/// A pkg-config file with its `prefix=` lines naming `me` (the output's store path); `None`
/// when it has none (or is not UTF-8).
pub fn pkgconfig_with_prefix(data: &[u8], me: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + me.len());
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("prefix=") {
            changed = true;
            out.push_str("prefix=");
            out.push_str(me);
            if rest.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    changed.then(|| out.into_bytes())
}
