// llama-state.ts — llama.cpp's sequence state files (llama_state_seq_save_file, format version 3)
// and one operation on them: the same context with its KV cache stored in another type.
//
// The benchmark uses it to measure llama.cpp's quantized caches at long context: filling 16k
// tokens with its q4_0 cache takes over two hours of this machine's CPU, and decode speed does
// not depend on which values the cache holds. A state filled with the f16 cache, requantized the
// way llama.cpp stores a quantized cache, stands in for that fill. What llama.cpp stores
// (llama-kv-cache.cpp, llama-graph.cpp): with a quantized K (V) type and a head size that is a
// multiple of 64, each head's keys (values) are rotated by an orthonormal Walsh–Hadamard matrix
// before they are stored (keys in blocks of the largest power of two dividing the head size,
// values in blocks of 64), and the queries and the attention output are rotated to match. A
// context filled with the quantized cache from the start would differ only by the quantization
// noise that earlier layers' attention passed on.
//
// Layout (little-endian): u32 magic 'ggsq', u32 version, u32 n_tokens, i32 tokens[n_tokens], then
// the KV cache: u32 n_stream; per stream u32 cell_count and, if non-zero, per cell i32 pos, u32
// n_seq_id, i32 seq_id[n_seq_id]; u32 v_trans; u32 n_layer; per layer i32 k_type, u64 k_row_bytes,
// cell_count rows; then (v_trans 0, as with flash attention) per layer i32 v_type, u64
// v_row_bytes, cell_count rows.
import * as fs from 'fs';
import { nativeAddon } from './native';

const MAGIC = 0x67677371; // 'ggsq'
const VERSION = 3;

/** The KV types this converts between: ggml type ids and bytes per block of 32 values. */
export const LLAMA_KV_TYPES = {
  f32: { id: 0, block: 32, bytes: 128 },
  f16: { id: 1, block: 32, bytes: 64 },
  q4_0: { id: 2, block: 32, bytes: 18 },
  q8_0: { id: 8, block: 32, bytes: 34 },
} as const;
export type LlamaKvType = keyof typeof LLAMA_KV_TYPES;

function typeName(id: number): LlamaKvType | null {
  for (const [name, t] of Object.entries(LLAMA_KV_TYPES)) if (t.id === id) return name as LlamaKvType;
  return null;
}

function rowBytes(type: LlamaKvType, n: number): number {
  const t = LLAMA_KV_TYPES[type];
  return (n / t.block) * t.bytes;
}

