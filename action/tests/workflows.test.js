'use strict';
// The workflow files as files: every YAML file of ours parses the same with the tests'
// reader as with PyYAML (when python3 has it), and every `run:` script of the GitHub
// workflows passes shellcheck as bash (when shellcheck is installed; action/ci.sh installs
// it), as do scripts/dist.sh and action/ci.sh.
// Schemas and actionlint run from action/ci.sh.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');
const { spawnSync } = require('node:child_process');

const yaml = require('./support/yaml');
const { REPO, loadYaml } = require('./support/runner');

const WORKFLOWS = ['examples/guix-ci.yml', 'examples/nix-ci.yml', '.github/workflows/release.yml'];
const YAML_FILES = [
  'action.yml',
  'restore/action.yml',
  'save/action.yml',
  'gc/action.yml',
  'examples/gitlab-ci.yml',
  ...WORKFLOWS,
];

// PyYAML with YAML 1.2's booleans (true/false only), as GitHub reads `on:`.
const PY = `
import json, re, sys, yaml
class L(yaml.SafeLoader): pass
L.yaml_implicit_resolvers = {k: [r for r in v if r[0] != 'tag:yaml.org,2002:bool'] for k, v in L.yaml_implicit_resolvers.items()}
L.add_implicit_resolver('tag:yaml.org,2002:bool', re.compile(r'^(?:true|True|TRUE|false|False|FALSE)$'), list('tTfF'))
print(json.dumps(yaml.load(open(sys.argv[1]), Loader=L)))
`;

function has(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0;
}

test('the YAML reader of the tests agrees with PyYAML on every YAML file of ours', (t) => {
  if (!has('python3', ['-c', 'import yaml'])) {
    t.skip('python3 with PyYAML is not installed');
    return;
  }
  for (const f of YAML_FILES) {
    const py = spawnSync('python3', ['-c', PY, path.join(REPO, f)], { encoding: 'utf8' });
    assert.equal(py.status, 0, py.stderr);
    const want = JSON.parse(py.stdout);
    // GitLab's `&anchor` / `*alias` are beyond the reader; the rest of that file is compared.
    const got = f.endsWith('gitlab-ci.yml') ? null : yaml.parse(fs.readFileSync(path.join(REPO, f), 'utf8'));
    if (got !== null) assert.deepEqual(got, want, f);
  }
});

test('the reader: block scalars, chomping, folding, flow collections, comments, quoting', () => {
  const doc = yaml.parse(
    [
      'a: >-',
      '  one',
      '  two',
      '',
      '  three',
      'b: |',
      '  x',
      '    y',
      '',
      'c: "q\\"x" # comment',
      "d: 'it''s'",
      "e: [a, 'b, c', 1]",
      'f: {x: 1, y: two}',
      "'on':",
      '  push:',
      '    branches: [main]',
      'g:',
      '- 1',
      '- k: v',
      '  l: w',
      'h: ${{ github.token }}',
      'i: a # not: b',
      'j: on',
    ].join('\n'),
  );
  assert.deepEqual(doc, {
    a: 'one two\nthree',
    b: 'x\n  y\n',
    c: 'q"x',
    d: "it's",
    e: ['a', 'b, c', 1],
    f: { x: 1, y: 'two' },
    on: { push: { branches: ['main'] } },
    g: [1, { k: 'v', l: 'w' }],
    h: '${{ github.token }}',
    i: 'a',
    j: 'on',
  });
});

test('every run: script of the GitHub workflows, and scripts/dist.sh and action/ci.sh, pass shellcheck', (t) => {
  if (!has('shellcheck', ['--version'])) {
    t.skip('shellcheck is not installed (apt-get install shellcheck)');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shellcheck-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files = [];
  for (const f of WORKFLOWS) {
    const wf = loadYaml(path.join(REPO, f));
    for (const [job, spec] of Object.entries(wf.jobs)) {
      spec.steps.forEach((step, i) => {
        if (!step.run) return;
        assert.doesNotMatch(step.run, /\$\{\{/, `${f} ${job} step ${i}: pass expressions through env:, not into the script`);
        const file = path.join(dir, `${path.basename(f, '.yml')}-${job}-${i}.sh`);
        fs.writeFileSync(file, `#!/bin/bash\n# ${f}: ${job}: ${step.name || i}\n${step.run}`);
        files.push(file);
      });
    }
  }
  assert.ok(files.length >= 10, `${files.length} scripts`);
  // And the scripts of ours that CI and releases run.
  files.push(path.join(REPO, 'scripts/dist.sh'), path.join(REPO, 'action/ci.sh'));
  const r = spawnSync('shellcheck', ['-s', 'bash', ...files], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
