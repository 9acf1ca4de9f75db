'use strict';
// A small GitHub Actions runner for the tests: it runs a job's steps as the real runner
// does for what this repository uses. A JavaScript action's `main` (then, when the job
// ends, its `post` in reverse order, if `post-if` holds) runs as `node FILE` in the
// workspace with INPUT_* variables for every declared input (defaults included, names
// upper-cased with spaces as `_`, hyphens kept), STATE_* from the main step's GITHUB_STATE,
// and fresh GITHUB_OUTPUT, GITHUB_STATE, GITHUB_ENV, GITHUB_PATH and GITHUB_STEP_SUMMARY
// files; `run:` steps run under `bash --noprofile --norc -eo pipefail`. `${{ }}`
// expressions are evaluated for the contexts steps, env, github, runner, secrets, vars and
// the functions success(), always(), failure(), hashFiles().

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const yaml = require('./yaml');
const { inputVar, parseFileCommands } = require('../../src/lib/core');

const REPO = path.resolve(__dirname, '../../..');

function loadYaml(file) {
  return yaml.parse(fs.readFileSync(file, 'utf8'));
}

// ---- expressions -------------------------------------------------------------------------

function tokenize(src) {
  const tokens = [];
  const re = /\s*(?:('(?:[^']|'')*')|(==|!=|&&|\|\||[!(),])|([A-Za-z_][A-Za-z0-9_.*-]*)|(-?[0-9]+(?:\.[0-9]+)?))/y;
  let m;
  re.lastIndex = 0;
  while (re.lastIndex < src.length) {
    const at = re.lastIndex;
    if (src.slice(at).trim() === '') break;
    m = re.exec(src);
    if (!m) throw new Error(`expression: cannot read \`${src.slice(at)}\``);
    if (m[1] !== undefined) tokens.push({ t: 'str', v: m[1].slice(1, -1).replace(/''/g, "'") });
    else if (m[2] !== undefined) tokens.push({ t: 'op', v: m[2] });
    else if (m[3] !== undefined) tokens.push({ t: 'id', v: m[3] });
    else tokens.push({ t: 'num', v: Number(m[4]) });
  }
  return tokens;
}

function truthy(v) {
  return !(v === false || v === null || v === undefined || v === '' || v === 0);
}

function looseEq(a, b) {
  if (typeof a === 'string' && typeof b === 'string') return a.toLowerCase() === b.toLowerCase();
  return String(a) === String(b);
}

/** Evaluate an expression (without `${{ }}`) in `ctx`. */
function evaluate(src, ctx) {
  const tokens = tokenize(src);
  let i = 0;
  const peek = () => tokens[i];
  const eat = (v) => {
    if (!tokens[i] || tokens[i].v !== v) throw new Error(`expression \`${src}\`: expected ${v}`);
    i++;
  };
  const lookup = (name) => {
    const parts = name.split('.');
    let v = ctx[parts[0]];
    for (const p of parts.slice(1)) v = v === undefined || v === null ? undefined : v[p];
    return v === undefined ? '' : v;
  };
  const call = (name, args) => {
    switch (name) {
      case 'success':
        return !ctx.jobFailed;
      case 'failure':
        return Boolean(ctx.jobFailed);
      case 'always':
        return true;
      case 'cancelled':
        return false;
      case 'hashFiles': {
        const h = crypto.createHash('sha256');
        let any = false;
        for (const f of args) {
          const p = path.join(ctx.workspace, f);
          if (fs.existsSync(p)) {
            h.update(crypto.createHash('sha256').update(fs.readFileSync(p)).digest());
            any = true;
          }
        }
        return any ? h.digest('hex') : '';
      }
      default:
        throw new Error(`expression: no function ${name}() in this runner`);
    }
  };
  const primary = () => {
    const tok = tokens[i++];
    if (!tok) throw new Error(`expression \`${src}\`: unexpected end`);
    if (tok.t === 'str' || tok.t === 'num') return tok.v;
    if (tok.v === '(') {
      const v = or();
      eat(')');
      return v;
    }
    if (tok.v === '!') return !truthy(primary());
    if (tok.t === 'id') {
      if (tok.v === 'true') return true;
      if (tok.v === 'false') return false;
      if (tok.v === 'null') return null;
      if (peek() && peek().v === '(') {
        i++;
        const args = [];
        while (peek() && peek().v !== ')') {
          args.push(or());
          if (peek() && peek().v === ',') i++;
        }
        eat(')');
        return call(tok.v, args);
      }
      return lookup(tok.v);
    }
    throw new Error(`expression \`${src}\`: unexpected ${tok.v}`);
  };
  const cmp = () => {
    let v = primary();
    while (peek() && (peek().v === '==' || peek().v === '!=')) {
      const op = tokens[i++].v;
      const r = primary();
      v = op === '==' ? looseEq(v, r) : !looseEq(v, r);
    }
    return v;
  };
  const and = () => {
    let v = cmp();
    while (peek() && peek().v === '&&') {
      i++;
      const r = cmp();
      v = truthy(v) ? r : v;
    }
    return v;
  };
  const or = () => {
    let v = and();
    while (peek() && peek().v === '||') {
      i++;
      const r = and();
      v = truthy(v) ? v : r;
    }
    return v;
  };
  const v = or();
  if (i !== tokens.length) throw new Error(`expression \`${src}\`: trailing ${tokens[i].v}`);
  return v;
}

