// server.test.ts — the real sidecar over stdio (no mocks of the engine): initialize, status,
// malformed requests, indexing a fixture workspace with work-done progress, explain with streamed
// partial results, cancel mid-answer and ask again, queued concurrent requests, an edit that
// re-prefills only the tail, a restart that reloads the cache from disk, a corrupt cache that is
// rebuilt, clearing the cache. Needs: the built addon and the generated tiny model.
import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'url';
import { CancellationTokenSource, ProgressType, ResponseError } from 'vscode-jsonrpc/node';
import { CacheStats, Chat, ChatResult, ClearCache, ExplainFile, IndexWorkspace, KvStats, LoadModel, SidecarSettings, Status, UpdateSettings, WorkspaceState } from '../../sidecar/protocol';
import { WorkspacePrefix } from '../../sidecar/prefix-cache';
import { ggufHeader, meta } from '../../sidecar/gguf/writer';
import { repoRoot, tinyModel, tmpDir } from '../helpers';
import { SidecarClient } from './client';
import { appSource, FixtureWorkspace, makeWorkspace } from './fixtures';

const addon = path.join(repoRoot, 'build', 'native', 'Release', 'llamakv.node');
const skip = !fs.existsSync(addon) && !process.env.LLAMAKV_ADDON ? 'native addon not built (npm run build:native)' : false;

let model = '';
let base = '';
let ws: FixtureWorkspace;
let storage = '';
let home = '';
let client: SidecarClient | null = null;
const clients: SidecarClient[] = [];

// LLAMAKV_TEST_KV runs the suite with another KV spec (e.g. a compression preset).
const kvSpec = process.env.LLAMAKV_TEST_KV ?? 'f16';

function settings(over: Partial<SidecarSettings> = {}): Partial<SidecarSettings> {
  return { modelPath: model, storageDir: storage, contextMaxTokens: 4096, autoIndex: false, persistCache: true, kvSpec, ...over };
}

async function start(over: Partial<SidecarSettings> = {}, env: NodeJS.ProcessEnv = {}): Promise<SidecarClient> {
  const c = await SidecarClient.start({ roots: [ws.root], settings: settings(over), env: { HOME: home, XDG_CACHE_HOME: path.join(home, '.cache'), ...env } });
  clients.push(c);
  return c;
}

async function rpcError(p: Promise<unknown>): Promise<ResponseError<unknown>> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ResponseError, `expected a JSON-RPC error, got ${e}`);
    return e as ResponseError<unknown>;
  }
  assert.fail('expected the request to fail');
}

const uri = (rel: string) => pathToFileURL(path.join(ws.root, rel)).href;

before(async () => {
  if (skip) return;
  model = await tinyModel();
  base = tmpDir('llamakv-sidecar-');
  ws = makeWorkspace(path.join(base, 'ws'));
  storage = path.join(base, 'storage');
  home = path.join(base, 'home');
  cleanup.push(base);
  fs.mkdirSync(home, { recursive: true });
});

const cleanup: string[] = [];
after(async () => {
  for (const c of clients) await c.stop().catch(() => undefined);
  for (const d of cleanup) fs.rmSync(d, { recursive: true, force: true });
});

test('initialize and status before anything is loaded', { skip }, async () => {
  client = await start();
  const s = await client.conn.sendRequest(Status);
  assert.equal(s.modelState, 'none');
  assert.equal(s.model, null);
  assert.equal(s.workspace.state, 'none');
  assert.equal(s.workspace.root, ws.root);
  assert.equal(s.kvSpec, kvSpec);
  assert.equal(s.busy, false);
  assert.match(s.version, /^\d+\.\d+\.\d+/);
});

