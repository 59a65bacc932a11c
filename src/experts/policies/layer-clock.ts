// Where the forward pass is in its cycle over the sparse layers, and how likely each expert is to be used
// when its layer comes round again: what a policy needs to guess an expert's next use under batching.
//
// A forward pass visits the sparse layers in order, once each (a prompt split into use groups visits a
// layer once, in several groups), and the next pass starts over. An expert not in use is next needed,
// at the earliest, when its layer is visited again, and then only if some token of the batch picks it.
// With many sequences in a batch almost every expert of a layer is used at every visit, so recency
// says nothing (LRU evicts exactly the layer that comes next); the distance to the layer's next visit
// and the share of visits the expert was used in do.
import type { ExpertId } from '../expert-id.js';
import { PolicyConfigError } from './policy-config-error.js';
import type { ExpertLayout } from './cache-policy.js';

/** Weight of the latest visit in an expert's use probability: about the last 16 visits of its layer count. */
export const VISIT_DECAY = 1 / 16;

/**
 * (1 - VISIT_DECAY) ** n for the visits an expert sat out; past the table it is below 1e-28, i.e. 0. A
 * victim is chosen among every resident expert, thousands at a real model's budget, so no pow per candidate.
 */
const SAT_OUT = Float64Array.from({ length: 1024 }, (_, n) => (1 - VISIT_DECAY) ** n);

export class LayerClock {
  /** Sparse position (0 = first sparse layer) of each model layer; -1 for a dense one. */
  private readonly position: Int32Array;
  readonly sparseLayers: number;
  private readonly numExperts: number;
  /** Visits so far of each sparse position. */
  private readonly visits: Float64Array;
  /** Per expert: use probability per visit as of its last update, and the visit count then. */
  private readonly probability: Float64Array;
  private readonly updatedAt: Float64Array;
  private readonly usedThisVisit: Uint8Array;
  private current = -1;

  constructor(layout: ExpertLayout | undefined, policyName: string) {
    if (!layout) throw new PolicyConfigError(`the '${policyName}' policy needs the model's expert layout (experts per layer, sparse layers)`);
    const numLayers = Math.max(0, ...layout.sparseLayers) + 1;
    this.position = new Int32Array(numLayers).fill(-1);
    layout.sparseLayers.forEach((layer, i) => (this.position[layer] = i));
    this.sparseLayers = layout.sparseLayers.length;
    this.numExperts = layout.numExperts;
    const ids = numLayers * layout.numExperts;
    this.visits = new Float64Array(this.sparseLayers);
    this.probability = new Float64Array(ids);
    this.updatedAt = new Float64Array(ids);
    this.usedThisVisit = new Uint8Array(ids);
  }

  /** Expert ids the clock knows: every layer up to the last sparse one, times experts per layer. */
  get idCount(): number {
    return this.probability.length;
  }

  /** Sparse position of the expert's layer. */
  positionOf(id: ExpertId): number {
    return this.position[Math.floor(id / this.numExperts)] ?? 0;
  }

  /**
   * A use, in forward order. A use at another layer than the last, or a second use of an expert at the
   * same visit (a model with one sparse layer: the next pass), starts a new visit of its layer.
   */
  use(id: ExpertId): void {
    const at = this.positionOf(id);
    if (at !== this.current || this.usedThisVisit[id] === 1) this.startVisit(at);
    const p = this.useProbability(id);
    this.probability[id] = p + VISIT_DECAY * (1 - p);
    this.updatedAt[id] = this.visits[at] as number;
    this.usedThisVisit[id] = 1;
  }

  /** Decayed share of its layer's visits in which the expert was used (0 if never). */
  useProbability(id: ExpertId): number {
    const missed = (this.visits[this.positionOf(id)] as number) - (this.updatedAt[id] as number);
    // The visit that last updated it counts as used; each visit since, as not used.
    return (this.probability[id] as number) * (SAT_OUT[missed] ?? 0);
  }

  /**
   * Sparse layers from now until the expert's layer is visited next: 1 for the next layer, and a whole
   * cycle for the layer in progress (its experts not in use now are not needed before the next pass).
   */
  layersUntilVisit(id: ExpertId): number {
    const ahead = (this.positionOf(id) - this.current + this.sparseLayers) % this.sparseLayers;
    return ahead === 0 ? this.sparseLayers : ahead;
  }

  /** Expected sparse layers until the expert's next use: its next visit, plus a cycle per visit it sits out. */
  expectedNextUse(id: ExpertId): number {
    const p = Math.max(this.useProbability(id), 1e-6);
    return this.layersUntilVisit(id) + this.sparseLayers * (1 / p - 1);
  }

  private startVisit(at: number): void {
    const base = at * this.numExperts;
    this.usedThisVisit.fill(0, base, base + this.numExperts);
    this.visits[at] = (this.visits[at] as number) + 1;
    this.current = at;
  }
}
