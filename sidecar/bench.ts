// bench.ts — `llamakv bench`: llamakv against llama.cpp (node-llama-cpp) on the same generated
// model files and thread count. Each engine × model × KV setting runs in its own worker process
// (bench-worker.ts) so peak RSS is its own; phases alternate between rows (A B A B), disturbed
// phases are repeated, and a time budget drops what would not fit (long contexts first).
// Writes bench.json, bench.md and decode.svg to the output folder and prints the table.
import { fork, ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { createHash } from 'crypto';
import { checkFlags, flagBool, flagNum, flagStr, parseArgs, ParsedArgs, UsageError } from './args';
import { registerCommand } from './cli';
import { readGgufHeader, summarizeGguf } from './gguf-header';
import { synthModel, WEIGHT_TYPES, WeightTypeName } from './synth';
import { requantizeLlamaState } from './llama-state';
import type { DecodeResult, PhaseCpu, PrefillResult, RowConfig, WorkerOp, WorkerStats } from './bench-worker';
import { machineTicks } from './bench-worker';

const repoRoot = path.resolve(__dirname, '..', '..');
const MODEL_TYPES: readonly string[] = WEIGHT_TYPES;
/** Phases at or below this many tokens run in the short context; longer ones in the chain. */
const SHORT_LIMIT = 1024;
/** Chain targets above this go to the last stage, only for --long-models. */
const MID_LIMIT = 4096;
/** Intervals dropped at the start of every decode measurement. */
const DECODE_WARM = 2;

// ---- options ---------------------------------------------------------------------------------

export interface BenchOptions {
  preset: 'tiny' | '1b';
  /** Weight types to generate (with preset) or paths of model files. */
  models: string[];
  /** Models (labels) that also get the contexts above 4096; empty = none, ['all'] = all. */
  longModels: string[];
  contexts: number[];
  prefills: number[];
  reps: number;
  longReps: number;
  decodeTokens: number;
  threads: number;
  batch: number;
  kv: string[];
  llamaKv: string[];
  maxDisturb: number;
  retries: number;
  budgetMs: number;
  out: string;
  quick: boolean;
  bandwidth: boolean;
  /** Save filled long contexts (> 4096) and restore them in later runs instead of filling again. */
  stateCache: boolean;
}

const USAGE =
  'bench [--quick] [--preset 1b|tiny] [--models q8_0,q4_k_m,f16 | --model FILE[,FILE]] [--contexts 128,4096,16384,32768] ' +
  '[--long-models q8_0|all|none] [--prefill 512,4096] [--reps N] [--long-reps N] [--decode-tokens N] [--threads N] [--batch N] ' +
  '[--kv f16[,SPEC]|none] [--llama-kv f16[,q8_0,q4_0]|none] [--max-disturb 0.1] [--retries N] [--budget-min M] [--out DIR] [--no-bandwidth] [--no-state-cache] [--json]';

function list(s: string | undefined, dflt: string[]): string[] {
  if (s === undefined) return dflt;
  return s.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
}

function numList(a: ParsedArgs, name: string, dflt: number[]): number[] {
  const v = list(flagStr(a, name), dflt.map(String)).map(Number);
  if (v.some((x) => !Number.isInteger(x) || x <= 0)) throw new UsageError(`--${name} must be positive integers, comma-separated`);
  return [...new Set(v)].sort((x, y) => x - y);
}

export function parseBenchArgs(argv: string[]): BenchOptions & { json: boolean } {
  const a = parseArgs(argv, ['json', 'quick', 'no-bandwidth', 'no-state-cache']);
  checkFlags(a, ['json', 'quick', 'no-bandwidth', 'no-state-cache', 'preset', 'models', 'model', 'contexts', 'long-models', 'prefill', 'reps',
    'long-reps', 'decode-tokens', 'threads', 'batch', 'kv', 'llama-kv', 'max-disturb', 'retries', 'budget-min', 'out']);
  const quick = flagBool(a, 'quick');
  const preset = flagStr(a, 'preset', '1b');
  if (preset !== '1b' && preset !== 'tiny') throw new UsageError(`unknown preset "${preset}" (1b, tiny)`);
  const files = list(flagStr(a, 'model'), []);
  const types = list(flagStr(a, 'models'), quick ? ['q8_0'] : ['q8_0', 'q4_k_m', 'f16']);
  if (files.length === 0) for (const t of types) if (!MODEL_TYPES.includes(t)) throw new UsageError(`unknown model type "${t}" (${MODEL_TYPES.join(', ')})`);
  for (const f of files) if (!fs.existsSync(f)) throw new Error(`model file not found: ${f}`);
  const models = files.length > 0 ? files : types;
  const long = list(flagStr(a, 'long-models'), [files.length > 0 ? labelOf(files[0]) : types[0]]);
  // "none" leaves an engine out (e.g. to fill one engine's long-context states on their own)
  const llamaKv = list(flagStr(a, 'llama-kv'), ['f16']).filter((k) => k !== 'none');
  for (const k of llamaKv) if (!['f16', 'q8_0', 'q4_0'].includes(k)) throw new UsageError(`--llama-kv: "${k}" is not f16, q8_0 or q4_0`);
  const kv = list(flagStr(a, 'kv'), ['f16']).filter((k) => k !== 'none');
  if (kv.length === 0 && llamaKv.length === 0) throw new UsageError('--kv none and --llama-kv none leave nothing to run');
  const o: BenchOptions & { json: boolean } = {
    preset,
    models,
    longModels: long.includes('none') ? [] : long,
    contexts: numList(a, 'contexts', quick ? [128] : [128, 4096, 16384, 32768]),
    prefills: numList(a, 'prefill', quick ? [512] : [512, 4096]),
    reps: flagNum(a, 'reps', quick ? 1 : 3)!,
    longReps: flagNum(a, 'long-reps', quick ? 1 : 2)!,
    decodeTokens: flagNum(a, 'decode-tokens', quick ? 8 : 24)!,
    threads: flagNum(a, 'threads', 2)!,
    batch: flagNum(a, 'batch', 512)!,
    kv,
    llamaKv,
    maxDisturb: flagNum(a, 'max-disturb', 0.1)!,
    retries: flagNum(a, 'retries', quick ? 0 : 2)!,
    budgetMs: flagNum(a, 'budget-min', quick ? 0 : 20)! * 60000,
    out: flagStr(a, 'out', quick ? path.join(repoRoot, '.cache', 'bench-quick') : path.join(repoRoot, 'bench-results'))!,
    quick,
    bandwidth: !flagBool(a, 'no-bandwidth'),
    stateCache: !flagBool(a, 'no-state-cache'),
    json: flagBool(a, 'json'),
  };
  for (const [k, v] of [['reps', o.reps], ['long-reps', o.longReps], ['decode-tokens', o.decodeTokens], ['threads', o.threads], ['batch', o.batch]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new UsageError(`--${k} must be a positive integer`);
  }
  if (!Number.isInteger(o.retries) || o.retries < 0) throw new UsageError('--retries must be 0 or more');
  return o;
}

function labelOf(file: string): string {
  return path.basename(file).replace(/\.gguf$/i, '');
}

// ---- models ----------------------------------------------------------------------------------

export interface BenchModel {
  label: string;
  path: string;
  fileBytes: number;
  /** Bytes of weights one decode step reads: every tensor, the embedding once as the tied output. */
  weightBytesPerToken: number;
  nLayer: number;
  nHeadKv: number;
  headDim: number;
  contextLength: number;
}

// block size (elements) and bytes per block of each ggml type id
const TYPE_BLOCKS: Record<number, [number, number]> = {
  0: [1, 4], 1: [1, 2], 30: [1, 2], 2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34],
  10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210], 15: [256, 292],
};

