'use strict';
// Enough of tar to take one regular file out of a release archive (ustar, as
// scripts/dist.sh writes it; pax and GNU long-name records are understood too). The
// archive's SHA-256 is checked before this runs, so it reads trusted bytes; it still refuses
// anything but a regular file.

const zlib = require('node:zlib');

const BLOCK = 512;

function field(buf, off, len) {
  const s = buf.subarray(off, off + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

function octal(buf, off, len) {
  const s = field(buf, off, len).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new Error(`tar: bad number field \`${s}\``);
  return parseInt(s, 8);
}

/**
 * The entries of an uncompressed tar archive: `{name, type, data}` (type `0` for a regular
 * file, `5` a directory, `2` a symlink, ...).
 */
function* entries(tar) {
  let off = 0;
  let longName;
  let paxPath;
  while (off + BLOCK <= tar.length) {
    const h = tar.subarray(off, off + BLOCK);
    if (h.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i];
    if (sum !== octal(h, 148, 8)) throw new Error(`tar: bad header checksum at offset ${off}`);
    const size = octal(h, 124, 12);
    const type = String.fromCharCode(h[156] || 48);
    const data = tar.subarray(off + BLOCK, off + BLOCK + size);
    if (data.length < size) throw new Error('tar: truncated archive');
    off += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
    if (type === 'L') {
      longName = data.toString('utf8').replace(/\0+$/, '');
      continue;
    }
    if (type === 'x') {
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
      paxPath = m ? m[1] : undefined;
      continue;
    }
    if (type === 'g') continue;
    const prefix = field(h, 345, 155);
    const name = longName || paxPath || (prefix ? `${prefix}/${field(h, 0, 100)}` : field(h, 0, 100));
    longName = paxPath = undefined;
    yield { name, type, data };
  }
}

/**
 * The contents of the regular file called `base` at the top of a .tar.gz or one directory
 * down (`storesync-0.1.0-x86_64-linux/storesync`).
 */
function extractFile(tgz, base) {
  const tar = zlib.gunzipSync(tgz);
  for (const e of entries(tar)) {
    const parts = e.name.replace(/^\.\//, '').replace(/\/$/, '').split('/');
    if (parts.length <= 2 && parts[parts.length - 1] === base) {
      if (e.type !== '0') throw new Error(`tar: ${e.name} is not a regular file`);
      return Buffer.from(e.data);
    }
  }
  throw new Error(`tar: no ${base} in the archive`);
}

module.exports = { entries, extractFile };
