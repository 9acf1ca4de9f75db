'use strict';
// restore/action.yml: the restore half alone (save with save/ later, or never).

const { readConfig } = require('./lib/inputs');
const steps = require('./lib/steps');

steps.entry(async (actions) => {
  const cfg = readConfig(actions, { required: ['key'] });
  const bin = await steps.binary(actions, cfg, {});
  await steps.restoreStep(actions, cfg, bin);
});
