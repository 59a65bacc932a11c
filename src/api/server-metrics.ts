// GET /metrics: Prometheus metrics through prom-client. Request latencies are observed as tokens reach
// the client; engine and expert-cache figures are read from their own counters when scraped, so the
// numbers here and in GET /v1/experts cannot drift apart.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineStats } from '../engine/batch-engine.js';
import type { GeneratedChunk } from '../engine/completion-state.js';
import type { ExpertCacheStats } from '../experts/expert-stats.js';
import { RECENT_SECONDS, utilizationOf, ZERO_TOTALS } from '../engine/step-utilization.js';
import { registerVllmMetrics } from './vllm-metrics.js';

/** Where scrape-time figures come from; undefined while the model loads. */
export interface MetricsSource {
  engine(): EngineStats | undefined;
  experts(): ExpertCacheStats | undefined;
  /** The served model's name, for the vLLM-named series' model_name label (vllm-metrics.ts). */
  readonly modelName: string;
}

// Seconds. Token latencies on this engine range from ~1 ms (tiny models, CPU) to seconds (offloaded experts).
const TOKEN_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const REQUEST_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'route' | 'status'>;
  private readonly ttft: Histogram;
  private readonly itl: Histogram;
  private readonly e2e: Histogram;
  private readonly promptTokens: Counter;

  constructor(source: MetricsSource) {
    const registers = [this.registry];
    // 1 ms sampling, not the 10 ms default: the delay figures then carry at most 1 ms of the sampling interval.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 1 });
    this.requests = new Counter({ name: 'moe_serve_requests_total', help: 'HTTP and WebSocket requests by route and status', labelNames: ['route', 'status'], registers });
    this.ttft = new Histogram({ name: 'moe_serve_time_to_first_token_seconds', help: 'Request received to first token sent', buckets: TOKEN_BUCKETS, registers });
    this.itl = new Histogram({ name: 'moe_serve_inter_token_latency_seconds', help: 'Time between consecutive tokens of a request', buckets: TOKEN_BUCKETS, registers });
    this.e2e = new Histogram({ name: 'moe_serve_e2e_request_latency_seconds', help: 'Request received to last token sent', buckets: REQUEST_BUCKETS, registers });
    this.promptTokens = new Counter({ name: 'moe_serve_prompt_tokens_total', help: 'Prompt tokens of accepted requests', registers });

    const engineGauge = (name: string, help: string, read: (s: EngineStats) => number) =>
      new Gauge({ name, help, registers, collect() { this.set(read(source.engine() ?? ZERO_ENGINE)); } });
    const engineCounter = (name: string, help: string, read: (s: EngineStats) => number) =>
      new Counter({ name, help, registers, collect() { setCounter(this, read(source.engine() ?? ZERO_ENGINE)); } });
    engineGauge('moe_serve_requests_running', 'Requests being generated', (s) => s.running);
    engineGauge('moe_serve_requests_waiting', 'Requests queued for admission', (s) => s.waiting);
    engineGauge('moe_serve_kv_tokens_reserved', 'KV-cache rows reserved by running requests (of the --kv-cache-mb budget)', (s) => s.kvTokensReserved);
    engineCounter('moe_serve_generation_tokens_total', 'Tokens generated', (s) => s.tokensGenerated);
    engineCounter('moe_serve_engine_steps_total', 'Engine steps (one forward pass over the batch)', (s) => s.steps);
    engineCounter('moe_serve_scheduler_pass_overs_total', 'Times expert-aware admission admitted a request ahead of an older waiting one, once per older one (0 when off)', (s) => s.passOvers);
    engineCounter('moe_serve_forked_prompt_tokens_total', 'Prompt tokens a choice of an n > 1 request took from the first choice instead of computing them', (s) => s.forkedTokens);
    engineCounter('moe_serve_prefix_cache_lookups_total', 'Admitted requests that looked for a cached prompt prefix', (s) => s.prefixCache?.lookups ?? 0);
    engineCounter('moe_serve_prefix_cache_hits_total', 'Lookups that found at least one cached block', (s) => s.prefixCache?.hits ?? 0);
    engineCounter('moe_serve_prefix_cache_lookup_tokens_total', 'Prompt tokens looked up in the prefix cache (all but the last of each prompt)', (s) => s.prefixCache?.lookupTokens ?? 0);
    engineCounter('moe_serve_prefix_cache_hit_tokens_total', 'Prompt tokens whose KV came from the prefix cache', (s) => s.prefixCache?.hitTokens ?? 0);
    engineCounter('moe_serve_prefix_cache_evicted_blocks_total', 'Prefix-cache blocks evicted for space', (s) => s.prefixCache?.evictedBlocks ?? 0);
    engineGauge('moe_serve_prefix_cache_bytes', 'KV bytes held by the prefix cache', (s) => s.prefixCache?.bytes ?? 0);
    engineGauge('moe_serve_prefix_cache_budget_bytes', 'Prefix-cache budget (--prefix-cache-mb); 0 when off', (s) => s.prefixCache?.budgetBytes ?? 0);

    // MoE-CAP's sparsity-aware utilization (engine/step-utilization.ts). The counters give exact rates over
    // any range (rate(bytes) / rate(seconds) / peak); the gauges are over a fixed recent window, the same
    // for every scraper.
    const u = (s: EngineStats) => s.utilization;
    engineCounter('moe_serve_step_bytes_total', 'Bytes engine steps had to move: activated experts, dense weights, KV read and written (S-MBU numerator)', (s) => u(s).totals.bytes);
    engineCounter('moe_serve_step_flops_total', 'FLOPs engine steps had to do: top-k experts per token, dense matmuls, LM head, attention (S-MFU numerator)', (s) => u(s).totals.flops);
    engineCounter('moe_serve_step_seconds_total', 'Wall time of engine steps (forward pass and sampling)', (s) => u(s).totals.seconds);
    engineGauge('moe_serve_smbu', `S-MBU over the steps of the last ${RECENT_SECONDS} s: step bytes / step seconds / --peak-memory-gbps (0 without steps)`, (s) => utilizationOf(u(s).recent, u(s).peaks).smbu ?? 0);
    engineGauge('moe_serve_smfu', `S-MFU over the steps of the last ${RECENT_SECONDS} s: step FLOPs / step seconds / --peak-tflops (0 without steps)`, (s) => utilizationOf(u(s).recent, u(s).peaks).smfu ?? 0);
    engineGauge('moe_serve_peak_memory_bytes_per_second', 'The peak memory bandwidth S-MBU is judged against (--peak-memory-gbps)', (s) => u(s).peaks.memoryBytesPerS);
    engineGauge('moe_serve_peak_flops_per_second', 'The peak FLOP rate S-MFU is judged against (--peak-tflops)', (s) => u(s).peaks.flopsPerS);

    const expertGauge = (name: string, help: string, read: (s: ExpertCacheStats) => number) =>
      new Gauge({ name, help, registers, collect() { const s = source.experts(); this.set(s ? read(s) : 0); } });
    const expertCounter = (name: string, help: string, read: (s: ExpertCacheStats) => number) =>
      new Counter({ name, help, registers, collect() { const s = source.experts(); setCounter(this, s ? read(s) : 0); } });
    expertCounter('moe_serve_expert_cache_hits_total', 'Expert uses found resident on the device', (s) => s.total.hits);
    expertCounter('moe_serve_expert_cache_misses_total', 'Expert uses that had to be loaded', (s) => s.total.misses);
    expertCounter('moe_serve_expert_prefetch_issued_total', 'Experts loaded ahead by router lookahead', (s) => s.total.prefetchIssued);
    expertCounter('moe_serve_expert_prefetch_used_total', 'Prefetched experts used before eviction', (s) => s.total.prefetchUsed);
    expertCounter('moe_serve_expert_evictions_total', 'Experts evicted from the device cache', (s) => s.total.evictions);
    expertCounter('moe_serve_expert_bytes_to_device_total', 'Expert bytes uploaded (converted to compute form on the CPU)', (s) => s.total.bytesToDevice);
    expertCounter('moe_serve_expert_cpu_computed_total', 'Expert-cache misses computed on the CPU from host memory instead of loaded (GPU providers)', (s) => s.total.cpuComputed);
    expertCounter('moe_serve_expert_cpu_seconds_total', 'Time of the CPU runs of missed experts', (s) => s.total.cpuMs / 1000);
    expertCounter('moe_serve_expert_cpu_kept_total', 'Misses computed on the CPU whose CPU form was kept from an earlier use', (s) => s.total.cpuKept);
    expertCounter('moe_serve_expert_bytes_from_disk_total', 'Expert bytes read from the checkpoint', (s) => s.total.bytesFromDisk);
    expertCounter('moe_serve_expert_host_hits_total', 'Expert loads served from the host tier', (s) => s.total.hostHits);
    expertCounter('moe_serve_expert_host_misses_total', 'Expert loads read from disk', (s) => s.total.hostMisses);
    expertCounter('moe_serve_expert_disk_busy_seconds_total', 'Time with at least one expert read in flight', (s) => s.total.diskBusyMs / 1000);
    expertGauge('moe_serve_expert_resident_device_bytes', 'Expert bytes resident on the device', (s) => s.residentBytes);
    expertGauge('moe_serve_expert_resident_host_bytes', 'Expert bytes held in host memory in stored form', (s) => s.hostResidentBytes);
    expertGauge('moe_serve_expert_budget_bytes', 'Device budget for routed experts', (s) => s.budgetBytes);

    // vLLM's names for the load-balancing gauges, for the Gateway API Inference Extension's endpoint picker.
    registerVllmMetrics(this.registry, source);
  }

  countRequest(route: string, status: number): void {
    this.requests.inc({ route, status: String(status) });
  }

  /**
   * Passes a request's chunks through, observing time to first token, inter-token latency and, when the
   * stream ends, end-to-end latency. `receivedAt` is performance.now() when the request arrived.
   */
  async *timed(chunks: AsyncIterable<GeneratedChunk>, receivedAt: number, promptTokens: number): AsyncGenerator<GeneratedChunk> {
    this.promptTokens.inc(promptTokens);
    let last: number | null = null;
    for await (const chunk of chunks) {
      if (chunk.tokenId !== null) {
        const now = performance.now();
        if (last === null) this.ttft.observe((now - receivedAt) / 1000);
        else this.itl.observe((now - last) / 1000);
        last = now;
      }
      yield chunk;
    }
    this.e2e.observe((performance.now() - receivedAt) / 1000);
  }
}

const ZERO_ENGINE: EngineStats = { steps: 0, tokensComputed: 0, tokensGenerated: 0, running: 0, waiting: 0, kvTokensReserved: 0, kvTokensCapacity: 0, forkedTokens: 0, passOvers: 0, prefixCache: null, utilization: { totals: ZERO_TOTALS, recent: ZERO_TOTALS, peaks: { memoryBytesPerS: 0, flopsPerS: 0 } } };

/** Counters mirrored from another component's running totals: set to the total at scrape time. */
function setCounter(counter: Counter, total: number): void {
  counter.reset();
  counter.inc(total);
}
