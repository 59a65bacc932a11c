// The expert-cache flags of `moe-serve generate`, and `replay` on the trace it writes, as a user runs them:
// real processes on the embedded tiny-moe model. Runs are shared between tests and started concurrently.
import assert from 'node:assert/strict';
import { F32_FLAGS } from '../helpers/devices.js';
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ExpertCacheStats } from '../../src/experts/expert-stats.js';
import type { FixturePrompt } from '../helpers/fixtures.js';
import { FIXTURES_DIR, readJson, TINY_MOE_DIR } from '../helpers/paths.js';
import { cli, type CliResult } from '../helpers/cli.js';


/** Starts `start` on first use and hands every later caller the same promise. */
function shared<T>(start: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined;
  return () => (p ??= start());
}

interface GenerateJson {
  prompt_ids: number[];
  completion_ids: number[];
  text: string;
  finish_reason: string;
}

const reference = readJson<{ prompts: FixturePrompt[] }>(join(FIXTURES_DIR, 'tiny-moe-reference.json'));
const first = reference.prompts[0]!;
const NUM_LAYERS = 6;
const NUM_EXPERTS = 16;
const POLICIES = ['lru', 'lfu', 'static', 'none', 'all'];

const GREEDY = ['generate', '--prompt', first.prompt, '--json', '--temperature', '0', '--max-tokens', '32', ...F32_FLAGS];
const LFU_QUARTER = [...GREEDY, '--expert-cache-fraction', '0.25', '--expert-policy', 'lfu', '--prefetch-depth', '2', '--stats'];

