#!/usr/bin/env bash
# Build a self-contained storesync for Linux on this machine's architecture (x86_64 or
# aarch64): glibc linked statically (+crt-static), so the one file runs on any Linux of that
# architecture, whatever its libc. Writes
#   dist/storesync-VERSION-ARCH-linux.tar.gz         storesync, man pages, completions
#   dist/storesync-VERSION-ARCH-linux.tar.gz.sha256  `sha256sum` format
# and checks that the binary is static (ldd) and that it works (`storesync demo`).
#
# .tar.gz rather than .tar.zst: the GitHub Action unpacks it with Node's zlib (node20 has no
# zstd), and the binary is the only large member.
#
# Usage: scripts/dist.sh            (just dist)
# Environment: CARGO_TARGET_DIR (default target), SOURCE_DATE_EPOCH (default: the last
# commit's date; the archive's mtimes, so two packagings of one binary are identical).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(uname -m)
case "$arch" in
x86_64 | aarch64) ;;
*)
  echo "dist: no static build for $arch (x86_64 and aarch64 only)" >&2
  exit 2
  ;;
esac
target="$arch-unknown-linux-gnu"
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

echo "== checking that it works (storesync demo, empty environment)"
env -i PATH=/usr/bin:/bin TMPDIR="${TMPDIR:-/tmp}" "$bin" --no-progress demo | tail -n 1 | grep -qx 'demo OK'
"$bin" --version

echo "== packaging"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/man" "$root/completions"
cp "$bin" "$root/storesync"
cp README.md "$root/"
"$bin" man --dir "$root/man"
"$bin" completions bash >"$root/completions/storesync.bash"
"$bin" completions zsh >"$root/completions/_storesync"
"$bin" completions fish >"$root/completions/storesync.fish"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
mkdir -p dist
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  --format=ustar -C "$stage" -cf - "$name" | gzip -9n >"dist/$name.tar.gz"
(cd dist && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
ls -l "$bin" "dist/$name.tar.gz"
cat "dist/$name.tar.gz.sha256"
