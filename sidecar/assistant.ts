// assistant.ts — the sidecar's core, shared by the language server and the headless CLI: settings,
// the model, the warm workspace prefix, and answers. Everything that touches the engine runs
// through one queue, so there is never more than one prefill or generation on a session.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { fileURLToPath } from 'url';
import { CancelledError, Model, Session } from './engine';
import { unsupportedReason, inspectGguf } from './gguf-header';
import { prefillProgressText } from './format';
import { log } from './log';
import { DEMO_NOTICE, discoverModels, ensureDemoModel, pickModel } from './models';
import { CacheIdentity, modelIdentity, WorkspacePrefix } from './prefix-cache';
import {
  conversationTail,
  fileChunk,
  FILE_INTRO,
  layoutPrefix,
  fitHistory,
  PLAIN_INTRO,
  prefixOverhead,
  PROMPT_VERSION,
  standalonePrompt,
  WORKSPACE_INTRO,
} from './prompt';
import type {
  ChatMessage,
  ChatParams,
  ChatResult,
  DiscoveredModel,
  ExplainFileParams,
  KvStats,
  LeftOutFile,
  ModelSummary,
  SidecarSettings,
  StatusResult,
  WorkspaceState,
} from './protocol';
import { classifyContent, DEFAULT_MAX_FILE_BYTES, OpenDocument, rootLabels, selectWithinBudget, WorkspaceCollector, WorkspaceFile } from './workspace';

export const DEFAULT_SETTINGS: SidecarSettings = {
  modelPath: '',
  backend: 'auto',
  threads: 0,
  kvPreset: '',
  kvSpec: '',
  kvBudgetMB: 0,
  contextMaxTokens: 32768,
  include: [],
  exclude: [],
  filesExclude: [],
  persistCache: true,
  storageDir: '',
  autoIndex: true,
  maxFileBytes: DEFAULT_MAX_FILE_BYTES,
  maxAnswerTokens: 512,
};

/** Requests allowed to wait for the engine; more are refused with a clear error. */
export const MAX_WAITING = 16;

export function defaultStorageDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'llamakv');
}

/** A request the user should fix (bad params, unusable model); the server maps it to InvalidParams. */
export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

/** The engine is taken and too many requests are waiting. */
export class BusyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BusyError';
  }
}

export interface ProgressSink {
  begin(title: string, message?: string): void;
  report(percentage: number, message?: string): void;
  done(): void;
}

export interface AnswerHooks {
  signal?: AbortSignal;
  /** Each piece of answer text, in order. */
  onDelta?: (text: string) => void;
  /** Progress while (re)prefilling the workspace. */
  progress?: ProgressSink;
}

const emptyKv = (spec: string): KvStats => ({ tokens: 0, residentTokens: 0, bytes: 0, f16Bytes: 0, spec });

/** `file:` URI or path → absolute path. */
export function uriToPath(uri: string): string {
  if (/^file:/i.test(uri)) {
    try {
      return fileURLToPath(uri);
    } catch (e) {
      throw new UserError(`not a local file URI: ${uri} (${(e as Error).message})`);
    }
  }
  if (/^[a-z][a-z0-9+.-]+:/i.test(uri) && !/^[a-z]:[\\/]/i.test(uri)) throw new UserError(`only file: URIs are supported, got ${uri}`);
  return path.resolve(uri);
}

export class Assistant {
  settings: SidecarSettings;
  roots: string[];
  readonly openDocs = new Map<string, OpenDocument>();
  /** Called whenever status numbers move (the server sends llamakv/statsChanged). */
  onChange: (() => void) | null = null;
  /** Progress for indexing nobody asked for (startup, after edits): the server's own work-done token. */
  backgroundProgress: (() => ProgressSink | undefined) | null = null;

  private model: Model | null = null;
  private modelLoading: Promise<Model> | null = null;
  private summary: ModelSummary | null = null;
  private modelSource: DiscoveredModel['source'] | undefined;
  private modelState: StatusResult['modelState'] = 'none';
  private modelError: string | undefined;
  private prefix: WorkspacePrefix | null = null;
  private effectiveSpec = '';
  private lastKv: KvStats | null = null;
  private kvBytesRatio = 1; // bytes / f16Bytes observed for the spec in force
  private warnings = new Map<string, string>();
  private collector = new WorkspaceCollector();
  private chunkTokens = new Map<string, number[]>();
  private ws: WorkspaceState;
  private loadedFromDisk = false;
  private triedDisk = false;
  private tail: Promise<void> = Promise.resolve();
  private waiting = 0;
  private running: string | null = null;
  private refreshTimer: NodeJS.Timeout | null = null;
  private disposed = false;
  private shutdown = new AbortController();

  constructor(settings: Partial<SidecarSettings> = {}, roots: string[] = []) {
    this.settings = { ...DEFAULT_SETTINGS, ...stripUndefined(settings) };
    this.roots = roots.map((r) => path.resolve(r));
    this.ws = this.emptyWorkspace();
  }

  // ---- settings -----------------------------------------------------------------------------

  get storageDir(): string {
    return this.settings.storageDir || defaultStorageDir();
  }

  get requestedSpec(): string {
    return this.settings.kvSpec || this.settings.kvPreset || 'f16';
  }

