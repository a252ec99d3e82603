// writer.ts — writes GGUF v3 files: metadata of every value type, tensor infos, aligned data.
// Tensors are produced lazily (one chunk at a time) so multi-GB models never sit in memory.
import * as fs from 'fs';

export enum GgufValueType {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
}

export type GgufScalar = { type: Exclude<GgufValueType, GgufValueType.ARRAY>; value: number | bigint | boolean | string };
export type GgufArray = { type: GgufValueType.ARRAY; elem: GgufValueType; value: (number | bigint | boolean | string)[] };
export type GgufMeta = GgufScalar | GgufArray;

export const GgmlType = { f32: 0, f16: 1, q4_0: 2, q8_0: 8, q2_k: 10, q3_k: 11, q4_k: 12, q5_k: 13, q6_k: 14, iq4_nl: 20, iq4_xs: 23, bf16: 30 } as const;
export type GgmlTypeName = keyof typeof GgmlType;

/** [elements per block, bytes per block] */
export const GGML_BLOCK: Record<GgmlTypeName, [number, number]> = {
  f32: [1, 4], f16: [1, 2], bf16: [1, 2], q8_0: [32, 34], q4_0: [32, 18], q2_k: [256, 84], q3_k: [256, 110], q4_k: [256, 144], q5_k: [256, 176],
  q6_k: [256, 210], iq4_nl: [32, 18], iq4_xs: [256, 136],
};

export function tensorBytes(type: GgmlTypeName, ne: number[]): number {
  const [bs, ts] = GGML_BLOCK[type];
  if (ne[0] % bs !== 0) throw new Error(`row length ${ne[0]} is not a multiple of ${bs} for ${type}`);
  return (ne.reduce((a, b) => a * b, 1) / bs) * ts;
}

export interface TensorSpec {
  name: string;
  type: GgmlTypeName;
  /** GGUF dims: ne[0] is the row length. */
  ne: number[];
  /** Yields the tensor's bytes in order, in chunks. */
  data: () => Iterable<Uint8Array>;
}

class ByteSink {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer) { this.parts.push(b); this.length += b.length; }
  u32(v: number) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  u64(v: number | bigint) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  str(s: string) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
  concat() { return Buffer.concat(this.parts); }
}

function writeScalar(out: ByteSink, type: GgufValueType, v: number | bigint | boolean | string) {
  const b8 = Buffer.alloc(8);
  switch (type) {
    case GgufValueType.U8: b8.writeUInt8(Number(v)); out.push(b8.subarray(0, 1)); break;
    case GgufValueType.I8: b8.writeInt8(Number(v)); out.push(b8.subarray(0, 1)); break;
    case GgufValueType.U16: b8.writeUInt16LE(Number(v)); out.push(b8.subarray(0, 2)); break;
    case GgufValueType.I16: b8.writeInt16LE(Number(v)); out.push(b8.subarray(0, 2)); break;
    case GgufValueType.U32: b8.writeUInt32LE(Number(v)); out.push(b8.subarray(0, 4)); break;
    case GgufValueType.I32: b8.writeInt32LE(Number(v)); out.push(b8.subarray(0, 4)); break;
    case GgufValueType.F32: b8.writeFloatLE(Number(v)); out.push(b8.subarray(0, 4)); break;
    case GgufValueType.BOOL: b8.writeUInt8(v ? 1 : 0); out.push(b8.subarray(0, 1)); break;
    case GgufValueType.STRING: out.str(String(v)); break;
    case GgufValueType.U64: b8.writeBigUInt64LE(BigInt(v)); out.push(b8); break;
    case GgufValueType.I64: b8.writeBigInt64LE(BigInt(v)); out.push(b8); break;
    case GgufValueType.F64: b8.writeDoubleLE(Number(v)); out.push(b8); break;
    default: throw new Error(`bad scalar type ${type}`);
  }
}

/** Serializes the header (magic → tensor infos, padded to the alignment). */
export function ggufHeader(meta: Record<string, GgufMeta>, tensors: { name: string; type: GgmlTypeName; ne: number[] }[], alignment = 32): { header: Buffer; offsets: number[]; dataBytes: number } {
  const out = new ByteSink();
  out.push(Buffer.from('GGUF', 'latin1'));
  out.u32(3);
  out.u64(tensors.length);
  out.u64(Object.keys(meta).length);
  for (const [key, m] of Object.entries(meta)) {
    out.str(key);
    out.u32(m.type);
    if (m.type === GgufValueType.ARRAY) {
      out.u32(m.elem);
      out.u64(m.value.length);
      for (const v of m.value) writeScalar(out, m.elem, v);
    } else {
      writeScalar(out, m.type, m.value);
    }
  }
  const offsets: number[] = [];
  let off = 0;
  for (const t of tensors) {
    out.str(t.name);
    out.u32(t.ne.length);
    for (const d of t.ne) out.u64(d);
    out.u32(GgmlType[t.type]);
    out.u64(off);
    offsets.push(off);
    off += tensorBytes(t.type, t.ne);
    off = Math.ceil(off / alignment) * alignment;
  }
  const pad = (alignment - (out.length % alignment)) % alignment;
  out.push(Buffer.alloc(pad));
  return { header: out.concat(), offsets, dataBytes: off };
}

/** Writes a whole GGUF file. */
export function writeGguf(file: string, meta: Record<string, GgufMeta>, tensors: TensorSpec[], alignment = 32): void {
  const { header, offsets } = ggufHeader(meta, tensors, alignment);
  const fd = fs.openSync(file, 'w');
  try {
    let pos = 0;
    const write = (b: Uint8Array) => {
      let done = 0;
      while (done < b.length) done += fs.writeSync(fd, b, done, b.length - done);
      pos += b.length;
    };
    write(header);
    const base = header.length;
    tensors.forEach((t, i) => {
      const start = base + offsets[i];
      if (pos < start) write(Buffer.alloc(start - pos));
      let n = 0;
      for (const chunk of t.data()) {
        write(chunk);
        n += chunk.length;
      }
      const want = tensorBytes(t.type, t.ne);
      if (n !== want) throw new Error(`tensor ${t.name}: wrote ${n} bytes, expected ${want}`);
    });
    const end = base + (tensors.length ? offsets[offsets.length - 1] + tensorBytes(tensors[tensors.length - 1].type, tensors[tensors.length - 1].ne) : 0);
    if (pos < end) write(Buffer.alloc(end - pos));
  } finally {
    fs.closeSync(fd);
  }
}

export const meta = {
  str: (value: string): GgufMeta => ({ type: GgufValueType.STRING, value }),
  u32: (value: number): GgufMeta => ({ type: GgufValueType.U32, value }),
  i32: (value: number): GgufMeta => ({ type: GgufValueType.I32, value }),
  f32: (value: number): GgufMeta => ({ type: GgufValueType.F32, value }),
  bool: (value: boolean): GgufMeta => ({ type: GgufValueType.BOOL, value }),
  strs: (value: string[]): GgufMeta => ({ type: GgufValueType.ARRAY, elem: GgufValueType.STRING, value }),
  i32s: (value: number[]): GgufMeta => ({ type: GgufValueType.ARRAY, elem: GgufValueType.I32, value }),
  f32s: (value: number[]): GgufMeta => ({ type: GgufValueType.ARRAY, elem: GgufValueType.F32, value }),
};
