#!/usr/bin/env bash
# Run every interop suite against the real daemons. Each suite installs what it needs, tears
# down what it started, prints PASS/FAIL per check, and exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(git -C "$here" rev-parse --show-toplevel)"
export STORESYNC="${STORESYNC:-$top/target/release/storesync}"
[ -x "$STORESYNC" ] || (cd "$top" && cargo build --release)
status=0
for suite in nix guix; do
  echo "=== interop: $suite"
  start=$(date +%s)
  if bash "$here/$suite/run.sh"; then
    echo "=== interop: $suite passed in $(( $(date +%s) - start )) s"
  else
    echo "=== interop: $suite FAILED after $(( $(date +%s) - start )) s"
    status=1
  fi
done
exit $status