test('malformed requests get clear JSON-RPC errors and the server lives on', { skip }, async () => {
  const c = client!;
  const e1 = await rpcError(c.conn.sendRequest(Chat, { messages: 'hello' } as never));
  assert.equal(e1.code, -32602);
  assert.match(e1.message, /messages must be a non-empty array/);
  const e2 = await rpcError(c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'x' }], context: 'everything' } as never));
  assert.match(e2.message, /context must be/);
  const e3 = await rpcError(c.conn.sendRequest(ExplainFile, {} as never));
  assert.equal(e3.code, -32602);
  assert.match(e3.message, /uri: string/);
  const e4 = await rpcError(c.conn.sendRequest(LoadModel, { path: 42 } as never));
  assert.match(e4.message, /path: string/);
  const e5 = await rpcError(c.conn.sendRequest(ExplainFile, { uri: 'file:///nonexistent/file.ts', maxTokens: 4 }));
  assert.match(e5.message, /file not found/);
  assert.equal((await c.conn.sendRequest(Status)).modelState, 'none', 'rejected before any engine work');
  // a non-Llama model is refused with its reason
  const qwen = path.join(base, 'qwen.gguf');
  fs.writeFileSync(qwen, ggufHeader({ 'general.architecture': meta.str('qwen2'), 'tokenizer.ggml.model': meta.str('gpt2') }, []).header);
  const e6 = await rpcError(c.conn.sendRequest(LoadModel, { path: qwen }));
  assert.match(e6.message, /architecture "qwen2" is not supported/);
  const e7 = await rpcError(c.conn.sendRequest('llamakv/noSuchMethod', {}));
  assert.equal(e7.code, -32601);
  await c.conn.sendNotification(UpdateSettings, 'garbage' as never);
  await c.conn.sendNotification(UpdateSettings, { contextMaxTokens: 'big' } as never);
  const s = await c.conn.sendRequest(Status);
  assert.ok(s.version, 'still answering');
  assert.equal(c.proc.exitCode, null);
  assert.match(c.stderr, /ignoring contextMaxTokens/);
});

let indexed: WorkspaceState;

test('indexing the fixture workspace: work-done progress, stated rules, budget', { skip }, async () => {
  const c = client!;
  const progress = c.collectProgress('index-1');
  indexed = await c.conn.sendRequest(IndexWorkspace, { workDoneToken: 'index-1' });
  assert.equal(indexed.state, 'ready');
  assert.ok(indexed.files > 5, `files: ${indexed.files}`);
  assert.ok(indexed.tokens > 1000 && indexed.tokens <= indexed.budgetTokens, `tokens ${indexed.tokens} within budget ${indexed.budgetTokens}`);
  assert.equal(indexed.lastPrefilledTokens, indexed.tokens);
  assert.equal(indexed.fromDisk, false);
  const reasons = (r: string) => indexed.leftOut.filter((l) => l.reason === r).map((l) => l.path);
  assert.ok(reasons('ignored').includes('build-output/'));
  assert.ok(reasons('binary').includes('assets/logo.png'));
  assert.ok(reasons('too-large').includes('src/huge.ts'));
  assert.ok(reasons('generated').includes('package-lock.json'));
  assert.ok(reasons('budget').length > 0, 'some copied sources do not fit the 4k context');
  // the newest files (the app modules) are admitted and laid out last
  const inc = indexed.included!.map((f) => f.path);
  assert.deepEqual(inc.slice(-ws.appFiles.length), ws.appFiles);
  assert.equal(indexed.included!.length, indexed.files);
  assert.ok(indexed.persisted && fs.existsSync(indexed.persisted.file), 'saved to disk');
  // progress: begin … report … end
  await waitUntil(() => progress.some((p) => p.kind === 'end'));
  assert.equal(progress[0].kind, 'begin');
  assert.ok(progress.some((p) => p.kind === 'report' && p.percentage === 100));
  const s = await c.conn.sendRequest(Status);
  assert.equal(s.modelState, 'ready');
  assert.equal(s.model!.architecture, 'llama');
  assert.equal(s.model!.demo, false);
  assert.equal(s.kv.tokens, indexed.tokens);
  assert.ok(s.kv.spec, 'the engine names its spec');
  await waitUntil(() => c.stats.some((x) => x.workspace.state === 'ready'));
});

async function waitUntil(pred: () => boolean, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 50));
  }
}

let firstAnswer: ChatResult;

