// `moe-serve bench scale`: a real `moe-serve serve` process, measured over HTTP the way a user runs it on
// a model bigger than memory: the disk's cold sequential bandwidth, load time and time to first token,
// decode tokens/s at each batch size, what the expert tiers read from disk per token and how fast
// against that bandwidth, peak RSS and peak cgroup memory under --memory-limit-mb, and whether greedy
// output equals a server's without the limit.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { totalsSince, ZERO_TOTALS, type Peaks } from '../engine/step-utilization.js';
import { median, round, utilizationCell, utilizationFields } from './bench-format.js';
import { CgroupUnavailableError, createMemoryGroup, type MemoryGroup, type MemoryGroupUsage } from './cgroup-memory.js';
import { UsageError } from './cli-error.js';
import { dropPageCache, measureSequentialRead, type SequentialRead } from './disk-bandwidth.js';
import { connect, expertDelta, promptFor, runDecodePhase, type DecodePhase, type ExpertDelta, type RequestResult } from './scale-requests.js';
import { exitText, ServeChild, type ChildExit } from './serve-child.js';

/** The most of the largest weights file read for the bandwidth figure; enough to pass any read-ahead. */
const BANDWIDTH_READ_BYTES = 2 * 2 ** 30;
/** Loading a model bigger than memory from a slow disk can take long; a hung load should still end. */
const LOAD_TIMEOUT_MS = 60 * 60_000;
const STOP_GRACE_MS = 10_000;

export interface ScaleBenchOptions {
  readonly modelDir: string;
  readonly memoryLimitMb: number | null;
  readonly batches: readonly number[];
  readonly tokens: number;
  readonly rounds: number;
  readonly compareUnlimited: boolean;
  /** Also measure the batches with every expert resident, for the disk tier's bound. */
  readonly residentBaseline: boolean;
  /** serve flags besides --model/--host/--port, for both servers */
  readonly serveArgs: readonly string[];
}

/** Requests failed, a server died, or greedy output differed: the figures are printed, the run fails. */
export class ScaleBenchFailedError extends Error {
  readonly code = 'scale_bench_failed';

  constructor(problems: readonly string[]) {
    super(`bench scale: ${problems.join('; ')}`);
    this.name = 'ScaleBenchFailedError';
  }
}

interface PhaseRow {
  readonly batch: number;
  readonly requests: number;
  readonly failed: number;
  readonly output_tokens: number;
  /** requests that stopped before --tokens (end of sequence; the API cannot ignore it) */
  readonly ended_early: number;
  readonly output_tokens_per_s: number;
  readonly decode_tokens_per_s: number | null;
  readonly latency_p50_s: number | null;
  readonly latency_max_s: number | null;
  readonly ttft_p50_s: number | null;
  readonly disk_bytes_per_token: number | null;
  readonly disk_reads: number | null;
  readonly disk_busy_s: number | null;
  readonly disk_mb_per_s: number | null;
  readonly fraction_of_sequential: number | null;
  readonly device_hit_ratio: number | null;
  readonly host_hit_ratio: number | null;
  /** S-MBU and S-MFU of the server's engine steps during the phase (its /metrics counters and peaks); null without them */
  readonly s_mbu: number | null;
  readonly s_mfu: number | null;
}

interface ServerRun {
  /** null when the server never became ready */
  readonly loadS: number | null;
  readonly ttftS: number | null;
  readonly phases: readonly PhaseRow[];
  /** greedy texts of the comparison prompts, in order; null for a failed request */
  readonly greedy: readonly (string | null)[];
  readonly peakRssBytes: number | null;
  readonly group: MemoryGroupUsage | null;
  readonly oomKills: number;
  /** how the server ended when it was not this bench that stopped it */
  readonly died: string | null;
  readonly failures: readonly string[];
}

