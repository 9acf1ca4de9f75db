#!/bin/bash
# Alternate cold restores of one snapshot with two storesync binaries: the quick A/B used
# for restore changes (docs/BENCHMARKS.md). Needs root (drops the page cache) and about
# 1.1 GB of free disk per run on the bench store; the restored roots are left in $OUT, to be
# deleted by hand (ext4 without a journal makes new inodes slow for minutes after deletions:
# wait 6 minutes before timing anything else).
#
#   benches/ab-cold-restore.sh BIN_A BIN_B [PAIRS] [CACHE] [OUT]
set -euo pipefail
a=$1 b=$2 pairs=${3:-5}
cache=${4:-/var/tmp/storesync-bench/run/cache-v1}
out=${5:-/var/tmp/storesync-ab}
mkdir -p "$out"
one() {
    local bin=$1 tag=$2 d
    d=$(mktemp -d "$out/$tag-XXXXXX")
    sync
    echo 3 > /proc/sys/vm/drop_caches
    find "$cache" -type f -exec cat {} + > /dev/null
    local s e
    s=$(date +%s.%N)
    /usr/bin/time -f "%M %U %S" -o "$out/.time" \
        "$bin" --root "$d" --no-progress --json restore --cache "$cache" > /dev/null
    e=$(date +%s.%N)
    read -r rss user sys < "$out/.time"
    printf '%s %.2f s wall, %s u %s s CPU, %d MiB\n' "$tag" "$(echo "$e - $s" | bc)" \
        "$user" "$sys" $((rss / 1024))
}
for i in $(seq 1 "$pairs"); do
    if (( i % 2 )); then one "$a" A; one "$b" B; else one "$b" B; one "$a" A; fi
done
