'use strict';
// The three things the action does (restore, save, gc), shared by its entry points:
// main.js (restore, then state for post.js), post.js (save), restore-only.js, save-only.js,
// gc.js. `deps` injects the binary resolution's network and the process runner for tests.

const { resolveBinary } = require('./binary');
const command = require('./command');
const report = require('./report');

function uid() {
  return typeof process.getuid === 'function' ? process.getuid() : -1;
}

/**
 * Run storesync as root with `args` (a `--json` command line), the `github-token` input as
 * GITHUB_TOKEN, and the extra environment.
 * @returns {Promise<{code: number|null, signal: string|null, stdout: string, json: any, error?: Error}>}
 */
async function storesync(actions, cfg, bin, args, { extraEnv = {}, deps = {} } = {}) {
  const env = command.childEnv(actions.env, { GITHUB_TOKEN: cfg.token, ...extraEnv });
  const p = command.privileged(bin, args, { uid: deps.uid ?? uid(), env });
  // What storesync prints (keys and file names it read from the cache, servers' replies)
  // is shown in the log, never read as workflow commands.
  const r = await actions.verbatim(() =>
    (deps.exec || command.run)(p.file, p.args, { env, log: (s) => actions.write(s) }),
  );
  return { ...r, json: command.parseJson(r.stdout) };
}

/** The binary, said in the log, and offered to later steps (output `binary`). */
async function binary(actions, cfg, deps) {
  const b = await resolveBinary(actions, cfg, deps.binary);
  actions.info(`storesync: ${b.path} (${b.source})`);
  actions.setOutput('binary', b.path);
  return b.path;
}

/**
 * Restore the store's missing paths from the cache (before the daemon starts). Sets the
 * outputs; fails the step on a usage error, a miss with fail-on-miss, and (with strict) on
 * any path not restored; otherwise problems are warnings and the job goes on (the daemon
 * builds or substitutes what is missing).
 *
 * @returns {Promise<{status: string, outputs: object}>}
 */
async function restoreStep(actions, cfg, bin, deps = {}) {
  const started = Date.now();
  const r = await actions.group(`storesync restore ${cfg.key}`, () =>
    storesync(actions, cfg, bin, command.restoreArgs(cfg), { deps }),
  );
  const { status, message } = report.interpretRestore(r);
  const outputs = report.restoreOutputs(r.json, status);
  for (const [k, v] of Object.entries(outputs)) actions.setOutput(k, v);
  actions.summary(report.restoreSummary({ key: cfg.key, json: r.json, status, message, ms: Date.now() - started }));
  const j = r.json || {};
  switch (status) {
    case 'hit':
    case 'prefix':
      actions.info(
        `restored ${j.restored} paths (${report.human(j.bytes_written)} written) from snapshot ` +
          `${report.short(j.snapshot)} of key \`${j.matched_key}\`${status === 'hit' ? '' : ' (restore-keys prefix)'}; ${j.already_valid} already valid`,
      );
      break;
    case 'miss':
      if (cfg.failOnMiss) actions.fail(`cache miss: no snapshot matches key \`${cfg.key}\` or a restore-keys prefix (fail-on-miss)`);
      else actions.info(`cache miss: no snapshot matches key \`${cfg.key}\` or a restore-keys prefix; nothing restored`);
      break;
    case 'usage':
      actions.fail(message);
      break;
    default:
      if (cfg.strict) actions.fail(message);
      else actions.warning(message);
  }
  return { status, outputs };
}

/** Whether the binary's `save` offers `--gc-roots`. */
async function offersGcRoots(bin, deps) {
  const r = await (deps.exec || command.run)(bin, ['save', '--help'], { log: () => {} });
  return r.code === 0 && /--gc-roots\b/.test(r.stdout);
}

/**
 * Save the store under the key, pruning by the retention inputs; skipped when the restore
 * matched the exact key and the store holds nothing the cache lacks (`save --dry-run`).
 * Failures are warnings (as actions/cache's), errors with strict.
 *
 * @param {{cacheHit: boolean}} from what the restore found
 * @returns {Promise<{saved: boolean, json?: object}>}
 */