  /** Applies new settings; what they invalidate is dropped (in the queue, never mid-answer). */
  updateSettings(next: Partial<SidecarSettings>): void {
    const before = this.settings;
    this.settings = { ...before, ...stripUndefined(next) };
    const changed = (k: keyof SidecarSettings) => JSON.stringify(before[k]) !== JSON.stringify(this.settings[k]);
    const modelChanged = changed('modelPath') || changed('threads') || changed('backend');
    const sessionChanged = changed('kvSpec') || changed('kvPreset') || changed('contextMaxTokens') || changed('kvBudgetMB');
    const filesChanged = changed('include') || changed('exclude') || changed('filesExclude') || changed('maxFileBytes');
    if (!modelChanged && !sessionChanged && !filesChanged) return;
    void this.exclusive('settings', async () => {
      if (modelChanged) this.unloadModel();
      else if (sessionChanged) this.dropPrefix();
    }, undefined, true).catch((e) => log.error(`settings: ${(e as Error).message}`));
    if (this.settings.autoIndex) this.scheduleRefresh(200);
    this.changed();
  }

  setRoots(roots: string[]): void {
    const next = roots.map((r) => path.resolve(r));
    if (JSON.stringify(next) === JSON.stringify(this.roots)) return;
    this.roots = next;
    void this.exclusive('roots', async () => this.dropPrefix(), undefined, true).catch(() => undefined);
    if (this.settings.autoIndex) this.scheduleRefresh(200);
  }

  // ---- the queue ----------------------------------------------------------------------------

