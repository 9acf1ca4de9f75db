//! Tests of the e2e benchmark's store-path embedding (`benches/e2e/refs.rs`, which the
//! benchmark binary cannot test itself: it has no test harness).

#[path = "../benches/e2e/refs.rs"]
mod refs;

use refs::*;
use std::fs;

/// The ELF of the running test binary has a `.dynstr` (it is dynamically linked to libc).
#[test]
fn finds_dynstr_of_a_real_binary_and_embeds_there() {
    let me = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bin");
    fs::copy(&me, &copy).unwrap();
    let before = fs::read(&copy).unwrap();
    let (off, size) = dynstr(&fs::File::open(&copy).unwrap()).unwrap().unwrap();
    assert!(size > 100);
    assert!(before[off as usize..(off + size) as usize].contains(&b'c'));
    let rp = runpath(&["/gnu/store/aaaa-x".into(), "/gnu/store/bbbb-y".into()]);
    assert_eq!(rp, "/gnu/store/aaaa-x/lib:/gnu/store/bbbb-y/lib");
    assert_eq!(embed_runpath(&copy, &rp).unwrap(), Placed::Dynstr(off + 1));
    let after = fs::read(&copy).unwrap();
    assert_eq!(after.len(), before.len());
    let at = off as usize + 1;
    assert_eq!(&after[at..at + rp.len()], rp.as_bytes());
    assert_eq!(after[at + rp.len()], 0);
    assert_eq!(&after[..at], &before[..at]);
    assert_eq!(&after[at + rp.len() + 1..], &before[at + rp.len() + 1..]);
}

#[test]
fn non_elf_and_short_dynstr_use_the_appended_region() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    fs::write(&p, b"\x7fELF not really").unwrap();
    assert_eq!(
        embed_runpath(&p, "/gnu/store/x/lib").unwrap(),
        Placed::Appended
    );
    assert_eq!(
        fs::read(&p).unwrap(),
        b"\x7fELF not really\0/gnu/store/x/lib\0"
    );
    let me = std::env::current_exe().unwrap();
    let copy = dir.path().join("bin");
    fs::copy(&me, &copy).unwrap();
    let len = fs::metadata(&copy).unwrap().len();
    let huge = "y".repeat(1 << 20);
    assert_eq!(embed_runpath(&copy, &huge).unwrap(), Placed::Appended);
    assert_eq!(
        fs::metadata(&copy).unwrap().len(),
        len + huge.len() as u64 + 2
    );
}

#[test]
fn pkgconfig_prefix_names_the_output() {
    let pc = b"prefix=/usr\nlibdir=${prefix}/lib\nName: z\n";
    let out = pkgconfig_with_prefix(pc, "/gnu/store/h-z").unwrap();
    assert_eq!(
        out,
        b"prefix=/gnu/store/h-z\nlibdir=${prefix}/lib\nName: z\n"
    );
    assert!(pkgconfig_with_prefix(b"Name: z\n", "/gnu/store/h-z").is_none());
}
