'use strict';
// The action's main step (action.yml): restore the store's missing paths from the cache,
// before the daemon starts, and leave for post.js what it needs to decide about saving.

const { readConfig } = require('./lib/inputs');
const steps = require('./lib/steps');

steps.entry(async (actions) => {
  const cfg = readConfig(actions, { required: ['key'] });
  const bin = await steps.binary(actions, cfg, {});
  const { outputs } = await steps.restoreStep(actions, cfg, bin);
  // Only now does post.js save: a main step that failed before this point left nothing to
  // build on (and post-if: success() skips post for a failed job anyway).
  actions.saveState('binary', bin);
  actions.saveState('cache-hit', outputs['cache-hit']);
  actions.saveState('matched-key', outputs['matched-key']);
});
