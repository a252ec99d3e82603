// protocol.ts — every custom method between the extension and the sidecar, declared once as a
// typed JSON-RPC constant (namespace `llamakv/`). Imported by both sides; change it here only.
import { NotificationType, ProgressType, RequestType, RequestType0 } from 'vscode-jsonrpc';

/** KV-cache accounting; the same names appear in every `--json` output. */
export interface KvStats {
  /** Logical tokens in the cache (positions seen). */
  tokens: number;
  /** Tokens still held (not evicted), summed over layers and heads / (layers * kv heads). */
  residentTokens: number;
  /** Bytes actually held: codes, scales, zero points, indices, residual window. */
  bytes: number;
  /** What an f16 cache of the same logical length would hold. */
  f16Bytes: number;
  /** The compression spec in force (canonical string), e.g. "off" or "k4v2g32r128". */
  spec?: string;
  /** Bytes per layer, when known. */
  perLayer?: number[];
  /** Tokens per precision tier, when the spec has tiers, e.g. { f16: 128, q8: 900, q4: 3000, evicted: 500 }. */
  tiers?: Record<string, number>;
  /** Where the bytes go (compressed caches): codes, scales/zero points, exact outliers, f16 residual, bookkeeping, rewind journal. */
  breakdown?: { codes: number; scales: number; outliers: number; residual: number; index: number; journal: number };
  /** With head budgets (hl): how many (layer, KV head) pairs keep only the sinks and recent window. */
  streamingHeads?: number;
}

/** A model's name and dimensions, as its GGUF header declares them. */
export interface ModelShape {
  name: string;
  architecture: string;
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nVocab: number;
  contextLength: number;
  fileBytes: number;
}

export interface ModelSummary extends ModelShape {
  path: string;
  /** Predominant weight type, e.g. "q8_0". */
  weightType: string;
  /** Where the model actually runs: "cpu" or "cuda" (the llamakv.backend setting is the request). */
  backend: string;
  /** Why backend "auto" runs on the CPU (built without CUDA, no CUDA device, ...); absent otherwise. */
  backendNote?: string;
  /** True for the generated demo model: its answers are meaningless. */
  demo: boolean;
}

export interface LeftOutFile {
  path: string;
  reason: 'binary' | 'too-large' | 'generated' | 'ignored' | 'budget' | 'unreadable';
  bytes?: number;
  tokens?: number;
}

export interface WorkspaceState {
  root: string | null;
  state: 'none' | 'collecting' | 'prefilling' | 'ready' | 'error';
  files: number;
  tokens: number;
  leftOut: LeftOutFile[];
  budgetTokens: number;
  /** Tokens prefilled by the last indexing (0 when reloaded from disk). */
  lastPrefilledTokens: number;
  /** Whether the state was loaded from the on-disk cache. */
  fromDisk: boolean;
  error?: string;
  /** Files in the prefix, stable-first order, with their token counts. */
  included?: Array<{ path: string; tokens: number }>;
  /** Tokens kept from before by the last indexing (the unchanged prefix). */
  reusedTokens?: number;
  /** First file whose tokens changed in the last indexing (null when nothing changed). */
  firstChanged?: string | null;
  /** The on-disk cache: where, when written, how big (null when not persisted). */
  persisted?: { file: string; savedAt: string; bytes: number } | null;
}

export interface StatusResult {
  version: string;
  model: ModelSummary | null;
  modelState: 'none' | 'loading' | 'ready' | 'error';
  modelError?: string;
  kvSpec: string;
  workspace: WorkspaceState;
  kv: KvStats;
  busy: boolean;
  /** Where the model came from (setting, ollama, ..., demo). */
  modelSource?: DiscoveredModel['source'];
  /** Shown to the user as is: e.g. the demo model's "answers are meaningless". */
  notice?: string;
  /** Problems that did not stop the sidecar (a KV spec the engine rejected, a KV budget overrun). */
  warnings?: string[];
  /** Requests waiting for the engine, and the one running. */
  queue?: { running: string | null; waiting: number };
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export type ContextMode = 'workspace' | 'file' | 'none';

export interface ChatParams {
  messages: ChatMessage[];
  context: ContextMode;
  /** The file for context "file" (a file: URI or absolute path). */
  uri?: string;
  maxTokens?: number;
  temperature?: number;
  /** LSP partial-result token: text deltas arrive as `$/progress` with this token. */
  partialResultToken?: string | number;
  workDoneToken?: string | number;
}

export interface ExplainFileParams {
  uri: string;
  maxTokens?: number;
  partialResultToken?: string | number;
  workDoneToken?: string | number;
}

export interface Usage {
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
}

export interface ChatResult {
  text: string;
  usage: Usage;
  kv: KvStats;
  /** What context was used. */
  context: { mode: ContextMode; files: number; tokens: number; leftOut: number };
  model: string;
  demo: boolean;
  stopReason: 'eos' | 'length' | 'stop' | 'cancelled';
  timings: { prefillTokensPerSecond: number; decodeTokensPerSecond: number };
  /** Set for the demo model: its answers are meaningless. */
  notice?: string;
}

export interface LoadModelParams {
  path: string;
}

export interface IndexWorkspaceParams {
  workDoneToken?: string | number;
}

export interface DiscoveredModel {
  path: string;
  name: string;
  source: 'setting' | 'ollama' | 'lmstudio' | 'huggingface' | 'llama.cpp' | 'demo';
  architecture: string | null;
  bytes: number;
  usable: boolean;
  reason?: string;
}

/** Settings the extension pushes to the sidecar (mirrors package.json contributes.configuration). */
export interface SidecarSettings {
  modelPath: string;
  backend: 'auto' | 'cpu' | 'cuda';
  threads: number;
  kvPreset: string;
  kvSpec: string;
  kvBudgetMB: number;
  contextMaxTokens: number;
  include: string[];
  exclude: string[];
  filesExclude: string[];
  persistCache: boolean;
  storageDir: string;
  /** Build the workspace cache when the sidecar starts and after edits (default true). */
  autoIndex?: boolean;
  /** Files larger than this are left out as too-large (default 262144). */
  maxFileBytes?: number;
  /** Answer length when a request does not say (default 512). */
  maxAnswerTokens?: number;
}

export const Status = new RequestType0<StatusResult, void>('llamakv/status');
export const LoadModel = new RequestType<LoadModelParams, ModelSummary, void>('llamakv/loadModel');
export const ListModels = new RequestType0<DiscoveredModel[], void>('llamakv/listModels');
export const IndexWorkspace = new RequestType<IndexWorkspaceParams, WorkspaceState, void>('llamakv/indexWorkspace');
export const ClearCache = new RequestType0<KvStats, void>('llamakv/clearCache');
export const Chat = new RequestType<ChatParams, ChatResult, void>('llamakv/chat');
export const ExplainFile = new RequestType<ExplainFileParams, ChatResult, void>('llamakv/explainFile');
export const CacheStats = new RequestType0<KvStats, void>('llamakv/cacheStats');
export const StatsChanged = new NotificationType<StatusResult>('llamakv/statsChanged');
export const UpdateSettings = new NotificationType<Partial<SidecarSettings>>('llamakv/updateSettings');
/** Partial results of chat/explainFile: each value is a text delta. */
export const TextDelta = new ProgressType<string>();
