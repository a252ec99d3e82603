// bench-worker.ts — one benchmark row (one engine, one model file, one KV setting) in its own
// process, so peak RSS belongs to that engine alone. `llamakv bench` (bench.ts) forks one per row
// and drives them over IPC one timed phase at a time, alternating rows so machine drift hits all.
// Every timed phase also reports the CPU time other processes took while it ran (/proc/stat
// against this process's own utime+stime): the parent repeats disturbed phases.
import * as fs from 'fs';

// ---- what the parent sends and gets back ------------------------------------------------------

export interface RowConfig {
  engine: 'llamakv' | 'llama.cpp';
  model: string;
  threads: number;
  /** llamakv: a KV spec ("f16", a preset, a custom spec); llama.cpp: f16 | q8_0 | q4_0 (K and V). */
  kv: string;
  /** llama.cpp batch size (tokens per decode call while prefilling). */
  batch: number;
}

export type WorkerOp =
  | { op: 'load'; config: RowConfig }
  | { op: 'warmup' }
  | { op: 'open'; nCtx: number }
  | { op: 'prefill'; n: number } // from an empty context: positions [0, n)
  | { op: 'extend'; to: number } // from the current length to `to`
  | { op: 'decode'; at: number; n: number } // n tokens with the context at `at` tokens
  | { op: 'save'; file: string } // the context's state, to skip a long fill next time
  | { op: 'restore'; file: string; n: number } // a saved state of n tokens replaces the context
  | { op: 'stats' }
  | { op: 'exit' };

export type WorkerRequest = WorkerOp & { id: number };

/** CPU accounting of one timed phase. */
export interface PhaseCpu {
  wallMs: number;
  /** CPU time of this process (both its JS thread and the engine's threads). */
  ownCpuMs: number;
  /** CPU time every other process took (busy jiffies of the machine minus ours), steal included. */
  othersCpuMs: number;
  stealMs: number;
  /** othersCpuMs / (wallMs × CPUs): the share of the machine others used during the phase. */
  othersShare: number;
  ncpu: number;
}

export interface PrefillResult extends PhaseCpu {
  tokens: number;
  tokensPerSecond: number;
}

export interface DecodeResult extends PhaseCpu {
  /** Milliseconds between consecutive sampled tokens (each one token evaluated + sampled). */
  intervalsMs: number[];
  tokensPerSecond: number;
  kvBytes: number;
}

export interface WorkerStats {
  nTokens: number;
  kvBytes: number;
  /** llama.cpp: KV bytes allocated for the whole context; llamakv: what kvStats reports held. */
  kvAllocatedBytes: number;
  rssBytes: number;
  peakRssBytes: number;
  rssAnonBytes: number;
  rssFileBytes: number;
  threads: number;
}

// ---- CPU accounting -----------------------------------------------------------------------------

const TICK_MS = 10; // USER_HZ is 100 on Linux: /proc/stat and /proc/self/stat count 10 ms ticks

interface CpuSample { t: number; busy: number; steal: number; own: number; ncpu: number }

/** Busy and steal ticks of the whole machine (first line of /proc/stat) and the CPU count. */
export function machineTicks(): { busy: number; steal: number; ncpu: number } {
  const text = fs.readFileSync('/proc/stat', 'utf8');
  const lines = text.split('\n');
  const f = lines[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0);
  const ncpu = lines.filter((l) => /^cpu\d+\s/.test(l)).length || 1;
  return { busy, steal: f[7] ?? 0, ncpu };
}

function ownTicks(): number {
  const s = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // fields from #3 (state) on
  return Number(f[11]) + Number(f[12]); // utime (#14) + stime (#15)
}

function sample(): CpuSample {
  const m = machineTicks();
  return { t: performance.now(), busy: m.busy, steal: m.steal, own: ownTicks(), ncpu: m.ncpu };
}

function cpuBetween(a: CpuSample, b: CpuSample): PhaseCpu {
  const wallMs = b.t - a.t;
  const ownCpuMs = (b.own - a.own) * TICK_MS;
  const othersCpuMs = Math.max(0, (b.busy - a.busy) * TICK_MS - ownCpuMs);
  return {
    wallMs,
    ownCpuMs,
    othersCpuMs,
    stealMs: (b.steal - a.steal) * TICK_MS,
    othersShare: wallMs > 0 ? othersCpuMs / (wallMs * a.ncpu) : 0,
    ncpu: a.ncpu,
  };
}

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; cpu: PhaseCpu }> {
  const a = sample();
  const value = await fn();
  return { value, cpu: cpuBetween(a, sample()) };
}

