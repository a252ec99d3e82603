// index.ts — the integration suite, run inside a real VS Code extension host: by code-server
// (test/e2e/run.js, through the page address) and by @vscode/test-electron (test/e2e/electron.js).
// It drives the extension under development against the real sidecar and the tiny generated
// model that the workspace's .vscode/settings.json names. Tests share one sidecar and run in order.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import * as vscode from 'vscode';
import type { LlamakvApi } from '../../../extension/extension';
import { savingsText } from '../../../extension/format';
import type { Turn } from '../../../extension/webviewMessages';
import type { StatusResult } from '../../../sidecar/protocol';
import { runAll, test, until } from './harness';

const EXT_ID = 'llamakv.llamakv';
const ISSUE_COMMANDS = [
  'llamakv.explainFile',
  'llamakv.askSelection',
  'llamakv.indexWorkspace',
  'llamakv.selectModel',
  'llamakv.showCacheDetails',
  'llamakv.clearCache',
  'llamakv.restartSidecar',
];
const ISSUE_SETTINGS = [
  'modelPath', 'backend', 'threads', 'kv.preset', 'kv.spec', 'kv.budgetMB', 'context.maxTokens',
  'context.include', 'context.exclude', 'cache.persist',
];

let api: LlamakvApi;
const ws = () => vscode.workspace.workspaceFolders![0].uri;
const file = (rel: string) => vscode.Uri.joinPath(ws(), rel);
const cfg = () => vscode.workspace.getConfiguration('llamakv');

/** The sidecar runs and its model is loaded; returns that status. */
function sidecarReady(what = 'the sidecar to run with its model loaded', timeoutMs = 60_000): Promise<StatusResult> {
  return until(what, () => {
    const s = api.lastStatus();
    return api.phase().kind === 'running' && s?.modelState === 'ready' ? s : undefined;
  }, timeoutMs);
}

/** Record every distinct partial answer length of the next turn, to tell streaming apart. */
function watchStreaming(): { lengths: number[]; dispose(): void } {
  const lengths: number[] = [];
  const d = api.chat.onDidChangeTurn((t) => {
    if (t.state === 'streaming' && t.answer.length > 0 && lengths[lengths.length - 1] !== t.answer.length) lengths.push(t.answer.length);
  });
  return { lengths, dispose: () => d.dispose() };
}

function renderedAck(id: string): Promise<{ state: string; chars: number }> {
  return new Promise((resolve) => {
    const d = api.chat.onDidRender((m) => {
      if (m.id === id && m.state !== 'streaming') {
        d.dispose();
        resolve(m);
      }
    });
  });
}

test('the extension activates and returns its API', async () => {
  const ext = vscode.extensions.getExtension<LlamakvApi>(EXT_ID);
  assert.ok(ext, `${EXT_ID} is not installed`);
  api = await ext.activate();
  assert.ok(api && typeof api.sidecarPid === 'function', 'activate() returned no API');
});

test('every command is registered, in package.json and the command table alike', async () => {
  const pkg = vscode.extensions.getExtension(EXT_ID)!.packageJSON;
  const contributed: string[] = pkg.contributes.commands.map((c: { command: string }) => c.command);
  const registered = new Set(await vscode.commands.getCommands(true));
  for (const id of ISSUE_COMMANDS) assert.ok(contributed.includes(id), `${id} not contributed`);
  for (const id of contributed) assert.ok(registered.has(id), `${id} contributed but not registered`);
  assert.deepStrictEqual([...api.commands].sort(), [...contributed].sort(), 'command table and package.json differ');
  for (const c of pkg.contributes.commands) assert.strictEqual(c.category, 'llamakv', `${c.command} has no llamakv category`);
  assert.ok(registered.has('llamakv.chat.focus'), 'the chat view is not contributed');
});

test('every setting of the issue is declared with a default', async () => {
  for (const k of ISSUE_SETTINGS) {
    const i = cfg().inspect(k);
    assert.ok(i && i.defaultValue !== undefined, `llamakv.${k} has no default`);
  }
});

