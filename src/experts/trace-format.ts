// The routing trace (`--trace FILE`): JSON Lines, one line per (request, step, layer) of a sparse layer.
// With `pass` and `lookahead_votes` (written since they were added; still version 1, since they and
// `prompt_tokens` are optional and older traces read as before) a trace determines the server's batched forward passes and
// each pass's prefetch order exactly, so the replay tool makes the device cache's calls exactly.
import { z } from 'zod';

export const traceLine = z.object({
  /** Request number, in order of arrival. */
  request: z.number().int().nonnegative(),
  /** Forward step within the request: 0 is the prompt (prefill), then one per generated token. */
  step: z.number().int().nonnegative(),
  /**
   * The server's forward pass: a count of committed batched passes, increasing through the trace. Lines
   * with the same pass were computed together (continuous batching) and used the expert cache once per
   * layer. Absent in older traces, where the replay infers passes (replay/trace-accesses.ts).
   */
  pass: z.number().int().nonnegative().optional(),
  layer: z.number().int().nonnegative(),
  /** Experts chosen for each token of the step, most probable first. */
  experts: z.array(z.array(z.number().int().nonnegative())),
  /**
   * Router lookahead made at this layer: lookahead[d - 1] is the set of experts predicted for the d-th
   * sparse layer after this one (header.sparse_layers gives which) by applying that layer's router to
   * this layer's hidden state, most voted first: this request's part of what its pass prefetches.
   */
  lookahead: z.array(z.array(z.number().int().nonnegative())).default([]),
  /**
   * lookahead_votes[d][i]: how many of the step's tokens had lookahead[d][i] among their top-k
   * (lookahead-votes.ts). A pass prefetches its requests' votes summed, so with them the replay ranks a
   * batch's lookahead exactly; older traces have only the ranking, and the replay estimates the votes
   * of a multi-token line batched with others.
   */
  lookahead_votes: z.array(z.array(z.number().int().positive())).optional(),
  /**
   * The request's prompt, as token ids: on its first line only (step 0, its first sparse layer), so a trace
   * holds each prompt once. What a load balancer hashes to route by prefix (replay/route-study.ts). Absent in
   * older traces, and for requests the writer was given no prompt for.
   */
  prompt_tokens: z.array(z.number().int().nonnegative()).optional(),
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
