// needle-ref.ts — a float64 reference forward pass of a small Llama-architecture GGUF (F32/F16
// weights), read straight from the file, with optional simulated KV eviction. Used to check the
// hand-built needle model (sidecar/needle.ts) independently of the engine and llama.cpp.
// Cost is O(T² · head_dim) per layer in plain JS: meant for a few hundred to a few thousand tokens.
import * as fs from 'fs';

interface TensorRef { type: number; dims: number[]; offset: number }

export interface RefModel {
  nEmbd: number; nLayer: number; nHead: number; nHeadKv: number; headDim: number; nFf: number;
  nVocab: number; eps: number; ropeBase: number;
  ropeFactors: Float64Array | null;
  /** Embedding row of a token (decoded on demand). */
  embed(token: number): Float64Array;
  /** A whole tensor as float64 (rows of dims[0]). */
  tensor(name: string): Float64Array;
  has(name: string): boolean;
}

function f16ToF64(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Parses a GGUF file (v3) enough to read metadata scalars and F32/F16 tensors. */
export function loadRefModel(file: string): RefModel {
  const buf = fs.readFileSync(file);
  let off = 0;
  const u32 = () => { const v = buf.readUInt32LE(off); off += 4; return v; };
  const u64 = () => { const v = Number(buf.readBigUInt64LE(off)); off += 8; return v; };
  const str = () => { const n = u64(); const s = buf.toString('utf8', off, off + n); off += n; return s; };
  const SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const scalar = (t: number): unknown => {
    switch (t) {
      case 4: return u32();
      case 5: { const v = buf.readInt32LE(off); off += 4; return v; }
      case 6: { const v = buf.readFloatLE(off); off += 4; return v; }
      case 7: { const v = buf[off] !== 0; off += 1; return v; }
      case 8: return str();
      case 10: return u64();
      case 12: { const v = buf.readDoubleLE(off); off += 8; return v; }
      default: { off += SIZE[t]; return undefined; }
    }
  };
  if (buf.toString('latin1', 0, 4) !== 'GGUF') throw new Error(`${file}: not GGUF`);
  off = 4;
  u32();
  const nTensors = u64();
  const nKv = u64();
  const md = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const t = u32();
    if (t === 9) {
      const et = u32();
      const n = u64();
      if (et === 8) for (let j = 0; j < n; j++) str();
      else if (et === 6) { const a: number[] = []; for (let j = 0; j < n; j++) a.push(scalar(6) as number); md.set(key, a); }
      else off += SIZE[et] * n;
    } else md.set(key, scalar(t));
  }
  const tensors = new Map<string, TensorRef>();
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) dims.push(u64());
    const type = u32();
    const offset = u64();
    tensors.set(name, { type, dims, offset });
  }
  const align = (md.get('general.alignment') as number | undefined) ?? 32;
  const base = Math.ceil(off / align) * align;
  const num = (k: string, d?: number) => {
    const v = md.get(k);
    if (typeof v === 'number') return v;
    if (d === undefined) throw new Error(`${file}: missing ${k}`);
    return d;
  };
  const nEmbd = num('llama.embedding_length');
  const nHead = num('llama.attention.head_count');
  const read = (t: TensorRef, start: number, count: number): Float64Array => {
    const out = new Float64Array(count);
    const at = base + t.offset;
    if (t.type === 0) for (let i = 0; i < count; i++) out[i] = buf.readFloatLE(at + 4 * (start + i));
    else if (t.type === 1) for (let i = 0; i < count; i++) out[i] = f16ToF64(buf.readUInt16LE(at + 2 * (start + i)));
    else throw new Error(`reference reads F32/F16 only (tensor type ${t.type})`);
    return out;
  };
  const get = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`${file}: no tensor ${name}`);
    return t;
  };
  const emb = get('token_embd.weight');
  const rf = tensors.get('rope_freqs.weight');
  const cache = new Map<string, Float64Array>();
  return {
    nEmbd, nHead,
    nLayer: num('llama.block_count'),
    nHeadKv: num('llama.attention.head_count_kv', nHead),
    headDim: num('llama.attention.key_length', nEmbd / nHead),
    nFf: num('llama.feed_forward_length'),
    nVocab: emb.dims[1],
    eps: num('llama.attention.layer_norm_rms_epsilon'),
    ropeBase: num('llama.rope.freq_base', 10000),
    ropeFactors: rf ? read(rf, 0, rf.dims[0]) : null,
    embed: (token) => read(emb, token * nEmbd, nEmbd),
    tensor: (name) => {
      let a = cache.get(name);
      if (!a) { const t = get(name); a = read(t, 0, t.dims.reduce((x, y) => x * y, 1)); cache.set(name, a); }
      return a;
    },
    has: (name) => tensors.has(name),
  };
}