export function describeModel(label: string, file: string): BenchModel {
  const h = readGgufHeader(file);
  const s = summarizeGguf(file, h);
  const bytes = (type: number, elements: number) => {
    const b = TYPE_BLOCKS[type];
    if (!b) throw new Error(`${file}: tensor type ${type} has no known block size`);
    return (elements / b[0]) * b[1];
  };
  const tied = !h.tensors.some((t) => t.name === 'output.weight');
  let weights = 0;
  for (const t of h.tensors) {
    if (t.name === 'token_embd.weight' && !tied) weights += bytes(t.type, t.dims[0]); // one row looked up
    else weights += bytes(t.type, t.elements);
  }
  return { label, path: file, fileBytes: h.fileBytes, weightBytesPerToken: weights, nLayer: s.nLayer, nHeadKv: s.nHeadKv, headDim: s.headDim, contextLength: s.contextLength };
}

/** Cache folder for generated models (shared with the tests). */
export function modelCacheDir(): string {
  return process.env.LLAMAKV_CACHE ?? path.join(repoRoot, '.cache', 'models');
}

/** A generated model of this preset and weight type, made on first use (same names as test/helpers.ts). */
export async function benchModelFile(preset: 'tiny' | '1b', type: string, log: (s: string) => void = () => {}): Promise<string> {
  const dir = modelCacheDir();
  const file = path.join(dir, `preset-${preset}_seed-1_type-${type}.gguf`);
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(dir, { recursive: true });
  log(`generating ${file} (once; cached)`);
  const tmp = `${file}.${process.pid}.tmp`;
  await synthModel({ preset, type: type as WeightTypeName, seed: 1, out: tmp });
  fs.renameSync(tmp, file);
  return file;
}

// ---- memory bandwidth --------------------------------------------------------------------------

export interface Bandwidth {
  /** Bytes read per second by `threads` threads comparing their own pair of buffers (memcmp). */
  readGBps: number;
  /** The same with one thread. */
  readGBps1: number;
  /** memcpy: bytes read + bytes written per second, `threads` threads. */
  copyGBps: number;
  /** Read bandwidth per second of the threads' own CPU time (what a quiet machine would give). */
  readGBpsOnCpu: number;
  threads: number;
  /** Memory each thread streams through (two buffers of half this). */
  bufferMiB: number;
  othersShare: number;
}

const BW_WORKER = `
const fs = require('fs');
const { parentPort, workerData } = require('worker_threads');
const n = workerData.bytes / 2;
const a = Buffer.allocUnsafeSlow(n); a.fill(7);   // written, so every page is real memory
const b = Buffer.allocUnsafeSlow(n); b.fill(7);   // equal: memcmp reads both to the end
const onCpuNs = () => Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
parentPort.on('message', (m) => {
  const c0 = onCpuNs();
  const t0 = performance.timeOrigin + performance.now();
  for (let i = 0; i < m.iters; i++) {
    if (m.op === 'read') { if (Buffer.compare(a, b) !== 0) throw new Error('buffers differ'); }
    else a.copy(b);
  }
  parentPort.postMessage({ t0, t1: performance.timeOrigin + performance.now(), cpuMs: (onCpuNs() - c0) / 1e6 });
});
parentPort.postMessage('ready');
`;

/** Worker threads that each hold two buffers well past any cache and stream through them on request. */
export class BandwidthMeter {
  readonly bytes = 256 << 20; // per thread
  private constructor(private readonly workers: Worker[]) {}

  static async open(threads: number): Promise<BandwidthMeter> {
    const m = new BandwidthMeter([]);
    for (let i = 0; i < threads; i++) m.workers.push(new Worker(BW_WORKER, { eval: true, workerData: { bytes: m.bytes } }));
    try {
      await Promise.all(m.workers.map((w) => new Promise((res, rej) => { w.once('message', res); w.once('error', rej); })));
    } catch (e) {
      await m.close();
      throw e;
    }
    return m;
  }

  /** GB/s over `k` threads (wall time) and the sum of the threads' GB/s per second of their own CPU time. */
  async run(op: 'read' | 'copy', iters: number, k = this.workers.length): Promise<{ wall: number; onCpu: number }> {
    const ws = this.workers.slice(0, k);
    const rs = await Promise.all(ws.map((w) => new Promise<{ t0: number; t1: number; cpuMs: number }>((res, rej) => {
      const done = (m: { t0: number; t1: number; cpuMs: number }) => { w.off('error', fail); res(m); };
      const fail = (e: Error) => { w.off('message', done); rej(e); };
      w.once('message', done);
      w.once('error', fail);
      w.postMessage({ op, iters });
    })));
    const dt = Math.max(...rs.map((r) => r.t1)) - Math.min(...rs.map((r) => r.t0));
    const total = k * iters * this.bytes; // memcmp reads `bytes`; memcpy reads bytes/2 and writes bytes/2
    return { wall: total / (dt / 1000) / 1e9, onCpu: rs.reduce((s, r) => s + (iters * this.bytes) / (r.cpuMs / 1000) / 1e9, 0) };
  }

