// server.ts — the sidecar's JSON-RPC server (vscode-languageserver over stdio or node IPC): maps the
// llamakv/ methods of protocol.ts onto the Assistant, streams answers as partial results, reports
// prefill as work-done progress, and turns every failure into a JSON-RPC error without dying.
// Start: `node out/sidecar/server.js --stdio` or `llamakv serve --stdio`.
import * as fs from 'fs';
import * as path from 'path';
import { fileURLToPath } from 'url';
import {
  CancellationToken,
  Connection,
  createConnection,
  ErrorCodes,
  IPCMessageReader,
  IPCMessageWriter,
  LSPErrorCodes,
  ProposedFeatures,
  ResponseError,
  TextDocumentSyncKind,
  WorkDoneProgressReporter,
} from 'vscode-languageserver/node';
import { TextDocument } from 'vscode-languageserver-textdocument';
import { CancelledError } from './engine';
import { AnswerHooks, Assistant, BusyError, ProgressSink, uriToPath, UserError } from './assistant';
import { consoleToStderr, log } from './log';
import * as P from './protocol';
import type { ChatParams, ExplainFileParams, IndexWorkspaceParams, SidecarSettings } from './protocol';

const { Status, CacheStats, ListModels, ClearCache, LoadModel, IndexWorkspace, Chat, ExplainFile, StatsChanged, UpdateSettings, TextDelta } = P;

export function sidecarVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

const USAGE = `usage: llamakv serve [--stdio | --node-ipc]
  Runs the sidecar's JSON-RPC server (the extension starts it). Logs go to stderr.`;