test('the status bar renders a StatusResult: saving, loading, indexing, errors', async () => {
  const base: StatusResult = {
    version: 't', model: null, modelState: 'ready', kvSpec: 'balanced', busy: false,
    workspace: { root: null, state: 'ready', files: 12, tokens: 15000, leftOut: [], budgetTokens: 32768, lastPrefilledTokens: 0, fromDisk: true },
    kv: { tokens: 15000, residentTokens: 12000, bytes: 236 * 2 ** 20, f16Bytes: 1.9 * 2 ** 30, spec: 'k4v2', perLayer: [1e6, 2e6], tiers: { q8: 100, q4: 11900, evicted: 3000 } },
  };
  const saving = api.renderStatus({ kind: 'running', status: base });
  assert.strictEqual(saving.text, '$(database) KV 1.9 GB \u2192 236 MB (\u221288%)');
  assert.match(saving.tooltip, /12,000 kept, 3,000 evicted/);
  assert.match(saving.tooltip, /q4 11,900/);
  assert.match(saving.tooltip, /Per layer \(2\)/);
  assert.match(api.renderStatus({ kind: 'running', status: { ...base, modelState: 'loading' } }).text, /loading model/);
  assert.match(api.renderStatus({ kind: 'running', status: { ...base, workspace: { ...base.workspace, state: 'prefilling' } } }).text, /indexing/);
  const err = api.renderStatus({ kind: 'running', status: { ...base, modelState: 'error', modelError: 'bad magic' } });
  assert.strictEqual(err.severity, 'error');
  assert.match(err.tooltip, /bad magic/);
  assert.strictEqual(api.renderStatus({ kind: 'stopped', reason: 'x' }).severity, 'error');
  assert.match(api.renderStatus({ kind: 'starting' }).text, /starting/);
});

test('the sidecar starts on the extension host\'s own runtime and loads the model', async () => {
  const s = await sidecarReady();
  const pid = api.sidecarPid();
  assert.ok(pid && pid !== process.pid, 'no sidecar process');
  if (process.platform === 'linux') {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    assert.strictEqual(cmd[0], process.execPath, 'the sidecar is not run by the extension host\'s executable');
    assert.ok(cmd.some((a) => a.endsWith(path.join('out', 'sidecar', 'server.js'))) && cmd.includes('--stdio'), cmd.join(' '));
  }
  assert.strictEqual(s.model?.path, cfg().get('modelPath'), 'the model of llamakv.modelPath is not the one loaded');
});

test('the chat view opens and its webview loads', async () => {
  await vscode.commands.executeCommand('llamakv.chat.focus');
  await until('the chat webview to say it is ready', () => api.chat.webviewReady(), 30_000);
});

let firstTurn: Turn;
test('Explain File streams an answer into the chat panel', async () => {
  await vscode.window.showTextDocument(file('src/greet.ts'));
  const stream = watchStreaming();
  const n = api.chat.transcript().length;
  const t0 = Date.now();
  const turn = (await vscode.commands.executeCommand('llamakv.explainFile', file('src/greet.ts'), { maxTokens: 48 })) as Turn;
  stream.dispose();
  assert.ok(turn, 'the command returned no turn');
  assert.strictEqual(turn.state, 'done', turn.error);
  assert.strictEqual(turn.kind, 'explain');
  assert.ok(turn.answer.length > 0, 'empty answer');
  assert.ok(stream.lengths.length >= 2, `the answer did not stream (partial lengths: ${stream.lengths.join(',')})`);
  assert.ok(turn.context && turn.context.files >= 1 && turn.context.tokens > 0, `no workspace context: ${JSON.stringify(turn.context)}`);
  assert.strictEqual(api.chat.transcript().length, n + 1);
  assert.ok(turn.usage && turn.usage.completionTokens > 0);
  console.log(`    explain: ${turn.usage!.completionTokens} tokens in ${Date.now() - t0} ms, streamed in ${stream.lengths.length} steps`);
  firstTurn = turn;
}, 120_000);

test('the webview renders the finished answer', async () => {
  // The webview acknowledges each finished turn it rendered; re-send the state to get a fresh one.
  const ack = renderedAck(firstTurn.id);
  api.chat.post({ type: 'turn', turn: firstTurn });
  const m = await ack;
  assert.strictEqual(m.state, 'done');
  assert.strictEqual(m.chars, firstTurn.answer.length);
});

