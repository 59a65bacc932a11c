// Packing several sequences' GPU-resident KV caches into one batch for a batched decode attention run,
// and cutting the run's present back into each sequence's cache, one run each way. On the CPU provider
// JS packs the host rows itself (forward.ts); GPU tensors can only be moved by sessions.
//   pack:   past_b (1, nKv, L_b, D), pad_b = (0, 0, 0, 0, 0, 0, P - L_b, 0) -> (B, nKv, P, D), zero-padded
//   unpack: present (B, nKv, P + 1, D), end_b = (b + 1, L_b + 1) -> present_b (1, nKv, L_b + 1, D)
// GroupQueryAttention writes sequence b's new row at position seqlens_k[b] = L_b, so rows L_b + 1.. of its
// slot are padding, and cutting at L_b + 1 gives exactly the per-sequence present a lone run returns.
import { attr, GraphBuilder } from './onnx-builder.js';

export const KV_BATCH = {
  pastKey: (b: number) => `past_key_${b}`,
  pastValue: (b: number) => `past_value_${b}`,
  pad: (b: number) => `pad_amounts_${b}`,
  packedKey: 'packed_key',
  packedValue: 'packed_value',
  presentKey: 'present_key',
  presentValue: 'present_value',
  end: (b: number) => `end_${b}`,
  key: (b: number) => `key_${b}`,
  value: (b: number) => `value_${b}`,
} as const;

export function buildKvPack(batch: number, numKvHeads: number, headDim: number): Uint8Array {
  const g = new GraphBuilder(`kv_pack_${batch}`);
  const keys = [];
  const values = [];
  for (let b = 0; b < batch; b++) {
    const pad = g.input(KV_BATCH.pad(b), 'int64', [8]);
    keys.push(g.op('Pad', [g.input(KV_BATCH.pastKey(b), 'float32', [1, numKvHeads, `past_${b}`, headDim]), pad]));
    values.push(g.op('Pad', [g.input(KV_BATCH.pastValue(b), 'float32', [1, numKvHeads, `past_${b}`, headDim]), pad]));
  }
  g.output(g.op('Concat', keys, { axis: attr.int(0) }, { name: KV_BATCH.packedKey }), KV_BATCH.packedKey, 'float32', [batch, numKvHeads, 'past', headDim]);
  g.output(g.op('Concat', values, { axis: attr.int(0) }, { name: KV_BATCH.packedValue }), KV_BATCH.packedValue, 'float32', [batch, numKvHeads, 'past', headDim]);
  return g.toModelBytes();
}

export function buildKvUnpack(batch: number, numKvHeads: number, headDim: number): Uint8Array {
  const g = new GraphBuilder(`kv_unpack_${batch}`);
  const key = g.input(KV_BATCH.presentKey, 'float32', [batch, numKvHeads, 'present', headDim]);
  const value = g.input(KV_BATCH.presentValue, 'float32', [batch, numKvHeads, 'present', headDim]);
  const axes = g.constInt64([0, 2]);
  for (let b = 0; b < batch; b++) {
    const starts = g.constInt64([b, 0]);
    const end = g.input(KV_BATCH.end(b), 'int64', [2]);
    g.output(g.op('Slice', [key, starts, end, axes], {}, { name: KV_BATCH.key(b) }), KV_BATCH.key(b), 'float32', [1, numKvHeads, `length_${b}`, headDim]);
    g.output(g.op('Slice', [value, starts, end, axes], {}, { name: KV_BATCH.value(b) }), KV_BATCH.value(b), 'float32', [1, numKvHeads, `length_${b}`, headDim]);
  }
  return g.toModelBytes();
}
