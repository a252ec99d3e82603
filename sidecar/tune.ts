// tune.ts — `llamakv tune MODEL`: sweeps KV cache settings (the presets and a grid of custom specs)
// on the user's own model and text, measures each against the f16 cache (bytes per token, mean KL
// and top-1 agreement of teacher-forced next-token distributions, needle retrieval on the needle
// model), prints the memory/quality frontier and recommends the smallest cache within a bound.
// Writes tune.json and tune.svg (bytes per token against KL, log scale, frontier line).
import * as fs from 'fs';
import * as path from 'path';
import { checkFlags, flagBool, flagNum, flagStr, parseArgs, UsageError } from './args';
import { registerCommand } from './cli';
import { Model, Session } from './engine';
import { argmax, logSoftmax } from './logits';
import { needlePrompt, NeedlePrompt, NEEDLE_SHAPE } from './needle';

// ---- what is swept ---------------------------------------------------------------------------

export const PRESETS = ['off', 'q8', 'q4', 'q2', 'balanced', 'max'];

/**
 * Custom specs tried besides the presets: one knob at a time away from a preset (rotation, value
 * bits (1 bit included), key block size, outliers, budget, tiers, head budgets), so the frontier shows what each
 * knob buys.
 */
export const GRID = [
  'q8,v4',
  'q4,norot',
  'q4,v2',
  'q2,g32,vg32',
  'q2,o0.01',
  'balanced,b0.75',
  'balanced,b0.5',
  'balanced,t4:0.1/2,b0.75',
  'balanced,hl0',
  'q2,b0.5,h2o',
  'balanced,v1',
  'max,b0.4',
  'max,hl0',
];

export interface TuneOptions {
  model: string;
  /** A text file, or a folder whose largest source file is used; default: a built-in mix. */
  text?: string;
  /** Tokens per run: prefill ctx − decode, then decode one at a time (teacher-forced). */
  ctx: number;
  /** Tokens decoded one at a time after the prefill; KL and top-1 are averaged over them. */
  decode: number;
  /** Specs to run besides `off` (default: PRESETS + GRID). */
  specs: string[];
  maxKl: number;
  minTop1: number;
  /** Needle retrieval bound (used when needles are measured). */
  minNeedle: number;
  /** Needle mode: undefined = detect from the model's name. */
  needle?: boolean;
  needles: number;
  seed: number;
  threads: number;
  out: string;
}

export interface NeedleScore {
  correct: number;
  total: number;
  accuracy: number;
  /** Needle queries whose top-1 equals the f16 cache's (the needle model's argmax is clear). */
  agreeF16: number;
  /** Depths (0 = start of the context, 1 = end) of the needles it missed. */
  missed: number[];
}

export interface TuneRow {
  /** As given (preset name or spec string). */
  name: string;
  /** Canonical spec string the engine used. */
  spec: string;
  bytes: number;
  f16Bytes: number;
  tokens: number;
  residentTokens: number;
  bytesPerToken: number;
  /** f16 bytes / bytes. */
  ratio: number;
  /** Mean KL(f16 ‖ this) over the decoded stretch (nats). */
  kl: number;
  /** Largest per-position KL in the stretch. */
  maxKl: number;
  /** Share of stretch positions whose argmax equals the f16 cache's. */
  top1: number;
  needle?: NeedleScore;
  /** Where the bytes go, per token (codes, scales, outliers, residual, index, journal), when the cache reports it. */
  breakdown?: Record<string, number>;
  /** With head budgets (hl): (layer, KV head) pairs found streaming (they keep only the sinks and recent window). */
  streamingHeads?: number;
  prefillMs: number;
  decodeMsPerToken: number;
  /** On the Pareto frontier of (bytes per token, KL): no other row has both no more bytes and no more KL. */
  frontier: boolean;
  /** Within the quality bound. */
  ok: boolean;
}

export interface TuneReport {
  date: string;
  model: { path: string; name: string; nLayer: number; nHeadKv: number; headDim: number; nVocab: number };
  text: { source: string; tokens: number; repeated: boolean };
  ctx: number;
  decode: number;
  needleMode: boolean;
  bound: { maxKl: number; minTop1: number; minNeedle: number | null };
  rows: TuneRow[];
  /** The smallest cache within the bound; null when none is (only when f16 itself fails the needle bound). */
  recommended: string | null;
  files?: { json: string; svg: string };
}