async function saveStep(actions, cfg, bin, { cacheHit }, deps = {}) {
  const started = Date.now();
  // Known before the dry run, which must ask about the same closure as the save.
  let gcRoots = false;
  if (cfg.gcRoots) {
    gcRoots = await offersGcRoots(bin, deps);
    if (!gcRoots) actions.warning('gc-roots: this storesync has no `save --gc-roots`; saving every valid path');
  }
  if (cacheHit) {
    const dry = await actions.group('storesync save --dry-run (anything new?)', () =>
      storesync(actions, cfg, bin, command.saveArgs(cfg, { dryRun: true, gcRoots }), { deps }),
    );
    if (dry.code === 0 && dry.json && dry.json.new_paths === 0) {
      const why = `the exact key \`${cfg.key}\` was restored and the store holds no path the cache lacks (${dry.json.paths} paths)`;
      actions.info(`not saving: ${why}`);
      actions.setOutput('saved', 'false');
      actions.summary(report.saveSummary({ key: cfg.key, skipped: why, ms: Date.now() - started }));
      return { saved: false };
    }
    if (dry.code === 0 && dry.json) actions.info(`${dry.json.new_paths} new paths since the restore: saving`);
  }
  if (command.retentionArgs(cfg).length > 0 && !command.canPrune(cfg.cache, cfg.token)) {
    actions.warning(
      'keep-last/max-size: not pruning the gha:// cache: listing and deleting its entries needs the github-token input (a token with `actions: write`); GitHub evicts entries itself: unused for 7 days, or least recently used beyond 10 GB',
    );
  }
  const r = await actions.group(`storesync save ${cfg.key}`, () =>
    storesync(actions, cfg, bin, command.saveArgs(cfg, { gcRoots }), {
      extraEnv: { STORESYNC_SIGN_KEY: cfg.signKey },
      deps,
    }),
  );
  // Saved, but the prune after it failed (a token without `actions: write`, say): the
  // snapshot is in the cache; the prune is a warning (an error with strict).
  const pruneError = r.code === 1 && r.json && r.json.snapshot && r.json.prune_error;
  const ok = (r.code === 0 || pruneError) && r.json && r.json.snapshot;
  const how = report.failureMessage(r, 'save');
  if (pruneError) {
    const msg = `saved, but pruning the cache failed: ${r.json.prune_error}`;
    if (cfg.strict) actions.fail(msg);
    else actions.warning(msg);
  }
  actions.summary(report.saveSummary({ key: cfg.key, json: ok ? r.json : undefined, message: how, ms: Date.now() - started }));
  actions.setOutput('saved', String(Boolean(ok)));
  if (!ok) {
    if (cfg.strict || r.code === 2) actions.fail(how);
    else actions.warning(`${how}; the cache keeps its previous snapshots`);
    return { saved: false };
  }
  const j = r.json;
  actions.setOutput('snapshot', j.snapshot);
  actions.info(
    `${j.unchanged ? 'unchanged' : 'saved'} snapshot ${report.short(j.snapshot)} under \`${cfg.key}\`: ${j.paths} paths, ` +
      `${j.new_paths} new (${report.human(j.bytes_read)} read, ${report.human(j.packed_bytes)} packed)`,
  );
  return { saved: true, json: j };
}

/** Collect garbage in the cache by the retention inputs. */
async function gcStep(actions, cfg, bin, deps = {}) {
  const started = Date.now();
  const r = await actions.group('storesync gc', () =>
    storesync(actions, cfg, bin, command.gcArgs(cfg), { deps }),
  );
  const ok = r.code === 0 && r.json;
  const how = report.failureMessage(r, 'gc');
  actions.summary(report.gcSummary({ cache: cfg.cache, json: ok ? r.json : undefined, message: how, ms: Date.now() - started }));
  if (!ok) {
    actions.fail(how);
    return { ok: false };
  }
  actions.setOutput('dropped', String(r.json.dropped.length));
  actions.setOutput('bytes-freed', String(r.json.bytes_freed));
  return { ok: true, json: r.json };
}

/** Run an entry point: an exception fails the step with its message; a failed step exits 1. */
function entry(fn) {
  const { Actions } = require('./core');
  const actions = new Actions();
  fn(actions)
    .catch((e) => actions.fail(e && e.message ? e.message : String(e)))
    .finally(() => {
      if (actions.failed) process.exitCode = 1;
    });
}

module.exports = { storesync, binary, restoreStep, saveStep, gcStep, offersGcRoots, entry };
