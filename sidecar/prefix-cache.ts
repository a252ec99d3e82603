// prefix-cache.ts — the warm workspace prefix: a session holding the prefilled (compressed) KV state
// of the workspace prompt, with per-file token spans. Syncing to a new layout rewinds to the first
// token that differs (the first changed file) and prefills only from there; each question runs on a
// checkpoint and is rewound afterwards. The state persists to disk as two files:
//
//   <key>.kvstate  the engine's state file (its own magic, version, checksum, model identity and
//                  KV spec; written to a temporary name and renamed by the engine)
//   <key>.json     "LLAMAKV-PREFIX <version> <sha256 of body>\n" + body (JSON: model identity,
//                  KV spec, context size, prompt version, workspace digest, file spans, and a nonce
//                  that the engine file's own metadata must repeat), written atomically.
//
// A cache that does not match (stale) or does not verify (corrupt) is discarded with a log line and
// deleted, and the prefix is rebuilt: a state is used whole or not at all.
import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { CancelledError, Session } from './engine';
import { log } from './log';
import { commonPrefix, PrefixLayout } from './prompt';

export const CACHE_FORMAT_VERSION = 1;
const MAGIC = 'LLAMAKV-PREFIX';

/** Everything a saved state must match to be reused. */
export interface CacheIdentity {
  /** Model file identity: path, size, mtime and a hash of its first MiB (the GGUF header). */
  model: { path: string; bytes: number; mtimeMs: number; headHash: string };
  kvSpec: string;
  nCtx: number;
  promptVersion: number;
  /** Workspace folders (absolute). */
  roots: string[];
}

export interface CacheMeta {
  format: typeof MAGIC;
  version: number;
  identity: CacheIdentity;
  nonce: string;
  savedAt: string;
  nTokens: number;
  /** sha256 of the prefix tokens (int32 little-endian). */
  tokensHash: string;
  /** sha256 over the file spans (path, content hash, token range): the workspace digest. */
  digest: string;
  headTokens: number;
  spans: PrefixLayout['spans'];
  stateBytes: number;
}

export function modelIdentity(file: string): CacheIdentity['model'] {
  const st = fs.statSync(file);
  const fd = fs.openSync(file, 'r');
  try {
    const n = Math.min(st.size, 1 << 20);
    const buf = Buffer.alloc(n);
    fs.readSync(fd, buf, 0, n, 0);
    return { path: path.resolve(file), bytes: st.size, mtimeMs: st.mtimeMs, headHash: createHash('sha256').update(buf).digest('hex') };
  } finally {
    fs.closeSync(fd);
  }
}

export function tokensHash(tokens: ArrayLike<number>): string {
  const a = Int32Array.from(tokens as ArrayLike<number>);
  return createHash('sha256').update(Buffer.from(a.buffer, a.byteOffset, a.byteLength)).digest('hex');
}

export function layoutDigest(layout: Pick<PrefixLayout, 'spans' | 'headTokens'>): string {
  return createHash('sha256').update(JSON.stringify([layout.headTokens, layout.spans])).digest('hex');
}

/** Cache file base name for a set of workspace folders (one cache per workspace). */
export function cacheKey(roots: string[]): string {
  return 'ws-' + createHash('sha256').update(JSON.stringify(roots.map((r) => path.resolve(r)))).digest('hex').slice(0, 20);
}

// ---- the metadata file ------------------------------------------------------------------------

export function encodeMeta(meta: CacheMeta): string {
  const body = JSON.stringify(meta);
  const sum = createHash('sha256').update(body).digest('hex');
  return `${MAGIC} ${CACHE_FORMAT_VERSION} ${sum}\n${body}`;
}

