// `npm run loadtest -- --soak 30m`: one server (the default policy and budget unless told), small
// per-client output limits so that readers that stop are cut within seconds, a warm-up request, the soak
// itself, then report.md, rss.svg and results.json. Exits 0 only if every check of soak-verdict.ts passes.
import { mkdir, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { DEFAULT_MODEL_DIR, SCHEDULER_OPTIONS } from '../src/cli/model-options.js';
import { loadModelConfig } from '../src/model/hf-config.js';
import { SOAK_EXTRA_CLIENTS, type LoadtestOptions, type SoakOptions } from './options.js';
import { REPO_ROOT, reportContext } from './report-context.js';
import { clientLimitArgs, launchServer, serveHasFlags, type ClientLimitFlags } from './server-launcher.js';
import { SOAK_CLIENT_KINDS, STOPPED_READER_PAUSE_MS, type SoakClientKind } from './soak-clients.js';
import { formatDuration, RSS_CHART_FILE, soakReportMarkdown, soakRssChart, type SoakReport } from './soak-report.js';
import { kernelSocketBufferBytes, runSoak, SOAK_GRACE_MS } from './soak-run.js';
import { eventLoopSummary, rssSummary, soakChecks, warmUpMs } from './soak-verdict.js';
import { modelId, warmUp } from './warm-up.js';

/**
 * Small enough that a reader that stops is cut within seconds of the kernel's buffers filling; a reader
 * that keeps up never has 16 KiB waiting in the server (the kernel takes megabytes first).
 */
const SOAK_BUFFER_KB = 16;
const SOAK_STALL_SECONDS = 3;
const STOPPED_KINDS: readonly SoakClientKind[] = ['sse-stopped', 'ws-stopped'];

export async function soakCommand(argv: readonly string[], opts: LoadtestOptions, soak: SoakOptions): Promise<number> {
  const started = new Date();
  const outDir = resolve(opts.outDir ?? join(REPO_ROOT, 'load-tests', 'results', `soak-${started.toISOString().replace(/[:.]/g, '-')}`));
  await mkdir(outDir, { recursive: true });
  const modelDir = opts.modelDir ?? DEFAULT_MODEL_DIR;
  const contextTokens = (await loadModelConfig(modelDir)).maxPositions;
  // Passed to the server explicitly, so the report's server command says what the clients were sized to.
  const maxSeqs = opts.maxSeqs ?? Number(SCHEDULER_OPTIONS['max-seqs'].default);
  const maxQueue = opts.maxQueue ?? Number(SCHEDULER_OPTIONS['max-queue'].default);
  const clients = soak.clients ?? maxSeqs + SOAK_EXTRA_CLIENTS;
  // Every soak client comes from 127.0.0.1, one client to the server: its share must be the whole server.
  const limits: ClientLimitFlags = { bufferKb: SOAK_BUFFER_KB, stallSeconds: SOAK_STALL_SECONDS, maxRunning: maxSeqs, maxQueued: maxQueue };
  const hasLimits = await serveHasFlags(clientLimitArgs(limits).filter((a) => a.startsWith('--')));
  const kinds = hasLimits ? SOAK_CLIENT_KINDS : SOAK_CLIENT_KINDS.filter((k) => !STOPPED_KINDS.includes(k));
  const logPath = join(outDir, 'server.log');
  const server = await launchServer({
    modelDir: opts.modelDir,
    device: opts.device,
    policy: soak.policy,
    budgetFraction: soak.budgetPercent === undefined ? undefined : soak.budgetPercent / 100,
    maxSeqs,
    maxQueue,
    ...(hasLimits && { clientLimits: limits }),
    logPath,
  });
  let run;
  try {
    const model = await modelId(server.baseUrl);
    await warmUp(server.baseUrl, model, 16);
    process.stderr.write(`soak: ${clients} clients against ${server.baseUrl} for ${formatDuration(soak.durationMs)}; report in ${outDir}\n`);
    run = await runSoak(server.baseUrl, server.pid, model, { durationMs: soak.durationMs, clients, kinds, maxTokens: soak.maxTokens, contextTokens, seed: opts.seed }, (line) => process.stderr.write(line));
  } finally {
    await server.stop();
  }

  const kernelBytes = await kernelSocketBufferBytes();
  const rss = rssSummary(run.samples, soak.durationMs);
  const checks = soakChecks(run, rss);
  const report: SoakReport = {
    context: reportContext(
      argv,
      started,
      modelDir,
      opts.device,
      [
        `Server: \`moe-serve ${server.args.join(' ')}\` (its log: ${relative(outDir, logPath)})`,
        hasLimits
          ? `Per-client limits: a connection with over ${SOAK_BUFFER_KB} KiB of unsent output for ${SOAK_STALL_SECONDS} s is cut; one client (all soak clients are 127.0.0.1) may have every running slot and the whole queue.`
          : 'The server has no per-client limits (--client-buffer-kb, --stall-seconds, --client-max-running, --client-max-queued): the readers that stop reading (sse-stopped, ws-stopped) were left out.',
        `Kernel socket buffers: ${kernelBytes === null ? 'unknown' : `~${(kernelBytes / 2 ** 20).toFixed(1)} MiB`} per connection (the sender's tcp_wmem maximum plus the receiver's tcp_rmem default) before a reader that stops leaves anything unsent in the server, ` +
          `so a stopped reader is cut only once its unread output exceeds that plus ${SOAK_BUFFER_KB} KiB. tiny-moe's whole-context answers with 20 logprobs a token are ~0.8 MiB over SSE and ~1.6 MiB over the WebSocket (measured): ` +
          'with ~4 MiB of buffers a stopped SSE reader completes once it reads again, and a stopped WebSocket with six of them is cut.',
        `Warm-up: the first ${formatDuration(warmUpMs(soak.durationMs))} (10% of the soak, at most 2 minutes), after one warm-up request; RSS growth is measured from its end to the soak's end.`,
      ],
      `${clients} clients at once (${soak.clients === undefined ? `the server's --max-seqs ${maxSeqs} + ${SOAK_EXTRA_CLIENTS}, so some requests always wait` : '--concurrency'}), each sending its next request when its last has ended (a stopped WebSocket reader sends six at once), for ${formatDuration(soak.durationMs)}; ` +
        `prompts from load-tests/prompts.ts drawn at random, max_tokens drawn from 1 to ${soak.maxTokens} (cancelling clients: ${soak.maxTokens}; stopped readers: the whole context), temperature 0.8, all seeded by --seed ${opts.seed}; ` +
        `stopped readers read nothing for ${STOPPED_READER_PAUSE_MS / 1000} s or until the soak stops sending; a request still open ${SOAK_GRACE_MS / 1000} s after the soak's end is LOST`,
    ),
    run,
    rss,
    eventLoop: eventLoopSummary(run.samples, soak.durationMs),
    checks,
    pass: checks.every((c) => c.pass),
  };
  await writeFile(join(outDir, 'results.json'), `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(join(outDir, 'report.md'), soakReportMarkdown(report));
  await writeFile(join(outDir, RSS_CHART_FILE), soakRssChart(report));
  for (const c of checks) process.stderr.write(`${c.pass ? 'pass' : 'FAIL'}: ${c.name}: ${c.measured} (bound ${c.bound})\n`);
  process.stderr.write(`soak ${report.pass ? 'passed' : 'FAILED'}; report written to ${join(outDir, 'report.md')}\n`);
  return report.pass ? 0 : 1;
}