test('explain streams partial results and reuses the warm prefix', { skip }, async () => {
  const c = client!;
  const deltas = c.collectDeltas('explain-1');
  const r = await c.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[3]), maxTokens: 16, partialResultToken: 'explain-1' });
  firstAnswer = r;
  assert.ok(r.text.length > 0);
  assert.ok(deltas.length >= 2, `streamed in ${deltas.length} deltas`);
  assert.equal(deltas.join(''), r.text);
  assert.equal(r.usage.cachedTokens, indexed.tokens, 'no prefill of the workspace');
  assert.ok(r.usage.promptTokens > r.usage.cachedTokens);
  assert.ok(r.usage.completionTokens > 0 && r.usage.completionTokens <= 16);
  assert.equal(r.context.mode, 'workspace');
  assert.equal(r.context.files, indexed.files);
  assert.equal(r.demo, false);
  assert.ok(r.kv.tokens >= r.usage.promptTokens, 'kv measured with the question and answer in it');
  assert.ok(r.kv.f16Bytes > 0 && r.kv.bytes > 0);
  // rewound to the workspace checkpoint
  const kv: KvStats = await c.conn.sendRequest(CacheStats);
  assert.equal(kv.tokens, indexed.tokens);
  const s = await c.conn.sendRequest(Status);
  assert.equal(s.workspace.lastPrefilledTokens, 0);
});

test('explain of a huge file outside the workspace reads only what fits the context', { skip, timeout: 60_000 }, async () => {
  const c = client!;
  // a 3 GiB log (sparse: 256 KiB of lines, then a hole): more than Node reads into one buffer,
  // so reading it whole fails; the sidecar reads what the context can hold and cuts it there
  const big = path.join(base, 'big.log');
  const line = 'INFO request handled in 12 ms by worker 7 of the pool\n';
  fs.writeFileSync(big, line.repeat(Math.ceil((256 << 10) / line.length)));
  fs.truncateSync(big, 3 * 2 ** 30);
  try {
    const r = await c.conn.sendRequest(ExplainFile, { uri: pathToFileURL(big).href, maxTokens: 4 });
    assert.equal(r.context.mode, 'workspace');
    assert.ok(r.usage.promptTokens <= 4096 - 4, `prompt ${r.usage.promptTokens} tokens fits the 4096-token context`);
    assert.ok(r.usage.promptTokens > indexed.tokens + 16, `the file went with the question (${r.usage.promptTokens} tokens, the workspace ${indexed.tokens})`);
  } finally {
    fs.rmSync(big, { force: true });
  }
});

test('cancel mid-answer stops promptly, keeps the cache, and the next answer is the same as before', { skip }, async () => {
  const c = client!;
  const cts = new CancellationTokenSource();
  const deltas = c.collectDeltas('explain-2', (_d, all) => {
    if (all.length === 3) cts.cancel();
  });
  const t0 = Date.now();
  const r = await c.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[3]), maxTokens: 400, partialResultToken: 'explain-2' }, cts.token);
  assert.equal(r.stopReason, 'cancelled');
  assert.ok(r.usage.completionTokens < 400, `stopped after ${r.usage.completionTokens} tokens`);
  assert.ok(deltas.length >= 3);
  assert.ok(Date.now() - t0 < 30000);
  const kv: KvStats = await c.conn.sendRequest(CacheStats);
  assert.equal(kv.tokens, indexed.tokens, 'rewound to the workspace checkpoint');
  const again = await c.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[3]), maxTokens: 16 });
  assert.equal(again.usage.cachedTokens, indexed.tokens);
  assert.equal(again.text, firstAnswer.text, 'greedy answer identical: the cache was restored exactly');
});

test('concurrent requests queue: one generation at a time, all answered', { skip }, async () => {
  const c = client!;
  const ask = (q: string) => c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: q }], context: 'workspace', maxTokens: 6 });
  const pending = [ask('What does module 1 export?'), ask('What does module 2 export?'), c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'hi' }], context: 'none', maxTokens: 4 })];
  const mid = await c.conn.sendRequest(Status);
  const results = await Promise.all(pending);
  for (const r of results) assert.ok(r.usage.completionTokens > 0);
  assert.equal(results[2].context.mode, 'none');
  assert.equal(results[0].usage.cachedTokens, indexed.tokens);
  assert.ok(mid.busy, 'status answers while the engine is busy');
  assert.ok(mid.queue!.waiting >= 1, `queued: ${JSON.stringify(mid.queue)}`);
  const fileChat = await c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'Summarize.' }], context: 'file', uri: uri(ws.appFiles[0]), maxTokens: 4 });
  assert.equal(fileChat.context.mode, 'file');
  const kv = await c.conn.sendRequest(CacheStats);
  assert.equal(kv.tokens, indexed.tokens);
});

