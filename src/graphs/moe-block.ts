// The routed-experts graph with expert weights as inputs: adds the weighted outputs of `slots` experts to
// the residual stream. For slot s: rows_s lists the token rows routed to that expert; scatter_s
// (tokens x rows_s) holds the routing weight of token t for the j-th routed row, zero elsewhere, so one
// MatMul both weights and scatters the expert's outputs back to their tokens:
//   hidden = residual + sum_s scatter_s @ expert_s(moe_input[rows_s])
// The expert store supplies the weights (any compute form, see matrix.ts), so one session serves every
// layer. This is the route for GPU providers, where the tensors stay on the device; on the CPU provider
// each expert is a session of its own with prepacked weights (expert-ffn.ts).
import { swiGlu, type MatrixForm } from './matrix.js';
import { GraphBuilder } from './onnx-builder.js';

export interface ExpertForms {
  readonly gate: MatrixForm;
  readonly up: MatrixForm;
  readonly down: MatrixForm;
}

export interface MoeBlockVariant {
  readonly hiddenSize: number;
  readonly forms: ExpertForms;
  readonly slots: number;
}

export const MOE = {
  residual: 'residual',
  moeInput: 'moe_input',
  rows: (s: number) => `rows_${s}`,
  scatter: (s: number) => `scatter_${s}`,
  gate: (s: number) => `w_gate_${s}`,
  up: (s: number) => `w_up_${s}`,
  down: (s: number) => `w_down_${s}`,
  hidden: 'hidden_out',
} as const;

export function buildMoeBlock(v: MoeBlockVariant): Uint8Array {
  const g = new GraphBuilder(`moe_block_${v.slots}`);
  const H = v.hiddenSize;
  let acc = g.input(MOE.residual, 'float32', ['tokens', H]);
  const x = g.input(MOE.moeInput, 'float32', ['tokens', H]);
  for (let s = 0; s < v.slots; s++) {
    const rows = g.input(MOE.rows(s), 'int64', [`routed_${s}`]);
    const scatter = g.input(MOE.scatter(s), 'float32', ['tokens', `routed_${s}`]);
    const y = swiGlu(g, g.op('Gather', [x, rows]), { gate: MOE.gate(s), up: MOE.up(s), down: MOE.down(s) }, v.forms);
    acc = g.op('Add', [acc, g.op('MatMul', [scatter, y])]);
  }
  g.output(acc, MOE.hidden, 'float32', ['tokens', H]);
  return g.toModelBytes();
}