  /**
   * Runs `fn` when the engine is free. Requests wait in order; a waiting request that is
   * cancelled leaves at once. More than MAX_WAITING waiting requests are refused, except the
   * sidecar's own jobs (`internal`: settings and folder changes), which must not be lost.
   */
  async exclusive<T>(label: string, fn: () => Promise<T>, signal?: AbortSignal, internal = false): Promise<T> {
    if (this.disposed) throw new Error('the sidecar is shutting down');
    if (!internal && this.waiting >= MAX_WAITING) {
      throw new BusyError(`llamakv is busy (${this.running ?? 'working'}, ${this.waiting} requests waiting); try again when the current answer finishes`);
    }
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    this.waiting++;
    this.changed();
    try {
      await new Promise<void>((resolve, reject) => {
        if (signal?.aborted) return reject(new CancelledError());
        const onAbort = () => reject(new CancelledError());
        signal?.addEventListener('abort', onAbort, { once: true });
        prev.then(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        });
      });
    } catch (e) {
      this.waiting--;
      void prev.then(release); // keep the chain's order; this slot is simply empty
      this.changed();
      throw e;
    }
    this.waiting--;
    this.running = label;
    this.changed();
    try {
      return await fn();
    } finally {
      this.running = null;
      release();
      this.changed();
    }
  }

  get busy(): boolean {
    return this.running !== null;
  }

  private changed(): void {
    try {
      this.onChange?.();
    } catch (e) {
      log.error(`statsChanged: ${(e as Error).message}`);
    }
  }

  // ---- the model ----------------------------------------------------------------------------

  listModels(): DiscoveredModel[] {
    return discoverModels({ setting: this.settings.modelPath || undefined });
  }

  /** Loads a model explicitly (llamakv/loadModel), replacing the current one. */
  async loadModel(file: string, signal?: AbortSignal): Promise<ModelSummary> {
    const abs = path.resolve(file.replace(/^~(?=$|[/\\])/, os.homedir()));
    if (!fs.existsSync(abs)) throw new UserError(`model file not found: ${abs}`);
    return this.exclusive(
      'loadModel',
      async () => {
        this.unloadModel();
        await this.loadFrom(abs, 'setting');
        return this.summary!;
      },
      signal,
    );
  }

  /** The loaded model, loading the configured / discovered / demo model on first use. */
  async ensureModel(): Promise<Model> {
    if (this.model) return this.model;
    if (this.modelLoading) return this.modelLoading;
    this.modelLoading = (async () => {
      try {
        const { file, source } = await this.chooseModel();
        return await this.loadFrom(file, source);
      } finally {
        this.modelLoading = null;
      }
    })();
    return this.modelLoading;
  }

  private async chooseModel(): Promise<{ file: string; source: DiscoveredModel['source'] }> {
    if (this.settings.modelPath) {
      const abs = path.resolve(this.settings.modelPath.replace(/^~(?=$|[/\\])/, os.homedir()));
      if (!fs.existsSync(abs)) throw this.failModel(new UserError(`llamakv.modelPath: ${abs} does not exist`));
      return { file: abs, source: 'setting' };
    }
    const found = pickModel(this.listModels());
    if (found) return { file: found.path, source: found.source };
    this.modelState = 'loading';
    this.changed();
    try {
      const demo = await ensureDemoModel(this.storageDir);
      return { file: demo.path, source: 'demo' };
    } catch (e) {
      throw this.failModel(new UserError(`no model found, and the demo model could not be made in ${this.storageDir}: ${(e as Error).message}`));
    }
  }

  private failModel(e: Error): Error {
    this.modelState = 'error';
    this.modelError = e.message;
    this.changed();
    return e;
  }

  private async loadFrom(file: string, source: DiscoveredModel['source']): Promise<Model> {
    let header;
    try {
      header = inspectGguf(file);
    } catch (e) {
      throw this.failModel(new UserError((e as Error).message));
    }
    const why = unsupportedReason(header);
    if (why) throw this.failModel(new UserError(`${file}: ${why}`));
    this.modelState = 'loading';
    this.modelError = undefined;
    this.changed();
    log.info(`model: loading ${file} (${source}, ${header.architecture}, ${header.weightType}, ${(header.fileBytes / 1048576).toFixed(1)} MiB)`);
    let model: Model;
    try {
      model = await Model.load(file, {
        threads: this.settings.threads > 0 ? this.settings.threads : undefined,
        backend: this.settings.backend,
      });
    } catch (e) {
      throw this.failModel(e as Error);
    }
    const i = model.info;
    this.model = model;
    this.modelSource = source;
    this.summary = {
      path: file,
      name: source === 'demo' ? 'llamakv demo (random weights)' : i.name || path.basename(file),
      architecture: i.architecture,
      nLayer: i.nLayer,
      nEmbd: i.nEmbd,
      nHead: i.nHead,
      nHeadKv: i.nHeadKv,
      headDim: i.headDim,
      nVocab: i.nVocab,
      contextLength: i.contextLength,
      fileBytes: i.fileBytes,
      weightType: i.weightType,
      backend: i.backend,
      backendNote: i.backendNote,
      demo: source === 'demo',
    };
    this.modelState = 'ready';
    log.info(`model: ready: ${this.summary.name} (${i.nLayer} layers, ${i.nEmbd} embd, ctx ${i.contextLength}, ${i.backend}${source === 'demo' ? ', DEMO' : ''})`);
    this.changed();
    return model;
  }

  private unloadModel(): void {
    this.dropPrefix();
    this.model?.dispose();
    this.model = null;
    this.summary = null;
    this.modelSource = undefined;
    this.modelState = 'none';
    this.modelError = undefined;
  }

  // ---- the workspace prefix -----------------------------------------------------------------

  /** Context size of the workspace session. */
  nCtx(model: Model): number {
    const fromModel = model.info.contextLength > 0 ? model.info.contextLength : 8192;
    return Math.max(256, Math.min(fromModel, this.settings.contextMaxTokens > 0 ? this.settings.contextMaxTokens : 32768));
  }

  /** Room kept free for the question and the answer. */
  reserve(nCtx: number): number {
    return Math.min(4096, Math.max(256, Math.floor(nCtx / 4)));
  }

  /** Workspace token budget: context minus the reserve, and within the KV memory budget. */
  workspaceBudget(model: Model, nCtx: number): number {
    let budget = nCtx - this.reserve(nCtx);
    if (this.settings.kvBudgetMB > 0) {
      const i = model.info;
      const f16PerToken = 2 * i.nLayer * i.nHeadKv * i.headDim * 2;
      const perToken = Math.max(1, f16PerToken * this.kvBytesRatio);
      budget = Math.min(budget, Math.floor((this.settings.kvBudgetMB * 1048576) / perToken));
    }
    return Math.max(0, budget);
  }

  private dropPrefix(): void {
    this.prefix?.session.dispose();
    this.prefix = null;
    this.triedDisk = false;
    this.loadedFromDisk = false;
    this.ws = this.emptyWorkspace();
  }

  /**
   * A session with the requested KV spec, or f16 when the engine rejects that spec. Only the
   * workspace session (`workspace`) decides the spec in force and the warnings: a question's own
   * session (file or no context) failing must not relabel the workspace cache.
   */
  private createSession(model: Model, nCtx: number, workspace: boolean): Session {
    const spec = this.requestedSpec;
    try {
      const s = model.createSession({ nCtx, kv: spec });
      if (workspace) {
        this.warnings.delete('kv');
        // the weights are on the GPU but the device cannot hold this KV spec as it is: the session
        // runs on the CPU, or on the GPU with every token kept (the note says which)
        if (model.info.backend === 'cuda' && s.backendNote) this.warnings.set('backend', s.backendNote);
        else this.warnings.delete('backend');
        this.effectiveSpec = spec;
      }
      return s;
    } catch (e) {
      if (spec === 'f16') throw e;
      const msg = `KV spec "${spec}" was rejected by the engine (${(e as Error).message}); using "f16" (no compression)`;
      const s = model.createSession({ nCtx, kv: 'f16' });
      if (workspace) {
        if (!this.warnings.has('kv')) log.warn(msg);
        this.warnings.set('kv', msg);
        this.effectiveSpec = 'f16';
      } else {
        log.warn(msg);
      }
      return s;
    }
  }

  private sweptCheckpoints = false;

  private cacheDir(): string {
    return path.join(this.storageDir, 'prefix-cache');
  }

  /** Where the checkpoint goes when the cache is not persisted (removed at shutdown). */
  private checkpointFile(): string {
    return path.join(this.cacheDir(), `checkpoint-${process.pid}.kvstate`);
  }

  private identity(model: Model, nCtx: number): CacheIdentity {
    return {
      model: modelIdentity(model.info.path || this.summary!.path),
      kvSpec: this.effectiveSpec,
      nCtx,
      promptVersion: PROMPT_VERSION,
      roots: this.roots,
    };
  }

  private async ensurePrefix(model: Model): Promise<WorkspacePrefix> {
    if (!this.prefix) {
      const nCtx = this.nCtx(model);
      this.prefix = new WorkspacePrefix(this.createSession(model, nCtx, true));
      this.triedDisk = false;
      this.loadedFromDisk = false;
    }
    if (!this.triedDisk && this.settings.persistCache && this.roots.length > 0) {
      this.triedDisk = true;
      try {
        const meta = await this.prefix.load(this.cacheDir(), this.identity(model, this.prefix.session.nCtx));
        this.loadedFromDisk = meta !== null;
        if (meta) this.ws.persisted = { file: WorkspacePrefix.files(this.cacheDir(), this.roots).state, savedAt: meta.savedAt, bytes: meta.stateBytes };
      } catch (e) {
        log.warn(`prefix cache: could not load: ${(e as Error).message}`);
      }
    }
    return this.prefix;
  }

  private emptyWorkspace(): WorkspaceState {
    return {
      root: this.roots?.[0] ?? null,
      state: 'none',
      files: 0,
      tokens: 0,
      leftOut: [],
      budgetTokens: 0,
      lastPrefilledTokens: 0,
      fromDisk: false,
      included: [],
      reusedTokens: 0,
      firstChanged: null,
      persisted: null,
    };
  }

  private tokensOfChunk(model: Model, f: WorkspaceFile): number[] {
    const key = `${f.rel}\0${f.hash}`;
    let t = this.chunkTokens.get(key);
    if (!t) {
      t = model.tokenize(fileChunk(f.rel, f.text), { addBos: false, special: false });
      this.chunkTokens.set(key, t);
    }
    return t;
  }

  /** Indexes the workspace (llamakv/indexWorkspace): runs in the queue. */
  indexWorkspace(hooks: AnswerHooks = {}): Promise<WorkspaceState> {
    return this.exclusive('indexWorkspace', () => this.refresh(hooks), hooks.signal);
  }

  /** Collects, lays out and syncs the workspace prefix; the caller holds the queue. */
  private async refresh(hooks: AnswerHooks): Promise<WorkspaceState> {
    if (this.roots.length === 0) throw new UserError('no workspace folder is open');
    const model = await this.ensureModel();
    const prefix = await this.ensurePrefix(model);
    const nCtx = prefix.session.nCtx;
    this.ws.root = this.roots[0];
    this.ws.state = 'collecting';
    this.changed();
    let col;
    try {
      col = this.collector.collect({
        roots: this.roots,
        include: this.settings.include,
        exclude: this.settings.exclude,
        filesExclude: this.settings.filesExclude,
        maxFileBytes: this.settings.maxFileBytes,
        openDocuments: this.openDocs,
      });
    } catch (e) {
      this.ws.state = 'error';
      this.ws.error = (e as Error).message;
      throw e;
    }
    const budget = this.workspaceBudget(model, nCtx);
    const overhead = prefixOverhead(model, WORKSPACE_INTRO);
    // Files are tokenized as the budget considers them, and only those that might still fit: in a
    // large repository most never are (tokenizing every file blocked the sidecar for seconds and
    // cached millions of tokens nobody would read).
    const tokens = new Map<WorkspaceFile, number[]>();
    const tokensOf = (f: WorkspaceFile) => {
      let t = tokens.get(f);
      if (!t) tokens.set(f, (t = this.tokensOfChunk(model, f)));
      return t.length;
    };
    const live = new Set(col.files.map((f) => `${f.rel}\0${f.hash}`));
    for (const k of [...this.chunkTokens.keys()]) if (!live.has(k)) this.chunkTokens.delete(k);
    // a lower bound: no token is longer than the vocabulary's longest (a BOM may have been dropped)
    const maxBytes = model.maxTokenBytes;
    const sel = selectWithinBudget(col.files, tokensOf, Math.max(0, budget - overhead), (f) => Math.floor(Math.max(0, f.bytes - 3) / maxBytes));
    const layout = layoutPrefix(
      model,
      WORKSPACE_INTRO,
      sel.kept.map((f) => ({ rel: f.rel, hash: f.hash, tokens: tokens.get(f)! })),
    );
    const leftOut: LeftOutFile[] = [...col.leftOut, ...sel.leftOut];
    const toPrefill = layout.tokens.length - commonLen(prefix.layout.tokens, layout.tokens);
    Object.assign(this.ws, {
      files: sel.kept.length,
      leftOut,
      budgetTokens: budget,
      included: sel.kept.map((f) => ({ path: f.rel, tokens: tokens.get(f)!.length })),
      error: undefined,
    });
    if (toPrefill > 0) {
      this.ws.state = 'prefilling';
      this.changed();
      hooks.progress?.begin('llamakv: indexing workspace', `${toPrefill.toLocaleString('en-US')} tokens to prefill`);
    }
    let lastPct = -1;
    const heldBefore = prefix.nTokens;
    const started = Date.now();
    try {
      const r = await prefix.sync(layout, {
        signal: combine(hooks.signal, this.shutdown.signal),
        onProgress: (done, total) => {
          const pct = Math.floor((100 * done) / Math.max(1, total));
          if (pct !== lastPct) {
            lastPct = pct;
            hooks.progress?.report(pct, prefillProgressText(done, total, Date.now() - started));
          }
        },
      });
      if (r.prefilled > 0) {
        log.info(
          `workspace: prefilled ${r.prefilled} tokens (kept ${r.reused}, first changed: ${r.firstChanged ?? '-'}) in ${r.prefillMs} ms; ` +
            `${sel.kept.length} files, ${layout.tokens.length} tokens, ${leftOut.filter((l) => l.reason !== 'ignored').length} left out`,
        );
      }
      Object.assign(this.ws, {
        state: 'ready',
        tokens: prefix.nTokens,
        lastPrefilledTokens: r.prefilled,
        reusedTokens: r.reused,
        firstChanged: r.firstChanged,
        fromDisk: this.loadedFromDisk,
      });
      this.observeKv(prefix.session);
      const layoutChanged = r.prefilled > 0 || r.reused < heldBefore;
      if (layoutChanged || !prefix.checkpoint) await this.persist(model, prefix);
      return { ...this.ws };
    } catch (e) {
      this.ws.tokens = prefix.nTokens;
      if (e instanceof CancelledError) {
        this.ws.state = prefix.nTokens > 0 ? 'ready' : 'none';
      } else {
        this.ws.state = 'error';
        this.ws.error = (e as Error).message;
      }
      throw e;
    } finally {
      if (toPrefill > 0) hooks.progress?.done();
      this.changed();
    }
  }

  private observeKv(session: Session): void {
    const kv = this.kvOf(session);
    this.lastKv = kv;
    if (kv.f16Bytes > 0 && kv.tokens > 0) this.kvBytesRatio = Math.max(0.01, kv.bytes / kv.f16Bytes);
    const budget = this.settings.kvBudgetMB * 1048576;
    if (budget > 0 && kv.bytes > budget) {
      const msg = `KV cache holds ${(kv.bytes / 1048576).toFixed(1)} MiB, over the ${this.settings.kvBudgetMB} MiB budget; the next indexing admits fewer files`;
      log.warn(msg);
      this.warnings.set('budget', msg);
    } else {
      this.warnings.delete('budget');
    }
  }

  /** Saves the prefix: for reuse across restarts (persistCache), else as this process's checkpoint only. */
  private async persist(model: Model, prefix: WorkspacePrefix): Promise<void> {
    if (prefix.nTokens === 0) return;
    if (!this.settings.persistCache) {
      if (!this.sweptCheckpoints) {
        this.sweptCheckpoints = true;
        const gone = removeStaleCheckpoints(this.cacheDir());
        if (gone.length) log.info(`prefix cache: removed ${gone.length} checkpoint(s) of sidecars that are gone: ${gone.join(', ')}`);
      }
      try {
        await prefix.saveCheckpoint(this.checkpointFile());
      } catch (e) {
        log.warn(`prefix cache: could not write the checkpoint: ${(e as Error).message}`);
      }
      return;
    }
    try {
      const t0 = Date.now();
      const saved = await prefix.save(this.cacheDir(), this.identity(model, prefix.session.nCtx));
      this.ws.persisted = { file: saved.file, savedAt: new Date().toISOString(), bytes: saved.bytes };
      log.info(`prefix cache: saved ${prefix.nTokens} tokens (${(saved.bytes / 1048576).toFixed(1)} MiB) to ${saved.file} in ${Date.now() - t0} ms`);
    } catch (e) {
      log.warn(`prefix cache: could not save: ${(e as Error).message}`);
    }
  }

  /** Re-indexes in the background a little after the last edit (only once a prefix exists or autoIndex is on). */
  scheduleRefresh(delayMs = 1500): void {
    if (this.disposed || this.roots.length === 0) return;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (this.waiting > 0) return; // a queued request refreshes anyway
      const work = () => this.refresh({ signal: this.shutdown.signal, progress: this.backgroundProgress?.() });
      this.exclusive('indexWorkspace', work, this.shutdown.signal).catch((e) => {
        if (!(e instanceof CancelledError)) log.warn(`workspace: background indexing failed: ${(e as Error).message}`);
      });
    }, delayMs);
    this.refreshTimer.unref?.();
  }

  // ---- answers ------------------------------------------------------------------------------

  chat(params: ChatParams, hooks: AnswerHooks = {}): Promise<ChatResult> {
    validateChat(params);
    return this.exclusive('chat', () => this.answer(params.messages, params.context, params, hooks), hooks.signal);
  }

  explainFile(params: ExplainFileParams, hooks: AnswerHooks = {}): Promise<ChatResult> {
    validateExplain(params);
    const file = uriToPath(params.uri);
    if (!this.openDocs.has(file) && !fs.existsSync(file)) throw new UserError(`llamakv/explainFile: file not found: ${file}`);
    return this.exclusive(
      'explainFile',
      async () => {
        const rel = this.relPath(file);
        const inPrefix = this.roots.length > 0;
        const question = `Explain the file \`${rel}\`: what it is for, how it works, and how it fits into the rest of the workspace.`;
        if (!inPrefix) return this.answer([{ role: 'user', content: question }], 'file', { uri: file, maxTokens: params.maxTokens }, hooks);
        return this.answer([{ role: 'user', content: question }], 'workspace', { maxTokens: params.maxTokens, explain: file }, hooks);
      },
      hooks.signal,
    );
  }

  /** Path as shown in the prompt (relative to its workspace folder, folder-prefixed when multi-root). */
  relPath(abs: string): string {
    const labels = rootLabels(this.roots);
    for (const [i, r] of this.roots.entries()) {
      const rel = path.relative(r, abs);
      if (!rel.startsWith('..') && !path.isAbsolute(rel)) {
        const p = rel.split(path.sep).join('/');
        return labels[i] ? `${labels[i]}/${p}` : p;
      }
    }
    return abs;
  }

  /**
   * A file's text for a question about it (Explain File, file context): the editor's text if open,
   * else at most `maxBytes` from disk (cut at a line end), so a huge log or dump costs a bounded
   * read and tokenization before clipToTokens trims it to the room left.
   */
  private readForPrompt(file: string, maxBytes: number): string {
    const doc = this.openDocs.get(file);
    if (doc) return doc.text.length > maxBytes ? doc.text.slice(0, maxBytes) : doc.text;
    let data: Buffer;
    try {
      const fd = fs.openSync(file, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        const buf = Buffer.alloc(Math.min(size, maxBytes));
        let got = 0;
        for (let n = 1; got < buf.length && n > 0; got += n) n = fs.readSync(fd, buf, got, buf.length - got, got);
        data = buf.subarray(0, got);
        if (size > got) {
          const nl = data.lastIndexOf(10);
          if (nl > 0) data = data.subarray(0, nl + 1);
        }
      } finally {
        fs.closeSync(fd);
      }
    } catch (e) {
      throw new UserError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const v = classifyContent(path.basename(file), data);
    if (!v.ok && v.reason === 'binary') throw new UserError(`${file} is a binary file`);
    return data.toString('utf8');
  }

  /** One answer; the caller holds the queue. */
  private async answer(
    conversation: ChatMessage[],
    mode: ChatParams['context'],
    opts: { uri?: string; maxTokens?: number; temperature?: number; explain?: string },
    hooks: AnswerHooks,
  ): Promise<ChatResult> {
    const model = await this.ensureModel();
    const signal = combine(hooks.signal, this.shutdown.signal);
    const t0 = Date.now();
    let prefilledNow = 0;
    let cached = 0;
    let ctxInfo: ChatResult['context'] = { mode, files: 0, tokens: 0, leftOut: 0 };
    let session: Session;
    let rewindTo: number | null = null;
    let scratch: Session | null = null;
    let prompt: number[];

    // what the answer may use; earlier turns of a long chat give way to it (fitHistory)
    const answerRoom = Math.max(1, opts.maxTokens ?? this.settings.maxAnswerTokens ?? 512);
    const cancelledResult = (): ChatResult => this.result(model, '', prefilledNow + cached, cached, 0, session ?? null, ctxInfo, 'cancelled', t0, 0, 0);

    if (mode === 'workspace') {
      try {
        await this.refresh({ ...hooks, signal });
      } catch (e) {
        if (e instanceof CancelledError) return cancelledResult();
        throw e;
      }
      const prefix = this.prefix!;
      session = prefix.session;
      rewindTo = prefix.nTokens;
      cached = prefix.nTokens - this.ws.lastPrefilledTokens;
      prefilledNow = this.ws.lastPrefilledTokens;
      ctxInfo = { mode, files: this.ws.files, tokens: prefix.nTokens, leftOut: this.ws.leftOut.filter((l) => l.reason !== 'ignored').length };
      let convo = conversation;
      if (opts.explain) {
        const rel = this.relPath(opts.explain);
        const inPrefix = prefix.layout.spans.some((s) => s.rel === rel && !s.hash.startsWith('partial:'));
        if (!inPrefix) {
          // Not in the workspace prefix (left out, or outside the folders): the file goes with the question.
          const room = session.nCtx - prefix.nTokens - 512;
          const text = this.readForPrompt(opts.explain, promptBytesFor(room));
          const clipped = clipToTokens(model, text, Math.max(0, room));
          convo = [{ role: 'user', content: `${fileChunk(rel, clipped)}${conversation[0].content}` }];
        }
      }
      const fit = fitHistory(convo, (c) => conversationTail(model, c), session.nCtx - prefix.nTokens - answerRoom);
      prompt = fit.tokens;
      if (fit.dropped) log.info(`chat: the ${fit.dropped} oldest messages left out so the answer has room`);
    } else {
      let system = PLAIN_INTRO;
      if (mode === 'file') {
        const file = uriToPath(opts.uri!);
        const rel = this.relPath(file);
        const room = Math.max(0, this.nCtx(model) - 1024);
        const text = this.readForPrompt(file, promptBytesFor(room));
        system = FILE_INTRO + fileChunk(rel, clipToTokens(model, text, room));
        ctxInfo = { mode, files: 1, tokens: 0, leftOut: 0 };
      }
      const fit = fitHistory(conversation, (c) => standalonePrompt(model, system, c), this.nCtx(model) - answerRoom);
      prompt = fit.tokens;
      if (fit.dropped) log.info(`chat: the ${fit.dropped} oldest messages left out so the answer has room`);
      scratch = this.createSession(model, this.nCtx(model), false);
      session = scratch;
      ctxInfo.tokens = prompt.length;
    }

    try {
      const promptTokens = session.nTokens + prompt.length;
      const room = session.nCtx - promptTokens;
      if (room < 1) {
        throw new UserError(`the prompt (${promptTokens} tokens) does not fit the ${session.nCtx}-token context; shorten the question or lower the workspace budget`);
      }
      const tp = Date.now();
      try {
        await session.prefill(prompt, { signal, logits: true });
      } catch (e) {
        if (e instanceof CancelledError) return cancelledResult();
        throw e;
      }
      prefilledNow += prompt.length;
      const prefillMs = Date.now() - tp;
      const maxTokens = Math.min(answerRoom, room);
      const gen = session.generate({ maxTokens, temperature: opts.temperature ?? 0, repeatPenalty: 1.1, signal });
      let text = '';
      let summary;
      for (;;) {
        const r = await gen.next();
        if (r.done) {
          summary = r.value;
          break;
        }
        if (r.value.text) {
          text += r.value.text;
          hooks.onDelta?.(r.value.text);
        }
      }
      const stop = signal?.aborted ? 'cancelled' : summary.stopReason;
      return this.result(model, summary.text || text, promptTokens, cached, summary.tokens.length, session, ctxInfo, stop, t0, prefillMs, summary.decodeMs, prefilledNow);
    } finally {
      if (scratch) scratch.dispose();
      else if (rewindTo !== null) {
        try {
          if (this.prefix) {
            const t = Date.now();
            const how = await this.prefix.restore();
            if (how === 'reloaded') log.debug(`workspace: restored the compressed prefix from its checkpoint in ${Date.now() - t} ms`);
            this.lastKv = this.kvOf(this.prefix.session);
          }
        } catch (e) {
          log.error(`workspace: rewind failed (${(e as Error).message}); the prefix will be rebuilt`);
          this.dropPrefix();
        }
      }
      this.changed();
    }
  }

  private result(
    model: Model,
    text: string,
    promptTokens: number,
    cachedTokens: number,
    completionTokens: number,
    session: Session | null,
    context: ChatResult['context'],
    stopReason: ChatResult['stopReason'],
    t0: number,
    prefillMs: number,
    decodeMs: number,
    prefilled = 0,
  ): ChatResult {
    const kv = session ? this.kvOf(session) : emptyKv(this.effectiveSpec || this.requestedSpec);
    const demo = this.modelSource === 'demo';
    const r: ChatResult = {
      text,
      usage: { promptTokens, cachedTokens, completionTokens },
      kv,
      context,
      model: this.summary?.name ?? path.basename(model.info.path),
      demo,
      stopReason,
      timings: {
        prefillTokensPerSecond: prefillMs > 0 ? Math.round((prefilled * 1000) / Math.max(prefillMs, 1)) : 0,
        decodeTokensPerSecond: decodeMs > 0 ? Math.round((completionTokens * 1000) / decodeMs) : 0,
      },
    };
    if (demo) r.notice = DEMO_NOTICE;
    log.debug(`answer: ${stopReason}, ${completionTokens} tokens in ${Date.now() - t0} ms`);
    return r;
  }

  private kvOf(session: Session): KvStats {
    const k = session.kvStats();
    return { ...k, spec: k.spec ?? this.effectiveSpec };
  }

  // ---- status -------------------------------------------------------------------------------

  /**
   * The workspace cache's numbers. Read from the engine only while it is idle (the numbers do not
   * move mid-answer in a way the status bar cares about); otherwise the last reading.
   */
  cacheStats(): KvStats {
    if (this.prefix && !this.prefix.session.isBusy && this.running === null) {
      try {
        this.lastKv = this.kvOf(this.prefix.session);
      } catch {
        /* session gone */
      }
    } else if (!this.prefix) {
      this.lastKv = null;
    }
    return this.lastKv ?? emptyKv(this.effectiveSpec || this.requestedSpec);
  }

  status(version: string): StatusResult {
    const s: StatusResult = {
      version,
      model: this.summary,
      modelState: this.modelState,
      kvSpec: this.effectiveSpec || this.requestedSpec,
      workspace: { ...this.ws, root: this.roots[0] ?? null },
      kv: this.cacheStats(),
      busy: this.busy,
      queue: { running: this.running, waiting: this.waiting },
    };
    if (this.modelError) s.modelError = this.modelError;
    if (this.modelSource) s.modelSource = this.modelSource;
    if (this.modelSource === 'demo') s.notice = DEMO_NOTICE;
    if (this.warnings.size > 0) s.warnings = [...this.warnings.values()];
    return s;
  }

  /** Drops the warm prefix and its file on disk (llamakv/clearCache). */
  clearCache(): Promise<KvStats> {
    return this.exclusive('clearCache', async () => {
      if (this.prefix) this.prefix.clear();
      this.chunkTokens.clear();
      if (this.roots.length > 0) WorkspacePrefix.remove(this.cacheDir(), this.roots);
      this.ws = this.emptyWorkspace();
      this.triedDisk = true; // nothing left to load
      this.loadedFromDisk = false;
      log.info('prefix cache: cleared');
      this.lastKv = this.prefix ? this.kvOf(this.prefix.session) : null;
      return this.lastKv ?? emptyKv(this.effectiveSpec || this.requestedSpec);
    });
  }

  // ---- documents (LSP sync) -----------------------------------------------------------------

  openDocument(file: string, text: string): void {
    let disk: string | null = null;
    try {
      disk = fs.readFileSync(file, 'utf8');
    } catch {
      /* not on disk */
    }
    const dirty = disk !== null && disk !== text;
    this.openDocs.set(file, { text, dirty, dirtySince: dirty ? Date.now() : 0 });
    if (this.settings.autoIndex && this.ws.state !== 'none') this.scheduleRefresh();
  }

  changeDocument(file: string, text: string): void {
    const prev = this.openDocs.get(file);
    this.openDocs.set(file, { text, dirty: true, dirtySince: prev?.dirty ? prev.dirtySince : Date.now() });
    if (this.settings.autoIndex && this.ws.state !== 'none') this.scheduleRefresh();
  }

  saveDocument(file: string): void {
    const prev = this.openDocs.get(file);
    if (prev) this.openDocs.set(file, { ...prev, dirty: false, dirtySince: 0 });
    if (this.settings.autoIndex && this.ws.state !== 'none') this.scheduleRefresh();
  }

  closeDocument(file: string): void {
    this.openDocs.delete(file);
    if (this.settings.autoIndex && this.ws.state !== 'none') this.scheduleRefresh();
  }

  /** Files changed on disk (watcher events). */
  filesChanged(): void {
    if (this.settings.autoIndex && this.ws.state !== 'none') this.scheduleRefresh();
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.shutdown.abort();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    await this.tail.catch(() => undefined);
    this.disposed = true;
    if (!this.settings.persistCache) fs.rmSync(this.checkpointFile(), { force: true });
    this.prefix?.session.dispose();
    this.prefix = null;
    this.model?.dispose();
    this.model = null;
  }
}

