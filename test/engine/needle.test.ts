// needle.test.ts — the hand-built needle model (sidecar/needle.ts): retrieves every KEY→VALUE needle
// in llamakv (f16 KV) at 1k and 4k, in llama.cpp at 1k, and in a float64 reference; and shows that
// retrieval CAN fail: a needle whose VALUE entry left the cache is not found (engine rewind and
// a simulated sliding window in the reference).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { Model } from '../../sidecar/engine';
import { evalNeedle, needlePrompt, needleVocab, queryTokens, synthNeedleModel } from '../../sidecar/needle';
import { argmax, cacheDir, llamaCpp } from '../helpers';
import { loadRefModel, refForward } from '../needle-ref';

let modelFile: Promise<string> | null = null;
/** The needle model (F16 embedding/output), generated once and cached. */
function needleModel(): Promise<string> {
  if (!modelFile) {
    modelFile = (async () => {
      const file = path.join(cacheDir, 'needle-v1-f16-seed1.gguf');
      if (!fs.existsSync(file)) {
        fs.mkdirSync(cacheDir, { recursive: true });
        const tmp = `${file}.${process.pid}.tmp`;
        await synthNeedleModel({ out: tmp, type: 'f16', seed: 1 });
        fs.renameSync(tmp, file);
      }
      return file;
    })();
  }
  return modelFile;
}

function top1(logits: ArrayLike<number>): number {
  return argmax(logits);
}

test('needle prompts: distinct keys and values at spread depths, shared haystack', () => {
  const nv = needleVocab();
  const p = needlePrompt({ contextTokens: 4096, nNeedles: 16, seed: 3 });
  assert.equal(p.tokens.length, 4095);
  assert.equal(p.tokens[0], nv.bos);
  assert.equal(new Set(p.queries.map((q) => q.key)).size, 16);
  assert.equal(new Set(p.queries.map((q) => q.value)).size, 16);
  const keys = new Set(nv.keys), values = new Set(nv.values);
  let nk = 0, nvv = 0;
  for (const t of p.tokens) { if (keys.has(t)) nk++; if (values.has(t)) nvv++; }
  assert.equal(nk, 16);
  assert.equal(nvv, 16);
  for (const q of p.queries) {
    assert.equal(p.tokens[q.pos], q.key);
    assert.equal(p.tokens[q.pos + 1], q.value);
  }
  assert.ok(p.queries[0].depth < 0.07 && p.queries[15].depth > 0.93, 'needles span the context');
  assert.deepEqual(queryTokens(p, 2).slice(-1), [p.queries[2].key]);
  assert.deepEqual(needlePrompt({ contextTokens: 4096, nNeedles: 16, seed: 3 }), p, 'deterministic');
});

test('float64 reference retrieves every needle at ~300 tokens; llamakv f32 KV matches it; a sliding window loses the far ones', async () => {
  const file = await needleModel();
  const ref = loadRefModel(file);
  const nv = needleVocab();
  const p = needlePrompt({ contextTokens: 320, nNeedles: 4, seed: 1 });
  const model = await Model.load(file, { threads: 2 });
  try {
    for (let i = 0; i < p.queries.length; i++) {
      const q = p.queries[i];
      const toks = queryTokens(p, i);
      const r = refForward(ref, toks).logits.get(toks.length - 1)!;
      assert.equal(top1(r), q.value, `reference, needle ${i} at ${q.pos}`);
      assert.ok(r[q.value] - r[nv.none] > 10, `margin ${r[q.value] - r[nv.none]}`);
      const s = model.createSession({ nCtx: toks.length, kv: 'f32' });
      const ours = (await s.prefill(toks))!;
      s.dispose();
      let maxDiff = 0;
      for (const t of [...nv.values, nv.none, ...nv.keys, 0, 1000]) maxDiff = Math.max(maxDiff, Math.abs(ours[t] - r[t]));
      assert.ok(maxDiff < 0.05, `llamakv vs float64 reference: max |Δ logit| ${maxDiff}`);
      assert.equal(top1(ours), q.value);
    }
  } finally {
    model.dispose();
  }
  // Sinks (4) + a 64-token recent window: only needles whose VALUE is inside the window survive.
  const W = 64;
  let lost = 0, kept = 0;
  for (let i = 0; i < p.queries.length; i++) {
    const q = p.queries[i];
    const toks = queryTokens(p, i);
    const T = toks.length - 1;
    const r = refForward(ref, toks, { keep: (_l, t, s) => s < 4 || t - s < W }).logits.get(T)!;
    const inside = T - (q.pos + 1) < W;
    if (inside) { assert.equal(top1(r), q.value, `windowed, near needle ${i}`); kept++; }
    else { assert.notEqual(top1(r), q.value, `windowed, far needle ${i} should be lost`); assert.equal(top1(r), nv.none); lost++; }
  }
  assert.ok(lost >= 2 && kept >= 1, `lost ${lost}, kept ${kept}`);
});

