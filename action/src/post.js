'use strict';
// The action's post step (action.yml, post-if: success()): save the store under the key,
// unless the exact key was restored and nothing new is in the store.

const { readConfig } = require('./lib/inputs');
const steps = require('./lib/steps');

steps.entry(async (actions) => {
  const bin = actions.state('binary');
  if (!bin) {
    actions.info('the restore step did not run storesync: nothing to save');
    return;
  }
  const cfg = readConfig(actions, { required: ['key'] });
  if (!cfg.save) {
    actions.info('save: false: not saving the store');
    return;
  }
  await steps.saveStep(actions, cfg, bin, { cacheHit: actions.state('cache-hit') === 'true' });
});
