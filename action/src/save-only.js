'use strict';
// save/action.yml: the save half alone, wherever the workflow puts it. With the restore
// step's cache-hit passed in, an exact hit with nothing new in the store saves nothing.

const { readConfig } = require('./lib/inputs');
const steps = require('./lib/steps');

steps.entry(async (actions) => {
  const cfg = readConfig(actions, { required: ['key'] });
  const bin = await steps.binary(actions, cfg, {});
  await steps.saveStep(actions, cfg, bin, { cacheHit: cfg.cacheHit });
});
