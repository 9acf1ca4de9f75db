#!/usr/bin/env bash
# Remote benchmark: storesync against an S3 server (SeaweedFS on loopback) versus the seed's
# pipeline with its tarball in the SAME server (upload a .tar.zst of the store; restore =
# download it, then `zstd -d | tar -x`). Scenarios, each as alternating runs (storesync,
# baseline, storesync, ...), the median reported:
#   cold restore     v1 into an empty root          | download v1.tar.zst, extract
#   warm restore     v2 into a root holding v1      | download v2.tar.zst, extract over v1
#   incremental save v2 into a cache holding v1     | tar + zstd of v2, upload
# with wall time (each run after a `sync`), bytes moved (storesync's --json transfer figures;
# the tarball's size), files storesync copied from older builds in the root instead of
# downloading them, and storesync's peak RSS.
#
#   benches/remote.sh V1_ROOT V2_ROOT
#
# V1_ROOT and V2_ROOT are roots holding gnu/store and var/guix/db (the e2e bench's
# generated stores: $STORESYNC_BENCH_DIR/gen-<MB>mb*/v1 and v2). Environment:
#   STORESYNC_BIN   the binary to measure [target/release/storesync]
#   RUNS            runs per scenario and tool [3]
#   WORK            work directory [/var/tmp/storesync-remote-bench]
#   STORESYNC_WEED  the weed binary (else as tests/servers/seaweed.sh finds it)
#   THROTTLE_MBPS   limit the link to this many MB/s each way (benches/throttle.py, a proxy
#                   both tools go through; `tc` on lo would slow everything else on the host)
# The table goes to stdout (markdown rows), every run's numbers to stderr. The server is
# started on free loopback ports and stopped at the end.
set -euo pipefail

v1=$(realpath "${1:?usage: benches/remote.sh V1_ROOT V2_ROOT}")
v2=$(realpath "${2:?usage: benches/remote.sh V1_ROOT V2_ROOT}")
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${STORESYNC_BIN:-$here/target/release/storesync}
runs=${RUNS:-3}
work=${WORK:-/var/tmp/storesync-remote-bench}
[ -x "$bin" ] || { echo "remote.sh: no binary at $bin (cargo build --release)" >&2; exit 2; }
for tool in zstd tar curl python3; do
  command -v "$tool" >/dev/null || { echo "remote.sh: $tool is needed" >&2; exit 2; }
done

rm -rf "$work"
mkdir -p "$work"
bash "$here/tests/servers/seaweed.sh" start "$work/weed" >/dev/null
trap 'bash "$here/tests/servers/seaweed.sh" stop "$work/weed" || true' EXIT
set -a
# shellcheck disable=SC1091
. "$work/weed/env"
set +a
export AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
link="loopback, unthrottled"
if [ -n "${THROTTLE_MBPS:-}" ]; then
  # Both tools through one rate-limited proxy (benches/throttle.py): a CI-like link.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 "$here/benches/throttle.py" "$port" "${AWS_ENDPOINT_URL#http://}" "$THROTTLE_MBPS" >"$work/throttle.out" &
  throttle_pid=$!
  trap 'kill "$throttle_pid" 2>/dev/null || true; bash "$here/tests/servers/seaweed.sh" stop "$work/weed" || true' EXIT
  for _ in $(seq 1 50); do grep -q ready "$work/throttle.out" 2>/dev/null && break; sleep 0.1; done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  link="loopback through a proxy limited to $THROTTLE_MBPS MB/s each way"
fi
sign=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
url="$AWS_ENDPOINT_URL/$BUCKET"
# The bucket appears a little after the server answers.
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "${sign[@]}" "$url/?list-type=2&max-keys=1" || true)
  [ "$code" = 200 ] && break
  sleep 0.2
done

now() { date +%s.%N; }
# time_of CMD...: run it, print the wall seconds. Pending writes (the previous run's, a root
# just copied) are flushed first, as the e2e bench does: otherwise a restore's `syncfs` pays
# for them (a warm restore's for the 200 MiB `cp -a` of v1 before it).
time_of() {
  local s e
  sync
  s=$(now)
  "$@" >/dev/null
  e=$(now)
  python3 -c "print(f'{$e - $s:.3f}')"
}
median() { python3 -c 'import sys,statistics; print(f"{statistics.median(map(float, sys.argv[1:])):.3f}")' "$@"; }
field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"r": r}))' "$@"; }
put() { curl -sf "${sign[@]}" -T "$1" "$url/$2" -o /dev/null; }
get() { curl -sf "${sign[@]}" "$url/$1" -o "$2"; }
ss() { # storesync with a root; --json output to $json, peak RSS (KiB) to $json.rss
  local root=$1 json=$2
  shift 2
  /usr/bin/time -f %M -o "$json.rss" "$bin" --root "$root" --json --no-progress "$@" >"$json"
}
tarball() { tar -C "$1" -cf - gnu var | zstd -q -3 -T0 >"$2"; }
extract() { mkdir -p "$2" && zstd -q -d -c "$1" | tar -C "$2" -xf -; }
# The baseline: download the tarball of $1, then extract it into $work/root.
restore_tarball() { get "bench/$1.tar.zst" "$work/dl.tar.zst" && extract "$work/dl.tar.zst" "$work/root"; }
# The baseline: tar + zstd of v2, then upload it (run $1).
save_tarball() { tarball "$v2" "$work/up.tar.zst" && put "$work/up.tar.zst" "bench/up-$1.tar.zst"; }

