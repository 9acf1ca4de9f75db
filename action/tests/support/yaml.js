'use strict';
// The subset of YAML that action.yml files and workflows use, for the tests' runner
// (dependency-free, like the action): block mappings and sequences, `|`/`>` block scalars
// with chomping, single- and double-quoted and plain scalars, simple flow collections,
// comments. Booleans are only true/false (YAML 1.2 core, as GitHub reads `on:`), so keys
// such as `on` stay strings. yaml.test.js checks it against PyYAML on the repository's
// YAML files when python3 has it.

function stripComment(s) {
  let q = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (q) {
      if (c === q) {
        if (q === "'" && s[i + 1] === "'") i++;
        else q = null;
      } else if (q === '"' && c === '\\') i++;
    } else if (c === "'" || c === '"') {
      if (i === 0 || /[\s:[{,-]/.test(s[i - 1])) q = c;
    } else if (c === '#' && (i === 0 || /\s/.test(s[i - 1]))) {
      return s.slice(0, i).trimEnd();
    }
  }
  return s.trimEnd();
}

/** Split a flow collection's body at top-level commas. */
function splitFlow(body) {
  const parts = [];
  let depth = 0;
  let q = null;
  let cur = '';
  for (const c of body) {
    if (q) {
      if (c === q) q = null;
    } else if (c === "'" || c === '"') q = c;
    else if (c === '[' || c === '{') depth++;
    else if (c === ']' || c === '}') depth--;
    else if (c === ',' && depth === 0) {
      parts.push(cur.trim());
      cur = '';
      continue;
    }
    cur += c;
  }
  if (cur.trim() !== '') parts.push(cur.trim());
  return parts;
}

/** Index of the `: ` (or final `:`) that ends a mapping key, outside quotes; -1 if none. */
function keyColon(s) {
  let q = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (q) {
      if (c === q) q = null;
      continue;
    }
    if ((c === "'" || c === '"') && i === 0) q = c;
    else if (c === ':' && (i + 1 === s.length || s[i + 1] === ' ')) return i;
    else if (c === '{' || c === '[') {
      if (i === 0) return -1;
    }
  }
  return -1;
}

