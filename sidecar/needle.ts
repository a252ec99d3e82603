// needle.ts — a Llama-3-architecture GGUF whose weights are set by hand to do multi-key retrieval
// (needle in a haystack that can actually fail), the prompts it answers, and its evaluation.
//
// Construction (2 layers, head_dim 128, FFNs zero, untied output; residual stream of 256 dims):
//   every token embeds as bias(1) + a unit code: keys one-hot in EK, values one-hot in EV, every other
//   token (the filler) a random unit vector in F — so all embeddings have the same norm.
//   Layer 0, previous-token head: Q and K are constants read off the bias, laid on RoPE's 12
//   highest-frequency pairs with phases that make q_t·k_s peak at t−s = 1 (gap ≥ 21 nats to any
//   other offset up to 128k); V is the key code, written into P: "the previous token was key i".
//   Layer 1, induction head: Q = the current token's key code, K = P, both on RoPE's 16 lowest
//   pairs (nearly rotation-free with Llama 3.1 scaling: ≤ 0.22 rad at 32k); V = the value code,
//   written into O. The unembedding reads O (value j's row = e_O[j]); a "no answer" token reads the
//   bias, so a lost needle shows up as that token instead of the value.
import { GgmlTypeName, GgufMeta, meta, TensorSpec, writeGguf } from './gguf/writer';
import { llama3Metadata, llama3RopeFactors, llama3Vocab } from './synth';
import type { Model as EngineModel } from './engine';

// ---- shapes and residual-stream layout -------------------------------------------------------

export const NEEDLE_SHAPE = {
  nEmbd: 256,
  nLayer: 2,
  headDim: 128,
  nFf: 64,
  ropeFreqBase: 500000,
  ropeScalingFactor: 8,
  nKeys: 32,
  nValues: 64,
} as const;

const D = NEEDLE_SHAPE.nEmbd;
const HD = NEEDLE_SHAPE.headDim;
const BIAS = 0;
const EK = 1; // key identity, 32 dims
const EV = EK + NEEDLE_SHAPE.nKeys; // value identity, 64 dims
const P = EV + NEEDLE_SHAPE.nValues; // previous token's key code, 32 dims
const O = P + NEEDLE_SHAPE.nKeys; // retrieved value, 64 dims
const F = O + NEEDLE_SHAPE.nValues; // filler codes, the rest
const NF = D - F;
/** Layer 0 uses RoPE pairs [0, PREV_PAIRS); layer 1 uses the last nKeys/2 pairs. */
const PREV_PAIRS = 12;
const MATCH_DIM0 = HD - NEEDLE_SHAPE.nKeys; // first head dim of layer 1's key-match block

// ---- vocabulary ------------------------------------------------------------------------------

const KEY_WORDS = (
  'Apple Banana Cherry Dragon Eagle Falcon Garden Harbor Island Jungle Lemon Mango Needle Ocean Pepper Quartz ' +
  'River Silver Tiger Violet Walnut Yellow Anchor Bridge Candle Desert Forest Glacier Hammer Lantern Marble Orbit'
).split(' ');

const FILLER_WORDS = (
  'the of and to in is was that for on with as by at from it this be are or an which his her they ' +
  'have had not but were their one all been has there when who more would its so into some other time ' +
  'than then only over new also after most could many these them may first two people about way well ' +
  'long made little work world year day life home water small under place city old house country state ' +
  'number part sound word line hand light group side school story night study learn write paper music ' +
  'color river mountain morning evening garden window table letter market road field village summer ' +
  'quiet slowly across between through during before along around because while where every each ' +
  'found called looked moved turned asked kept began seemed stood carried walked opened watched'
).split(' ');

export interface NeedleVocab {
  /** Key tokens (nKeys), e.g. " Apple". */
  keys: number[];
  /** Value tokens (nValues): three-digit numbers such as "417". */
  values: number[];
  /** Filler tokens the prompts use (any token that is neither key nor value acts as filler). */
  filler: number[];
  /** The answer when nothing is retrieved ("?"). */
  none: number;
  bos: number;
}

let vocabCache: NeedleVocab | null = null;