/** Parses and verifies a metadata file's text; throws with the reason it cannot be used. */
export function decodeMeta(text: string): CacheMeta {
  const nl = text.indexOf('\n');
  if (nl < 0) throw new Error('no header line');
  const [magic, version, sum] = text.slice(0, nl).split(' ');
  if (magic !== MAGIC) throw new Error('not a llamakv prefix cache');
  if (Number(version) !== CACHE_FORMAT_VERSION) throw new Error(`format version ${version}, this build reads ${CACHE_FORMAT_VERSION}`);
  const body = text.slice(nl + 1);
  if (createHash('sha256').update(body).digest('hex') !== sum) throw new Error('checksum mismatch');
  let meta: CacheMeta;
  try {
    meta = JSON.parse(body) as CacheMeta;
  } catch (e) {
    throw new Error(`bad JSON: ${(e as Error).message}`);
  }
  if (meta.format !== MAGIC || meta.version !== CACHE_FORMAT_VERSION || !Array.isArray(meta.spans) || typeof meta.nonce !== 'string') {
    throw new Error('malformed metadata');
  }
  return meta;
}

/** Why a saved identity does not match the current one, or null when it does. */
export function identityMismatch(saved: CacheIdentity, now: CacheIdentity): string | null {
  if (saved.model.path !== now.model.path) return `made with model ${saved.model.path}`;
  if (saved.model.bytes !== now.model.bytes || saved.model.headHash !== now.model.headHash) return 'the model file changed';
  if (saved.kvSpec !== now.kvSpec) return `made with KV spec "${saved.kvSpec}", now "${now.kvSpec}"`;
  if (saved.nCtx !== now.nCtx) return `made for a ${saved.nCtx}-token context, now ${now.nCtx}`;
  if (saved.promptVersion !== now.promptVersion) return `prompt layout v${saved.promptVersion}, now v${now.promptVersion}`;
  if (JSON.stringify(saved.roots) !== JSON.stringify(now.roots)) return 'made for other workspace folders';
  return null;
}