function scalar(raw) {
  const s = raw.trim();
  if (s === '' || s === '~' || s === 'null' || s === 'Null' || s === 'NULL') return null;
  if (s.startsWith("'")) return s.slice(1, -1).replace(/''/g, "'");
  if (s.startsWith('"')) return JSON.parse(s.replace(/\\'/g, "'"));
  if (s.startsWith('[')) return splitFlow(s.slice(1, -1)).map(scalar);
  if (s.startsWith('{')) {
    const o = {};
    for (const part of splitFlow(s.slice(1, -1))) {
      const i = keyColon(part);
      o[scalar(part.slice(0, i))] = scalar(part.slice(i + 1));
    }
    return o;
  }
  if (['true', 'True', 'TRUE'].includes(s)) return true;
  if (['false', 'False', 'FALSE'].includes(s)) return false;
  if (/^[-+]?[0-9]+$/.test(s)) return Number(s);
  if (/^[-+]?([0-9]*\.[0-9]+|[0-9]+\.[0-9]*)([eE][-+]?[0-9]+)?$/.test(s)) return Number(s);
  return s;
}

function keyText(raw) {
  const k = scalar(raw);
  return typeof k === 'string' ? k : String(raw.trim());
}

class Parser {
  constructor(text) {
    this.lines = text.split(/\r?\n/).map((raw) => ({ raw, indent: raw.length - raw.trimStart().length }));
    this.i = 0;
  }

  /** The next line with content (skipping blank and comment-only lines), or undefined. */
  peek() {
    while (this.i < this.lines.length) {
      const l = this.lines[this.i];
      const t = stripComment(l.raw).trim();
      if (t !== '' && t !== '---') return { ...l, text: stripComment(l.raw).trim() };
      this.i++;
    }
    return undefined;
  }

  block(indent) {
    const l = this.peek();
    if (!l || l.indent < indent) return null;
    return l.text === '-' || l.text.startsWith('- ') ? this.seq(l.indent) : this.map(l.indent);
  }

  seq(indent) {
    const out = [];
    for (let l = this.peek(); l && l.indent === indent && (l.text === '-' || l.text.startsWith('- ')); l = this.peek()) {
      const rest = l.text === '-' ? '' : l.raw.trimStart().slice(2);
      const restIndent = indent + 2 + (rest.length - rest.trimStart().length);
      if (stripComment(rest).trim() === '') {
        this.i++;
        out.push(this.block(indent + 1));
      } else if (keyColon(stripComment(rest).trim()) > 0) {
        // `- key: value`: a mapping whose first line starts after the dash.
        this.lines[this.i] = { raw: ' '.repeat(restIndent) + rest.trimStart(), indent: restIndent };
        out.push(this.map(restIndent));
      } else {
        this.i++;
        out.push(scalar(stripComment(rest)));
      }
    }
    return out;
  }

  map(indent) {
    const out = {};
    for (let l = this.peek(); l && l.indent === indent && !(l.text === '-' || l.text.startsWith('- ')); l = this.peek()) {
      const c = keyColon(l.text);
      if (c < 0) throw new Error(`yaml: line ${this.i + 1}: expected \`key: value\`: ${l.raw}`);
      const key = keyText(l.text.slice(0, c));
      const rest = l.text.slice(c + 1).trim();
      this.i++;
      if (/^[|>][-+]?[0-9]?$/.test(rest)) {
        out[key] = this.blockScalar(rest, indent);
      } else if (rest === '') {
        const n = this.peek();
        if (n && n.indent > indent) out[key] = this.block(n.indent);
        else if (n && n.indent === indent && (n.text === '-' || n.text.startsWith('- '))) out[key] = this.seq(indent);
        else out[key] = null;
      } else {
        out[key] = scalar(rest);
      }
    }
    return out;
  }

  blockScalar(header, indent) {
    const folded = header[0] === '>';
    const chomp = header.includes('-') ? 'strip' : header.includes('+') ? 'keep' : 'clip';
    const body = [];
    let blockIndent;
    while (this.i < this.lines.length) {
      const { raw, indent: ind } = this.lines[this.i];
      if (raw.trim() === '') {
        body.push('');
        this.i++;
        continue;
      }
      if (ind <= indent) break;
      if (blockIndent === undefined) blockIndent = ind;
      if (ind < blockIndent) break;
      body.push(raw.slice(blockIndent));
      this.i++;
    }
    let trailing = 0;
    while (body.length > 0 && body[body.length - 1] === '') {
      body.pop();
      trailing++;
    }
    let text;
    if (folded) {
      // Lines join with a space; an empty line stands for one line break; more-indented
      // lines keep their breaks.
      text = body[0] || '';
      let prevEmpty = text === '';
      let prevMore = /^\s/.test(text);
      for (const line of body.slice(1)) {
        if (line === '') {
          text += '\n';
          prevEmpty = true;
          continue;
        }
        const more = /^\s/.test(line);
        text += prevEmpty ? line : more || prevMore ? `\n${line}` : ` ${line}`;
        prevEmpty = false;
        prevMore = more;
      }
    } else {
      text = body.join('\n');
    }
    if (body.length === 0) return '';
    if (chomp === 'strip') return text;
    if (chomp === 'keep') return `${text}\n${'\n'.repeat(trailing)}`;
    return `${text}\n`;
  }
}

/** Parse a YAML document (the subset above). */
function parse(text) {
  const p = new Parser(text);
  const v = p.block(0);
  const rest = p.peek();
  if (rest) throw new Error(`yaml: line ${p.i + 1}: unexpected: ${rest.raw}`);
  return v;
}

module.exports = { parse };
