'use strict';
// What storesync's `--json` results mean for the step (status, outputs) and the job summary
// tables. Pure functions: tests feed them JSON as docs/CLI.md specifies it.

/** `bytes` in binary units, as storesync prints them: `512 B`, `1.5 KiB`, `3.2 GiB`. */
function human(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(bytes) || 0;
  let u = 0;
  while (v >= 1024 && u + 1 < units.length) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${bytes || 0} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** Milliseconds as `850 ms`, `12.3 s`, `2 min 5 s`. */
function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** Text as Markdown inline code inside a table cell (GFM reads `\|` there as `|`). */
function code(s) {
  const t = String(s).replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  return t.includes('`') ? `\`\` ${t} \`\`` : `\`${t}\``;
}

/** Text as a table cell: `|` escaped (GFM reads `\|` as `|`), line breaks as spaces. */
function cell(s) {
  return String(s).replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

/** The first 12 hex digits of a snapshot id. */
function short(id) {
  return String(id || '').slice(0, 12);
}

function table(title, rows, extra = '') {
  const body = rows.map(([k, v]) => `| ${k} | ${v} |`).join('\n');
  return `### ${title}\n\n| | |\n|:--|:--|\n${body}\n${extra}\n`;
}

/** A collapsed list of paths (and why), for failures. */
function details(summary, lines) {
  if (lines.length === 0) return '';
  const items = lines.map((l) => `- ${l}`).join('\n');
  return `\n<details><summary>${summary}</summary>\n\n${items}\n\n</details>\n`;
}

/** The last `storesync: error: ...` line of a run's stderr (without that prefix), or ''. */
function errorLine(stderr) {
  const lines = String(stderr || '').split(/\r?\n/);
  for (let i = lines.length - 1; i >= 0; i--) {
    const m = /^storesync: error: (.+)$/.exec(lines[i]);
    if (m) return m[1].trim();
  }
  return '';
}

/**
 * Why a storesync run gave no result: it did not start, was killed, or exited non-zero;
 * with the error storesync printed last, which the step's annotation (shown in the run's
 * summary, away from the collapsed log) then says too.
 */
function failureMessage(r, what) {
  if (r.error) return `storesync could not start: ${r.error.message}`;
  const how = r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  const why = errorLine(r.stderr);
  return `storesync ${what} failed (${how})${why ? `: ${why}` : '; see its message above'}`;
}

/**
 * What a restore run means.
 *
 * status: `hit` (the exact key), `prefix` (a restore-key prefix matched), `miss`, `partial`
 * (some paths failed, the rest were registered), `busy` (exit 3: a daemon holds the
 * big-lock), `usage` (exit 2), `error` (anything else; `message` says what).
 *
 * @param {{code: number|null, json?: object, error?: Error, signal?: string|null}} r
 */
function interpretRestore(r) {
  const j = r.json;
  if (r.error) return { status: 'error', message: failureMessage(r, 'restore') };
  if (r.code === 2) {
    const why = errorLine(r.stderr);
    return { status: 'usage', message: `storesync rejected its arguments (exit 2)${why ? `: ${why}` : ''}` };
  }
  if (r.code === 3) {
    return {
      status: 'busy',
      message:
        'the store is busy (exit 3): a daemon worker holds the big-lock; restore before the daemon starts',
    };
  }
  if ((r.code === 0 || r.code === 1) && j && typeof j === 'object' && Array.isArray(j.failed)) {
    if (!j.matched_key && !j.snapshot) return { status: 'miss' };
    if (j.failed.length > 0 || r.code === 1) {
      return {
        status: 'partial',
        message: `${j.failed.length} paths failed verification and were not registered, ${j.skipped.length} more not registered because they refer to them; the daemon builds or substitutes them`,
      };
    }
    return { status: j.exact_match ? 'hit' : 'prefix' };
  }
  return { status: 'error', message: failureMessage(r, 'restore') };
}

/**
 * The step outputs of a restore. `cache-hit` only when the exact key's snapshot was
 * restored whole: after a partial restore the cache lacks data the store now has again
 * (an evicted pack), and a save that `cache-hit` skips would leave it so.
 */
function restoreOutputs(json, status) {
  const j = json || {};
  const matched = status !== 'miss' && Boolean(j.matched_key);
  return {
    'cache-hit': String(status === 'hit' && matched && j.exact_match === true),
    'matched-key': matched ? j.matched_key : '',
    'restored-paths': String(j.restored || 0),
    bytes: String(j.bytes_written || 0),
  };
}

/** The job summary of a restore. */
function restoreSummary({ key, json, status, message, ms }) {
  const j = json || {};
  const matched = {
    hit: () => `${code(j.matched_key)} (exact key)`,
    prefix: () => `${code(j.matched_key)} (a restore-keys prefix)`,
    partial: () => `${code(j.matched_key || short(j.snapshot))}${j.exact_match ? ' (exact key)' : ''}`,
    miss: () => 'none: cache miss, nothing restored',
  }[status];
  const rows = [
    ['key', code(key)],
    ['matched', matched ? matched() : `not restored: ${cell(message)}`],
  ];
  if (j.snapshot) {
    rows.push(['snapshot', code(short(j.snapshot))]);
    rows.push([
      'paths',
      `${j.selected} in the snapshot: **${j.restored} restored**, ${j.already_valid} already valid, ` +
        `${j.failed.length} failed, ${j.skipped.length} not registered`,
    ]);
    rows.push([
      'bytes',
      `${human(j.bytes)} NAR, ${human(j.bytes_written)} written, ${j.linked_files} files hard-linked`,
    ]);
  }
  rows.push(['time', duration(ms)]);
  const failures = (j.failures || []).map((f) => `${code(f.path)}: ${f.error}`);
  const skipped = (j.skipped || []).map((p) => code(p));
  const title = {
    hit: 'exact key hit',
    prefix: 'restore-keys prefix hit',
    miss: 'cache miss',
    partial: 'some paths not restored',
  }[status] || 'failed';
  return table(
    `storesync restore: ${title}`,
    rows,
    details(`${failures.length} paths failed`, failures) +
      details(`${skipped.length} paths not registered (they refer to a failed path)`, skipped),
  );
}

/** The job summary of a save (or of the decision not to save). */
function saveSummary({ key, json, skipped, message, ms }) {
  const rows = [['key', code(key)]];
  const j = json || {};
  if (skipped) {
    rows.push(['result', `not saved: ${cell(skipped)}`]);
  } else if (!json) {
    rows.push(['result', `failed: ${cell(message)}`]);
  } else {
    rows.push([
      'result',
      j.unchanged ? `snapshot ${code(short(j.snapshot))} unchanged` : `saved snapshot ${code(short(j.snapshot))}`,
    ]);
    rows.push(['paths', `${j.paths} in the snapshot, **${j.new_paths} new** (read from the store)`]);
    rows.push([
      'bytes',
      `${human(j.nar_bytes)} NAR, ${human(j.bytes_read)} read, ${human(j.packed_bytes)} packed`,
    ]);
    if (j.signed_by) rows.push(['signed by', code(j.signed_by)]);
    if (j.pruned) rows.push(['pruned', gcLine(j.pruned)]);
  }
  rows.push(['time', duration(ms)]);
  const dropped = [
    ...(j.corrupt || []).map(([p, why]) => `${code(p)}: corrupt: ${why}`),
    ...(j.unreadable || []).map(([p, why]) => `${code(p)}: unreadable: ${why}`),
    ...(j.vanished || []).map((p) => `${code(p)}: deleted during the save`),
    ...(j.dropped_referrers || []).map((p) => `${code(p)}: refers to a path not saved`),
  ];
  return table('storesync save', rows, details(`${dropped.length} paths not saved`, dropped));
}

function gcLine(g) {
  return (
    `${g.kept.length} snapshots kept, ${g.dropped.length} dropped; ${human(g.live_bytes)} live of ` +
    `${human(g.pack_bytes_before)}; ${human(g.bytes_freed)} freed, ${human(g.bytes_pending)} waiting for the grace period` +
    (g.entries_touched ? `; ${g.entries_touched} idle entries touched` : '')
  );
}

/** The job summary of a gc. */
function gcSummary({ cache, json, message, ms }) {
  const rows = [['cache', code(cache)]];
  if (json) {
    rows.push([json.dry_run ? 'would' : 'result', gcLine(json)]);
  } else {
    rows.push(['result', `failed: ${cell(message)}`]);
  }
  rows.push(['time', duration(ms)]);
  const dropped = ((json && json.dropped) || []).map(
    ([id, key, why]) => `${code(short(id))} ${code(key)}: ${why}`,
  );
  return table(`storesync gc${json && json.dry_run ? ' (dry run)' : ''}`, rows, details(`${dropped.length} snapshots dropped`, dropped));
}

module.exports = {
  errorLine,
  failureMessage,
  human,
  duration,
  code,
  short,
  interpretRestore,
  restoreOutputs,
  restoreSummary,
  saveSummary,
  gcSummary,
};
