// models.test.ts — model discovery over fake directory trees under a temp HOME (Ollama manifests
// and blobs, LM Studio, the Hugging Face cache with symlinked snapshots, llama.cpp's cache) and
// the GGUF header reader (architecture, dims, size, refusal of non-Llama files). Needs: nothing.
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { test } from 'node:test';
import { inspectGguf, readGgufHeader, unsupportedReason } from '../../sidecar/gguf-header';
import { ggufHeader, GgufMeta, meta } from '../../sidecar/gguf/writer';
import { discoverModels, pickModel } from '../../sidecar/models';
import { tmpDirsRemovedAfter } from '../helpers';

const tmpDir = tmpDirsRemovedAfter();

/** A GGUF file with real metadata and tensor infos but no tensor data (headers are all discovery reads). */
function fakeGguf(file: string, arch: string, opts: { tokenizer?: string; layers?: number; type?: 'q8_0' | 'q4_k' | 'q5_k' | 'f16' } = {}): void {
  const md: Record<string, GgufMeta> = {
    'general.architecture': meta.str(arch),
    'general.name': meta.str(`fake-${arch}`),
    [`${arch}.context_length`]: meta.u32(8192),
    [`${arch}.embedding_length`]: meta.u32(256),
    [`${arch}.block_count`]: meta.u32(opts.layers ?? 2),
    [`${arch}.attention.head_count`]: meta.u32(4),
    [`${arch}.attention.head_count_kv`]: meta.u32(2),
    'tokenizer.ggml.model': meta.str(opts.tokenizer ?? 'gpt2'),
    'tokenizer.ggml.tokens': meta.strs(Array.from({ length: 300 }, (_, i) => `t${i}`)),
    'tokenizer.ggml.scores': meta.f32s(Array.from({ length: 300 }, () => 0)),
  };
  const type = opts.type ?? 'q8_0';
  const tensors = [
    { name: 'token_embd.weight', type, ne: [256, 300] },
    { name: 'blk.0.attn_q.weight', type, ne: [256, 256] },
    { name: 'blk.0.attn_norm.weight', type: 'f32' as const, ne: [256] },
  ];
  const { header } = ggufHeader(md, tensors);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, header);
}

test('GGUF header: architecture, dims, predominant type, size', () => {
  const dir = tmpDir();
  const f = path.join(dir, 'm.gguf');
  fakeGguf(f, 'llama', { layers: 3, type: 'q4_k' });
  const s = inspectGguf(f);
  assert.equal(s.architecture, 'llama');
  assert.equal(s.name, 'fake-llama');
  assert.equal(s.nLayer, 3);
  assert.equal(s.nEmbd, 256);
  assert.equal(s.nHead, 4);
  assert.equal(s.nHeadKv, 2);
  assert.equal(s.headDim, 64);
  assert.equal(s.nVocab, 300, 'vocabulary size from the token array length');
  assert.equal(s.contextLength, 8192);
  assert.equal(s.weightType, 'q4_k');
  assert.deepEqual(s.weightTypes, ['q4_k', 'f32']);
  assert.equal(s.fileBytes, fs.statSync(f).size);
  assert.equal(unsupportedReason(s), null);
  const h = readGgufHeader(f);
  assert.equal(h.tensors.length, 3);
});

test('GGUF header: bad files get clear errors, never a crash', () => {
  const dir = tmpDir();
  const bad = (name: string, data: Buffer, re: RegExp) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, data);
    assert.throws(() => inspectGguf(f), re, name);
  };
  bad('empty.gguf', Buffer.alloc(0), /not a GGUF file/);
  bad('magic.gguf', Buffer.from('NOTGGUF-and-more-bytes-here-xxxx'), /bad magic/);
  const good = path.join(dir, 'good.gguf');
  fakeGguf(good, 'llama');
  const bytes = fs.readFileSync(good);
  bad('truncated.gguf', bytes.subarray(0, 200), /truncated/);
  const v9 = Buffer.from(bytes);
  v9.writeUInt32LE(9, 4);
  bad('version.gguf', v9, /version 9/);
  const huge = Buffer.from(bytes);
  huge.writeBigUInt64LE(BigInt(2) ** BigInt(40), 16); // metadata count
  bad('count.gguf', huge, /out of range/);
});

test('GGUF header: non-Llama architectures and SentencePiece Llamas are refused with a reason', () => {
  const dir = tmpDir();
  const q = path.join(dir, 'qwen.gguf');
  fakeGguf(q, 'qwen2');
  assert.match(unsupportedReason(inspectGguf(q))!, /architecture "qwen2" is not supported/);
  const l2 = path.join(dir, 'llama2.gguf');
  fakeGguf(l2, 'llama', { tokenizer: 'llama' });
  assert.match(unsupportedReason(inspectGguf(l2))!, /SentencePiece/);
});

test('GGUF header: a Llama 3 file with weight types the engine cannot read is refused, naming them', () => {
  const dir = tmpDir();
  const ok = path.join(dir, 'q5.gguf');
  fakeGguf(ok, 'llama', { type: 'q5_k' });
  assert.equal(unsupportedReason(inspectGguf(ok)), null, 'Q5_K (Q5_K_M files) is read');
  // a Q5_0 file: attn_q's type id patched to 6 (q5_0) after its name, dims and dim count
  const q50 = path.join(dir, 'q5_0.gguf');
  fakeGguf(q50, 'llama', { type: 'q4_k' });
  const bytes = fs.readFileSync(q50);
  const name = Buffer.from('blk.0.attn_q.weight');
  const at = bytes.indexOf(name) + name.length + 4 + 2 * 8;  // n_dims u32, two u64 dims
  assert.equal(bytes.readUInt32LE(at), 12, 'the q4_K type id where the patch goes');
  bytes.writeUInt32LE(6, at);
  fs.writeFileSync(q50, bytes);
  const s = inspectGguf(q50);
  assert.deepEqual(s.weightTypes.sort(), ['f32', 'q4_k', 'q5_0']);
  assert.match(unsupportedReason(s)!, /weight type q5_0 is not supported: llamakv reads .*Q2_K-Q6_K.*IQ4_XS/);
});

