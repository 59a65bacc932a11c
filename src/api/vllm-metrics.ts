// The five series the Gateway API Inference Extension's endpoint picker (EPP, now llm-d/llm-d-router) reads
// by default to choose a pod per request, under vLLM's names and with vLLM's meaning (help texts and labels
// from vllm/v1/metrics/loggers.py), so that an InferencePool can balance moe-serve pods as it does vLLM
// ones. The EPP (pkg/epp/framework/plugins/datalayer/extractor/metrics) parses the text format and:
// - reads the gauge's value of `vllm:num_requests_waiting`, `vllm:num_requests_running` and
//   `vllm:kv_cache_usage_perc` (a fraction 0..1 despite its name), taking the first series: there is one;
//   it filters on no label (model_name and engine are here for vLLM's dashboards);
// - of `vllm:lora_requests_info`, takes the series with the largest value (vLLM sets it to the time of its
//   last update) and reads its labels `running_lora_adapters` and `waiting_lora_adapters` (comma-separated,
//   empty names skipped) and `max_lora` (an integer when not empty);
// - of `vllm:cache_config_info` reads the labels `block_size` and `num_gpu_blocks` (integers when not empty).
// Only a gauge (or counter) sample has a value the EPP can read: an untyped one reads as 0.
import { Gauge, type Registry } from 'prom-client';
import type { EngineStats } from '../engine/batch-engine.js';
import { BLOCK_TOKENS } from '../engine/prefix-cache.js';

export interface VllmMetricsSource {
  /** undefined while the model loads. */
  engine(): EngineStats | undefined;
  /** The served model's name (`--model-name`), vLLM's `model_name` label. */
  readonly modelName: string;
}

/** vLLM labels its engine core's series with its index; moe-serve has one engine. */
const ENGINE = '0';

export function registerVllmMetrics(registry: Registry, source: VllmMetricsSource): void {
  const registers = [registry];
  const labels = { model_name: source.modelName, engine: ENGINE };
  const engineGauge = (name: string, help: string, read: (s: EngineStats) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['model_name', 'engine'],
      registers,
      collect() {
        const s = source.engine();
        this.labels(labels).set(s ? read(s) : 0);
      },
    });
  // Sequences, as vLLM counts them: a request with n > 1 is n of them.
  engineGauge('vllm:num_requests_running', 'Number of requests in model execution batches.', (s) => s.running);
  engineGauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', (s) => s.waiting);
  engineGauge(
    'vllm:kv_cache_usage_perc',
    'KV-cache usage. 1 means 100 percent usage. (moe-serve: KV rows reserved by running requests, each its prompt plus max_tokens, over the --kv-cache-mb budget)',
    kvCacheUsage,
  );

  // moe-serve serves no LoRA adapters: one series saying none run, none wait and none can be loaded.
  new Gauge({
    name: 'vllm:lora_requests_info',
    help: 'Running stats on lora requests. (moe-serve: no LoRA adapters; max_lora is 0)',
    labelNames: ['max_lora', 'waiting_lora_adapters', 'running_lora_adapters'],
    registers,
    collect() {
      // As vLLM's set_to_current_time(): the EPP keeps the series with the latest time.
      this.labels({ max_lora: '0', waiting_lora_adapters: '', running_lora_adapters: '' }).set(Date.now() / 1000);
    },
  });

  // An info metric as vLLM writes it (a gauge set to 1, the configuration in its labels), with the labels of
  // vLLM's CacheConfig that apply here; no sample while the model loads (vLLM writes it once its engine is up).
  new Gauge({
    name: 'vllm:cache_config_info',
    help: 'Information of the LLMEngine CacheConfig (moe-serve: num_gpu_blocks is the KV budget in blocks of block_size tokens)',
    labelNames: ['block_size', 'num_gpu_blocks', 'enable_prefix_caching', 'engine'],
    registers,
    collect() {
      this.reset();
      const s = source.engine();
      if (s) this.labels(cacheConfigLabels(s)).set(1);
    },
  });
}

/** Reserved over capacity: the share of the KV budget the admission gate no longer has for new requests. */
function kvCacheUsage(s: EngineStats): number {
  return bounded(s.kvTokensCapacity) ? s.kvTokensReserved / s.kvTokensCapacity : 0;
}

/**
 * vLLM's CacheConfig labels. A sequence's KV cache here is one buffer, not paged blocks: the block is the
 * prefix cache's (vLLM's default size too), whether that cache is on or off, and num_gpu_blocks is the KV
 * budget counted in such blocks, empty when the budget is unbounded (the EPP then skips it).
 */
function cacheConfigLabels(s: EngineStats): Record<'block_size' | 'num_gpu_blocks' | 'enable_prefix_caching' | 'engine', string> {
  return {
    block_size: String(BLOCK_TOKENS),
    num_gpu_blocks: bounded(s.kvTokensCapacity) ? String(Math.floor(s.kvTokensCapacity / BLOCK_TOKENS)) : '',
    // Python's str() of a bool, as vLLM writes it.
    enable_prefix_caching: s.prefixCache ? 'True' : 'False',
    engine: ENGINE,
  };
}

/** A budget a scheduler without maxKvTokens reports as Number.MAX_SAFE_INTEGER; 0 before the engine exists. */
function bounded(capacityTokens: number): boolean {
  return capacityTokens > 0 && capacityTokens < Number.MAX_SAFE_INTEGER;
}
