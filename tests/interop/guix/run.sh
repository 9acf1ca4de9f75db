#!/usr/bin/env bash
# Guix interop suite for storesync: every restore is judged by the real
# guix-daemon 1.5.0 (Debian sid package) running in a debootstrap chroot.
#
#   sudo tests/interop/guix/run.sh          (root required)
#
# Environment:
#   STORESYNC   absolute path of the storesync binary
#               (default: $(git rev-parse --show-toplevel)/target/release/storesync)
#   INTEROP_DIR where the chroot and work files live (default /var/tmp/storesync-interop)
#   GUIX_INTEROP_FAKE=1   checker self-test: "restore" by copying the saved source
#               state instead of running storesync restore (save/dump-nar still use
#               storesync when present). Only for developing this script.
#   KEEP_CHROOT=0  delete the chroot at the end (default keep, for reuse)
#
# Prints "PASS: ..." / "FAIL: ..." per check and a closing "N passed, N failed"
# line; exits 1 if any check failed. ~4 min with a reused chroot, ~5 min from
# scratch (debootstrap of Debian sid + guix).
#
# Source store: populate.scm through the daemon (generation a, saved as snapshot
# A; generation b on top, snapshot B). Scenarios, each judged by the daemon
# started on the restored /gnu/store + /var/guix/db of the chroot:
#   1  full restore into a root with no /gnu and no /var/guix
#   2  fresh install's empty DB, daemon running: --dry-run, a restore while a
#      client is connected (big-lock shared by both), --wait a no-op
#   3  snapshot A into a fresh root, then B on top (only new paths written;
#      A's inodes and ValidPaths rows incl. registrationTime untouched)
#   4  closure of one output;  4b closure of a .drv, then the daemon builds it
#   5  store owned by guix-daemon, unprivileged daemon;  5b same without a DB
#   6  B over A with invalid leftovers and a valid path vanished from disk
#   7  save of a store with a corrupted item, with/without --skip-corrupt
#   8  B over A where the target built B's non-deterministic output itself
#   9  live store: restore while guix-daemon runs, a collector holding gc.lock
#      first (waited for), a guix build of something else and guix gc in a loop
# Checks: guix gc --verify=contents, --references/--referrers/--derivers per
# path, ValidPaths/Refs/DerivationOutputs vs source, DB schema/pragmas/
# integrity, file metadata and ownership, .links naming, dump-nar vs daemon
# hash, guix build doing no work, guix gc with test roots, guix size,
# guix gc --optimize, the daemon adding/building on the restored DB.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../../.." && pwd))
STORESYNC=${STORESYNC:-$REPO/target/release/storesync}
BASE=${INTEROP_DIR:-/var/tmp/storesync-interop}
CH=$BASE/guix-chroot
W=$BASE/guix-work
MARKER=$CH/.storesync-interop-complete
FAKE=${GUIX_INTEROP_FAKE:-0}
T0=$(date +%s)

NPASS=0
NFAIL=0
FAILED=()
log()  { printf '%s [%4ss] %s\n' "--" "$(( $(date +%s) - T0 ))" "$*"; }
pass() { NPASS=$((NPASS + 1)); echo "PASS: $*"; }
fail() { NFAIL=$((NFAIL + 1)); FAILED+=("$*"); echo "FAIL: $*"; }
info() { echo "INFO: $*"; }
# check_same NAME EXPECTED_FILE ACTUAL_FILE
check_same() {
    if diff -u "$2" "$3" > "$W/diff.tmp" 2>&1; then
        pass "$1 ($(wc -l < "$2") lines identical)"
    else
        fail "$1 (differs; first lines of diff -u expected actual:)"
        head -n 25 "$W/diff.tmp" | sed 's/^/      /'
    fi
}

if [ "$(id -u)" != 0 ]; then echo "FAIL: run.sh must run as root" >&2; exit 1; fi

