// One routed expert as a graph of its own, its weights baked in as initializers: y = down(silu(gate(x)) * up(x)).
// onnxruntime prepacks initializers when it creates the session, which is what makes the quantized CPU
// kernels fast (MatMulNBits with accuracy_level 4: ~5x the fp32 speed at Qwen3-30B-A3B's expert shape,
// PLATFORM.md); weights fed as inputs are unpacked again on every run. So on the CPU provider the expert
// cache holds one such session per resident expert, and the forward pass runs each over the rows routed
// to it and adds the weighted results itself. Gate and up are one matmul over their stacked rows (each
// kernel call has a fixed cost, ~8 us at tiny-moe's 256 x 256 on these machines).
import { linear, type MatrixForm } from './matrix.js';
import { attr, GraphBuilder, type ConstTensor, type GraphModel, type Value } from './onnx-builder.js';

export const EXPERT_FFN = { x: 'x', y: 'y', gateUp: 'w_gate_up', down: 'w_down' } as const;

export interface ExpertFfnForms {
  /** gate rows then up rows: (2 I, H) */
  readonly gateUp: MatrixForm;
  /** (H, I) */
  readonly down: MatrixForm;
}

/** x (rows, H) -> y (rows, H); `constants` holds the tensors of w_gate_up and w_down (matrix.ts). */
export function buildExpertFfn(hiddenSize: number, forms: ExpertFfnForms, constants: ReadonlyMap<string, ConstTensor>): GraphModel {
  const g = new GraphBuilder('expert_ffn', constants);
  const x = g.input(EXPERT_FFN.x, 'float32', ['rows', hiddenSize]);
  const I = forms.down.cols;
  const gateUp = linear(g, x, EXPERT_FFN.gateUp, forms.gateUp);
  const [gate, up] = g.opN('Split', [gateUp, g.constInt64([I, I])], 2, { axis: attr.int(-1) }) as [Value, Value];
  // silu(x) = x * sigmoid(1 * x): one QuickGelu node instead of Sigmoid and Mul (each node costs ~4 us)
  const silu = g.op('QuickGelu', [gate], { alpha: attr.float(1) }, { domain: 'com.microsoft' });
  const y = linear(g, g.op('Mul', [silu, up]), EXPERT_FFN.down, forms.down, null, EXPERT_FFN.y);
  g.output(y, EXPERT_FFN.y, 'float32', ['rows', hiddenSize]);
  return g.toModel();
}
