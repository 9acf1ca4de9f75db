#!/bin/bash
# Alternate full saves of one store into an empty cache, each followed by a restore of that
# cache into an empty root, with two storesync binaries: the CPU A/B of docs/BENCHMARKS.md
# (issue 14, main against main + rewrite). Prints wall, user and system seconds and the load
# average per run; CPU seconds are the robust number on a shared machine. The caches and roots
# are left in $OUT, to be deleted by hand (see ab-cold-restore.sh on deletions and ext4).
#
#   benches/ab-save.sh BIN_A BIN_B [PAIRS] [ROOT] [OUT]
#
# With SAVE_ONLY=1, saves only: each into a fresh cache, the previous one deleted, then `sync`
# and a second's pause before the save (no restores, so no file creation between saves).
set -euo pipefail
a=$1 b=$2 pairs=${3:-5}
root=${4:-/var/tmp/storesync-bench/gen-200mb-upgrade/v1}
out=${5:-/var/tmp/storesync-ab-save}
mkdir -p "$out"
one() {
    local bin=$1 tag=$2 d load
    if [ "${SAVE_ONLY:-}" = 1 ]; then
        rm -rf "$out/cache"
        sync
        sleep 1
        load=$(cut -d' ' -f1 /proc/loadavg)
        /usr/bin/time -f "%e %U %S" -o "$out/.time" "$bin" --root "$root" --no-progress \
            --json save --cache "$out/cache" > /dev/null
        read -r wall user sys < "$out/.time"
        echo "$tag save: $wall s wall, $user u $sys s CPU, load $load"
        return
    fi
    d=$(mktemp -d "$out/$tag-XXXXXX")
    for step in save restore; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        if [ $step = save ]; then
            /usr/bin/time -f "%e %U %S" -o "$out/.time" "$bin" --root "$root" --no-progress \
                --json save --cache "$d/cache" > /dev/null
        else
            /usr/bin/time -f "%e %U %S" -o "$out/.time" "$bin" --root "$d/root" --no-progress \
                --json restore --cache "$d/cache" > /dev/null
        fi
        read -r wall user sys < "$out/.time"
        echo "$tag $step: $wall s wall, $user u $sys s CPU, load $load"
    done
}
for i in $(seq 1 "$pairs"); do
    if (( i % 2 )); then one "$a" A; one "$b" B; else one "$b" B; one "$a" A; fi
done
