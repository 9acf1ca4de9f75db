#!/usr/bin/env python3
"""format_check.py: an independent reader of a storesync cache, written from docs/FORMAT.md
alone (not from the Rust code), to check that the document is enough to read a cache.

It parses every file of a local cache directory and verifies everything the format defines:
- pack files: header (magic, version, flags) and name = BLAKE3 of the whole file (what
  `storesync verify` checks; restore reads only the frames);
- index files: envelope (magic, version, flags, checksum, name), the bincode IndexFile;
  every entry is read from its pack (batch frame or solo frames, within the reader limits),
  decompressed, and checked against its id (BLAKE3 for blobs; derive-key v2 / v1 contexts
  for trees);
- trees, v1 and v2: decoded, checked for the rules the format lists (sorting, names, table,
  rewrites), and each regular file's file_nar_hash (when not zero) checked;
- snapshots v1 (envelope + zstd frame) and v2 (head, manifest, checksum, name = date-id-sum16,
  manifest digest, id recomputed from the head): decoded and checked as "Snapshots" says
  (base names, references, hash parts, derivers and output paths in store_dir, ...);
- every store path of every snapshot: its NAR is rebuilt from its tree and blobs (putting
  hash parts back into rewritten files) and its SHA-256 and size compared with the DB row;
- signature files: each line parsed and, given --pubkey NAME:BASE64 (or a file holding it),
  its Ed25519 signature verified (pure-Python RFC 8032 verification; storesync's is stricter:
  it also refuses small-order keys and R, which no honest signer makes).

Usage: python3 scripts/format_check.py CACHE_DIR [--pubkey KEY_OR_FILE]... [-v]
With --pubkey, every snapshot must also carry a valid signature by each key given.
Needs Python 3 with the `zstandard` and `blake3` modules
(pip install --break-system-packages zstandard blake3). Exit status 0 when all checks pass.
"""

import argparse
import base64
import hashlib
import os
import re
import struct
import sys

import blake3
import zstandard

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
PLACEHOLDER = b"e" * 32
SOLO = 262144
TREE_V1_CTX = "storesync 2026-11 tree v1"
TREE_V2_CTX = "storesync 2026-12 tree v2"
MANIFEST_CTX = "storesync 2026-12 snapshot manifest v2"
SNAP_ID_CTX = "storesync 2026-12 snapshot signing v2"
SIG_PREFIX = b"storesync snapshot signature v1\0"
assert len(SIG_PREFIX) == 32
MAX_TREE = 268435456
MAX_NODES = 2097152
MAX_DEPTH = 256
MAX_SNAPSHOT = 1073741824


class FormatError(Exception):
    pass


def check(cond, what):
    if not cond:
        raise FormatError(what)


def b3(data):
    return blake3.blake3(data).digest()


def b3_derive(ctx, data):
    return blake3.blake3(data, derive_key_context=ctx).digest()


# ---------------------------------------------------------------- bincode 2, standard config


class Dec:
    def __init__(self, data, what):
        self.d = data
        self.p = 0
        self.what = what

    def take(self, n):
        check(n >= 0 and self.p + n <= len(self.d), f"{self.what}: truncated at {self.p}")
        b = self.d[self.p : self.p + n]
        self.p += n
        return b

    def u8(self):
        return self.take(1)[0]

    def uvar(self, bits=64):
        """A varint of a u64 (or, bits=32, of a u32, where tag 253 is refused). Wider forms
        than needed are accepted, as bincode does."""
        t = self.u8()
        if t < 251:
            return t
        if t == 251:
            return struct.unpack("<H", self.take(2))[0]
        if t == 252:
            return struct.unpack("<I", self.take(4))[0]
        if t == 253 and bits == 64:
            return struct.unpack("<Q", self.take(8))[0]
        raise FormatError(f"{self.what}: bad varint tag {t} for a u{bits}")

    def ivar(self):
        z = self.uvar(64)
        return (z >> 1) ^ -(z & 1)

    def boolean(self):
        b = self.u8()
        check(b in (0, 1), f"{self.what}: bool byte {b}")
        return b == 1

    def fixed32(self):
        return bytes(self.take(32))

    def byts(self):
        n = self.uvar()
        return bytes(self.take(n))

    def string(self):
        b = self.byts()
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.what}: string not UTF-8")

    def option(self, f):
        t = self.u8()
        check(t in (0, 1), f"{self.what}: option tag {t}")
        return f() if t == 1 else None

    def seq(self, f):
        n = self.uvar()
        return [f() for _ in range(n)]

    def variant(self):
        return self.uvar(32)

    def end(self):
        check(self.p == len(self.d), f"{self.what}: {len(self.d) - self.p} trailing bytes")


