# storesync tasks. `just --list` shows them.

# Run the unit and integration tests (the README's test command).
test:
    cargo test

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# The main job on the embedded sample store.
demo:
    cargo run --release -- demo

# Crash-safety tests (tests/crash.rs) with many kills, release build. Another seed:
# STORESYNC_CRASH_SEED=7 just soak. Mounting tmpfs needs root: without it the out-of-space
# tests are skipped and the rest run on the disk (slower).
soak cases="200":
    STORESYNC_CRASH_CASES={{cases}} cargo test --release --test crash -- --nocapture

# Round trips checked by the real guix-daemon and real Nix (installs them; needs root).
interop:
    cargo build --release
    bash tests/interop/run.sh

# End-to-end benchmark against tar + zstd, and the criterion micro-benchmarks.
bench:
    cargo build --release
    cargo bench --bench e2e
    cargo bench --bench kernels

# Alternate cold restores of the bench store's v1 with two binaries (needs root; run the
# e2e bench once first for its cache).
ab-restore old new pairs="5":
    bash benches/ab-cold-restore.sh {{old}} {{new}} {{pairs}}

# Long property runs of the cache decoders (trees, snapshots, index files, packs' frames)
# on arbitrary and mutated inputs; failures are saved under proptest-regressions/.
fuzz scale="100":
    STORESYNC_FUZZ_SCALE={{scale}} cargo test --release --lib cache::

# A self-contained storesync (glibc linked statically) for this machine's architecture,
# checked with ldd and `storesync demo`, packaged with its man pages and completions:
# dist/storesync-VERSION-ARCH-linux.tar.gz and its .sha256 (what releases attach).
# `just dist aarch64` cross-builds on x86_64 (see scripts/dist.sh for what that needs).
dist arch="":
    bash scripts/dist.sh {{arch}}

# The man pages, generated from the clap definitions: docs/man/storesync.1 and one page per
# command (storesync-save.1, ...).
man:
    cargo run --release --quiet -- man --dir docs/man

# The GitHub Action's tests (node --test; STORESYNC_BIN picks the storesync they run) and
# the schema checks of action.yml, the workflows and examples/.
action:
    cargo build --release
    STORESYNC_BIN="${CARGO_TARGET_DIR:-target}/release/storesync" bash action/ci.sh

# Everything CI runs.
ci:
    bash .ci/run
