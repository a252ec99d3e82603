// native.ts — loads the compiled addon (build/native/Release/llamakv.node) and types its surface.
// The addon is the only place model code runs; see native/src/addon.cpp.
import * as fs from 'fs';
import * as path from 'path';

export interface NativeSamplingOptions {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repeatPenalty: number;
  repeatLastN: number;
  seed: number;
}

export interface NativeGenerateResult {
  tokens: number;
  reason: 'eos' | 'length' | 'cancelled';
  decodeMs: number;
}

export interface NativeSession {
  eval(tokens: Int32Array, wantLogits: boolean, onProgress?: (done: number, total: number) => void): Promise<Float32Array | null>;
  generate(
    opts: NativeSamplingOptions & { maxTokens: number },
    onToken: (id: number) => void,
  ): Promise<NativeGenerateResult>;
  cancel(): void;
  nTokens(): number;
  nCtx(): number;
  tokens(): Int32Array;
  truncate(n: number): void;
  logits(): Float32Array | null;
  kvStats(): {
    tokens: number;
    residentTokens: number;
    bytes: number;
    f16Bytes: number;
    spec: string;
    perLayer: number[];
    /** Where the bytes go: codes, scales/zero points, exact outliers, f16 residual, bookkeeping, rewind journal. */
    breakdown: { codes: number; scales: number; outliers: number; residual: number; index: number; journal: number };
    /** Mean tokens per layer and KV head in the f16 residual window, evicted, and at each precision tier. */
    residualTokens: number;
    evictedTokens: number;
    tierTokens: number[];
    /** (layer, KV head) pairs the head budgets (hl) found to be streaming heads; absent without hl. */
    streamingHeads?: number;
  };
  saveState(file: string, meta: string): Promise<void>;
  loadState(file: string): Promise<string>;
  /** "cuda" when the session runs on the GPU; "cpu" otherwise (backendNote says why, for a CUDA model;
   * on the GPU it names the KV spec in force when that is not the one asked for). */
  backend(): 'cpu' | 'cuda';
  backendNote(): string;
  dispose(): void;
}

export interface NativeModel {
  info(): Record<string, unknown>;
  tokenize(text: string, addBos: boolean, parseSpecial: boolean): Int32Array;
  tokenBytes(id: number, special: boolean): Buffer;
  createSession(opts: { nCtx: number; kv: string }): NativeSession;
  dispose(): void;
}

export interface NativeAddon {
  /** Rejects for backend "cuda" when CUDA is unusable (the message names the cause); throws for an unknown backend. */
  loadModel(
    file: string,
    opts: { threads: number; backend?: 'auto' | 'cpu' | 'cuda' },
    onProgress?: (fraction: number) => void,
  ): Promise<NativeModel>;
  quantize(type: string, values: Float32Array): Buffer;
  dequantize(type: string, data: Buffer, n: number): Float32Array;
  systemInfo(): { cpu: string; kernels: string; cuda: string; cudaCompiled: boolean; cudaAvailable: boolean; threads: number };
}

let cached: NativeAddon | null = null;

/** The addon, or a clear error saying how to build it. */
export function nativeAddon(): NativeAddon {
  if (cached) return cached;
  const root = path.resolve(__dirname, '..', '..');
  const candidates = [
    process.env.LLAMAKV_ADDON,
    path.join(root, 'build', 'native', 'Release', 'llamakv.node'),
    path.join(root, 'build', 'native', 'llamakv.node'),
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new Error(`llamakv native addon not found (looked in ${candidates.join(', ')}); run "npm run build:native"`);
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  cached = require(found) as NativeAddon;
  return cached;
}
