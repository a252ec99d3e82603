// helpers.ts — shared test fixtures: generated models (cached outside git under .cache/models or
// $LLAMAKV_CACHE), the llama.cpp oracle (node-llama-cpp), and small utilities.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { after } from 'node:test';
import { synthModel, SynthOptions } from '../sidecar/synth';

export const repoRoot = path.resolve(__dirname, '..', '..');
export const cacheDir = process.env.LLAMAKV_CACHE ?? path.join(repoRoot, '.cache', 'models');

/**
 * Path of a generated Llama 3 GGUF (real Llama 3 vocabulary), created on first use and cached.
 * The file name encodes the options, so different shapes are different files.
 */
export async function testModel(opts: SynthOptions = {}): Promise<string> {
  const o: SynthOptions = { preset: 'tiny', type: 'f32', seed: 1, ...opts };
  const key = Object.entries(o)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}-${typeof v === 'object' ? JSON.stringify(v).replace(/[^a-zA-Z0-9.]+/g, '_') : v}`)
    .join('_');
  const file = path.join(cacheDir, `${key}.gguf`);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(cacheDir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    await synthModel({ ...o, out: tmp });
    fs.renameSync(tmp, file);
  }
  return file;
}

/** The default tiny test model (F32 weights). */
export function tinyModel(): Promise<string> {
  return testModel();
}

export function tmpDir(prefix = 'llamakv-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A tmpDir maker whose folders are removed after the calling test file's tests. */
export function tmpDirsRemovedAfter(): (prefix?: string) => string {
  const made: string[] = [];
  after(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  return (prefix?: string) => {
    const d = tmpDir(prefix);
    made.push(d);
    return d;
  };
}

// ---- llama.cpp oracle -------------------------------------------------------------------------

type NodeLlamaCpp = typeof import('node-llama-cpp');
let llamaPromise: Promise<import('node-llama-cpp').Llama> | null = null;

// node-llama-cpp is ESM-only; load it with a real dynamic import (tsc would turn import() into require()).
const importEsm = new Function('s', 'return import(s)') as (s: string) => Promise<NodeLlamaCpp>;

export async function llamaCpp(): Promise<import('node-llama-cpp').Llama> {
  if (!llamaPromise) {
    llamaPromise = importEsm('node-llama-cpp').then((m) =>
      m.getLlama({ gpu: false, build: 'never', logLevel: m.LlamaLogLevel.error, progressLogs: false }),
    );
  }
  return llamaPromise;
}

import { argmax, logSoftmax } from '../sidecar/logits';
export { argmax, logSoftmax };

export interface Divergence {
  maxAbsDiff: number;
  kl: number;
  argmaxA: number;
  argmaxB: number;
}

/** Compares two log-distributions: max |Δ log p| over tokens with p > 1e-12, and KL(a || b). */
export function compareLogProbs(a: Float64Array, b: Float64Array): Divergence {
  let maxAbsDiff = 0;
  let kl = 0;
  for (let i = 0; i < a.length; i++) {
    const pa = Math.exp(a[i]);
    if (pa > 1e-12 || Math.exp(b[i]) > 1e-12) maxAbsDiff = Math.max(maxAbsDiff, Math.abs(a[i] - b[i]));
    kl += pa * (a[i] - b[i]);
  }
  return { maxAbsDiff, kl, argmaxA: argmax(a), argmaxB: argmax(b) };
}

/** The log-distribution of a controlledEvaluate item that asked for probabilities, renormalized in float64. */
export function logProbsOf(item: unknown): Float64Array {
  const probs = (item as { next: { probabilities: Map<number, number> } }).next.probabilities;
  const n = probs.size;
  const lp = new Float64Array(n);
  let s = 0;
  for (let i = 0; i < n; i++) s += probs.get(i) ?? 0;
  for (let i = 0; i < n; i++) lp[i] = Math.log(Math.max(probs.get(i) ?? 0, 1e-300) / s);
  return lp;
}

/**
 * llama.cpp's next-token log-distribution after `tokens` (the oracle). KV cache type f32 unless
 * told otherwise; flash attention off. Probabilities come from controlledEvaluate at temperature 0,
 * renormalized in float64.
 */
export async function llamaCppLogProbs(modelPath: string, tokens: number[], kvType: 'F32' | 'F16' = 'F32'): Promise<Float64Array> {
  const llama = await llamaCpp();
  const model = await llama.loadModel({ modelPath });
  try {
    const ctx = await model.createContext({
      contextSize: Math.max(256, tokens.length + 8),
      batchSize: Math.max(64, tokens.length),
      threads: 2,
      flashAttention: false,
      experimentalKvCacheKeyType: kvType,
      experimentalKvCacheValueType: kvType,
    });
    try {
      const seq = ctx.getSequence();
      const items: (number | [number, { generateNext: { probabilities: true } }])[] = tokens.slice(0, -1);
      items.push([tokens[tokens.length - 1], { generateNext: { probabilities: true } }]);
      const res = await seq.controlledEvaluate(items as never);
      return logProbsOf(res[res.length - 1]);
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** llama.cpp's tokenization (vocab only load). */
export async function llamaCppTokenize(modelPath: string, text: string, special: boolean): Promise<number[]> {
  const llama = await llamaCpp();
  const model = await llama.loadModel({ modelPath, vocabOnly: true });
  try {
    return Array.from(model.tokenize(text, special) as unknown as number[]);
  } finally {
    await model.dispose();
  }
}

/** The raw addon model object (tokenize / tokenBytes / createSession). */
export async function loadAddonModel(modelPath: string): Promise<import('../sidecar/native').NativeModel> {
  const { nativeAddon } = await import('../sidecar/native');
  return nativeAddon().loadModel(modelPath, { threads: 2 });
}