  /** A short read probe (best of two passes over every thread's buffers): the bandwidth right now. */
  async probeRead(): Promise<number> {
    return Math.max((await this.run('read', 2)).wall, (await this.run('read', 2)).wall);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Read and copy bandwidth of this machine with native loops (memcmp, memcpy), best of a few trials. */
export async function measureBandwidth(threads: number, quick: boolean): Promise<Bandwidth> {
  const meter = await BandwidthMeter.open(threads);
  try {
    const trials = quick ? 1 : 4;
    let read = 0, read1 = 0, copy = 0, onCpu = 0;
    const m0 = machineTicks();
    const t0 = performance.now();
    const u0 = process.cpuUsage();
    for (let i = 0; i < trials; i++) {
      const r = await meter.run('read', 6);
      read = Math.max(read, r.wall);
      onCpu = Math.max(onCpu, r.onCpu);
      read1 = Math.max(read1, (await meter.run('read', 6, 1)).wall);
      copy = Math.max(copy, (await meter.run('copy', 6)).wall);
    }
    const u = process.cpuUsage(u0);
    const m1 = machineTicks();
    const wall = performance.now() - t0;
    const others = Math.max(0, (m1.busy - m0.busy) * 10 - (u.user + u.system) / 1000);
    return { readGBps: read, readGBps1: read1, copyGBps: copy, readGBpsOnCpu: onCpu, threads, bufferMiB: meter.bytes >> 20, othersShare: others / (wall * m0.ncpu) };
  } finally {
    await meter.close();
  }
}

// ---- workers -----------------------------------------------------------------------------------

class RowWorker {
  private child: ChildProcess;
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private stderrTail = '';
  private exited = false;

  constructor() {
    this.child = fork(path.join(__dirname, 'bench-worker.js'), [], { silent: true, execArgv: [] });
    this.child.stderr?.on('data', (d: Buffer) => { this.stderrTail = (this.stderrTail + d.toString()).slice(-4000); });
    this.child.stdout?.resume();
    this.child.on('message', (m: { id: number; ok: boolean; result?: unknown; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(m.error));
    });
    this.child.on('exit', (code, signal) => {
      this.exited = true;
      const err = new Error(`bench worker exited (${signal ?? code})${this.stderrTail ? ': ' + this.stderrTail.trim().split('\n').slice(-5).join(' | ') : ''}`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  call<T>(req: WorkerOp): Promise<T> {
    if (this.exited) return Promise.reject(new Error('bench worker has exited'));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ ...req, id });
    });
  }

  async close(): Promise<void> {
    if (this.exited) return;
    try {
      await Promise.race([this.call({ op: 'exit' }), new Promise((r) => setTimeout(r, 10000))]);
    } catch {
      /* exiting anyway */
    }
    if (!this.exited) this.child.kill();
  }
}

// ---- results -----------------------------------------------------------------------------------

export interface Sample {
  value: number;
  wallMs: number;
  othersShare: number;
  /** Attempts made (1 + repeats of disturbed runs) and each attempt's others' share. */
  attempts: number;
  shares: number[];
  /** Decode: the machine's read bandwidth probed just before and just after this phase (mean), GB/s. */
  readGBpsAround?: number;
}

export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
  /** Some accepted sample still had others above --max-disturb after every retry. */
  disturbed: boolean;
  samples: Sample[];
}

export interface DecodeStat extends Stat {
  kvBytes: number;
  bytesPerToken: number;
  /** (weights + KV read per token) × median tokens/s. */
  achievedGBps: number;
  /** achievedGBps / the machine's read bandwidth measured by this run (the higher of before and after). */
  readFraction: number | null;
  /**
   * Median over the runs of each run's achieved bandwidth / the read bandwidth probed right around
   * it: on a shared host the bandwidth others leave drifts by a quarter within a run.
   */
  adjacentReadFraction: number | null;
}

export interface RowResult {
  model: string;
  engine: 'llamakv' | 'llama.cpp';
  kv: string;
  /** For llamakv rows: the llama.cpp KV type it is compared with. */
  vs?: string;
  threads: number;
  /** Loading the engine's library (node-llama-cpp's getLlama, llamakv's addon), before any model. */
  initMs: number;
  loadMs: number;
  firstTokenMs: number;
  /** Model load + a 32-token prompt to its first token (page cache warm). */
  startupMs: number;
  prefill: Record<string, Stat>;
  decode: Record<string, DecodeStat>;
  /** Untimed-as-a-measure context fills of the long-context chain (how long they took). */
  fills: { from: number; to: number; tokensPerSecond: number; wallMs: number; othersShare: number }[];
  /**
   * Long contexts restored from a state saved by an earlier run (file date), not filled here;
   * `from`: a llama.cpp quantized cache derived from that engine's saved f16 state (requantized
   * as llama.cpp stores it: decode speed does not depend on the cached values).
   */
  restored: { to: number; ms: number; savedAt: string; from?: string }[];
  rss: { beforeLoadMiB: number; shortMiB: number | null; peakMiB: number; peakCtx: number; anonMiB: number; fileMiB: number };
  kvAllocatedBytes: number;
  /** Why this row has no numbers (it failed to load or to start a session). */
  error?: string;
}

export interface Ratio {
  model: string;
  llamakv: string;
  llamaCpp: string;
  prefill: Record<string, number | null>;
  decode: Record<string, number | null>;
  /** llamakv / llama.cpp: lower is better for these. */
  peakRss: number | null;
  startup: number | null;
  kvBytes: Record<string, number | null>;
}

export interface BenchReport {
  version: 1;
  date: string;
  machine: { cpu: string; cpus: number; memGiB: number; kernel: string; node: string; llamaCpp: string; llamakvKernels: string | null };
  options: Omit<BenchOptions, 'out' | 'budgetMs'> & { budgetMin: number };
  bandwidth: Bandwidth | null;
  bandwidthAfter: Bandwidth | null;
  models: BenchModel[];
  rows: RowResult[];
  ratios: Ratio[];
  skipped: string[];
  disturbance: { phases: number; retried: number; stillDisturbed: number; quietWaitMs: number; maxDisturb: number };
  wallMs: number;
  files?: { json: string; markdown: string; svg: string };
}

function median(xs: number[]): number {
  const v = [...xs].sort((x, y) => x - y);
  const mid = v.length >> 1;
  return v.length === 0 ? NaN : v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

function stat(samples: Sample[], maxDisturb: number): Stat {
  const v = samples.map((s) => s.value).sort((x, y) => x - y);
  return { median: median(v), min: v[0], max: v[v.length - 1], n: v.length, disturbed: samples.some((s) => s.othersShare > maxDisturb), samples };
}

/**
 * The llama.cpp KV types a llamakv spec is compared with, best match first: f16 with f16, 8-bit
 * with q8_0, anything smaller (4-bit, 2-bit, evicting presets) with q4_0, llama.cpp's smallest.
 */
export function pairKv(spec: string): string[] {
  if (/^(f16|f32|off)$/.test(spec)) return ['f16'];
  if (/^(q8\b|k8(v8)?)/.test(spec)) return ['q8_0', 'f16'];
  return ['q4_0', 'q8_0', 'f16'];
}

// ---- saved long contexts -----------------------------------------------------------------------

/** Bump when the prompt (tokenAt) or what a saved state means changes. */
const STATE_FORMAT = 1;

export function stateCacheDir(): string {
  return path.join(path.dirname(modelCacheDir()), 'bench-state');
}

/** What must match for a saved context to stand in for filling it: engine build, model file, KV setting, length. */
function engineBuild(engine: RowConfig['engine']): string {
  if (engine === 'llama.cpp') return machineInfo().llamaCpp;
  const addon = process.env.LLAMAKV_ADDON ?? path.join(repoRoot, 'build', 'native', 'Release', 'llamakv.node');
  try {
    const st = fs.statSync(addon);
    return `${addon} ${st.size} ${st.mtimeMs}`;
  } catch {
    return 'unknown';
  }
}

function stateFile(m: BenchModel, cfg: RowConfig, n: number): string {
  const st = fs.statSync(m.path);
  const key = JSON.stringify([STATE_FORMAT, engineBuild(cfg.engine), path.resolve(m.path), st.size, st.mtimeMs, cfg.kv, n]);
  const h = createHash('sha256').update(key).digest('hex').slice(0, 12);
  const safeName = `${m.label}-${cfg.engine}-${cfg.kv}`.replace(/[^A-Za-z0-9._-]+/g, '_');
  return path.join(stateCacheDir(), `${safeName}-${n}-${h}.state`);
}

// ---- the run -----------------------------------------------------------------------------------

interface Row {
  model: BenchModel;
  config: RowConfig;
  worker: RowWorker;
  result: RowResult;
  prefillObs: { from: number; to: number; ms: number }[];
  decodeObs: { at: number; ms: number }[];
  samples: { prefill: Record<string, Sample[]>; decode: Record<string, Sample[]>; kvAt: Record<string, number> };
}

/** Average ms per token of a phase at positions [from, to): a + b·(from+to)/2, fitted to observations. */
function fitLinear(obs: { x: number; y: number; w: number }[], prior: number): { a: number; b: number } | null {
  if (obs.length === 0) return null;
  const W = obs.reduce((s, o) => s + o.w, 0);
  const mx = obs.reduce((s, o) => s + o.w * o.x, 0) / W;
  const my = obs.reduce((s, o) => s + o.w * o.y, 0) / W;
  const sxx = obs.reduce((s, o) => s + o.w * (o.x - mx) ** 2, 0);
  let b = sxx > 0 ? obs.reduce((s, o) => s + o.w * (o.x - mx) * (o.y - my), 0) / sxx : NaN;
  if (!(b >= 0) || sxx / W < 1e5) b = (my / (1 + prior * mx)) * prior; // one position only: assume the prior slope
  const a = Math.max(my - b * mx, my * 0.2);
  return { a, b };
}

// per position: how much a token's cost grows with context, relative to its cost at position 0
const PREFILL_SLOPE_PRIOR = 1.5e-4;
const DECODE_SLOPE_PRIOR = 1.5e-4;

function estFillMs(row: Row, from: number, to: number): number {
  const f = fitLinear(row.prefillObs.map((o) => ({ x: (o.from + o.to) / 2, y: o.ms / (o.to - o.from), w: o.to - o.from })), PREFILL_SLOPE_PRIOR);
  if (!f) return 0;
  return (to - from) * (f.a + f.b * (from + to) / 2);
}

function estDecodeMs(row: Row, at: number, tokens: number): number {
  const f = fitLinear(row.decodeObs.map((o) => ({ x: o.at, y: o.ms, w: 1 })), DECODE_SLOPE_PRIOR);
  if (!f) return 0;
  return tokens * (f.a + f.b * at);
}

export async function runBench(o: BenchOptions, log: (s: string) => void = (s) => process.stderr.write(s + '\n')): Promise<BenchReport> {
  const t0 = performance.now();
  const elapsed = () => performance.now() - tStart;
  const stamp = () => {
    const s = Math.round(elapsed() / 1000);
    return `[${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}]`;
  };

  // models first (generating one takes a minute; not part of the budget)
  const models: BenchModel[] = [];
  for (const m of o.models) {
    const isFile = !MODEL_TYPES.includes(m);
    const file = isFile ? m : await benchModelFile(o.preset, m, log);
    models.push(describeModel(isFile ? labelOf(m) : m, file));
  }
  const tStart = performance.now();
  const budgetLeft = () => (o.budgetMs > 0 ? o.budgetMs - elapsed() : Infinity);
  const skipped: string[] = [];
  const dist = { phases: 0, retried: 0, stillDisturbed: 0, quietWaitMs: 0, maxDisturb: o.maxDisturb };

  /**
   * Waits (up to maxMs) for a half-second in which other processes use less than --max-disturb of
   * the machine; false when it never came (a steady load, not a burst: repeating would not help).
   */
  const waitQuiet = async (maxMs: number): Promise<boolean> => {
    const tw = performance.now();
    let quiet = false;
    while (!quiet && performance.now() - tw < maxMs && dist.quietWaitMs < 180000) {
      const a = machineTicks();
      await new Promise((r) => setTimeout(r, 500));
      const b = machineTicks();
      quiet = ((b.busy - a.busy) * 10) / (500 * a.ncpu) <= o.maxDisturb;
    }
    dist.quietWaitMs += performance.now() - tw;
    return quiet;
  };

  /** Memory bandwidth, measured again (after waiting for a quiet machine) while others disturb it. */
  const bandwidthQuiet = async (when: string): Promise<Bandwidth> => {
    let best = await measureBandwidth(o.threads, o.quick);
    for (let i = 0; i < (o.quick ? 0 : o.retries) && best.othersShare > o.maxDisturb; i++) {
      if (!(await waitQuiet(30000))) break;
      const b = await measureBandwidth(o.threads, o.quick);
      if (b.othersShare < best.othersShare) best = b;
    }
    log(`${stamp()} bandwidth ${when} (${o.threads} threads): read ${best.readGBps.toFixed(1)} GB/s (1 thread ${best.readGBps1.toFixed(1)}), ` +
      `copy ${best.copyGBps.toFixed(1)} GB/s (others ${(best.othersShare * 100).toFixed(0)}%)`);
    return best;
  };
  const bandwidth = o.bandwidth ? await bandwidthQuiet('before') : null;
  // probes the read bandwidth around every decode phase; closed with the rows' workers
  const meter = o.bandwidth ? await BandwidthMeter.open(o.threads) : null;

  /** A row whose worker failed mid-run keeps what it measured and leaves the run. */
  const fail = (row: Row, e: unknown) => {
    row.result.error = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    const live = rowsOf.get(row.model);
    if (live && live.includes(row)) live.splice(live.indexOf(row), 1);
    skipped.push(`${rowName(row)}: failed (${row.result.error})`);
    log(`${stamp()} ${rowName(row)}: failed: ${row.result.error}`);
    void row.worker.close();
  };
  const safe = async <T>(row: Row, fn: () => Promise<T>): Promise<T | null> => {
    if (row.result.error) return null;
    try {
      return await fn();
    } catch (e) {
      fail(row, e);
      return null;
    }
  };

  /** Runs one timed phase, repeating it while disturbed (as retries and the budget allow); null if the row failed. */
  const measure = async <T extends PhaseCpu>(row: Row, req: WorkerOp, value: (r: T) => number, what: string): Promise<{ sample: Sample; result: T } | null> => {
    const attempts: T[] = [];
    for (let i = 0; i <= o.retries; i++) {
      if (i > 0) {
        if (!(await waitQuiet(15000))) break;
        dist.retried++;
      }
      const r = await safe(row, () => row.worker.call<T>(req));
      if (!r) return null;
      attempts.push(r);
      if (r.othersShare <= o.maxDisturb) break;
      if (budgetLeft() < r.wallMs * 2) break;
    }
    dist.phases++;
    const best = attempts.find((r) => r.othersShare <= o.maxDisturb) ?? attempts.reduce((x, y) => (y.othersShare < x.othersShare ? y : x));
    if (best.othersShare > o.maxDisturb) dist.stillDisturbed++;
    const sample: Sample = { value: value(best), wallMs: Math.round(best.wallMs), othersShare: round(best.othersShare, 3), attempts: attempts.length, shares: attempts.map((r) => round(r.othersShare, 3)) };
    log(`${stamp()} ${rowName(row)} ${what}: ${sample.value.toFixed(2)} tok/s (others ${(best.othersShare * 100).toFixed(0)}%${attempts.length > 1 ? `, ${attempts.length} attempts` : ''})`);
    return { sample, result: best };
  };

  const rowName = (r: Row) => `${r.model.label} ${r.config.engine} ${r.config.kv}`;
  const allRows: Row[] = [];
  const rowsOf = new Map<BenchModel, Row[]>();

  /** Reads the model file once so that every engine's load finds it in the page cache. */
  const warmPageCache = (file: string) => {
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.allocUnsafe(16 << 20);
    try {
      while (fs.readSync(fd, buf, 0, buf.length, null) > 0) { /* reading is the point */ }
    } finally {
      fs.closeSync(fd);
    }
  };

  const startRows = async (m: BenchModel): Promise<Row[]> => {
    warmPageCache(m.path);
    const configs: RowConfig[] = [
      ...o.kv.map((kv) => ({ engine: 'llamakv' as const, model: m.path, threads: o.threads, kv, batch: o.batch })),
      ...o.llamaKv.map((kv) => ({ engine: 'llama.cpp' as const, model: m.path, threads: o.threads, kv, batch: o.batch })),
    ];
    const rows: Row[] = [];
    for (const config of configs) {
      const worker = new RowWorker();
      const row: Row = {
        model: m, config, worker, prefillObs: [], decodeObs: [], samples: { prefill: {}, decode: {}, kvAt: {} },
        result: {
          model: m.label, engine: config.engine, kv: config.kv, vs: config.engine === 'llamakv' ? pairKv(config.kv)[0] : undefined,
          threads: o.threads, initMs: 0, loadMs: 0, firstTokenMs: 0, startupMs: 0, prefill: {}, decode: {}, fills: [],
          rss: { beforeLoadMiB: 0, shortMiB: null, peakMiB: 0, peakCtx: 0, anonMiB: 0, fileMiB: 0 }, kvAllocatedBytes: 0, restored: [],
        },
      };
      allRows.push(row);
      let l: { initMs: number; loadMs: number; rssBeforeLoadBytes: number };
      let w: { firstTokenMs: number };
      try {
        l = await worker.call({ op: 'load', config });
        w = await worker.call({ op: 'warmup' });
      } catch (e) {
        // a KV spec this build does not know, a model an engine cannot load: report it, go on
        row.result.error = (e instanceof Error ? e.message : String(e)).split('\n')[0];
        skipped.push(`${rowName(row)}: failed (${row.result.error})`);
        log(`${stamp()} ${rowName(row)}: failed: ${row.result.error}`);
        await worker.close();
        continue;
      }
      rows.push(row);
      Object.assign(row.result, { initMs: l.initMs, loadMs: l.loadMs, firstTokenMs: w.firstTokenMs, startupMs: l.loadMs + w.firstTokenMs });
      row.result.rss.beforeLoadMiB = l.rssBeforeLoadBytes / 1048576;
      log(`${stamp()} ${rowName(row)}: library ${l.initMs.toFixed(0)} ms, model loaded in ${l.loadMs.toFixed(0)} ms, first token after ${w.firstTokenMs.toFixed(0)} ms`);
    }
    rowsOf.set(m, rows);
    return rows;
  };

  const recordStats = async (row: Row, which: 'short' | 'peak'): Promise<void> => {
    const s = await safe(row, () => row.worker.call<WorkerStats>({ op: 'stats' }));
    if (!s) return;
    if (which === 'short') row.result.rss.shortMiB = s.peakRssBytes / 1048576;
    if (s.peakRssBytes / 1048576 >= row.result.rss.peakMiB) {
      row.result.rss.peakMiB = s.peakRssBytes / 1048576;
      row.result.rss.anonMiB = s.rssAnonBytes / 1048576;
      row.result.rss.fileMiB = s.rssFileBytes / 1048576;
      row.result.kvAllocatedBytes = Math.max(row.result.kvAllocatedBytes, s.kvAllocatedBytes);
    }
    row.result.threads = s.threads;
  };

  const minutes = (ms: number) => `${(Math.max(0, ms) / 60000).toFixed(1)} min`;
  const note = (msg: string) => {
    skipped.push(msg);
    log(`${stamp()} ${msg}`);
  };

  /** Prefill of n tokens from an empty context, reps [from, to) for every row; false if the budget stopped it before any. */
  const prefillMeasure = async (rows: Row[], n: number, from: number, to: number, reserveMs = 0): Promise<boolean> => {
    for (let rep = from; rep < to && rows.length > 0; rep++) {
      if (rep > 0 || n > SHORT_LIMIT) {
        const est = rows.reduce((s, r) => s + estFillMs(r, 0, n), 0);
        if (est + reserveMs > budgetLeft()) {
          note(`${rows[0].model.label}: prefill ${n} run ${rep + 1} skipped (needs ~${minutes(est)}${reserveMs ? ` + ${minutes(reserveMs)} kept for other models` : ''}, ${minutes(budgetLeft())} left)`);
          return rep > 0;
        }
      }
      for (const row of [...rows]) {
        const m = await measure<PrefillResult>(row, { op: 'prefill', n }, (r) => r.tokensPerSecond, `prefill ${n}`);
        if (!m) continue;
        const { sample, result } = m;
        (row.samples.prefill[n] ??= []).push(sample);
        row.prefillObs.push({ from: 0, to: n, ms: result.wallMs });
      }
    }
    return true;
  };

  const decodeTokens = o.decodeTokens + DECODE_WARM + 1;
  const decodeCost = (rows: Row[], at: number, reps: number) => rows.reduce((s, r) => s + estDecodeMs(r, at, reps * (decodeTokens + 2)), 0);

  const decodeMeasure = async (rows: Row[], at: number) => {
    let probe = meter ? await meter.probeRead() : 0;
    for (let rep = 0; rep < o.reps && rows.length > 0; rep++) {
      if (rep > 0 && decodeCost(rows, at, 1) > budgetLeft()) {
        note(`${rows[0].model.label}: decode @${at} runs ${rep + 1}-${o.reps} skipped (budget)`);
        break;
      }
      for (const row of [...rows]) {
        const before = probe;
        const m = await measure<DecodeResult>(
          row, { op: 'decode', at, n: decodeTokens },
          (r) => { const iv = r.intervalsMs.slice(DECODE_WARM); return iv.length ? (iv.length / iv.reduce((s, x) => s + x, 0)) * 1000 : 0; },
          `decode @${at}`,
        );
        if (meter) probe = await meter.probeRead();
        if (!m) continue;
        const { sample, result } = m;
        if (meter) sample.readGBpsAround = round((before + probe) / 2, 2);
        (row.samples.decode[at] ??= []).push(sample);
        row.samples.kvAt[at] = result.kvBytes;
        row.decodeObs.push({ at, ms: 1000 / sample.value });
      }
    }
  };

  const extend = async (rows: Row[], to: number) => {
    for (const row of [...rows]) {
      const r = await safe(row, () => row.worker.call<PrefillResult & { from: number }>({ op: 'extend', to }));
      if (r && r.tokens > 0) {
        row.prefillObs.push({ from: r.from, to, ms: r.wallMs });
        row.result.fills.push({ from: r.from, to, tokensPerSecond: round(r.tokensPerSecond, 2), wallMs: Math.round(r.wallMs), othersShare: round(r.othersShare, 3) });
        log(`${stamp()} ${rowName(row)} fill ${r.from}→${to}: ${r.tokensPerSecond.toFixed(1)} tok/s (others ${(r.othersShare * 100).toFixed(0)}%)`);
      }
    }
  };

  const ctxFor = (n: number) => n + decodeTokens + 8;
  const fits = (m: BenchModel, n: number) => m.contextLength <= 0 || ctxFor(n) <= m.contextLength;
  const isLong = (m: BenchModel) => o.longModels.includes('all') || o.longModels.includes(m.label);
  const chainPrefills = (m: BenchModel) => o.prefills.filter((n) => n > SHORT_LIMIT && fits(m, n));
  const chainContexts = (m: BenchModel) => o.contexts.filter((c) => c > SHORT_LIMIT && (c <= MID_LIMIT || isLong(m)));
  /** Restoring a saved context: reading the file (a guess until one was timed). */
  const RESTORE_EST_MS = 15000;
  /** llama.cpp's f16 state at c, from which a quantized cache's state can be derived (filling q4_0 to 16k takes hours here). */
  const derivable = (r: Row, c: number): string | null => {
    if (r.config.engine !== 'llama.cpp' || !(r.config.kv === 'q8_0' || r.config.kv === 'q4_0')) return null;
    const f16 = stateFile(r.model, { ...r.config, kv: 'f16' }, c);
    return fs.existsSync(f16) ? f16 : null;
  };
  const hasState = (r: Row, c: number) =>
    o.stateCache && c > MID_LIMIT && (fs.existsSync(stateFile(r.model, r.config, c)) || derivable(r, c) !== null);
  /** Cost of bringing the rows from `from` to c tokens: restoring the rows with a saved state, filling the rest. */
  const reachCost = (rows: Row[], from: number, c: number) =>
    rows.reduce((s, r) => s + (hasState(r, c) ? RESTORE_EST_MS : estFillMs(r, from, c)), 0);

  /** Estimated cost of a model's chain up to context `reach` (one run of each long prefill). */
  const chainCost = (m: BenchModel, reach: number): number => {
    const rows = rowsOf.get(m)!;
    let len = 0;
    let cost = 0;
    for (const p of chainPrefills(m)) {
      cost += rows.reduce((s, r) => s + estFillMs(r, 0, p), 0);
      len = p;
    }
    for (const c of chainContexts(m).filter((c) => c <= reach && fits(m, c))) {
      cost += reachCost(rows, Math.min(len, c), c);
      cost += decodeCost(rows, c, o.reps);
      len = c;
    }
    return cost;
  };

  /** Brings every row's context to c tokens from a saved state; false for a row that could not (it fills instead). */
  const restore = async (rows: Row[], c: number): Promise<void> => {
    for (const row of [...rows]) {
      const file = stateFile(row.model, row.config, c);
      // a derived state is made for this run only and removed after: a later run derives it
      // again (seconds) rather than mistake it for one filled with that cache
      const src = fs.existsSync(file) ? null : derivable(row, c);
      const use = src ? `${file}.derived` : file;
      try {
        if (src) {
          const t0 = performance.now();
          requantizeLlamaState(src, use, row.config.kv as 'q8_0' | 'q4_0', row.model.headDim);
          log(`${stamp()} ${rowName(row)} context ${c}: state derived from ${path.basename(src)} (KV requantized as llama.cpp stores ${row.config.kv}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        }
        const r = await row.worker.call<{ ms: number }>({ op: 'restore', file: use, n: c });
        row.result.restored.push({ to: c, ms: Math.round(r.ms), savedAt: fs.statSync(src ?? file).mtime.toISOString(), ...(src ? { from: 'f16' } : {}) });
        log(`${stamp()} ${rowName(row)} context ${c} restored from ${path.basename(use)} in ${(r.ms / 1000).toFixed(1)} s`);
      } catch (e) {
        log(`${stamp()} ${rowName(row)}: saved context ${c} unusable (${(e instanceof Error ? e.message : String(e)).split('\n')[0]}); filling instead`);
        if (!src) fs.rmSync(file, { force: true });
        await safe(row, () => row.worker.call({ op: 'open', nCtx: ctxFor(Math.max(c, row.result.rss.peakCtx)) }));
        await extend([row], c);
      } finally {
        if (src) fs.rmSync(use, { force: true });
      }
    }
  };

  /** Saves every row's filled context of c tokens for later runs (when the disk has room). */
  const save = async (rows: Row[], c: number): Promise<void> => {
    if (!o.stateCache || c <= MID_LIMIT) return;
    fs.mkdirSync(stateCacheDir(), { recursive: true });
    for (const row of [...rows]) {
      const file = stateFile(row.model, row.config, c);
      const free = fs.statfsSync(stateCacheDir());
      if (free.bavail * free.bsize < 4 * (row.samples.kvAt[c] ?? 0) + (4 << 30)) {
        log(`${stamp()} not saving context ${c}: little disk space left`);
        return;
      }
      try {
        const r = await row.worker.call<{ ms: number }>({ op: 'save', file });
        log(`${stamp()} ${rowName(row)} context ${c} saved (${(fs.statSync(file).size / 1048576).toFixed(0)} MiB, ${(r.ms / 1000).toFixed(1)} s)`);
      } catch (e) {
        log(`${stamp()} ${rowName(row)}: could not save context ${c}: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`);
      }
    }
  };

  /**
   * The chain of one model: each long prefill from empty (one run), then the context grown to each
   * decode context in turn (or restored from a state an earlier run saved), as far as the budget
   * reaches while keeping `reserveMs` for what follows.
   */
  const runChain = async (m: BenchModel, reserveMs: number) => {
    const rows = rowsOf.get(m)!;
    if (rows.length === 0) return;
    const prefills = chainPrefills(m);
    const ctxs = chainContexts(m);
    for (const c of ctxs.filter((c) => !fits(m, c))) note(`${m.label}: decode @${c} skipped (model context ${m.contextLength})`);
    const want = ctxs.filter((c) => fits(m, c));
    if (prefills.length === 0 && want.length === 0) return;
    let reach = 0;
    for (const c of want) if (chainCost(m, c) * 1.1 + reserveMs <= budgetLeft()) reach = c;
    const cap = Math.max(reach, ...prefills);
    for (const row of [...rows]) await safe(row, () => row.worker.call({ op: 'open', nCtx: ctxFor(cap) }));
    for (const row of rows) row.result.rss.peakCtx = Math.max(row.result.rss.peakCtx, cap);
    let ok = true;
    for (const p of prefills) ok = (await prefillMeasure(rows, p, 0, 1, reserveMs)) && ok;
    let len = prefills.length ? prefills[prefills.length - 1] : 0;
    for (const c of want) {
      // rows with a state saved by an earlier run restore it; the others fill (and save theirs)
      const saved = rows.filter((r) => hasState(r, c)), fill = rows.filter((r) => !hasState(r, c));
      const est = reachCost(rows, Math.min(len, c), c) + decodeCost(rows, c, o.reps);
      if (c > reach || !ok || est + reserveMs > budgetLeft()) {
        note(`${m.label}: decode @${c} skipped (${fill.length ? 'filling' : 'restoring'} and decoding need ~${minutes(est)}${reserveMs ? ` + ${minutes(reserveMs)} kept for other models` : ''}, ${minutes(budgetLeft())} left)`);
        break;
      }
      if (saved.length) await restore(saved, c);
      if (fill.length) {
        await extend(fill, c);
        await save(fill, c);
      }
      await decodeMeasure(rows, c);
      len = c;
    }
    for (const row of [...rows]) await recordStats(row, 'peak');
  };

  try {
    // stage 1: every model, the short phases (prefill ≤ 1024, decode ≤ 1024)
    for (const m of models) {
      const rows = await startRows(m);
      const shortPrefills = o.prefills.filter((n) => n <= SHORT_LIMIT && fits(m, n));
      const shortCtx = o.contexts.filter((c) => c <= SHORT_LIMIT && fits(m, c));
      const need = Math.max(0, ...shortPrefills, ...shortCtx);
      if (need > 0) {
        for (const row of [...rows]) await safe(row, () => row.worker.call({ op: 'open', nCtx: ctxFor(need) }));
        for (const row of rows) row.result.rss.peakCtx = need;
        for (const n of shortPrefills) await prefillMeasure(rows, n, 0, o.reps);
        for (const c of shortCtx) {
          for (const row of [...rows]) await safe(row, () => row.worker.call({ op: 'prefill', n: c }));
          await decodeMeasure(rows, c);
        }
      }
      for (const row of [...rows]) await recordStats(row, 'short');
    }

    // stage 2: long models' chains (decode up to the longest context), keeping enough budget for
    // stage 3: the other models' chains up to 4096
    const longModels = models.filter(isLong);
    const others = models.filter((m) => !isLong(m));
    for (const m of longModels) await runChain(m, others.reduce((s, x) => s + chainCost(x, MID_LIMIT), 0));
    for (let i = 0; i < others.length; i++) await runChain(others[i], others.slice(i + 1).reduce((s, x) => s + chainCost(x, MID_LIMIT), 0));

    // stage 4: the remaining runs of the long prefills, as the budget allows
    for (const m of models) {
      const rows = rowsOf.get(m)!;
      for (const p of chainPrefills(m)) {
        if (rows.length === 0) break;
        const done = rows[0].samples.prefill[p]?.length ?? 0;
        if (done > 0 && done < o.longReps) await prefillMeasure(rows, p, done, o.longReps);
      }
      for (const row of [...rows]) await recordStats(row, 'peak');
    }
  } finally {
    await Promise.all([...allRows.map((r) => r.worker.close()), meter?.close()]);
  }

  const bandwidthAfter = o.bandwidth && !o.quick ? await bandwidthQuiet('after') : null;
  const readBw = Math.max(bandwidth?.readGBps ?? 0, bandwidthAfter?.readGBps ?? 0) || null;

  // results
  for (const row of allRows) {
    const r = row.result;
    for (const [n, s] of Object.entries(row.samples.prefill)) r.prefill[n] = stat(s, o.maxDisturb);
    for (const [at, s] of Object.entries(row.samples.decode)) {
      const st = stat(s, o.maxDisturb);
      const kvBytes = row.samples.kvAt[at] ?? 0;
      const bytesPerToken = row.model.weightBytesPerToken + kvBytes;
      const gbps = (bytesPerToken * st.median) / 1e9;
      const around = s.filter((x) => x.readGBpsAround).map((x) => (bytesPerToken * x.value) / 1e9 / x.readGBpsAround!);
      r.decode[at] = { ...st, kvBytes, bytesPerToken, achievedGBps: gbps, readFraction: readBw ? gbps / readBw : null, adjacentReadFraction: around.length ? median(around) : null };
    }
  }
  // rows that failed before measuring anything are only in `skipped`
  const results = allRows.map((r) => r.result).filter((r) => !r.error || Object.keys(r.prefill).length + Object.keys(r.decode).length > 0);
  const ratios: Ratio[] = [];
  for (const m of models) {
    const lc = results.filter((r) => r.model === m.label && r.engine === 'llama.cpp');
    for (const k of results.filter((r) => r.model === m.label && r.engine === 'llamakv')) {
      const base = pairKv(k.kv).map((t) => lc.find((r) => r.kv === t)).find((r) => r) ?? lc[0];
      if (!base) continue;
      k.vs = base.kv;
      const q = (x?: number, y?: number) => (x !== undefined && y !== undefined && y > 0 && Number.isFinite(x) ? round(x / y, 3) : null);
      const keys = (a: Record<string, unknown>, b: Record<string, unknown>) => [...new Set([...Object.keys(a), ...Object.keys(b)])];
      ratios.push({
        model: m.label,
        llamakv: k.kv,
        llamaCpp: base.kv,
        prefill: Object.fromEntries(keys(k.prefill, base.prefill).map((n) => [n, q(k.prefill[n]?.median, base.prefill[n]?.median)])),
        decode: Object.fromEntries(keys(k.decode, base.decode).map((n) => [n, q(k.decode[n]?.median, base.decode[n]?.median)])),
        peakRss: q(k.rss.peakMiB, base.rss.peakMiB),
        startup: q(k.startupMs, base.startupMs),
        kvBytes: Object.fromEntries(keys(k.decode, base.decode).map((n) => [n, q(k.decode[n]?.kvBytes, base.decode[n]?.kvBytes)])),
      });
    }
  }

  const { out: _out, budgetMs, ...opts } = o;
  return {
    version: 1,
    date: new Date().toISOString(),
    machine: machineInfo(),
    options: { ...opts, budgetMin: budgetMs / 60000 },
    bandwidth,
    bandwidthAfter,
    models,
    rows: results,
    ratios,
    skipped,
    disturbance: { ...dist, quietWaitMs: Math.round(dist.quietWaitMs) },
    wallMs: performance.now() - t0,
  };
}

function machineInfo(): BenchReport['machine'] {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const flags = /^flags\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1].split(' ') ?? [];
    const isa = ['avx512f', 'avx512_vnni', 'avx512_bf16', 'avx2', 'fma'].filter((f) => flags.includes(f));
    cpu += isa.length ? ` (${isa.join(', ')})` : '';
  } catch {
    /* not Linux */
  }
  let llamaCpp = 'node-llama-cpp';
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8'));
    const rel = JSON.parse(fs.readFileSync(path.join(repoRoot, 'node_modules', 'node-llama-cpp', 'llama', 'binariesGithubRelease.json'), 'utf8'));
    llamaCpp = `node-llama-cpp ${pkg.version} (binaries ${rel.release})`;
  } catch {
    /* keep the bare name */
  }
  let kernels: string | null = null;
  try {
    kernels = (require('./native') as typeof import('./native')).nativeAddon().systemInfo().kernels;
  } catch {
    /* addon not built */
  }
  return { cpu, cpus: os.cpus().length, memGiB: Math.round(os.totalmem() / 2 ** 30), kernel: `${os.type()} ${os.release()}`, node: process.version, llamaCpp, llamakvKernels: kernels };
}

function round(x: number, d: number): number {
  const k = 10 ** d;
  return Math.round(x * k) / k;
}

// ---- report: markdown ---------------------------------------------------------------------------

function ctxLabel(n: number): string {
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024}k` : String(n);
}

function num(x: number): string {
  if (!Number.isFinite(x)) return '–';
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

function cell(s: Stat | undefined): string {
  if (!s) return '–';
  const range = s.n > 1 ? ` (${num(s.min)}–${num(s.max)})` : '';
  return `${num(s.median)}${range}${s.disturbed ? ' †' : ''}`;
}

function ratioCell(x: number | null | undefined): string {
  return x === null || x === undefined ? '–' : `**${x.toFixed(2)}×**`;
}

const mib = (b: number) => `${(b / 1048576).toFixed(b < 10 * 1048576 ? 1 : 0)} MiB`;

export function renderMarkdown(rep: BenchReport, svgName?: string): string {
  const L: string[] = [];
  const bw = rep.bandwidth;
  const bwa = rep.bandwidthAfter;
  L.push(`Run ${rep.date.slice(0, 16).replace('T', ' ')} UTC on ${rep.machine.cpu}, ${rep.machine.cpus} CPUs, ${rep.machine.memGiB} GiB; ` +
    `${rep.options.threads} threads for both engines; llamakv kernels ${rep.machine.llamakvKernels ?? '?'}; llama.cpp = ${rep.machine.llamaCpp}, flash attention on, batch ${rep.options.batch}.`);
  if (bw) {
    const pct = (b: Bandwidth) => (b.othersShare > rep.disturbance.maxDisturb ? `, disturbed: others ${(b.othersShare * 100).toFixed(0)}%` : '');
    L.push(`Memory bandwidth measured by the bench (${bw.threads} threads, memcmp/memcpy over ${bw.bufferMiB} MiB per thread): read ${bw.readGBps.toFixed(1)} GB/s ` +
      `(1 thread ${bw.readGBps1.toFixed(1)}), memcpy ${bw.copyGBps.toFixed(1)} GB/s read+write${pct(bw)}` +
      `${bwa ? `; after the run: read ${bwa.readGBps.toFixed(1)}, memcpy ${bwa.copyGBps.toFixed(1)}${pct(bwa)}` : ''}. ` +
      `Decode bandwidth = (weight bytes + KV bytes read per token) × tokens/s, as a share of the higher read figure (run) and, ` +
      `median over the runs, of the read bandwidth probed just before and after each run (adjacent: what others left at the time).`);
  }
  L.push(`Medians (min–max) of ${rep.options.reps} runs per phase (${rep.options.longReps} for prompts > ${SHORT_LIMIT} tokens), ` +
    `rows alternating; decode = ${rep.options.decodeTokens} tokens after ${DECODE_WARM} warm-up tokens, greedy. ` +
    `Ratios are llamakv / llama.cpp (higher is better for speed, lower for memory and startup).`);
  L.push('');
  for (const m of rep.models) {
    const rows = rep.rows.filter((r) => r.model === m.label);
    const ratios = rep.ratios.filter((r) => r.model === m.label);
    const prefills = [...new Set(rows.flatMap((r) => Object.keys(r.prefill).map(Number)))].sort((a, b) => a - b);
    const ctxs = [...new Set(rows.flatMap((r) => Object.keys(r.decode).map(Number)))].sort((a, b) => a - b);
    L.push(`**${m.label}** (${mib(m.fileBytes)}, ${mib(m.weightBytesPerToken)} of weights read per token)`);
    L.push('');
    const head = ['', ...rows.map((r) => `${r.engine} ${r.kv}`), ...ratios.map((q) => (ratios.length > 1 || q.llamakv !== q.llamaCpp ? `ratio ${q.llamakv} / ${q.llamaCpp}` : 'ratio'))];
    L.push(`| ${head.join(' | ')} |`);
    L.push(`|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
    const line = (label: string, f: (r: RowResult) => string, g: (q: Ratio) => string) => L.push(`| ${[label, ...rows.map(f), ...ratios.map(g)].join(' | ')} |`);
    for (const n of prefills) line(`prefill ${ctxLabel(n)} (tok/s)`, (r) => cell(r.prefill[n]), (q) => ratioCell(q.prefill[n]));
    for (const c of ctxs) line(`decode @${ctxLabel(c)} (tok/s)`, (r) => cell(r.decode[c]), (q) => ratioCell(q.decode[c]));
    for (const c of ctxs) {
      line(`bandwidth @${ctxLabel(c)} (GB/s, % of read: run · adjacent)`, (r) => {
        const d = r.decode[c];
        const pct = (x: number | null | undefined) => (x !== null && x !== undefined ? `${(x * 100).toFixed(0)}%` : '–');
        return d ? `${d.achievedGBps.toFixed(1)}${d.readFraction !== null ? ` (${pct(d.readFraction)} · ${pct(d.adjacentReadFraction)})` : ''}` : '–';
      }, () => '');
    }
    const top = ctxs[ctxs.length - 1];
    if (top !== undefined) line(`KV bytes @${ctxLabel(top)}`, (r) => (r.decode[top] ? mib(r.decode[top].kvBytes) : '–'), (q) => ratioCell(q.kvBytes[top]));
    line('peak RSS, short context', (r) => (r.rss.shortMiB !== null ? `${r.rss.shortMiB.toFixed(0)} MiB` : '–'), () => '');
    line('peak RSS', (r) => `${r.rss.peakMiB.toFixed(0)} MiB @${ctxLabel(r.rss.peakCtx)}`, (q) => ratioCell(q.peakRss));
    line('RSS anonymous / file-backed', (r) => `${r.rss.anonMiB.toFixed(0)} / ${r.rss.fileMiB.toFixed(0)} MiB`, () => '');
    line('model load → first token (ms)', (r) => `${r.startupMs.toFixed(0)}`, (q) => ratioCell(q.startup));
    line('library load (ms)', (r) => `${r.initMs.toFixed(0)}`, () => '');
    L.push('');
  }
  const d = rep.disturbance;
  L.push(`† = other processes used more than ${(d.maxDisturb * 100).toFixed(0)}% of the machine (CPU time from /proc/stat less the engine's own) during that phase; ` +
    `a disturbed phase is repeated (up to ${rep.options.retries} times) when the machine turns quiet within 15 s, else kept and marked. ` +
    `This run: ${d.phases} timed phases, ${d.retried} repeats of disturbed ones, ${d.stillDisturbed} still disturbed; ${(d.quietWaitMs / 1000).toFixed(0)} s waiting for a quiet machine. Wall time ${(rep.wallMs / 60000).toFixed(1)} min.`);
  const restored = rep.rows.flatMap((r) => (r.restored ?? []).map((x) =>
    `${r.model} ${r.engine} ${r.kv} @${ctxLabel(x.to)} (saved ${x.savedAt.slice(0, 16).replace('T', ' ')}${x.from ? `, derived from its ${x.from} state` : ''})`));
  if (restored.length) {
    L.push('');
    L.push(`Long contexts restored from states an earlier run saved (same engine build, model file and KV setting) instead of filled again: ${restored.join('; ')}.`);
    if (rep.rows.some((r) => r.restored?.some((x) => x.from)))
      L.push(`A state "derived from its f16 state" is llama.cpp's own f16-cache state with the keys and values requantized and rotated as llama.cpp stores that cache type ` +
        `(sidecar/llama-state.ts): the same tokens and positions, values within quantization noise of a direct fill, whose hours of CPU it saves; decode speed does not depend on the cached values.`);
  }
  if (rep.skipped.length) {
    L.push('');
    L.push('Not measured: ' + rep.skipped.join('; ') + '.');
  }
  if (svgName) {
    L.push('');
    L.push(`![decode tokens/s against context length](${svgName})`);
  }
  return L.join('\n') + '\n';
}

// ---- report: SVG chart -------------------------------------------------------------------------

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Decode tokens/s against context length (log scale), one line per model × engine × KV setting. */
export function renderSvg(rep: BenchReport): string {
  const series = rep.rows
    .map((r) => ({ r, pts: Object.entries(r.decode).map(([c, s]) => ({ c: Number(c), s })).sort((a, b) => a.c - b.c) }))
    .filter((x) => x.pts.length > 0);
  const W = 760, H = 440, ml = 64, mr = 230, mt = 40, mb = 56;
  const pw = W - ml - mr, ph = H - mt - mb;
  const cs = [...new Set(series.flatMap((x) => x.pts.map((p) => p.c)))].sort((a, b) => a - b);
  const ymaxRaw = Math.max(1, ...series.flatMap((x) => x.pts.map((p) => p.s.max)));
  const step = niceStep(ymaxRaw / 5);
  const ymax = Math.ceil(ymaxRaw / step) * step;
  const lx0 = Math.log2(cs[0] ?? 128), lx1 = Math.log2(cs[cs.length - 1] ?? 32768);
  const X = (c: number) => ml + (lx1 > lx0 ? ((Math.log2(c) - lx0) / (lx1 - lx0)) * pw : pw / 2);
  const Y = (v: number) => mt + ph - (v / ymax) * ph;
  const models = [...new Set(series.map((x) => x.r.model))];
  const kvs = [...new Set(series.map((x) => x.r.kv))];
  const hue = { llamakv: [212, 60], 'llama.cpp': [24, 80] } as const;
  const color = (r: RowResult) => {
    const [h, s] = hue[r.engine];
    const k = models.indexOf(r.model);
    return `hsl(${h}, ${s}%, ${Math.min(70, 35 + k * 14)}%)`;
  };
  const dashes = ['', '6 3', '2 3', '8 3 2 3'];
  const marks = ['circle', 'square', 'diamond'];
  const o: string[] = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(`<text x="${ml}" y="22" font-size="14" font-weight="bold">Decode tokens/s against context length (${rep.options.threads} threads)</text>`);
  for (let v = 0; v <= ymax + 1e-9; v += step) {
    o.push(`<line x1="${ml}" x2="${ml + pw}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#e4e4e4"/>`);
    o.push(`<text x="${ml - 6}" y="${(Y(v) + 4).toFixed(1)}" text-anchor="end" fill="#444">${v.toFixed(step >= 1 ? 0 : Math.ceil(-Math.log10(step)))}</text>`);
  }
  for (const c of cs) {
    o.push(`<line x1="${X(c).toFixed(1)}" x2="${X(c).toFixed(1)}" y1="${mt}" y2="${mt + ph}" stroke="#eeeeee"/>`);
    o.push(`<text x="${X(c).toFixed(1)}" y="${mt + ph + 18}" text-anchor="middle" fill="#444">${ctxLabel(c)}</text>`);
  }
  o.push(`<line x1="${ml}" x2="${ml + pw}" y1="${mt + ph}" y2="${mt + ph}" stroke="#888"/>`);
  o.push(`<line x1="${ml}" x2="${ml}" y1="${mt}" y2="${mt + ph}" stroke="#888"/>`);
  o.push(`<text x="${ml + pw / 2}" y="${H - 14}" text-anchor="middle">context length (tokens, log scale)</text>`);
  o.push(`<text transform="translate(18 ${mt + ph / 2}) rotate(-90)" text-anchor="middle">tokens/s</text>`);
  const marker = (shape: string, x: number, y: number, col: string) =>
    shape === 'square' ? `<rect x="${(x - 3.5).toFixed(1)}" y="${(y - 3.5).toFixed(1)}" width="7" height="7" fill="${col}"/>`
      : shape === 'diamond' ? `<path d="M${x.toFixed(1)} ${(y - 4.5).toFixed(1)}l4.5 4.5l-4.5 4.5l-4.5 -4.5z" fill="${col}"/>`
        : `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3.5" fill="${col}"/>`;
  series.forEach(({ r, pts }, i) => {
    const col = color(r);
    const dash = dashes[kvs.indexOf(r.kv) % dashes.length];
    const shape = marks[models.indexOf(r.model) % marks.length];
    const d = pts.map((p, j) => `${j ? 'L' : 'M'}${X(p.c).toFixed(1)} ${Y(p.s.median).toFixed(1)}`).join(' ');
    o.push(`<path d="${d}" fill="none" stroke="${col}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`);
    for (const p of pts) {
      if (p.s.max > p.s.min) o.push(`<line x1="${X(p.c).toFixed(1)}" x2="${X(p.c).toFixed(1)}" y1="${Y(p.s.min).toFixed(1)}" y2="${Y(p.s.max).toFixed(1)}" stroke="${col}"/>`);
      o.push(marker(shape, X(p.c), Y(p.s.median), col));
    }
    const ly = mt + 8 + i * 20;
    const lx = ml + pw + 16;
    o.push(`<line x1="${lx}" x2="${lx + 26}" y1="${ly}" y2="${ly}" stroke="${col}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`);
    o.push(marker(shape, lx + 13, ly, col));
    o.push(`<text x="${lx + 32}" y="${ly + 4}">${esc(`${r.engine} · ${r.model} · KV ${r.kv}`)}</text>`);
  });
  o.push(`<text x="${ml}" y="${H - 2}" font-size="10" fill="#777">${esc(`${rep.date.slice(0, 10)} · ${rep.machine.cpu} · bars: min–max`)}</text>`);
  o.push('</svg>');
  return o.join('\n') + '\n';
}

function niceStep(x: number): number {
  const p = 10 ** Math.floor(Math.log10(x));
  const f = x / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

// ---- the command -------------------------------------------------------------------------------

export function writeReport(rep: BenchReport, dir: string): BenchReport['files'] {
  fs.mkdirSync(dir, { recursive: true });
  const files = { json: path.join(dir, 'bench.json'), markdown: path.join(dir, 'bench.md'), svg: path.join(dir, 'decode.svg') };
  rep.files = files;
  fs.writeFileSync(files.svg, renderSvg(rep));
  fs.writeFileSync(files.markdown, renderMarkdown(rep, 'decode.svg'));
  fs.writeFileSync(files.json, JSON.stringify(rep, null, 1) + '\n');
  return files;
}

registerCommand('bench', {
  usage: USAGE,
  async run(argv) {
    const o = parseBenchArgs(argv);
    const rep = await runBench(o);
    const files = writeReport(rep, o.out)!;
    if (o.json) process.stdout.write(JSON.stringify(rep) + '\n');
    else process.stdout.write(renderMarkdown(rep) + `\nwrote ${files.markdown}, ${files.json}, ${files.svg}\n`);
    return 0;
  },
});