class Enc:
    def __init__(self):
        self.b = bytearray()

    def uvar(self, v):
        if v < 251:
            self.b.append(v)
        elif v < 1 << 16:
            self.b += bytes([251]) + struct.pack("<H", v)
        elif v < 1 << 32:
            self.b += bytes([252]) + struct.pack("<I", v)
        else:
            self.b += bytes([253]) + struct.pack("<Q", v)

    def ivar(self, v):
        self.uvar(((v << 1) ^ (v >> 63)) & ((1 << 64) - 1))

    def string(self, s):
        bs = s.encode()
        self.uvar(len(bs))
        self.b += bs

    def raw(self, bs):
        self.b += bs


# ---------------------------------------------------------------- Ed25519 verify (RFC 8032)

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_I = pow(2, (_P - 1) // 4, _P)


def _xrecover(y, sign):
    xx = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(xx, (_P + 3) // 8, _P)
    if (x * x - xx) % _P != 0:
        x = x * _I % _P
    if (x * x - xx) % _P != 0:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s, p):
    q = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _decode_point(b):
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    x = _xrecover(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def _eq(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


_G = _decode_point((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))


def ed25519_verify(pub, msg, sig):
    if len(pub) != 32 or len(sig) != 64:
        return False
    a = _decode_point(pub)
    r = _decode_point(sig[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + pub + msg).digest(), "little") % _L
    return _eq(_mul(s, _G), _add(r, _mul(h, a)))


# ---------------------------------------------------------------- NAR


def nar_str(b):
    return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)


def nar_file(executable, contents):
    out = nar_str(b"(") + nar_str(b"type") + nar_str(b"regular")
    if executable:
        out += nar_str(b"executable") + nar_str(b"")
    return out + nar_str(b"contents") + nar_str(contents) + nar_str(b")")


# ---------------------------------------------------------------- the cache


def valid_hash_part(b):
    return len(b) == 32 and all(chr(c) in NIX32 for c in b)


BASE_RE = re.compile(rb"^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]{1,211}$")


def valid_base(s):
    b = s.encode()
    if not BASE_RE.match(b):
        return False
    name = b[33:]
    first = name.split(b"-", 1)[0]
    return first not in (b".", b"..")


class Cache:
    def __init__(self, root, verbose=False):
        self.root = root
        self.v = verbose
        self.packs = {}  # hex -> bytes
        self.index_files = {}  # hex -> (packs, entries)
        self.stats = {}
        self.objects_checked = set()

    def log(self, *a):
        if self.v:
            print(*a)

    def count(self, k, n=1):
        self.stats[k] = self.stats.get(k, 0) + n

    def listdir(self, sub):
        d = os.path.join(self.root, sub)
        if not os.path.isdir(d):
            return []
        return sorted(n for n in os.listdir(d) if not n.startswith("."))

    def read(self, sub, name):
        with open(os.path.join(self.root, sub, name), "rb") as f:
            return f.read()

    # -- packs
    def load_packs(self):
        for n in self.listdir("packs"):
            m = re.fullmatch(r"([0-9a-f]{64})\.pack", n)
            if not m:
                continue
            data = self.read("packs", n)
            check(b3(data).hex() == m.group(1), f"pack {n}: name is not BLAKE3 of file")
            check(data[:8] == b"STSYPACK", f"pack {n}: magic")
            ver, flags = struct.unpack("<II", data[8:16])
            check(ver in (1, 2), f"pack {n}: version {ver}")
            check(flags == 0, f"pack {n}: flags {flags}")
            self.packs[m.group(1)] = data
            self.count("packs")

    # -- envelope
    def envelope(self, name, data, magic):
        check(len(data) >= 48, f"{name}: too short")
        check(data[:8] == magic, f"{name}: magic {data[:8]!r}")
        ver, flags = struct.unpack("<II", data[8:16])
        check(flags == 0, f"{name}: flags {flags}")
        check(b3(data[:-32]) == data[-32:], f"{name}: checksum")
        return ver, data[16:-32]

    # -- index files
    def load_indexes(self):
        for n in self.listdir("index"):
            m = re.fullmatch(r"([0-9a-f]{64})\.idx", n)
            if not m:
                continue
            data = self.read("index", n)
            check(len(data) <= 1 << 30, f"{n}: index file above 1 GiB")
            ver, body = self.envelope(n, data, b"STSYINDX")
            check(ver in (1, 2), f"{n}: version {ver}")
            check(data[-32:].hex() == m.group(1), f"{n}: name differs from checksum")
            d = Dec(body, n)
            packs = d.seq(d.fixed32)

            def loc():
                kind = d.variant()
                check(kind in (0, 1), f"{n}: ObjectKind {kind}")
                pack = d.uvar(32)
                return dict(
                    kind=kind,
                    pack=pack,
                    frame_offset=d.uvar(),
                    frame_len=d.uvar(),
                    offset=d.uvar(),
                    len=d.uvar(),
                )

            entries = d.seq(lambda: (d.fixed32(), loc()))
            d.end()
            self.index_files[m.group(1)] = (packs, entries)
            self.count("index files")
            self.count("index entries", len(entries))

    def merged(self, names=None):
        """object id -> (pack hex, location), first pack met wins; absent packs skipped."""
        out = {}
        for n in names if names is not None else sorted(self.index_files):
            check(n in self.index_files, f"index file {n} named by a snapshot is absent")
            packs, entries = self.index_files[n]
            for oid, l in entries:
                if l["pack"] >= len(packs):  # ignored, as an absent pack's entries are
                    continue
                ph = packs[l["pack"]].hex()
                if ph not in self.packs:
                    continue
                out.setdefault(oid, (ph, l))
        return out

    def read_object(self, loc_map, oid, want_kind):
        check(oid in loc_map, f"object {oid.hex()} not located")
        ph, l = loc_map[oid]
        check(l["kind"] == want_kind, f"object {oid.hex()}: kind {l['kind']} != {want_kind}")
        pack = self.packs[ph]
        fo, fl = l["frame_offset"], l["frame_len"]
        check(fo >= 16 and fo + fl <= len(pack), f"object {oid.hex()}: frame out of pack")
        comp = pack[fo : fo + fl]
        if l["len"] >= SOLO:
            check(l["offset"] == 0, "solo object with offset != 0")
            # one or more frames, each recording its content size
            out = bytearray()
            dctx = zstandard.ZstdDecompressor()
            rest = comp
            nframes = 0
            while rest:
                params = zstandard.get_frame_parameters(rest)
                check(params.window_size <= 1 << 23, "solo frame window above 8 MiB")
                dobj = dctx.decompressobj()
                out += dobj.decompress(rest)
                rest = dobj.unused_data
                nframes += 1
            content = bytes(out)
            check(len(content) == l["len"], f"object {oid.hex()}: solo length")
            self.count("solo frames", nframes)
        else:
            check(fl <= 1376256, "batch frame_len above 1376256")
            dobj = zstandard.ZstdDecompressor().decompressobj()
            frame = dobj.decompress(comp)
            # storesync writes exactly one frame (readers would decode more as a stream)
            check(dobj.unused_data == b"", "batch frame: bytes after the frame in frame_len")
            check(len(frame) <= 1310720, "batch frame too large")
            check(l["offset"] + l["len"] <= len(frame), "object beyond its frame")
            content = frame[l["offset"] : l["offset"] + l["len"]]
        if want_kind == 0:
            check(b3(content) == oid, f"blob {oid.hex()}: id mismatch")
            enc = None
        else:
            check(len(content) <= MAX_TREE, "tree too large")
            if b3_derive(TREE_V2_CTX, content) == oid:
                enc = 2
            elif b3_derive(TREE_V1_CTX, content) == oid:
                enc = 1
            else:
                raise FormatError(f"tree {oid.hex()}: id matches neither context")
        self.objects_checked.add(oid)
        return content, enc

    def check_all_objects(self):
        loc = self.merged()
        for oid, (_, l) in loc.items():
            content, enc = self.read_object(loc, oid, l["kind"])
            if l["kind"] == 1:
                self.decode_tree(content, enc, oid)
                self.count(f"trees v{enc}")
            else:
                self.count("blobs")

    # -- trees
    def decode_tree(self, content, enc, oid):
        d = Dec(content, f"tree {oid.hex()[:16]}")
        nodes = [0]
        table = None
        if enc == 2:
            table = d.seq(d.fixed32)
            for i, h in enumerate(table):
                check(valid_hash_part(h), "table entry not nix-base32")
                if i:
                    check(table[i - 1] < h, "table not strictly sorted")
        used = set()

        def node(depth):
            nodes[0] += 1
            check(nodes[0] <= MAX_NODES, "too many nodes")
            k = d.variant()
            if k in (0, 3) and (k == 0 or enc == 2):
                ex = d.boolean()
                size = d.uvar()
                blob = d.fixed32()
                fnh = d.fixed32()
                n = dict(kind="file", executable=ex, size=size, blob=blob, fnh=fnh, rewrites=[])
                if k == 3:
                    rw = d.seq(lambda: (d.uvar(), d.uvar(32)))
                    check(rw, "Rewritten without rewrites")
                    end = 0
                    for off, idx in rw:
                        nodes[0] += 1
                        check(off >= end, "rewrites unsorted/overlapping")
                        check(off + 32 <= size, "rewrite beyond file size")
                        check(idx < len(table), "rewrite index outside table")
                        used.add(idx)
                        end = off + 32
                    n["rewrites"] = [(off, table[idx]) for off, idx in rw]
                return n
            if k == 1:
                t = d.byts()
                check(t and b"\0" not in t, "bad symlink target")
                return dict(kind="symlink", target=t)
            if k == 2:
                check(depth < MAX_DEPTH, "too deep")
                n = d.uvar()
                ents = []
                for _ in range(n):
                    name = d.byts()
                    check(name and name not in (b".", b"..") and b"/" not in name
                          and b"\0" not in name, f"bad entry name {name!r}")
                    if ents:
                        check(ents[-1][0] < name, "entries not strictly sorted")
                    ents.append((name, node(depth + 1)))
                return dict(kind="dir", entries=ents)
            raise FormatError(f"bad node kind {k}")

        root = node(0)
        d.end()
        if enc == 2:
            check(used == set(range(len(table))), "table entry named by no rewrite")
        return root

    # -- NAR
    def nar(self, loc, root):
        out = [nar_str(b"nix-archive-1")]

        def walk(n):
            if n["kind"] == "file":
                blob, _ = self.read_object(loc, n["blob"], 0)
                check(len(blob) == n["size"], "blob size != node size")
                if n["rewrites"]:
                    b = bytearray(blob)
                    for off, h in n["rewrites"]:
                        check(b[off : off + 32] == PLACEHOLDER, "no placeholder at rewrite")
                        b[off : off + 32] = h
                    blob = bytes(b)
                    self.count("rewritten files restored")
                if n["fnh"] != b"\0" * 32:
                    check(hashlib.sha256(nar_str(b"nix-archive-1") + nar_file(n["executable"], blob))
                          .digest() == n["fnh"],
                          "file_nar_hash mismatch")
                    self.count("file_nar_hash checked")
                else:
                    check(n["size"] < 8192, "zero file_nar_hash on a file >= 8192 bytes")
                out.append(nar_file(n["executable"], blob))
            elif n["kind"] == "symlink":
                out.append(nar_str(b"(") + nar_str(b"type") + nar_str(b"symlink")
                           + nar_str(b"target") + nar_str(n["target"]) + nar_str(b")"))
            else:
                out.append(nar_str(b"(") + nar_str(b"type") + nar_str(b"directory"))
                for name, child in n["entries"]:
                    out.append(nar_str(b"entry") + nar_str(b"(") + nar_str(b"name")
                               + nar_str(name) + nar_str(b"node"))
                    walk(child)
                    out.append(nar_str(b")"))
                out.append(nar_str(b")"))

        walk(root)
        return b"".join(out)

    # -- snapshots
    def path_info(self, d):
        return dict(
            path=d.string(),
            nar_hash=d.fixed32(),
            nar_size=d.uvar(),
            registration_time=d.ivar(),
            deriver=d.option(d.string),
            references=d.seq(d.string),
            ultimate=d.option(d.ivar),
            sigs=d.option(d.string),
            ca=d.option(d.string),
        )

    def snapshot_paths(self, d):
        def sp():
            info = self.path_info(d)
            return dict(info=info, tree=d.fixed32())

        roots = d.seq(d.string)
        paths = d.seq(sp)
        dos = d.seq(lambda: dict(drv=d.string(), id=d.string(), path=d.string()))
        return roots, paths, dos

    def check_snapshot_content(self, name, store_dir, roots, paths, dos):
        """FORMAT.md "Snapshots": the same checks for v1 and v2."""
        check(store_dir.startswith("/") and len(store_dir) > 1 and not store_dir.endswith("/")
              and "//" not in store_dir
              and not any(c in (".", "..") for c in store_dir.split("/")),
              f"{name}: store_dir {store_dir!r} not normalised")

        def in_store(full):
            pre = store_dir + "/"
            return full.startswith(pre) and "/" not in full[len(pre):] and \
                valid_base(full[len(pre):])

        by_hash = {}
        for p in paths:
            i = p["info"]
            check(valid_base(i["path"]), f"{name}: bad base name {i['path']}")
            check(i["path"][:32] not in by_hash, f"{name}: hash part twice {i['path']}")
            by_hash[i["path"][:32]] = i["path"]
            if i["deriver"]:
                check(in_store(i["deriver"]), f"{name}: deriver outside {i['deriver']}")
            if i["references"] != sorted(i["references"], key=str.encode):
                self.count("writer notes: references not sorted")
        for p in paths:
            for r in p["info"]["references"]:
                check(valid_base(r) and by_hash.get(r[:32]) == r,
                      f"{name}: reference {r} not in snapshot")
        for r in roots:
            check(valid_base(r), f"{name}: bad root {r}")
        for o in dos:
            check(valid_base(o["drv"]) and by_hash.get(o["drv"][:32]) == o["drv"],
                  f"{name}: DerivationOutputs drv {o['drv']} not in snapshot")
            check(in_store(o["path"]), f"{name}: output path outside {o['path']}")

    def load_snapshot(self, n):
        data = self.read("snapshots", n)
        check(len(data) <= 256 << 20, f"{n}: snapshot file above 256 MiB")
        check(data[:8] == b"STSYSNAP", f"{n}: magic")
        ver, flags = struct.unpack("<II", data[8:16])
        check(flags == 0, f"{n}: flags")
        check(b3(data[:-32]) == data[-32:], f"{n}: checksum")
        s = dict(file=n, version=ver)
        if ver == 1:
            m = re.fullmatch(r"([0-9a-f]{64})\.snap", n)
            check(m and m.group(1) == data[-32:].hex(), f"{n}: v1 name != checksum")
            body = data[16:-32]
            dobj = zstandard.ZstdDecompressor().decompressobj()
            content = dobj.decompress(body)
            check(dobj.unused_data == b"", f"{n}: bytes after the zstd frame")
            check(len(content) <= MAX_SNAPSHOT, f"{n}: too large")
            d = Dec(content, n)
            s["flavor"] = d.variant()
            s["store_dir"] = d.string()
            s["created"] = d.ivar()
            s["tool"] = d.string()
            s["roots"], s["paths"], s["dos"] = self.snapshot_paths(d)
            d.end()
            s["id"] = data[-32:]
            s["indexes"] = None
        elif ver == 2:
            m = re.fullmatch(r"([0-9a-f]{16})-([0-9a-f]{64})-([0-9a-f]{16})\.snap", n)
            check(m, f"{n}: v2 name")
            (head_len,) = struct.unpack("<I", data[16:20])
            check(head_len <= 16 << 20, f"{n}: head too long")
            check(20 + head_len <= len(data) - 32, f"{n}: head does not fit")
            head = data[20 : 20 + head_len]
            d = Dec(head, n + " head")
            s["key"] = d.string()
            s["created"] = d.ivar()
            s["tool"] = d.string()
            s["flavor"] = d.variant()
            s["store_dir"] = d.string()
            s["npaths"] = d.uvar()
            s["nar_bytes"] = d.uvar()
            s["manifest"] = d.fixed32()
            s["indexes"] = [h.hex() for h in d.seq(d.fixed32)]
            s["parent"] = d.option(d.fixed32)
            d.end()
            check(len(set(s["indexes"])) == len(s["indexes"]), f"{n}: index named twice")
            check(len(s["key"].encode()) <= 512, f"{n}: key too long")
            check(not any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in s["key"]),
                  f"{n}: key holds a control character (Unicode Cc)")
            mframe = data[20 + head_len : -32]
            dobj = zstandard.ZstdDecompressor().decompressobj()
            content = dobj.decompress(mframe)
            check(dobj.unused_data == b"", f"{n}: bytes after the manifest frame")
            check(b3_derive(MANIFEST_CTX, content) == s["manifest"], f"{n}: manifest digest")
            d = Dec(content, n + " manifest")
            s["roots"], s["paths"], s["dos"] = self.snapshot_paths(d)
            d.end()
            check(len(s["paths"]) == s["npaths"], f"{n}: path count")
            check(sum(p["info"]["nar_size"] for p in s["paths"]) % (1 << 64) == s["nar_bytes"],
                  f"{n}: nar_bytes")
            e = Enc()
            e.string(s["key"])
            e.ivar(s["created"])
            e.uvar(s["flavor"])
            e.string(s["store_dir"])
            e.raw(s["manifest"])
            s["id"] = b3_derive(SNAP_ID_CTX, bytes(e.b))
            check(m.group(1) == "%016x" % max(s["created"], 0), f"{n}: name date")
            check(m.group(2) == s["id"].hex(), f"{n}: name id")
            check(m.group(3) == data[-32:].hex()[:16], f"{n}: name checksum")
        else:
            raise FormatError(f"{n}: snapshot version {ver}")
        check(s["flavor"] in (0, 1), f"{n}: flavor")
        self.check_snapshot_content(n, s["store_dir"], s["roots"], s["paths"], s["dos"])
        return s

    def verify_snapshot(self, s):
        loc = self.merged(s["indexes"])
        for p in s["paths"]:
            i = p["info"]
            content, enc = self.read_object(loc, p["tree"], 1)
            root = self.decode_tree(content, enc, p["tree"])
            nar = self.nar(loc, root)
            check(len(nar) == i["nar_size"], f"{i['path']}: NAR size {len(nar)}")
            check(hashlib.sha256(nar).digest() == i["nar_hash"], f"{i['path']}: NAR hash")
            self.count("NARs rebuilt and matched")
            self.count(f"paths with tree v{enc}")
            self.log(f"  {i['path']}: tree v{enc}, NAR {len(nar)} bytes, sha256 ok")

    # -- signatures
    def check_sigs(self, snaps, pubkeys):
        ids = {s["id"].hex(): s for s in snaps}
        signed = set()
        for n in self.listdir("snapshots"):
            m = re.fullmatch(r"([0-9a-f]{64})\.sig", n)
            if not m:
                continue
            data = self.read("snapshots", n)
            check(len(data) <= 16384, f"{n}: too large")
            text = data.decode("utf-8")
            lines = [l.strip() for l in text.split("\n")]
            lines = [l for l in lines if l]
            check(len(lines) <= 64, f"{n}: more than 64 signatures")
            sid = bytes.fromhex(m.group(1))
            if m.group(1) not in ids:
                self.log(f"  {n}: no snapshot with that id")
            names = set()
            for l in lines:
                name, colon, b64 = l.partition(":")
                check(colon and valid_key_name(name), f"{n}: bad key name {name!r}")
                check(name not in names, f"{n}: two signatures by {name}")
                names.add(name)
                sig = base64.b64decode(b64, validate=True)
                check(len(sig) == 64, f"{n}: signature length")
                self.count("signatures parsed")
                if name in pubkeys:
                    ok = ed25519_verify(pubkeys[name], SIG_PREFIX + sid, sig)
                    check(ok, f"{n}: signature by {name} does not verify")
                    self.count("signatures verified")
                    signed.add((m.group(1), name))
                    self.log(f"  {n}: signature by {name} verified")
        for sid in ids:
            for name in pubkeys:
                check((sid, name) in signed, f"snapshot {sid}: no valid signature by {name}")


def valid_key_name(name):
    return (0 < len(name.encode()) <= 128 and ":" not in name and "," not in name
            and not any(c.isspace() or ord(c) < 32 or 127 <= ord(c) <= 159 for c in name))


def parse_key(arg):
    if os.path.exists(arg):
        with open(arg) as f:
            arg = f.read().strip()
    name, _, b64 = arg.partition(":")
    check(valid_key_name(name), "public key: bad name")
    k = base64.b64decode(b64, validate=True)
    check(len(k) == 32, "public key: not 32 bytes")
    return name, k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--pubkey", action="append", default=[])
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    c = Cache(a.cache, a.verbose)
    try:
        c.load_packs()
        c.load_indexes()
        c.check_all_objects()
        snaps = []
        for n in c.listdir("snapshots"):
            if n.endswith(".snap"):
                s = c.load_snapshot(n)
                c.log(f"snapshot {n}: v{s['version']}, {len(s['paths'])} paths, "
                      f"id {s['id'].hex()}")
                c.verify_snapshot(s)
                snaps.append(s)
                c.count(f"snapshots v{s['version']}")
        pubkeys = dict(parse_key(k) for k in a.pubkey)
        c.check_sigs(snaps, pubkeys)
    except (FormatError, ValueError, zstandard.ZstdError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    for k in sorted(c.stats):
        print(f"{k}: {c.stats[k]}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
