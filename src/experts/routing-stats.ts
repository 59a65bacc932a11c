// Statistics of a routing trace that decide whether an expert cache can win: how skewed expert
// popularity is, how much consecutive tokens reuse experts, and how well one layer predicts the next.
// Each comes with what independent uniform routing would give (k/E), so a synthetic model's routing can
// be checked against a trained one's (`npm run routing-stats`). Pure: a trace in, numbers out.
import type { TraceHeader, TraceLine } from './trace-format.js';

export interface RoutingStats {
  readonly numExperts: number;
  readonly topK: number;
  /** Routed tokens (each counted once per sparse layer it passed). */
  readonly tokenLayers: number;
  /** k/E: the expected overlap share, recall and co-activation of independent uniform routing. */
  readonly independent: number;
  /** Per layer: Shannon entropy of expert shares over log2(E); 1 is uniform. */
  readonly entropyMean: number;
  readonly entropyMin: number;
  /** How many experts make the "most popular 10%" (round(E / 10), at least 1). */
  readonly topExperts: number;
  /** Per layer: share of routed slots taken by the topExperts most popular experts. */
  readonly topShareMean: number;
  readonly topShareMax: number;
  /** Mean |experts(t) ∩ experts(t-1)| / k over consecutive tokens of a sequence at one layer. */
  readonly temporalReuse: number | null;
  /**
   * Over one-token (decode) steps: the share of the next sparse layer's experts that this layer's router
   * lookahead predicted. A prompt step's lookahead votes over all its tokens, so it is left out.
   */
  readonly lookaheadRecall: number | null;
  /** Mean over experts i at layer l (that were used) of max_j P(j at next sparse layer | i at l). */
  readonly coactivation: number | null;
  /** The same with the condition dropped: mean over layers of max_j P(j at the next sparse layer). */
  readonly coactivationBaseline: number | null;
}

type Header = Pick<TraceHeader, 'num_experts' | 'top_k' | 'sparse_layers'>;

/** Statistics of a trace's lines; `header` gives E, k and which layers are sparse. */
export function routingStats(header: Header, lines: readonly TraceLine[]): RoutingStats {
  const E = header.num_experts;
  const k = header.top_k;
  const layers = [...header.sparse_layers].sort((a, b) => a - b);
  const nextLayer = new Map(layers.slice(0, -1).map((l, i) => [l, layers[i + 1] as number]));
  // Lines of one request in step order, so tokens come out in sequence order whatever the file order.
  const ordered = [...lines].sort((a, b) => a.request - b.request || a.step - b.step || a.layer - b.layer);
  const byToken = new Map<string, TraceLine>();
  for (const line of ordered) byToken.set(`${line.request}/${line.step}/${line.layer}`, line);

  // Popularity.
  const counts = new Map<number, Float64Array>();
  let tokenLayers = 0;
  for (const line of ordered) {
    const c = counts.get(line.layer) ?? new Float64Array(E);
    counts.set(line.layer, c);
    for (const experts of line.experts) {
      tokenLayers++;
      for (const e of experts) c[e] = (c[e] as number) + 1;
    }
  }
  const topExperts = Math.max(1, Math.round(E / 10));
  const entropies: number[] = [];
  const topShares: number[] = [];
  for (const c of counts.values()) {
    const total = c.reduce((n, x) => n + x, 0);
    if (total === 0) continue;
    const shares = Array.from(c, (x) => x / total);
    entropies.push(-shares.reduce((h, s) => (s > 0 ? h + s * Math.log2(s) : h), 0) / Math.log2(E));
    topShares.push([...shares].sort((a, b) => b - a).slice(0, topExperts).reduce((n, s) => n + s, 0));
  }

  // Temporal reuse: consecutive tokens of one request at one layer, across step boundaries too.
  const previous = new Map<string, readonly number[]>();
  const reuse = new Mean();
  for (const line of ordered) {
    const key = `${line.request}/${line.layer}`;
    for (const experts of line.experts) {
      const before = previous.get(key);
      if (before) reuse.add(overlap(before, experts) / k);
      previous.set(key, experts);
    }
  }

  // Cross-layer: the lookahead's recall, and co-activation of expert pairs on the same token.
  const recall = new Mean();
  const pair = new Map<number, { given: Float64Array; joint: Float64Array[]; next: Float64Array; tokens: number }>();
  for (const line of ordered) {
    const next = nextLayer.get(line.layer);
    if (next === undefined) continue;
    const after = byToken.get(`${line.request}/${line.step}/${next}`);
    if (!after) continue;
    const predicted = line.lookahead[0];
    if (predicted && line.experts.length === 1 && after.experts.length === 1) {
      const actual = after.experts[0] as readonly number[];
      if (actual.length > 0) recall.add(overlap(predicted, actual) / actual.length);
    }
    let p = pair.get(line.layer);
    if (!p) pair.set(line.layer, (p = { given: new Float64Array(E), joint: Array.from({ length: E }, () => new Float64Array(E)), next: new Float64Array(E), tokens: 0 }));
    line.experts.forEach((experts, t) => {
      const later = after.experts[t];
      if (!later) return;
      p.tokens++;
      for (const j of later) p.next[j] = (p.next[j] as number) + 1;
      for (const i of experts) {
        p.given[i] = (p.given[i] as number) + 1;
        const row = p.joint[i] as Float64Array;
        for (const j of later) row[j] = (row[j] as number) + 1;
      }
    });
  }
  const coactivation = new Mean();
  const baseline = new Mean();
  for (const p of pair.values()) {
    if (p.tokens === 0) continue;
    const perLayer = new Mean();
    for (let i = 0; i < E; i++) {
      const n = p.given[i] as number;
      if (n > 0) perLayer.add(Math.max(...(p.joint[i] as Float64Array)) / n);
    }
    if (perLayer.value !== null) coactivation.add(perLayer.value);
    baseline.add(Math.max(...p.next) / p.tokens);
  }

  return {
    numExperts: E,
    topK: k,
    tokenLayers,
    independent: k / E,
    entropyMean: mean(entropies),
    entropyMin: Math.min(...entropies),
    topExperts,
    topShareMean: mean(topShares),
    topShareMax: Math.max(...topShares),
    temporalReuse: reuse.value,
    lookaheadRecall: recall.value,
    coactivation: coactivation.value,
    coactivationBaseline: baseline.value,
  };
}

function overlap(a: readonly number[], b: readonly number[]): number {
  const set = new Set(a);
  return b.reduce((n, e) => n + (set.has(e) ? 1 : 0), 0);
}

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? Number.NaN : xs.reduce((n, x) => n + x, 0) / xs.length;
}

class Mean {
  private sum = 0;
  private n = 0;

  add(x: number): void {
    this.sum += x;
    this.n++;
  }

  get value(): number | null {
    return this.n === 0 ? null : this.sum / this.n;
  }
}
