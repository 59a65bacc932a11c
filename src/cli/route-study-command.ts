// `moe-serve route-study`: what routing requests across replicas by expert or prefix affinity buys over
// round-robin, simulated from a routing trace (src/experts/replay/route-study.ts). Prints one table per
// (policy, prefetch depth, budget) and writes an SVG chart of bytes moved per generated token against
// the number of replicas.
import { basename } from 'node:path';
import { stat, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { lineChartSvg, type Series } from './line-chart-svg.js';
import { BLOCK_TOKENS } from '../engine/prefix-cache.js';
import { POLICY_NAMES, type PolicyName } from '../experts/policies/index.js';
import { readTrace } from '../experts/replay/read-trace.js';
import { PROMPT_RULES, ROUTING_RULES, type RoutingRule } from '../experts/replay/request-routing.js';
import { simulateRoutes, traceRequests, type RouteStudyResult } from '../experts/replay/route-study.js';
import { loadsAvoided } from '../experts/replay/simulate.js';
import { allExpertBytes } from '../experts/replay/trace-accesses.js';
import { UsageError } from './cli-error.js';
import { budgetFlag, splitList, toBudget, type Budget } from './replay-command.js';
import { intFlag, parseFlag, SCHEDULER_OPTIONS } from './model-options.js';

const DEFAULTS = {
  replicas: '2,4,8',
  routing: ROUTING_RULES.join(','),
  policies: 'next-use,lru',
  budgets: '25%,50%',
  'prefetch-depths': '0,1',
  'clients-per-replica': '8',
  'max-seqs': SCHEDULER_OPTIONS['max-seqs'].default,
  'load-guard': '4',
  'prefix-block-tokens': String(BLOCK_TOKENS),
} as const;

export const ROUTE_STUDY_HELP = `Usage: moe-serve route-study --trace FILE [options]

Simulates N replicas of the server behind a load balancer, each with its own expert cache (the server's
residency code and policy), serving the trace's requests re-batched: a closed loop of clients sends them
in trace order (recycled when the trace runs out), each replica runs continuous batching in lockstep ticks
(one forward pass per tick over its running requests, admitted oldest first up to --max-seqs), and a
routing rule picks the replica for each request:

  round-robin             each replica in turn
  least-queue             fewest running + waiting requests; ties to the lowest index
  prefix-affinity         the replica sent the longest prefix of the prompt's token blocks before (the
                          Gateway API inference extension's prefix-cache scorer)
  expert-affinity         the replica holding most of the experts the prompt was routed to (an oracle:
                          the trace's routing of the prompt)
  expert-affinity-table   the replica holding most of the experts predicted from the prompt's token ids
                          by a token -> experts table learned from the prompts computed so far
The affinity rules consider only replicas whose queue exceeds the shortest by at most --load-guard; ties
go to the shortest queue, then the lowest index. prefix-affinity and expert-affinity-table need a trace
recorded with the prompts' token ids (prompt_tokens, written since this command exists).

  --trace FILE                 routing trace, JSON Lines (src/experts/trace-format.ts) (required)
  --replicas LIST              numbers of replicas (default ${DEFAULTS.replicas})
  --routing LIST               from ${ROUTING_RULES.join(', ')} (default: all)
  --policies LIST              from ${POLICY_NAMES.join(', ')} (default ${DEFAULTS.policies})
  --budgets LIST               each replica's expert-cache budget: a percentage of all expert bytes, or a
                               size with a binary unit b, kb, mb, gb (default ${DEFAULTS.budgets})
  --prefetch-depths LIST       sparse-layer lookahead depths to prefetch (default ${DEFAULTS['prefetch-depths']})
  --clients-per-replica N      closed-loop clients per replica: N x replicas in all (default ${DEFAULTS['clients-per-replica']})
  --requests N                 requests to run in each configuration (default: the trace's)
  --shuffle SEED               send the trace's requests in a seeded random order, drawn anew each time
                               round the trace (default: trace order). A load test sends its prompts in
                               turn, and round-robin over replicas then gives each the same few prompts
  --max-seqs N                 most requests a replica runs at once (default ${DEFAULTS['max-seqs']}, the server's)
  --load-guard N               the affinity rules' most queue over the shortest (default ${DEFAULTS['load-guard']})
  --prefix-block-tokens N      prefix-affinity's block, in tokens (default ${DEFAULTS['prefix-block-tokens']}, the server's prefix cache's)
  --svg FILE                   where to write the chart (default: the trace path with .routes.svg appended)
  --md FILE                    also write the tables to FILE
  --json                       also print one JSON line per configuration, then the tables

Budgets are per replica. "bytes moved / token": expert loads (misses + prefetches) x expert bytes /
generated tokens. Ticks are forward passes, not seconds: a miss costs no time here.
`;

interface Config {
  readonly policy: PolicyName;
  readonly prefetchDepth: number;
  readonly budget: Budget;
  readonly rule: RoutingRule;
  readonly replicas: number;
}

const rule = z.enum(ROUTING_RULES, { message: `expected one of ${ROUTING_RULES.join(', ')}` });
const policy = z.enum(POLICY_NAMES, { message: `expected one of ${POLICY_NAMES.join(', ')}` });

export async function routeStudyCommand(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      trace: { type: 'string' },
      replicas: { type: 'string', default: DEFAULTS.replicas },
      routing: { type: 'string', default: DEFAULTS.routing },
      policies: { type: 'string', default: DEFAULTS.policies },
      budgets: { type: 'string', default: DEFAULTS.budgets },
      'prefetch-depths': { type: 'string', default: DEFAULTS['prefetch-depths'] },
      'clients-per-replica': { type: 'string', default: DEFAULTS['clients-per-replica'] },
      requests: { type: 'string' },
      shuffle: { type: 'string' },
      'max-seqs': { type: 'string', default: DEFAULTS['max-seqs'] },
      'load-guard': { type: 'string', default: DEFAULTS['load-guard'] },
      'prefix-block-tokens': { type: 'string', default: DEFAULTS['prefix-block-tokens'] },
      svg: { type: 'string' },
      md: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(ROUTE_STUDY_HELP);
    return;
  }
  if (values.trace === undefined) throw new UsageError('--trace is required');
  const tracePath = values.trace;
  if (!(await stat(tracePath).catch(() => undefined))?.isFile()) throw new UsageError(`--trace: no such file ${JSON.stringify(tracePath)}`);
  const replicaCounts = splitList(values.replicas).map((n) => parseFlag('replicas', intFlag(1), n));
  const rules = splitList(values.routing).map((r) => parseFlag('routing', rule, r));
  const policies = splitList(values.policies).map((p) => parseFlag('policies', policy, p));
  const budgetTexts = splitList(values.budgets).map((b) => parseFlag('budgets', budgetFlag, b));
  const depths = splitList(values['prefetch-depths']).map((d) => parseFlag('prefetch-depths', intFlag(0), d));
  const clientsPerReplica = parseFlag('clients-per-replica', intFlag(1), values['clients-per-replica']);
  const maxSeqs = parseFlag('max-seqs', intFlag(1), values['max-seqs']);
  const loadGuard = parseFlag('load-guard', intFlag(0), values['load-guard']);
  const prefixBlockTokens = parseFlag('prefix-block-tokens', intFlag(1), values['prefix-block-tokens']);
  const requestsFlag = values.requests === undefined ? undefined : parseFlag('requests', intFlag(1), values.requests);
  const shuffleSeed = values.shuffle === undefined ? undefined : parseFlag('shuffle', intFlag(0), values.shuffle);
  const svgPath = values.svg ?? `${tracePath}.routes.svg`;

  const trace = await readTrace(tracePath);
  const requests = traceRequests(trace);
  if (requests.length === 0) throw new Error(`${tracePath}: the trace has a header but no routing lines`);
  const needPrompts = rules.filter((r) => PROMPT_RULES.has(r));
  if (needPrompts.length > 0 && requests.every((r) => r.promptTokens === undefined)) {
    throw new UsageError(`--routing: ${needPrompts.join(', ')} route by the prompts' token ids, which this trace does not record (no prompt_tokens); record it again with this version's serve --trace`);
  }
  const totalBytes = allExpertBytes(trace.header);
  const budgets = budgetTexts.map((text) => toBudget(text, totalBytes));
  const tooSmall = budgets.find((b) => b.bytes < trace.header.expert_bytes);
  if (tooSmall) throw new UsageError(`--budgets: ${tooSmall.label} is ${tooSmall.bytes} bytes, less than one expert (${trace.header.expert_bytes} bytes)`);
  const requestCount = requestsFlag ?? requests.length;

  const results: { config: Config; result: RouteStudyResult }[] = [];
  for (const policy of policies) {
    for (const prefetchDepth of depths) {
      for (const budget of budgets) {
        for (const rule of rules) {
          for (const replicas of replicaCounts) {
            const config = { policy, prefetchDepth, budget, rule, replicas };
            const result = simulateRoutes(trace, {
              rule,
              replicas,
              clients: clientsPerReplica * replicas,
              requests: requestCount,
              shuffleSeed,
              maxSeqs,
              loadGuard,
              prefixBlockTokens,
              policy,
              budgetBytes: budget.bytes,
              prefetchDepth,
            });
            if (values.json) process.stdout.write(`${JSON.stringify(jsonRow(config, clientsPerReplica * replicas, result))}\n`);
            results.push({ config, result });
          }
        }
      }
    }
  }

  const distinctPrompts = new Set(requests.map((r) => r.promptTokens?.join(','))).size;
  const intro =
    `${tracePath}: ${trace.header.model}, ${requests.length} requests (${distinctPrompts} distinct prompts), ${requestCount} run per configuration ` +
    `${shuffleSeed === undefined ? 'in trace order' : `shuffled (seed ${shuffleSeed})`}; ` +
    `${clientsPerReplica} clients per replica, max-seqs ${maxSeqs}, load guard ${loadGuard}, prefix blocks of ${prefixBlockTokens} tokens; ` +
    `budgets per replica, 100% = ${trace.header.sparse_layers.length} sparse layers x ${trace.header.num_experts} experts x ${trace.header.expert_bytes} bytes\n`;
  const tables = groupTables(results, rules.includes('round-robin'));
  process.stdout.write(`${values.json ? '\n' : ''}${intro}\n${tables}`);
  if (values.md !== undefined) await writeFile(values.md, `${intro}\n${tables}`);
  const first = results[0]?.config;
  if (first) {
    await writeFile(svgPath, chartSvg(basename(trace.header.model), first.policy, first.prefetchDepth, results));
    process.stdout.write(`chart written to ${svgPath}\n`);
  }
}