export function needleVocab(): NeedleVocab {
  if (vocabCache) return vocabCache;
  const v = llama3Vocab();
  const id = new Map<string, number>();
  v.tokens.forEach((t, i) => id.set(t, i));
  const need = (s: string) => {
    const i = id.get(s);
    if (i === undefined) throw new Error(`needle vocabulary: no single token ${JSON.stringify(s)}`);
    return i;
  };
  const keys = KEY_WORDS.map((w) => need('Ġ' + w));
  if (keys.length !== NEEDLE_SHAPE.nKeys) throw new Error('needle vocabulary: wrong key count');
  const values: number[] = [];
  for (let i = 0; i < NEEDLE_SHAPE.nValues; i++) values.push(need(String(101 + 13 * i)));
  const special = new Set([...keys, ...values]);
  const filler = FILLER_WORDS.map((w) => id.get('Ġ' + w)).filter((x): x is number => x !== undefined && !special.has(x));
  filler.push(need('.'), need(','));
  vocabCache = { keys, values, filler, none: need('?'), bos: 128000 };
  return vocabCache;
}

// ---- seeded randomness -----------------------------------------------------------------------

/** mulberry32: small, seeded, good enough for layouts and noise. */
function rng(seed: number): () => number {
  let a = (seed >>> 0) || 0x9e3779b9;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gauss(r: () => number): number {
  const u = Math.max(r(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
}

function shuffled<T>(a: T[], r: () => number): T[] {
  const b = a.slice();
  for (let i = b.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [b[i], b[j]] = [b[j], b[i]];
  }
  return b;
}

// ---- the weights -----------------------------------------------------------------------------

export interface NeedleModelOptions {
  out: string;
  /** Type of the two vocabulary-sized matrices (token_embd, output); the rest is F32. Default f16. */
  type?: 'f32' | 'f16';
  /** Attention heads per layer (default 1). Head 0 does the work; others attend at random and write nothing. */
  nHead?: number;
  /** Scale of the random, score-neutral content put into unused K/V dims (0 = clean cache). Default 1. */
  kvNoise?: number;
  /** Layer 0: score per RoPE pair at offset 1 (12 pairs; the gap to any other offset is ≈ 1.4× this). Default 15. */
  prevAmp?: number;
  /** Layer 1: score of a full key match (competes with log(context) for the rest). Default 30. */
  matchScore?: number;
  /** Logit scale of the retrieved value. Default 1.5. */
  outScale?: number;
  contextLength?: number;
  seed?: number;
  name?: string;
}

/** Normalized magnitude of a unit entry of an embedding (norm √2) after RMSNorm: √(D/2). */
const U2 = Math.sqrt(D / 2);
/** … of a value position's entries after layer 0 added the unit key code (norm √3): √(D/3). */
const U3 = Math.sqrt(D / 3);
const O_GAIN = 3;

interface Built {
  md: Record<string, GgufMeta>;
  tensors: TensorSpec[];
  params: number;
}

function f32bytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function toF16(a: Float32Array): Uint8Array {
  const out = new Uint16Array(a.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < a.length; i++) {
    f[0] = a[i];
    const x = u[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    let h: number;
    if (exp === 0xff) h = sign | 0x7c00 | (mant ? 0x200 : 0);
    else {
      const e = exp - 127 + 15;
      if (e >= 0x1f) h = sign | 0x7c00;
      else if (e <= 0) {
        if (e < -10) h = sign;
        else {
          mant |= 0x800000;
          const shift = 14 - e;
          let hm = mant >>> shift;
          const rem = mant & ((1 << shift) - 1);
          const half = 1 << (shift - 1);
          if (rem > half || (rem === half && hm & 1)) hm++;
          h = sign | hm;
        }
      } else {
        let hm = mant >>> 13;
        const rem = mant & 0x1fff;
        let he = e;
        if (rem > 0x1000 || (rem === 0x1000 && hm & 1)) {
          hm++;
          if (hm === 0x400) { hm = 0; he++; }
        }
        h = he >= 0x1f ? sign | 0x7c00 : sign | (he << 10) | hm;
      }
    }
    out[i] = h;
  }
  return new Uint8Array(out.buffer);
}

function buildNeedle(o: NeedleModelOptions): Built {
  const S = NEEDLE_SHAPE;
  const nHead = o.nHead ?? 1;
  if (!Number.isInteger(nHead) || nHead < 1) throw new Error(`nHead must be a positive integer, got ${nHead}`);
  const type: GgmlTypeName = o.type ?? 'f16';
  const noise = o.kvNoise ?? 1;
  const prevAmp = o.prevAmp ?? 15;
  const matchScore = o.matchScore ?? 30;
  const outScale = o.outScale ?? 1.5;
  const seed = o.seed ?? 1;
  const contextLength = o.contextLength ?? 131072;
  const v = llama3Vocab();
  const nv = needleVocab();
  const nVocab = v.tokens.length;
  const qDim = nHead * HD;
  const ropeFactors = llama3RopeFactors(HD, S.ropeFreqBase, S.ropeScalingFactor);
  const theta = (pair: number) => Math.pow(S.ropeFreqBase, (-2 * pair) / HD) / ropeFactors[pair];

  const md = llama3Metadata({
    name: o.name ?? `llamakv-needle-${type}`, contextLength, nEmbd: D, nLayer: S.nLayer, nFf: S.nFf,
    nHead, nHeadKv: nHead, headDim: HD, ropeFreqBase: S.ropeFreqBase,
  }, v);

  const tensors: TensorSpec[] = [];
  let params = 0;
  // rows × cols, row-major (GGUF ne = [cols, rows]); `fill` sets entries of a zeroed array.
  const matrix = (name: string, cols: number, rows: number, fill: (m: Float32Array) => void, t: GgmlTypeName = 'f32') => {
    params += rows * cols;
    tensors.push({
      name, type: t, ne: [cols, rows],
      data: function* () {
        const m = new Float32Array(rows * cols);
        fill(m);
        yield t === 'f16' ? toF16(m) : f32bytes(m);
      },
    });
  };
  const vector = (name: string, values: Float32Array) => {
    params += values.length;
    tensors.push({ name, type: 'f32', ne: [values.length], data: function* () { yield f32bytes(values); } });
  };
  const ones = (n: number) => new Float32Array(n).fill(1);

  // Token embedding: bias + a unit code. Filler codes are random unit vectors in F.
  const keyIndex = new Map<number, number>(nv.keys.map((t, i) => [t, i]));
  const valueIndex = new Map<number, number>(nv.values.map((t, i) => [t, i]));
  matrix('token_embd.weight', D, nVocab, (m) => {
    const r = rng(seed * 1000003 + 17);
    const code = new Float64Array(NF);
    for (let t = 0; t < nVocab; t++) {
      const row = t * D;
      m[row + BIAS] = 1;
      const k = keyIndex.get(t);
      const val = valueIndex.get(t);
      if (k !== undefined) m[row + EK + k] = 1;
      else if (val !== undefined) m[row + EV + val] = 1;
      else {
        let n2 = 0;
        for (let i = 0; i < NF; i++) { code[i] = gauss(r); n2 += code[i] * code[i]; }
        const s = 1 / Math.sqrt(n2);
        for (let i = 0; i < NF; i++) m[row + F + i] = code[i] * s;
      }
    }
  }, type);
  vector('output_norm.weight', ones(D));
  // Unembedding: value j reads O[j]; "none" reads the bias; everything else has logit 0.
  matrix('output.weight', D, nVocab, (m) => {
    nv.values.forEach((t, j) => { m[t * D + O + j] = outScale; });
    m[nv.none * D + BIAS] = outScale / 3;
  }, type);
  vector('rope_freqs.weight', Float32Array.from(ropeFactors));

  // Random, score-neutral content for unused K/V dims (and the attention of extra heads).
  const noiseFrom = (m: Float32Array, row: number, std: number, r: () => number) => {
    for (let i = 0; i < NF; i++) m[row * D + F + i] = std * gauss(r);
  };

  for (let l = 0; l < S.nLayer; l++) {
    const p = `blk.${l}.`;
    const r = rng(seed * 7919 + l * 104729 + 1);
    vector(p + 'attn_norm.weight', ones(D));
    // Rows are head dims (head h's dims at h*HD…), columns residual dims.
    const q = new Float32Array(qDim * D);
    const k = new Float32Array(qDim * D);
    const vv = new Float32Array(qDim * D);
    const wo = new Float32Array(D * qDim);
    if (l === 0) {
      // Previous-token head: per pair j, K = κ(1,0), Q = κ(cos θ_j, −sin θ_j) from the bias, so
      // q_t·k_s ∝ cos((t−s−1)θ_j), largest at t−s = 1. Score per pair = U2²·w²/√HD = prevAmp.
      const w = Math.sqrt((prevAmp * Math.sqrt(HD)) / (U2 * U2));
      for (let j = 0; j < PREV_PAIRS; j++) {
        const th = theta(j);
        q[(2 * j) * D + BIAS] = w * Math.cos(th);
        q[(2 * j + 1) * D + BIAS] = -w * Math.sin(th);
        k[(2 * j) * D + BIAS] = w;
      }
      for (let d = 2 * PREV_PAIRS; d < HD; d++) noiseFrom(k, d, (noise * 2) / U2, r);
      // V = the key code (unit), written into P.
      for (let i = 0; i < S.nKeys; i++) {
        vv[i * D + EK + i] = 1 / U2;
        wo[(P + i) * qDim + i] = 1;
      }
      for (let d = S.nKeys; d < HD; d++) noiseFrom(vv, d, (noise * 0.25) / U2, r);
    } else {
      // Induction head: Q = current key code, K = P (previous token's key code), on the lowest pairs.
      // Query side: unit key entries normalize to U2; value positions' P entries to U3.
      const w = Math.sqrt((matchScore * Math.sqrt(HD)) / (U2 * U3));
      for (let i = 0; i < S.nKeys; i++) {
        q[(MATCH_DIM0 + i) * D + EK + i] = w;
        k[(MATCH_DIM0 + i) * D + P + i] = w;
      }
      for (let d = 0; d < MATCH_DIM0; d++) noiseFrom(k, d, (noise * 2) / U2, r);
      // V = the value code (unit at a value position), written into O with gain O_GAIN.
      for (let j = 0; j < S.nValues; j++) {
        vv[j * D + EV + j] = 1 / U3;
        wo[(O + j) * qDim + j] = O_GAIN;
      }
      for (let d = S.nValues; d < HD; d++) noiseFrom(vv, d, (noise * 0.25) / U2, r);
    }
    // Extra heads: random attention over the filler codes, outputs discarded (Wo columns zero).
    for (let h = 1; h < nHead; h++) {
      for (let d = 0; d < HD; d++) {
        noiseFrom(q, h * HD + d, 1 / U2, r);
        noiseFrom(k, h * HD + d, 1 / U2, r);
        noiseFrom(vv, h * HD + d, 0.5 / U2, r);
      }
    }
    matrix(p + 'attn_q.weight', D, qDim, (m) => m.set(q));
    matrix(p + 'attn_k.weight', D, qDim, (m) => m.set(k));
    matrix(p + 'attn_v.weight', D, qDim, (m) => m.set(vv));
    matrix(p + 'attn_output.weight', qDim, D, (m) => m.set(wo));
    vector(p + 'ffn_norm.weight', ones(D));
    matrix(p + 'ffn_gate.weight', D, S.nFf, () => undefined);
    matrix(p + 'ffn_up.weight', D, S.nFf, () => undefined);
    matrix(p + 'ffn_down.weight', S.nFf, D, () => undefined);
  }
  return { md, tensors, params };
}

/** Writes the needle model. */
export async function synthNeedleModel(opts: NeedleModelOptions): Promise<{ path: string; params: number }> {
  const b = buildNeedle(opts);
  writeGguf(opts.out, b.md, b.tensors);
  return { path: opts.out, params: b.params };
}

// ---- prompts ---------------------------------------------------------------------------------

export interface NeedleQuery {
  key: number;
  value: number;
  /** Index of the KEY token in `tokens` (the VALUE is at pos + 1). */
  pos: number;
  /** pos / tokens.length. */
  depth: number;
}

export interface NeedlePrompt {
  /** The haystack: BOS, filler with the `KEY VALUE` needles; contextTokens − 1 tokens. */
  tokens: number[];
  /** One per needle, by depth. Prompt i is `[...tokens, queries[i].key]`; the answer is `value`. */
  queries: NeedleQuery[];
}

export interface NeedlePromptOptions {
  /** Tokens of a full prompt (haystack + the final KEY). */
  contextTokens: number;
  /** Needles (≤ 32), spread evenly in depth with jitter. */
  nNeedles: number;
  seed?: number;
}

/**
 * Builds a haystack with nNeedles `KEY VALUE` pairs (distinct keys, distinct values) at spread
 * depths. All queries share the haystack: prefill it once, then per query append the KEY, read
 * the logits, and rewind (session.truncate(tokens.length)).
 */
export function needlePrompt(o: NeedlePromptOptions): NeedlePrompt {
  const nv = needleVocab();
  const n = o.nNeedles;
  const L = o.contextTokens - 1;
  if (!Number.isInteger(n) || n < 1 || n > NEEDLE_SHAPE.nKeys) throw new Error(`nNeedles must be 1..${NEEDLE_SHAPE.nKeys}`);
  if (L < 4 * n + 8) throw new Error(`contextTokens ${o.contextTokens} too small for ${n} needles`);
  const r = rng((o.seed ?? 1) * 2654435761 + o.contextTokens * 97 + n);
  const tokens: number[] = new Array(L);
  tokens[0] = nv.bos;
  for (let i = 1; i < L; i++) tokens[i] = nv.filler[Math.floor(r() * nv.filler.length)];
  const keys = shuffled(nv.keys, r).slice(0, n);
  const values = shuffled(nv.values, r).slice(0, n);
  // Slots of width w from position 2 to L-3; each needle lands inside its slot with jitter, gaps ≥ 2.
  const lo = 2;
  const hi = L - 3;
  const w = (hi - lo) / n;
  const queries: NeedleQuery[] = [];
  for (let i = 0; i < n; i++) {
    const a = Math.ceil(lo + i * w);
    const b = Math.floor(lo + (i + 1) * w) - 2;
    const pos = a + Math.floor(r() * Math.max(1, b - a + 1));
    tokens[pos] = keys[i];
    tokens[pos + 1] = values[i];
    queries.push({ key: keys[i], value: values[i], pos, depth: pos / L });
  }
  return { tokens, queries };
}

/** The full token list of query i. */
export function queryTokens(p: NeedlePrompt, i: number): number[] {
  return [...p.tokens, p.queries[i].key];
}

// ---- evaluation with the engine --------------------------------------------------------------

export interface NeedleEvalOptions {
  contextTokens: number;
  nNeedles?: number;
  /** KV cache spec passed to createSession (default f16). */
  kv?: string;
  seed?: number;
  threads?: number;
}

export interface NeedleEvalResult {
  accuracy: number;
  correct: number;
  total: number;
  results: { key: number; value: number; depth: number; predicted: number; ok: boolean }[];
  /** Haystack prefill time and speed. */
  prefillMs: number;
  prefillTokensPerSecond: number;
  kv?: { tokens: number; residentTokens: number; bytes: number; f16Bytes: number; streamingHeads?: number };
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/**
 * Prefills the haystack once and asks every key (append KEY, read top-1, rewind). Takes a model
 * path (loaded and disposed here) or a loaded Model.
 */
export async function evalNeedle(model: string | EngineModel, o: NeedleEvalOptions): Promise<NeedleEvalResult> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { Model } = require('./engine') as typeof import('./engine');
  const m = typeof model === 'string' ? await Model.load(model, { threads: o.threads ?? 0 }) : model;
  try {
    const p = needlePrompt({ contextTokens: o.contextTokens, nNeedles: o.nNeedles ?? 16, seed: o.seed });
    const s = m.createSession({ nCtx: o.contextTokens, kv: o.kv ?? 'f16' });
    try {
      const t0 = performance.now();
      await s.prefill(p.tokens, { logits: false });
      const prefillMs = performance.now() - t0;
      let kv: NeedleEvalResult['kv'];
      try {
        const st = s.kvStats();
        kv = { tokens: st.tokens, residentTokens: st.residentTokens, bytes: st.bytes, f16Bytes: st.f16Bytes, streamingHeads: st.streamingHeads };
      } catch {
        kv = undefined;
      }
      const results: NeedleEvalResult['results'] = [];
      for (const q of p.queries) {
        const logits = await s.prefill([q.key]);
        const predicted = argmax(logits!);
        results.push({ key: q.key, value: q.value, depth: q.depth, predicted, ok: predicted === q.value });
        s.truncate(p.tokens.length);
      }
      const correct = results.filter((x) => x.ok).length;
      return {
        accuracy: correct / results.length, correct, total: results.length, results,
        prefillMs, prefillTokensPerSecond: p.tokens.length / (prefillMs / 1000), kv,
      };
    } finally {
      s.dispose();
    }
  } finally {
    if (typeof model === 'string') m.dispose();
  }
}
