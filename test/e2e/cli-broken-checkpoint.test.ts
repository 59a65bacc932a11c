// `moe-serve serve` on a checkpoint that lacks one expert tensor: it listens (so /health can say
// 'loading'), the load fails on the tensor check, and the process closes the server and exits non-zero
// naming the tensor, instead of serving and failing every request routed to that expert.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { expertTensorNames } from '../../src/model/tensor-names.js';
import { F32_FLAGS } from '../helpers/devices.js';
import { CLI_PATH, FIXTURES_DIR } from '../helpers/paths.js';
import { rewriteCheckpoint, without } from '../helpers/rewrite-checkpoint.js';

test('serve exits non-zero, naming the missing expert tensor, when the checkpoint lacks one', async () => {
  const missing = expertTensorNames('mixtral', 1, 3).down;
  await using broken = await rewriteCheckpoint(join(FIXTURES_DIR, 'mixtral'), without(missing));
  // Float experts: converting them at load (the CPU's default int forms) would read every one of them
  // and trip over the missing one; the check must find it when nothing else reads it before a request.
  const child = spawn(process.execPath, [CLI_PATH, 'serve', '--model', broken.dir, '--port', '0', ...F32_FLAGS], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    // Loaded despite the missing tensor: it would serve, and fail the requests routed to that expert.
    if (stderr.includes('model loaded')) child.kill('SIGKILL');
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
  clearTimeout(timer);
  assert.equal(signal, null, `it exits by itself, without loading or staying open; stderr:\n${stderr}`);
  assert.equal(code, 1, stderr);
  assert.match(stderr, /moe-serve listening on http:\/\/127\.0\.0\.1:\d+/, 'it listened before loading');
  assert.ok(stderr.includes(`moe-serve serve: The weights in ${broken.dir} do not match its config.json: 1 tensor missing`), stderr);
  assert.ok(stderr.includes(`"${missing}": missing; expected F32, F16 or BF16 [64, 96]`), stderr);
  assert.doesNotMatch(stderr, /model loaded/);
});