test('the status bar shows the saved-memory figure the sidecar reports', async () => {
  const s = await until('a status with cached tokens', () => {
    const st = api.lastStatus();
    return st && st.kv.f16Bytes > 0 && st.workspace.state === 'ready' ? st : undefined;
  });
  await until('the status bar to show the last status', () => api.statusBar().text === `$(database) ${savingsText(api.lastStatus()!.kv)}`, 5000);
  assert.match(api.statusBar().text, /^\$\(database\) KV \d[\d.]* [KMGT]?B \u2192 \d[\d.]* [KMGT]?B \([\u2212+]?\d+%\)$/);
  assert.match(api.statusBar().tooltip, /kept/);
  assert.ok(s.workspace.files >= 2, `workspace files: ${s.workspace.files}`);
});

test('cache details draw a picture of the cache', async () => {
  await vscode.commands.executeCommand('llamakv.showCacheDetails');
  const html = await until('the cache details page', () => api.cacheDetailsHtml(), 10_000);
  assert.match(html, /<svg[^>]*aria-label="KV cache bytes/);
  assert.match(html, /aria-label="bytes per layer, \d+ layers"/);
  assert.match(html, /aria-label="tokens per precision"/);
  assert.match(html, /Content-Security-Policy" content="default-src 'none'/);
  await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
});

test('Stop cancels a streaming answer, and the sidecar stops generating', async () => {
  const turnP = vscode.commands.executeCommand('llamakv.explainFile', file('src/main.ts'), { maxTokens: 2000 }) as Thenable<Turn>;
  const streaming = await until('the answer to start streaming', () => {
    const t = api.chat.transcript().at(-1);
    return t && t.state === 'streaming' && t.answer.length > 0 ? t : undefined;
  }, 60_000);
  const t0 = Date.now();
  await vscode.commands.executeCommand('llamakv.stop');
  assert.strictEqual(streaming.state, 'cancelled', 'the panel did not stop at once');
  const turn = await turnP;
  const settledMs = Date.now() - t0;
  assert.strictEqual(turn.state, 'cancelled');
  assert.strictEqual(turn.stopReason, 'cancelled');
  assert.ok(settledMs < 10_000, `the sidecar took ${settledMs} ms to honour the cancel`);
  assert.ok(!turn.usage || turn.usage.completionTokens < 2000, 'the sidecar generated every token anyway');
  await until('the sidecar to be idle', () => api.lastStatus() && !api.lastStatus()!.busy, 15_000);
}, 90_000);

/** Starts a long Explain File and waits until its answer streams. */
async function streamingExplain(rel: string): Promise<{ turn: Turn; done: Thenable<Turn> }> {
  const n = api.chat.transcript().length;
  const done = vscode.commands.executeCommand('llamakv.explainFile', file(rel), { maxTokens: 2000 }) as Thenable<Turn>;
  const turn = await until('the answer to start streaming', () => {
    const t = api.chat.transcript()[n];
    return t && t.state === 'streaming' && t.answer.length > 0 ? t : undefined;
  }, 60_000);
  return { turn, done };
}

test('two questions while one answers: each stops the one before it, the last one answers', async () => {
  const a = await streamingExplain('src/main.ts');
  // both arrive while the first still streams: the later one must be able to stop the earlier
  const b = vscode.commands.executeCommand('llamakv.explainFile', file('src/main.ts'), { maxTokens: 2000 }) as Thenable<Turn>;
  const c = vscode.commands.executeCommand('llamakv.explainFile', file('src/greet.ts'), { maxTokens: 8 }) as Thenable<Turn>;
  const [ta, tb, tc] = await Promise.all([a.done, b, c]);
  assert.strictEqual(ta.state, 'cancelled');
  assert.strictEqual(tb.state, 'cancelled', 'the middle question kept answering after the last one started');
  assert.strictEqual(tc.state, 'done', tc.error);
  assert.ok(!api.chat.busy(), 'the panel still says it is busy');
  assert.ok(!api.chat.transcript().some((t) => t.state === 'streaming'), 'a turn is left streaming');
  await until('the sidecar to be idle', () => api.lastStatus() && !api.lastStatus()!.busy, 15_000);
}, 120_000);

test('Clear Conversation during an answer: the cleared answer does not come back', async () => {
  const a = await streamingExplain('src/main.ts');
  const rendered: string[] = [];
  const d = api.chat.onDidRender((m) => {
    if (m.id === a.turn.id) rendered.push(m.state);
  });
  try {
    await vscode.commands.executeCommand('llamakv.clearChat');
    const t = await a.done;
    assert.strictEqual(t.state, 'cancelled');
    await new Promise((r) => setTimeout(r, 1500)); // room for a stray re-render to arrive
    assert.deepStrictEqual(api.chat.transcript(), []);
    assert.deepStrictEqual(rendered, [], 'the webview rendered the cleared turn again');
  } finally {
    d.dispose();
  }
  await until('the sidecar to be idle', () => api.lastStatus() && !api.lastStatus()!.busy, 15_000);
}, 90_000);

test('a killed sidecar is restarted, and the next request works', async () => {
  const pid = api.sidecarPid()!;
  const starts = api.sidecarStarts();
  process.kill(pid, 'SIGKILL');
  await until('a new sidecar process', () => api.sidecarStarts() > starts && api.sidecarPid() && api.sidecarPid() !== pid, 30_000);
  await sidecarReady('the restarted sidecar to load its model');
  const turn = (await vscode.commands.executeCommand('llamakv.explainFile', file('src/greet.ts'), { maxTokens: 8 })) as Turn;
  assert.strictEqual(turn.state, 'done', turn.error);
  assert.ok(turn.answer.length > 0);
}, 120_000);

test('a sidecar that keeps stopping is given up on, with the reason; a settings change starts it again', async () => {
  for (let i = 0; ; i++) {
    assert.ok(i < 10, 'the extension never gave up restarting it');
    const pid = await until('a sidecar process', () => api.sidecarPid(), 30_000);
    const starts = api.sidecarStarts();
    process.kill(pid, 'SIGKILL');
    const next = await until('a restart, or giving up', () => {
      if (api.phase().kind === 'stopped') return 'stopped';
      return api.sidecarStarts() > starts && api.sidecarPid() && api.sidecarPid() !== pid && api.phase().kind === 'running' ? 'restarted' : undefined;
    }, 30_000);
    if (next === 'stopped') break;
  }
  await new Promise((r) => setTimeout(r, 1000)); // later state events must not replace the reason
  const p = api.phase();
  assert.ok(p.kind === 'stopped' && /stopped \d+ times in 3 minutes/.test(p.reason), `phase: ${JSON.stringify(p)}`);
  assert.match(api.statusBar().tooltip, /stopped \d+ times in 3 minutes/);
  try {
    await cfg().update('context.maxTokens', 3072, vscode.ConfigurationTarget.Workspace);
    await sidecarReady('the sidecar started again by the settings change');
  } finally {
    await cfg().update('context.maxTokens', undefined, vscode.ConfigurationTarget.Workspace);
  }
  await sidecarReady();
}, 180_000);

test('settings changes reach the sidecar', async () => {
  try {
    await cfg().update('kv.preset', 'q8', vscode.ConfigurationTarget.Workspace);
    // Either the engine uses it, or the sidecar says why not (an engine without that preset yet).
    await until('the sidecar to use kv preset q8, or to warn about it', () => {
      const s = api.lastStatus();
      return s && (s.kvSpec === 'q8' || (s.warnings ?? []).some((w) => w.includes('"q8"')));
    }, 20_000);
    const before = api.lastStatus()!.workspace.budgetTokens;
    await cfg().update('context.maxTokens', 1024, vscode.ConfigurationTarget.Workspace);
    // The sidecar keeps part of the budget for the question and the answer.
    await until('the workspace budget to shrink to at most 1024 tokens', () => {
      const b = api.lastStatus()?.workspace.budgetTokens ?? 0;
      return b > 0 && b <= 1024 && b !== before;
    }, 30_000);
  } finally {
    await cfg().update('kv.preset', undefined, vscode.ConfigurationTarget.Workspace);
    await cfg().update('context.maxTokens', undefined, vscode.ConfigurationTarget.Workspace);
  }
  await until('the default preset back', () => {
    const s = api.lastStatus();
    const preset = cfg().get<string>('kv.preset')!;
    return s && (s.kvSpec === preset || (s.warnings ?? []).some((w) => w.includes(`"${preset}"`)));
  }, 20_000);
}, 90_000);

test('a setting that needs a new process (backend) restarts the sidecar', async () => {
  const pid0 = api.sidecarPid();
  const starts0 = api.sidecarStarts();
  try {
    await cfg().update('backend', 'cpu', vscode.ConfigurationTarget.Workspace);
    await until('a new sidecar process', () => api.sidecarStarts() > starts0 && api.sidecarPid() && api.sidecarPid() !== pid0, 30_000);
    const s = await sidecarReady('the restarted sidecar to load its model');
    assert.match(s.model!.backend, /cpu/i);
  } finally {
    const starts1 = api.sidecarStarts();
    await cfg().update('backend', undefined, vscode.ConfigurationTarget.Workspace);
    await until('the sidecar restarted with the default backend', () => api.sidecarStarts() > starts1, 30_000);
  }
  await sidecarReady();
}, 90_000);

test('a model that cannot be loaded is an error the status bar shows', async () => {
  const good = cfg().get<string>('modelPath')!;
  const bad = path.join(ws().fsPath, 'README.md');
  try {
    await vscode.commands.executeCommand('llamakv.selectModel', bad);
    await until('the model error', () => api.lastStatus()?.modelState === 'error', 30_000);
    assert.match(api.statusBar().text, /model error/);
    assert.strictEqual(api.statusBar().severity, 'error');
  } finally {
    await vscode.commands.executeCommand('llamakv.selectModel', good);
  }
  await sidecarReady('the good model back');
}, 90_000);

test('Ask About Selection answers about the selected code', async () => {
  const editor = await vscode.window.showTextDocument(file('src/greet.ts'));
  editor.selection = new vscode.Selection(7, 0, 10, 1);
  const turn = (await vscode.commands.executeCommand('llamakv.askSelection', 'What does greet return?', { maxTokens: 8 })) as Turn;
  assert.strictEqual(turn.state, 'done', turn.error);
  assert.strictEqual(turn.kind, 'selection');
  assert.match(turn.prompt, /src\/greet\.ts:8-11/);
  // what the model got (and what a follow-up sends as history) carries the selected code
  assert.ok(turn.sent && turn.sent.includes(editor.document.getText(editor.selection)), `the selection is not in what was sent: ${turn.sent}`);
  assert.ok(turn.sent!.startsWith('What does greet return?'));
}, 60_000);

test('Index Workspace indexes the fixture and names what it left out', async () => {
  const w = (await vscode.commands.executeCommand('llamakv.indexWorkspace')) as { state: string; files: number; leftOut: { path: string }[] };
  assert.ok(w, 'no result');
  assert.strictEqual(w.state, 'ready');
  assert.ok(w.files >= 3, `files: ${w.files}`);
  assert.ok(w.leftOut.some((f) => f.path.includes('logo.png')), `binary not left out: ${JSON.stringify(w.leftOut)}`);
}, 60_000);

test('Clear Cache empties the KV cache', async () => {
  const kv = (await vscode.commands.executeCommand('llamakv.clearCache')) as { tokens: number } | undefined;
  assert.ok(kv, 'no result');
  assert.strictEqual(kv.tokens, 0);
}, 30_000);

test('Restart Sidecar gives a fresh process that answers', async () => {
  const pid = api.sidecarPid();
  await vscode.commands.executeCommand('llamakv.restartSidecar');
  assert.ok(api.sidecarPid() && api.sidecarPid() !== pid, 'same process');
  await sidecarReady();
}, 60_000);

export async function run(): Promise<void> {
  const results = await runAll('extension host');
  const failed = results.filter((r) => !r.ok).length;
  if (failed) throw new Error(`${failed} test(s) failed`);
}