// ---- the text ----------------------------------------------------------------------------------

const PROSE =
  'The river ran slowly past the old mill, and in the evening the miller would sit by the window ' +
  'and write letters to his sister in the city. She answered every one of them, though the post was ' +
  'slow and the roads were bad in winter. Years later their children found the letters in a box under ' +
  'the stairs, tied with string, and read them aloud to each other on long summer nights. ' +
  'A cache is a small, fast memory that keeps copies of what was used recently, on the bet that it ' +
  'will be used again soon. When the bet is wrong the cache costs more than it saves; when it is ' +
  'right, the program runs as if all of its memory were fast. ';

const SOURCE_EXT = new Set(['.ts', '.tsx', '.js', '.jsx', '.py', '.c', '.cc', '.cpp', '.h', '.hpp', '.rs', '.go', '.java', '.kt',
  '.cs', '.rb', '.php', '.swift', '.m', '.scala', '.lua', '.sh', '.md', '.txt']);
const SKIP_DIRS = new Set(['node_modules', '.git', 'out', 'dist', 'build', '.cache', 'target', '__pycache__', 'vendor']);

/** The largest source file under a folder (skipping dependencies and build outputs, files over 4 MiB). */
export function largestSourceFile(dir: string): string | null {
  let best: { file: string; size: number } | null = null;
  const walk = (d: string, depth: number) => {
    if (depth > 12) return;
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (!SKIP_DIRS.has(e.name) && !e.name.startsWith('.')) walk(p, depth + 1);
      } else if (e.isFile() && SOURCE_EXT.has(path.extname(e.name).toLowerCase())) {
        const size = fs.statSync(p).size;
        if (size <= 4 << 20 && (!best || size > best.size)) best = { file: p, size };
      }
    }
  };
  walk(dir, 0);
  return best ? (best as { file: string }).file : null;
}

/** The text to run on: the user's file (or a folder's largest source file), else prose plus llamakv's own code. */
function loadText(text: string | undefined): { source: string; content: string } {
  if (text !== undefined) {
    if (!fs.existsSync(text)) throw new Error(`--text: no such file or folder: ${text}`);
    let file = text;
    if (fs.statSync(text).isDirectory()) {
      const f = largestSourceFile(text);
      if (!f) throw new Error(`--text: no source file found under ${text}`);
      file = f;
    }
    const content = fs.readFileSync(file, 'utf8');
    if (content.trim().length === 0) throw new Error(`--text: ${file} is empty`);
    return { source: file, content };
  }
  // Built-in mix: English prose, then this program's own compiled sources (code the tool ships).
  const own = fs.readdirSync(__dirname).filter((f) => f.endsWith('.js')).sort().map((f) => fs.readFileSync(path.join(__dirname, f), 'utf8'));
  return { source: 'built-in (prose + llamakv sources)', content: PROSE.repeat(3) + own.join('\n') };
}

// ---- measurement -------------------------------------------------------------------------------


/** One reference position: the f16 cache's log-distribution (probabilities kept for KL) and argmax. */
interface RefPoint {
  lp: Float64Array;
  top: number;
}

function klAgainst(ref: RefPoint, logits: Float32Array): { kl: number; agree: boolean } {
  const lp = logSoftmax(logits);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) {
    const p = Math.exp(ref.lp[i]);
    if (p > 0) kl += p * (ref.lp[i] - lp[i]);
  }
  return { kl: Math.max(0, kl), agree: argmax(logits) === ref.top };
}

interface RunResult {
  stretch: Float32Array[];  // logits per decoded position (only kept for the reference run)
  kls: number[];
  agree: number;
  needle: { predicted: number[] } | null;
  needleLogits: Float32Array[];
  stats: ReturnType<Session['kvStats']>;
  prefillMs: number;
  decodeMs: number;
}

/**
 * One spec: prefill the first ctx − decode tokens, decode the rest one at a time (teacher-forced),
 * then (needle mode) ask each key and rewind. With `ref` the distributions are compared as they come
 * (nothing vocabulary-sized is kept); without it the logits are kept as the reference.
 */