/** `${{ expr }}` in `s` replaced by the values. */
function template(s, ctx) {
  if (typeof s !== 'string') return s === null || s === undefined ? '' : String(s);
  return s.replace(/\$\{\{(.*?)\}\}/g, (_, e) => {
    const v = evaluate(e, ctx);
    return v === null || v === undefined ? '' : String(v);
  });
}

/** A step's `if:`, with or without `${{ }}` (default: success()). */
function condition(expr, ctx) {
  if (expr === undefined || expr === null) return !ctx.jobFailed;
  const e = String(expr).trim().replace(/^\$\{\{([\s\S]*)\}\}$/, '$1');
  return truthy(evaluate(e, ctx));
}

// ---- the job ----------------------------------------------------------------------------

class Job {
  /**
   * @param {{workspace: string, env?: object, github?: object, secrets?: object, vars?: object, tmp?: string}} o
   */
  constructor({ workspace, env = {}, github = {}, secrets = {}, vars = {}, tmp }) {
    this.tmp = tmp || fs.mkdtempSync(path.join(os.tmpdir(), 'runner-'));
    this.workspace = workspace;
    this.runnerTemp = path.join(this.tmp, 'runner-temp');
    this.toolCache = path.join(this.tmp, 'tool-cache');
    fs.mkdirSync(this.runnerTemp, { recursive: true });
    fs.mkdirSync(this.toolCache, { recursive: true });
    this.summaryFile = path.join(this.tmp, 'summary.md');
    fs.writeFileSync(this.summaryFile, '');
    this.env = { ...env };
    this.extraPath = [];
    this.github = {
      token: 'ghs_test-token',
      ref: 'refs/heads/main',
      event_name: 'push',
      repository: 'example/project',
      server_url: 'https://github.com',
      api_url: 'https://api.github.com',
      workspace,
      ...github,
    };
    this.secrets = secrets;
    this.vars = vars;
    this.steps = {};
    this.posts = [];
    this.failed = false;
    this.log = [];
    this.n = 0;
  }

  ctx(stepEnv = {}) {
    return {
      github: this.github,
      env: { ...this.env, ...stepEnv },
      runner: { os: 'Linux', arch: 'X64', temp: this.runnerTemp, tool_cache: this.toolCache },
      steps: this.steps,
      secrets: this.secrets,
      vars: this.vars,
      jobFailed: this.failed,
      workspace: this.workspace,
    };
  }

  /** The environment every step gets, with its own file-command files. */
  stepEnv(files) {
    const base = {
      PATH: [...this.extraPath, process.env.PATH].join(':'),
      HOME: process.env.HOME || os.homedir(),
      CI: 'true',
      GITHUB_ACTIONS: 'true',
      GITHUB_WORKSPACE: this.workspace,
      GITHUB_REPOSITORY: this.github.repository,
      GITHUB_REF: this.github.ref,
      GITHUB_EVENT_NAME: this.github.event_name,
      GITHUB_SERVER_URL: this.github.server_url,
      GITHUB_API_URL: this.github.api_url,
      RUNNER_OS: 'Linux',
      RUNNER_ARCH: 'X64',
      RUNNER_TEMP: this.runnerTemp,
      RUNNER_TOOL_CACHE: this.toolCache,
    };
    for (const k of ['TMPDIR', 'LANG']) if (process.env[k]) base[k] = process.env[k];
    return { ...base, ...this.env, ...files };
  }

  newFiles() {
    const n = ++this.n;
    const f = (name) => {
      const p = path.join(this.tmp, `${name}-${n}`);
      fs.writeFileSync(p, '');
      return p;
    };
    return {
      GITHUB_OUTPUT: f('output'),
      GITHUB_STATE: f('state'),
      GITHUB_ENV: f('env'),
      GITHUB_PATH: f('path'),
      GITHUB_STEP_SUMMARY: f('summary'),
    };
  }