/** Maps any failure to the JSON-RPC error the client sees. */
export function toResponseError(method: string, e: unknown): ResponseError<void> {
  if (e instanceof ResponseError) return e;
  if (e instanceof CancelledError) return new ResponseError(LSPErrorCodes.RequestCancelled, `${method}: cancelled`);
  if (e instanceof UserError) return new ResponseError(ErrorCodes.InvalidParams, e.message);
  if (e instanceof BusyError) return new ResponseError(LSPErrorCodes.RequestFailed, e.message);
  const msg = e instanceof Error ? e.message : String(e);
  log.error(`${method} failed: ${e instanceof Error && e.stack ? e.stack : msg}`);
  return new ResponseError(LSPErrorCodes.RequestFailed, `${method} failed: ${msg}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Keeps only settings keys with the right type; says what was dropped. */
export function sanitizeSettings(raw: unknown): Partial<SidecarSettings> {
  if (!isObject(raw)) return {};
  const out: Record<string, unknown> = {};
  const kinds: Record<keyof SidecarSettings, 'string' | 'number' | 'boolean' | 'string[]'> = {
    modelPath: 'string', backend: 'string', threads: 'number', kvPreset: 'string', kvSpec: 'string', kvBudgetMB: 'number',
    contextMaxTokens: 'number', include: 'string[]', exclude: 'string[]', filesExclude: 'string[]', persistCache: 'boolean',
    storageDir: 'string', autoIndex: 'boolean', maxFileBytes: 'number', maxAnswerTokens: 'number',
  };
  for (const [k, v] of Object.entries(raw)) {
    const kind = kinds[k as keyof SidecarSettings];
    if (v === undefined || v === null) continue;
    if (!kind) continue; // unknown keys are ignored (the extension may send more than we read)
    if (k === 'filesExclude' && isObject(v)) continue; // VS Code's object form, handled below
    const ok =
      kind === 'string[]' ? Array.isArray(v) && v.every((x) => typeof x === 'string') : kind === 'number' ? typeof v === 'number' && Number.isFinite(v) : typeof v === kind;
    if (ok) out[k] = v;
    else log.warn(`settings: ignoring ${k}: expected ${kind}, got ${JSON.stringify(v)}`);
  }
  // files.exclude may come as VS Code's object form { "glob": true }
  if (isObject((raw as Record<string, unknown>).filesExclude)) {
    out.filesExclude = Object.entries((raw as Record<string, Record<string, unknown>>).filesExclude).filter(([, on]) => on === true).map(([g]) => g);
  }
  return out as Partial<SidecarSettings>;
}

function toPath(uri: string): string | null {
  try {
    return uri.startsWith('file:') ? fileURLToPath(uri) : null;
  } catch {
    return null;
  }
}

/** Work-done progress on the client's token, or on one the server creates, or none. */
function progressFor(connection: Connection, params: unknown, serverMay: boolean): ProgressSink | undefined {
  const token = isObject(params) ? params.workDoneToken : undefined;
  if (typeof token === 'string' || typeof token === 'number') {
    const reporter = connection.window.attachWorkDoneProgress(token);
    return {
      begin: (title, message) => reporter.begin(title, 0, message, false),
      report: (pct, message) => (message === undefined ? reporter.report(pct) : reporter.report(pct, message)),
      done: () => reporter.done(),
    };
  }
  if (!serverMay) return undefined;
  let created: Promise<WorkDoneProgressReporter | null> | null = null;
  let live: WorkDoneProgressReporter | null = null;
  return {
    begin: (title, message) => {
      created = connection.window.createWorkDoneProgress().then(
        (r) => {
          r.begin(title, 0, message, false);
          live = r;
          return r;
        },
        () => null,
      );
    },
    report: (pct, message) => (message === undefined ? live?.report(pct) : live?.report(pct, message)),
    done: () => void created?.then((r) => r?.done()),
  };
}

export function startServer(connection: Connection): Assistant {
  const version = sidecarVersion();
  const assistant = new Assistant();
  const docs = new Map<string, TextDocument>();
  let initialized = false;
  let clientProgress = false;

  // statsChanged, at most every 250 ms (trailing), once the client is ready
  let statsTimer: NodeJS.Timeout | null = null;
  assistant.onChange = () => {
    if (!initialized || statsTimer) return;
    statsTimer = setTimeout(() => {
      statsTimer = null;
      connection.sendNotification(StatsChanged, assistant.status(version)).catch(() => undefined);
    }, 250);
  };

  assistant.backgroundProgress = () => progressFor(connection, undefined, clientProgress);

  const hooksFor = (token: CancellationToken, params: unknown): AnswerHooks => {
    const ac = new AbortController();
    if (token.isCancellationRequested) ac.abort();
    token.onCancellationRequested(() => ac.abort());
    return { signal: ac.signal, progress: progressFor(connection, params, clientProgress) };
  };

  connection.onInitialize((params) => {
    const roots: string[] = [];
    for (const f of params.workspaceFolders ?? []) {
      const p = toPath(f.uri);
      if (p) roots.push(p);
    }
    if (roots.length === 0 && params.rootUri) {
      const p = toPath(params.rootUri);
      if (p) roots.push(p);
    }
    if (roots.length === 0 && params.rootPath) roots.push(params.rootPath);
    clientProgress = params.capabilities?.window?.workDoneProgress === true;
    assistant.updateSettings(sanitizeSettings(params.initializationOptions));
    assistant.setRoots(roots);
    log.info(`llamakv sidecar ${version} (node ${process.version}, pid ${process.pid}); workspace: ${roots.join(', ') || '(none)'}`);
    return {
      capabilities: {
        textDocumentSync: { openClose: true, change: TextDocumentSyncKind.Incremental, save: { includeText: false } },
        workspace: { workspaceFolders: { supported: true, changeNotifications: true } },
      },
      serverInfo: { name: 'llamakv', version },
    };
  });

  connection.onInitialized(() => {
    initialized = true;
    if (assistant.settings.autoIndex && assistant.roots.length > 0) assistant.scheduleRefresh(0);
    assistant.onChange?.();
    connection.workspace.onDidChangeWorkspaceFolders?.((e) => {
      const removed = new Set(e.removed.map((f) => toPath(f.uri)));
      const next = assistant.roots.filter((r) => !removed.has(r));
      for (const f of e.added) {
        const p = toPath(f.uri);
        if (p && !next.includes(p)) next.push(p);
      }
      assistant.setRoots(next);
    });
  });

  connection.onRequest(Status, () => assistant.status(version));

  connection.onRequest(CacheStats, () => assistant.cacheStats());

  connection.onRequest(ListModels, async () => {
    try {
      return assistant.listModels();
    } catch (e) {
      throw toResponseError('llamakv/listModels', e);
    }
  });

  connection.onRequest(LoadModel, async (params, token) => {
    try {
      if (!isObject(params) || typeof params.path !== 'string' || params.path.length === 0) {
        throw new UserError('llamakv/loadModel: params must be { path: string }');
      }
      const hooks = hooksFor(token, undefined);
      const p = params.path.startsWith('file:') ? uriToPath(params.path) : params.path;
      return await assistant.loadModel(p, hooks.signal);
    } catch (e) {
      throw toResponseError('llamakv/loadModel', e);
    }
  });

  connection.onRequest(IndexWorkspace, async (params: IndexWorkspaceParams, token) => {
    try {
      return await assistant.indexWorkspace(hooksFor(token, params));
    } catch (e) {
      throw toResponseError('llamakv/indexWorkspace', e);
    }
  });

  connection.onRequest(ClearCache, async () => {
    try {
      return await assistant.clearCache();
    } catch (e) {
      throw toResponseError('llamakv/clearCache', e);
    }
  });

  const streamTo = (params: { partialResultToken?: string | number }) => {
    const t = isObject(params) ? params.partialResultToken : undefined;
    if (typeof t !== 'string' && typeof t !== 'number') return undefined;
    return (delta: string) => void connection.sendProgress(TextDelta, t, delta).catch(() => undefined);
  };

  connection.onRequest(Chat, async (params: ChatParams, token) => {
    try {
      const hooks = hooksFor(token, params);
      hooks.onDelta = streamTo(params);
      return await assistant.chat(params, hooks);
    } catch (e) {
      throw toResponseError('llamakv/chat', e);
    }
  });

  connection.onRequest(ExplainFile, async (params: ExplainFileParams, token) => {
    try {
      const hooks = hooksFor(token, params);
      hooks.onDelta = streamTo(params);
      return await assistant.explainFile(params, hooks);
    } catch (e) {
      throw toResponseError('llamakv/explainFile', e);
    }
  });

  connection.onNotification(UpdateSettings, (params) => {
    if (!isObject(params)) {
      log.warn('llamakv/updateSettings: params must be an object; ignored');
      return;
    }
    assistant.updateSettings(sanitizeSettings(params));
  });

  // ---- document sync: unsaved editor text wins over disk ----
  connection.onDidOpenTextDocument((p) => {
    const file = toPath(p.textDocument.uri);
    if (!file) return;
    const doc = TextDocument.create(p.textDocument.uri, p.textDocument.languageId, p.textDocument.version, p.textDocument.text);
    docs.set(p.textDocument.uri, doc);
    assistant.openDocument(file, doc.getText());
  });
  connection.onDidChangeTextDocument((p) => {
    const file = toPath(p.textDocument.uri);
    const doc = docs.get(p.textDocument.uri);
    if (!file || !doc) return;
    const next = TextDocument.update(doc, p.contentChanges, p.textDocument.version);
    docs.set(p.textDocument.uri, next);
    assistant.changeDocument(file, next.getText());
  });
  connection.onDidSaveTextDocument((p) => {
    const file = toPath(p.textDocument.uri);
    if (file) assistant.saveDocument(file);
  });
  connection.onDidCloseTextDocument((p) => {
    const file = toPath(p.textDocument.uri);
    docs.delete(p.textDocument.uri);
    if (file) assistant.closeDocument(file);
  });
  connection.onDidChangeWatchedFiles(() => assistant.filesChanged());

  connection.onShutdown(async () => {
    log.info('shutting down');
    await assistant.dispose();
  });

  connection.listen();
  return assistant;
}

/** `llamakv serve [--stdio | --node-ipc]`: runs until the client sends exit or closes the stream. */
export async function runServe(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const unknown = argv.filter((a) => !['--stdio', '--node-ipc'].includes(a) && !a.startsWith('--clientProcessId'));
  if (unknown.length > 0) {
    process.stderr.write(`llamakv serve: unknown argument ${unknown[0]}\n${USAGE}\n`);
    return 2;
  }
  consoleToStderr();
  process.on('uncaughtException', (e) => log.error(`uncaught: ${e.stack ?? e.message}`));
  process.on('unhandledRejection', (e) => log.error(`unhandled rejection: ${e instanceof Error ? e.stack ?? e.message : String(e)}`));
  const connection = argv.includes('--node-ipc')
    ? createConnection(ProposedFeatures.all, new IPCMessageReader(process), new IPCMessageWriter(process))
    : createConnection(ProposedFeatures.all, process.stdin, process.stdout);
  startServer(connection);
  return new Promise<number>(() => {
    /* the connection exits the process on `exit` or when its input closes */
  });
}

if (require.main === module) {
  runServe(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`llamakv serve: ${(e as Error).stack ?? e}\n`);
      process.exit(1);
    },
  );
}
