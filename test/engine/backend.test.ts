// backend.test.ts — backend selection (Model.load's backend: auto | cpu | cuda) and the sidecar's
// llamakv.backend setting reaching it. Runs anywhere: without a usable GPU, "auto" must load on the
// CPU and say why, and "cuda" must fail naming the cause; with one (test/gpu/run.sh machines) the
// device cases compare CUDA sessions with CPU sessions. Device cases are skipped, never passed,
// without a GPU.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { ResponseError } from 'vscode-jsonrpc/node';
import { Model, Session } from '../../sidecar/engine';
import { nativeAddon } from '../../sidecar/native';
import { LoadModel, Status } from '../../sidecar/protocol';
import { argmax, testModel, tmpDir } from '../helpers';
import { SidecarClient } from '../sidecar/client';

let file = '';
const dir = tmpDir('llamakv-backend-');
const sys = nativeAddon().systemInfo();
const noGpu = sys.cudaAvailable ? false : `no usable CUDA device (${sys.cuda})`;

before(async () => {
  file = await testModel({ type: 'q8_0', outputScale: 4, tied: false });
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof Error, `expected an Error, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a rejection');
}

async function greedy(s: Session, n: number): Promise<number[]> {
  const gen = s.generate({ maxTokens: n, temperature: 0 });
  let r = await gen.next();
  while (!r.done) r = await gen.next();
  return r.value.tokens;
}

test('systemInfo says whether CUDA is compiled and usable', () => {
  assert.equal(typeof sys.cudaCompiled, 'boolean');
  assert.equal(typeof sys.cudaAvailable, 'boolean');
  if (!sys.cudaCompiled) assert.equal(sys.cuda, 'built without CUDA');
  if (!sys.cudaAvailable) assert.ok(sys.cuda.length > 0, 'the reason CUDA is unusable');
});

test('backend "cpu" runs on the CPU without a note', async () => {
  const m = await Model.load(file, { threads: 2, backend: 'cpu' });
  try {
    assert.equal(m.info.backend, 'cpu');
    assert.equal(m.info.backendNote, undefined);
    assert.ok(m.info.device.length > 0, 'the CPU is named');
    const s = m.createSession({ nCtx: 64, kv: 'f16' });
    assert.equal(s.backend, 'cpu');
    assert.equal(s.backendNote, '');
    const logits = await s.prefill(m.tokenize('hello world', { addBos: true }));
    assert.ok(logits && logits.every(Number.isFinite));
    s.dispose();
  } finally {
    m.dispose();
  }
});

test('backend "auto" without a usable GPU loads on the CPU and says why', { skip: sys.cudaAvailable && 'a CUDA device is present' }, async () => {
  const m = await Model.load(file, { threads: 2 }); // "auto" is the default
  try {
    assert.equal(m.info.backend, 'cpu');
    assert.ok(m.info.backendNote, 'backendNote says why CUDA was not used');
    assert.ok(m.info.backendNote!.includes(sys.cuda), `"${m.info.backendNote}" names the cause "${sys.cuda}"`);
    if (!sys.cudaCompiled) assert.match(m.info.backendNote!, /built without CUDA/);
    const s = m.createSession({ nCtx: 32, kv: 'q4' });
    assert.equal(s.backend, 'cpu');
    assert.equal(s.backendNote, '', 'a CPU model has nothing to explain per session');
    s.dispose();
  } finally {
    m.dispose();
  }
});

test('backend "cuda" without a usable GPU is an Error naming the cause', { skip: sys.cudaAvailable && 'a CUDA device is present' }, async () => {
  const e = await rejection(Model.load(file, { threads: 2, backend: 'cuda' }));
  assert.match(e.message, /backend 'cuda' is not available/);
  assert.ok(e.message.includes(sys.cuda), `"${e.message}" names the cause "${sys.cuda}"`);
  // the addon itself, not only the TypeScript wrapper, refuses
  const e2 = await rejection(nativeAddon().loadModel(file, { threads: 1, backend: 'cuda' }));
  assert.match(e2.message, /backend 'cuda' is not available/);
});

test('an unknown backend is an Error', async () => {
  const e = await rejection(Model.load(file, { backend: 'gpu' as never }));
  assert.match(e.message, /unknown backend 'gpu' \(auto, cpu or cuda\)/);
  const addon = nativeAddon();
  assert.throws(() => addon.loadModel(file, { threads: 1, backend: 'metal' as never }), /unknown backend 'metal'/);
  assert.throws(() => addon.loadModel(file, { threads: 1, backend: 7 as never }), /backend must be/);
});

test('the llamakv.backend setting reaches the engine and status reports the backend used', async () => {
  const home = path.join(dir, 'home');
  fs.mkdirSync(home, { recursive: true });
  const start = (backend: 'auto' | 'cpu' | 'cuda') =>
    SidecarClient.start({
      roots: [],
      settings: { modelPath: file, backend, storageDir: path.join(dir, `storage-${backend}`), autoIndex: false, kvSpec: 'f16' },
      env: { HOME: home, XDG_CACHE_HOME: path.join(home, '.cache') },
    });
  const cpu = await start('cpu');
  try {
    const summary = await cpu.conn.sendRequest(LoadModel, { path: file });
    assert.equal(summary.backend, 'cpu');
    assert.equal((await cpu.conn.sendRequest(Status)).model?.backend, 'cpu');
  } finally {
    await cpu.stop();
  }
  const cuda = await start('cuda');
  try {
    if (sys.cudaAvailable) {
      assert.equal((await cuda.conn.sendRequest(LoadModel, { path: file })).backend, 'cuda');
    } else {
      const e = await rejection(cuda.conn.sendRequest(LoadModel, { path: file }));
      assert.ok(e instanceof ResponseError);
      assert.match(e.message, /backend 'cuda' is not available/);
      const st = await cuda.conn.sendRequest(Status);
      assert.equal(st.modelState, 'error');
      assert.match(st.modelError ?? '', /backend 'cuda' is not available/);
    }
  } finally {
    await cuda.stop();
  }
});

// ---- with a GPU: CUDA sessions against CPU sessions on the same file ------------------------------

// Largest |a - b| over the RMS of b: test_cuda's forward budget is 2e-3. The comparisons use f16
// weights, where the CPU's optimized kernels are exact up to summation order (for q8_0 they round
// the activations to 8 bits, ~1e-2 of RMS, while the device multiplies f32 activations).
function logitDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  let ss = 0;
  for (let i = 0; i < b.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
    ss += b[i] * b[i];
  }
  return worst / Math.sqrt(ss / b.length);
}
const FORWARD_BUDGET = 2e-3;

test('CUDA sessions match CPU sessions (prefill, greedy decode, rewind, state files, stats)', { skip: noGpu }, async () => {
  const f16 = await testModel({ type: 'f16', outputScale: 4, tied: false });
  const g = await Model.load(f16, { threads: 2, backend: 'cuda' });
  const c = await Model.load(f16, { threads: 2, backend: 'cpu' });
  try {
    assert.equal(g.info.backend, 'cuda');
    assert.equal(g.info.backendNote, undefined);
    assert.match(g.info.device, /sm_\d+/);
    const prompt = g.tokenize('The quick brown fox jumps over the lazy dog. '.repeat(6), { addBos: true });
    const gs = g.createSession({ nCtx: 256, kv: 'f16' });
    const cs = c.createSession({ nCtx: 256, kv: 'f16' });
    assert.equal(gs.backend, 'cuda');
    const cl = (await cs.prefill(prompt))!;
    const d = logitDiff((await gs.prefill(prompt))!, cl);
    assert.ok(d <= FORWARD_BUDGET, `prefill: max |logit diff| ${d.toExponential(2)} of RMS (budget ${FORWARD_BUDGET})`);
    // Greedy decoding on the device (its arg-max), teacher-forced on the CPU: every device token is
    // the CPU's arg-max, or within the error budget of it (a near tie).
    const toks = await greedy(gs, 8);
    let cpuLogits = cl;
    for (const t of toks) {
      const best = cpuLogits[argmax(cpuLogits)];
      let ss = 0;
      for (const x of cpuLogits) ss += x * x;
      assert.ok(cpuLogits[t] >= best - FORWARD_BUDGET * Math.sqrt(ss / cpuLogits.length), `device token ${t} is not the CPU's arg-max`);
      if (g.isEndOfGeneration(t)) break;
      cpuLogits = (await cs.prefill([t]))!;
    }
    assert.deepEqual(gs.tokens(), cs.tokens());
    assert.deepEqual(gs.kvStats(), cs.kvStats(), 'the same accounting as the CPU f16 cache');
    // rewind, then state files move between the backends
    gs.truncate(prompt.length);
    cs.truncate(prompt.length);
    assert.equal(gs.logits(), null, 'no logits after a rewind');
    const fromGpu = path.join(dir, 'gpu.state');
    const fromCpu = path.join(dir, 'cpu.state');
    await gs.saveState(fromGpu, 'meta-g');
    await cs.saveState(fromCpu, 'meta-c');
    const g2 = g.createSession({ nCtx: 256, kv: 'f16' });
    const c2 = c.createSession({ nCtx: 256, kv: 'f16' });
    assert.equal(await g2.loadState(fromCpu), 'meta-c');
    assert.equal(await c2.loadState(fromGpu), 'meta-g');
    assert.deepEqual(g2.tokens(), prompt);
    const next = [toks[0]];
    const d2 = logitDiff((await g2.prefill(next))!, (await c2.prefill(next))!);
    assert.ok(d2 <= FORWARD_BUDGET, `after crossing state files: ${d2.toExponential(2)} of RMS`);
    for (const s of [gs, cs, g2, c2]) s.dispose();
  } finally {
    g.dispose();
    c.dispose();
  }
});