export async function benchScale(o: ScaleBenchOptions): Promise<void> {
  const weights = safetensorsFiles(o.modelDir);
  const sizeBytes = weights.reduce((n, f) => n + f.bytes, 0);
  const largest = weights.reduce((a, b) => (b.bytes > a.bytes ? b : a));
  const limitBytes = o.memoryLimitMb === null ? null : Math.floor(o.memoryLimitMb * 2 ** 20);
  const emit = (row: object) => process.stdout.write(`${JSON.stringify({ bench: 'scale', ...row })}\n`);
  const problems: string[] = [];

  const bandwidth = await measureSequentialRead(largest.path, BANDWIDTH_READ_BYTES);
  emit({ phase: 'bandwidth', ...bandwidthRow(bandwidth) });

  // The comparison prompts: one batch's worth of the largest batch, each run alone (batch 1); only when
  // there is a server to compare with (on a model bigger than memory each takes minutes).
  const greedyPrompts = o.compareUnlimited ? Array.from({ length: Math.min(Math.max(...o.batches), 20) }, (_, k) => promptFor(1, k, 0)) : [];
  const main = await withInterruptCleanup(async (active) => {
    let group: MemoryGroup | null = null;
    try {
      if (limitBytes !== null) {
        // Pages cached by earlier runs stay charged to whoever read them; dropping them first makes
        // every page the server touches its group's.
        const dropped = await dropPageCache();
        emit({ phase: 'page_cache', dropped: dropped.ok, ...(!dropped.ok && { reason: dropped.error }) });
        if (!dropped.ok) process.stderr.write(`bench scale: warning: could not drop the page cache (${dropped.error}); pages cached earlier are not charged to the group\n`);
        try {
          group = active.group = await createMemoryGroup(`moe-serve-bench-${process.pid}`, limitBytes);
        } catch (err) {
          if (err instanceof CgroupUnavailableError) throw new UsageError(`--memory-limit-mb: ${err.message}`);
          throw err;
        }
      }
      return await runServer('main', o, group, greedyPrompts, bandwidth, emit, active);
    } finally {
      await group?.remove();
      active.group = null;
    }
  });
  problems.push(...main.failures);

  let identical: boolean | null = null;
  if (o.compareUnlimited) {
    const unlimited = await withInterruptCleanup((active) => runServer('unlimited', { ...o, batches: [] }, null, greedyPrompts, bandwidth, emit, active));
    problems.push(...unlimited.failures.map((f) => `unlimited server: ${f}`));
    const differs = greedyPrompts.findIndex((_, i) => main.greedy[i] === null || main.greedy[i] !== unlimited.greedy[i]);
    identical = differs < 0;
    const difference = differs < 0 ? null : { prompt: greedyPrompts[differs], limited: main.greedy[differs], unlimited: unlimited.greedy[differs] };
    emit({ phase: 'compare', prompts: greedyPrompts.length, identical, first_difference: difference });
    if (difference) problems.push(`greedy output differs from the unlimited server's for prompt ${JSON.stringify(difference.prompt)}`);
  }

  // The disk tier's bound: a token cannot take less than moving its bytes at the disk's sequential speed
  // plus computing it with every expert resident. decode_over_bound says how close the tier comes.
  let bounds: BoundRow[] = [];
  if (o.residentBaseline) {
    const resident = await withInterruptCleanup((active) =>
      runServer('resident', { ...o, serveArgs: [...o.serveArgs, '--expert-policy', 'all'] }, null, [], bandwidth, emit, active),
    );
    problems.push(...resident.failures.map((f) => `all-resident server: ${f}`));
    bounds = main.phases.map((p) => boundRow(p, resident.phases.find((r) => r.batch === p.batch), bandwidth));
    for (const b of bounds) emit({ phase: 'bound', ...b });
  }

  const failedRequests = main.phases.reduce((n, p) => n + p.failed, 0);
  const summary = {
    model: o.modelDir,
    size_on_disk_bytes: sizeBytes,
    memory_limit_bytes: limitBytes,
    ...bandwidthRow(bandwidth),
    load_s: main.loadS,
    ttft_s: main.ttftS,
    peak_rss_bytes: main.peakRssBytes,
    peak_cgroup_bytes: main.group?.peakBytes ?? null,
    under_limit: limitBytes === null || main.group?.peakBytes == null ? null : main.group.peakBytes <= limitBytes,
    oom_kills: main.oomKills,
    server_died: main.died,
    failed_requests: failedRequests,
    greedy_identical: identical,
  };
  emit({ phase: 'summary', ...summary });
  process.stdout.write(`\n${summaryTable(summary, main.phases, bounds)}\n`);
  if (problems.length > 0) throw new ScaleBenchFailedError(problems);
}