/** Bytes of one routed expert as stored in the checkpoint, and of all of them, from the safetensors header. */
async function storedExpertBytes(): Promise<{ perExpert: number; all: number; experts: number }> {
  const file = await open(join(TINY_MOE_DIR, 'model.safetensors'), 'r');
  try {
    const lengthBytes = Buffer.alloc(8);
    await file.read(lengthBytes, 0, 8, 0);
    const headerLength = Number(lengthBytes.readBigUInt64LE(0));
    const headerBytes = Buffer.alloc(headerLength);
    await file.read(headerBytes, 0, headerLength, 8);
    const header = JSON.parse(headerBytes.toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
    const perExpert = new Map<string, number>();
    for (const [name, entry] of Object.entries(header)) {
      const m = /^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\./.exec(name);
      if (!m || !entry.data_offsets) continue;
      const key = `${m[1]}:${m[2]}`;
      perExpert.set(key, (perExpert.get(key) ?? 0) + entry.data_offsets[1] - entry.data_offsets[0]);
    }
    const sizes = new Set(perExpert.values());
    assert.equal(sizes.size, 1, 'every tiny-moe expert has the same stored size');
    const size = [...sizes][0]!;
    return { perExpert: size, all: size * perExpert.size, experts: perExpert.size };
  } finally {
    await file.close();
  }
}

function parseStats(r: CliResult): ExpertCacheStats {
  assert.equal(r.code, 0, r.stderr);
  try {
    return JSON.parse(r.stderr) as ExpertCacheStats;
  } catch {
    assert.fail(`--stats did not print JSON on stderr:\n${r.stderr}`);
  }
}

function completion(r: CliResult): GenerateJson {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as GenerateJson;
}

interface TraceFileLine {
  request: number;
  step: number;
  layer: number;
  experts: number[][];
  lookahead: number[][];
}

async function readTraceFile(path: string): Promise<{ header: Record<string, unknown>; lines: TraceFileLine[] }> {
  const rows = (await readFile(path, 'utf8')).split('\n').filter((l) => l !== '');
  const [head, ...rest] = rows;
  assert.ok(head !== undefined, 'the trace is empty');
  return { header: JSON.parse(head) as Record<string, unknown>, lines: rest.map((l) => JSON.parse(l) as TraceFileLine) };
}

/** Expert uses the trace records: each line's distinct experts (what the device cache is asked for). */
function traceAccesses(lines: readonly TraceFileLine[]): number {
  return lines.reduce((n, l) => n + new Set(l.experts.flat()).size, 0);
}

describe('moe-serve generate: expert cache', { concurrency: true }, () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'moe-serve-cache-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** lfu at a quarter of the expert bytes, prefetching 2 layers ahead, with --stats and --trace. */
  const lfuQuarter = shared(() => cli(...LFU_QUARTER, '--trace', join(dir, 'lfu.jsonl')));
  /** The same with a host tier of 1 MiB. */
  const lfuQuarterSmallHost = shared(() => cli(...LFU_QUARTER, '--host-cache-mb', '1'));

  test('--expert-cache-fraction 0.25 --expert-policy lfu --prefetch-depth 2 gives the reference greedy ids', async () => {
    const out = completion(await lfuQuarter());
    assert.deepEqual(out.prompt_ids, first.input_ids);
    assert.deepEqual(out.completion_ids, first.greedy_ids);
    assert.equal(out.text, first.greedy_text);
  });

  test('--stats prints consistent expert-cache statistics as JSON on stderr', async () => {
    const s = parseStats(await lfuQuarter());
    assert.equal(s.policy, 'lfu');
    assert.equal(s.prefetchDepth, 2);
    assert.ok(s.expertBytes > 0);
    assert.equal(s.totalExpertBytes, NUM_LAYERS * NUM_EXPERTS * s.expertBytes);
    assert.ok(s.budgetBytes <= 0.25 * s.totalExpertBytes, `budget ${s.budgetBytes} > 25% of ${s.totalExpertBytes}`);
    assert.ok(s.budgetBytes >= s.expertBytes);
    assert.ok(s.residentBytes <= s.budgetBytes, `resident ${s.residentBytes} > budget ${s.budgetBytes}`);
    assert.equal(s.overBudget, 0);
    assert.ok(s.total.accesses > 0);
    assert.equal(s.total.hits + s.total.misses, s.total.accesses);
    assert.ok(s.total.misses > 0, 'a quarter of the experts cannot hold every expert used');
    assert.ok(s.total.prefetchIssued > 0, 'prefetch depth 2 issued no prefetch');
    assert.ok(s.total.prefetchUsed + s.total.prefetchWasted <= s.total.prefetchIssued);
    assert.deepEqual(
      s.layers.map((l) => l.layer),
      [0, 1, 2, 3, 4, 5],
    );
    for (const l of s.layers) {
      assert.equal(l.hits + l.misses, l.accesses, `layer ${l.layer}`);
      assert.equal(l.residentBytes, l.residentExperts * s.expertBytes, `layer ${l.layer}`);
    }
    const sum = (k: 'accesses' | 'hits' | 'misses' | 'evictions' | 'bytesFromDisk' | 'residentBytes') => s.layers.reduce((n, l) => n + l[k], 0);
    assert.equal(sum('accesses'), s.total.accesses);
    assert.equal(sum('hits'), s.total.hits);
    assert.equal(sum('misses'), s.total.misses);
    assert.equal(sum('evictions'), s.total.evictions);
    assert.equal(sum('bytesFromDisk'), s.total.bytesFromDisk);
    assert.equal(sum('residentBytes'), s.residentBytes);
  });

  test(
    '--stats counts only the expert uses of the request (as many as its --trace records), and breaks each token down',
    async () => {
      const s = parseStats(await lfuQuarter());
      const perToken = (s as unknown as { per_token: { runs_per_token: number; ms: Record<string, number> } }).per_token;
      assert.ok(perToken.runs_per_token >= 1 + NUM_LAYERS, `runs per token ${perToken.runs_per_token}`);
      for (const k of ['attention', 'lm_head', 'expert_loads', 'sampling', 'js_between_runs']) assert.ok((perToken.ms[k] ?? -1) >= 0, `per-token ${k}`);
      const trace = await readTraceFile(join(dir, 'lfu.jsonl'));
      assert.equal(s.total.accesses, traceAccesses(trace.lines));
    },
  );

  test(
    '`replay` of a --trace reproduces the hits and misses that --stats reported for the same policy, budget and prefetch depth',
    async () => {
      const s = parseStats(await lfuQuarter());
      const r = await cli('replay', '--trace', join(dir, 'lfu.jsonl'), '--policies', 'lfu', '--prefetch-depths', '2', '--budgets', `${s.budgetBytes}b`, '--json', '--svg', join(dir, 'lfu.svg'));
      assert.equal(r.code, 0, r.stderr);
      const row = JSON.parse(r.stdout.split('\n')[0] ?? '') as { accesses: number; hits: number; misses: number; prefetch_issued: number };
      assert.deepEqual(
        { accesses: row.accesses, hits: row.hits, misses: row.misses, prefetchIssued: row.prefetch_issued },
        { accesses: s.total.accesses, hits: s.total.hits, misses: s.total.misses, prefetchIssued: s.total.prefetchIssued },
      );
    },
  );

  test('--host-cache-mb 1 re-reads experts from disk and still gives the reference ids', async () => {
    const stored = await storedExpertBytes();
    assert.equal(stored.experts, NUM_LAYERS * NUM_EXPERTS);
    assert.ok(stored.all > 2 ** 20, 'the premise: 1 MiB holds fewer than all experts in stored form');
    const [small, unlimited] = await Promise.all([lfuQuarterSmallHost(), lfuQuarter()]);
    assert.deepEqual(completion(small).completion_ids, first.greedy_ids);
    const s = parseStats(small);
    const u = parseStats(unlimited);
    assert.ok(s.hostResidentBytes <= 2 ** 20, `host tier holds ${s.hostResidentBytes} bytes`);
    // Reads are whole experts, one per load that missed the host tier.
    assert.equal(s.total.bytesFromDisk % stored.perExpert, 0);
    assert.equal(u.total.bytesFromDisk % stored.perExpert, 0);
    assert.ok(s.total.bytesFromDisk <= (s.total.misses + s.total.prefetchIssued) * stored.perExpert);
    // Without a host budget each expert comes from disk at most once...
    assert.ok(u.total.bytesFromDisk <= stored.all, `unlimited host tier read ${u.total.bytesFromDisk} bytes > ${stored.all}`);
    assert.equal(u.hostResidentBytes, u.total.bytesFromDisk);
    // ...with 1 MiB more is read than every expert once: some expert was read again.
    assert.ok(s.total.bytesFromDisk > stored.all, `read ${s.total.bytesFromDisk} bytes, not more than all experts once (${stored.all})`);
    assert.ok(s.total.bytesFromDisk > u.total.bytesFromDisk);
    // Every load asks the host tier once; a load that read from disk (or joined such a read) is a miss.
    for (const t of [s.total, u.total]) {
      assert.equal(t.hostHits + t.hostMisses, t.misses + t.prefetchIssued);
      assert.ok(t.hostMisses * stored.perExpert >= t.bytesFromDisk);
    }
    assert.ok(s.total.hostMisses > u.total.hostMisses, 'the 1 MiB host tier misses more');
  });

  test('--trace writes a header and routing lines that replay accepts', async () => {
    const tracePath = join(dir, 'trace.jsonl');
    const svgPath = join(dir, 'chart.svg');
    // Prefetch depth 0: the trace still records two layers of lookahead for the replay tool.
    const g = await cli(...GREEDY, '--prefetch-depth', '0', '--trace', tracePath);
    assert.deepEqual(completion(g).completion_ids, first.greedy_ids);
    const trace = await readTraceFile(tracePath);
    assert.equal(trace.header.trace, 'moe-serve routing trace');
    assert.equal(trace.header.num_layers, NUM_LAYERS);
    assert.equal(trace.header.num_experts, NUM_EXPERTS);
    assert.deepEqual(trace.header.sparse_layers, [0, 1, 2, 3, 4, 5]);
    // One line per (step, layer): the prompt step and one per generated token but the last.
    assert.equal(trace.lines.length, first.greedy_ids.length * NUM_LAYERS);
    const prompt = trace.lines.filter((l) => l.step === 0);
    assert.deepEqual(
      prompt.map((l) => l.experts.length),
      new Array<number>(NUM_LAYERS).fill(first.input_ids.length),
    );
    for (const l of trace.lines) {
      for (const token of l.experts) assert.equal(token.length, 4, `top-4 routing, step ${l.step} layer ${l.layer}`);
      assert.equal(l.lookahead.length, Math.min(2, NUM_LAYERS - 1 - l.layer), `lookahead of step ${l.step} layer ${l.layer}`);
    }

    const r = await cli('replay', '--trace', tracePath, '--budgets', '25%,100%', '--svg', svgPath);
    assert.equal(r.code, 0, r.stderr);
    const rows = new Map<string, number[]>();
    for (const line of r.stdout.split('\n')) {
      const m = /^\| ([a-z]+(?: @ \d+)?) \|(.*)\|$/.exec(line);
      if (m) rows.set(m[1]!, m[2]!.split('|').map((c) => Number.parseFloat(c)));
    }
    for (const label of [...POLICIES.map((p) => `${p} @ 0`), 'belady']) {
      const cells = rows.get(label);
      assert.ok(cells, `no row '${label}' in:\n${r.stdout}`);
      assert.equal(cells.length, 2, label);
      for (const c of cells) assert.ok(c >= 0 && c <= 100, `${label}: ${c}`);
    }
    assert.deepEqual(rows.get('all @ 0'), [100, 100]);
    assert.deepEqual(rows.get('none @ 0'), [0, 0]);
    const belady = rows.get('belady')!;
    for (const p of ['lru', 'lfu']) rows.get(`${p} @ 0`)!.forEach((c, i) => assert.ok(c <= belady[i]!, `${p} @ 0 beats Belady at budget ${i}`));
    assert.ok((await stat(svgPath)).isFile());
    assert.ok((await readFile(svgPath, 'utf8')).startsWith('<svg'));
  });

  test('--expert-policy bogus exits 2 naming the flag', async () => {
    const r = await cli('generate', '--prompt', 'x', '--expert-policy', 'bogus');
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--expert-policy/);
    assert.match(r.stderr, /bogus/);
  });

  test('--expert-cache-mb smaller than one expert exits 1 saying so', async () => {
    const r = await cli('generate', '--prompt', 'x', '--expert-cache-mb', '0.01');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /smaller than one expert/);
  });

  test('--expert-cache-mb with --expert-cache-fraction exits 2', async () => {
    const r = await cli('generate', '--prompt', 'x', '--expert-cache-mb', '10', '--expert-cache-fraction', '0.5');
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--expert-cache-mb/);
    assert.match(r.stderr, /--expert-cache-fraction/);
  });

  test('--expert-policy static with a missing --expert-profile exits 1 naming the file', async () => {
    const missing = join(dir, 'no-such-profile.json');
    const r = await cli('generate', '--prompt', 'x', '--expert-policy', 'static', '--expert-profile', missing);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.stderr.includes(missing), r.stderr);
  });
});
