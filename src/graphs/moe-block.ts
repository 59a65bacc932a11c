// The routed-experts graph with expert weights as inputs: adds the weighted outputs of `slots` experts to
// the residual stream. For slot s: rows_s lists the token rows routed to that expert; scatter_s
// (tokens x rows_s) holds the routing weight of token t for the j-th routed row, zero elsewhere, so one
// MatMul both weights and scatters the expert's outputs back to their tokens:
//   hidden = residual + sum_s scatter_s @ expert_s(moe_input[rows_s])
// The expert store supplies the weights (any compute form, see matrix.ts), so one session serves every
// layer. This is the route for GPU providers, where the tensors stay on the device; on the CPU provider
// each expert is a session of its own with prepacked weights (expert-ffn.ts).
import { swiGlu, type MatrixForm } from './matrix.js';
import { GraphBuilder, type Value } from './onnx-builder.js';

export interface ExpertForms {
  readonly gate: MatrixForm;
  readonly up: MatrixForm;
  readonly down: MatrixForm;
}

/**
 * The routed experts a fused run starts with (attention-block.ts, lm-head.ts): the device's experts' forms
 * (null with no slots) and slot count, and whether a sum computed on the CPU is added too.
 */
export interface ExpertsShape {
  readonly forms: ExpertForms | null;
  readonly slots: number;
  readonly hostSum: boolean;
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
  /** graphs that start with a layer's routed experts (attention-block.ts, lm-head.ts): that layer's residual and MoE input */
  fusedResidual: 'experts_residual',
  fusedMoeInput: 'experts_moe_input',
  /** (tokens, H): the sum of the experts computed on the CPU provider (hybrid-experts.ts) */
  fusedHostSum: 'experts_host_sum',
} as const;

export function buildMoeBlock(v: MoeBlockVariant): Uint8Array {
  const g = new GraphBuilder(`moe_block_${v.slots}`);
  const H = v.hiddenSize;
  const acc = addRoutedExperts(g, g.input(MOE.residual, 'float32', ['tokens', H]), g.input(MOE.moeInput, 'float32', ['tokens', H]), v.forms, v.slots);
  g.output(acc, MOE.hidden, 'float32', ['tokens', H]);
  return g.toModelBytes();
}

/**
 * The front of a graph that starts with a layer's routed experts (a fused attention block or LM head): adds
 * that layer's residual and MoE input, the slots and the CPU's sum as inputs, and returns
 * residual + sum_s scatter_s @ expert_s(moeInput[rows_s]) (+ host sum), (rows, H).
 */
export function fusedExperts(g: GraphBuilder, hiddenSize: number, shape: ExpertsShape): Value {
  const dims = ['expert_rows', hiddenSize];
  const acc = addRoutedExperts(g, g.input(MOE.fusedResidual, 'float32', dims), g.input(MOE.fusedMoeInput, 'float32', dims), shape.forms, shape.slots);
  return shape.hostSum ? g.op('Add', [acc, g.input(MOE.fusedHostSum, 'float32', dims)]) : acc;
}

/** Adds the slot inputs (rows, scatter and weights of each slot) and returns residual + sum_s scatter_s @ expert_s(moeInput[rows_s]). */
function addRoutedExperts(g: GraphBuilder, residual: Value, moeInput: Value, forms: ExpertForms | null, slots: number): Value {
  if (slots > 0 && !forms) throw new RangeError('routed-experts slots without their forms');
  let acc = residual;
  for (let s = 0; s < slots; s++) {
    const rows = g.input(MOE.rows(s), 'int64', [`routed_${s}`]);
    const scatter = g.input(MOE.scatter(s), 'float32', ['tokens', `routed_${s}`]);
    const y = swiGlu(g, g.op('Gather', [moeInput, rows]), { gate: MOE.gate(s), up: MOE.up(s), down: MOE.down(s) }, forms as ExpertForms);
    acc = g.op('Add', [acc, g.op('MatMul', [scatter, y])]);
  }
  return acc;
}
