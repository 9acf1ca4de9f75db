'use strict';
// gc/action.yml: keep the cache within its budget (a scheduled job, say).

const { readConfig } = require('./lib/inputs');
const steps = require('./lib/steps');

steps.entry(async (actions) => {
  const cfg = readConfig(actions, { required: ['cache'] });
  const bin = await steps.binary(actions, cfg, {});
  await steps.gcStep(actions, cfg, bin);
});