/**
 * Peak RSS outside state-file saves and loads: both engines read or build a whole state file in
 * memory, a transient the timed work never has, so the high-water mark is reset after each.
 */
let peakKept = 0;
async function withoutPeak(fn: () => Promise<void>): Promise<void> {
  peakKept = Math.max(peakKept, memStatus().hwm);
  await fn();
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5'); // resets VmHWM to the current RSS
  } catch {
    /* not Linux: the transient stays in the peak */
  }
}

function memStatus(): { rss: number; hwm: number; anon: number; file: number } {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s) ?? [0, 0])[1]) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM'), anon: kb('RssAnon'), file: kb('RssFile') };
}

// ---- the prompt both engines see ---------------------------------------------------------------

const BOS = 128000;

/** Token at position i: BOS, then ordinary BPE tokens from a fixed hash (the same for every row). */
export function tokenAt(i: number): number {
  if (i === 0) return BOS;
  let x = Math.imul(i ^ 0x9e3779b9, 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  x ^= x >>> 16;
  return 256 + ((x >>> 0) % 127000);
}

export function tokenRange(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(tokenAt(i));
  return out;
}

// ---- engines ------------------------------------------------------------------------------------

interface Runner {
  /** Loads the engine's library (not timed as part of model load). */
  init(): Promise<void>;
  load(): Promise<void>;
  /** (Re)creates an empty context holding up to nCtx tokens. */
  open(nCtx: number): Promise<void>;
  length(): number;
  truncate(n: number): Promise<void>;
  prefill(tokens: number[]): Promise<void>;
  /**
   * With the context at exactly `at` tokens: samples n tokens greedily, returning the time each
   * arrived, in segments (a new segment when the engine stopped at an end-of-generation token).
   */
  decode(at: number, n: number): Promise<number[][]>;
  save(file: string): Promise<void>;
  restore(file: string): Promise<void>;
  kvBytes(): number;
  kvAllocatedBytes(): number;
  threads(): number;
  close(): Promise<void>;
}

const GREEDY = { temperature: 0, topK: 1, topP: 1, minP: 0, repeatPenalty: 1, repeatLastN: 0, seed: 1 };

class LlamakvRunner implements Runner {
  private model: import('./engine').Model | null = null;
  private session: import('./engine').Session | null = null;
  constructor(private cfg: RowConfig) {}

  async init(): Promise<void> {
    (await import('./native')).nativeAddon();
  }
  async load(): Promise<void> {
    const { Model } = await import('./engine');
    this.model = await Model.load(this.cfg.model, { threads: this.cfg.threads });
  }
  async open(nCtx: number): Promise<void> {
    this.session?.dispose();
    this.session = null;
    this.session = this.model!.createSession({ nCtx, kv: this.cfg.kv });
  }
  length(): number {
    return this.session!.nTokens;
  }
  async truncate(n: number): Promise<void> {
    if (this.session!.nTokens > n) this.session!.truncate(n);
  }
  async prefill(tokens: number[]): Promise<void> {
    if (tokens.length > 0) await this.session!.prefill(tokens, { logits: false });
  }
  async decode(at: number, n: number): Promise<number[][]> {
    const s = this.session!;
    const segments: number[][] = [];
    let got = 0;
    let pos = at;
    while (got < n) {
      // the last context token is evaluated (with logits) untimed, so sampling can start from it
      await this.truncate(pos - 1);
      await s.prefill([tokenAt(pos - 1)], { logits: true });
      const stamps: number[] = [];
      await s.handle.generate({ ...GREEDY, maxTokens: n - got }, () => stamps.push(performance.now()));
      segments.push(stamps);
      got += stamps.length;
      if (stamps.length === 0) break;
      pos = s.nTokens + 1; // stopped at end-of-generation: go on after it
      if (pos >= s.nCtx) break;
    }
    return segments;
  }
  async save(file: string): Promise<void> {
    await this.session!.saveState(file, 'llamakv bench');
  }
  async restore(file: string): Promise<void> {
    await this.session!.loadState(file);
  }
  kvBytes(): number {
    return this.session?.kvStats().bytes ?? 0;
  }
  kvAllocatedBytes(): number {
    return this.kvBytes();
  }
  threads(): number {
    return this.cfg.threads;
  }
  async close(): Promise<void> {
    this.session?.dispose();
    this.model?.dispose();
  }
}

type NodeLlamaCpp = typeof import('node-llama-cpp');
// node-llama-cpp is ESM-only: a real dynamic import (tsc would turn import() into require()).
const importEsm = new Function('s', 'return import(s)') as (s: string) => Promise<NodeLlamaCpp>;

/** llama.cpp KV bytes per element of K (and of V), by cache type. */
const LLAMA_KV_BYTES: Record<string, number> = { f16: 2, q8_0: 34 / 32, q4_0: 18 / 32, f32: 4 };

class LlamaCppRunner implements Runner {
  private lib: NodeLlamaCpp | null = null;
  private model: import('node-llama-cpp').LlamaModel | null = null;
  private ctx: import('node-llama-cpp').LlamaContext | null = null;
  private seq: import('node-llama-cpp').LlamaContextSequence | null = null;
  private llama: import('node-llama-cpp').Llama | null = null;
  private kvPerToken = 0;
  constructor(private cfg: RowConfig) {
    if (!(cfg.kv in LLAMA_KV_BYTES)) throw new Error(`llama.cpp KV type "${cfg.kv}" is not one of ${Object.keys(LLAMA_KV_BYTES).join(', ')}`);
  }

  async init(): Promise<void> {
    this.lib = await importEsm('node-llama-cpp');
    this.llama = await this.lib.getLlama({ gpu: false, build: 'never', logLevel: this.lib.LlamaLogLevel.error, progressLogs: false });
  }
  async load(): Promise<void> {
    this.model = await this.llama!.loadModel({ modelPath: this.cfg.model, gpuLayers: 0, useMmap: true });
    const { readGgufHeader, summarizeGguf } = await import('./gguf-header');
    const s = summarizeGguf(this.cfg.model, readGgufHeader(this.cfg.model));
    this.kvPerToken = s.nLayer * s.nHeadKv * s.headDim * 2 * LLAMA_KV_BYTES[this.cfg.kv];
  }
  async open(nCtx: number): Promise<void> {
    if (this.ctx) await this.ctx.dispose();
    this.ctx = null;
    const type = this.cfg.kv.toUpperCase() as 'F16';
    this.ctx = await this.model!.createContext({
      contextSize: nCtx,
      batchSize: Math.min(this.cfg.batch, nCtx),
      sequences: 1,
      threads: { ideal: this.cfg.threads, min: this.cfg.threads },
      flashAttention: true,
      experimentalKvCacheKeyType: type,
      experimentalKvCacheValueType: type,
    });
    this.seq = this.ctx.getSequence();
  }
  length(): number {
    return this.seq!.nextTokenIndex;
  }
  async truncate(n: number): Promise<void> {
    const len = this.seq!.nextTokenIndex;
    if (n === 0 && len > 0) await this.seq!.clearHistory();
    else if (len > n) await this.seq!.eraseContextTokenRanges([{ start: n, end: len }]);
  }
  async prefill(tokens: number[]): Promise<void> {
    if (tokens.length > 0) await this.seq!.evaluateWithoutGeneratingNewTokens(tokens as never);
  }
  async decode(at: number, n: number): Promise<number[][]> {
    const segments: number[][] = [];
    let got = 0;
    let pos = at;
    while (got < n) {
      await this.truncate(pos - 1);
      // the first token sampled comes after evaluating the last context token, like llamakv's
      // untimed one-token prefill; only intervals between sampled tokens are used
      const stamps: number[] = [];
      const gen = this.seq!.evaluate([tokenAt(pos - 1)] as never, { temperature: 0 });
      for (;;) {
        const r = await gen.next();
        if (r.done) break;
        stamps.push(performance.now());
        if (got + stamps.length >= n) break;
      }
      await gen.return(undefined);
      segments.push(stamps);
      got += stamps.length;
      if (stamps.length === 0) break;
      pos = this.seq!.nextTokenIndex + 1;
      if (pos >= this.seq!.contextSize) break;
    }
    return segments;
  }
  async save(file: string): Promise<void> {
    await this.seq!.saveStateToFile(file);
  }
  async restore(file: string): Promise<void> {
    await this.seq!.loadStateFromFile(file, { acceptRisk: true });
  }
  kvBytes(): number {
    return this.seq ? this.seq.nextTokenIndex * this.kvPerToken : 0;
  }
  kvAllocatedBytes(): number {
    return this.ctx ? this.ctx.contextSize * this.kvPerToken : 0;
  }
  threads(): number {
    return this.ctx?.currentThreads ?? this.cfg.threads;
  }
  async close(): Promise<void> {
    if (this.ctx) await this.ctx.dispose();
    if (this.model) await this.model.dispose();
  }
}

// ---- the request loop --------------------------------------------------------------------------

function intervals(segments: number[][]): number[] {
  const out: number[] = [];
  for (const s of segments) for (let i = 1; i < s.length; i++) out.push(s[i] - s[i - 1]);
  return out;
}

let runner: Runner | null = null;

async function handle(req: WorkerRequest): Promise<unknown> {
  if (req.op === 'load') {
    const cfg = req.config;
    runner = cfg.engine === 'llamakv' ? new LlamakvRunner(cfg) : new LlamaCppRunner(cfg);
    const t0 = performance.now();
    await runner.init();
    const rssBefore = memStatus().rss;
    const t1 = performance.now();
    await runner.load();
    return { initMs: t1 - t0, loadMs: performance.now() - t1, rssBeforeLoadBytes: rssBefore };
  }
  const r = runner;
  if (!r) throw new Error('no model loaded');
  switch (req.op) {
    case 'warmup': {
      // time to first token of a short prompt (load → first token is loadMs + this), then a
      // batched prefill and a few decode steps so that timed phases start warm
      await r.open(256);
      const t0 = performance.now();
      await r.prefill(tokenRange(0, 31));
      const first = await r.decode(32, 1); // evaluates token 31, samples the first new one
      const firstTokenMs = (first[0]?.[0] ?? performance.now()) - t0;
      await r.truncate(0);
      await r.prefill(tokenRange(0, 128));
      await r.decode(128, 8);
      return { firstTokenMs };
    }
    case 'open':
      await r.open(req.nCtx);
      return {};
    case 'prefill': {
      await r.truncate(0);
      const toks = tokenRange(0, req.n);
      const { cpu } = await timed(() => r.prefill(toks));
      return { ...cpu, tokens: req.n, tokensPerSecond: (req.n / cpu.wallMs) * 1000 } satisfies PrefillResult;
    }
    case 'extend': {
      const from = r.length();
      if (from > req.to) await r.truncate(req.to);
      const toks = tokenRange(from, req.to);
      const { cpu } = await timed(() => r.prefill(toks));
      return { ...cpu, tokens: toks.length, tokensPerSecond: toks.length > 0 ? (toks.length / cpu.wallMs) * 1000 : 0, from } as PrefillResult & { from: number };
    }
    case 'decode': {
      if (r.length() < req.at - 1) throw new Error(`decode at ${req.at}: the context holds only ${r.length()} tokens`);
      const kvBytes = (await r.truncate(req.at), r.kvBytes());
      const { value, cpu } = await timed(() => r.decode(req.at, req.n));
      const iv = intervals(value);
      const sum = iv.reduce((s, x) => s + x, 0);
      await r.truncate(req.at);
      return { ...cpu, intervalsMs: iv, tokensPerSecond: iv.length > 0 ? (iv.length / sum) * 1000 : 0, kvBytes } satisfies DecodeResult;
    }
    case 'save': {
      const t0 = performance.now();
      await withoutPeak(() => r.save(req.file));
      return { ms: performance.now() - t0 };
    }
    case 'restore': {
      const t0 = performance.now();
      await withoutPeak(() => r.restore(req.file));
      if (r.length() !== req.n) throw new Error(`state file ${req.file} restored ${r.length()} tokens, expected ${req.n}`);
      return { ms: performance.now() - t0 };
    }
    case 'stats': {
      const m = memStatus();
      return {
        nTokens: r.length(), kvBytes: r.kvBytes(), kvAllocatedBytes: r.kvAllocatedBytes(),
        rssBytes: m.rss, peakRssBytes: Math.max(m.hwm, peakKept), rssAnonBytes: m.anon, rssFileBytes: m.file, threads: r.threads(),
      } satisfies WorkerStats;
    }
    case 'exit':
      await r.close();
      runner = null;
      return {};
    default:
      throw new Error(`unknown op ${(req as { op: string }).op}`);
  }
}

if (require.main === module) {
  if (!process.send) {
    process.stderr.write('bench-worker runs under `llamakv bench` (it needs an IPC channel)\n');
    process.exit(2);
  }
  // one request at a time: the parent waits for each answer
  process.on('message', (req: WorkerRequest) => {
    handle(req).then(
      (result) => {
        process.send!({ id: req.id, ok: true, result }, () => {
          if (req.op === 'exit') process.exit(0);
        });
      },
      (e) => process.send!({ id: req.id, ok: false, error: e instanceof Error ? e.stack ?? e.message : String(e) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}
