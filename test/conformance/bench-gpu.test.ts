// `moe-serve bench gpu` end to end, on each test device (webgpu through lavapipe in CI: its timings mean
// nothing there, but every row must be computed, and every mode must generate the all-resident tokens).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { testDevices } from '../helpers/devices.js';
import { CLI_PATH } from '../helpers/paths.js';

type Row = Record<string, unknown> & { bench: string };

const run = promisify(execFile);

for (const device of testDevices()) {
  describe(`moe-serve bench gpu on ${device}`, () => {
    it('prints upload rates, resident decode at batch 1 and N, and every offload mode with the all-resident tokens', async () => {
      const sections = device === 'cpu' ? 'decode,offload' : 'upload,decode,offload';
      const { stdout } = await run(process.execPath, [CLI_PATH, 'bench', 'gpu', '--device', device, '--sections', sections, '--tokens', '3', '--runs', '1', '--batch-size', '2'], { timeout: 300_000 });
      const rows = stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Row);
      const of = (bench: string) => rows.filter((r) => r.bench === bench);

      if (device !== 'cpu') {
        const uploads = of('gpu-upload');
        assert.equal(uploads.length, 4 * 5 * 2, 'every size x (pieces, runs) x dtype');
        for (const u of uploads) assert.ok((u.best_gbps as number) > 0 && (u.median_gbps as number) <= (u.best_gbps as number), JSON.stringify(u));
      }

      const decode = of('gpu-decode');
      assert.deepEqual(decode.map((r) => r.batch), [1, 2]);
      for (const r of decode) assert.ok((r.decode_tokens_per_s as number) > 0 && (r.runs_per_token as number) > 0, JSON.stringify(r));
      assert.equal(decode[0]?.agree_with_cpu, '12/12', 'greedy tokens match the CPU provider at f32');

      const modes = of('gpu-offload');
      assert.equal(modes.length, 6);
      for (const m of modes) assert.equal(m.agree_with_all, '12/12', `${m.mode as string}: the all-resident tokens`);
      const byName = (part: string) => modes.find((m) => (m.mode as string).includes(part)) as Row;
      assert.equal(byName('all').mb_to_device_per_token, 0);
      assert.ok((byName('misses uploaded').loaded_share as number) > 0);
      assert.ok((byName('every use uploaded').hit_ratio as number) === 0);
      const onCpu = byName('misses on the CPU');
      if (device === 'cpu') {
        assert.equal(onCpu.cpu_share, 0, 'the CPU provider has no misses to place');
      } else {
        assert.ok((onCpu.cpu_share as number) > 0 && onCpu.loaded_share === 0, JSON.stringify(onCpu));
        assert.ok((onCpu.mb_to_device_per_token as number) < (byName('misses uploaded').mb_to_device_per_token as number), 'computing misses on the CPU moves fewer bytes');
        // Every expert-cache load is an upload run on a GPU provider.
        assert.ok((byName('misses uploaded').device_runs_per_token as number) > (byName('all').device_runs_per_token as number), 'loads are runs');
      }
      assert.match(stdout, /\| mode \(budget 25%\) \|/);
    });
  });
}
