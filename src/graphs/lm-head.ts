// Final norm and vocabulary projection of selected rows: logits = norm(hidden[rows]) @ lm_head^T.
// Selecting rows in the graph keeps a device-resident hidden state on the device (decode needs only
// the last row; conformance checks need all of them).
import { rmsNorm } from './layers.js';
import { linear, type MatrixForm } from './matrix.js';
import { fusedExperts, type ExpertsShape } from './moe-block.js';
import { GraphBuilder, type ConstTensor, type GraphModel } from './onnx-builder.js';

export interface LmHeadVariant {
  readonly hiddenSize: number;
  readonly vocabSize: number;
  readonly rmsNormEps: number;
  readonly lmHead: MatrixForm;
}

export const LM_HEAD_IO = {
  hidden: 'hidden',
  rows: 'rows',
  norm: 'w_norm',
  lmHead: 'w_lm_head',
  logits: 'logits',
} as const;

/**
 * `constants`: the weights, when baked into the session (CPU); absent: they are inputs. `experts` (GPU
 * providers): the head starts with the last sparse layer's routed experts, which make its hidden input from
 * that layer's residual and MoE input (moe-block.ts), so that they cost no run of their own.
 */
export function buildLmHead(v: LmHeadVariant, constants?: ReadonlyMap<string, ConstTensor>, experts?: ExpertsShape): GraphModel {
  const g = new GraphBuilder('lm_head', constants);
  const H = v.hiddenSize;
  const hidden = experts
    ? fusedExperts(g, H, experts)
    : g.input(LM_HEAD_IO.hidden, 'float32', ['tokens', H]);
  const rows = g.input(LM_HEAD_IO.rows, 'int64', ['rows']);
  const norm = g.tensor(LM_HEAD_IO.norm, 'float32', [v.hiddenSize]);
  const x = rmsNorm(g, g.op('Gather', [hidden, rows]), norm, v.rmsNormEps);
  g.output(linear(g, x, LM_HEAD_IO.lmHead, v.lmHead), LM_HEAD_IO.logits, 'float32', ['rows', v.vocabSize]);
  return g.toModel();
}