test('an edit re-prefills only from the first changed file', { skip }, async () => {
  const c = client!;
  const target = ws.appFiles[3];
  const inc = indexed.included!;
  const at = inc.findIndex((f) => f.path === target);
  const suffix = inc.slice(at).reduce((n, f) => n + f.tokens, 0);
  const kept = indexed.tokens - suffix;
  // same length, newer mtime: the file moves to the end of the stable-first order
  const p = path.join(ws.root, target);
  fs.writeFileSync(p, appSource(3, 2));
  const now = Date.now() / 1000 + 5;
  fs.utimesSync(p, now, now);
  const r = await c.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.firstChanged, target);
  assert.equal(r.included![r.included!.length - 1].path, target);
  assert.ok(r.reusedTokens! >= kept && r.reusedTokens! < kept + 16, `reused ${r.reusedTokens}, expected ~${kept}`);
  assert.equal(r.lastPrefilledTokens, r.tokens - r.reusedTokens!);
  assert.ok(r.lastPrefilledTokens < r.tokens / 4, `prefilled ${r.lastPrefilledTokens} of ${r.tokens}`);

  // unsaved editor text wins over disk: an open, edited document moves to the end
  const other = ws.appFiles[5];
  await c.conn.sendNotification('textDocument/didOpen', { textDocument: { uri: uri(other), languageId: 'typescript', version: 1, text: appSource(5) } });
  await c.conn.sendNotification('textDocument/didChange', {
    textDocument: { uri: uri(other), version: 2 },
    // VALUE_5 = 1 → 3: same length, so the budget admits the same files
    contentChanges: [{ range: { start: { line: 1, character: 23 }, end: { line: 1, character: 24 } }, text: '3' }],
  });
  const r2 = await c.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r2.included![r2.included!.length - 1].path, other);
  assert.ok(r2.lastPrefilledTokens > 0 && r2.lastPrefilledTokens < r2.tokens / 4, `prefilled ${r2.lastPrefilledTokens}`);
  await c.conn.sendNotification('textDocument/didClose', { textDocument: { uri: uri(other) } });
  indexed = await c.conn.sendRequest(IndexWorkspace, {});
  assert.equal(indexed.state, 'ready');
});

let beforeRestart: ChatResult;

test('restart: the cache is reloaded from disk, no prefill, same answers', { skip }, async () => {
  beforeRestart = await client!.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[1]), maxTokens: 12 });
  assert.equal(await client!.stop(), 0);
  client = await start();
  const r = await client.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.fromDisk, true);
  assert.equal(r.lastPrefilledTokens, 0);
  assert.equal(r.tokens, indexed.tokens);
  assert.match(client.stderr, /prefix cache: loaded/);
  const a = await client.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[1]), maxTokens: 12 });
  assert.equal(a.text, beforeRestart.text);
  assert.equal(a.usage.cachedTokens, indexed.tokens);
});

test('a corrupt or stale cache file is discarded with a log line and rebuilt', { skip }, async () => {
  const files = WorkspacePrefix.files(path.join(storage, 'prefix-cache'), [ws.root]);
  // 1: flip bytes in the middle of the engine's state file
  assert.equal(await client!.stop(), 0);
  const buf = fs.readFileSync(files.state);
  for (let i = 0; i < 16; i++) buf[Math.floor(buf.length / 2) + i] ^= 0xff;
  fs.writeFileSync(files.state, buf);
  client = await start();
  let r = await client.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.fromDisk, false);
  assert.equal(r.lastPrefilledTokens, r.tokens);
  assert.match(client.stderr, /prefix cache: discarding .*(corrupt|checksum)/);
  const a = await client.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[1]), maxTokens: 12 });
  // (with adaptive compression an incrementally updated prefix keeps eviction decisions made with
  // the old tail, so only the uncompressed cache is bit-identical to a fresh rebuild)
  if (kvSpec === 'f16') assert.equal(a.text, beforeRestart.text, 'the rebuilt cache answers the same');
  // 2: damage the metadata file
  assert.equal(await client.stop(), 0);
  fs.appendFileSync(files.meta, ' ');
  client = await start();
  r = await client.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.fromDisk, false);
  assert.match(client.stderr, /discarding .*checksum mismatch/);
  // 3: another KV spec makes it stale (the engine may reject the spec and fall back to f16;
  //    either way the context size changes the identity)
  assert.equal(await client.stop(), 0);
  client = await start({ contextMaxTokens: 3072 });
  r = await client.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.fromDisk, false);
  assert.match(client.stderr, /discarding .*stale/);
  // and the rebuilt one loads next time
  assert.equal(await client.stop(), 0);
  client = await start({ contextMaxTokens: 3072 });
  r = await client.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.fromDisk, true);
  assert.equal(r.lastPrefilledTokens, 0);
});