test('discovery: Ollama, LM Studio, Hugging Face, llama.cpp and the setting, under a fake HOME', () => {
  const home = tmpDir('llamakv-home-');
  // Ollama: manifest → blob
  const hex = 'a'.repeat(64);
  fakeGguf(path.join(home, '.ollama/models/blobs', `sha256-${hex}`), 'llama');
  const manifest = { schemaVersion: 2, layers: [{ mediaType: 'application/vnd.ollama.image.model', digest: `sha256:${hex}`, size: 1 }, { mediaType: 'application/vnd.ollama.image.template', digest: `sha256:${'b'.repeat(64)}` }] };
  fs.mkdirSync(path.join(home, '.ollama/models/manifests/registry.ollama.ai/library/llama3.2'), { recursive: true });
  fs.writeFileSync(path.join(home, '.ollama/models/manifests/registry.ollama.ai/library/llama3.2/1b'), JSON.stringify(manifest));
  fs.mkdirSync(path.join(home, '.ollama/models/manifests/registry.ollama.ai/library/broken'), { recursive: true });
  fs.writeFileSync(path.join(home, '.ollama/models/manifests/registry.ollama.ai/library/broken/latest'), '{not json');
  // LM Studio (both locations), one of them a non-Llama model
  fakeGguf(path.join(home, '.lmstudio/models/lmstudio-community/Meta-Llama-3-8B-GGUF/Meta-Llama-3-8B-Q4_K_M.gguf'), 'llama');
  fakeGguf(path.join(home, '.cache/lm-studio/models/Qwen/Qwen2-GGUF/qwen2-q8_0.gguf'), 'qwen2');
  // Hugging Face hub: snapshot symlink → blob
  const hfRepo = path.join(home, '.cache/huggingface/hub/models--bartowski--Llama-3.2-1B-Instruct-GGUF');
  fakeGguf(path.join(hfRepo, 'blobs', 'c'.repeat(64)), 'llama');
  fs.mkdirSync(path.join(hfRepo, 'snapshots/rev1'), { recursive: true });
  fs.symlinkSync(path.join(hfRepo, 'blobs', 'c'.repeat(64)), path.join(hfRepo, 'snapshots/rev1/Llama-3.2-1B-Instruct-Q8_0.gguf'));
  fs.symlinkSync(path.join(hfRepo, 'blobs', 'missing'), path.join(hfRepo, 'snapshots/rev1/partial.gguf')); // dangling
  // llama.cpp cache, plus a corrupt file
  fakeGguf(path.join(home, '.cache/llama.cpp/bartowski_Llama-3.2-3B-Instruct-GGUF_Llama-3.2-3B-Instruct-Q4_K_M.gguf'), 'llama');
  fs.writeFileSync(path.join(home, '.cache/llama.cpp/corrupt.gguf'), 'GGUF but not really');
  // explicit setting
  const setting = path.join(home, 'models/mine.gguf');
  fakeGguf(setting, 'llama');

  const found = discoverModels({ home, env: {}, setting });
  const by = (name: string) => found.find((m) => m.name === name);
  assert.equal(found[0].source, 'setting');
  assert.equal(found[0].path, setting);
  assert.equal(by('llama3.2:1b')?.source, 'ollama');
  assert.equal(by('llama3.2:1b')?.usable, true);
  assert.equal(by('lmstudio-community/Meta-Llama-3-8B-GGUF/Meta-Llama-3-8B-Q4_K_M.gguf')?.source, 'lmstudio');
  const qwen = by('Qwen/Qwen2-GGUF/qwen2-q8_0.gguf')!;
  assert.equal(qwen.usable, false);
  assert.equal(qwen.architecture, 'qwen2');
  assert.match(qwen.reason!, /not supported/);
  const hf = by('bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q8_0.gguf')!;
  assert.equal(hf.source, 'huggingface');
  assert.ok(hf.bytes > 0);
  assert.equal(by('bartowski_Llama-3.2-3B-Instruct-GGUF_Llama-3.2-3B-Instruct-Q4_K_M.gguf')?.source, 'llama.cpp');
  const corrupt = by('corrupt.gguf')!;
  assert.equal(corrupt.usable, false);
  assert.match(corrupt.reason!, /GGUF/);
  assert.equal(found.filter((m) => m.name.includes('partial')).length, 0, 'dangling links are skipped');
  assert.equal(pickModel(found)?.path, setting);
  assert.equal(pickModel(discoverModels({ home, env: {} }))?.source, 'ollama');

  // environment overrides
  const other = tmpDir('llamakv-ollama-');
  assert.equal(discoverModels({ home: tmpDir(), env: { OLLAMA_MODELS: other } }).length, 0);
  assert.deepEqual(discoverModels({ home: tmpDir(), env: {} }), []);
  const missing = discoverModels({ home: tmpDir(), env: {}, setting: '/nonexistent/model.gguf' });
  assert.equal(missing[0].usable, false);
  assert.match(missing[0].reason!, /not found/);
});
