// `moe-serve bench scale` end to end: a real serve child over HTTP, in a memory cgroup where one can be made.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { CgroupUnavailableError, createMemoryGroup } from '../../src/cli/cgroup-memory.js';
import { parseDdSummary } from '../../src/cli/disk-bandwidth.js';
import { cli } from '../helpers/cli.js';
import { TINY_MOE_DIR } from '../helpers/paths.js';

type Row = Record<string, unknown> & { bench: string; phase: string };

function jsonRows(stdout: string): Row[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Row);
}

function one(rows: readonly Row[], phase: string, server?: string): Row {
  const found = rows.filter((r) => r.phase === phase && (server === undefined || r.server === server));
  assert.equal(found.length, 1, `one ${phase} line${server ? ` for ${server}` : ''}`);
  return found[0] as Row;
}

/** Why a memory cgroup cannot be made here (the test is skipped then), or null when it can. */
async function cgroupUnavailable(): Promise<string | null> {
  try {
    const group = await createMemoryGroup(`moe-serve-bench-probe-${process.pid}`, 2 ** 30);
    await group.remove();
    return null;
  } catch (err) {
    if (err instanceof CgroupUnavailableError) return err.message;
    throw err;
  }
}

const cgroupSkip = await cgroupUnavailable();

describe('moe-serve bench scale', () => {
  it('serves the model, decodes at each batch size and reports bandwidth, speed and memory', async () => {
    const r = await cli('bench', 'scale', '--model', TINY_MOE_DIR, '--tokens', '4', '--batch', '1,2');
    assert.equal(r.code, 0, r.stderr);
    const rows = jsonRows(r.stdout);
    assert.ok(rows.every((row) => row.bench === 'scale'));
    const bandwidth = one(rows, 'bandwidth');
    if (bandwidth.bandwidth_mb_per_s === null) assert.match(String(bandwidth.bandwidth_unmeasured_reason), /\S/);
    else assert.ok((bandwidth.bandwidth_mb_per_s as number) > 0 && ['o_direct', 'drop_caches'].includes(String(bandwidth.bandwidth_method)));
    assert.ok((one(rows, 'load', 'main').load_s as number) > 0);
    const decode = rows.filter((row) => row.phase === 'decode');
    assert.deepEqual(decode.map((row) => row.batch), [1, 2]);
    for (const row of decode) {
      assert.equal(row.failed, 0);
      assert.ok((row.output_tokens_per_s as number) > 0 && (row.decode_tokens_per_s as number) > 0, JSON.stringify(row));
      assert.ok((row.output_tokens as number) > 0 && (row.output_tokens as number) <= 4 * (row.batch as number));
      assert.ok((row.device_hit_ratio as number) >= 0 && (row.device_hit_ratio as number) <= 1);
    }
    const summary = one(rows, 'summary');
    assert.ok((summary.ttft_s as number) >= (summary.load_s as number));
    assert.ok((summary.peak_rss_bytes as number) > 0);
    assert.equal(summary.failed_requests, 0);
    assert.equal(summary.memory_limit_bytes, null);
    assert.match(r.stdout, /\| batch 2 decode tokens\/s \| [\d.]+ /);
    assert.match(r.stdout, /\| greedy identical to unlimited \| not compared \|/);
  });

  it('keeps the server under --memory-limit-mb in a cgroup, removes the group, and matches the unlimited greedy text', { skip: cgroupSkip ?? false }, async () => {
    const r = await cli('bench', 'scale', '--model', TINY_MOE_DIR, '--tokens', '4', '--batch', '1,2', '--memory-limit-mb', '1024', '--compare-unlimited');
    assert.equal(r.code, 0, r.stderr);
    const rows = jsonRows(r.stdout);
    const groupPath = String(one(rows, 'load', 'main').cgroup);
    assert.match(groupPath, /moe-serve-bench-\d+$/);
    assert.equal(existsSync(groupPath), false, 'the cgroup is removed after the run');
    assert.equal(one(rows, 'load', 'unlimited').cgroup, null);
    const memory = one(rows, 'memory', 'main');
    assert.equal(memory.memory_limit_bytes, 1024 * 2 ** 20);
    assert.ok((memory.peak_cgroup_bytes as number) > 0 && (memory.peak_cgroup_bytes as number) <= 1024 * 2 ** 20);
    assert.equal(memory.oom_kills, 0);
    assert.equal(memory.died, null);
    assert.equal(one(rows, 'compare').identical, true);
    const summary = one(rows, 'summary');
    assert.equal(summary.under_limit, true);
    assert.equal(summary.greedy_identical, true);
    assert.match(r.stdout, /\| greedy identical to unlimited \| yes \|/);
  });

  it("reads bytes and seconds from GNU and busybox dd's summary, and nothing from other text", () => {
    assert.deepEqual(parseDdSummary('2+1 records in\n2+1 records out\n48593232 bytes (49 MB, 46 MiB) copied, 0.0894093 s, 543 MB/s\n'), { bytes: 48593232, seconds: 0.0894093 });
    assert.deepEqual(parseDdSummary('16777216 bytes (16.0MB) copied, 0.012345 seconds, 1.3GB/s'), { bytes: 16777216, seconds: 0.012345 });
    assert.equal(parseDdSummary("dd: failed to open 'x': Invalid argument"), null);
  });

  it('rejects bad input with a usage message, not a stack trace', async () => {
    for (const [args, message] of [
      [['bench', 'scale'], /bench scale needs --model DIR/],
      [['bench', 'scale', '--model', TINY_MOE_DIR, '--memory-limit-mb', 'abc'], /--memory-limit-mb: expected a number of MiB \(got "abc"\)/],
      [['bench', 'scale', '--model', '/nonexistent-model-dir'], /--model: cannot read \/nonexistent-model-dir \(ENOENT\)/],
    ] as const) {
      const r = await cli(...args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });
});
