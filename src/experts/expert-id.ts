// Experts are numbered model-wide so that caches, policies and traces use one small integer per expert.

export interface ExpertKey {
  readonly layer: number;
  readonly expert: number;
}

/** layer * numExperts + expert */
export type ExpertId = number;

export class ExpertIds {
  constructor(
    readonly numLayers: number,
    readonly numExperts: number,
  ) {}

  get count(): number {
    return this.numLayers * this.numExperts;
  }

  id(key: ExpertKey): ExpertId {
    if (key.layer < 0 || key.layer >= this.numLayers || key.expert < 0 || key.expert >= this.numExperts) {
      throw new RangeError(`no expert ${key.expert} in layer ${key.layer}`);
    }
    return key.layer * this.numExperts + key.expert;
  }

  key(id: ExpertId): ExpertKey {
    return { layer: Math.floor(id / this.numExperts), expert: id % this.numExperts };
  }
}
