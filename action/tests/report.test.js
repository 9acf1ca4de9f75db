'use strict';
// What restore results mean, the outputs, and the summary tables, from JSON as docs/CLI.md
// specifies it.

const assert = require('node:assert/strict');
const test = require('node:test');

const report = require('../src/lib/report');

const EMPTY = {
  snapshot: '',
  dry_run: false,
  selected: 0,
  already_valid: 0,
  planned: 0,
  restored: 0,
  bytes: 0,
  bytes_written: 0,
  linked_files: 0,
  replaced_leftovers: 0,
  failed: [],
  failures: [],
  skipped: [],
  paths: [],
  repaired: [],
  broken: [],
  signed_by: null,
  passed_over: [],
  matched_key: null,
  exact_match: false,
};
const SNAP = '97b11d9e5c65c4bd063b76634185904ed4255ab359aa070fcb0bc7ea3fa47305';
const HIT = {
  ...EMPTY,
  snapshot: SNAP,
  selected: 8,
  already_valid: 2,
  planned: 6,
  restored: 6,
  bytes: 378024,
  bytes_written: 344053,
  linked_files: 2,
  matched_key: 'guix-1-abc',
  exact_match: true,
};

test('restore results: hit, prefix, miss, partial, busy, usage, error', () => {
  assert.deepEqual(report.interpretRestore({ code: 0, json: HIT }), { status: 'hit' });
  assert.deepEqual(report.interpretRestore({ code: 0, json: { ...HIT, exact_match: false } }), { status: 'prefix' });
  assert.deepEqual(report.interpretRestore({ code: 0, json: EMPTY }), { status: 'miss' });
  const partial = report.interpretRestore({
    code: 1,
    json: { ...HIT, restored: 4, failed: ['/gnu/store/a-x'], skipped: ['/gnu/store/b-y'] },
  });
  assert.equal(partial.status, 'partial');
  assert.match(partial.message, /^1 paths failed verification and were not registered, 1 more not registered/);
  assert.equal(report.interpretRestore({ code: 3 }).status, 'busy');
  assert.match(report.interpretRestore({ code: 3 }).message, /restore before the daemon starts/);
  assert.equal(report.interpretRestore({ code: 2 }).status, 'usage');
  assert.deepEqual(report.interpretRestore({ code: 1, json: undefined }), {
    status: 'error',
    message: 'storesync restore failed (exit 1); see its message above',
  });
  assert.match(report.interpretRestore({ code: null, signal: 'SIGKILL' }).message, /killed by SIGKILL/);
  // The last error storesync printed is in the message (the step's annotation).
  const stderr = 'storesync: note\nstoresync: error: first\nstoresync: error: cache storage s3://b/p: HTTP 403\n';
  assert.equal(
    report.interpretRestore({ code: 1, json: undefined, stderr }).message,
    'storesync restore failed (exit 1): cache storage s3://b/p: HTTP 403',
  );
  assert.match(report.interpretRestore({ code: null, error: new Error('spawn sudo ENOENT') }).message, /could not start: spawn sudo ENOENT/);
});

test('outputs: cache-hit only for the exact key; matched-key empty on a miss', () => {
  assert.deepEqual(report.restoreOutputs(HIT, 'hit'), {
    'cache-hit': 'true',
    'matched-key': 'guix-1-abc',
    'restored-paths': '6',
    bytes: '344053',
  });
  assert.equal(report.restoreOutputs({ ...HIT, exact_match: false }, 'prefix')['cache-hit'], 'false');
  assert.equal(report.restoreOutputs({ ...HIT, failed: ['/gnu/store/a-x'] }, 'partial')['cache-hit'], 'false');
  assert.deepEqual(report.restoreOutputs(EMPTY, 'miss'), {
    'cache-hit': 'false',
    'matched-key': '',
    'restored-paths': '0',
    bytes: '0',
  });
  assert.deepEqual(report.restoreOutputs(undefined, 'error'), {
    'cache-hit': 'false',
    'matched-key': '',
    'restored-paths': '0',
    bytes: '0',
  });
});

