// The official client (npm @actions/cache, as actions/cache@v4 runs it) against the test
// service: save a directory, restore it by exact key, by restore-key prefix, and miss.
// Proves that server.mjs answers what GitHub's own client expects. Exits non-zero on any
// difference.
//
// Usage: node official_client.mjs NODE_DIR WORK_DIR
//   NODE_DIR holds node_modules/@actions/cache; ACTIONS_RESULTS_URL, ACTIONS_RUNTIME_TOKEN,
//   ACTIONS_CACHE_SERVICE_V2 and GITHUB_SERVER_URL come from the environment.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [nodeDir, work] = process.argv.slice(2);
const cache = await import(
  pathToFileURL(path.join(nodeDir, 'node_modules/@actions/cache/lib/cache.js')).href
);

function fail(why) {
  console.error(`official client: ${why}`);
  process.exit(1);
}

// The client archives paths relative to the working directory.
process.chdir(work);
const dir = 'payload';
fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
const big = Buffer.alloc(3 * 1024 * 1024 + 17, 'x');
fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello from the official client\n');
fs.writeFileSync(path.join(dir, 'sub', 'big.bin'), big);

if (!cache.isFeatureAvailable()) fail('isFeatureAvailable() is false: environment incomplete');

const key = `official-linux-${process.pid}`;
const id = await cache.saveCache([dir], key);
if (!(id > 0)) fail(`saveCache returned ${id}`);
console.log(`saved ${key} as entry ${id}`);

// Saving the same key again is refused by the service (409) and reported as -1, not thrown.
const again = await cache.saveCache([dir], key);
if (again !== -1) fail(`second saveCache of the same key returned ${again}, expected -1`);

async function restoreAndCheck(primary, restoreKeys, want) {
  fs.rmSync(dir, { recursive: true, force: true });
  const hit = await cache.restoreCache([dir], primary, restoreKeys);
  if (hit !== want) fail(`restoreCache(${primary}, [${restoreKeys}]) = ${hit}, expected ${want}`);
  if (want === undefined) return;
  const text = fs.readFileSync(path.join(dir, 'hello.txt'), 'utf8');
  if (text !== 'hello from the official client\n') fail(`hello.txt restored as ${text}`);
  if (!fs.readFileSync(path.join(dir, 'sub', 'big.bin')).equals(big)) fail('big.bin differs');
  console.log(`restored ${primary} [${restoreKeys}] -> ${hit}`);
}

await restoreAndCheck(key, [], key);
await restoreAndCheck(`official-linux-other-${process.pid}`, ['official-linux-'], key);
await restoreAndCheck('no-such-key', ['no-such-prefix-'], undefined);
console.log('official client: all good');