interface ActiveResources {
  child: ServeChild | null;
  group: MemoryGroup | null;
}

/**
 * Runs `body` with a SIGINT/SIGTERM handler that kills the server and removes the cgroup before the
 * bench exits: without it, Ctrl-C would end node before any `finally` and leave both behind.
 */
async function withInterruptCleanup<T>(body: (active: ActiveResources) => Promise<T>): Promise<T> {
  const active: ActiveResources = { child: null, group: null };
  const onSignal = (signal: NodeJS.Signals) => {
    process.stderr.write(`bench scale: ${signal}: stopping the server\n`);
    active.child?.kill();
    void (async () => {
      await active.child?.exited;
      await active.group?.remove().catch((err: Error) => process.stderr.write(`bench scale: could not remove ${active.group?.path}: ${err.message}\n`));
      process.exit(signal === 'SIGINT' ? 130 : 143);
    })();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await body(active);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function runServer(
  label: 'main' | 'unlimited' | 'resident',
  o: ScaleBenchOptions,
  group: MemoryGroup | null,
  greedyPrompts: readonly string[],
  bandwidth: SequentialRead,
  emit: (row: object) => void,
  active: ActiveResources,
): Promise<ServerRun> {
  const serveArgs = [...o.serveArgs, '--model', o.modelDir, '--host', '127.0.0.1', '--port', '0'];
  const child = (active.child = new ServeChild(serveArgs, group, (line) => process.stderr.write(`[serve ${label}] ${line}\n`)));
  const failures: string[] = [];
  const phases: PhaseRow[] = [];
  const greedy: (string | null)[] = [];
  let loadS: number | null = null;
  let ttftS: number | null = null;
  let peakRssBytes: number | null = null;
  let usage: MemoryGroupUsage | null = null;
  let died: ChildExit | null = null;
  try {
    const ready = await child.waitReady(LOAD_TIMEOUT_MS);
    loadS = round(ready.loadMs / 1000, 2);
    const client = await connect(ready.baseUrl, apiKeyOf(o.serveArgs));
    emit({ phase: 'load', server: label, load_s: loadS, pid: child.pid, cgroup: group?.path ?? null });
    const firstToken = (results: readonly RequestResult[]) => {
      const first = results[0];
      if (ttftS === null && first?.ok) ttftS = (first.firstTokenMs - child.spawnedAtMs) / 1000;
    };
    for (const batch of o.batches) {
      const before = await client.expertTotals();
      const stepsBefore = await stepCounters(ready.baseUrl);
      const phase = await runDecodePhase(client, batch, o.rounds, o.tokens);
      const after = await client.expertTotals();
      const stepsAfter = await stepCounters(ready.baseUrl);
      firstToken(phase.results);
      const use = stepsBefore && stepsAfter ? utilizationFields(totalsSince({ ...ZERO_TOTALS, ...stepsAfter }, { ...ZERO_TOTALS, ...stepsBefore }), stepsAfter.peaks) : { s_mbu: null, s_mfu: null };
      const row = { ...phaseRow(phase, o.tokens, before && after ? expertDelta(before, after) : null, bandwidth), ...use };
      phases.push(row);
      emit({ phase: 'decode', server: label, ...row });
      failures.push(...requestFailures(phase.results, `batch ${batch}`));
    }
    const results: RequestResult[] = [];
    for (const prompt of greedyPrompts) results.push(await client.complete(prompt, o.tokens));
    firstToken(results);
    greedy.push(...results.map((r) => (r.ok ? r.text : null)));
    emit({ phase: 'greedy', server: label, prompts: results.length, failed: results.filter((r) => !r.ok).length, output_tokens: results.reduce((n, r) => n + (r.ok ? r.tokens : 0), 0) });
    failures.push(...requestFailures(results, 'greedy comparison'));
  } catch (err) {
    failures.push(err instanceof Error ? err.message : String(err));
  } finally {
    // Read before stopping: /proc/PID goes with the process, and memory.stat shows the end state.
    peakRssBytes = child.peakRssBytes();
    usage = group?.usage() ?? null;
    died = child.exitStatusNow;
    const exit = await child.stop(STOP_GRACE_MS);
    active.child = null;
    // The OOM count after the exit too: a kill while stopping counts.
    if (usage && group) usage = { ...usage, oomKills: group.usage().oomKills };
    if (!died && exit.signal === 'SIGKILL') failures.push(`the server ignored SIGTERM for ${STOP_GRACE_MS / 1000} s and was killed`);
  }
  if (died) failures.push(`the server died during the run (${exitText(died)})`);
  // Without a count from the group, a SIGKILL nobody here sent is the kernel's OOM killer.
  const oomKills = usage?.oomKills ?? (died?.signal === 'SIGKILL' ? 1 : 0);
  emit({
    phase: 'memory',
    server: label,
    peak_rss_bytes: peakRssBytes,
    memory_limit_bytes: group?.limitBytes ?? null,
    peak_cgroup_bytes: usage?.peakBytes ?? null,
    cgroup_rss_bytes: usage?.rssBytes ?? null,
    cgroup_cache_bytes: usage?.cacheBytes ?? null,
    oom_kills: oomKills,
    died: died ? exitText(died) : null,
  });
  return { loadS, ttftS: ttftS === null ? null : round(ttftS, 2), phases, greedy, peakRssBytes, group: usage, oomKills, died: died ? exitText(died) : null, failures };
}

function phaseRow(phase: DecodePhase, tokens: number, experts: ExpertDelta | null, bandwidth: SequentialRead): Omit<PhaseRow, 's_mbu' | 's_mfu'> {
  const ok = phase.results.flatMap((r) => (r.ok ? [r] : []));
  const outputTokens = ok.reduce((n, r) => n + r.tokens, 0);
  // A request's first token comes after its prompt; decode speed counts the tokens after it.
  const decodeTokens = ok.reduce((n, r) => n + r.tokens - 1, 0);
  const latencies = ok.map((r) => (r.endMs - r.startMs) / 1000);
  const diskMbPerS = experts?.diskMbPerS ?? null;
  return {
    batch: phase.batch,
    requests: phase.results.length,
    failed: phase.results.length - ok.length,
    output_tokens: outputTokens,
    ended_early: ok.filter((r) => r.tokens < tokens).length,
    output_tokens_per_s: round(outputTokens / (phase.wallMs / 1000), 2),
    decode_tokens_per_s: phase.decodeWindowMs > 0 && decodeTokens > 0 ? round(decodeTokens / (phase.decodeWindowMs / 1000), 2) : null,
    latency_p50_s: p50(latencies),
    latency_max_s: latencies.length ? round(Math.max(...latencies), 3) : null,
    ttft_p50_s: p50(ok.map((r) => (r.firstTokenMs - r.startMs) / 1000)),
    disk_bytes_per_token: experts && outputTokens > 0 ? Math.round(experts.bytesFromDisk / outputTokens) : null,
    disk_reads: experts?.diskReads ?? null,
    disk_busy_s: experts?.diskBusyMs == null ? null : round(experts.diskBusyMs / 1000, 3),
    disk_mb_per_s: diskMbPerS === null ? null : round(diskMbPerS),
    fraction_of_sequential: diskMbPerS !== null && bandwidth.measured ? round(diskMbPerS / bandwidth.mbPerS, 3) : null,
    device_hit_ratio: experts?.deviceHitRatio == null ? null : round(experts.deviceHitRatio, 3),
    host_hit_ratio: experts?.hostHitRatio == null ? null : round(experts.hostHitRatio, 3),
  };
}

interface BoundRow {
  readonly batch: number;
  readonly decode_ms_per_token: number | null;
  readonly resident_ms_per_token: number | null;
  readonly disk_ms_per_token: number | null;
  readonly bound_ms_per_token: number | null;
  readonly decode_over_bound: number | null;
}

/** Per decode token of the whole batch (tokens/s is over all requests in flight). */
function boundRow(p: PhaseRow, resident: PhaseRow | undefined, bandwidth: SequentialRead): BoundRow {
  const msPer = (tps: number | null | undefined) => (tps ? 1000 / tps : null);
  const decode = msPer(p.decode_tokens_per_s);
  const residentMs = msPer(resident?.decode_tokens_per_s);
  const diskMs = p.disk_bytes_per_token !== null && bandwidth.measured ? p.disk_bytes_per_token / (bandwidth.mbPerS * 1e3) : null;
  const bound = residentMs !== null && diskMs !== null ? residentMs + diskMs : null;
  return {
    batch: p.batch,
    decode_ms_per_token: decode === null ? null : round(decode, 2),
    resident_ms_per_token: residentMs === null ? null : round(residentMs, 2),
    disk_ms_per_token: diskMs === null ? null : round(diskMs, 2),
    bound_ms_per_token: bound === null ? null : round(bound, 2),
    decode_over_bound: decode !== null && bound !== null ? round(decode / bound, 2) : null,
  };
}

/**
 * The server's step-utilization counters and peaks (GET /metrics, no key needed); null when it has none or
 * does not answer. The values a phase's S-MBU and S-MFU come from, as the load tests compute them.
 */
async function stepCounters(baseUrl: string): Promise<{ bytes: number; flops: number; seconds: number; peaks: Peaks } | null> {
  let text: string;
  try {
    const res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(30_000) });
    text = await res.text();
    if (res.status !== 200) return null;
  } catch {
    return null;
  }
  const value = (name: string) => {
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : Number.NaN;
  };
  const r = {
    bytes: value('moe_serve_step_bytes_total'),
    flops: value('moe_serve_step_flops_total'),
    seconds: value('moe_serve_step_seconds_total'),
    peaks: { memoryBytesPerS: value('moe_serve_peak_memory_bytes_per_second'), flopsPerS: value('moe_serve_peak_flops_per_second') },
  };
  return [r.bytes, r.flops, r.seconds, r.peaks.memoryBytesPerS, r.peaks.flopsPerS].every(Number.isFinite) ? r : null;
}

