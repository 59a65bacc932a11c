// Small graphs that move rows of device-resident (T, H) tensors, for batching sequences on GPU providers,
// where JS cannot touch the data: concatenate several sequences' rows, cut one sequence's rows out, and add
// rows computed on the host (experts run on the CPU) to device-resident ones.
import { attr, GraphBuilder } from './onnx-builder.js';

export const ROWS = {
  part: (i: number) => `part_${i}`,
  joined: 'joined',
  groupPart: (g: number, i: number) => `group_${g}_part_${i}`,
  groupJoined: (g: number) => `joined_${g}`,
  source: 'source',
  start: 'start',
  end: 'end',
  slice: 'slice',
  addend: 'addend',
  sum: 'sum',
} as const;

/** (T_0 + ... + T_{n-1}, H) from n inputs of (T_i, H). */
export function buildConcatRows(parts: number, hiddenSize: number): Uint8Array {
  const g = new GraphBuilder(`concat_rows_${parts}`);
  const inputs = Array.from({ length: parts }, (_, i) => g.input(ROWS.part(i), 'float32', [`rows_${i}`, hiddenSize]));
  g.output(g.op('Concat', inputs, { axis: attr.int(0) }), ROWS.joined, 'float32', ['rows', hiddenSize]);
  return g.toModelBytes();
}

/** Several concatenations in one run: output g is (T_0 + ... + T_{n-1}, H) of group g's n inputs. */
export function buildConcatRowGroups(groups: number, parts: number, hiddenSize: number): Uint8Array {
  const g = new GraphBuilder(`concat_row_groups_${groups}x${parts}`);
  for (let k = 0; k < groups; k++) {
    const inputs = Array.from({ length: parts }, (_, i) => g.input(ROWS.groupPart(k, i), 'float32', [`rows_${i}`, hiddenSize]));
    g.output(g.op('Concat', inputs, { axis: attr.int(0) }), ROWS.groupJoined(k), 'float32', ['rows', hiddenSize]);
  }
  return g.toModelBytes();
}

/** Rows [start, end) of a (T, H) input. */
export function buildSliceRows(hiddenSize: number): Uint8Array {
  const g = new GraphBuilder('slice_rows');
  const source = g.input(ROWS.source, 'float32', ['rows', hiddenSize]);
  const start = g.input(ROWS.start, 'int64', [1]);
  const end = g.input(ROWS.end, 'int64', [1]);
  g.output(g.op('Slice', [source, start, end, g.constInt64([0])]), ROWS.slice, 'float32', ['slice', hiddenSize]);
  return g.toModelBytes();
}

/** source + addend, both (T, H): the addend comes from the host, the sum stays on the device. */
export function buildAddRows(hiddenSize: number): Uint8Array {
  const g = new GraphBuilder('add_rows');
  const source = g.input(ROWS.source, 'float32', ['rows', hiddenSize]);
  const addend = g.input(ROWS.addend, 'float32', ['rows', hiddenSize]);
  g.output(g.op('Add', [source, addend]), ROWS.sum, 'float32', ['rows', hiddenSize]);
  return g.toModelBytes();
}
