// api.test.ts — the engine's JS API on a generated tiny model: streaming generation, stop
// strings, cancellation, rewind, state files, sampling, and clear errors for bad model files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { CancelledError, Model, Session } from '../../sidecar/engine';
import { ggufHeader, meta, writeGguf } from '../../sidecar/gguf/writer';
import { compareLogProbs, logSoftmax, testModel, tmpDir } from '../helpers';

let model: Model;
const dir = tmpDir();

test.before(async () => {
  model = await Model.load(await testModel({ type: 'q8_0', outputScale: 4, tied: false }), { threads: 2 });
});
test.after(() => {
  model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function collect(s: Session, opts: Parameters<Session['generate']>[0]) {
  const pieces: string[] = [];
  const gen = s.generate(opts);
  let r = await gen.next();
  while (!r.done) {
    pieces.push(r.value.text);
    r = await gen.next();
  }
  return { pieces, summary: r.value };
}

test('info describes the model', () => {
  assert.equal(model.info.architecture, 'llama');
  assert.equal(model.info.nVocab, 128256);
  assert.equal(model.info.nLayer, 2);
  assert.equal(model.info.bos, 128000);
  assert.equal(model.info.eot, 128009);
  assert.ok(model.info.chatTemplate && model.info.chatTemplate.includes('start_header_id'));
});

test('chat template renders Llama 3 headers', () => {
  const text = model.renderChat([{ role: 'user', content: 'hi' }]);
  assert.equal(text, '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  const ids = model.tokenize(text, { special: true });
  assert.equal(ids[0], 128000);
  assert.ok(ids.includes(128006) && ids.includes(128007) && ids.includes(128009));
});

test('greedy generation streams tokens, is deterministic and stays in the context', async () => {
  const prompt = model.tokenize('The quick brown fox', { addBos: true });
  const a = model.createSession({ nCtx: 128 });
  await a.prefill(prompt);
  const r1 = await collect(a, { maxTokens: 12 });
  assert.equal(r1.summary.tokens.length, 12);
  assert.equal(r1.summary.stopReason, 'length');
  assert.equal(r1.pieces.join(''), r1.summary.text);
  assert.equal(a.nTokens, prompt.length + 12);
  const b = model.createSession({ nCtx: 128 });
  await b.prefill(prompt);
  const r2 = await collect(b, { maxTokens: 12 });
  assert.deepEqual(r2.summary.tokens, r1.summary.tokens);
  a.dispose();
  b.dispose();
});

test('seeded sampling repeats with the same seed and differs with another', async () => {
  const prompt = model.tokenize('Once upon a time', { addBos: true });
  const run = async (seed: number) => {
    const s = model.createSession({ nCtx: 128 });
    await s.prefill(prompt);
    const r = await collect(s, { maxTokens: 16, temperature: 1.5, topK: 0, topP: 1, minP: 0, seed });
    s.dispose();
    return r.summary.tokens;
  };
  const x = await run(7);
  assert.deepEqual(await run(7), x);
  assert.notDeepEqual(await run(8), x);
});

test('a stop string ends generation and is not emitted; the context is rewound to it', async () => {
  const prompt = model.tokenize('Hello', { addBos: true });
  const s = model.createSession({ nCtx: 128 });
  await s.prefill(prompt);
  const free = await collect(s, { maxTokens: 10 });
  s.truncate(prompt.length);
  // choose the text of the 4th generated token as a stop string
  const stopText = model.detokenize([free.summary.tokens[3]], false);
  const s2 = model.createSession({ nCtx: 128 });
  await s2.prefill(prompt);
  const r = await collect(s2, { maxTokens: 10, stop: [stopText] });
  assert.equal(r.summary.stopReason, 'stop');
  assert.ok(!r.summary.text.includes(stopText));
  assert.equal(r.summary.text, free.summary.text.slice(0, free.summary.text.indexOf(stopText)));
  assert.ok(s2.nTokens <= prompt.length + 4);
  s.dispose();
  s2.dispose();
});

test('an AbortSignal cancels generation promptly and the session stays usable', async () => {
  const prompt = model.tokenize('Count to a thousand:', { addBos: true });
  const s = model.createSession({ nCtx: 600 });
  await s.prefill(prompt);
  const ac = new AbortController();
  const gen = s.generate({ maxTokens: 500, signal: ac.signal });
  let n = 0;
  for (let r = await gen.next(); !r.done; r = await gen.next()) {
    if (++n === 3) ac.abort();
  }
  assert.ok(n < 20, `got ${n} pieces after abort`);
  s.truncate(prompt.length);
  const logits = await s.prefill(model.tokenize(' again'));
  assert.ok(logits && logits.length === model.info.nVocab);
  s.dispose();
});

test('a cancelled prefill throws CancelledError and leaves the cache consistent', async () => {
  const s = model.createSession({ nCtx: 4096 });
  const tokens = model.tokenize('word '.repeat(1500), { addBos: true });
  const ac = new AbortController();
  const p = s.prefill(tokens, { signal: ac.signal, onProgress: () => ac.abort() });
  await assert.rejects(p, CancelledError);
  assert.ok(s.nTokens < tokens.length);
  assert.equal(s.kvStats().tokens, s.nTokens);
  await s.prefill(model.tokenize(' more'));
  s.dispose();
});

test('one operation at a time per session', async () => {
  const s = model.createSession({ nCtx: 512 });
  const p = s.prefill(model.tokenize('a b c d e f g', { addBos: true }));
  await assert.rejects(s.prefill([1, 2]), /busy/);
  await p;
  s.dispose();
});

test('truncate then re-prefill gives the same logits as a fresh session', async () => {
  const a = model.createSession({ nCtx: 256, kv: 'f32' });
  const base = model.tokenize('import numpy as np\nx = np.zeros(3)\n', { addBos: true });
  await a.prefill(base);
  await a.prefill(model.tokenize('print(x)'));
  a.truncate(base.length);
  const again = (await a.prefill(model.tokenize('y = x + 1')))!;
  const b = model.createSession({ nCtx: 256, kv: 'f32' });
  const fresh = (await b.prefill([...base, ...model.tokenize('y = x + 1')]))!;
  const d = compareLogProbs(logSoftmax(fresh), logSoftmax(again));
  assert.ok(d.maxAbsDiff < 1e-4, `max |Δ| ${d.maxAbsDiff}`);
  a.dispose();
  b.dispose();
});

test('state files round-trip, and a corrupt or mismatched one is refused without damage', async () => {
  const file = path.join(dir, 'state.lkv');
  const a = model.createSession({ nCtx: 256 });
  const toks = model.tokenize('The workspace prefix', { addBos: true });
  await a.prefill(toks);
  await a.saveState(file, '{"digest":"abc"}');
  const b = model.createSession({ nCtx: 256 });
  assert.equal(await b.loadState(file), '{"digest":"abc"}');
  assert.deepEqual(b.tokens(), toks);
  const next = model.tokenize(' continues');
  const la = (await a.prefill(next))!;
  const lb = (await b.prefill(next))!;
  assert.ok(compareLogProbs(logSoftmax(la), logSoftmax(lb)).maxAbsDiff < 1e-6);
  // corrupt one byte in the middle
  const bytes = fs.readFileSync(file);
  bytes[Math.floor(bytes.length / 2)] ^= 0xff;
  fs.writeFileSync(file, bytes);
  const c = model.createSession({ nCtx: 256 });
  await c.prefill(toks.slice(0, 2));
  await assert.rejects(c.loadState(file), /corrupt|checksum/);
  assert.equal(c.nTokens, 2);
  // a different KV spec is refused
  await a.saveState(file, '');
  const d = model.createSession({ nCtx: 256, kv: 'f32' });
  await assert.rejects(d.loadState(file), /KV spec/);
  // a file of another model is refused
  const other = await Model.load(await testModel({ type: 'q8_0', seed: 2, outputScale: 4, tied: false }), { threads: 2 });
  const e = other.createSession({ nCtx: 256 });
  await assert.rejects(e.loadState(file), /different model/);
  for (const s of [a, b, c, d, e]) s.dispose();
  other.dispose();
});

test('context overflow is a clear error', async () => {
  const s = model.createSession({ nCtx: 8 });
  await assert.rejects(s.prefill(model.tokenize('one two three four five six seven eight nine ten', { addBos: true })), /context is full/);
  s.dispose();
});

// ---- bad model files: each a clear error, never a crash -----------------------------------------

async function loadError(file: string): Promise<string> {
  try {
    const m = await Model.load(file);
    m.dispose();
  } catch (e) {
    return (e as Error).message;
  }
  return '(loaded)';
}

test('bad model files give clear errors', async () => {
  const good = await testModel({ type: 'f32', nLayer: 1 });
  const bytes = fs.readFileSync(good);
  const cases: [string, Buffer | (() => void), RegExp][] = [
    ['missing file', Buffer.alloc(0), /cannot open|no such file|not found|empty|too small|truncated/i],
    ['bad magic', Buffer.concat([Buffer.from('GGUX'), bytes.subarray(4, 4096)]), /magic|not a GGUF/i],
    ['truncated header', bytes.subarray(0, 100), /truncated/i],
    ['truncated tensor data', bytes.subarray(0, bytes.length - 1000), /truncated|past end|end of file/i],
  ];
  for (const [name, content, re] of cases) {
    const f = path.join(dir, name.replace(/ /g, '_') + '.gguf');
    if (name !== 'missing file') fs.writeFileSync(f, content as Buffer);
    const msg = await loadError(f);
    assert.match(msg, re, `${name}: ${msg}`);
  }
});

test('a file missing a tensor, with a wrong shape or another architecture is refused by name', async () => {
  const mk = (name: string, mutate: (m: Record<string, ReturnType<typeof meta.str>>, t: { name: string; ne: number[] }[]) => void) => {
    const md: Record<string, ReturnType<typeof meta.str>> = {
      'general.architecture': meta.str('llama'),
      'llama.context_length': meta.u32(128),
      'llama.embedding_length': meta.u32(32),
      'llama.block_count': meta.u32(1),
      'llama.feed_forward_length': meta.u32(64),
      'llama.attention.head_count': meta.u32(2),
      'llama.attention.head_count_kv': meta.u32(2),
      'llama.attention.layer_norm_rms_epsilon': meta.f32(1e-5),
      'tokenizer.ggml.model': meta.str('gpt2'),
      'tokenizer.ggml.pre': meta.str('llama-bpe'),
      'tokenizer.ggml.tokens': meta.strs(['a', 'b', 'c', 'ab']),
      'tokenizer.ggml.token_type': meta.i32s([1, 1, 1, 1]),
      'tokenizer.ggml.merges': meta.strs(['a b']),
      'tokenizer.ggml.bos_token_id': meta.u32(0),
      'tokenizer.ggml.eos_token_id': meta.u32(1),
    };
    const t = [
      { name: 'token_embd.weight', ne: [32, 4] },
      { name: 'output_norm.weight', ne: [32] },
      { name: 'blk.0.attn_norm.weight', ne: [32] },
      { name: 'blk.0.attn_q.weight', ne: [32, 32] },
      { name: 'blk.0.attn_k.weight', ne: [32, 32] },
      { name: 'blk.0.attn_v.weight', ne: [32, 32] },
      { name: 'blk.0.attn_output.weight', ne: [32, 32] },
      { name: 'blk.0.ffn_norm.weight', ne: [32] },
      { name: 'blk.0.ffn_gate.weight', ne: [32, 64] },
      { name: 'blk.0.ffn_up.weight', ne: [32, 64] },
      { name: 'blk.0.ffn_down.weight', ne: [64, 32] },
    ];
    mutate(md, t);
    const f = path.join(dir, `${name}.gguf`);
    writeGguf(f, md, t.map((x) => ({
      name: x.name, type: 'f32' as const, ne: x.ne,
      data: function* () { yield new Uint8Array(x.ne.reduce((a, b) => a * b, 1) * 4); },
    })));
    return f;
  };
  assert.equal(await loadError(mk('ok', () => undefined)), '(loaded)');
  assert.match(await loadError(mk('missing', (_m, t) => t.splice(t.findIndex((x) => x.name === 'blk.0.ffn_up.weight'), 1))), /missing tensor 'blk\.0\.ffn_up\.weight'/);
  assert.match(await loadError(mk('shape', (_m, t) => { t.find((x) => x.name === 'blk.0.attn_k.weight')!.ne = [32, 16]; })), /'blk\.0\.attn_k\.weight' has shape \[32, 16\], expected \[32, 32\]/);
  assert.match(await loadError(mk('arch', (m) => { m['general.architecture'] = meta.str('gpt2'); })), /architecture 'gpt2' is not supported/);
  assert.match(await loadError(mk('heads', (m) => { m['llama.attention.head_count_kv'] = meta.u32(3); })), /not a multiple/);
  assert.match(await loadError(mk('nometa', (m) => { delete m['llama.block_count']; })), /llama\.block_count/);
  void ggufHeader;
});
