// The parts of a batched decode attention graph (GPU providers) that pack several sequences' device-resident
// KV caches into one batch in front of GroupQueryAttention and cut its present back into each sequence's
// cache behind it, inside the same run: GPU tensors can only be moved by sessions, and a run of its own
// each way would cost two more session runs per layer (PLATFORM.md: 0.4-1.9 ms each on a GPU).
//   pack:   past_b (1, nKv, L_b, D), pad_b = (0, 0, 0, 0, 0, 0, P - L_b, 0) -> (B, nKv, P, D), zero-padded
//   unpack: present (B, nKv, P + 1, D), end_b = (b + 1, L_b + 1) -> key_b/value_b (1, nKv, L_b + 1, D)
// GroupQueryAttention writes sequence b's new row at position seqlens_k[b] = L_b, so rows L_b + 1.. of its
// slot are padding, and cutting at L_b + 1 gives exactly the per-sequence present a lone run returns.
// On the CPU provider JS packs the host rows itself (forward.ts).
import { attr, type GraphBuilder, type Value } from './onnx-builder.js';

export const KV_BATCH = {
  pastKey: (b: number) => `past_key_${b}`,
  pastValue: (b: number) => `past_value_${b}`,
  pad: (b: number) => `pad_amounts_${b}`,
  end: (b: number) => `end_${b}`,
  key: (b: number) => `key_${b}`,
  value: (b: number) => `value_${b}`,
} as const;

/** Adds the per-sequence past and pad inputs; returns the packed (B, nKv, P, D) past key and value. */
export function packPast(g: GraphBuilder, batch: number, numKvHeads: number, headDim: number): [Value, Value] {
  const keys: Value[] = [];
  const values: Value[] = [];
  for (let b = 0; b < batch; b++) {
    const pad = g.input(KV_BATCH.pad(b), 'int64', [8]);
    keys.push(g.op('Pad', [g.input(KV_BATCH.pastKey(b), 'float32', [1, numKvHeads, `past_${b}`, headDim]), pad]));
    values.push(g.op('Pad', [g.input(KV_BATCH.pastValue(b), 'float32', [1, numKvHeads, `past_${b}`, headDim]), pad]));
  }
  return [g.op('Concat', keys, { axis: attr.int(0) }), g.op('Concat', values, { axis: attr.int(0) })];
}

/** Adds the end inputs and each sequence's key_b/value_b outputs, cut out of the batched present. */
export function unpackPresent(g: GraphBuilder, presentKey: Value, presentValue: Value, batch: number, numKvHeads: number, headDim: number): void {
  const axes = g.constInt64([0, 2]);
  for (let b = 0; b < batch; b++) {
    const starts = g.constInt64([b, 0]);
    const end = g.input(KV_BATCH.end(b), 'int64', [2]);
    g.output(g.op('Slice', [presentKey, starts, end, axes], {}, { name: KV_BATCH.key(b) }), KV_BATCH.key(b), 'float32', [1, numKvHeads, `length_${b}`, headDim]);
    g.output(g.op('Slice', [presentValue, starts, end, axes], {}, { name: KV_BATCH.value(b) }), KV_BATCH.value(b), 'float32', [1, numKvHeads, `length_${b}`, headDim]);
  }
}
