// report.md: how the report was made, what the numbers mean, and one table per client kind.
import type { RunResult } from './load-run.js';
import type { ReportContext } from './report-context.js';
import { groupByClient, TABLE_HEAD, tableRow } from './report-table.js';

export const METRIC_DEFINITIONS = [
  '**tokens/s**: completion tokens received by the client (from each answer\'s `usage`) / the run\'s wall time, first request sent to last answer received.',
  '**TTFT** (time to first token, vLLM\'s definition): request sent -> first token message received (an SSE chunk or a WebSocket `token` message with text).',
  '**TPOT** (time per output token, vLLM\'s definition): (e2e - TTFT) / (output tokens - 1), per request with more than one output token; percentiles over requests.',
  '**ITL** (inter-token latency, vLLM\'s definition): every gap between consecutive token messages of a request; percentiles over all gaps of all requests.',
  '**e2e**: request sent -> answer complete (`[DONE]`, the WebSocket `done` message, or the whole non-streamed body). The only latency a non-streamed request has.',
  'Percentiles interpolate linearly between ranks (numpy.percentile, as vLLM\'s benchmark computes them); latencies are over successful (200) requests only.',
  '**hit ratio**: expert-cache hits / expert uses during the run, from `GET /v1/experts` before and after it; **bytes to device**: expert bytes turned into compute form (fp32 on the CPU provider, uploads on GPU) during the run.',
  '**S-MBU** and **S-MFU** (MoE-CAP\'s sparsity-aware utilization, README "Utilization"): the change of the server\'s `moe_serve_step_bytes_total` (bytes its engine steps had to move: the experts each step activated, the dense weights, the KV read and written) over the run / the change of `moe_serve_step_seconds_total` (the steps\' wall time: busy time, not the run\'s) / the peak bandwidth the server reports (`moe_serve_peak_memory_bytes_per_second`, from `--peak-memory-gbps`); S-MFU likewise with `moe_serve_step_flops_total` and `--peak-tflops`.',
  '**/health p50 / p99 ms**: GET /health round trips probed from the load generator every 20 ms during the run; **event-loop delay p99 / max ms**: the server\'s own (prom-client, sampled every 1 ms, so a figure carries up to 1 ms of sampling interval), over the run exactly: GET /metrics is scraped just before it starts and right after it ends. Both say how long other requests wait behind the engine\'s synchronous work.',
  '**loads avoided**: 1 - (misses + prefetches) / expert uses: the share of uses that cost no load. Without prefetching it equals the hit ratio; with prefetching a prefetched expert counts as a hit but was loaded all the same, which is why hit ratios above Belady\'s are possible and loads avoided above it are not.',
  '**Belady**: the replay tool\'s exact offline optimum (Belady\'s MIN: evict the expert needed furthest ahead) on the routing-trace lines this run added to its server\'s trace (`serve --trace`), at its budget, with the server\'s rules: a batched forward pass uses the union of its sequences\' experts once per layer (the trace numbers its passes), experts in use count against the budget and cannot be evicted. Demand loading is optimal in loads for equal-size experts, so no policy, with prefetching or without, avoids more loads than this. **gap (points)**: Belady minus loads avoided.',
  '**429s**: requests refused by the server\'s full queue (deliberate overload), counted apart; **errors**: every other failure (another status, a connection error or timeout, a stream that broke off). A run with errors fails the command.',
];

/** How a report was made, under its title: the command in a code block, then date, machine, commit, workload and notes. */
export function contextMarkdown(ctx: ReportContext): string[] {
  return [
    '```sh',
    ctx.command,
    '```',
    '',
    `- Date: ${ctx.date}`,
    `- Machine: ${ctx.machine}; Node ${ctx.node}`,
    `- moe-serve commit: ${ctx.commit ?? 'unknown'}`,
    `- Workload: ${ctx.workload}`,
    ...ctx.notes.map((n) => `- ${n}`),
  ];
}

export function reportMarkdown(ctx: ReportContext, results: readonly RunResult[]): string {
  const out: string[] = [
    `# moe-serve load test: ${ctx.model} on ${ctx.device}`,
    '',
    ...contextMarkdown(ctx),
    '',
    '## Metric definitions',
    '',
    ...METRIC_DEFINITIONS.map((d) => `- ${d}`),
    '',
  ];
  for (const group of groupByClient(results)) {
    out.push(`## ${group.title}`, '', `| ${TABLE_HEAD.join(' | ')} |`, `|${TABLE_HEAD.map((_, i) => (i < 3 ? '---|' : '---:|')).join('')}`);
    for (const r of group.runs) out.push(`| ${tableRow(r).join(' | ')} |`);
    out.push('');
  }
  const withMetrics = results.filter((r) => r.server.metrics !== null);
  if (withMetrics.length > 0) {
    out.push(
      '## What the server counted (GET /metrics, change over each run)',
      '',
      '| client | policy | budget | scheduling | concurrency | generation tokens/s | prompt tokens | requests by status |',
      '|---|---|---|---|---:|---:|---:|---|',
    );
    for (const r of withMetrics) {
      const m = r.server.metrics!;
      const statuses = Object.entries(m.requestsByStatus).map(([status, n]) => `${status}: ${n}`).join(', ') || '-';
      out.push(`| ${r.client} | ${r.policy} | ${r.budgetPercent}% | ${r.scheduling} | ${r.concurrency} | ${r.serverTokensPerSecond?.toFixed(1) ?? '-'} | ${m.promptTokens} | ${statuses} |`);
    }
    out.push('');
  }
  const failed = results.filter((r) => r.errors > 0);
  out.push('## Errors', '');
  if (failed.length === 0) out.push('No run had an error response other than deliberate overload (429).');
  for (const r of failed) out.push(`- **${r.client} ${r.policy} ${r.budgetPercent}% ${r.scheduling} c=${r.concurrency}**: ${r.errors} errors; outcomes ${JSON.stringify(r.outcomes)}`);
  out.push('');
  return out.join('\n');
}
