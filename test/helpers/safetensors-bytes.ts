// Writes safetensors files in tests: u64 LE header length, JSON header (space-padded to 8 bytes), data.

export interface TensorBytes {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

/** Bytes of a safetensors file holding `tensors` in order; `rawHeader` replaces the JSON (for corrupt files). */
export function buildSafetensors(tensors: readonly TensorBytes[], options: { rawHeader?: string; headerLength?: bigint } = {}): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = options.rawHeader ?? JSON.stringify(header);
  json = json.padEnd(Math.ceil(json.length / 8) * 8, ' '); // writers pad the header to 8 bytes
  const jsonBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + jsonBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, options.headerLength ?? BigInt(jsonBytes.byteLength), true);
  out.set(jsonBytes, 8);
  let at = 8 + jsonBytes.byteLength;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}