/** One table per (policy, prefetch depth, budget): a row per (rule, replicas). */
function groupTables(results: readonly { config: Config; result: RouteStudyResult }[], againstRoundRobin: boolean): string {
  const groups = new Map<string, { config: Config; result: RouteStudyResult }[]>();
  for (const r of results) {
    const key = `${r.config.policy} @ prefetch depth ${r.config.prefetchDepth}, budget ${r.config.budget.label} per replica`;
    const group = groups.get(key);
    if (group) group.push(r);
    else groups.set(key, [r]);
  }
  const out: string[] = [];
  for (const [title, rows] of groups) {
    const baseline = (replicas: number) => rows.find((r) => r.config.rule === 'round-robin' && r.config.replicas === replicas)?.result.bytesMovedPerToken;
    out.push(
      `### ${title}\n`,
      `| routing | replicas | hit ratio | loads avoided | KiB moved / token |${againstRoundRobin ? ' vs round-robin |' : ''} max / mean requests | mean wait (ticks) | ticks |`,
      `|---|---:|---:|---:|---:|${againstRoundRobin ? '---:|' : ''}---:|---:|---:|`,
    );
    for (const { config, result } of rows) {
      const base = baseline(config.replicas);
      const vs = base === undefined || base === 0 ? '-' : `${signedPercent(result.bytesMovedPerToken / base - 1)}`;
      out.push(
        `| ${config.rule} | ${config.replicas} | ${percent(result.cache.hitRatio)} | ${percent(loadsAvoided(result.cache))} | ${(result.bytesMovedPerToken / 1024).toFixed(1)} |` +
          `${againstRoundRobin ? ` ${vs} |` : ''} ${result.requestImbalance.toFixed(2)} | ${result.meanWaitTicks.toFixed(2)} | ${result.ticks} |`,
      );
    }
    out.push('');
  }
  return `${out.join('\n')}\n`;
}

