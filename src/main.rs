//! storesync's entry point: parse, run, map errors to exit codes.
// The one unsafe call is the allocator option set in `return_freed_memory_sooner`.
#![deny(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator returns large buffers to the kernel on every free; with worker threads
/// that means page faults and TLB shootdowns for each file's buffers. mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `purge_delay` option (its index in `mi_option_t`, mimalloc.h of v3; the
/// bindings name no constant for it). Checked by `tests::purge_delay_is_the_option_set`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// What the process sets `purge_delay` to, in milliseconds, for `command`: 10 (mimalloc 2's
/// default) for most; 0 for `save`, whose peak (the walk of the paths a base does not have,
/// beside the merged index and the DB's rows) held pages freed less than 10 ms before:
/// measured at 100,000 paths, a save of 3% new paths onto 20 snapshots peaked at 125-131 MB
/// with 10 ms, 115 MB with 1 ms, 109 MB with 0, at the same CPU (a full save too: 3.0-3.2 s
/// user, 5.1-5.5 s system either way). Not for the others: at 0, `verify` took 12% more CPU
/// (4.6 -> 5.2 s) and a cold restore 40% more system time (9.3 -> 13.5 s) for under 10 MB.
fn purge_delay_ms(command: &cli::Command) -> std::ffi::c_long {
    match command {
        cli::Command::Save(_) => 0,
        _ => PURGE_DELAY_MS,
    }
}

/// The delay for every command but `save`.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// mimalloc 3 gives freed memory back to the kernel 1 s after it was freed. A save or verify
/// of 100,000 paths frees and allocates far more than that within a second on its worker
/// threads, so the freed pages stay counted until the process ends: at 10 ms, a full save's
/// peak RSS went 204-220 -> 144 MB, a save of 3% new paths 196-205 -> 163-167 MB, verify
/// 161-163 -> 117-118 MB, a cold restore 173-177 -> 158-159 MB, at the same user CPU (about
/// 0.1 s more system time). `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
#[allow(unsafe_code)]
fn return_freed_memory_sooner(delay_ms: std::ffi::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called in `main` before any other thread exists (at most the arguments
        // are parsed before it; mimalloc's option setter is not thread safe); the option
        // index is checked by a test.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms) };
    }
}

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages; every 2 MiB page is then zeroed and counted
    // in full however little of it is used: peak RSS of a 1 GiB restore 108-122 MiB with
    // them, 73-90 MiB without, at the same speed. Best effort: old kernels lack the call.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    // Set before the first allocation (set after it, 10 ms did not take: verify peaked at
    // 165 MB instead of 99), then again for the command once its arguments are parsed.
    return_freed_memory_sooner(PURGE_DELAY_MS);
    let cli = cli::Cli::parse();
    return_freed_memory_sooner(purge_delay_ms(&cli.command));
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        // The reader of our output went away (`| head`): not a failure.
        Err(e) if cli::output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli::output::error_line(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn purge_delay_is_the_option_set() {
        // mimalloc.h names `MIMALLOC_PURGE_DELAY` the environment form of the option; a
        // wrong index would read (and set) another option, whose default is not 1000 ms.
        let default = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        // SAFETY: reading an option is thread safe.
        let got = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, default);
    }
}