test('clearCache empties the prefix and deletes the file', { skip }, async () => {
  const c = client!;
  const kv = await c.conn.sendRequest(ClearCache);
  assert.equal(kv.tokens, 0);
  const files = WorkspacePrefix.files(path.join(storage, 'prefix-cache'), [ws.root]);
  assert.ok(!fs.existsSync(files.state) && !fs.existsSync(files.meta));
  const s = await c.conn.sendRequest(Status);
  assert.equal(s.workspace.state, 'none');
  assert.equal(s.kv.tokens, 0);
  // and it still answers (re-indexing on demand)
  const r = await c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'hi' }], context: 'workspace', maxTokens: 3 });
  assert.ok(r.usage.cachedTokens === 0 && r.usage.promptTokens > 1000);
  await c.stop();
});

test('cancelling an indexing keeps the valid part of the prefix; the next one continues from there', { skip }, async () => {
  const fresh = tmpDir('llamakv-store-');
  cleanup.push(fresh);
  const c = await start({ storageDir: fresh });
  const cts = new CancellationTokenSource();
  c.conn.onProgress(new ProgressType<{ kind: string; percentage?: number }>(), 'index-c', (v) => {
    if (v.kind === 'report' && (v.percentage ?? 0) > 0) cts.cancel();
  });
  const err = await rpcError(c.conn.sendRequest(IndexWorkspace, { workDoneToken: 'index-c' }, cts.token));
  assert.equal(err.code, -32800, 'RequestCancelled');
  const s = await c.conn.sendRequest(Status);
  assert.ok(s.workspace.tokens > 0 && s.workspace.tokens < indexed.tokens, `kept ${s.workspace.tokens} of ~${indexed.tokens}`);
  assert.equal(s.kv.tokens, s.workspace.tokens);
  const r = await c.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.reusedTokens, s.workspace.tokens);
  assert.equal(r.lastPrefilledTokens, r.tokens - s.workspace.tokens);

  // a KV memory budget bounds the workspace: the tiny model's f16 cache is 1 KiB per token
  // (compressed specs fit more tokens in the same bytes once their ratio has been seen)
  await c.conn.sendNotification(UpdateSettings, { kvBudgetMB: 1 });
  const b = await c.conn.sendRequest(IndexWorkspace, {});
  if (kvSpec === 'f16') assert.ok(b.budgetTokens <= 1024 && b.tokens <= 1024, `budget ${b.budgetTokens}, tokens ${b.tokens}`);
  assert.ok(b.tokens > 0);
  const kv = await c.conn.sendRequest(CacheStats);
  assert.ok(kv.bytes <= 1024 * 1024, `kv bytes ${kv.bytes}`);
  assert.equal(await c.stop(), 0);
});

test('autoIndex: `llamakv serve --stdio` builds the cache by itself, with server-created progress and statsChanged', { skip }, async () => {
  const fresh = tmpDir('llamakv-store-');
  cleanup.push(fresh);
  const c = await SidecarClient.start({ roots: [ws.root], settings: settings({ storageDir: fresh, autoIndex: true }), env: { HOME: home }, viaCli: true });
  clients.push(c);
  const s = await c.waitForStatus((x) => x.workspace.state === 'ready');
  assert.ok(s.workspace.tokens > 1000);
  assert.ok(c.createdProgress.length >= 1, 'the server created a work-done token for the background prefill');
  await waitUntil(() => c.stats.some((x) => x.workspace.state === 'ready' && x.kv.tokens === s.workspace.tokens));
  // an edit on disk is picked up by the next question without asking for indexing
  const p = path.join(ws.root, ws.appFiles[6]);
  fs.writeFileSync(p, appSource(6, 4));
  const later = Date.now() / 1000 + 20;
  fs.utimesSync(p, later, later);
  const r = await c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'What is VALUE_6?' }], context: 'workspace', maxTokens: 3 });
  assert.ok(r.usage.cachedTokens < s.workspace.tokens && r.usage.cachedTokens > s.workspace.tokens / 2, `cached ${r.usage.cachedTokens}`);
  const after = await c.conn.sendRequest(Status);
  assert.equal(after.workspace.included![after.workspace.included!.length - 1].path, ws.appFiles[6]);
  assert.equal(await c.stop(), 0);
});