function requestFailures(results: readonly RequestResult[], where: string): string[] {
  return results.flatMap((r) => (r.ok ? [] : [`${where}: request for ${JSON.stringify(r.prompt)} failed: ${r.error}`]));
}

/** The median to 3 decimals; null for none (a phase whose every request failed). */
function p50(xs: readonly number[]): number | null {
  return xs.length === 0 ? null : round(median(xs), 3);
}

function bandwidthRow(b: SequentialRead) {
  return b.measured
    ? { bandwidth_mb_per_s: round(b.mbPerS), bandwidth_method: b.method, bandwidth_bytes_read: b.bytes, bandwidth_file: b.file }
    : { bandwidth_mb_per_s: null, bandwidth_method: null, bandwidth_unmeasured_reason: b.reason, bandwidth_file: b.file };
}

/** --api-key among the serve flags (either spelling), else the environment variable serve reads too. */
function apiKeyOf(serveArgs: readonly string[]): string | undefined {
  let key = process.env.MOE_SERVE_API_KEY;
  serveArgs.forEach((a, i) => {
    if (a === '--api-key') key = serveArgs[i + 1];
    else if (a.startsWith('--api-key=')) key = a.slice('--api-key='.length);
  });
  return key;
}

/** The model's *.safetensors files, or a UsageError naming what is missing. */
function safetensorsFiles(dir: string): { path: string; bytes: number }[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw new UsageError(`--model: cannot read ${dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const files = names.filter((n) => n.endsWith('.safetensors')).map((n) => ({ path: join(dir, n), bytes: statSync(join(dir, n)).size }));
  if (files.length === 0) throw new UsageError(`--model: no *.safetensors file in ${dir}`);
  return files;
}

type Summary = {
  model: string;
  size_on_disk_bytes: number;
  memory_limit_bytes: number | null;
  bandwidth_mb_per_s: number | null;
  bandwidth_method: string | null;
  bandwidth_unmeasured_reason?: string;
  load_s: number | null;
  ttft_s: number | null;
  peak_rss_bytes: number | null;
  peak_cgroup_bytes: number | null;
  under_limit: boolean | null;
  oom_kills: number;
  server_died: string | null;
  failed_requests: number;
  greedy_identical: boolean | null;
};

function summaryTable(s: Summary, phases: readonly PhaseRow[], bounds: readonly BoundRow[]): string {
  const show = (x: number | string | boolean | null | undefined, unit = '') => (x === null || x === undefined ? '-' : `${x}${unit}`);
  const pct = (x: number | null) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`);
  const rows: [string, string][] = [
    ['model', s.model],
    ['size on disk', bytes(s.size_on_disk_bytes)],
    ['memory limit', s.memory_limit_bytes === null ? 'none' : bytes(s.memory_limit_bytes)],
    ['sequential read', s.bandwidth_mb_per_s === null ? `not measured: ${s.bandwidth_unmeasured_reason ?? ''}` : `${s.bandwidth_mb_per_s} MB/s (${s.bandwidth_method})`],
    ['load (spawn to /health 200)', show(s.load_s, ' s')],
    ['time to first token after start', show(s.ttft_s, ' s')],
    ...phases.map((p): [string, string] => [`batch ${p.batch} decode tokens/s`, `${show(p.decode_tokens_per_s)} (output ${p.output_tokens_per_s}, latency p50 ${show(p.latency_p50_s, ' s')})`]),
    ...phases.map((p): [string, string] => [`batch ${p.batch} disk bytes/token`, show(p.disk_bytes_per_token)]),
    ...phases.map((p): [string, string] => [
      `batch ${p.batch} achieved disk MB/s`,
      p.disk_mb_per_s === null ? `- (${p.disk_busy_s === null ? 'the server has no diskBusyMs counter' : 'no disk reads'})` : `${p.disk_mb_per_s} (${pct(p.fraction_of_sequential)} of sequential)`,
    ]),
    ...phases.map((p): [string, string] => [`batch ${p.batch} device / host hit ratio`, `${pct(p.device_hit_ratio)} / ${pct(p.host_hit_ratio)}`]),
    ...phases.map((p): [string, string] => [`batch ${p.batch} S-MBU / S-MFU`, utilizationCell(p)]),
    ...bounds.map((b): [string, string] => [
      `batch ${b.batch} ms/token vs bound`,
      `${show(b.decode_ms_per_token)} vs ${show(b.bound_ms_per_token)} (disk ${show(b.disk_ms_per_token)} + all-resident ${show(b.resident_ms_per_token)}): ${show(b.decode_over_bound, 'x')}`,
    ]),
    ['peak RSS (VmHWM)', s.peak_rss_bytes === null ? '-' : bytes(s.peak_rss_bytes)],
    ['peak cgroup memory', s.peak_cgroup_bytes === null ? '-' : `${bytes(s.peak_cgroup_bytes)}${s.under_limit === null ? '' : s.under_limit ? ' (under the limit)' : ' (OVER the limit)'}`],
    ['OOM kills', String(s.oom_kills)],
    ['server ended', s.server_died === null ? 'stopped by the bench' : `by itself: ${s.server_died}`],
    ['failed requests', String(s.failed_requests)],
    ['greedy identical to unlimited', s.greedy_identical === null ? 'not compared' : s.greedy_identical ? 'yes' : 'NO'],
  ];
  return ['| measure | value |', '|---|---|', ...rows.map(([k, v]) => `| ${k} | ${v} |`)].join('\n');
}

function bytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}
