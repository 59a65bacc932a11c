// The routing trace (`--trace FILE`): JSON Lines, one line per (request, step, layer) of a sparse layer.
import { z } from 'zod';

export const traceLine = z.object({
  /** Request number, in order of arrival. */
  request: z.number().int().nonnegative(),
  /** Forward step within the request: 0 is the prompt (prefill), then one per generated token. */
  step: z.number().int().nonnegative(),
  layer: z.number().int().nonnegative(),
  /** Experts chosen for each token of the step, most probable first. */
  experts: z.array(z.array(z.number().int().nonnegative())),
  /**
   * Router lookahead made at this layer: lookahead[d - 1] is the set of experts predicted for the d-th
   * sparse layer after this one (header.sparse_layers gives which) by applying that layer's router to
   * this layer's hidden state: what the prefetcher loads.
   */
  lookahead: z.array(z.array(z.number().int().nonnegative())).default([]),
});

export type TraceLine = z.infer<typeof traceLine>;

/** First line of a trace file: what the trace was recorded from. */
export const traceHeader = z.object({
  trace: z.literal('moe-serve routing trace'),
  version: z.literal(1),
  model: z.string(),
  num_layers: z.number().int().positive(),
  num_experts: z.number().int().positive(),
  top_k: z.number().int().positive(),
  /** Bytes of one expert in compute form, so budgets in the replay tool mean what they mean in the server. */
  expert_bytes: z.number().int().positive(),
  sparse_layers: z.array(z.number().int().nonnegative()),
});

export type TraceHeader = z.infer<typeof traceHeader>;