/** Sequential reads from a file, with the offset kept for error messages. */
class Reader {
  pos = 0;
  constructor(private fd: number, private size: number, private file: string) {}
  bytes(n: number): Buffer {
    if (n < 0 || this.pos + n > this.size) throw new Error(`${this.file}: truncated llama.cpp state (needs ${n} bytes at offset ${this.pos} of ${this.size})`);
    const b = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) got += fs.readSync(this.fd, b, got, n - got, this.pos + got);
    this.pos += n;
    return b;
  }
  u32(): number {
    return this.bytes(4).readUInt32LE(0);
  }
  i32(): number {
    return this.bytes(4).readInt32LE(0);
  }
  u64(): number {
    const v = this.bytes(8).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.file}: bad size ${v} at offset ${this.pos - 8}`);
    return Number(v);
  }
  atEnd(): boolean {
    return this.pos === this.size;
  }
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0, 0);
  return b;
}
function i32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v, 0);
  return b;
}
function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v), 0);
  return b;
}

/** Orthonormal Walsh–Hadamard transform of every block of `n` values of x, in place (n a power of two). */
export function hadamardBlocks(x: Float32Array, n: number): void {
  const s = 1 / Math.sqrt(n);
  for (let o = 0; o + n <= x.length; o += n) {
    for (let len = 1; len < n; len <<= 1)
      for (let i = o; i < o + n; i += len << 1)
        for (let j = i; j < i + len; j++) {
          const a = x[j], b = x[j + len];
          x[j] = a + b;
          x[j + len] = a - b;
        }
    for (let i = o; i < o + n; i++) x[i] *= s;
  }
}

/** The rotation llama.cpp applies before storing keys (values) of a quantized type: block size, or 0 for none. */
export function llamaKvRotation(type: LlamaKvType, headDim: number, which: 'k' | 'v'): number {
  if (type === 'f16' || type === 'f32' || headDim % 64 !== 0) return 0;
  if (which === 'v') return 64;
  let n = 64;
  while (headDim % (n * 2) === 0) n *= 2;
  return n;
}

export interface LlamaStateInfo {
  tokens: number;
  cells: number;
  layers: number;
  kType: LlamaKvType;
  vType: LlamaKvType;
}

/**
 * Writes `dst`: the state in `src` with its KV cache stored as `to` (keys and values), rotated as
 * llama.cpp rotates a quantized cache for heads of `headDim`. The source cache must be f16 or f32
 * (llama.cpp stores those unrotated) and not transposed (flash attention on). Throws, leaving no
 * `dst`, on anything else or on a malformed file.
 */
export function requantizeLlamaState(src: string, dst: string, to: LlamaKvType, headDim: number): LlamaStateInfo {
  const fd = fs.openSync(src, 'r');
  const tmp = `${dst}.${process.pid}.tmp`;
  let out = -1;
  try {
    const r = new Reader(fd, fs.fstatSync(fd).size, src);
    const write = (b: Buffer | Uint8Array) => fs.writeSync(out, b);
    if (r.u32() !== MAGIC) throw new Error(`${src}: not a llama.cpp sequence state file`);
    const version = r.u32();
    if (version !== VERSION) throw new Error(`${src}: llama.cpp state version ${version}, this reads ${VERSION}`);
    const nTok = r.u32();
    const tokens = r.bytes(4 * nTok);
    out = fs.openSync(tmp, 'w');
    write(u32(MAGIC));
    write(u32(VERSION));
    write(u32(nTok));
    write(tokens);
    const nStream = r.u32();
    write(u32(nStream));
    const info: LlamaStateInfo = { tokens: nTok, cells: 0, layers: 0, kType: to, vType: to };
    for (let s = 0; s < nStream; s++) {
      const cells = r.u32();
      write(u32(cells));
      if (cells === 0) continue;
      info.cells += cells;
      for (let c = 0; c < cells; c++) {
        const pos = r.i32();
        const nSeq = r.u32();
        if (nSeq > 64) throw new Error(`${src}: bad sequence count ${nSeq} in cell ${c}`);
        write(i32(pos));
        write(u32(nSeq));
        write(r.bytes(4 * nSeq));
      }
      const vTrans = r.u32();
      if (vTrans !== 0) throw new Error(`${src}: the values are stored transposed (flash attention off); only the flash-attention layout is converted`);
      write(u32(vTrans));
      const nLayer = r.u32();
      write(u32(nLayer));
      info.layers = nLayer;
      for (const which of ['k', 'v'] as const) {
        for (let l = 0; l < nLayer; l++) {
          const from = typeName(r.i32());
          const rb = r.u64();
          if (from !== 'f16' && from !== 'f32') throw new Error(`${src}: layer ${l} ${which.toUpperCase()} is ${from ?? 'an unknown type'}; only an f16 or f32 cache is converted`);
          const n = rb / LLAMA_KV_TYPES[from].bytes * LLAMA_KV_TYPES[from].block;
          if (!Number.isInteger(n) || n % 32 !== 0 || n % headDim !== 0) throw new Error(`${src}: layer ${l} row of ${rb} bytes does not hold heads of ${headDim}`);
          const data = r.bytes(rb * cells);
          const x = nativeAddon().dequantize(from, data, n * cells);
          const rot = llamaKvRotation(to, headDim, which);
          if (rot) hadamardBlocks(x, rot);
          write(i32(LLAMA_KV_TYPES[to].id));
          write(u64(rowBytes(to, n)));
          write(nativeAddon().quantize(to, x));
        }
      }
    }
    if (!r.atEnd()) throw new Error(`${src}: ${fs.fstatSync(fd).size - r.pos} unexpected bytes after the KV cache`);
    fs.closeSync(out);
    out = -1;
    fs.renameSync(tmp, dst);
    return info;
  } finally {
    fs.closeSync(fd);
    if (out >= 0) fs.closeSync(out);
    fs.rmSync(tmp, { force: true });
  }
}
