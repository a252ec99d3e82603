// engine.ts — the engine's JavaScript API: Model.load, tokenize/detokenize, chat templates, and
// sessions (prefill, streamed generation, last-position logits, rewind, KV stats, save/load).
// Heavy work runs in the addon off the JS thread; tokens stream back as they are produced.
import { Template } from '@huggingface/jinja';
import { log } from './log';
import { nativeAddon, NativeModel, NativeSession } from './native';
import type { ChatMessage, KvStats } from './protocol';

export interface ModelInfo {
  path: string;
  name: string;
  architecture: string;
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nFf: number;
  nVocab: number;
  contextLength: number;
  ropeFreqBase: number;
  ropeScaling: string;
  tiedOutput: boolean;
  rmsEps: number;
  fileBytes: number;
  weightType: string;
  tensorTypes: Record<string, number>;
  chatTemplate: string | null;
  bos: number;
  eos: number;
  eot: number;
  addBos: boolean;
  kernels: string;
  /** Where the model's sessions run: the CPU, or CUDA when its weights are on the GPU. */
  backend: 'cpu' | 'cuda';
  /** The GPU ("NVIDIA H200, sm_90, 132 SMs, 139 GiB") or the CPU's name. */
  device: string;
  /** Present when backend "auto" chose the CPU: why CUDA was not used. */
  backendNote?: string;
}

export type BackendName = 'auto' | 'cpu' | 'cuda';
export const BACKENDS: readonly BackendName[] = ['auto', 'cpu', 'cuda'];

export interface LoadOptions {
  threads?: number;
  /**
   * "auto" (default): CUDA when the addon was built with it, a usable GPU is present and the
   * weights fit; otherwise the CPU (info.backendNote says why). "cuda": CUDA or an Error naming
   * the cause. "cpu": never touches CUDA.
   */
  backend?: BackendName;
  onProgress?: (fraction: number) => void;
}

export interface SessionOptions {
  /** Maximum tokens the session may hold (default: the model's context length, capped at 32768). */
  nCtx?: number;
  /** KV cache spec: "f16" (default), "f32", or a compression preset/spec once available. */
  kv?: string;
}

export interface SamplingOptions {
  /** 0 = greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repeatPenalty?: number;
  repeatLastN?: number;
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  maxTokens?: number;
  /** Generation stops when the text contains one of these (the stop string is not emitted). */
  stop?: string[];
  signal?: AbortSignal;
}

export interface GeneratedPiece {
  token: number;
  /** Text completed by this token (may be empty while a UTF-8 sequence is incomplete). */
  text: string;
}

export interface GenerateSummary {
  text: string;
  tokens: number[];
  stopReason: 'eos' | 'length' | 'stop' | 'cancelled';
  decodeMs: number;
}

export class CancelledError extends Error {
  constructor() {
    super('cancelled');
    this.name = 'CancelledError';
  }
}

/** Streams UTF-8 bytes into text without splitting a multi-byte character. */
export class Utf8Stream {
  private decoder = new TextDecoder('utf-8', { fatal: false });
  push(bytes: Uint8Array): string {
    return this.decoder.decode(bytes, { stream: true });
  }
  end(): string {
    return this.decoder.decode();
  }
}

export class Model {
  readonly info: ModelInfo;
  private disposed = false;
  private template: Template | null = null;

  private constructor(readonly handle: NativeModel, info: ModelInfo) {
    this.info = info;
  }

  static async load(file: string, opts: LoadOptions = {}): Promise<Model> {
    const addon = nativeAddon();
    const threads = opts.threads && opts.threads > 0 ? opts.threads : 0;
    const backend = opts.backend ?? 'auto';
    if (!BACKENDS.includes(backend)) throw new Error(`unknown backend '${String(backend)}' (auto, cpu or cuda)`);
    const handle = await addon.loadModel(file, { threads, backend }, opts.onProgress);
    const info = handle.info() as unknown as ModelInfo;
    if (info.backendNote) log.info(`engine: backend ${info.backend} (${info.backendNote})`);
    else log.debug(`engine: backend ${info.backend} on ${info.device}`);
    return new Model(handle, info);
  }

  private check(): void {
    if (this.disposed) throw new Error('model is disposed');
  }

  tokenize(text: string, opts: { addBos?: boolean; special?: boolean } = {}): number[] {
    this.check();
    const ids = this.handle.tokenize(text, opts.addBos ?? false, opts.special ?? false);
    return Array.from(ids);
  }

  tokenBytes(token: number, special = true): Buffer {
    this.check();
    return this.handle.tokenBytes(token, special);
  }

  private maxTokenBytes_ = 0;
  /** Bytes of the longest (non-special) token: text of n bytes is at least n / this many tokens. */
  get maxTokenBytes(): number {
    if (this.maxTokenBytes_ === 0) {
      this.check();
      let m = 1;
      for (let t = 0; t < this.info.nVocab; t++) m = Math.max(m, this.handle.tokenBytes(t, false).length);
      this.maxTokenBytes_ = m;
    }
    return this.maxTokenBytes_;
  }