# The tarballs in the server, as the seed's CI would have uploaded them.
tarball "$v1" "$work/v1.tar.zst"
tarball "$v2" "$work/v2.tar.zst"
put "$work/v1.tar.zst" bench/v1.tar.zst
put "$work/v2.tar.zst" bench/v2.tar.zst
size1=$(stat -c %s "$work/v1.tar.zst")
size2=$(stat -c %s "$work/v2.tar.zst")
# A cache holding v1 and v2, and their ids.
ss "$v1" "$work/s1.json" save --cache "s3://$BUCKET/cache"
ss "$v2" "$work/s2.json" save --cache "s3://$BUCKET/cache"
id1=$(field "$work/s1.json" 'r["snapshot"]')
id2=$(field "$work/s2.json" 'r["snapshot"]')
new2=$(field "$work/s2.json" 'r["packed_bytes"]')
# A restored v1 root to start warm restores from.
ss "$work/v1-restored" "$work/r0.json" restore --cache "s3://$BUCKET/cache" --snapshot "$id1"

declare -A T
for i in $(seq 1 "$runs"); do
  # cold restore
  rm -rf "$work/root"
  T[cold_s]+=" $(time_of ss "$work/root" "$work/cold.json" restore --cache "s3://$BUCKET/cache" --snapshot "$id1")"
  cold_down=$(field "$work/cold.json" 'r["transfer"]["bytes_downloaded"]')
  cold_req=$(field "$work/cold.json" 'r["transfer"]["requests"]')
  cold_rss=$(cat "$work/cold.json.rss")
  rm -rf "$work/root" "$work/dl.tar.zst"
  T[cold_b]+=" $(time_of restore_tarball v1)"
  # warm restore
  rm -rf "$work/root" && cp -a "$work/v1-restored" "$work/root"
  T[warm_s]+=" $(time_of ss "$work/root" "$work/warm.json" restore --cache "s3://$BUCKET/cache" --snapshot "$id2")"
  warm_down=$(field "$work/warm.json" 'r["transfer"]["bytes_downloaded"]')
  warm_local=$(field "$work/warm.json" 'r.get("local_bytes", 0)')
  warm_rss=$(cat "$work/warm.json.rss")
  rm -rf "$work/root" "$work/dl.tar.zst" && cp -a "$work/v1-restored" "$work/root"
  T[warm_b]+=" $(time_of restore_tarball v2)"
  # incremental save: a fresh prefix holding v1, then v2 timed
  ss "$v1" "$work/inc1.json" save --cache "s3://$BUCKET/inc-$i"
  T[inc_s]+=" $(time_of ss "$v2" "$work/inc.json" save --cache "s3://$BUCKET/inc-$i")"
  inc_up=$(field "$work/inc.json" 'r["transfer"]["bytes_uploaded"]')
  inc_rss=$(cat "$work/inc.json.rss")
  T[inc_b]+=" $(time_of save_tarball "$i")"
  echo "run $i: cold ${T[cold_s]##* } s vs ${T[cold_b]##* } s; warm ${T[warm_s]##* } s vs ${T[warm_b]##* } s; incremental save ${T[inc_s]##* } s vs ${T[inc_b]##* } s" >&2
done

row() { # name storesync-times baseline-times bytes-text rss
  local s b
  # shellcheck disable=SC2086 # a list of numbers
  s=$(median ${T[$2]})
  # shellcheck disable=SC2086
  b=$(median ${T[$3]})
  echo "| $1 | $s s | $b s | $(python3 -c "print(f'{$s / $b:.2f}x')") | $4 | $5 MiB |"
}
mib() { python3 -c "print(f'{$1 / 1048576:.1f} MiB')"; }
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $runs alternating runs, median; $(nproc) CPUs"
echo
echo "| scenario (S3, SeaweedFS; $link) | storesync | tarball baseline | ratio | bytes | storesync peak RSS |"
echo "|---|---|---|---|---|---|"
row "cold restore of v1" cold_s cold_b "down $(mib "$cold_down") in $cold_req requests (tarball $(mib "$size1"))" $((cold_rss / 1024))
row "warm restore of v2 over v1" warm_s warm_b "down $(mib "$warm_down"), $(mib "$warm_local") copied from v1's files; v2's new packed content $(mib "$new2") (tarball $(mib "$size2"))" $((warm_rss / 1024))
row "incremental save of v2" inc_s inc_b "up $(mib "$inc_up"); new packed content $(mib "$new2") (tarball $(mib "$size2"))" $((inc_rss / 1024))