async function runOne(model: Model, spec: string, tokens: number[], decode: number, needle: NeedlePrompt | null,
  ref: { stretch: RefPoint[]; needle: RefPoint[] } | null): Promise<RunResult> {
  const s = model.createSession({ nCtx: tokens.length + (needle ? 1 : 0), kv: spec });
  try {
    const nPre = tokens.length - decode;
    const t0 = performance.now();
    let logits = (await s.prefill(tokens.slice(0, nPre), { logits: true }))!;
    const prefillMs = performance.now() - t0;
    const stretch: Float32Array[] = [];
    const kls: number[] = [];
    let agree = 0;
    const t1 = performance.now();
    // position j's distribution predicts token nPre + j; it is compared, then that token is fed
    for (let j = 0; j < decode; j++) {
      if (ref) {
        const c = klAgainst(ref.stretch[j], logits);
        kls.push(c.kl);
        if (c.agree) agree++;
      } else stretch.push(logits);
      logits = (await s.prefill([tokens[nPre + j]], { logits: true }))!;
    }
    const decodeMs = performance.now() - t1;
    const stats = s.kvStats();
    let needleOut: RunResult['needle'] = null;
    const needleLogits: Float32Array[] = [];
    if (needle) {
      const predicted: number[] = [];
      for (let i = 0; i < needle.queries.length; i++) {
        const l = (await s.prefill([needle.queries[i].key], { logits: true }))!;
        predicted.push(argmax(l));
        if (!ref) needleLogits.push(l);
        s.truncate(tokens.length);
      }
      needleOut = { predicted };
    }
    return { stretch, kls, agree, needle: needleOut, needleLogits, stats, prefillMs, decodeMs };
  } finally {
    s.dispose();
  }
}

/** Marks the Pareto frontier of (bytes per token, KL): rows no other row beats on both. */
export function markFrontier(rows: Pick<TuneRow, 'bytesPerToken' | 'kl' | 'frontier'>[]): void {
  for (const r of rows) {
    r.frontier = !rows.some((o) => o !== r && o.bytesPerToken <= r.bytesPerToken && o.kl <= r.kl && (o.bytesPerToken < r.bytesPerToken || o.kl < r.kl));
  }
}

/** Sets each row's `ok` against the bound and returns the smallest row within it (ties: lower KL). */
export function applyBound(rows: TuneRow[], b: { maxKl: number; minTop1: number; minNeedle: number }): TuneRow | null {
  for (const r of rows) r.ok = r.kl <= b.maxKl && r.top1 >= b.minTop1 && (!r.needle || r.needle.accuracy >= b.minNeedle);
  const ok = rows.filter((r) => r.ok);
  ok.sort((a, b) => a.bytesPerToken - b.bytesPerToken || a.kl - b.kl);
  return ok[0] ?? null;
}

function isNeedleModel(name: string): boolean {
  return /needle/i.test(name);
}

/** Checks every spec against the engine before anything long runs (a bad one fails with its error). */
function validateSpecs(model: Model, specs: string[]): Map<string, string> {
  const canonical = new Map<string, string>();
  for (const sp of specs) {
    let s: Session;
    try {
      s = model.createSession({ nCtx: 64, kv: sp });
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new UsageError(`--specs: ${msg.includes(sp) ? msg : `bad KV spec '${sp}': ${msg}`}`);
    }
    canonical.set(sp, s.kvStats().spec ?? sp);
    s.dispose();
  }
  return canonical;
}

