// S-MBU and S-MFU in GET /metrics: the step counters move with a request, the gauges agree with them, and
// `serve` takes the peaks from --peak-memory-gbps and MOE_SERVE_PEAK_TFLOPS.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { parseExposition } from '../../load-tests/metric-samples.js';
import { runUtilization } from '../../load-tests/server-snapshot.js';
import { MoeModel } from '../../src/engine/moe-model.js';
import { DEFAULT_PEAKS } from '../../src/engine/step-utilization.js';
import { waitFor } from '../helpers/cli.js';
import { MODEL_NAME, startServer, type TestServer } from '../helpers/api-server.js';
import { CLI_PATH, TINY_MOE_DIR } from '../helpers/paths.js';

const scrape = async (origin: string) => parseExposition(await (await fetch(`${origin}/metrics`)).text());
const valueOf = (samples: ReturnType<typeof parseExposition>, name: string) => samples.find((s) => s.name === name)?.value;

describe('utilization metrics', () => {
  let model: MoeModel;
  let server: TestServer;
  before(async () => {
    model = await MoeModel.load(TINY_MOE_DIR, { device: 'cpu' });
    server = await startServer(model);
  });
  after(async () => {
    await server.close();
    await model[Symbol.asyncDispose]();
  });

  test('step bytes, FLOPs and seconds grow with a request; the gauges are the counters over the peaks', async () => {
    const first = await scrape(server.origin);
    assert.equal(valueOf(first, 'moe_serve_step_bytes_total'), 0);
    assert.equal(valueOf(first, 'moe_serve_smbu'), 0, 'no step yet');
    await server.client.completions.create({ model: MODEL_NAME, prompt: 'The Python interpreter', max_tokens: 8, temperature: 0 });
    const second = await scrape(server.origin);
    const u = runUtilization(first, second);
    assert.ok(u !== null);
    assert.ok(u.stepBytes > 0 && u.stepFlops > 0 && u.stepSeconds > 0, JSON.stringify(u));
    assert.equal(valueOf(second, 'moe_serve_peak_memory_bytes_per_second'), DEFAULT_PEAKS.memoryBytesPerS);
    assert.equal(valueOf(second, 'moe_serve_peak_flops_per_second'), DEFAULT_PEAKS.flopsPerS);
    // Every step so far is in the gauges' recent window: they equal the counters' ratios.
    const smbu = valueOf(second, 'moe_serve_smbu') ?? -1;
    const smfu = valueOf(second, 'moe_serve_smfu') ?? -1;
    assert.ok(smbu > 0 && smfu > 0);
    assert.ok(Math.abs(smbu - (u.smbu ?? 0)) < 1e-9 * smbu, `${smbu} vs ${u.smbu}`);
    assert.ok(Math.abs(smfu - (u.smfu ?? 0)) < 1e-9 * smfu, `${smfu} vs ${u.smfu}`);
    // /metrics and the engine's own sums agree.
    assert.equal(valueOf(second, 'moe_serve_step_bytes_total'), server.engine.stats.utilization.totals.bytes);
  });
});

test('serve judges utilization against --peak-memory-gbps and MOE_SERVE_PEAK_TFLOPS', async () => {
  const child = spawn(process.execPath, [CLI_PATH, 'serve', '--port', '0', '--peak-memory-gbps', '12.5'], { env: { ...process.env, MOE_SERVE_PEAK_TFLOPS: '0.25' }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const origin = await waitFor(() => /model loaded: serving '\S+' on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr)?.[1], () => stderr);
    const samples = await scrape(origin);
    assert.equal(valueOf(samples, 'moe_serve_peak_memory_bytes_per_second'), 12.5e9);
    assert.equal(valueOf(samples, 'moe_serve_peak_flops_per_second'), 0.25e12);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
  } finally {
    child.kill('SIGKILL');
  }
});
