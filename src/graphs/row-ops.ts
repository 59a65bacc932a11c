// Small graphs that move rows of device-resident (T, H) tensors, for batching sequences on GPU providers,
// where JS cannot touch the data: concatenate sequences' rows (several joins in one run), and add rows
// computed on the host (experts run on the CPU) to device-resident ones. Sequences' rows are not cut
// back out by a graph of their own: the attention block reads a row range (attention-block.ts).
import { attr, GraphBuilder } from './onnx-builder.js';

export const ROWS = {
  groupPart: (g: number, i: number) => `group_${g}_part_${i}`,
  groupJoined: (g: number) => `joined_${g}`,
  source: 'source',
  addend: 'addend',
  sum: 'sum',
} as const;

/** Several concatenations in one run: output g is (T_0 + ... + T_{n-1}, H) of group g's n inputs. */
export function buildConcatRowGroups(groups: number, parts: number, hiddenSize: number): Uint8Array {
  const g = new GraphBuilder(`concat_row_groups_${groups}x${parts}`);
  for (let k = 0; k < groups; k++) {
    const inputs = Array.from({ length: parts }, (_, i) => g.input(ROWS.groupPart(k, i), 'float32', [`rows_${i}`, hiddenSize]));
    g.output(g.op('Concat', inputs, { axis: attr.int(0) }), ROWS.groupJoined(k), 'float32', ['rows', hiddenSize]);
  }
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