/** Each rule's line: a color, and a label short enough for the chart's legend. */
const RULE_LINES: Readonly<Record<RoutingRule, { color: string; label: string }>> = {
  'round-robin': { color: '#1f77b4', label: 'round-robin' },
  'least-queue': { color: '#ff7f0e', label: 'least-queue' },
  'prefix-affinity': { color: '#2ca02c', label: 'prefix' },
  'expert-affinity': { color: '#d62728', label: 'expert oracle' },
  'expert-affinity-table': { color: '#9467bd', label: 'expert table' },
};

/** Bytes moved per generated token against replicas, one line per (rule, budget) for one policy and depth; a second budget dashed. */
function chartSvg(model: string, policy: PolicyName, prefetchDepth: number, results: readonly { config: Config; result: RouteStudyResult }[]): string {
  const shown = results.filter((r) => r.config.policy === policy && r.config.prefetchDepth === prefetchDepth);
  const budgets = [...new Set(shown.map((r) => r.config.budget.label))];
  const series: Series[] = [];
  for (const [b, budget] of budgets.entries()) {
    for (const rule of new Set(shown.map((r) => r.config.rule))) {
      const points = shown.filter((r) => r.config.rule === rule && r.config.budget.label === budget).map((r) => ({ x: r.config.replicas, y: r.result.bytesMovedPerToken / 1024 }));
      series.push({ name: `${RULE_LINES[rule].label} ${budget}`, points, color: RULE_LINES[rule].color, dashed: b > 0 });
    }
  }
  return lineChartSvg({
    title: `Expert bytes moved per token: ${model}, ${policy} @ prefetch depth ${prefetchDepth}`,
    xLabel: 'replicas',
    yLabel: 'KiB moved per generated token',
    series,
    xFormat: (x) => String(x),
  });
}

function jsonRow(c: Config, clients: number, r: RouteStudyResult) {
  return {
    routing: c.rule,
    replicas: c.replicas,
    clients,
    policy: c.policy,
    prefetch_depth: c.prefetchDepth,
    budget: c.budget.label,
    budget_bytes_per_replica: c.budget.bytes,
    accesses: r.cache.accesses,
    hits: r.cache.hits,
    misses: r.cache.misses,
    prefetch_issued: r.cache.prefetchIssued,
    hit_ratio: round6(r.cache.hitRatio),
    loads_avoided: round6(loadsAvoided(r.cache)),
    generated_tokens: r.generatedTokens,
    bytes_moved_per_token: round6(r.bytesMovedPerToken),
    requests_per_replica: r.replicas.map((x) => x.requests),
    request_imbalance: round6(r.requestImbalance),
    mean_wait_ticks: round6(r.meanWaitTicks),
    ticks: r.ticks,
  };
}

function percent(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

function signedPercent(x: number): string {
  return `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`;
}

function round6(x: number): number {
  return Number(x.toFixed(6));
}