# ---------------------------------------------------------------- teardown
chroot_pids() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$CH" ] && echo "${p#/proc/}"
    done
    return 0
}
stop_daemon() {
    # every process whose root is the chroot: the daemon, its workers, clients
    local pids i
    pids=$(chroot_pids)
    [ -z "$pids" ] && return 0
    kill $pids 2>/dev/null || true
    for i in $(seq 1 50); do
        pids=$(chroot_pids)
        [ -z "$pids" ] && return 0
        sleep 0.1
    done
    kill -9 $pids 2>/dev/null || true
    sleep 0.3
}
unmount_all() {
    local m
    for m in "$CH/dev" "$CH/proc"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m"; fi
    done
}
teardown() {
    local rc=$?
    set +e
    stop_daemon
    unmount_all
    if [ "${KEEP_CHROOT:-1}" = 0 ]; then rm -rf --one-file-system "$CH"; fi
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup
install_host_deps() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v sqlite3 >/dev/null || need+=(sqlite3)
    command -v jq >/dev/null || need+=(jq)
    command -v mountpoint >/dev/null || need+=(util-linux)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

build_chroot() {
    log "building Debian sid chroot with guix at $CH (takes ~3 min)"
    unmount_all
    if grep -q " $CH/" /proc/mounts; then
        echo "FAIL: something is still mounted under $CH; refusing to delete it" >&2
        exit 1
    fi
    rm -rf --one-file-system "$CH"
    mkdir -p "$BASE"
    # debootstrap's resolver misses libgcrypt-dev (guile-gcrypt fails to
    # configure): it exits non-zero; fixed below with apt-get -f.
    debootstrap --variant=minbase --include=guix sid "$CH" http://deb.debian.org/debian \
        > "$BASE/debootstrap.log" 2>&1 || log "debootstrap exit $? (expected: guile-gcrypt), fixing up"
    [ -x "$CH/usr/bin/guix-daemon" ] || { echo "FAIL: debootstrap did not install guix; see $BASE/debootstrap.log" >&2; exit 1; }
    cp /etc/resolv.conf "$CH/etc/resolv.conf"
    mount_chroot
    chroot "$CH" env DEBIAN_FRONTEND=noninteractive sh -c '
        set -e
        apt-get -o Acquire::Check-Valid-Until=false update -qq
        apt-get install -y -f -qq
        dpkg --configure -a
        apt-get install -y -qq sqlite3 busybox-static
        getent group guix-daemon >/dev/null || groupadd -r guix-daemon
        getent passwd guix-daemon >/dev/null || useradd -r -g guix-daemon -d /var/empty -s /usr/sbin/nologin guix-daemon
        guix-daemon --version' > "$BASE/chroot-fixup.log" 2>&1 \
        || { echo "FAIL: chroot fix-up failed; see $BASE/chroot-fixup.log" >&2; tail -n 20 "$BASE/chroot-fixup.log"; exit 1; }
    echo "guix 1.5 chroot ok" > "$MARKER"
}

mount_chroot() {
    mountpoint -q "$CH/proc" || mount -t proc proc "$CH/proc"
    mountpoint -q "$CH/dev" || mount --bind /dev "$CH/dev"
}

ensure_chroot() {
    if [ -f "$MARKER" ] && [ -x "$CH/usr/bin/guix-daemon" ] && [ -x "$CH/bin/busybox" ] \
       && [ -x "$CH/usr/bin/sqlite3" ] && grep -q '^guix-daemon:' "$CH/etc/passwd"; then
        log "reusing chroot $CH"
        mount_chroot
    else
        build_chroot
    fi
}

# ---------------------------------------------------------------- daemon
GD_UID=
GD_GID=
DAEMON_MODE=root
in_ch() { chroot "$CH" env LC_ALL=C.UTF-8 HOME=/root "$@"; }
start_daemon() { # [unprivileged]
    local i
    mkdir -p "$CH/var/log/guix"
    DAEMON_MODE=${1:-root}
    if [ "$DAEMON_MODE" = unprivileged ]; then
        chown -R "$GD_UID:$GD_GID" "$CH/var/log/guix"
        in_ch sh -c 'setsid setpriv --reuid=guix-daemon --regid=guix-daemon --init-groups --inh-caps=+chown --ambient-caps=+chown guix-daemon --disable-chroot --no-substitutes </dev/null >>/var/log/guix-daemon.log 2>&1 &'
    else
        in_ch sh -c 'setsid guix-daemon --disable-chroot --no-substitutes </dev/null >>/var/log/guix-daemon.log 2>&1 &'
    fi
    for i in $(seq 1 100); do
        [ -S "$CH/var/guix/daemon-socket/socket" ] && return 0
        sleep 0.1
    done
    echo "FAIL: guix-daemon did not create its socket" >&2
    tail -n 20 "$CH/var/log/guix-daemon.log" >&2
    return 1
}
wipe_state() { # remove /gnu and /var/guix entirely (daemon must be stopped)
    if [ -d "$CH/gnu" ]; then chmod -R u+w "$CH/gnu"; rm -rf --one-file-system "$CH/gnu"; fi
    rm -rf --one-file-system "$CH/var/guix" "$CH/var/log/guix"
}
empty_state() { # empty /gnu/store and /var/guix (dirs kept)
    wipe_state
    mkdir -p "$CH/gnu/store" "$CH/var/guix"
}

# ---------------------------------------------------------------- storesync
ss() { "$STORESYNC" --flavor guix --no-progress "$@"; }
have_storesync() { [ -x "$STORESYNC" ]; }

# ---------------------------------------------------------------- observations
# read the DB as its owner, so that any -wal/-shm file sqlite creates belongs
# to the daemon's user (an unprivileged daemon could not open root-owned ones)
db() {
    local f=$CH/var/guix/db/db.sqlite
    setpriv --reuid="$(stat -c %u "$f")" --regid="$(stat -c %g "$f")" --clear-groups \
        sqlite3 -batch -cmd ".timeout 20000" "$f" "$@"
}
q_validpaths() { db "select path||' '||hash||' '||narSize||' '||coalesce(deriver,'-') from ValidPaths order by path;"; }
q_validpaths_full() { db "select path||' '||hash||' '||narSize||' '||coalesce(deriver,'-')||' '||registrationTime from ValidPaths order by path;"; }
q_paths() { db "select path from ValidPaths order by path;"; }
q_refs() { db "select a.path||' -> '||b.path from Refs r join ValidPaths a on a.id=r.referrer join ValidPaths b on b.id=r.reference order by 1;"; }
q_drvouts() { db "select v.path||' '||d.id||' '||d.path from DerivationOutputs d join ValidPaths v on v.id=d.drv order by 1;"; }
# file metadata of store items (not .links): name type mode mtime size symlink-target
q_files() {
    (cd "$CH/gnu/store" && find . -mindepth 1 -path ./.links -prune -o \
        -printf '%P|%y|%m|%T@|%s|%l\n') | LC_ALL=C sort
}
# the daemon's own answers, through the guix CLI, for every path of a list
write_refs_helper() {
    cat > "$CH/root/refs-one.sh" <<'EOF'
#!/bin/sh
# print "PATH KIND LINE" for guix gc --references/--referrers/--derivers of $1
p=$1
for k in references referrers derivers; do
    if out=$(guix gc --$k "$p" 2>&1); then
        printf '%s\n' "$out" | sed "/^\$/d; s|^|$p $k |"
    else
        printf '%s %s ERROR %s\n' "$p" "$k" "$(printf '%s' "$out" | tr '\n' ' ')"
    fi
done
EOF
    chmod +x "$CH/root/refs-one.sh"
}
q_cli_refs() { # PATHLIST -> stdout
    write_refs_helper
    # guix-daemon 1.5.0 running unprivileged dies (SIGPOLL) when two clients
    # connect concurrently (see FACTS.md): one client at a time there.
    if [ "$DAEMON_MODE" != unprivileged ]; then
        # Each query writes its own file: two writers sharing one pipe can interleave inside a
        # line once a block exceeds PIPE_BUF, and the mangled line would silently drop out.
        in_ch sh -c 'rm -rf /root/refs.out && mkdir /root/refs.out &&
            n=0; while read -r p; do n=$((n+1)); printf "%s %s\n" "$n" "$p"; done |
            xargs -P 2 -n 2 sh -c "/root/refs-one.sh \"\$1\" > /root/refs.out/\$0"' < "$1"
        cat "$CH"/root/refs.out/* | LC_ALL=C sort
        return
    fi
    local p o
    while read -r p; do
        o=$(in_ch /root/refs-one.sh "$p")
        if printf '%s' "$o" | grep -q "failed to connect to"; then
            restart_dead_daemon
            o=$(in_ch /root/refs-one.sh "$p")
        fi
        [ -n "$o" ] && printf '%s\n' "$o"
    done < "$1" | LC_ALL=C sort
}
daemon_alive() { [ -n "$(chroot_pids)" ] && [ -S "$CH/var/guix/daemon-socket/socket" ] && in_ch guix gc --list-roots >/dev/null 2>&1; }
# guix-daemon 1.5.0 running unprivileged (--disable-chroot, no build users) is
# sporadically SIGKILLed while serving short-lived clients, also on its own
# untouched state (see FACTS.md). In that mode only, a client that finds the
# daemon gone restarts it and is retried once; the restarts are counted.
# (a file, since clients often run in subshells and pipelines)
daemon_restarts() { if [ -f "$W/daemon-restarts" ]; then wc -l < "$W/daemon-restarts"; else echo 0; fi; }
restart_dead_daemon() {
    echo "$(date +%T) $DAEMON_MODE" >> "$W/daemon-restarts"
    stop_daemon
    start_daemon "$DAEMON_MODE"
}
gx() { # guix "$@" in the chroot, with the retry above
    local o e rc=0
    o=$(mktemp); e=$(mktemp)
    in_ch guix "$@" > "$o" 2> "$e" || rc=$?
    if [ $rc != 0 ] && grep -q "failed to connect to" "$e"; then
        restart_dead_daemon
        rc=0; in_ch guix "$@" > "$o" 2> "$e" || rc=$?
    fi
    cat "$o"; cat "$e" >&2; rm -f "$o" "$e"
    return $rc
}
# keep only lines whose path columns are all in the set (for partial restores)
filter_to_set() { # SETFILE < in > out   (fields: 1 and 3 checked when store paths)
    awk 'NR==FNR { s[$1]=1; next }
         { ok = ($1 in s); if (NF >= 3 && $3 ~ /^\/gnu\/store\// && !($3 in s)) ok = 0;
           if ($2 == "->" && !($3 in s)) ok = 0;
           if (ok) print }' "$1" -
}
filter_files_to_set() { # SETFILE < q_files output
    awk -F'|' 'NR==FNR { sub("/gnu/store/", "", $1); s[$1]=1; next }
               { split($1, a, "/"); if (a[1] in s) print }' "$1" -
}

snapshot_source() { # DIR: record everything the checks compare against
    local d=$1
    mkdir -p "$d"
    q_paths > "$d/paths"
    q_validpaths > "$d/validpaths"
    q_refs > "$d/refs"
    q_drvouts > "$d/drvouts"
    q_files > "$d/files"
    db .schema > "$d/schema.sql"
    db "PRAGMA page_size; PRAGMA auto_vacuum; PRAGMA user_version; PRAGMA encoding;" > "$d/pragmas"
    q_cli_refs "$d/paths" > "$d/cli"
}

# ---------------------------------------------------------------- checks
# check_state NAME EXPECTED_SET_FILE SOURCE_DIR OWNER_UID
# The daemon is running on the restored state.
check_state() {
    local name=$1 set=$2 src=$3 owner=$4
    local out=$W/$name
    mkdir -p "$out"

    # exactly the expected set is valid
    q_paths > "$out/paths"
    check_same "[$name] ValidPaths set = expected ($(wc -l < "$set") paths)" "$set" "$out/paths"
    { ls -A "$CH/gnu/store" | grep -v '^\.links$' || true; } | sed 's|^|/gnu/store/|' | LC_ALL=C sort > "$out/toplevel"
    check_same "[$name] /gnu/store entries = expected set (no strays)" "$set" "$out/toplevel"

    # guix gc --verify=contents
    if gx gc --verify=contents > "$out/verify.out" 2> "$out/verify.err"; then
        if grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' "$out/verify.err" > "$out/verify.bad"; then
            fail "[$name] guix gc --verify=contents printed problems:"; sed 's/^/      /' "$out/verify.bad" | head -n 20
        else
            pass "[$name] guix gc --verify=contents: nothing bad ($(tr '\n' ' ' < "$out/verify.err"))"
        fi
    else
        fail "[$name] guix gc --verify=contents exit non-zero:"; sed 's/^/      /' "$out/verify.err" | head -n 20
    fi

    # DB rows vs source (hash, narSize, deriver), Refs, DerivationOutputs
    q_validpaths > "$out/validpaths"
    filter_to_set "$set" < "$src/validpaths" > "$out/validpaths.exp"
    check_same "[$name] ValidPaths path/hash/narSize/deriver = source" "$out/validpaths.exp" "$out/validpaths"
    q_refs > "$out/refs"
    filter_to_set "$set" < "$src/refs" > "$out/refs.exp"
    check_same "[$name] Refs (by path, incl. self-refs) = source" "$out/refs.exp" "$out/refs"
    q_drvouts > "$out/drvouts"
    filter_to_set_drv "$set" < "$src/drvouts" > "$out/drvouts.exp"
    check_same "[$name] DerivationOutputs (ids ignored) = source" "$out/drvouts.exp" "$out/drvouts"
    local now bad
    now=$(date +%s)
    bad=$(db "select count(*) from ValidPaths where registrationTime <= 0 or registrationTime > $now + 5;")
    if [ "$bad" = 0 ]; then pass "[$name] registrationTime plausible on all rows"; else fail "[$name] $bad rows with implausible registrationTime"; fi

    # guix gc --references/--referrers/--derivers for every path, via the CLI
    q_cli_refs "$set" > "$out/cli"
    filter_to_set "$set" < "$src/cli" > "$out/cli.exp"
    check_same "[$name] guix gc --references/--referrers/--derivers for $(wc -l < "$set") paths = source" "$out/cli.exp" "$out/cli"

    # files: types, modes, mtimes, sizes, symlink targets
    q_files > "$out/files"
    filter_files_to_set "$set" < "$src/files" > "$out/files.exp"
    check_same "[$name] file types/modes/mtime/size/symlink targets = source" "$out/files.exp" "$out/files"
    local wrong
    wrong=$(find "$CH/gnu/store" \( ! -uid "$owner" -o ! -gid "$(stat -c %g "$CH/gnu/store")" \) -printf '%u:%g %p\n' | head -n 5)
    if [ -z "$wrong" ]; then pass "[$name] every file under /gnu/store owned by uid $owner (store owner)"
    else fail "[$name] files not owned by store owner uid $owner:"; echo "$wrong" | sed 's/^/      /'; fi

    # /gnu/store/.links: every entry named after the NAR sha256 of its file
    check_links "$name"

    # NAR bytes: storesync dump-nar == daemon's recorded hash
    if have_storesync; then
        local p h got n=0 badn=0
        while read -r p h _; do
            n=$((n + 1))
            got=sha256:$(ss --root "$CH" dump-nar "$p" 2>"$out/dumpnar.err" | sha256sum | cut -d' ' -f1) || true
            if [ "$got" != "$h" ]; then badn=$((badn + 1)); [ $badn -le 5 ] && echo "      $p: dump-nar $got, daemon $h $(head -c 200 "$out/dumpnar.err")"; fi
        done < "$out/validpaths"
        if [ $badn = 0 ]; then pass "[$name] storesync dump-nar | sha256sum = daemon hash for $n paths"
        else fail "[$name] storesync dump-nar differs from daemon hash for $badn of $n paths"; fi
    fi

    # guix build X.drv: no build for restored outputs
    local drvs
    # .drv files in the set all of whose outputs are in the set
    drvs=$(awk 'NR==FNR { s[$1]=1; next } ($1 in s) { n[$1]++; if ($3 in s) v[$1]++ }
                END { for (d in n) if (n[d] == v[d]) print d }' "$set" "$out/drvouts" | sort)
    if [ -n "$drvs" ]; then
        local before after
        before=$(db "select count(*) from ValidPaths;")
        if gx build $drvs > "$out/build.out" 2> "$out/build.err"; then
            after=$(db "select count(*) from ValidPaths;")
            if grep -q -i -E 'build|substitut|download' "$out/build.err" || [ "$before" != "$after" ]; then
                fail "[$name] guix build of $(echo "$drvs" | wc -l) .drv did work:"; head -n 10 "$out/build.err" | sed 's/^/      /'
            else
                pass "[$name] guix build of $(echo "$drvs" | wc -l) restored .drv: no build, printed $(wc -l < "$out/build.out") outputs"
            fi
        else
            fail "[$name] guix build exit non-zero:"; head -n 10 "$out/build.err" | sed 's/^/      /'
        fi
    fi
    if [ "$DAEMON_MODE" = unprivileged ]; then
        info "[$name] unprivileged guix-daemon restarts so far: $(daemon_restarts) (daemon bug, not the restored state)"
    elif daemon_alive && [ "$(daemon_restarts)" = 0 ]; then pass "[$name] guix-daemon ($DAEMON_MODE) still serving after all checks"
    else fail "[$name] guix-daemon ($DAEMON_MODE) died during checks: $(grep -v -e accepted -e warning "$CH/var/log/guix-daemon.log" | tail -n 3 | tr '\n' ' ')"; fi
}
filter_to_set_drv() { # drvouts lines "DRV ID OUT": keep when DRV in set
    awk 'NR==FNR { s[$1]=1; next } ($1 in s)' "$1" -
}
check_links() {
    local name=$1 f nm h n=0 bad=0 err
    [ -d "$CH/gnu/store/.links" ] || { info "[$name] no /gnu/store/.links"; return 0; }
    err=$(mktemp)
    while read -r f; do
        nm=$(basename "$f")
        n=$((n + 1))
        # The hash on stdout; stderr apart (a guix that printed the right hash, then aborted at
        # exit under load with "Cannot exit gracefully when init is in progress", once failed
        # this check), shown only when the hash differs.
        h=$(in_ch guix hash -S nar -H sha256 "/gnu/store/.links/$nm" 2>"$err") || true
        [ "$h" = "$nm" ] || { bad=$((bad + 1)); echo "      .links/$nm holds a file whose NAR hash is $h $(head -c 300 "$err")"; }
    done < <(find "$CH/gnu/store/.links" -mindepth 1)
    rm -f "$err"
    if [ $bad = 0 ]; then pass "[$name] $n /gnu/store/.links entries named by their NAR sha256"
    else fail "[$name] $bad /gnu/store/.links entries misnamed"; fi
    local big1
    big1=$(find "$CH/gnu/store" -path "$CH/gnu/store/.links" -prune -o -type f -size +8191c -links 1 -print | wc -l)
    info "[$name] regular files >= 8192 bytes not hard-linked into .links: $big1"
}

# check_gc NAME ROOT_OUTPUT ROOT_DRV SOURCE_DIR
# add a gcroot symlink for ROOT_OUTPUT and `guix build --root` for ROOT_DRV, run
# guix gc, check everything reachable from them survived.
check_gc() {
    local name=$1 rootout=$2 rootdrv=$3 src=$4 out=$W/$1
    ln -sfn "$rootout" "$CH/var/guix/gcroots/storesync-test-root"
    rm -f "$CH"/tmp/storesync-test-result*
    local args=("$rootout")
    if [ -n "$rootdrv" ]; then
        if gx build --root=/tmp/storesync-test-result "$rootdrv" > "$out/gcbuild.out" 2> "$out/gcbuild.err"; then
            args+=($(grep '^/gnu/store/' "$out/gcbuild.out" || true))
        else
            fail "[$name] guix build --root failed: $(head -c 300 "$out/gcbuild.err")"
        fi
    fi
    # expected survivors: closure of the roots (computed by the daemon before GC)
    gx gc -R "${args[@]}" | LC_ALL=C sort -u > "$out/gc.live.exp" || fail "[$name] guix gc -R of the test roots failed"
    if gx gc > "$out/gc.out" 2> "$out/gc.err"; then
        local lost
        lost=$({ grep -h -o "/gnu/store/[^'\`]*" "$out/gc.err" "$out/gc.out" || true; } | LC_ALL=C sort -u | LC_ALL=C comm -12 - "$out/gc.live.exp" | head -n 5)
        q_paths > "$out/paths.aftergc"
        local missing
        missing=$(LC_ALL=C comm -23 "$out/gc.live.exp" "$out/paths.aftergc" | head -n 5)
        local gone=0 p
        while read -r p; do [ -e "$CH$p" ] || gone=$((gone + 1)); done < "$out/gc.live.exp"
        if [ -z "$lost" ] && [ -z "$missing" ] && [ $gone = 0 ]; then
            pass "[$name] guix gc kept all $(wc -l < "$out/gc.live.exp") paths reachable from test roots (deleted $(grep -c '^deleting .*/gnu/store/' "$out/gc.err" || true) others)"
        else
            fail "[$name] guix gc deleted reachable paths: ${lost:-} ${missing:-} ($gone missing on disk)"
        fi
        if gx gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' > "$out/verify2.bad"; then
            fail "[$name] verify after gc:"; head -n 10 "$out/verify2.bad" | sed 's/^/      /'
        else
            pass "[$name] guix gc --verify=contents clean after gc"
        fi
    else
        fail "[$name] guix gc failed:"; tail -n 10 "$out/gc.err" | sed 's/^/      /'
    fi
    rm -f "$CH/var/guix/gcroots/storesync-test-root"
    return 0
}

# guix size (query-path-info over a closure) prints the same as on the source
check_guix_size() { # NAME PATH
    local name=$1 p=$2
    if gx size "$p" > "$W/$name.size" 2> "$W/$name.size.err" && diff -u "$W/src/size" "$W/$name.size" > "$W/diff.tmp"; then
        pass "[$name] guix size $p = source ($(tail -n 1 "$W/$name.size"))"
    else fail "[$name] guix size differs or failed: $(head -c 300 "$W/$name.size.err") $(head -n 10 "$W/diff.tmp" 2>/dev/null)"; fi
}
# the daemon adds and builds new items on top of the restored DB
check_daemon_writes() { # NAME
    local name=$1 before after
    before=$(db "select count(*) from ValidPaths;")
    if in_ch sh -c 'cd /root && GEN=c NDRV=6 OUT=/root/populate-c.list guix repl /root/populate.scm' > "$W/$name.populate-c.log" 2>&1; then
        after=$(db "select count(*) from ValidPaths;")
        local bad
        bad=$(gx gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' || true)
        if [ -z "$bad" ] && [ "$after" -gt "$before" ]; then
            pass "[$name] daemon built/added $((after - before)) new items on the restored DB (references restored busybox, text items), verify clean"
        else fail "[$name] after daemon writes: $before -> $after paths, verify: $bad"; fi
    else
        fail "[$name] daemon could not add/build on the restored state:"; tail -n 8 "$W/$name.populate-c.log" | sed 's/^/      /'
    fi
}

check_db_files() { # NAME OWNER_UID
    local name=$1 owner=$2 d=$CH/var/guix/db
    if [ "$(cat "$d/schema" 2>/dev/null)" = 7 ] && [ "$(stat -c %s "$d/schema")" = 1 ]; then
        pass "[$name] /var/guix/db/schema is '7' (1 byte)"
    else fail "[$name] /var/guix/db/schema is '$(cat "$d/schema" 2>/dev/null || echo MISSING)' size $(stat -c %s "$d/schema" 2>/dev/null)"; fi
    local jm
    jm=$(db "PRAGMA journal_mode;" 2>&1)
    if [ "$jm" = wal ]; then pass "[$name] DB journal_mode=wal"; else fail "[$name] DB journal_mode=$jm (daemon uses wal)"; fi
    local wrong
    wrong=$(find "$CH/var/guix/db" ! -uid "$owner" -printf '%u %p\n')
    if [ -z "$wrong" ]; then pass "[$name] /var/guix/db files owned by uid $owner"
    else fail "[$name] /var/guix/db files not owned by uid $owner: $wrong"; fi
    db .schema > "$W/$name.schema.sql"
    check_same "[$name] DB .schema identical to the daemon's" "$W/src/schema.sql" "$W/$name.schema.sql"
    db "PRAGMA page_size; PRAGMA auto_vacuum; PRAGMA user_version; PRAGMA encoding;" > "$W/$name.pragmas"
    check_same "[$name] DB page_size/auto_vacuum/user_version/encoding = daemon's" "$W/src/pragmas" "$W/$name.pragmas"
    local ic fk
    ic=$(db "PRAGMA integrity_check;" 2>&1); fk=$(db "PRAGMA foreign_key_check;" 2>&1)
    if [ "$ic" = ok ] && [ -z "$fk" ]; then pass "[$name] DB integrity_check ok, foreign_key_check empty"
    else fail "[$name] DB integrity_check: $ic; foreign_key_check: $(echo "$fk" | head -n 5 | tr '\n' ' ')"; fi
    local seq maxid
    seq=$(db "select coalesce((select seq from sqlite_sequence where name='ValidPaths'),0);")
    maxid=$(db "select coalesce(max(id),0) from ValidPaths;")
    if [ "$seq" -ge "$maxid" ]; then pass "[$name] sqlite_sequence(ValidPaths)=$seq >= max(id)=$maxid"
    else fail "[$name] sqlite_sequence(ValidPaths)=$seq < max(id)=$maxid: the daemon would reuse ids"; fi
}

# restore wrapper: restore_json NAME [args...] -> sets RJ (json file), RC
restore_json() {
    local name=$1; shift
    RJ=$W/$name.restore.json
    RC=0
    if [ "$FAKE" = 1 ]; then
        echo '{"restored":0,"already_valid":0,"failed":[],"skipped":[]}' > "$RJ"
        return 0
    fi
    ss --root "$CH" --json restore "$@" > "$RJ" 2> "$W/$name.restore.err" || RC=$?
    return 0
}
json_ok() { # NAME EXPECTED_RESTORED EXPECTED_ALREADY (either may be '-')
    local name=$1 er=$2 ea=$3 r a f s
    if [ "$FAKE" = 1 ]; then return 0; fi
    if [ "$RC" != 0 ]; then
        fail "[$name] storesync restore exit $RC: $(head -c 600 "$W/$name.restore.err") $(head -c 300 "$RJ")"; return 1
    fi
    if ! jq -e . "$RJ" > /dev/null 2>&1; then fail "[$name] restore --json output is not JSON: $(head -c 300 "$RJ")"; return 1; fi
    r=$(jq -r '.restored' "$RJ"); a=$(jq -r '.already_valid' "$RJ")
    f=$(jq -r '.failed | length' "$RJ"); s=$(jq -r '.skipped | length' "$RJ")
    if { [ "$er" = - ] || [ "$r" = "$er" ]; } && { [ "$ea" = - ] || [ "$a" = "$ea" ]; } && [ "$f" = 0 ] && [ "$s" = 0 ]; then
        pass "[$name] storesync restore: restored=$r already_valid=$a failed=0 skipped=0"
    else
        fail "[$name] storesync restore json: restored=$r (want $er) already_valid=$a (want $ea) failed=$f skipped=$s: $(head -c 400 "$RJ")"
    fi
}
fake_restore() { # SRCSTATE: copy a saved state (checker self-test only)
    [ "$FAKE" = 1 ] || return 0
    wipe_state
    mkdir -p "$CH/gnu" "$CH/var/guix"
    cp -a "$1/store" "$CH/gnu/store"
    cp -a "$1/db" "$CH/var/guix/db"
}

# ================================================================ main
install_host_deps
stop_daemon
ensure_chroot
GD_UID=$(awk -F: '$1=="guix-daemon"{print $3}' "$CH/etc/passwd")
GD_GID=$(awk -F: '$1=="guix-daemon"{print $4}' "$CH/etc/passwd")
rm -rf "$W"; mkdir -p "$W"
CACHE=$W/cache
log "guix: $(in_ch guix-daemon --version | head -n 1); storesync: $STORESYNC"
if have_storesync; then
    info "storesync binary: $STORESYNC ($(stat -c '%y' "$STORESYNC" | cut -d. -f1))"
else
    fail "storesync binary not found at $STORESYNC (set STORESYNC=/abs/path)"
    [ "$FAKE" = 1 ] || { echo "$NPASS passed, $NFAIL failed"; exit 1; }
fi

# ---------------------------------------------------------------- source store
log "populating the source store through the daemon (generation a)"
empty_state
start_daemon
cp "$HERE/populate.scm" "$CH/root/populate.scm"
in_ch sh -c 'cd /root && GEN=a OUT=/root/populate-a.list guix repl /root/populate.scm' > "$W/populate-a.log" 2>&1 \
    || { fail "populate generation a"; tail -n 30 "$W/populate-a.log"; exit 1; }
snapshot_source "$W/src-a"
log "source a: $(wc -l < "$W/src-a/paths") valid paths; saving snapshot A (daemon running, idle)"
SNAP_A=
if have_storesync; then
    if ss --root "$CH" --json save --cache "$CACHE" > "$W/save-a.json" 2> "$W/save-a.err"; then
        SNAP_A=$(jq -r .snapshot "$W/save-a.json")
        if [ "$(jq -r .paths "$W/save-a.json")" = "$(wc -l < "$W/src-a/paths")" ] && [ "$(jq -r .new_paths "$W/save-a.json")" = "$(wc -l < "$W/src-a/paths")" ]; then
            pass "save A: snapshot $SNAP_A paths=$(jq -r .paths "$W/save-a.json") new_paths=$(jq -r .new_paths "$W/save-a.json")"
        else fail "save A json: $(cat "$W/save-a.json") (want paths=new_paths=$(wc -l < "$W/src-a/paths"))"; fi
    else fail "storesync save A: exit $?: $(head -c 600 "$W/save-a.err")"; fi
fi
stop_daemon
mkdir -p "$W/state-a"; cp -a "$CH/gnu/store" "$W/state-a/store"; cp -a "$CH/var/guix/db" "$W/state-a/db"

log "populating generation b on top"
start_daemon
in_ch sh -c 'cd /root && GEN=b OUT=/root/populate-b.list guix repl /root/populate.scm' > "$W/populate-b.log" 2>&1 \
    || { fail "populate generation b"; tail -n 30 "$W/populate-b.log"; exit 1; }
snapshot_source "$W/src"
NA=$(wc -l < "$W/src-a/paths"); NB=$(wc -l < "$W/src/paths")
CONSUMER=$(awk '$1=="out" && $2 ~ /-consumer-b$/ {print $2}' "$CH/root/populate-b.list")
CONSUMER_DRV=$(awk '$1=="drv" && $2 ~ /-consumer-b.drv$/ {print $2}' "$CH/root/populate-b.list")
MULTI_DRV=$(awk '$1=="drv" && $2 ~ /-multi-a-2.drv$/ {print $2}' "$CH/root/populate-a.list")
in_ch guix gc -R "$CONSUMER" | LC_ALL=C sort > "$W/closure-consumer"
in_ch guix size "$CONSUMER" > "$W/src/size"
in_ch guix gc -R "$CONSUMER_DRV" | LC_ALL=C sort > "$W/closure-consumer-drv"
info "source b: $NB valid paths ($((NB - NA)) new), $(wc -l < "$W/src/drvouts") DerivationOutputs rows, $(grep -c -- ' -> ' "$W/src/refs") Refs, $(find "$CH/gnu/store/.links" -mindepth 1 | wc -l) .links entries; closure of $CONSUMER: $(wc -l < "$W/closure-consumer") paths"
stop_daemon
SNAP_B=
if have_storesync; then
    if ss --root "$CH" --json save --cache "$CACHE" > "$W/save-b.json" 2> "$W/save-b.err"; then
        SNAP_B=$(jq -r .snapshot "$W/save-b.json")
        if [ "$(jq -r .paths "$W/save-b.json")" = "$NB" ] && [ "$(jq -r .new_paths "$W/save-b.json")" = "$((NB - NA))" ]; then
            pass "save B (daemon stopped): snapshot $SNAP_B paths=$NB new_paths=$((NB - NA))"
        else fail "save B json: $(cat "$W/save-b.json") (want paths=$NB new_paths=$((NB - NA)))"; fi
    else fail "storesync save B: exit $?: $(head -c 600 "$W/save-b.err")"; fi
    if ss --json verify --cache "$CACHE" > "$W/verify-cache.json" 2> "$W/verify-cache.err"; then
        pass "storesync verify --cache: ok"
    else fail "storesync verify --cache: exit $?: $(head -c 300 "$W/verify-cache.err") $(head -c 300 "$W/verify-cache.json")"; fi
fi
mkdir -p "$W/state-b"; cp -a "$CH/gnu/store" "$W/state-b/store"; cp -a "$CH/var/guix/db" "$W/state-b/db"

# ---------------------------------------------------------------- 1. full, into a root without any state
log "scenario 1: full restore into an empty root (no /gnu, no /var/guix)"
wipe_state
restore_json s1-full --cache "$CACHE"
fake_restore "$W/state-b"
if json_ok s1-full "$NB" 0; then
    check_db_files s1-full 0
    start_daemon
    check_state s1-full "$W/src/paths" "$W/src" 0
    check_guix_size s1-full "$CONSUMER"
    info "[s1-full] /gnu/store created by storesync: $(stat -c '%A %U:%G' "$CH/gnu/store"), .links: $(stat -c '%A %U:%G' "$CH/gnu/store/.links" 2>/dev/null || echo none)"
    # the daemon's own deduplication over the restored store and .links
    if gx gc --optimize > "$W/s1.optimize.out" 2> "$W/s1.optimize.err"; then
        bad=$(gx gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' || true)
        if [ -z "$bad" ]; then pass "[s1-full] guix gc --optimize ok on restored store ($(grep -v '^$' "$W/s1.optimize.err" | tail -n 1)), verify clean"
        else fail "[s1-full] verify after guix gc --optimize: $bad"; fi
    else fail "[s1-full] guix gc --optimize failed: $(tail -n 5 "$W/s1.optimize.err")"; fi
    check_daemon_writes s1-full
    check_gc s1-full "$CONSUMER" "$MULTI_DRV" "$W/src"
    stop_daemon
fi

# ---------------------------------------------------------------- 2. fresh install, daemon running idle
log "scenario 2: restore into a fresh install's state (empty DB), daemon running; busy/--wait/--dry-run"
empty_state
start_daemon
in_ch guix gc --list-live > /dev/null 2>&1   # first client: creates the DB
[ -f "$CH/var/guix/db/db.sqlite" ] && info "[s2] fresh DB: $(db 'select count(*) from ValidPaths;') valid paths"
if [ "$FAKE" != 1 ]; then
    ss --root "$CH" --json restore --cache "$CACHE" --dry-run > "$W/s2.dry.json" 2> "$W/s2.dry.err" && drc=0 || drc=$?
    if [ $drc = 0 ] && [ "$(db 'select count(*) from ValidPaths;')" = 0 ] && [ -z "$(ls -A "$CH/gnu/store" | grep -v '^\.links$' || true)" ]; then
        pass "[s2] restore --dry-run exit 0, wrote nothing ($(head -c 200 "$W/s2.dry.json" | tr '\n' ' '))"
    else fail "[s2] restore --dry-run: exit $drc, ValidPaths $(db 'select count(*) from ValidPaths;'), store: $(ls "$CH/gnu/store" | head -n 3 | tr '\n' ' ') $(head -c 300 "$W/s2.dry.err")"; fi
    # a connected client holds big-lock (POSIX READ), as restore does: both go on
    cat > "$CH/root/hold.scm" <<'EOF'
(use-modules (guix store))
(with-store s
  (valid-path? s "/gnu/store/00000000000000000000000000000000-x")
  (call-with-output-file "/root/holding" (lambda (p) (display "yes" p)))
  (sleep (string->number (getenv "HOLD"))))
EOF
    rm -f "$CH/root/holding"
    in_ch sh -c 'HOLD=8 guix repl /root/hold.scm' > /dev/null 2>&1 &
    HOLDER=$!
    for i in $(seq 1 100); do [ -f "$CH/root/holding" ] && break; sleep 0.1; done
    restore_json s2-fresh --cache "$CACHE"
    if [ "$RC" = 0 ] && kill -0 $HOLDER 2>/dev/null; then
        pass "[s2] restore while a guix client is connected: exit 0, the client still connected"
    else fail "[s2] restore while client connected: exit $RC (want 0), client running: $(kill -0 $HOLDER 2>/dev/null && echo yes || echo no): $(head -c 300 "$W/s2-fresh.restore.err")"; fi
    RJ0=$RJ; RC0=$RC
    restore_json s2-again --cache "$CACHE" --wait
    if [ "$RC" = 0 ] && [ "$(jq -r .restored "$RJ")" = 0 ]; then pass "[s2] restore --wait again: nothing to do"
    else fail "[s2] restore --wait again: exit $RC, $(head -c 300 "$RJ")"; fi
    RJ=$RJ0; RC=$RC0
    wait $HOLDER 2>/dev/null || true
else
    stop_daemon; fake_restore "$W/state-b"; start_daemon
fi
if json_ok s2-fresh "$NB" 0; then
    check_db_files s2-fresh 0
    check_state s2-fresh "$W/src/paths" "$W/src" 0
fi
stop_daemon

# ---------------------------------------------------------------- 3. incremental A then B
log "scenario 3: incremental: snapshot A into a fresh root, then B on top"
wipe_state
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-a"; else restore_json s3-a --cache "$CACHE" --snapshot "$SNAP_A"; fi
if json_ok s3-a "$NA" 0; then
    start_daemon
    q_paths > "$W/s3-a.paths"
    check_same "[s3-a] ValidPaths after restoring A = source A" "$W/src-a/paths" "$W/s3-a.paths"
    if in_ch guix gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' > "$W/s3-a.verify"; then
        fail "[s3-a] verify after A: $(head -n 5 "$W/s3-a.verify")"
    else pass "[s3-a] guix gc --verify=contents clean after A"; fi
    stop_daemon
    q_validpaths_full > "$W/s3-a.rows"
    (cd "$CH/gnu/store" && find . -mindepth 1 -path ./.links -prune -o -printf '%i|%P\n' | LC_ALL=C sort -t'|' -k2) > "$W/s3-a.inodes"
    sleep 1.1   # so a rewritten registrationTime would differ
    if [ "$FAKE" = 1 ]; then fake_restore "$W/state-b"; else restore_json s3-b --cache "$CACHE" --snapshot "$SNAP_B"; fi
    if json_ok s3-b "$((NB - NA))" "$NA"; then
        q_validpaths_full > "$W/s3-b.rows"
        awk 'NR==FNR { a[$1]=1; next } ($1 in a)' "$W/s3-a.rows" "$W/s3-b.rows" > "$W/s3-b.oldrows"
        check_same "[s3-b] ValidPaths rows of A (incl. registrationTime) untouched by B" "$W/s3-a.rows" "$W/s3-b.oldrows"
        (cd "$CH/gnu/store" && find . -mindepth 1 -path ./.links -prune -o -printf '%i|%P\n' | LC_ALL=C sort -t'|' -k2) > "$W/s3-b.inodes"
        # inode numbers of A's files unchanged (link counts may grow via .links)
        awk -F'|' 'NR==FNR { a[$2]=1; next } ($2 in a)' "$W/s3-a.inodes" "$W/s3-b.inodes" > "$W/s3-b.oldinodes"
        check_same "[s3-b] inode numbers of A's $(wc -l < "$W/s3-a.inodes") files/dirs unchanged" "$W/s3-a.inodes" "$W/s3-b.oldinodes"
        check_db_files s3-b 0
        start_daemon
        check_state s3-b "$W/src/paths" "$W/src" 0
        stop_daemon
    fi
fi

# ---------------------------------------------------------------- 4. closure of one output
log "scenario 4: restore only the closure of $CONSUMER"
wipe_state
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-b"; else restore_json s4-closure --cache "$CACHE" "$CONSUMER"; fi
if json_ok s4-closure "$(wc -l < "$W/closure-consumer")" 0; then
    check_db_files s4-closure 0
    start_daemon
    check_state s4-closure "$W/closure-consumer" "$W/src" 0
    check_gc s4-closure "$CONSUMER" "" "$W/src"
    stop_daemon
fi

# ---------------------------------------------------------------- 4b. closure of a .drv: buildable
log "scenario 4b: restore only the closure of $CONSUMER_DRV, then let the daemon build it"
wipe_state
LC_ALL=C sort "$W/closure-consumer-drv" > "$W/closure-consumer-drv.sorted"
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-b"; RC=0; else restore_json s4b-drv --cache "$CACHE" "$CONSUMER_DRV"; fi
if json_ok s4b-drv "$(wc -l < "$W/closure-consumer-drv.sorted")" 0; then
    check_db_files s4b-drv 0
    start_daemon
    check_state s4b-drv "$W/closure-consumer-drv.sorted" "$W/src" 0
    if gx build "$CONSUMER_DRV" > "$W/s4b.build.out" 2> "$W/s4b.build.err"; then
        h=$(db "select hash from ValidPaths where path='$CONSUMER';")
        if [ "$(cat "$W/s4b.build.out")" = "$CONSUMER" ] && grep -q -- "$h" "$W/src/validpaths"; then
            pass "[s4b-drv] daemon built the restored $CONSUMER_DRV and its inputs' .drv: $CONSUMER, same hash as the source"
        else fail "[s4b-drv] build printed $(head -c 200 "$W/s4b.build.out"), hash $h"; fi
    else fail "[s4b-drv] guix build of restored .drv failed: $(tail -n 5 "$W/s4b.build.err")"; fi
    stop_daemon
fi

# ---------------------------------------------------------------- 5. unprivileged daemon's store
log "scenario 5: store owned by guix-daemon (uid $GD_UID), daemon unprivileged"
empty_state
chown "$GD_UID:$GD_GID" "$CH/gnu/store" "$CH/var/guix"
start_daemon unprivileged
in_ch guix gc --list-live > /dev/null 2>&1   # creates the DB as guix-daemon
stop_daemon
restore_json s5-unpriv --cache "$CACHE"
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-b"; chown -R "$GD_UID:$GD_GID" "$CH/gnu/store" "$CH/var/guix"; fi
if json_ok s5-unpriv "$NB" 0; then
    check_db_files s5-unpriv "$GD_UID"
    start_daemon unprivileged
    check_state s5-unpriv "$W/src/paths" "$W/src" "$GD_UID"
    check_gc s5-unpriv "$CONSUMER" "$CONSUMER_DRV" "$W/src"
    stop_daemon
fi

# ---------------------------------------------------------------- 5b. unprivileged layout, no DB yet
log "scenario 5b: /gnu/store and /var/guix owned by guix-daemon, no DB yet (daemon never ran)"
empty_state
chown "$GD_UID:$GD_GID" "$CH/gnu/store" "$CH/var/guix"
restore_json s5b-unpriv-nodb --cache "$CACHE"
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-b"; chown -R "$GD_UID:$GD_GID" "$CH/gnu/store" "$CH/var/guix"; fi
if json_ok s5b-unpriv-nodb "$NB" 0; then
    check_db_files s5b-unpriv-nodb "$GD_UID"
    wrong=$(find "$CH/gnu/store" ! -uid "$GD_UID" -printf '%u %p\n' | head -n 3)
    if [ -z "$wrong" ]; then pass "[s5b-unpriv-nodb] every restored file owned by guix-daemon"
    else fail "[s5b-unpriv-nodb] not owned by guix-daemon: $wrong"; fi
    start_daemon unprivileged
    bad=$(gx gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' || true)
    if [ -z "$bad" ]; then pass "[s5b-unpriv-nodb] unprivileged daemon: guix gc --verify=contents clean"
    else fail "[s5b-unpriv-nodb] verify: $bad"; fi
    check_daemon_writes s5b-unpriv-nodb
    stop_daemon
fi

# ---------------------------------------------------------------- 6. debris of an interrupted restore
log "scenario 6: restore B over A with debris (invalid leftovers) at some of B's paths"
wipe_state
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-a"; RC=0; else restore_json s6-a --cache "$CACHE" --snapshot "$SNAP_A"; fi
if json_ok s6-a "$NA" 0; then
    # a read-only half-written directory, a junk regular file, and an empty
    # directory at three of B's (not yet valid) paths
    mapfile -t DEBRIS < <(LC_ALL=C comm -13 "$W/src-a/paths" "$W/src/paths" | grep -v '\.drv$' | head -n 3)
    mkdir -p "$CH${DEBRIS[0]}/junk/deeper"; echo partial > "$CH${DEBRIS[0]}/junk/file"
    chmod -R a-w "$CH${DEBRIS[0]}"
    rm -rf "$CH${DEBRIS[1]}"; echo "not the real content" > "$CH${DEBRIS[1]}"
    mkdir -p "$CH${DEBRIS[2]}"
    info "[s6] debris planted at ${DEBRIS[*]}"
    # and one of A's valid paths (with referrers) vanished from disk, row kept
    VANISHED=$(grep -- '-mid-a.txt$' "$W/src-a/paths")
    chmod u+w "$CH$VANISHED"; rm -f "$CH$VANISHED"
    info "[s6] removed valid $VANISHED from disk (DB row kept)"
    if [ "$FAKE" = 1 ]; then fake_restore "$W/state-b"; RC=0; else restore_json s6-debris --cache "$CACHE"; fi
    if json_ok s6-debris - -; then
        r=$(jq -r .restored "$RJ"); a=$(jq -r .already_valid "$RJ")
        if [ "$r" = "$((NB - NA))" ] || [ "$r" = "$((NB - NA + 1))" ]; then
            pass "[s6-debris] restored=$r already_valid=$a replaced_leftovers=$(jq -r .replaced_leftovers "$RJ") repaired=$(jq -c .repaired "$RJ")"
        else fail "[s6-debris] restored=$r, want $((NB - NA)) new (+1 rewritten vanished path)"; fi
        if [ -f "$CH$VANISHED" ]; then pass "[s6-debris] valid-but-vanished $VANISHED written again"
        else fail "[s6-debris] valid-but-vanished $VANISHED still missing from disk (daemon will report it)"; fi
        start_daemon
        check_state s6-debris "$W/src/paths" "$W/src" 0
        stop_daemon
    fi
fi

# ---------------------------------------------------------------- 7. save of a corrupt store
if have_storesync && [ "$FAKE" != 1 ]; then
    log "scenario 7: save from a store with a corrupted item, with and without --skip-corrupt"
    CR=$W/corrupt-root
    rm -rf "$CR"; mkdir -p "$CR/gnu" "$CR/var/guix"
    cp -a "$W/state-b/store" "$CR/gnu/store"; cp -a "$W/state-b/db" "$CR/var/guix/db"
    CORRUPT=$(grep -- '-leaf-b.txt$' "$W/src/paths")
    chmod u+w "$CR$CORRUPT"; printf 'LEAF of generation b\n' > "$CR$CORRUPT"; chmod 444 "$CR$CORRUPT"; touch -d @1 "$CR$CORRUPT"
    crc=0; ss --root "$CR" --json save --cache "$W/cache-corrupt" > "$W/s7.save.json" 2> "$W/s7.save.err" || crc=$?
    if [ $crc = 1 ] && grep -q -- "${CORRUPT#/gnu/store/}" "$W/s7.save.err" "$W/s7.save.json"; then
        pass "[s7] save of a store with a corrupted item: exit 1 and names it ($(grep -h -m1 -- "${CORRUPT#/gnu/store/}" "$W/s7.save.err" "$W/s7.save.json" | head -c 160))"
    else fail "[s7] save of corrupted store: exit $crc (want 1 naming $CORRUPT): $(head -c 300 "$W/s7.save.err") $(head -c 200 "$W/s7.save.json")"; fi
    crc=0; ss --root "$CR" --json save --skip-corrupt --cache "$W/cache-corrupt" > "$W/s7.skip.json" 2> "$W/s7.skip.err" || crc=$?
    if [ $crc = 0 ]; then
        pass "[s7] save --skip-corrupt: exit 0, paths=$(jq -r .paths "$W/s7.skip.json" 2>/dev/null)"
        wipe_state
        restore_json s7-skip --cache "$W/cache-corrupt"
        if json_ok s7-skip - 0; then
            q_paths > "$W/s7.paths"
            if grep -qx -- "$CORRUPT" "$W/s7.paths"; then fail "[s7] corrupt $CORRUPT was restored"
            else pass "[s7] corrupt item not restored ($(wc -l < "$W/s7.paths") of $NB paths restored)"; fi
            # closed under references (per the source's Refs)
            open=$(awk 'NR==FNR { v[$1]=1; next } ($1 in v) && !($3 in v) { print $1 " -> " $3 }' "$W/s7.paths" "$W/src/refs" | head -n 5)
            if [ -z "$open" ]; then pass "[s7] restored set is closed under references (referrers of the corrupt item left out)"
            else fail "[s7] restored paths whose references are missing: $open"; fi
            start_daemon
            bad=$(gx gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' || true)
            if [ -z "$bad" ]; then pass "[s7] guix gc --verify=contents clean on the --skip-corrupt restore"
            else fail "[s7] verify: $bad"; fi
            stop_daemon
        fi
    else fail "[s7] save --skip-corrupt exit $crc: $(head -c 300 "$W/s7.skip.err")"; fi
fi

# ---------------------------------------------------------------- 8. locally built, different content
log "scenario 8: B over A where the target built B's non-deterministic derivation itself"
wipe_state
if [ "$FAKE" = 1 ]; then fake_restore "$W/state-a"; RC=0; else restore_json s8-a --cache "$CACHE" --snapshot "$SNAP_A"; fi
if json_ok s8-a "$NA" 0; then
    start_daemon
    in_ch sh -c 'cd /root && GEN=b NONDET_ONLY=1 OUT=/root/nondet.list guix repl /root/populate.scm' > "$W/s8.nondet.log" 2>&1 \
        || fail "[s8] building the non-deterministic derivation locally: $(tail -n 3 "$W/s8.nondet.log")"
    stop_daemon
    ND_OUT=$(awk '$1=="out" {print $2}' "$CH/root/nondet.list")
    ND_DRV=$(awk '$1=="drv" {print $2}' "$CH/root/nondet.list")
    q_validpaths_full | grep -- "^$ND_OUT " > "$W/s8.nd.row" || true
    ND_INODE=$(stat -c '%i %s' "$CH$ND_OUT")
    src_hash=$(grep -- "^$ND_OUT " "$W/src/validpaths" | cut -d' ' -f2)
    if [ "$(cut -d' ' -f2 "$W/s8.nd.row")" = "$src_hash" ]; then
        info "[s8] local build of $ND_OUT happened to equal the source's; check is weaker"
    else
        info "[s8] local $ND_OUT: $(cut -d' ' -f2 "$W/s8.nd.row"), source: $src_hash"
    fi
    if [ "$FAKE" = 1 ]; then RC=0; else restore_json s8-b --cache "$CACHE"; fi
    if json_ok s8-b "$((NB - NA - 2))" "$((NA + 2))"; then
        q_validpaths_full | grep -- "^$ND_OUT " > "$W/s8.nd.row2" || true
        check_same "[s8] locally built $ND_OUT: ValidPaths row (hash, registrationTime) kept" "$W/s8.nd.row" "$W/s8.nd.row2"
        if [ "$(stat -c '%i %s' "$CH$ND_OUT")" = "$ND_INODE" ]; then pass "[s8] locally built output's file untouched (inode, size)"
        else fail "[s8] locally built output was replaced: $ND_INODE -> $(stat -c '%i %s' "$CH$ND_OUT")"; fi
        start_daemon
        bad=$(gx gc --verify=contents 2>&1 | grep -v -E '^(reading the store|checking path existence|checking hashes)\.\.\.$' || true)
        if [ -z "$bad" ]; then pass "[s8] guix gc --verify=contents clean"
        else fail "[s8] verify: $bad"; fi
        if gx build "$ND_DRV" > "$W/s8.build.out" 2> "$W/s8.build.err" && ! grep -q -i build "$W/s8.build.err"; then
            pass "[s8] guix build $ND_DRV: no build"
        else fail "[s8] guix build $ND_DRV: $(head -c 300 "$W/s8.build.err")"; fi
        stop_daemon
    fi
fi

# ---------------------------------------------------------------- 9. live store (issue 16)
log "scenario 9: live store: restore while guix-daemon runs, a collector first, a guix build and guix gc in a loop"
if [ "$FAKE" != 1 ] && have_storesync; then
    empty_state
    start_daemon
    in_ch guix gc --list-live > /dev/null 2>&1   # first client: creates the DB
    # the user's roots: every snapshot path (a collector counts them once valid)
    mkdir -p "$CH/var/guix/gcroots/restored"
    i=0; while read -r p; do i=$((i + 1)); ln -sfn "$p" "$CH/var/guix/gcroots/restored/r$i"; done < "$W/src/paths"
    # a build of something else through the daemon, running during the restore
    cat > "$CH/root/slow.scm" <<'EOF'
(use-modules (guix store) (guix derivations))
(with-store store
  (system* "rm" "-rf" "/tmp/slowbb")
  (mkdir "/tmp/slowbb") (mkdir "/tmp/slowbb/bin")
  (system* "cp" "/bin/busybox" "/tmp/slowbb/bin/busybox")
  (symlink "busybox" "/tmp/slowbb/bin/sh")
  (let* ((bb (add-to-store store "busybox-live" #t "sha256" "/tmp/slowbb"))
         (drv (derivation store "slow-live" (string-append bb "/bin/sh")
                          (list "-c" "sleep 8; echo slow > $out") #:sources (list bb))))
    (build-derivations store (list drv))
    (call-with-output-file "/root/slow.out"
      (lambda (p) (display (derivation->output-path drv) p)))))
EOF
    rm -f "$CH/root/slow.out" "$W/s9.stop" "$W/s9.gc-holding"
    in_ch sh -c 'guix repl /root/slow.scm' > "$W/s9.slow.log" 2>&1 & SLOW9=$!
    # a collector that started before the restore: gc.lock held (POSIX write lock, as
    # guix gc holds it) for 6 s
    python3 - "$CH/var/guix/gc.lock" "$W/s9.gc-holding" <<'EOF' & GC9=$!
import fcntl, sys, time
f = open(sys.argv[1], "a"); fcntl.lockf(f, fcntl.LOCK_EX); open(sys.argv[2], "w").close(); time.sleep(6)
EOF
    for i in $(seq 1 100); do [ -f "$W/s9.gc-holding" ] && break; sleep 0.1; done
    : > "$W/s9.gcruns"
    ( while [ ! -e "$W/s9.stop" ]; do
          if in_ch guix gc >> "$W/s9.gcloop.log" 2>&1; then echo ok >> "$W/s9.gcruns"; else echo failed >> "$W/s9.gcruns"; fi
      done ) & LOOP9=$!
    t1=$(date +%s)
    restore_json s9-live --cache "$CACHE"
    t2=$(date +%s)
    wait $GC9 2>/dev/null || true
    if [ "$RC" = 0 ] && [ $((t2 - t1)) -ge 3 ] && grep -q 'waiting for the garbage collector' "$W/s9-live.restore.err"; then
        pass "[s9] restore waited $((t2 - t1)) s for the collector holding gc.lock (said so), then completed"
    else fail "[s9] restore with a collector first: exit $RC after $((t2 - t1)) s: $(head -c 300 "$W/s9-live.restore.err")"; fi
    wait $SLOW9 && slowrc=0 || slowrc=$?
    if [ $slowrc = 0 ] && [ -s "$CH/root/slow.out" ]; then pass "[s9] guix build of something else during the restore succeeded ($(cat "$CH/root/slow.out"))"
    else fail "[s9] guix build during the restore: exit $slowrc: $(tail -c 300 "$W/s9.slow.log")"; fi
    # a few more collections: the build's items go (unrooted), the restored ones stay
    n=$(grep -c . "$W/s9.gcruns" || true)
    for i in $(seq 1 600); do [ "$(grep -c . "$W/s9.gcruns" || true)" -ge $((n + 2)) ] && break; sleep 0.1; done
    touch "$W/s9.stop"; wait $LOOP9 2>/dev/null || true
    runs=$(grep -c '^ok' "$W/s9.gcruns" || true); bad=$(grep -c '^failed' "$W/s9.gcruns" || true)
    if [ "$runs" -ge 2 ] && [ "$bad" = 0 ]; then pass "[s9] guix gc ran $runs times in a loop meanwhile, none failed"
    else fail "[s9] guix gc loop: $runs ok, $bad failed: $(grep -i error "$W/s9.gcloop.log" | head -n 2 | tr '\n' ' ')"; fi
    if json_ok s9-live "$NB" 0; then
        check_state s9-live "$W/src/paths" "$W/src" 0
    fi
    rm -rf "$CH/var/guix/gcroots/restored"
    stop_daemon
fi

# ---------------------------------------------------------------- summary
log "done in $(( $(date +%s) - T0 )) s"
if [ $NFAIL -gt 0 ]; then
    echo "failed checks:"; printf '  - %s\n' "${FAILED[@]}"
fi
echo "$NPASS passed, $NFAIL failed"
[ $NFAIL = 0 ]
