// `moe-serve bench http`: the real server in a child process, C concurrent SSE streams against it, and
// what an operator watches meanwhile: GET /health latency (probed every 20 ms from this process) and the
// server's own event-loop delay (prom-client's monitorEventLoopDelay, read from GET /metrics, whose
// histogram restarts at each scrape, so one scrape before and one after bracket each phase).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseMetricSamples } from '../api/metric-samples.js';
import { BENCH_PROMPTS } from './bench-prompts.js';

export interface HttpBenchOptions {
  readonly modelDir: string;
  readonly device: string;
  readonly budgetFraction: number;
  readonly tokens: number;
  readonly concurrency: readonly number[];
}

interface HttpRow {
  readonly bench: 'http';
  readonly streams: number;
  readonly output_tokens: number;
  readonly tokens_per_s: number;
  readonly ttft_p50_ms: number;
  readonly itl_p50_ms: number;
  readonly itl_p99_ms: number;
  readonly health_probes: number;
  readonly health_p50_ms: number;
  readonly health_p99_ms: number;
  readonly health_max_ms: number;
  readonly event_loop_delay_p50_ms: number;
  readonly event_loop_delay_p99_ms: number;
  readonly event_loop_delay_max_ms: number;
}

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));

export async function benchHttp(o: HttpBenchOptions): Promise<void> {
  const server = await startServer(o, Math.max(...o.concurrency));
  try {
    const rows: HttpRow[] = [];
    await runPhase(server.origin, 1, o.tokens); // warm-up: first-use allocations, expert loads
    for (const c of [0, ...o.concurrency]) {
      rows.push(await runPhase(server.origin, c, o.tokens));
      process.stdout.write(`${JSON.stringify(rows[rows.length - 1])}\n`);
    }
    process.stdout.write(`\n${table(rows)}\n`);
  } finally {
    server.stop();
  }
}

/** One phase: `streams` concurrent streams (0: an idle server for 2 s) while /health is probed. */
async function runPhase(origin: string, streams: number, tokens: number): Promise<HttpRow> {
  await scrape(origin);
  let running = true;
  const probes: number[] = [];
  const prober = (async () => {
    while (running) {
      const t0 = performance.now();
      const res = await fetch(`${origin}/health`);
      await res.text();
      probes.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const t0 = performance.now();
  const results = streams === 0 ? (await new Promise((r) => setTimeout(r, 2000)), []) : await Promise.all(Array.from({ length: streams }, (_, i) => stream(origin, i, tokens)));
  const seconds = (performance.now() - t0) / 1000;
  running = false;
  await prober;
  const metrics = await scrape(origin);
  const outputTokens = results.reduce((n, r) => n + r.tokens, 0);
  const gaps = results.flatMap((r) => r.gaps);
  return {
    bench: 'http',
    streams,
    output_tokens: outputTokens,
    tokens_per_s: round(outputTokens / seconds),
    ttft_p50_ms: round(percentile(results.map((r) => r.ttftMs), 0.5)),
    itl_p50_ms: round(percentile(gaps, 0.5)),
    itl_p99_ms: round(percentile(gaps, 0.99)),
    health_probes: probes.length,
    health_p50_ms: round(percentile(probes, 0.5)),
    health_p99_ms: round(percentile(probes, 0.99)),
    health_max_ms: round(Math.max(...probes)),
    event_loop_delay_p50_ms: round((metrics.get('nodejs_eventloop_lag_p50_seconds') ?? NaN) * 1000),
    event_loop_delay_p99_ms: round((metrics.get('nodejs_eventloop_lag_p99_seconds') ?? NaN) * 1000),
    event_loop_delay_max_ms: round((metrics.get('nodejs_eventloop_lag_max_seconds') ?? NaN) * 1000),
  };
}

interface StreamResult {
  readonly tokens: number;
  readonly ttftMs: number;
  readonly gaps: readonly number[];
}

/** One SSE completion; times each content event as it arrives. */
async function stream(origin: string, i: number, tokens: number): Promise<StreamResult> {
  const t0 = performance.now();
  const res = await fetch(`${origin}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'bench', prompt: BENCH_PROMPTS[i % BENCH_PROMPTS.length], max_tokens: tokens, temperature: 1, seed: i, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200 || !res.body) throw new Error(`stream ${i}: HTTP ${res.status}: ${await res.text()}`);
  const times: number[] = [];
  let completionTokens = 0;
  let buffered = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buffered += decoder.decode(bytes as Uint8Array, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end).replace(/^data: /, '');
      buffered = buffered.slice(end + 2);
      if (event === '[DONE]') continue;
      const chunk = JSON.parse(event) as { error?: { message: string }; choices: { text: string; finish_reason: string | null }[]; usage?: { completion_tokens: number } };
      if (chunk.error) throw new Error(`stream ${i}: ${chunk.error.message}`);
      if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
      if (chunk.choices[0]?.text) times.push(performance.now());
    }
  }
  return { tokens: completionTokens, ttftMs: (times[0] ?? NaN) - t0, gaps: times.slice(1).map((t, k) => t - times[k]!) };
}

async function scrape(origin: string): Promise<Map<string, number>> {
  return parseMetricSamples(await (await fetch(`${origin}/metrics`)).text());
}

async function startServer(o: HttpBenchOptions, maxSeqs: number): Promise<{ origin: string; stop(): void }> {
  const args = [CLI, 'serve', '--port', '0', '--model', o.modelDir, '--model-name', 'bench', '--device', o.device, '--expert-cache-fraction', String(o.budgetFraction), '--max-seqs', String(maxSeqs)];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const origin = await new Promise<string>((resolve, reject) => {
    const timer = setInterval(() => {
      const m = /model loaded: serving '.*' on (\S+)/.exec(stderr);
      if (m?.[1]) {
        clearInterval(timer);
        resolve(m[1]);
      }
    }, 50);
    child.once('exit', (code) => {
      clearInterval(timer);
      reject(new Error(`the server exited (${code}) before it was ready:\n${stderr}`));
    });
  });
  return { origin, stop: () => child.kill('SIGTERM') };
}

function percentile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? NaN;
}

function round(x: number, digits = 1): number {
  return Number(x.toFixed(digits));
}

function table(rows: readonly HttpRow[]): string {
  const head =
    '| streams | tokens/s | TTFT p50 ms | ITL p50 / p99 ms | /health p50 / p99 / max ms (probes) | event-loop delay p50 / p99 / max ms |\n|---|---|---|---|---|---|';
  return [
    head,
    ...rows.map(
      (r) =>
        `| ${r.streams} | ${r.tokens_per_s} | ${r.ttft_p50_ms} | ${r.itl_p50_ms} / ${r.itl_p99_ms} | ${r.health_p50_ms} / ${r.health_p99_ms} / ${r.health_max_ms} (${r.health_probes}) | ${r.event_loop_delay_p50_ms} / ${r.event_loop_delay_p99_ms} / ${r.event_loop_delay_max_ms} |`,
    ),
  ].join('\n');
}
