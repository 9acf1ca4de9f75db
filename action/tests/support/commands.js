'use strict';
// The workflow commands a step's log gives the runner, read as actions/runner reads them
// (src/Runner.Common/ActionCommand.cs, src/Runner.Worker/ActionCommandManager.cs): each
// line is a command `::name props::data` when, less its leading blanks, it starts with `::`
// (TryParseV2), or else when it holds `##[name props]data` anywhere (the legacy TryParse);
// only registered names count. `::stop-commands::TOKEN` stops processing until a line
// `::TOKEN::`.

/** The commands the runner registers (those a step may issue). */
const REGISTERED = [
  'add-mask', 'add-path', 'set-env', 'set-output', 'save-state', 'add-matcher', 'remove-matcher',
  'warning', 'error', 'notice', 'debug', 'group', 'endgroup', 'echo', 'stop-commands',
];

function parseV2(line, registered) {
  const m = line.trimStart();
  if (!m.startsWith('::')) return undefined;
  const end = m.indexOf('::', 2);
  if (end < 0) return undefined;
  const info = m.slice(2, end);
  const sp = info.indexOf(' ');
  const name = sp < 0 ? info : info.slice(0, sp);
  if (!registered.has(name)) return undefined;
  return { name, props: sp < 0 ? '' : info.slice(sp + 1), data: m.slice(end + 2) };
}

function parseV1(line, registered) {
  const at = line.indexOf('##[');
  if (at < 0) return undefined;
  const rb = line.indexOf(']', at);
  if (rb < 0) return undefined;
  const info = line.slice(at + 3, rb);
  const sp = info.indexOf(' ');
  const name = sp < 0 ? info : info.slice(0, sp);
  if (!registered.has(name)) return undefined;
  return { name, props: sp < 0 ? '' : info.slice(sp + 1), data: line.slice(rb + 1) };
}

/** The commands `log` (a step's stdout) issues, in order: `{name, props, data}`. */
function commands(log) {
  const registered = new Set(REGISTERED);
  const out = [];
  let stopToken;
  for (const line of log.split(/\r?\n/)) {
    if (line === '') continue;
    const c = parseV2(line, registered) || parseV1(line, registered);
    if (!c) continue;
    if (stopToken !== undefined) {
      if (c.name === stopToken) {
        registered.delete(stopToken);
        stopToken = undefined;
      }
      continue;
    }
    if (c.name === 'stop-commands') {
      stopToken = c.data;
      registered.add(stopToken);
      continue;
    }
    out.push(c);
  }
  return out;
}

module.exports = { commands, REGISTERED };
