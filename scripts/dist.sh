#!/usr/bin/env bash
# Build a self-contained storesync for Linux, x86_64 or aarch64 (default: this machine's):
# glibc linked statically (+crt-static), so the one file runs on any Linux of that
# architecture, whatever its libc. Writes
#   dist/storesync-VERSION-ARCH-linux.tar.gz         storesync, man pages, completions
#   dist/storesync-VERSION-ARCH-linux.tar.gz.sha256  `sha256sum` format
# and checks that the binary is static (ldd) and that it works (`storesync demo`).
#
# .tar.gz rather than .tar.zst: the GitHub Action unpacks it with Node's zlib (node20 has no
# zstd), and the binary is the only large member.
#
# Cross-building aarch64 on x86_64 needs the target's Rust standard library
# (`rustup target add aarch64-unknown-linux-gnu`) and Debian's gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross (linker, C compiler for the bundled SQLite, zstd, mimalloc, and the
# static glibc); the demo then runs under qemu-aarch64-static (qemu-user-static) when it is
# installed. release.yml builds aarch64 natively on an arm64 runner instead.
#
# Usage: scripts/dist.sh [x86_64|aarch64]            (just dist [ARCH])
# Environment: CARGO_TARGET_DIR (default target), SOURCE_DATE_EPOCH (default: the last
# commit's date; the archive's mtimes, so two packagings of one binary are identical).
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-$(uname -m)}"
case "$arch" in
x86_64 | aarch64) ;;
*)
  echo "dist: no static build for $arch (x86_64 and aarch64 only)" >&2
  exit 2
  ;;
esac
target="$arch-unknown-linux-gnu"
run=()
if [ "$arch" != "$(uname -m)" ]; then
  # Cross: the target's gcc links and compiles the C dependencies; qemu runs the checks.
  triple="$arch-linux-gnu"
  target_env=$(echo "$target" | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${target_env}_LINKER=$triple-gcc"
  export "CC_${target//-/_}=$triple-gcc" "AR_${target//-/_}=$triple-ar"
  if command -v "qemu-$arch-static" >/dev/null; then
    run=("qemu-$arch-static")
  elif command -v "qemu-$arch" >/dev/null; then
    run=("qemu-$arch")
  else
    echo "dist: no qemu-$arch-static (qemu-user-static): the $arch binary cannot be checked here" >&2
    exit 1
  fi
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name="storesync-$version-$arch-linux"
target_dir="${CARGO_TARGET_DIR:-target}"

# --target keeps RUSTFLAGS away from build scripts and proc macros (which cannot be static).
# No debug info in the shipped binary (the release profile keeps some for profiling).
echo "== building $name (static, $target)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --release --locked --target "$target"
bin="$target_dir/$target/release/storesync"

echo "== checking that it is static"
ldd_out=$(ldd "$bin" 2>&1 || true)
echo "ldd: $ldd_out"
case "$ldd_out" in
*"not a dynamic executable"* | *"statically linked"*) ;;
*)
  echo "dist: $bin is dynamically linked" >&2
  exit 1
  ;;
esac
file "$bin" 2>/dev/null || true

# The built binary, under qemu when cross-built.
storesync() { ${run[@]+"${run[@]}"} "$bin" "$@"; }

echo "== checking that it works (storesync demo, empty environment)"
env -i PATH=/usr/bin:/bin TMPDIR="${TMPDIR:-/tmp}" ${run[@]+"${run[@]}"} "$bin" --no-progress demo | tail -n 1 | grep -qx 'demo OK'
storesync --version

echo "== packaging"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/man" "$root/completions"
cp "$bin" "$root/storesync"
cp README.md "$root/"
storesync man --dir "$root/man"
storesync completions bash >"$root/completions/storesync.bash"
storesync completions zsh >"$root/completions/_storesync"
storesync completions fish >"$root/completions/storesync.fish"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
mkdir -p dist
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  --format=ustar -C "$stage" -cf - "$name" | gzip -9n >"dist/$name.tar.gz"
(cd dist && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
ls -l "$bin" "dist/$name.tar.gz"
cat "dist/$name.tar.gz.sha256"
