// gguf-header.ts — reads a GGUF file's header (metadata and tensor table) without loading weights,
// so model discovery can report architecture, dimensions and size of multi-GB files cheaply.
// Reads in chunks from a file descriptor; every count and length is bounded before use.
import * as fs from 'fs';
import type { ModelShape } from './protocol';

/** Metadata value as kept here: scalars and strings as is, arrays summarised (long ones not kept). */
export type GgufMetaValue = number | bigint | boolean | string | GgufArraySummary;

export interface GgufArraySummary {
  kind: 'array';
  elemType: number;
  length: number;
  /** Elements, kept only for short arrays (<= 64 elements) of scalars or strings. */
  items?: Array<number | bigint | boolean | string>;
}

export interface GgufTensorInfo {
  name: string;
  type: number;
  dims: number[];
  elements: number;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, GgufMetaValue>;
  tensors: GgufTensorInfo[];
  fileBytes: number;
}

/** What discovery and status report about a model file. */
export interface GgufSummary extends ModelShape {
  weightType: string;
  /** Every tensor type in the file, most elements first. */
  weightTypes: string[];
  /** tokenizer.ggml.model ("gpt2" for Llama 3's byte-level BPE, "llama" for SentencePiece). */
  tokenizerModel: string;
  tokenizerPre: string;
}

const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
const MAX_STRING = 64 << 20; // no sane header string is longer (chat templates are a few KB)
const MAX_KEEP_STRING = 1 << 20; // longer strings are skipped, not kept
const MAX_KV = 1 << 20;
const MAX_TENSORS = 1 << 20;
const MAX_ARRAY = 1 << 30;
const KEEP_ARRAY_ITEMS = 64;

// ggml type ids → names (as llama.cpp prints them, lower-cased).
const GGML_TYPE_NAMES: Record<number, string> = {
  0: 'f32', 1: 'f16', 2: 'q4_0', 3: 'q4_1', 6: 'q5_0', 7: 'q5_1', 8: 'q8_0', 9: 'q8_1',
  10: 'q2_k', 11: 'q3_k', 12: 'q4_k', 13: 'q5_k', 14: 'q6_k', 15: 'q8_k', 16: 'iq2_xxs',
  17: 'iq2_xs', 18: 'iq3_xxs', 19: 'iq1_s', 20: 'iq4_nl', 21: 'iq3_s', 22: 'iq2_s', 23: 'iq4_xs',
  24: 'i8', 25: 'i16', 26: 'i32', 27: 'i64', 28: 'f64', 29: 'iq1_m', 30: 'bf16',
};

export function ggmlTypeName(type: number): string {
  return GGML_TYPE_NAMES[type] ?? `type#${type}`;
}

export class GgufError extends Error {
  constructor(file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'GgufError';
  }
}

/** Sequential little-endian reader over a file descriptor, refilling a buffer as needed. */
class ChunkReader {
  private buf = Buffer.alloc(0);
  private bufStart = 0; // file offset of buf[0]
  private pos = 0; // absolute file offset of the next byte

  constructor(private fd: number, readonly size: number, private file: string) {}

  get offset(): number {
    return this.pos;
  }

  private ensure(n: number): number {
    if (this.pos + n > this.size) throw new GgufError(this.file, `truncated header (needs ${n} bytes at offset ${this.pos}, file has ${this.size})`);
    const rel = this.pos - this.bufStart;
    if (rel + n <= this.buf.length) return rel;
    const want = Math.max(n, 1 << 20);
    const len = Math.min(want, this.size - this.pos);
    const b = Buffer.allocUnsafe(len);
    let got = 0;
    while (got < len) {
      const r = fs.readSync(this.fd, b, got, len - got, this.pos + got);
      if (r <= 0) break;
      got += r;
    }
    if (got < n) throw new GgufError(this.file, `short read at offset ${this.pos}`);
    this.buf = b.subarray(0, got);
    this.bufStart = this.pos;
    return 0;
  }