export async function runTune(o: TuneOptions, log: (s: string) => void = () => {}): Promise<TuneReport> {
  const model = await Model.load(o.model, { threads: o.threads });
  try {
    const info = model.info;
    const needleMode = o.needle ?? isNeedleModel(info.name);
    if (o.ctx > info.contextLength) throw new UsageError(`--ctx ${o.ctx} is more than the model's context length ${info.contextLength}`);
    const specs = ['off', ...o.specs.filter((s) => s !== 'off')];
    const canonical = validateSpecs(model, specs);

    let tokens: number[];
    let textInfo: TuneReport['text'];
    let needle: NeedlePrompt | null = null;
    if (needleMode) {
      if (o.text !== undefined) throw new UsageError('--text does not apply to the needle model (its text is the needle haystack)');
      if (info.nVocab < 128000) throw new UsageError('--needle needs a model with the Llama 3 vocabulary');
      // haystack of ctx − 1 tokens; each query appends its KEY (the ctx-th token) and is rewound
      needle = needlePrompt({ contextTokens: o.ctx, nNeedles: o.needles, seed: o.seed });
      tokens = needle.tokens;
      textInfo = { source: `needle haystack (${o.needles} needles, seed ${o.seed})`, tokens: tokens.length, repeated: false };
    } else {
      const t = loadText(o.text);
      const once = model.tokenize(t.content, { addBos: false, special: false });
      if (once.length === 0) throw new Error(`--text: ${t.source} has no tokens`);
      const body: number[] = [];
      while (body.length < o.ctx - 1) body.push(...once);
      tokens = [...(info.addBos ? [info.bos] : []), ...body].slice(0, o.ctx);
      textInfo = { source: t.source, tokens: once.length, repeated: once.length < o.ctx - 1 };
    }
    if (o.decode >= tokens.length - 16) throw new UsageError(`--decode ${o.decode} leaves too little prefill in ${o.ctx} tokens`);

    log(`tune: ${path.basename(o.model)}, ${tokens.length} tokens (${textInfo.source}${textInfo.repeated ? ', repeated to fill' : ''}), ` +
      `${o.decode} decoded; ${specs.length} settings${needleMode ? `, ${o.needles} needles` : ''}`);
    const base = await runOne(model, 'f16', tokens, o.decode, needle, null);
    const refStretch: RefPoint[] = base.stretch.map((l) => ({ lp: logSoftmax(l), top: argmax(l) }));
    const refNeedle: RefPoint[] = base.needleLogits.map((l) => ({ lp: logSoftmax(l), top: argmax(l) }));
    base.stretch.length = 0;
    base.needleLogits.length = 0;
    const ref = { stretch: refStretch, needle: refNeedle };

    const rows: TuneRow[] = [];
    for (const name of specs) {
      const r = await runOne(model, name, tokens, o.decode, needle, ref);
      const st = r.stats;
      const row: TuneRow = {
        name,
        spec: canonical.get(name) ?? name,
        bytes: st.bytes,
        f16Bytes: st.f16Bytes,
        tokens: st.tokens,
        residentTokens: st.residentTokens,
        bytesPerToken: st.bytes / Math.max(1, st.tokens),
        ratio: st.f16Bytes / Math.max(1, st.bytes),
        kl: r.kls.reduce((a, b) => a + b, 0) / Math.max(1, r.kls.length),
        maxKl: Math.max(0, ...r.kls),
        top1: r.agree / Math.max(1, r.kls.length),
        breakdown: st.breakdown
          ? Object.fromEntries(Object.entries(st.breakdown).map(([k, v]) => [k, Math.round((v / Math.max(1, st.tokens)) * 100) / 100]))
          : undefined,
        ...(st.streamingHeads !== undefined ? { streamingHeads: st.streamingHeads } : {}),
        prefillMs: r.prefillMs,
        decodeMsPerToken: r.decodeMs / Math.max(1, o.decode),
        frontier: false,
        ok: false,
      };
      if (needle && r.needle) {
        const correct = r.needle.predicted.filter((p, i) => p === needle!.queries[i].value).length;
        const agreeF16 = r.needle.predicted.filter((p, i) => p === refNeedle[i].top).length;
        const missed = needle.queries.filter((q, i) => r.needle!.predicted[i] !== q.value).map((q) => Math.round(q.depth * 1000) / 1000);
        row.needle = { correct, total: needle.queries.length, accuracy: correct / needle.queries.length, agreeF16: agreeF16 / needle.queries.length, missed };
      }
      rows.push(row);
      log(`  ${name.padEnd(26)} ${row.bytesPerToken.toFixed(1).padStart(9)} B/token  ${row.ratio.toFixed(2).padStart(6)}x  KL ${fmtKl(row.kl)}  ` +
        `top-1 ${(row.top1 * 100).toFixed(1)}%${row.needle ? `  needle ${row.needle.correct}/${row.needle.total}` : ''}` +
        (row.streamingHeads !== undefined ? `  streaming heads ${row.streamingHeads}/${info.nLayer * info.nHeadKv}` : ''));
    }
    rows.sort((a, b) => a.bytesPerToken - b.bytesPerToken || a.kl - b.kl);
    markFrontier(rows);
    const best = applyBound(rows, o);
    return {
      date: new Date().toISOString(),
      model: { path: o.model, name: info.name, nLayer: info.nLayer, nHeadKv: info.nHeadKv, headDim: info.headDim, nVocab: info.nVocab },
      text: textInfo,
      ctx: tokens.length,
      decode: o.decode,
      needleMode,
      bound: { maxKl: o.maxKl, minTop1: o.minTop1, minNeedle: needleMode ? o.minNeedle : null },
      rows,
      recommended: best ? best.name : null,
    };
  } finally {
    model.dispose();
  }
}