test('the restore summary: key, match, paths restored and skipped, bytes, time, failures listed', () => {
  const md = report.restoreSummary({
    key: 'guix-1-abc',
    json: {
      ...HIT,
      restored: 5,
      failed: ['/gnu/store/aaa-x'],
      failures: [{ path: '/gnu/store/aaa-x', error: 'NAR hash mismatch' }],
      skipped: ['/gnu/store/bbb-y'],
    },
    status: 'partial',
    ms: 1234,
  });
  assert.equal(
    md,
    [
      '### storesync restore: some paths not restored',
      '',
      '| | |',
      '|:--|:--|',
      '| key | `guix-1-abc` |',
      '| matched | `guix-1-abc` (exact key) |',
      '| snapshot | `97b11d9e5c65` |',
      '| paths | 8 in the snapshot: **5 restored**, 2 already valid, 1 failed, 1 not registered |',
      '| bytes | 369.2 KiB NAR, 336.0 KiB written, 2 files hard-linked |',
      '| time | 1.2 s |',
      '',
      '<details><summary>1 paths failed</summary>',
      '',
      '- `/gnu/store/aaa-x`: NAR hash mismatch',
      '',
      '</details>',
      '',
      '<details><summary>1 paths not registered (they refer to a failed path)</summary>',
      '',
      '- `/gnu/store/bbb-y`',
      '',
      '</details>',
      '',
      '',
    ].join('\n'),
  );
  const miss = report.restoreSummary({ key: 'k|1', json: EMPTY, status: 'miss', ms: 12 });
  assert.match(miss, /### storesync restore: cache miss/);
  assert.match(miss, /\| key \| `k\\\|1` \|/);
  assert.doesNotMatch(miss, /snapshot/);
  const err = report.restoreSummary({ key: 'k', status: 'busy', message: 'the store is busy', ms: 5 });
  assert.match(err, /### storesync restore: failed/);
  assert.match(err, /\| matched \| not restored: the store is busy \|/);
});

test('the save summary: saved, unchanged, skipped, failed, with pruning and dropped paths', () => {
  const saved = report.saveSummary({
    key: 'k',
    json: {
      snapshot: SNAP,
      unchanged: false,
      paths: 8,
      new_paths: 2,
      nar_bytes: 378024,
      bytes_read: 16656,
      packed_bytes: 8000,
      corrupt: [['/gnu/store/c-z', 'hash mismatch']],
      unreadable: [],
      dropped_referrers: ['/gnu/store/d-w'],
      vanished: [],
      signed_by: 'ci-1',
      pruned: {
        dry_run: false,
        kept: [[SNAP, 'k']],
        dropped: [['x', 'k', 'keep-last']],
        live_bytes: 8000,
        pack_bytes_before: 16000,
        bytes_freed: 0,
        bytes_pending: 8000,
      },
    },
    ms: 65_000,
  });
  assert.match(saved, /\| result \| saved snapshot `97b11d9e5c65` \|/);
  assert.match(saved, /\| paths \| 8 in the snapshot, \*\*2 new\*\* \(read from the store\) \|/);
  assert.match(saved, /\| bytes \| 369.2 KiB NAR, 16.3 KiB read, 7.8 KiB packed \|/);
  assert.match(saved, /\| signed by \| `ci-1` \|/);
  assert.match(saved, /\| pruned \| 1 snapshots kept, 1 dropped; 7.8 KiB live of 15.6 KiB; 0 B freed, 7.8 KiB waiting/);
  assert.match(saved, /\| time \| 1 min 5 s \|/);
  assert.match(saved, /<summary>2 paths not saved<\/summary>/);
  assert.match(saved, /- `\/gnu\/store\/c-z`: corrupt: hash mismatch/);
  assert.match(report.saveSummary({ key: 'k', json: { snapshot: SNAP, unchanged: true, paths: 1, new_paths: 0 }, ms: 1 }), /snapshot `97b11d9e5c65` unchanged/);
  assert.match(report.saveSummary({ key: 'k', skipped: 'nothing new', ms: 1 }), /\| result \| not saved: nothing new \|/);
  assert.match(report.saveSummary({ key: 'k', message: 'exit 1', ms: 1 }), /\| result \| failed: exit 1 \|/);
});

test('the gc summary', () => {
  const md = report.gcSummary({
    cache: 'gha://guix',
    json: {
      dry_run: true,
      kept: [],
      dropped: [[SNAP, 'guix-1-abc', 'not among the 1 newest of its key']],
      live_bytes: 0,
      pack_bytes_before: 2048,
      bytes_freed: 0,
      bytes_pending: 0,
    },
    ms: 10,
  });
  assert.match(md, /### storesync gc \(dry run\)/);
  assert.match(md, /\| would \| 0 snapshots kept, 1 dropped/);
  assert.match(md, /- `97b11d9e5c65` `guix-1-abc`: not among the 1 newest of its key/);
});

test('sizes and durations as people read them', () => {
  assert.equal(report.human(0), '0 B');
  assert.equal(report.human(1023), '1023 B');
  assert.equal(report.human(1536), '1.5 KiB');
  assert.equal(report.human(5 * 1024 ** 3), '5.0 GiB');
  assert.equal(report.duration(850), '850 ms');
  assert.equal(report.duration(12_340), '12.3 s');
  assert.equal(report.duration(125_000), '2 min 5 s');
  assert.equal(report.code('a`b'), '`` a`b ``');
});

test('a failure message in a summary table keeps its row: storesync\'s error text may hold | and newlines', () => {
  const message = report.failureMessage({ code: 1, stderr: 'storesync: error: cache storage s3://b/p: reply a|b\n' }, 'gc');
  const md = report.gcSummary({ cache: 's3://b/p', message, ms: 5 });
  const row = md.split('\n').find((l) => l.startsWith('| result |'));
  assert.equal(row, '| result | failed: storesync gc failed (exit 1): cache storage s3://b/p: reply a\\|b |');
  const r = report.restoreSummary({ key: 'k', status: 'error', message: 'x|y\nz', ms: 5 });
  assert.ok(r.includes('| matched | not restored: x\\|y z |'), r);
  const s = report.saveSummary({ key: 'k', message: 'x|y', ms: 5 });
  assert.ok(s.includes('| result | failed: x\\|y |'), s);
});