test('an evicting KV spec runs on the GPU with every token kept; a cache the device lacks falls back to the CPU', { skip: noGpu }, async () => {
  const g = await Model.load(file, { threads: 2, backend: 'auto' });
  try {
    assert.equal(g.info.backend, 'cuda');
    const prompt = g.tokenize('hello', { addBos: true });
    // balanced = 2-bit blocks plus eviction: the device keeps the format, every token kept
    const s = g.createSession({ nCtx: 64, kv: 'balanced' });
    assert.equal(s.backend, 'cuda');
    assert.match(s.backendNote, /KV spec 'balanced' runs on the GPU as 'k2,v2,g128,vg0,r32,rot,o0,b1\.0,/);
    const logits = await s.prefill(prompt);
    assert.ok(logits && logits.every(Number.isFinite));
    assert.match(s.kvStats().spec ?? '', /b1\.0/);
    s.dispose();
    // the dense f32 cache has no device form: the CPU, saying why
    const c = g.createSession({ nCtx: 64, kv: 'f32' });
    assert.equal(c.backend, 'cpu');
    assert.match(c.backendNote, /KV spec 'f32' runs on the CPU/);
    const cl = await c.prefill(prompt);
    assert.ok(cl && cl.every(Number.isFinite));
    c.dispose();
  } finally {
    g.dispose();
  }
});
