#!/usr/bin/env node
// `npm run loadtest`: one moe-serve server per (policy, budget, scheduling), the same workload against each, then
// report.md, report.html and results.json. Exits 1 when a run had errors other than 429, 2 for bad flags.
// With --soak, one server saturated for a long time instead (soak-command.ts).
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { DEFAULT_MODEL_DIR } from '../src/cli/model-options.js';
import { beladyHitRatio, settledTraceBytes, type TraceRange } from './belady-bound.js';
import { runLoad, type RunResult } from './load-run.js';
import { UsageError } from '../src/cli/cli-error.js';
import { LOADTEST_HELP, parseLoadtestArgs, type LoadtestOptions } from './options.js';
import { LOAD_PROMPTS } from './prompts.js';
import { REPO_ROOT, reportContext } from './report-context.js';
import { reportHtml } from './report-html.js';
import { reportMarkdown } from './report-md.js';
import { percent } from './report-table.js';
import { launchServer } from './server-launcher.js';
import { soakCommand } from './soak-command.js';
import { modelId, warmUp } from './warm-up.js';

async function main(argv: readonly string[]): Promise<number> {
  let opts: LoadtestOptions;
  try {
    opts = parseLoadtestArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`loadtest: ${err.message}\n\n${LOADTEST_HELP}`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(LOADTEST_HELP);
    return 0;
  }
  if (opts.soak) return soakCommand(argv, opts, opts.soak);
  const started = new Date();
  const outDir = resolve(opts.outDir ?? join(REPO_ROOT, 'load-tests', 'results', started.toISOString().replace(/[:.]/g, '-')));
  const serversDir = join(outDir, 'servers');
  await mkdir(serversDir, { recursive: true });
  const modelDir = opts.modelDir ?? DEFAULT_MODEL_DIR;
  const results: RunResult[] = [];
  const notes: string[] = [];

  for (const cache of opts.policies) {
    const policy = cache.label;
    for (const [budgetPercent, scheduling] of opts.budgetsPercent.flatMap((b) => opts.schedulings.map((s) => [b, s] as const))) {
      const name = `${policy}-${budgetPercent}pct-${scheduling}`;
      const tracePath = join(serversDir, `${name}.trace.jsonl`);
      const server = await launchServer({ modelDir: opts.modelDir, device: opts.device, policy: cache.policy, prefetchDepth: cache.prefetchDepth, budgetFraction: budgetPercent / 100, tracePath, maxSeqs: opts.maxSeqs, maxQueue: opts.maxQueue, expertAwareScheduling: scheduling === 'expert', logPath: join(serversDir, `${name}.log`) });
      const serverRuns: RunResult[] = [];
      // Where each run's lines are in the server's routing trace.
      const traceRanges = new Map<RunResult, TraceRange>();
      try {
        // The command of the first server, with the trace path relative to the report.
        if (notes.length === 0) notes.push(`Server: \`moe-serve ${server.args.map((a) => (a === tracePath ? relative(outDir, a) : a)).join(' ')}\` (policy, budget and scheduling per configuration)`);
        const model = await modelId(server.baseUrl);
        await warmUp(server.baseUrl, model, opts.maxTokens);
        for (const concurrency of opts.concurrency) {
          for (const client of opts.clients) {
            const fromByte = await settledTraceBytes(tracePath);
            const r = await runLoad(server.baseUrl, model, {
              policy, budgetPercent, scheduling, client, concurrency, mode: opts.mode, ratePerSecond: opts.ratePerSecond,
              durationMs: opts.durationMs, maxRequests: opts.maxRequests, maxTokens: opts.maxTokens, seed: opts.seed,
            });
            serverRuns.push(r);
            traceRanges.set(r, { fromByte, toByte: await settledTraceBytes(tracePath) });
            process.stderr.write(
              `${policy} ${budgetPercent}% ${scheduling} ${client} c=${concurrency}: ${r.completed}/${r.requests} ok, ${r.tokensPerSecond.toFixed(1)} tokens/s, ` +
                `e2e p50 ${r.latency.e2eMs.p50?.toFixed(0) ?? '-'} ms, hit ratio ${percent(r.server.hitRatio)}, 429s ${r.rejected429}, errors ${r.errors}\n`,
            );
          }
        }
      } finally {
        await server.stop();
      }
      for (const r of serverRuns) r.beladyHitRatio = await beladyHitRatio(tracePath, budgetPercent / 100, traceRanges.get(r));
      if (!opts.keepTraces) await rm(tracePath, { force: true });
      for (const r of serverRuns) process.stdout.write(`${JSON.stringify(r)}\n`);
      results.push(...serverRuns);
      // So far, in case a later configuration fails.
      await writeFile(join(outDir, 'results.json'), `${JSON.stringify({ results }, null, 2)}\n`);
    }
  }

  const hasMetrics = results.some((r) => r.server.metrics !== null);
  if (!hasMetrics) notes.push('The server had no `GET /metrics`: tokens/s and latencies are the client\'s own measurements only.');
  const ctx = reportContext(
    argv,
    started,
    modelDir,
    opts.device,
    notes,
    `${LOAD_PROMPTS.length} prompts (load-tests/prompts.ts: Python 3.11 docs and fortunes) in turn, max_tokens ${opts.maxTokens}, temperature 0; ` +
      `each run bounded by ${opts.durationMs / 1000} s and ${opts.maxRequests} requests; clients ${opts.clients.join(', ')}; ` +
      `streaming arrivals ${opts.mode === 'closed' ? 'closed loop' : `Poisson at ${opts.ratePerSecond} requests/s`}; one warm-up request per server before its runs`,
  );
  await writeFile(join(outDir, 'results.json'), `${JSON.stringify({ context: ctx, results }, null, 2)}\n`);
  await writeFile(join(outDir, 'report.md'), reportMarkdown(ctx, results));
  await writeFile(join(outDir, 'report.html'), reportHtml(ctx, results));
  process.stderr.write(`report written to ${join(outDir, 'report.md')} and report.html\n`);
  const failed = results.filter((r) => r.errors > 0);
  if (failed.length > 0) {
    process.stderr.write(`loadtest: ${failed.length} run(s) had error responses other than 429; see the report's Errors section\n`);
    return 1;
  }
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