/** y = W x for W stored as `rows` rows of `cols` (GGUF ne = [cols, rows]). */
function matvec(w: Float64Array, x: Float64Array, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += w[o + c] * x[c];
    y[r] = s;
  }
  return y;
}

function rmsnorm(x: Float64Array, g: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const s = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * s * g[i]);
}

function rope(x: Float64Array, pos: number, m: RefModel, nHeads: number): void {
  const hd = m.headDim;
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < hd / 2; i++) {
      const th = (pos * Math.pow(m.ropeBase, (-2 * i) / hd)) / (m.ropeFactors ? m.ropeFactors[i] : 1);
      const c = Math.cos(th), s = Math.sin(th);
      const a = x[h * hd + 2 * i], b = x[h * hd + 2 * i + 1];
      x[h * hd + 2 * i] = a * c - b * s;
      x[h * hd + 2 * i + 1] = a * s + b * c;
    }
  }
}

export interface RefOptions {
  /** Simulated eviction: whether the query at position t may see the cache entry at s (s ≤ t). */
  keep?: (layer: number, t: number, s: number) => boolean;
  /** Positions whose logits to return (default: the last). */
  logitsAt?: number[];
}

/**
 * Float64 forward of `tokens`; returns full-vocabulary logits at the requested positions.
 * Also returns layer attention weights of head 0 from the last position (for inspection).
 */
export function refForward(m: RefModel, tokens: number[], o: RefOptions = {}): { logits: Map<number, Float64Array> } {
  const T = tokens.length;
  const D = m.nEmbd, hd = m.headDim, nh = m.nHead, nkv = m.nHeadKv, grp = nh / nkv;
  const x: Float64Array[] = tokens.map((t) => m.embed(t));
  for (let l = 0; l < m.nLayer; l++) {
    const p = `blk.${l}.`;
    const an = m.tensor(p + 'attn_norm.weight');
    const wq = m.tensor(p + 'attn_q.weight'), wk = m.tensor(p + 'attn_k.weight'), wv = m.tensor(p + 'attn_v.weight');
    const wo = m.tensor(p + 'attn_output.weight');
    const Q: Float64Array[] = [], K: Float64Array[] = [], V: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const h = rmsnorm(x[t], an, m.eps);
      const q = matvec(wq, h, nh * hd, D), k = matvec(wk, h, nkv * hd, D);
      rope(q, t, m, nh);
      rope(k, t, m, nkv);
      Q.push(q); K.push(k); V.push(matvec(wv, h, nkv * hd, D));
    }
    const scale = 1 / Math.sqrt(hd);
    for (let t = 0; t < T; t++) {
      const att = new Float64Array(nh * hd);
      for (let h = 0; h < nh; h++) {
        const kh = Math.floor(h / grp);
        const sc = new Float64Array(t + 1).fill(-Infinity);
        let mx = -Infinity;
        for (let s = 0; s <= t; s++) {
          if (o.keep && s !== t && !o.keep(l, t, s)) continue;
          let d = 0;
          for (let i = 0; i < hd; i++) d += Q[t][h * hd + i] * K[s][kh * hd + i];
          sc[s] = d * scale;
          if (sc[s] > mx) mx = sc[s];
        }
        let z = 0;
        for (let s = 0; s <= t; s++) { sc[s] = Math.exp(sc[s] - mx); z += sc[s]; }
        for (let s = 0; s <= t; s++) {
          const a = sc[s] / z;
          if (a === 0) continue;
          for (let i = 0; i < hd; i++) att[h * hd + i] += a * V[s][kh * hd + i];
        }
      }
      const y = matvec(wo, att, D, nh * hd);
      for (let i = 0; i < D; i++) x[t][i] += y[i];
    }
    const fn = m.tensor(p + 'ffn_norm.weight');
    const wg = m.tensor(p + 'ffn_gate.weight'), wu = m.tensor(p + 'ffn_up.weight'), wd = m.tensor(p + 'ffn_down.weight');
    for (let t = 0; t < T; t++) {
      const h = rmsnorm(x[t], fn, m.eps);
      const g = matvec(wg, h, m.nFf, D), u = matvec(wu, h, m.nFf, D);
      const a = g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]);
      const y = matvec(wd, a, D, m.nFf);
      for (let i = 0; i < D; i++) x[t][i] += y[i];
    }
  }
  const on = m.tensor('output_norm.weight');
  const out = m.has('output.weight') ? m.tensor('output.weight') : m.tensor('token_embd.weight');
  const logits = new Map<number, Float64Array>();
  for (const t of o.logitsAt ?? [T - 1]) logits.set(t, matvec(out, rmsnorm(x[t], on, m.eps), m.nVocab, D));
  return { logits };
}
