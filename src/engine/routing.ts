// Top-k expert routing from router logits, as transformers' MoE blocks do it:
//   probs = softmax(logits) in fp32; (weights, experts) = topk(probs, k); if normalize: weights /= sum
// then grouping the tokens of a step by the expert they were sent to.

/** For each of `tokens` rows: the k chosen experts (most probable first) and their weights. */
export interface Routing {
  readonly tokens: number;
  readonly topK: number;
  /** (tokens, topK) expert ids */
  readonly experts: Int32Array;
  /** (tokens, topK) routing weights */
  readonly weights: Float32Array;
}

export function routeTokens(logits: Float32Array, numExperts: number, topK: number, normalize: boolean): Routing {
  const tokens = logits.length / numExperts;
  const experts = new Int32Array(tokens * topK);
  const weights = new Float32Array(tokens * topK);
  const probs = new Float64Array(numExperts);
  for (let t = 0; t < tokens; t++) {
    const row = logits.subarray(t * numExperts, (t + 1) * numExperts);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (let e = 0; e < numExperts; e++) sum += probs[e] = Math.exp((row[e] as number) - max);
    // Selection by repeated max keeps ties on the lower index, like torch.topk on CPU.
    const chosen = new Set<number>();
    let picked = 0;
    for (let k = 0; k < topK; k++) {
      let best = -1;
      for (let e = 0; e < numExperts; e++) {
        if (!chosen.has(e) && (best < 0 || (probs[e] as number) > (probs[best] as number))) best = e;
      }
      chosen.add(best);
      experts[t * topK + k] = best;
      const p = (probs[best] as number) / sum;
      weights[t * topK + k] = p;
      picked += p;
    }
    if (normalize) {
      for (let k = 0; k < topK; k++) weights[t * topK + k] = (weights[t * topK + k] as number) / picked;
    }
  }
  return { tokens, topK, experts, weights };
}

/** The tokens routed to one expert within a step, with their routing weights. */
export interface ExpertAssignment {
  readonly expert: number;
  readonly rows: readonly number[];
  readonly weights: readonly number[];
}

/** Groups a step's tokens by expert, experts in ascending id order, rows in token order. */
export function groupByExpert(routing: Routing): ExpertAssignment[] {
  const byExpert = new Map<number, { rows: number[]; weights: number[] }>();
  for (let t = 0; t < routing.tokens; t++) {
    for (let k = 0; k < routing.topK; k++) {
      const e = routing.experts[t * routing.topK + k] as number;
      let a = byExpert.get(e);
      if (!a) byExpert.set(e, (a = { rows: [], weights: [] }));
      a.rows.push(t);
      a.weights.push(routing.weights[t * routing.topK + k] as number);
    }
  }
  return [...byExpert.entries()].sort(([a], [b]) => a - b).map(([expert, a]) => ({ expert, ...a }));
}
