// Which experts will a waiting request use, and how many of them are in the device cache now? The score
// that expert-aware admission ranks waiting requests by (scheduler.ts, serve --expert-aware-scheduling).
//
// A router sees a token's hidden state, and in the early layers that is mostly the token's own embedding,
// so one token id tends to go to the same experts wherever it appears. The predictor is therefore a table,
// learned online from the routing every forward step computes anyway: for each token id seen, the experts
// it was last routed to at each sparse layer. A prompt's prediction at a layer is the experts its tokens
// vote for most there (top_k x PREDICTED_PER_TOP_K); its score is the share of those resident now. Deeper
// layers depend more on context and are predicted worse; they are counted alike, since a miss costs the
// same at any layer. No model run, no tensors: a waiting request costs a few table reads to score.
//
// Memory: one row of (sparse layers x top_k) expert ids per token id seen, a byte each (two beyond 256
// experts), plus a Map entry (a few tens of bytes). Bounded by the vocabulary: tiny-moe (8,192 ids,
// 6 x 4) 192 KiB at most; Qwen3-30B-A3B (151,936 ids, 48 sparse layers x top-8) 384 bytes a row, 58 MB
// if every id were seen; DeepSeek-V3 (129,280 ids, 58 x 8) 60 MB. A server sees a fraction of its
// vocabulary, so far less in practice.
import { sparseLayerIndices, type ModelSpec } from '../model/hf-config.js';
import { countVotes } from '../experts/lookahead-votes.js';
import type { StepRoutingObserver } from './forward.js';
import type { Routing } from './routing.js';

/** What the score asks of the expert cache (ExpertStore has both). */
export interface ExpertResidency {
  isResident(layer: number, expert: number): boolean;
  /** Share of all routed experts resident now, 0..1: the expected share for a prompt the table knows nothing of. */
  readonly residentShare: number;
}

/**
 * Experts predicted per sparse layer, as a multiple of top_k: a prompt's tokens spread over more experts
 * than one token's top_k, and the experts most of them share are the ones worth finding resident.
 */
export const PREDICTED_PER_TOP_K = 2;

export interface ExpertPrediction {
  /** Per sparse layer, in layer order: the experts the prompt's tokens voted for most, most voted first (ties: lower id). */
  readonly experts: readonly (readonly number[])[];
  /** Distinct prompt token ids the table had not seen: once it learns one, predict() makes the prediction again. */
  readonly unknownTokenIds: readonly number[];
}

export type AffinityShape = Pick<ModelSpec, 'numLayers' | 'numExperts' | 'topK' | 'sparseLayers'>;

/** Rows the table starts with; it doubles as token ids arrive. */
const INITIAL_ROWS = 1024;

export class ExpertAffinity implements StepRoutingObserver {
  /** The sparse layers, in order. */
  private readonly sparseLayers: readonly number[];
  /** layer -> its index among the sparse layers; -1 for a dense layer */
  private readonly slotOfLayer: Int32Array;
  /** sparse layers x top_k */
  private readonly rowLength: number;
  private readonly rowOf = new Map<number, number>();
  /** (rows, sparse layers, top_k): the experts each token id seen was last routed to */
  private routes: Uint8Array | Uint16Array;

  constructor(
    private readonly shape: AffinityShape,
    private readonly predictedPerLayer = PREDICTED_PER_TOP_K * shape.topK,
  ) {
    this.sparseLayers = sparseLayerIndices(shape);
    this.slotOfLayer = new Int32Array(shape.numLayers).fill(-1);
    this.sparseLayers.forEach((layer, slot) => (this.slotOfLayer[layer] = slot));
    this.rowLength = this.sparseLayers.length * shape.topK;
    this.routes = this.newRoutes(INITIAL_ROWS);
  }

  /** Token ids the table has a row for. */
  get tokenIdsSeen(): number {
    return this.rowOf.size;
  }

  /**
   * Learns one sparse layer's routing of a committed step: row t of `routing` is tokens[t]'s. A step's
   * layers arrive together, so a token id's row is whole once its first step is observed.
   */
  onStepRouting(layer: number, tokens: readonly number[], routing: Routing): void {
    const slot = this.slotOfLayer[layer] ?? -1;
    if (slot < 0) return;
    const k = this.shape.topK;
    if (routing.topK !== k || routing.tokens !== tokens.length) {
      throw new RangeError(`routing of ${routing.tokens} tokens x top-${routing.topK} for ${tokens.length} tokens of a top-${k} model`);
    }
    for (let t = 0; t < tokens.length; t++) {
      const at = this.rowFor(tokens[t] as number) * this.rowLength + slot * k;
      this.routes.set(routing.experts.subarray(t * k, (t + 1) * k), at);
    }
  }

  /**
   * The experts a prompt is predicted to use; `previous` (this prompt's last prediction) is returned as it
   * is unless the table has since learned one of the token ids it lacked.
   */
  predict(promptIds: readonly number[], previous?: ExpertPrediction): ExpertPrediction {
    if (previous !== undefined && !previous.unknownTokenIds.some((id) => this.rowOf.has(id))) return previous;
    const k = this.shape.topK;
    const unknown = new Set<number>();
    // Where each known prompt token's row starts, once per occurrence: a repeated token votes again.
    const rows: number[] = [];
    for (const id of promptIds) {
      const row = this.rowOf.get(id);
      if (row === undefined) unknown.add(id);
      else rows.push(row * this.rowLength);
    }
    // Each token votes for the top_k experts it was last routed to, ranked as the router lookahead ranks its votes.
    const experts = this.sparseLayers.map((_, s) => countVotes(rows.flatMap((base) => [...this.routes.subarray(base + s * k, base + (s + 1) * k)])).experts.slice(0, this.predictedPerLayer));
    return { experts, unknownTokenIds: [...unknown] };
  }

  /**
   * The share of the predicted experts resident now, in [0, 1]; for a prediction with no experts (no token
   * of the prompt seen yet), the cache's resident share: what a prompt routed at random would find.
   */
  score(prediction: ExpertPrediction, residency: ExpertResidency): number {
    let predicted = 0;
    let resident = 0;
    prediction.experts.forEach((experts, slot) => {
      const layer = this.sparseLayers[slot] as number;
      for (const e of experts) {
        predicted++;
        if (residency.isResident(layer, e)) resident++;
      }
    });
    return predicted === 0 ? Math.min(1, Math.max(0, residency.residentShare)) : resident / predicted;
  }

  /** The row of `tokenId`, made (and the table grown) the first time it is seen. */
  private rowFor(tokenId: number): number {
    let row = this.rowOf.get(tokenId);
    if (row !== undefined) return row;
    row = this.rowOf.size;
    if ((row + 1) * this.rowLength > this.routes.length) {
      const grown = this.newRoutes(2 * (this.routes.length / Math.max(1, this.rowLength)));
      grown.set(this.routes);
      this.routes = grown;
    }
    this.rowOf.set(tokenId, row);
    return row;
  }

  private newRoutes(rows: number): Uint8Array | Uint16Array {
    const length = rows * this.rowLength;
    return this.shape.numExperts <= 256 ? new Uint8Array(length) : new Uint16Array(length);
  }
}
