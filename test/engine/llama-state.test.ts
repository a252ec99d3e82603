// llama-state.test.ts — a llama.cpp state filled with its f16 cache and requantized by
// requantizeLlamaState behaves like a context filled with the quantized cache from the start:
// llama.cpp loads it, and the next-token distribution matches the directly filled one within
// quantization noise. Without the rotation llama.cpp applies to quantized caches (head size 64
// here) the same check fails by orders of magnitude, so the test can tell. Malformed files are
// refused and leave nothing behind.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { compareLogProbs, llamaCpp, logProbsOf, testModel, tmpDirsRemovedAfter } from '../helpers';
import { hadamardBlocks, llamaKvRotation, requantizeLlamaState } from '../../sidecar/llama-state';

const tmp = tmpDirsRemovedAfter();
const PROMPT = Array.from({ length: 48 }, (_, i) => 1000 + ((i * 7919) % 20000));

type Kv = 'F16' | 'Q8_0' | 'Q4_0';

/** Opens a flash-attention context with `kv`, runs `fn` on its sequence, disposes it. */
async function withSeq<T>(modelPath: string, kv: Kv, fn: (seq: import('node-llama-cpp').LlamaContextSequence) => Promise<T>): Promise<T> {
  const llama = await llamaCpp();
  const model = await llama.loadModel({ modelPath });
  try {
    const ctx = await model.createContext({
      contextSize: 256, batchSize: 64, threads: 2, flashAttention: true,
      experimentalKvCacheKeyType: kv, experimentalKvCacheValueType: kv,
    });
    try {
      return await fn(ctx.getSequence());
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** Log-probabilities of the token after `items` (the last one generates). */
async function nextLogProbs(seq: import('node-llama-cpp').LlamaContextSequence, tokens: number[]): Promise<Float64Array> {
  const items: unknown[] = tokens.slice(0, -1);
  items.push([tokens[tokens.length - 1], { generateNext: { probabilities: true } }]);
  const res = await seq.controlledEvaluate(items as never);
  return logProbsOf(res[res.length - 1]);
}

test('hadamardBlocks is orthonormal and its own inverse; llama.cpp rotation sizes', () => {
  const x = Float32Array.from({ length: 128 }, (_, i) => Math.sin(i * 1.7) + (i % 5));
  const y = Float32Array.from(x);
  hadamardBlocks(y, 64);
  const norm = (a: Float32Array, o: number) => Math.hypot(...a.subarray(o, o + 64));
  assert.ok(Math.abs(norm(x, 0) - norm(y, 0)) < 1e-4 && Math.abs(norm(x, 64) - norm(y, 64)) < 1e-4);
  assert.ok(Math.abs(y[0] - x.subarray(0, 64).reduce((s, v) => s + v, 0) / 8) < 1e-4, 'first output is the scaled sum');
  hadamardBlocks(y, 64);
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i] - y[i]) < 1e-4);
  assert.equal(llamaKvRotation('q4_0', 64, 'k'), 64);
  assert.equal(llamaKvRotation('q4_0', 128, 'k'), 128);
  assert.equal(llamaKvRotation('q4_0', 128, 'v'), 64);
  assert.equal(llamaKvRotation('q8_0', 96, 'k'), 0);
  assert.equal(llamaKvRotation('f16', 64, 'k'), 0);
});

test('an f16 llama.cpp state requantized to q8_0 / q4_0 decodes like a context filled with that cache', { timeout: 240_000 }, async () => {
  const modelPath = await testModel({ preset: 'tiny', type: 'f16', seed: 3 });
  const dir = tmp('llamakv-llama-state-');
  const f16State = path.join(dir, 'f16.state');
  await withSeq(modelPath, 'F16', async (seq) => {
    await seq.evaluateWithoutGeneratingNewTokens(PROMPT.slice(0, -1) as never);
    await seq.saveStateToFile(f16State);
  });
  const last = PROMPT.slice(-1);
  for (const [kv, to, budget] of [['Q8_0', 'q8_0', 2e-4], ['Q4_0', 'q4_0', 2e-2]] as const) {
    const direct = await withSeq(modelPath, kv, (seq) => nextLogProbs(seq, PROMPT));
    const out = path.join(dir, `${to}.state`);
    const info = requantizeLlamaState(f16State, out, to, 64);
    assert.deepEqual([info.tokens, info.cells, info.layers], [PROMPT.length - 1, PROMPT.length - 1, 2]);
    const derived = await withSeq(modelPath, kv, async (seq) => {
      await seq.loadStateFromFile(out, { acceptRisk: true });
      assert.equal(seq.nextTokenIndex, PROMPT.length - 1);
      return nextLogProbs(seq, last);
    });
    const d = compareLogProbs(direct, derived);
    // the control: the same values stored without llama.cpp's rotation (a head size it would not rotate)
    const unrotated = path.join(dir, `${to}-unrotated.state`);
    requantizeLlamaState(f16State, unrotated, to, 32);
    const wrong = await withSeq(modelPath, kv, async (seq) => {
      await seq.loadStateFromFile(unrotated, { acceptRisk: true });
      return nextLogProbs(seq, last);
    });
    const w = compareLogProbs(direct, wrong);
    if (process.env.LLAMAKV_TEST_VERBOSE) console.log(`${to}: KL derived ${d.kl.toExponential(2)}, unrotated ${w.kl.toExponential(2)}, top-1 ${d.argmaxA}/${d.argmaxB}`);
    assert.ok(d.kl < budget, `${to}: KL(direct || derived) ${d.kl.toExponential(2)} over budget ${budget}`);
    assert.ok(w.kl > 20 * d.kl, `${to}: without the rotation KL ${w.kl.toExponential(2)} should be far above ${d.kl.toExponential(2)}`);
  }
});

test('requantizeLlamaState refuses what it cannot convert and leaves no output', { timeout: 120_000 }, async () => {
  const modelPath = await testModel({ preset: 'tiny', type: 'f16', seed: 3 });
  const dir = tmp('llamakv-llama-state-bad-');
  const good = path.join(dir, 'f16.state');
  await withSeq(modelPath, 'F16', async (seq) => {
    await seq.evaluateWithoutGeneratingNewTokens(PROMPT.slice(0, 16) as never);
    await seq.saveStateToFile(good);
  });
  const out = path.join(dir, 'out.state');
  const bytes = fs.readFileSync(good);
  const cases: [string, Buffer, RegExp][] = [
    ['truncated', bytes.subarray(0, bytes.length - 100), /truncated/],
    ['not a state', Buffer.from('GGUF and more bytes than a header'), /not a llama.cpp sequence state/],
    ['trailing bytes', Buffer.concat([bytes, Buffer.alloc(8)]), /unexpected bytes/],
  ];
  for (const [name, data, re] of cases) {
    const f = path.join(dir, `${name.replace(/ /g, '-')}.state`);
    fs.writeFileSync(f, data);
    assert.throws(() => requantizeLlamaState(f, out, 'q4_0', 64), re, name);
    assert.ok(!fs.existsSync(out), `${name}: no output left`);
    assert.deepEqual(fs.readdirSync(dir).filter((x) => x.includes('.tmp')), [], `${name}: no temporary left`);
  }
  // an already quantized cache is not converted again
  const q8 = path.join(dir, 'q8.state');
  requantizeLlamaState(good, q8, 'q8_0', 64);
  assert.throws(() => requantizeLlamaState(q8, out, 'q4_0', 64), /only an f16 or f32 cache/);
});