for (const ctx of [1024, 4096]) {
  test(`llamakv retrieves 16/16 needles at ${ctx} tokens with an f16 KV cache`, async () => {
    const r = await evalNeedle(await needleModel(), { contextTokens: ctx, nNeedles: 16, kv: 'f16', threads: 2 });
    const missed = r.results.filter((x) => !x.ok).map((x) => `depth ${x.depth.toFixed(2)}: ${x.predicted} != ${x.value}`);
    assert.equal(r.correct, 16, `missed: ${missed.join('; ')}`);
    assert.equal(r.accuracy, 1);
  });
}

test('balanced (40% evicted) and max (the same at 1 bit) keep every needle at 4096 tokens; the head budgets take the cut from the streaming head and hold fewer bytes than one cut for every head', async () => {
  const file = await needleModel();
  const model = await Model.load(file, { threads: 2 });
  try {
    const run = (kv: string) => evalNeedle(model, { contextTokens: 4096, nNeedles: 32, kv, seed: 1 });
    const r = await run('balanced');
    const missed = r.results.filter((x) => !x.ok).map((x) => `depth ${x.depth.toFixed(2)}`);
    assert.equal(r.correct, 32, `balanced missed: ${missed.join(', ')}`);
    assert.ok(r.kv && r.kv.f16Bytes / r.kv.bytes > 7, `balanced is ${r.kv && (r.kv.f16Bytes / r.kv.bytes).toFixed(2)}x smaller`);
    // the same budget cut evenly across heads (no head budgets) finds them too, but holds more:
    // the layer-0 previous-token head streams, and hl gives its share up
    const u = await run('balanced,hl0');
    assert.equal(u.correct, 32, `a uniform cut found ${u.correct}/32`);
    assert.ok(r.kv && u.kv && r.kv.bytes < 0.95 * u.kv.bytes, `hl holds ${r.kv?.bytes} bytes, one cut ${u.kv?.bytes}`);
    assert.equal(r.kv?.streamingHeads, 1);
    assert.ok((u.kv?.streamingHeads ?? -1) < 0, 'no head budgets, no streaming heads');
    // max: the same cut at 1 bit per key and value element
    const m = await run('max');
    assert.equal(m.correct, 32, `max missed: ${m.results.filter((x) => !x.ok).map((x) => `depth ${x.depth.toFixed(2)}`).join(', ')}`);
    assert.ok(m.kv && m.kv.f16Bytes / m.kv.bytes > 11, `max is ${m.kv && (m.kv.f16Bytes / m.kv.bytes).toFixed(2)}x smaller`);
  } finally {
    model.dispose();
  }
});

test('llama.cpp (f16 KV) retrieves 16/16 needles at 1024 tokens', async () => {
  const file = await needleModel();
  const llama = await llamaCpp();
  const model = await llama.loadModel({ modelPath: file });
  const p = needlePrompt({ contextTokens: 1024, nNeedles: 16, seed: 1 });
  try {
    const ctx = await model.createContext({
      // room past the prompt: a full context makes node-llama-cpp shift (drop) the oldest tokens
      contextSize: 1024 + 64, batchSize: 512, threads: 2, flashAttention: false,
      experimentalKvCacheKeyType: 'F16', experimentalKvCacheValueType: 'F16',
    });
    try {
      const seq = ctx.getSequence();
      await seq.evaluateWithoutGeneratingNewTokens(p.tokens as never);
      const got: number[] = [];
      for (const q of p.queries) {
        const res = await seq.controlledEvaluate([[q.key, { generateNext: { probabilities: true } }]] as never);
        const probs = (res[0] as { next: { probabilities: Map<number, number> } }).next.probabilities;
        let best = -1, bp = -1;
        for (const [t, pr] of probs) if (pr > bp) { bp = pr; best = t; }
        got.push(best);
        await seq.eraseContextTokenRanges([{ start: p.tokens.length, end: p.tokens.length + 1 }]);
        assert.equal(seq.nextTokenIndex, p.tokens.length);
      }
      assert.deepEqual(got, p.queries.map((q) => q.value));
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
});

test('retrieval fails when the needle VALUE is gone from the cache (rewind and re-fill without it)', async () => {
  const nv = needleVocab();
  const model = await Model.load(await needleModel(), { threads: 2 });
  const p = needlePrompt({ contextTokens: 1024, nNeedles: 8, seed: 2 });
  const s = model.createSession({ nCtx: 1024, kv: 'f16' });
  try {
    await s.prefill(p.tokens, { logits: false });
    const ask = async (i: number) => {
      const l = await s.prefill([p.queries[i].key]);
      s.truncate(p.tokens.length);
      return top1(l!);
    };
    const victim = 3;
    assert.equal(await ask(victim), p.queries[victim].value, 'found before the edit');
    // Rewind to just before the victim's VALUE and re-fill the rest with filler in its place.
    const vpos = p.queries[victim].pos + 1;
    s.truncate(vpos);
    const rest = p.tokens.slice(vpos);
    rest[0] = nv.filler[0];
    await s.prefill(rest, { logits: false });
    assert.equal(s.nTokens, p.tokens.length);
    assert.equal(await ask(victim), nv.none, 'the key without its value answers "none"');
    for (const i of [0, victim - 1, victim + 1, p.queries.length - 1]) {
      assert.equal(await ask(i), p.queries[i].value, `needle ${i} is still found`);
    }
  } finally {
    s.dispose();
    model.dispose();
  }
});