  skip(n: number): void {
    if (n < 0 || this.pos + n > this.size) throw new GgufError(this.file, `truncated header (skip ${n} at offset ${this.pos})`);
    this.pos += n;
  }
  u8(): number { const r = this.ensure(1); this.pos += 1; return this.buf.readUInt8(r); }
  i8(): number { const r = this.ensure(1); this.pos += 1; return this.buf.readInt8(r); }
  u16(): number { const r = this.ensure(2); this.pos += 2; return this.buf.readUInt16LE(r); }
  i16(): number { const r = this.ensure(2); this.pos += 2; return this.buf.readInt16LE(r); }
  u32(): number { const r = this.ensure(4); this.pos += 4; return this.buf.readUInt32LE(r); }
  i32(): number { const r = this.ensure(4); this.pos += 4; return this.buf.readInt32LE(r); }
  f32(): number { const r = this.ensure(4); this.pos += 4; return this.buf.readFloatLE(r); }
  f64(): number { const r = this.ensure(8); this.pos += 8; return this.buf.readDoubleLE(r); }
  u64(): bigint { const r = this.ensure(8); this.pos += 8; return this.buf.readBigUInt64LE(r); }
  i64(): bigint { const r = this.ensure(8); this.pos += 8; return this.buf.readBigInt64LE(r); }

  /** A u64 count that must fit a JS number and stay under `max`. */
  count(what: string, max: number): number {
    const v = this.u64();
    if (v > BigInt(max)) throw new GgufError(this.file, `${what} ${v} out of range (max ${max}) at offset ${this.pos - 8}`);
    return Number(v);
  }

  /** A GGUF string; returns null (and skips it) when longer than `keep`. */
  string(keep = MAX_KEEP_STRING): string | null {
    const len = this.count('string length', MAX_STRING);
    if (len > keep) {
      this.skip(len);
      return null;
    }
    const r = this.ensure(len);
    this.pos += len;
    return this.buf.toString('utf8', r, r + len);
  }
}

const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

function readScalar(r: ChunkReader, type: number, file: string): number | bigint | boolean | string {
  switch (type) {
    case 0: return r.u8();
    case 1: return r.i8();
    case 2: return r.u16();
    case 3: return r.i16();
    case 4: return r.u32();
    case 5: return r.i32();
    case 6: return r.f32();
    case 7: return r.u8() !== 0;
    case 8: return r.string() ?? '';
    case 10: { const v = r.u64(); return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v; }
    case 11: { const v = r.i64(); return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v; }
    case 12: return r.f64();
    default: throw new GgufError(file, `unknown metadata value type ${type} at offset ${r.offset - 4}`);
  }
}

function readValue(r: ChunkReader, type: number, file: string, depth = 0): GgufMetaValue {
  if (type !== 9) return readScalar(r, type, file);
  if (depth > 2) throw new GgufError(file, 'metadata arrays nested too deeply');
  const elemType = r.u32();
  const length = r.count('array length', MAX_ARRAY);
  const keep = length <= KEEP_ARRAY_ITEMS && elemType !== 9;
  const items: Array<number | bigint | boolean | string> = [];
  const size = SCALAR_SIZE[elemType];
  if (!keep && size !== undefined) {
    r.skip(size * length); // bounded by the file size check in skip()
  } else {
    for (let i = 0; i < length; i++) {
      if (elemType === 9) readValue(r, 9, file, depth + 1);
      else if (elemType === 8 && !keep) r.string(0);
      else items.push(readScalar(r, elemType, file));
    }
  }
  return { kind: 'array', elemType, length, items: keep ? items : undefined };
}

/** Parses a GGUF header. Throws GgufError naming the file and the problem on anything malformed. */
export function readGgufHeader(file: string): GgufHeader {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const r = new ChunkReader(fd, size, file);
    if (size < 24) throw new GgufError(file, `not a GGUF file (${size} bytes)`);
    const magic = r.u32();
    if (magic !== GGUF_MAGIC) throw new GgufError(file, 'not a GGUF file (bad magic)');
    const version = r.u32();
    if (version !== 2 && version !== 3) throw new GgufError(file, `unsupported GGUF version ${version} (expected 2 or 3)`);
    const nTensors = r.count('tensor count', MAX_TENSORS);
    const nKv = r.count('metadata count', MAX_KV);
    const metadata = new Map<string, GgufMetaValue>();
    for (let i = 0; i < nKv; i++) {
      const key = r.string(65536);
      if (key === null) throw new GgufError(file, `metadata key ${i} too long`);
      const type = r.u32();
      metadata.set(key, readValue(r, type, file));
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = r.string(65536);
      if (name === null) throw new GgufError(file, `tensor name ${i} too long`);
      const nDims = r.u32();
      if (nDims < 1 || nDims > 4) throw new GgufError(file, `tensor ${name}: ${nDims} dimensions (expected 1-4)`);
      const dims: number[] = [];
      let elements = 1;
      for (let d = 0; d < nDims; d++) {
        const n = r.count(`tensor ${name} dimension`, 2 ** 40);
        dims.push(n);
        elements *= n;
      }
      const type = r.u32();
      r.u64(); // data offset (not needed here)
      tensors.push({ name, type, dims, elements });
    }
    return { version, metadata, tensors, fileBytes: size };
  } finally {
    fs.closeSync(fd);
  }
}