  /** What a finished step left: outputs, env and PATH for later steps, its summary. */
  collect(files, id) {
    const outputs = parseFileCommands(fs.readFileSync(files.GITHUB_OUTPUT, 'utf8'));
    Object.assign(this.env, parseFileCommands(fs.readFileSync(files.GITHUB_ENV, 'utf8')));
    const paths = fs.readFileSync(files.GITHUB_PATH, 'utf8').split('\n').filter(Boolean);
    this.extraPath.unshift(...paths.reverse());
    fs.appendFileSync(this.summaryFile, fs.readFileSync(files.GITHUB_STEP_SUMMARY, 'utf8'));
    if (id) this.steps[id] = { outputs, conclusion: 'success' };
    return outputs;
  }

  record(kind, name, r) {
    const out = `${r.stdout || ''}${r.stderr || ''}`;
    this.log.push({ kind, name, status: r.status, out });
    if (r.status !== 0) this.failed = true;
    return out;
  }

  /**
   * Run the JavaScript action in `dir` (its `main`), as `uses:` with `with` values; returns
   * `{status, outputs, out}`. Its `post` is queued for `finish()`.
   */
  uses(dir, withValues = {}, { id, stepEnv = {}, actionRepository = '' } = {}) {
    const action = loadYaml(path.join(dir, 'action.yml'));
    if (action.runs.using !== 'node20') throw new Error(`${dir}: runs.using is ${action.runs.using}`);
    const declared = action.inputs || {};
    for (const k of Object.keys(withValues)) {
      if (!(k in declared)) throw new Error(`${dir}: unexpected input ${k}`);
    }
    const ctx = this.ctx(stepEnv);
    const inputs = {};
    for (const [name, spec] of Object.entries(declared)) {
      const v = name in withValues ? withValues[name] : spec.default;
      inputs[inputVar(name)] = template(v === undefined || v === null ? '' : String(v), ctx);
    }
    const env = { ...inputs, GITHUB_ACTION_REPOSITORY: actionRepository };
    for (const [k, v] of Object.entries(stepEnv)) env[k] = template(v, ctx);
    const main = this.node(dir, action.runs.main, env, `${dir} main`);
    if (id) this.steps[id] = { outputs: main.outputs, conclusion: main.status === 0 ? 'success' : 'failure' };
    if (action.runs.post) {
      this.posts.push({ dir, action, env, state: main.state });
    }
    return main;
  }

  node(dir, file, env, name, state = {}) {
    const files = this.newFiles();
    const stateEnv = Object.fromEntries(Object.entries(state).map(([k, v]) => [`STATE_${k}`, v]));
    const r = spawnSync(process.execPath, [path.join(dir, file)], {
      cwd: this.workspace,
      env: { ...this.stepEnv(files), ...env, ...stateEnv },
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    const out = this.record('node', name, r);
    const outputs = this.collect(files);
    const savedState = parseFileCommands(fs.readFileSync(files.GITHUB_STATE, 'utf8'));
    return { status: r.status, outputs, state: savedState, out };
  }

  /** A `run:` step. */
  run(script, { id, env = {}, name = 'run' } = {}) {
    const files = this.newFiles();
    const ctx = this.ctx(env);
    const stepEnv = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, template(v, ctx)]));
    const scriptFile = path.join(this.tmp, `script-${this.n}.sh`);
    fs.writeFileSync(scriptFile, template(script, ctx));
    const r = spawnSync('bash', ['--noprofile', '--norc', '-eo', 'pipefail', scriptFile], {
      cwd: this.workspace,
      env: { ...this.stepEnv(files), ...stepEnv },
      encoding: 'utf8',
    });
    const out = this.record('run', name, r);
    const outputs = this.collect(files, id);
    if (id) this.steps[id].conclusion = r.status === 0 ? 'success' : 'failure';
    return { status: r.status, outputs, out };
  }

  /** The queued post steps, last first, each if its `post-if` holds. */
  finish() {
    const results = [];
    for (const p of this.posts.reverse()) {
      const cond = p.action.runs['post-if'];
      if (!condition(cond, this.ctx())) {
        results.push({ skipped: true });
        continue;
      }
      results.push(this.node(p.dir, p.action.runs.post, p.env, `${p.dir} post`, p.state));
    }
    this.posts = [];
    return results;
  }

  summary() {
    return fs.readFileSync(this.summaryFile, 'utf8');
  }
}

module.exports = { REPO, Job, evaluate, template, condition, loadYaml };