/** Writes a file atomically: temporary name in the same directory, fsync, rename. */
export function writeFileAtomic(file: string, data: string | Buffer): void {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

// ---- the warm prefix --------------------------------------------------------------------------

export interface SyncResult {
  /** Tokens kept from before (the common prefix). */
  reused: number;
  /** Tokens prefilled now. */
  prefilled: number;
  /** The first file whose tokens changed (null when none did). */
  firstChanged: string | null;
  prefillMs: number;
}

export interface SyncOptions {
  signal?: AbortSignal;
  /** Progress of the prefill: tokens done of total to prefill. */
  onProgress?: (done: number, total: number) => void;
  /** Tokens per engine call (bounds cancellation latency and paces progress). */
  chunk?: number;
}

/**
 * A session plus the layout its KV state holds. `layout` always describes exactly the tokens in
 * the session at rest (a cancelled sync leaves a shorter, still valid prefix).
 */
export class WorkspacePrefix {
  layout: PrefixLayout = { tokens: [], headTokens: 0, spans: [] };
  /**
   * A state file holding exactly this prefix, and the KV fingerprint it had. With adaptive
   * compression a question can evict or demote prefix slots (never undone by truncation), so
   * after a question whose answer changed the fingerprint the prefix is reloaded from here.
   */
  checkpoint: { file: string; print: string } | null = null;

  constructor(readonly session: Session) {}

  /** What changes when slots are evicted, demoted or re-quantized (not just appended). */
  fingerprint(): string {
    const k = this.session.kvStats();
    return JSON.stringify([k.tokens, k.residentTokens, k.bytes, k.tiers ?? null, k.perLayer ?? null]);
  }

  /** Writes a state file for the current prefix (no metadata: not for reuse across restarts). */
  async saveCheckpoint(file: string): Promise<void> {
    this.rewind();
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await this.session.saveState(file, JSON.stringify({ checkpoint: true }));
    this.checkpoint = { file, print: this.fingerprint() };
  }

  /**
   * After a question: rewinds, and reloads the checkpoint unless the cache is known to come back
   * exactly. Truncation is exact for an uncompressed cache (f16/f32) whose fingerprint did not
   * move; a compressed cache can carry adaptive state a question changed (accumulated attention
   * scores, demotions, evictions) that truncation does not undo, so it is always reloaded and
   * every question sees the same prefix. Throws when the checkpoint cannot be restored (the
   * caller rebuilds).
   */
  async restore(): Promise<'unchanged' | 'reloaded' | 'no-checkpoint'> {
    this.rewind();
    if (!this.checkpoint) return 'no-checkpoint';
    const spec = this.session.kvStats().spec ?? '';
    const exactByTruncation = spec === 'f16' || spec === 'f32';
    if (exactByTruncation && this.fingerprint() === this.checkpoint.print) return 'unchanged';
    await this.session.loadState(this.checkpoint.file);
    const tokens = this.session.tokens();
    if (tokens.length !== this.nTokens || tokensHash(tokens) !== tokensHash(this.layout.tokens)) {
      this.checkpoint = null;
      throw new Error('checkpoint does not hold the current prefix');
    }
    return 'reloaded';
  }

  get nTokens(): number {
    return this.layout.tokens.length;
  }

  /** Brings the session to `target`: rewind to the first differing token, prefill the rest. */
  async sync(target: PrefixLayout, opts: SyncOptions = {}): Promise<SyncResult> {
    const t0 = Date.now();
    const reused = commonPrefix(this.layout.tokens, target.tokens);
    // the file at the point of divergence in the old layout (the one that changed or moved), else in the new
    const firstChanged = this.layout.spans.find((s) => s.end > reused)?.rel ?? target.spans.find((s) => s.end > reused)?.rel ?? null;
    if (this.session.nTokens !== reused) this.session.truncate(reused);
    if (reused !== this.layout.tokens.length || target.tokens.length !== reused) this.checkpoint = null;
    this.layout = trimLayout(target, reused);
    const rest = target.tokens.length - reused;
    const chunk = opts.chunk ?? 1024;
    let done = 0;
    try {
      while (done < rest) {
        if (opts.signal?.aborted) throw new CancelledError();
        const piece = target.tokens.slice(reused + done, reused + Math.min(rest, done + chunk));
        const base = done;
        await this.session.prefill(piece, {
          signal: opts.signal,
          logits: false,
          onProgress: opts.onProgress ? (d) => opts.onProgress!(base + d, rest) : undefined,
        });
        done += piece.length;
        this.layout = trimLayout(target, reused + done);
        opts.onProgress?.(done, rest);
      }
    } catch (e) {
      // Keep whatever prefix the engine holds; it is valid as far as it goes.
      const held = Math.min(this.session.nTokens, target.tokens.length);
      const ok = commonPrefix(this.session.tokens(), target.tokens);
      const keep = Math.min(held, ok);
      if (this.session.nTokens !== keep) this.session.truncate(keep);
      this.layout = trimLayout(target, keep);
      throw e;
    }
    return { reused, prefilled: rest, firstChanged: rest > 0 ? firstChanged : null, prefillMs: Date.now() - t0 };
  }

  /** Rewinds the session to the workspace checkpoint (after a question). */
  rewind(): void {
    if (this.session.nTokens !== this.nTokens) this.session.truncate(this.nTokens);
  }

  /** Forgets everything (the session is emptied). */
  clear(): void {
    this.session.truncate(0);
    this.layout = { tokens: [], headTokens: 0, spans: [] };
    this.checkpoint = null;
  }

  // ---- persistence ----

  static files(dir: string, roots: string[]): { state: string; meta: string } {
    const key = cacheKey(roots);
    return { state: path.join(dir, `${key}.kvstate`), meta: path.join(dir, `${key}.json`) };
  }

  /**
   * Saves the prefix (the session must be at its checkpoint). Order: drop the old metadata, let
   * the engine write the state atomically, then write the new metadata atomically. A crash at any
   * point leaves either no metadata or metadata whose nonce the state file does not repeat.
   */
  async save(dir: string, identity: CacheIdentity): Promise<{ file: string; bytes: number }> {
    this.rewind();
    fs.mkdirSync(dir, { recursive: true });
    const files = WorkspacePrefix.files(dir, identity.roots);
    fs.rmSync(files.meta, { force: true });
    const nonce = randomBytes(16).toString('hex');
    await this.session.saveState(files.state, JSON.stringify({ nonce }));
    const stateBytes = fs.statSync(files.state).size;
    const meta: CacheMeta = {
      format: MAGIC,
      version: CACHE_FORMAT_VERSION,
      identity,
      nonce,
      savedAt: new Date().toISOString(),
      nTokens: this.nTokens,
      tokensHash: tokensHash(this.layout.tokens),
      digest: layoutDigest(this.layout),
      headTokens: this.layout.headTokens,
      spans: this.layout.spans,
      stateBytes,
    };
    writeFileAtomic(files.meta, encodeMeta(meta));
    this.checkpoint = { file: files.state, print: this.fingerprint() };
    return { file: files.state, bytes: stateBytes };
  }

  /**
   * Loads a saved prefix when one exists and matches `identity`. Returns the metadata when the
   * state was loaded, null otherwise; a mismatched or unverifiable cache is logged and deleted.
   */
  async load(dir: string, identity: CacheIdentity): Promise<CacheMeta | null> {
    const files = WorkspacePrefix.files(dir, identity.roots);
    if (!fs.existsSync(files.meta) && !fs.existsSync(files.state)) return null;
    const discard = (why: string) => {
      log.warn(`prefix cache: discarding ${files.state}: ${why}; the workspace will be prefilled again`);
      fs.rmSync(files.meta, { force: true });
      fs.rmSync(files.state, { force: true });
      return null;
    };
    let meta: CacheMeta;
    try {
      meta = decodeMeta(fs.readFileSync(files.meta, 'utf8'));
    } catch (e) {
      return discard(`metadata ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : `unusable (${(e as Error).message})`}`);
    }
    const mismatch = identityMismatch(meta.identity, identity);
    if (mismatch) return discard(`stale (${mismatch})`);
    let size = -1;
    try {
      size = fs.statSync(files.state).size;
    } catch {
      return discard('state file missing');
    }
    if (size !== meta.stateBytes) return discard(`state file is ${size} bytes, metadata says ${meta.stateBytes}`);
    let stored: string;
    try {
      stored = await this.session.loadState(files.state);
    } catch (e) {
      this.clear();
      return discard(`engine refused it (${(e as Error).message})`);
    }
    let nonce = '';
    try {
      nonce = (JSON.parse(stored) as { nonce?: string }).nonce ?? '';
    } catch {
      /* mismatch below */
    }
    const tokens = this.session.tokens();
    const problem =
      nonce !== meta.nonce ? 'state file does not belong to this metadata'
      : tokens.length !== meta.nTokens ? `state holds ${tokens.length} tokens, metadata says ${meta.nTokens}`
      : tokensHash(tokens) !== meta.tokensHash ? 'token hash mismatch'
      : layoutDigest(meta) !== meta.digest ? 'digest mismatch'
      : null;
    if (problem) {
      this.clear();
      return discard(problem);
    }
    this.layout = { tokens, headTokens: meta.headTokens, spans: meta.spans };
    this.checkpoint = { file: files.state, print: this.fingerprint() };
    log.info(`prefix cache: loaded ${meta.nTokens} tokens (${meta.spans.length} files) from ${files.state}`);
    return meta;
  }

  /** Deletes the saved cache for these roots. */
  static remove(dir: string, roots: string[]): void {
    const files = WorkspacePrefix.files(dir, roots);
    fs.rmSync(files.meta, { force: true });
    fs.rmSync(files.state, { force: true });
  }
}

/** The layout cut to its first n tokens (spans cut or dropped accordingly). */
export function trimLayout(layout: PrefixLayout, n: number): PrefixLayout {
  if (n >= layout.tokens.length) return { ...layout, tokens: layout.tokens.slice() };
  const spans = layout.spans.filter((s) => s.start < n).map((s) => (s.end <= n ? s : { ...s, end: n, hash: `partial:${s.hash}` }));
  return { tokens: layout.tokens.slice(0, n), headTokens: Math.min(layout.headTokens, n), spans };
}
