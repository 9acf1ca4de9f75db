'use strict';
// The runner's protocol, as @actions/core speaks it, without the dependency: inputs from
// INPUT_* variables, outputs and state through the GITHUB_OUTPUT and GITHUB_STATE files, the
// job summary through GITHUB_STEP_SUMMARY, and workflow commands (::group::, ::warning::,
// ::add-mask::) on stdout. Everything reads the `env` it is given, so tests need no runner.

const fs = require('node:fs');
const os = require('node:os');
const crypto = require('node:crypto');

/** A bad input: the step fails with this message. */
class InputError extends Error {}

/** The variable the runner sets for input `name`: spaces become `_`, hyphens stay. */
function inputVar(name) {
  return `INPUT_${name.replace(/ /g, '_').toUpperCase()}`;
}

/** `%`, CR and LF escaped as the runner expects in a command's message. */
function escapeData(s) {
  return String(s).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

/** As escapeData, and `:` and `,`, for a command's properties. */
function escapeProperty(s) {
  return escapeData(s).replace(/:/g, '%3A').replace(/,/g, '%2C');
}

/** Whether the runner would find a workflow command in `text` (see `Actions.info`). */
function looksLikeCommand(text) {
  return /(^|\n)\s*::/.test(text) || text.includes('##[');
}

/**
 * The file-command form of `name=value` (`name<<DELIM`, the value, `DELIM`), with a
 * delimiter that appears in neither.
 */
function fileCommand(name, value) {
  const delim = `ghadelimiter_${crypto.randomUUID()}`;
  const v = String(value);
  if (name.includes(delim) || v.includes(delim)) {
    throw new Error(`${name}: the value contains the delimiter`);
  }
  return `${name}<<${delim}${os.EOL}${v}${os.EOL}${delim}${os.EOL}`;
}

/**
 * Parse a GITHUB_OUTPUT or GITHUB_STATE file as the runner does: `name<<DELIM` blocks and
 * plain `name=value` lines.
 */
function parseFileCommands(text) {
  const out = {};
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line === '') continue;
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line);
    if (heredoc) {
      const [, name, delim] = heredoc;
      const value = [];
      i++;
      while (i < lines.length && lines[i] !== delim) value.push(lines[i++]);
      if (i >= lines.length) throw new Error(`${name}: no closing delimiter ${delim}`);
      out[name] = value.join('\n');
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`not a file command: ${line}`);
    out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

/** The runner, seen from one step: inputs, outputs, state, log and summary. */
class Actions {
  /**
   * @param {{env?: NodeJS.ProcessEnv, write?: (s: string) => void}} [opts]
   */
  constructor({ env = process.env, write = (s) => process.stdout.write(s) } = {}) {
    this.env = env;
    this.failed = false;
    this.atLineStart = true;
    this.write = (s) => {
      const text = String(s);
      if (text !== '') this.atLineStart = text.endsWith('\n');
      write(text);
    };
  }

  /** Input `name`, trimmed; '' when unset. */
  input(name, { required = false } = {}) {
    const v = (this.env[inputVar(name)] || '').trim();
    if (required && v === '') throw new InputError(`input required and not supplied: ${name}`);
    return v;
  }

  /** Input `name` as lines, each trimmed, empty lines dropped. */
  multiline(name, opts) {
    return this.input(name, opts)
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '');
  }

  /** A boolean input, as the YAML 1.2 core schema spells one; `fallback` when unset. */
  bool(name, fallback = false) {
    const v = this.input(name);
    if (v === '') return fallback;
    if (['true', 'True', 'TRUE'].includes(v)) return true;
    if (['false', 'False', 'FALSE'].includes(v)) return false;
    throw new InputError(`input ${name}: \`${v}\` is not a boolean (true or false)`);
  }

  /** Append to the file a GITHUB_* variable names. */
  appendFile(variable, text) {
    const file = this.env[variable];
    if (!file) throw new Error(`${variable} is not set: not running in a GitHub Actions step?`);
    fs.appendFileSync(file, text, { encoding: 'utf8' });
  }

  setOutput(name, value) {
    this.appendFile('GITHUB_OUTPUT', fileCommand(name, value));
  }

  /** Keep `value` for this action's post step (which reads it with `state`). */
  saveState(name, value) {
    this.appendFile('GITHUB_STATE', fileCommand(name, value));
  }

  /** What the main step saved with `saveState`; '' when nothing. */
  state(name) {
    return this.env[`STATE_${name}`] || '';
  }

  /** Put `dir` on PATH for the job's later steps. */
  addPath(dir) {
    this.appendFile('GITHUB_PATH', `${dir}${os.EOL}`);
  }

  /** Append Markdown to the job summary (nothing when the runner offers none). */
  summary(markdown) {
    if (this.env.GITHUB_STEP_SUMMARY) this.appendFile('GITHUB_STEP_SUMMARY', markdown);
  }

  command(name, props, message) {
    const p = Object.entries(props || {})
      .filter(([, v]) => v !== undefined && v !== '')
      .map(([k, v]) => `${k}=${escapeProperty(v)}`)
      .join(',');
    this.write(`::${name}${p ? ` ${p}` : ''}::${escapeData(message)}${os.EOL}`);
  }

  /**
   * A line of the log. One that the runner would read as a workflow command (a line that
   * starts with `::`, or `##[` anywhere: a key from the cache, say) is written between
   * `::stop-commands::` and its token, shown and not obeyed.
   */
  info(message) {
    const text = `${message}${os.EOL}`;
    if (looksLikeCommand(text)) this.verbatimSync(() => this.write(text));
    else this.write(text);
  }

  /**
   * Run `fn`, whose writes (a child's output, which may print what it read from a cache)
   * the runner shows without reading workflow commands in them: between
   * `::stop-commands::TOKEN` and `::TOKEN::`, TOKEN random so that nothing inside can
   * resume processing.
   */
  async verbatim(fn) {
    const token = this.stopCommands();
    try {
      return await fn();
    } finally {
      this.resumeCommands(token);
    }
  }

  /** `verbatim` for a function that does not wait. */
  verbatimSync(fn) {
    const token = this.stopCommands();
    try {
      return fn();
    } finally {
      this.resumeCommands(token);
    }
  }

  stopCommands() {
    if (!this.atLineStart) this.write(os.EOL);
    const token = `storesync-${crypto.randomUUID()}`;
    this.write(`::stop-commands::${token}${os.EOL}`);
    return token;
  }

  resumeCommands(token) {
    if (!this.atLineStart) this.write(os.EOL);
    this.write(`::${token}::${os.EOL}`);
  }

  debug(message) {
    this.command('debug', null, message);
  }

  notice(message, props) {
    this.command('notice', props, message);
  }

  warning(message, props) {
    this.command('warning', props, message);
  }

  error(message, props) {
    this.command('error', props, message);
  }

  /** Never print `secret` (each of its lines) in the log. */
  mask(secret) {
    for (const line of String(secret).split(/\r?\n/)) {
      if (line.trim() !== '') this.command('add-mask', null, line);
    }
  }

  /** The step fails with `message` (its entry point then exits 1). */
  fail(message) {
    this.error(message);
    this.failed = true;
  }

  /** Run `fn` inside a collapsed log group. */
  async group(title, fn) {
    this.command('group', null, title);
    try {
      return await fn();
    } finally {
      this.command('endgroup', null, '');
    }
  }
}

module.exports = {
  Actions,
  InputError,
  inputVar,
  escapeData,
  escapeProperty,
  fileCommand,
  parseFileCommands,
  looksLikeCommand,
};
