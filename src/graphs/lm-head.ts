// Final norm and vocabulary projection of selected rows: logits = norm(hidden[rows]) @ lm_head^T.
// Selecting rows in the graph keeps a device-resident hidden state on the device (decode needs only
// the last row; conformance checks need all of them).
import { linear, rmsNorm } from './layers.js';
import { GraphBuilder } from './onnx-builder.js';

export interface LmHeadVariant {
  readonly hiddenSize: number;
  readonly vocabSize: number;
  readonly rmsNormEps: number;
}

export const LM_HEAD_IO = { hidden: 'hidden', rows: 'rows', norm: 'w_norm', lmHead: 'w_lm_head', logits: 'logits' } as const;

export function buildLmHead(v: LmHeadVariant): Uint8Array {
  const g = new GraphBuilder('lm_head');
  const hidden = g.input(LM_HEAD_IO.hidden, 'float32', ['tokens', v.hiddenSize]);
  const rows = g.input(LM_HEAD_IO.rows, 'int64', ['rows']);
  const norm = g.input(LM_HEAD_IO.norm, 'float32', [v.hiddenSize]);
  const lm = g.input(LM_HEAD_IO.lmHead, 'float32', [v.vocabSize, v.hiddenSize]);
  g.output(linear(g, rmsNorm(g, g.op('Gather', [hidden, rows]), norm, v.rmsNormEps), lm), LM_HEAD_IO.logits, 'float32', ['rows', v.vocabSize]);
  return g.toModelBytes();
}