  detokenize(tokens: number[], special = true): string {
    this.check();
    const parts = tokens.map((t) => this.handle.tokenBytes(t, special));
    return Buffer.concat(parts).toString('utf8');
  }

  isEndOfGeneration(token: number): boolean {
    return token === this.info.eos || token === this.info.eot;
  }

  /** Renders messages with the chat template stored in the file (Llama 3's format when absent). */
  renderChat(messages: ChatMessage[], addGenerationPrompt = true): string {
    this.check();
    const source = this.info.chatTemplate;
    if (!source) return llama3Chat(messages, addGenerationPrompt);
    if (!this.template) this.template = new Template(source);
    return this.template.render({
      messages,
      add_generation_prompt: addGenerationPrompt,
      bos_token: this.detokenize([this.info.bos]),
      eos_token: this.detokenize([this.info.eos]),
      date_string: new Date().toDateString().slice(4),
    });
  }

  createSession(opts: SessionOptions = {}): Session {
    this.check();
    const nCtx = opts.nCtx ?? Math.min(this.info.contextLength, 32768);
    const session = new Session(this, this.handle.createSession({ nCtx, kv: opts.kv ?? 'f16' }));
    // on a CUDA model a note means the session runs on the CPU, or on the GPU with another KV spec
    if (this.info.backend === 'cuda' && session.backendNote) log.warn(`engine: ${session.backendNote}`);
    return session;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.handle.dispose();
  }
}

/** Llama 3 instruct format, used when a file carries no template. */
export function llama3Chat(messages: ChatMessage[], addGenerationPrompt: boolean): string {
  let s = '<|begin_of_text|>';
  for (const m of messages) s += `<|start_header_id|>${m.role}<|end_header_id|>\n\n${m.content.trim()}<|eot_id|>`;
  if (addGenerationPrompt) s += '<|start_header_id|>assistant<|end_header_id|>\n\n';
  return s;
}

export class Session {
  private busy = false;
  private disposed = false;

  constructor(readonly model: Model, readonly handle: NativeSession) {}

  get nTokens(): number {
    return this.handle.nTokens();
  }
  get nCtx(): number {
    return this.handle.nCtx();
  }
  /** Where this session runs: the model's backend, or "cpu" when the GPU has no form of its KV spec (f32). */
  get backend(): 'cpu' | 'cuda' {
    return this.handle.backend();
  }
  /** For a CUDA model: why the session runs on the CPU, or which KV spec it runs on the GPU instead
   * of the one asked for (every token kept); "" when it runs as asked. */
  get backendNote(): string {
    return this.handle.backendNote();
  }
  tokens(): number[] {
    return Array.from(this.handle.tokens());
  }

  private enter(): void {
    if (this.disposed) throw new Error('session is disposed');
    if (this.busy) throw new Error('session is busy (one prefill or generation at a time)');
    this.busy = true;
  }

  /** Appends tokens to the context (batched). Resolves with the last position's logits when asked. */
  async prefill(
    tokens: number[],
    opts: { signal?: AbortSignal; logits?: boolean; onProgress?: (done: number, total: number) => void } = {},
  ): Promise<Float32Array | null> {
    this.enter();
    const onAbort = () => this.handle.cancel();
    opts.signal?.addEventListener('abort', onAbort);
    try {
      if (opts.signal?.aborted) throw new CancelledError();
      const out = await this.handle.eval(Int32Array.from(tokens), opts.logits ?? true, opts.onProgress);
      if (opts.signal?.aborted) throw new CancelledError();
      return out;
    } catch (e) {
      if (e instanceof Error && /cancelled/.test(e.message)) throw new CancelledError();
      throw e;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      this.busy = false;
    }
  }

  /** Logits of the last evaluated position (a copy), or null before any evaluation. */
  logits(): Float32Array | null {
    return this.handle.logits();
  }