test('persistCache off: nothing is reused across restarts, the per-process checkpoint is removed at exit', { skip }, async () => {
  const fresh = tmpDir('llamakv-store-');
  cleanup.push(fresh);
  // a checkpoint left by a sidecar that was killed (its pid is gone) is swept; a live one's stays
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  const stale = path.join(fresh, 'prefix-cache', `checkpoint-${dead}.kvstate`);
  const live = path.join(fresh, 'prefix-cache', `checkpoint-${process.pid}.kvstate`);
  fs.mkdirSync(path.dirname(stale), { recursive: true });
  fs.writeFileSync(stale, 'left behind');
  fs.writeFileSync(live, 'still in use');
  const c = await start({ storageDir: fresh, persistCache: false, contextMaxTokens: 2048 });
  const r = await c.conn.sendRequest(IndexWorkspace, {});
  assert.equal(r.persisted, null);
  const ask = () => c.conn.sendRequest(ExplainFile, { uri: uri(ws.appFiles[0]), maxTokens: 6 });
  const a = await ask();
  const b = await ask();
  assert.equal(a.text, b.text);
  const dir = path.join(fresh, 'prefix-cache');
  assert.deepEqual(fs.readdirSync(dir).filter((f) => !f.startsWith('checkpoint-')), []);
  assert.ok(!fs.existsSync(stale), 'the dead sidecar\'s checkpoint was swept');
  assert.ok(fs.existsSync(live), 'a running process keeps its checkpoint');
  assert.equal(await c.stop(), 0);
  fs.rmSync(live);
  assert.deepEqual(fs.readdirSync(dir), [], 'checkpoint removed');
});

test('no model anywhere: the demo model is generated, used and flagged everywhere', { skip }, async () => {
  const emptyHome = tmpDir('llamakv-emptyhome-');
  const demoStorage = tmpDir('llamakv-demo-');
  cleanup.push(emptyHome, demoStorage);
  const c = await SidecarClient.start({
    roots: [ws.root],
    settings: { storageDir: demoStorage, contextMaxTokens: 2048, autoIndex: false, kvSpec: 'f16' },
    env: { HOME: emptyHome, XDG_CACHE_HOME: path.join(emptyHome, '.cache') },
  });
  clients.push(c);
  const r = await c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'hello' }], context: 'none', maxTokens: 3 });
  assert.equal(r.demo, true);
  assert.match(r.notice!, /meaningless/);
  const s = await c.conn.sendRequest(Status);
  assert.equal(s.model!.demo, true);
  assert.equal(s.modelSource, 'demo');
  assert.match(s.notice!, /meaningless/);
  assert.ok(fs.existsSync(path.join(demoStorage, 'llamakv-demo-llama3.gguf')));
  assert.equal(await c.stop(), 0);
});

test('no model anywhere and no room to make the demo one: a model error, not "loading" for ever', { skip }, async () => {
  const emptyHome = tmpDir('llamakv-emptyhome-');
  cleanup.push(emptyHome);
  const notADir = path.join(emptyHome, 'storage-is-a-file');
  fs.writeFileSync(notADir, 'x');
  const c = await SidecarClient.start({
    roots: [ws.root],
    settings: { storageDir: notADir, contextMaxTokens: 2048, autoIndex: false, kvSpec: 'f16' },
    env: { HOME: emptyHome, XDG_CACHE_HOME: path.join(emptyHome, '.cache') },
  });
  clients.push(c);
  const e = await rpcError(c.conn.sendRequest(Chat, { messages: [{ role: 'user', content: 'hello' }], context: 'none', maxTokens: 3 }));
  assert.match(e.message, /demo model could not be made/);
  const s = await c.conn.sendRequest(Status);
  assert.equal(s.modelState, 'error');
  assert.match(s.modelError ?? '', /demo model could not be made/);
  assert.equal(await c.stop(), 0);
});
