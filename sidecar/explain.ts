// explain.ts — `llamakv explain FILE`: the headless main job. Builds (or reloads) the workspace's
// compressed KV cache, streams an explanation of FILE to stdout, and ends with the KV summary line.
import * as fs from 'fs';
import * as path from 'path';
import { checkFlags, flagBool, flagNum, flagStr, parseArgs, UsageError } from './args';
import { Assistant, ProgressSink } from './assistant';
import { CancelledError } from './engine';
import { kvSummaryLine } from './format';
import { log } from './log';
import type { SidecarSettings } from './protocol';

export const EXPLAIN_USAGE =
  'explain FILE [--workspace DIR] [--model M] [--kv SPEC] [--backend auto|cpu|cuda] [--json] [--max-tokens N] [--context N] [--threads N] [--storage DIR] [--no-cache]';

const FLAGS = ['workspace', 'model', 'kv', 'backend', 'json', 'max-tokens', 'context', 'threads', 'storage', 'no-cache', 'budget-mb', 'include', 'exclude'];

/** The workspace a file belongs to: the nearest folder above it with a .git, else the cwd if it holds the file, else the file's folder. */
export function defaultWorkspace(file: string, cwd = process.cwd()): string {
  let dir = path.dirname(file);
  for (;;) {
    if (fs.existsSync(path.join(dir, '.git'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  const rel = path.relative(cwd, file);
  if (!rel.startsWith('..') && !path.isAbsolute(rel)) return cwd;
  return path.dirname(file);
}

function stderrProgress(): ProgressSink {
  const tty = process.stderr.isTTY;
  let last = -1;
  return {
    begin: (title, message) => process.stderr.write(`${title}${message ? `: ${message}` : ''}\n`),
    report: (pct, message) => {
      if (tty) process.stderr.write(`\r  ${pct}%  ${message ?? ''}   `);
      else if (Math.floor(pct / 25) !== Math.floor(last / 25)) process.stderr.write(`  ${pct}% ${message ?? ''}\n`);
      last = pct;
    },
    done: () => {
      if (tty) process.stderr.write('\n');
    },
  };
}

export async function runExplain(argv: string[]): Promise<number> {
  const a = parseArgs(argv, ['json', 'no-cache']);
  checkFlags(a, FLAGS);
  const json = flagBool(a, 'json');
  if (a.positionals.length !== 1) throw new UsageError(a.positionals.length === 0 ? 'missing FILE' : `one FILE only, got ${a.positionals.length}`);
  const file = path.resolve(a.positionals[0]);
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new Error(`file not found: ${file}`);
  const wsArg = flagStr(a, 'workspace');
  const workspace = wsArg ? path.resolve(wsArg) : defaultWorkspace(file);
  if (!fs.existsSync(workspace) || !fs.statSync(workspace).isDirectory()) throw new Error(`workspace folder not found: ${workspace}`);
  const list = (name: string) => (flagStr(a, name) ?? '').split(',').map((s) => s.trim()).filter(Boolean);

  const backend = flagStr(a, 'backend') ?? 'auto';
  if (backend !== 'auto' && backend !== 'cpu' && backend !== 'cuda') throw new UsageError(`--backend must be auto, cpu or cuda, got "${backend}"`);
  const settings: Partial<SidecarSettings> = {
    modelPath: flagStr(a, 'model') ?? process.env.LLAMAKV_MODEL ?? '',
    kvSpec: flagStr(a, 'kv') ?? '',
    backend,
    contextMaxTokens: flagNum(a, 'context', 32768),
    threads: flagNum(a, 'threads', 0),
    storageDir: flagStr(a, 'storage') ?? '',
    persistCache: !flagBool(a, 'no-cache'),
    kvBudgetMB: flagNum(a, 'budget-mb', 0),
    include: list('include'),
    exclude: list('exclude'),
    autoIndex: false,
  };
  const maxTokens = flagNum(a, 'max-tokens', 512);
  if (!Number.isInteger(maxTokens) || maxTokens! < 1) throw new UsageError('--max-tokens must be a positive integer');
  if (json) log.setQuiet(true);

  const assistant = new Assistant(settings, [workspace]);
  const ac = new AbortController();
  const onSigint = () => {
    if (ac.signal.aborted) process.exit(130);
    process.stderr.write('\n(stopping…)\n');
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  try {
    await assistant.ensureModel();
    const status = assistant.status('');
    if (!json) {
      const m = status.model!;
      process.stderr.write(`model: ${m.name} (${m.weightType}, ${m.nLayer} layers, ${m.backend}${m.backendNote ? `: ${m.backendNote}` : ''}); KV spec ${status.kvSpec}; workspace ${workspace}\n`);
      if (status.notice) process.stderr.write(`note: ${status.notice}\n`);
    }
    let wrote = false;
    const result = await assistant.explainFile(
      { uri: file, maxTokens },
      {
        signal: ac.signal,
        progress: json ? undefined : stderrProgress(),
        onDelta: json
          ? undefined
          : (t) => {
              wrote = true;
              process.stdout.write(t);
            },
      },
    );
    const after = assistant.status('');
    if (!json && wrote && !result.text.endsWith('\n')) process.stdout.write('\n');
    for (const w of after.warnings ?? []) if (!json) process.stderr.write(`warning: ${w}\n`);
    if (json) {
      process.stdout.write(`${JSON.stringify({ ...result, workspace: { root: workspace, tokens: after.workspace.tokens, files: after.workspace.files, leftOut: after.workspace.leftOut, fromDisk: after.workspace.fromDisk, lastPrefilledTokens: after.workspace.lastPrefilledTokens }, ...(after.warnings ? { warnings: after.warnings } : {}) })}\n`);
    } else {
      if (result.stopReason === 'cancelled') process.stdout.write('(stopped)\n');
      process.stdout.write(`${kvSummaryLine(result.kv, after.workspace.tokens, result.context.leftOut)}\n`);
    }
    return result.stopReason === 'cancelled' ? 130 : 0;
  } catch (e) {
    if (e instanceof CancelledError) return 130;
    throw e;
  } finally {
    process.off('SIGINT', onSigint);
    await assistant.dispose();
  }
}