  /**
   * Generates from the current context (which must end with the prompt already prefilled).
   * Yields pieces as tokens are sampled; stops at EOS/EOT, maxTokens, a stop string or the signal.
   * Tokens sampled past a stop string are rewound so the session ends right after the answer.
   */
  async *generate(opts: GenerateOptions = {}): AsyncGenerator<GeneratedPiece, GenerateSummary, void> {
    this.enter();
    const stops = (opts.stop ?? []).filter((s) => s.length > 0);
    const maxStop = stops.reduce((m, s) => Math.max(m, s.length), 0);
    const utf8 = new Utf8Stream();
    const queue: number[] = [];
    let wake: (() => void) | null = null;
    let finished: { reason: 'eos' | 'length' | 'cancelled'; decodeMs: number } | null = null;
    let failure: unknown = null;
    const startTokens = this.handle.nTokens();
    const onAbort = () => this.handle.cancel();
    opts.signal?.addEventListener('abort', onAbort);
    const done = this.handle
      .generate(
        {
          maxTokens: opts.maxTokens ?? 512,
          temperature: opts.temperature ?? 0,
          topK: opts.topK ?? 40,
          topP: opts.topP ?? 0.95,
          minP: opts.minP ?? 0.05,
          repeatPenalty: opts.repeatPenalty ?? 1.0,
          repeatLastN: opts.repeatLastN ?? 64,
          seed: opts.seed ?? 0xc0ffee,
        },
        (id) => {
          queue.push(id);
          wake?.();
        },
      )
      .then(
        (r) => {
          finished = { reason: r.reason, decodeMs: r.decodeMs };
          wake?.();
        },
        (e) => {
          failure = e;
          wake?.();
        },
      );
    let text = '';
    let emitted = 0; // chars of `text` already yielded
    const tokens: number[] = [];
    let stopReason: GenerateSummary['stopReason'] | null = null;
    try {
      for (;;) {
        if (queue.length === 0 && !finished && !failure) {
          await new Promise<void>((r) => (wake = r));
          wake = null;
          continue;
        }
        if (queue.length > 0) {
          const id = queue.shift()!;
          if (stopReason) continue; // drain tokens produced after a stop
          tokens.push(id);
          if (this.model.isEndOfGeneration(id)) continue;
          text += utf8.push(this.model.tokenBytes(id, false));
          const hit = firstStop(text, stops, Math.max(0, emitted - maxStop));
          if (hit >= 0) {
            text = text.slice(0, hit);
            stopReason = 'stop';
            this.handle.cancel();
          }
          // hold back a tail that could still become a stop string
          const safe = stopReason ? text.length : Math.max(emitted, text.length - (maxStop > 0 ? maxStop - 1 : 0));
          if (safe > emitted) {
            yield { token: id, text: text.slice(emitted, safe) };
            emitted = safe;
          }
          continue;
        }
        if (failure) throw failure;
        break;
      }
      await done;
      const fin = finished as { reason: 'eos' | 'length' | 'cancelled'; decodeMs: number } | null;
      if (!stopReason) {
        text += utf8.end();
        if (text.length > emitted) yield { token: -1, text: text.slice(emitted) };
        stopReason = opts.signal?.aborted ? 'cancelled' : fin?.reason ?? 'length';
      } else {
        // rewind tokens decoded after the stop string appeared
        const keep = startTokens + tokens.length;
        if (this.handle.nTokens() > keep) this.handle.truncate(keep);
      }
      return { text, tokens, stopReason, decodeMs: fin?.decodeMs ?? 0 };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      if (!finished && !failure) {
        this.handle.cancel();
        await done;
      }
      this.busy = false;
    }
  }

  /** Rewinds the context to its first n tokens. */
  truncate(n: number): void {
    if (this.busy) throw new Error('session is busy');
    this.handle.truncate(n);
  }

  /** Bytes held against f16, with tokens per precision tier (f16 residual, each tier, evicted). */
  kvStats(): KvStats {
    const k = this.handle.kvStats();
    const tiers: Record<string, number> = {};
    const names = tierNames(k.spec);
    if (k.tierTokens && k.tierTokens.length > 0) {
      if (k.residualTokens > 0) tiers.f16 = k.residualTokens;
      k.tierTokens.forEach((n, i) => {
        const name = names[i] ?? `tier${i + 1}`;
        if (n > 0) tiers[name] = (tiers[name] ?? 0) + n;
      });
      if (k.evictedTokens > 0) tiers.evicted = k.evictedTokens;
    }
    return {
      tokens: k.tokens,
      residentTokens: k.residentTokens,
      bytes: k.bytes,
      f16Bytes: k.f16Bytes,
      spec: k.spec,
      perLayer: k.perLayer,
      tiers,
      breakdown: k.breakdown,
      ...(k.streamingHeads !== undefined ? { streamingHeads: k.streamingHeads } : {}),
    };
  }

  async saveState(file: string, meta: string): Promise<void> {
    this.enter();
    try {
      await this.handle.saveState(file, meta);
    } finally {
      this.busy = false;
    }
  }

  /** Replaces the session's state with a saved one; returns the metadata string stored with it. */
  async loadState(file: string): Promise<string> {
    this.enter();
    try {
      return await this.handle.loadState(file);
    } finally {
      this.busy = false;
    }
  }

  get isBusy(): boolean {
    return this.busy;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.handle.dispose();
  }
}

function firstStop(text: string, stops: string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s, from);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/**
 * Display names of a canonical KV spec's precision tiers, most precise first: "q8", "q4", "f16"
 * when keys and values share a width, "k4v2" when they differ. "k4,v2,..." has one tier;
 * "t8:0.1/4x2:0.3/2,..." one per '/'-separated item.
 */
export function tierNames(spec: string): string[] {
  const name = (k: number, v: number) => (k === v ? (k >= 16 ? 'f16' : `q${k}`) : `k${k}v${v}`);
  const items = spec.split(',');
  const t = items.find((x) => /^t\d/.test(x));
  if (t) {
    return t.slice(1).split('/').map((tier) => {
      const [bits] = tier.split(':');
      const [k, v] = bits.split('x').map(Number);
      return name(k, Number.isFinite(v) ? v : k);
    });
  }
  const k = items.find((x) => /^k\d+$/.test(x));
  const v = items.find((x) => /^v\d+$/.test(x));
  return k && v ? [name(Number(k.slice(1)), Number(v.slice(1)))] : [];
}