// ---- output --------------------------------------------------------------------------------------

function fmtKl(x: number): string {
  if (x === 0) return '0';
  return x >= 0.01 ? x.toFixed(3) : x.toExponential(1);
}

export function renderTable(rep: TuneReport): string {
  const head = ['setting', 'bytes/token', 'vs f16', 'KL', 'top-1', ...(rep.needleMode ? ['needle'] : []), 'frontier', 'bound'];
  const lines = rep.rows.map((r) => [
    r.name === rep.recommended ? `${r.name} ◀` : r.name,
    r.bytesPerToken.toFixed(1),
    `${r.ratio.toFixed(2)}x`,
    fmtKl(r.kl),
    `${(r.top1 * 100).toFixed(1)}%`,
    ...(rep.needleMode ? [r.needle ? `${r.needle.correct}/${r.needle.total}` : '–'] : []),
    r.frontier ? '*' : '',
    r.ok ? 'ok' : '',
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmtLine = (l: string[]) => l.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  const b = rep.bound;
  const bound = `KL <= ${b.maxKl}, top-1 >= ${(b.minTop1 * 100).toFixed(1)}%${b.minNeedle !== null ? `, needle >= ${(b.minNeedle * 100).toFixed(0)}%` : ''}`;
  const best = rep.rows.find((r) => r.name === rep.recommended);
  return [
    `${rep.model.name || path.basename(rep.model.path)}: ${rep.ctx} tokens of ${rep.text.source}${rep.text.repeated ? ' (repeated to fill)' : ''}; ` +
      `KL and top-1 over ${rep.decode} teacher-forced positions against the f16 cache`,
    fmtLine(head),
    fmtLine(w.map((n) => '-'.repeat(n))),
    ...lines.map(fmtLine),
    '',
    `* = Pareto frontier of bytes per token against KL. Bound: ${bound}.`,
    ...rep.rows.filter((r) => r.streamingHeads !== undefined).map((r) =>
      `${r.name}: ${r.streamingHeads} of ${rep.model.nLayer * rep.model.nHeadKv} KV heads streaming (keep only the sinks and the recent window; hl)`),
    best
      ? `recommended: ${best.name} (${best.spec}): ${best.bytesPerToken.toFixed(1)} bytes/token, ${best.ratio.toFixed(2)}x smaller than f16, ` +
        `KL ${fmtKl(best.kl)}, top-1 ${(best.top1 * 100).toFixed(1)}%${best.needle ? `, needle ${best.needle.correct}/${best.needle.total}` : ''}`
      : 'recommended: none (not even the f16 cache meets the bound: is this the needle model?)',
  ].join('\n');
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Bytes per token (x, log) against mean KL (y, log; KL 0 drawn on the floor), frontier as a line. */
export function renderSvg(rep: TuneReport): string {
  const W = 780, H = 480, ml = 70, mr = 30, mt = 44, mb = 56;
  const pw = W - ml - mr, ph = H - mt - mb;
  const rows = rep.rows;
  const pos = rows.map((r) => r.kl).filter((k) => k > 0);
  const klFloor = Math.min(1e-6, ...pos.map((k) => k / 3));
  const y0 = Math.floor(Math.log10(klFloor)), y1 = Math.max(y0 + 1, Math.ceil(Math.log10(Math.max(rep.bound.maxKl, ...pos, klFloor * 10))));
  const bs = rows.map((r) => r.bytesPerToken);
  const x0 = Math.log10(Math.min(...bs) / 1.3), x1 = Math.log10(Math.max(...bs) * 1.3);
  const X = (b: number) => ml + ((Math.log10(b) - x0) / (x1 - x0)) * pw;
  const Y = (k: number) => mt + ph - ((Math.log10(Math.max(k, klFloor)) - y0) / (y1 - y0)) * ph;
  const o: string[] = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(`<text x="${ml}" y="20" font-size="14" font-weight="bold">${esc(`KV bytes per token against KL vs f16 — ${rep.model.name || path.basename(rep.model.path)}, ${rep.ctx} tokens`)}</text>`);
  o.push(`<text x="${ml}" y="36" fill="#555">${esc(`frontier: solid line · recommended: ringed (${rep.recommended ?? 'none'}) · dashed: KL bound ${rep.bound.maxKl}`)}</text>`);
  for (let e = y0; e <= y1; e++) {
    const y = Y(10 ** e);
    o.push(`<line x1="${ml}" x2="${ml + pw}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#e6e6e6"/>`);
    o.push(`<text x="${ml - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end" fill="#444">1e${e}</text>`);
  }
  if (rows.some((r) => r.kl === 0)) {
    // exact rows (KL 0) have no place on a log scale: they sit on the floor, labelled 0
    o.push(`<text x="${ml + 4}" y="${(Y(klFloor) - 4).toFixed(1)}" fill="#888" font-size="10">KL 0</text>`);
  }
  for (let e = Math.floor(x0); e <= Math.ceil(x1); e++) {
    for (const m of [1, 2, 5]) {
      const b = m * 10 ** e;
      if (Math.log10(b) < x0 || Math.log10(b) > x1) continue;
      o.push(`<line x1="${X(b).toFixed(1)}" x2="${X(b).toFixed(1)}" y1="${mt}" y2="${mt + ph}" stroke="#eeeeee"/>`);
      o.push(`<text x="${X(b).toFixed(1)}" y="${mt + ph + 16}" text-anchor="middle" fill="#444">${b >= 1000 ? `${b / 1000}k` : b}</text>`);
    }
  }
  o.push(`<line x1="${ml}" x2="${ml + pw}" y1="${mt + ph}" y2="${mt + ph}" stroke="#888"/>`);
  o.push(`<line x1="${ml}" x2="${ml}" y1="${mt}" y2="${mt + ph}" stroke="#888"/>`);
  o.push(`<text x="${ml + pw / 2}" y="${H - 16}" text-anchor="middle">KV bytes per token (all layers, log scale)</text>`);
  o.push(`<text transform="translate(16 ${mt + ph / 2}) rotate(-90)" text-anchor="middle">mean KL(f16 ‖ setting), nats (log scale)</text>`);
  const by = Y(rep.bound.maxKl);
  o.push(`<line x1="${ml}" x2="${ml + pw}" y1="${by.toFixed(1)}" y2="${by.toFixed(1)}" stroke="#c33" stroke-dasharray="5 4"/>`);
  const front = rows.filter((r) => r.frontier).sort((a, b) => a.bytesPerToken - b.bytesPerToken);
  if (front.length > 1) {
    o.push(`<path d="${front.map((r, i) => `${i ? 'L' : 'M'}${X(r.bytesPerToken).toFixed(1)} ${Y(r.kl).toFixed(1)}`).join(' ')}" fill="none" stroke="#2a6fb0" stroke-width="2"/>`);
  }
  rows.forEach((r, i) => {
    const x = X(r.bytesPerToken), y = Y(r.kl);
    const col = r.ok ? (r.frontier ? '#2a6fb0' : '#7aa7d6') : '#d08030';
    o.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="4" fill="${col}"><title>${esc(`${r.name}: ${r.spec}`)}</title></circle>`);
    if (r.name === rep.recommended) o.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="9" fill="none" stroke="#1a9a3a" stroke-width="2"/>`);
    const dy = i % 2 === 0 ? -8 : 14;
    o.push(`<text x="${(x + 6).toFixed(1)}" y="${(y + dy).toFixed(1)}" fill="#222">${esc(r.name)}</text>`);
  });
  o.push(`<text x="${ml}" y="${H - 2}" font-size="10" fill="#777">${esc(`${rep.date.slice(0, 10)} · blue: within bound, orange: outside · KL over ${rep.decode} teacher-forced positions`)}</text>`);
  o.push('</svg>');
  return o.join('\n') + '\n';
}

export function writeTune(rep: TuneReport, dir: string): NonNullable<TuneReport['files']> {
  fs.mkdirSync(dir, { recursive: true });
  const files = { json: path.join(dir, 'tune.json'), svg: path.join(dir, 'tune.svg') };
  rep.files = files;
  fs.writeFileSync(files.svg, renderSvg(rep));
  fs.writeFileSync(files.json, JSON.stringify(rep, null, 1) + '\n');
  return files;
}

// ---- the command ---------------------------------------------------------------------------------

const USAGE = 'tune MODEL [--text FILE|DIR] [--ctx N] [--decode N] [--specs "a;b;c"] [--max-kl X] [--min-top1 Y] [--min-needle Z] ' +
  '[--needle] [--needles N] [--seed S] [--threads N] [--out DIR] [--json]';

function fraction(name: string, v: number): number {
  // 98 and 0.98 both mean 98%
  const f = v > 1 && v <= 100 ? v / 100 : v;
  if (!(f >= 0 && f <= 1)) throw new UsageError(`--${name} must be a share in [0, 1] (or a percentage), got ${v}`);
  return f;
}

export function parseTuneArgs(argv: string[]): TuneOptions & { json: boolean } {
  const a = parseArgs(argv, ['json', 'needle']);
  checkFlags(a, ['json', 'needle', 'text', 'ctx', 'decode', 'specs', 'max-kl', 'min-top1', 'min-needle', 'needles', 'seed', 'threads', 'out']);
  const model = a.positionals[0];
  if (!model) throw new UsageError('missing MODEL (path to a .gguf file)');
  if (a.positionals.length > 1) throw new UsageError(`unexpected argument "${a.positionals[1]}"`);
  if (!fs.existsSync(model)) throw new Error(`model file not found: ${model}`);
  const int = (name: string, dflt: number, lo: number) => {
    const v = flagNum(a, name, dflt)!;
    if (!Number.isInteger(v) || v < lo) throw new UsageError(`--${name} must be a whole number >= ${lo}, got ${v}`);
    return v;
  };
  const ctx = int('ctx', 4096, 64);
  const decode = int('decode', Math.min(64, Math.floor(ctx / 8)), 1);
  const specsArg = flagStr(a, 'specs');
  const specs = specsArg === undefined ? [...PRESETS, ...GRID] : specsArg.split(';').map((s) => s.trim()).filter((s) => s.length > 0);
  if (specs.length === 0) throw new UsageError('--specs: give one or more specs separated by ";"');
  const maxKl = flagNum(a, 'max-kl', 0.05)!;
  if (!(maxKl >= 0)) throw new UsageError(`--max-kl must be >= 0, got ${maxKl}`);
  const needles = int('needles', 16, 1);
  if (needles > NEEDLE_SHAPE.nKeys) throw new UsageError(`--needles must be at most ${NEEDLE_SHAPE.nKeys}`);
  return {
    model,
    text: flagStr(a, 'text'),
    ctx,
    decode,
    specs: [...new Set(specs)],
    maxKl,
    minTop1: fraction('min-top1', flagNum(a, 'min-top1', 0.98)!),
    minNeedle: fraction('min-needle', flagNum(a, 'min-needle', 0.99)!),
    needle: flagBool(a, 'needle') ? true : undefined,
    needles,
    seed: int('seed', 1, 0),
    threads: int('threads', 0, 0),
    out: flagStr(a, 'out', 'tune-results')!,
    json: flagBool(a, 'json'),
  };
}

registerCommand('tune', {
  usage: USAGE,
  async run(argv) {
    const o = parseTuneArgs(argv);
    const rep = await runTune(o, o.json ? () => {} : (s) => process.stderr.write(s + '\n'));
    const files = writeTune(rep, o.out);
    if (o.json) process.stdout.write(JSON.stringify(rep) + '\n');
    else process.stdout.write(renderTable(rep) + `\nwrote ${files.json}, ${files.svg}\n`);
    return 0;
  },
});