// ---- helpers ------------------------------------------------------------------------------------

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== null)) as Partial<T>;
}

function commonLen(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * Deletes the checkpoint files (checkpoint-PID.kvstate, a whole KV state each) of sidecars that
 * are gone: one killed, or one whose editor crashed, never reached the shutdown that removes its
 * own. Returns the names removed. A process that still runs keeps its file.
 */
export function removeStaleCheckpoints(dir: string, alive: (pid: number) => boolean = pidAlive): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = /^checkpoint-(\d+)\.kvstate$/.exec(name);
    if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    try {
      fs.rmSync(path.join(dir, name), { force: true });
      removed.push(name);
    } catch {
      // another sidecar removed it first, or it cannot be removed: leave it
    }
  }
  return removed;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/** A signal that aborts when any of the given ones does (AbortSignal.any holds its sources weakly). */
function combine(...signals: Array<AbortSignal | undefined>): AbortSignal {
  const live = signals.filter((s): s is AbortSignal => !!s);
  return live.length === 1 ? live[0] : AbortSignal.any(live);
}

/** The text cut to about `maxTokens` tokens (with a note), or as is when it fits. */
function clipToTokens(model: Model, text: string, maxTokens: number): string {
  const toks = model.tokenize(text, { addBos: false, special: false });
  if (toks.length <= maxTokens) return text;
  const kept = model.detokenize(toks.slice(0, maxTokens), false);
  return `${kept}\n… [cut: only the first ${maxTokens} tokens of the file fit]\n`;
}

