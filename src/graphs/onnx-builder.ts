// A small typed front end over the ONNX protobuf types of `onnx-proto`: the graphs moe-serve runs are
// built here, in memory, when a model loads (no Python, no exported .onnx files).
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export type ElemType = 'float32' | 'float16' | 'uint8' | 'int32' | 'int64';

const ELEM_TYPE_CODE: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  uint8: onnx.TensorProto.DataType.UINT8,
  int32: onnx.TensorProto.DataType.INT32,
  int64: onnx.TensorProto.DataType.INT64,
};

/**
 * A built graph: the ONNX protobuf, and the data of its large initializers, which onnxruntime reads as
 * in-memory external data instead of out of the protobuf (measured: a session that also parsed them out
 * of the protobuf held ~0.8x their bytes more, 2.7x instead of 1.9x for an int4 768 x 2048 matrix).
 */
export interface GraphModel {
  readonly bytes: Uint8Array;
  readonly external: readonly { readonly path: string; readonly data: Uint8Array }[];
}

/** Initializers at least this large go to external data. */
const EXTERNAL_BYTES = 4096;

/** Tensor data known when a graph is built: it becomes an initializer instead of an input. */
export interface ConstTensor {
  readonly type: ElemType;
  readonly dims: readonly number[];
  /** The little-endian bytes, in row-major order. */
  readonly bytes: Uint8Array;
}

/** A dimension: a fixed size, or a symbolic name the session resolves at run time. */
export type Dim = number | string;

/** The name of a value in the graph; a string, branded so that raw strings are not passed by mistake. */
export type Value = string & { readonly __onnxValue: unique symbol };

type AttrValue =
  | { readonly kind: 'int'; readonly value: number }
  | { readonly kind: 'float'; readonly value: number }
  | { readonly kind: 'ints'; readonly value: readonly number[] }
  | { readonly kind: 'string'; readonly value: string };

export const attr = {
  int: (value: number): AttrValue => ({ kind: 'int', value }),
  float: (value: number): AttrValue => ({ kind: 'float', value }),
  ints: (value: readonly number[]): AttrValue => ({ kind: 'ints', value }),
  string: (value: string): AttrValue => ({ kind: 'string', value }),
};

export type Attrs = Readonly<Record<string, AttrValue>>;

/** Opset versions every moe-serve graph imports. */
const OPSETS = [
  { domain: '', version: 21 },
  { domain: 'com.microsoft', version: 1 },
];

function encodeAttr(name: string, a: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'int':
      return { name, type: T.INT, i: a.value };
    case 'float':
      return { name, type: T.FLOAT, f: a.value };
    case 'ints':
      return { name, type: T.INTS, ints: [...a.value] };
    case 'string':
      return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
  }
}

/** dims null: an unranked tensor (any shape). */
function valueInfo(name: string, type: ElemType, dims: readonly Dim[] | null): onnxProto.onnx.IValueInfoProto {
  const shape = dims === null ? {} : { shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } };
  return { name, type: { tensorType: { elemType: ELEM_TYPE_CODE[type], ...shape } } };
}

/**
 * Builds one ONNX graph. Values are named after what they hold (the names show up in onnxruntime's
 * error messages), with a counter suffix for intermediates.
 */
export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly external: { path: string; data: Uint8Array }[] = [];
  private counter = 0;

  /**
   * `constants`: tensors whose data is known now (weights); `tensor()` makes them initializers, which
   * onnxruntime can prepack at session creation, where the same name would otherwise be a graph input.
   */
  constructor(
    private readonly name: string,
    private readonly constants: ReadonlyMap<string, ConstTensor> = new Map(),
  ) {}

  input(name: string, type: ElemType, dims: readonly Dim[] | null): Value {
    this.inputs.push(valueInfo(name, type, dims));
    return name as Value;
  }

  /** A weight-like tensor: an initializer when `constants` holds it, else an input of that type and shape. */
  tensor(name: string, type: ElemType, dims: readonly number[]): Value {
    const c = this.constants.get(name);
    if (!c) return this.input(name, type, dims);
    if (c.type !== type || c.dims.length !== dims.length || c.dims.some((d, i) => d !== dims[i])) {
      throw new RangeError(`constant '${name}' is ${c.type} [${c.dims.join(', ')}], the graph expects ${type} [${dims.join(', ')}]`);
    }
    if (c.bytes.byteLength < EXTERNAL_BYTES) {
      this.initializers.push({ name, dataType: ELEM_TYPE_CODE[type], dims: [...dims], rawData: c.bytes });
      return name as Value;
    }
    const path = `external_${this.external.length}`;
    this.external.push({ path, data: c.bytes });
    const location = onnx.TensorProto.DataLocation.EXTERNAL;
    const entry = (key: string, value: string) => ({ key, value });
    this.initializers.push({ name, dataType: ELEM_TYPE_CODE[type], dims: [...dims], dataLocation: location, externalData: [entry('location', path), entry('offset', '0'), entry('length', String(c.bytes.byteLength))] });
    return name as Value;
  }

  /** Marks `value` as a graph output under `name` (an Identity node renames it when needed). */
  output(value: Value, name: string, type: ElemType, dims: readonly Dim[] | null): void {
    const out = value === name ? value : this.op('Identity', [value], {}, { name });
    this.outputs.push(valueInfo(out, type, dims));
  }

  /** Adds one node with a single output and returns that output. */
  op(opType: string, inputs: readonly (Value | null)[], attrs: Attrs = {}, opts: { domain?: string; name?: string } = {}): Value {
    const [out] = this.opN(opType, inputs, 1, attrs, opts);
    return out as Value;
  }

  /** Adds one node with `outputCount` outputs. A null input is an omitted optional input. */
  opN(
    opType: string,
    inputs: readonly (Value | null)[],
    outputCount: number,
    attrs: Attrs = {},
    opts: { domain?: string; name?: string; outputNames?: readonly string[] } = {},
  ): Value[] {
    const id = this.counter++;
    const outputs = Array.from({ length: outputCount }, (_, i) => {
      const fixed = opts.outputNames?.[i] ?? (i === 0 ? opts.name : undefined);
      return (fixed ?? `${opType.toLowerCase()}_${id}${outputCount > 1 ? `_${i}` : ''}`) as Value;
    });
    this.nodes.push({
      name: `${opType}_${id}`,
      opType,
      domain: opts.domain ?? '',
      input: inputs.map((v) => v ?? ''),
      output: outputs,
      attribute: Object.entries(attrs).map(([k, a]) => encodeAttr(k, a)),
    });
    return outputs;
  }

  constInt64(values: readonly number[], dims: readonly number[] = [values.length]): Value {
    const name = `const_i64_${this.counter++}`;
    this.initializers.push({ name, dataType: ELEM_TYPE_CODE.int64, dims: [...dims], int64Data: [...values] });
    return name as Value;
  }

  constFloat(values: readonly number[], dims: readonly number[] = [values.length]): Value {
    const name = `const_f32_${this.counter++}`;
    this.initializers.push({ name, dataType: ELEM_TYPE_CODE.float32, dims: [...dims], floatData: [...values] });
    return name as Value;
  }

  /** The graph with its large initializers as external data (see GraphModel). */
  toModel(): GraphModel {
    return { bytes: this.toModelBytes(), external: this.external };
  }

  toModelBytes(): Uint8Array {
    return onnx.ModelProto.encode({
      irVersion: 10,
      producerName: 'moe-serve',
      opsetImport: OPSETS,
      graph: {
        name: this.name,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      },
    }).finish();
  }
}
