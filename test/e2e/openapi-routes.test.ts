// openapi.yaml describes exactly the routes the app registers: no undocumented route, no stale path.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { buildApp } from '../../src/api/build-app.js';
import { REPO_ROOT } from '../helpers/paths.js';

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

test('the routes the app registers and the paths × methods in openapi.yaml are the same set', async () => {
  const registered = new Set<string>();
  const app = buildApp({ serving: () => undefined, modelName: 'm', corsOrigins: true, apiKey: 'k', onRoute: (method, url) => registered.add(`${method} ${url}`) });
  await app.ready();
  await app.close();

  const spec = parse(readFileSync(join(REPO_ROOT, 'openapi.yaml'), 'utf8')) as { openapi: string; paths: Record<string, Record<string, unknown>> };
  assert.match(spec.openapi, /^3\.1\./);
  const documented = new Set(Object.entries(spec.paths).flatMap(([path, item]) => Object.keys(item).filter((k) => METHODS.includes(k)).map((m) => `${m.toUpperCase()} ${path}`)));
  // CORS preflight is answered for every path by @fastify/cors's catch-all OPTIONS route; it is not an API route.
  registered.delete('OPTIONS *');
  assert.deepEqual([...registered].sort(), [...documented].sort());
});