function num(meta: Map<string, GgufMetaValue>, key: string, dflt = 0): number {
  const v = meta.get(key);
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return dflt;
}

function str(meta: Map<string, GgufMetaValue>, key: string, dflt = ''): string {
  const v = meta.get(key);
  return typeof v === 'string' ? v : dflt;
}

/** The predominant weight type: the type holding most elements among 2-D tensors. */
export function predominantType(tensors: GgufTensorInfo[]): string {
  return tensorTypes(tensors.filter((t) => t.dims.length >= 2))[0] ?? 'unknown';
}

/** The distinct tensor types, most elements first. */
export function tensorTypes(tensors: GgufTensorInfo[]): string[] {
  const byType = new Map<number, number>();
  for (const t of tensors) byType.set(t.type, (byType.get(t.type) ?? 0) + t.elements);
  return [...byType].sort((a, b) => b[1] - a[1]).map(([type]) => ggmlTypeName(type));
}

export function summarizeGguf(file: string, h: GgufHeader): GgufSummary {
  const m = h.metadata;
  const arch = str(m, 'general.architecture', 'unknown');
  const nEmbd = num(m, `${arch}.embedding_length`);
  const nHead = num(m, `${arch}.attention.head_count`);
  const tokens = m.get('tokenizer.ggml.tokens');
  const nVocab = num(m, `${arch}.vocab_size`) || (typeof tokens === 'object' && tokens && 'kind' in tokens ? tokens.length : 0);
  const baseName = file.split(/[\\/]/).pop() ?? file;
  return {
    architecture: arch,
    name: str(m, 'general.name') || baseName.replace(/\.gguf$/i, ''),
    nLayer: num(m, `${arch}.block_count`),
    nEmbd,
    nHead,
    nHeadKv: num(m, `${arch}.attention.head_count_kv`, nHead),
    headDim: num(m, `${arch}.attention.key_length`) || (nHead > 0 ? nEmbd / nHead : 0),
    nVocab,
    contextLength: num(m, `${arch}.context_length`),
    fileBytes: h.fileBytes,
    weightType: predominantType(h.tensors),
    weightTypes: tensorTypes(h.tensors),
    tokenizerModel: str(m, 'tokenizer.ggml.model'),
    tokenizerPre: str(m, 'tokenizer.ggml.pre'),
  };
}

/** Reads and summarises a GGUF file's header. */
export function inspectGguf(file: string): GgufSummary {
  return summarizeGguf(file, readGgufHeader(file));
}

/** The tensor types the engine reads (native/src/model.cpp's matrix_type_ok, plus f32 for norms). */
export const ENGINE_TENSOR_TYPES: readonly string[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'iq4_nl', 'iq4_xs'];

/**
 * Why llamakv cannot run this model, or null when it can: the engine runs architecture `llama`
 * with Llama 3's byte-level BPE tokenizer only, with weights in the types it reads.
 */
export function unsupportedReason(s: GgufSummary): string | null {
  if (s.architecture !== 'llama') {
    return `architecture "${s.architecture}" is not supported: llamakv runs Llama 3 models (architecture "llama") only`;
  }
  if (s.tokenizerModel && s.tokenizerModel !== 'gpt2') {
    return `tokenizer "${s.tokenizerModel}" is not supported: llamakv needs Llama 3's byte-level BPE tokenizer (Llama 1/2 and Mistral use SentencePiece)`;
  }
  const other = s.weightTypes.filter((t) => !ENGINE_TENSOR_TYPES.includes(t));
  if (other.length) {
    return `weight type${other.length > 1 ? 's' : ''} ${other.join(', ')} ${other.length > 1 ? 'are' : 'is'} not supported: llamakv reads ` +
      'F32, F16, BF16, Q8_0, Q4_0, Q2_K-Q6_K, IQ4_NL and IQ4_XS weights (files quantized as Q8_0, Q6_K, Q5_K_M/S, ' +
      'Q4_K_M/S, Q4_0, IQ4_XS/NL, Q3_K_S/M/L or Q2_K; not Q4_1/Q5_0/Q5_1 or the IQ1-IQ3 formats)';
  }
  return null;
}