/** Bytes worth reading for `tokens` tokens of text: generous (tokens average 3-4 bytes of code), so clipToTokens decides. */
function promptBytesFor(tokens: number): number {
  return 16 * Math.max(0, tokens) + 4096;
}

// ---- parameter validation ------------------------------------------------------------------------

const ROLES = new Set(['system', 'user', 'assistant']);
const CONTEXTS = new Set(['workspace', 'file', 'none']);

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkTokens(method: string, p: Record<string, unknown>): void {
  if (p.maxTokens !== undefined && !(Number.isInteger(p.maxTokens) && (p.maxTokens as number) > 0 && (p.maxTokens as number) <= 1 << 20)) {
    throw new UserError(`${method}: maxTokens must be a positive integer`);
  }
}

/** Throws a UserError naming the first problem with llamakv/chat params. */
export function validateChat(p: unknown): asserts p is ChatParams {
  const m = 'llamakv/chat';
  if (!isObj(p)) throw new UserError(`${m}: params must be an object { messages, context, uri? }`);
  if (!Array.isArray(p.messages) || p.messages.length === 0) throw new UserError(`${m}: messages must be a non-empty array of { role, content }`);
  p.messages.forEach((msg, i) => {
    if (!isObj(msg) || !ROLES.has(msg.role as string) || typeof msg.content !== 'string') {
      throw new UserError(`${m}: messages[${i}] must be { role: "system" | "user" | "assistant", content: string }`);
    }
  });
  if ((p.messages[p.messages.length - 1] as ChatMessage).role !== 'user') throw new UserError(`${m}: the last message must be the user's`);
  if (!CONTEXTS.has(p.context as string)) throw new UserError(`${m}: context must be "workspace", "file" or "none"`);
  if (p.context === 'file' && (typeof p.uri !== 'string' || p.uri.length === 0)) throw new UserError(`${m}: context "file" needs uri`);
  if (p.uri !== undefined && typeof p.uri !== 'string') throw new UserError(`${m}: uri must be a string`);
  if (p.temperature !== undefined && !(typeof p.temperature === 'number' && p.temperature >= 0 && p.temperature <= 5)) {
    throw new UserError(`${m}: temperature must be a number between 0 and 5`);
  }
  checkTokens(m, p);
}

export function validateExplain(p: unknown): asserts p is ExplainFileParams {
  const m = 'llamakv/explainFile';
  if (!isObj(p) || typeof p.uri !== 'string' || p.uri.length === 0) throw new UserError(`${m}: params must be { uri: string }`);
  checkTokens(m, p);
}
