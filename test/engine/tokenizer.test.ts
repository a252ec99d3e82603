// tokenizer.test.ts — the engine's Llama 3 tokenizer against llama.cpp (node-llama-cpp, vocab only)
// on the generated tiny model, which carries the real Llama 3 vocabulary, merges and special
// tokens. Token ids must be identical, with parseSpecial on and off; decoding must give back the
// exact bytes; every token's bytes must equal llama.cpp's piece.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { tinyModel, llamaCpp, loadAddonModel, repoRoot } from '../helpers';

interface AddonTokenizer {
  tokenize(text: string, addBos: boolean, parseSpecial: boolean): Int32Array;
  tokenBytes(id: number, special: boolean): Buffer;
  dispose?(): void;
}

interface OracleModel {
  tokenize(text: string, specialTokens?: boolean): readonly number[];
  detokenize(tokens: readonly number[], specialTokens?: boolean): string;
  readonly tokens: { readonly bos: number | null };
  dispose(): Promise<void>;
}

const BOS = 128000;

// ---- corpus -----------------------------------------------------------------------------------

const CASES: Record<string, string> = {
  english: 'The quick brown fox jumps over the lazy dog. Hello, world! How are you today?',
  contractions:
    "I'm sure you're right; we've seen it, they'll come, she'd know, it's done, don't. " +
    "I'M SURE YOU'RE RIGHT; WE'VE SEEN IT, THEY'LL COME, SHE'D KNOW, IT'S DONE, DON'T. " +
    "Mixed: You'Re, We'vE, They'Ll, He'D, It'S, 'tis, rock'n'roll, o'clock, ''s, '1, ' s",
  typescript: [
    "import { readFile } from 'fs/promises';",
    '',
    'export async function load<T extends object>(path: string, fallback?: T): Promise<T> {',
    '  try {',
    "    const raw = await readFile(path, 'utf8');",
    '    return JSON.parse(raw) as T; // parse',
    '  } catch (e: unknown) {',
    '    if (fallback !== undefined) return fallback;',
    '    throw new Error(`cannot load ${path}: ${(e as Error).message}`);',
    '  }',
    '}',
    '',
    'const xs = [1, 2, 3].map((x) => x ** 2).filter((x) => x % 2 === 1);',
    '',
  ].join('\n'),
  python:
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n' +
    '        a, b = b, a + b\n    return a\n\n\nif __name__ == "__main__":\n    print(f"{fib(30)=}")  # 832040\n',
  cpp:
    '#include <vector>\n#include <cstdint>\n\ntemplate <typename T>\nstatic T sum(const std::vector<T>& v) {\n' +
    '\tT s{};\n\tfor (const auto& x : v) s += x;\n\treturn s;\n}\n\nint main(int argc, char** argv) {\n' +
    '\tstd::vector<int64_t> v{1, 2, 3};\n\treturn sum(v) == 6 ? 0 : 1;  // ok\n}\n',
  json: JSON.stringify(
    { name: 'llamakv', version: '0.1.0', nums: [1, 2.5, -3e10, 1234567890123], nested: { ok: true, none: null, s: 'é\n"q"' } },
    null,
    2,
  ),
  shell:
    '#!/usr/bin/env bash\nset -euo pipefail\nfor f in ./*.gguf; do\n  size=$(stat -c %s "$f")\n' +
    '  echo "${f##*/}: $((size / 1024)) KiB" >> /tmp/out.log 2>&1 || true\ndone\n',
  accents: 'naïve café résumé Zürich Ångström São Paulo Đà Nẵng Łódź ÆØÅ æøå ß ẞ ǅ ﬁ e\u0301 a\u0308 n\u0303',
  emoji: 'emoji 😀 👍 👍🏽 👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️‍🔥 🧑🏿‍💻 👩🏻‍🤝‍👨🏾 ✅ 🙂🙃',
  cjk: '日本語のテキストです。中文文本，包括标点符号！한국어 텍스트도 있습니다. カタカナ・ひらがな',
  arabic: 'مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣٤٥ و 12345.',
  hebrew_mixed: 'עברית with English and 123 מספרים',
  whitespace:
    '    four spaces\ttab\t\ttwo tabs  \n\n\n  trailing   \r\n\r\nwindows\r\nlines  \n \n\t\n' +
    'a  b   c    d\u00a0e\u2003f\u3000g\u2028h\u0085i\ufeffj\u200bk   ',
  blank_lines: 'first\n\n\n\n\nsecond\n\n\nthird\n',
  trailing_spaces: 'line with trailing spaces   \nanother\t \t\nend   ',
  numbers: '0 7 42 123 1234 12345 1234567890 3.14159265358979 1,000,000 0xDEADBEEF 1e-9 007 ٣٤٥٦٧ ½ ² Ⅻ',
  punctuation: '!@#$%^&*()_+-=[]{}|;\':",./<>?`~ ... !!! ??? --- === >>> <<< ::: ;;;\n\n',
  urls: 'See https://example.com/path/to?q=1&r=two#frag or mailto:someone@example.org, C:\\Windows\\System32.',
  specials: '<|begin_of_text|>hi<|eot_id|>',
  chat:
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>' +
    '<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
  special_edges: '<|eot_id|><|eot_id|> <|eot_id|>x<|reserved_special_token_5|><|eot_id <|end_of_text|>|> <|',
  unicode16: 'new letters \u1c89\u1c8a and digits \u{16d70}\u{16d71} (Unicode 16)',
  controls: 'nul\u0000soh\u0001del\u007f nbsp\u00a0 soft\u00adhyphen zwj\u200dzwnj\u200c',
  single_space: ' ',
  single_newline: '\n',
};

/** Real source text from this repository, for volume (deterministic: files in the tree). */
function repoSource(maxBytes: number): string {
  const dirs = ['native/src', 'sidecar', 'test'];
  let out = '';
  for (const d of dirs) {
    const dir = path.join(repoRoot, d);
    if (!fs.existsSync(dir)) continue;
    for (const f of fs.readdirSync(dir).sort()) {
      if (!/\.(cpp|h|ts|js|md)$/.test(f)) continue;
      const p = path.join(dir, f);
      if (!fs.statSync(p).isFile()) continue;
      out += fs.readFileSync(p, 'utf8') + '\n';
      if (out.length >= maxBytes) return out.slice(0, maxBytes);
    }
  }
  return out;
}

// ---- helpers ----------------------------------------------------------------------------------

let addon: AddonTokenizer;
let oracle: OracleModel;

async function setup(): Promise<void> {
  if (oracle) return;
  const modelPath = await tinyModel();
  addon = (await loadAddonModel(modelPath)) as unknown as AddonTokenizer;
  const llama = await llamaCpp();
  oracle = (await llama.loadModel({ modelPath, vocabOnly: true })) as unknown as OracleModel;
}

function ours(text: string, parseSpecial: boolean, addBos = false): number[] {
  return Array.from(addon.tokenize(text, addBos, parseSpecial));
}

function theirs(text: string, parseSpecial: boolean): number[] {
  return Array.from(oracle.tokenize(text, parseSpecial));
}

function decode(ids: number[], special: boolean): Buffer {
  return Buffer.concat(ids.map((id) => addon.tokenBytes(id, special)));
}

/** assert.deepEqual on long arrays prints badly: report the first differing position with context. */
function assertSameIds(label: string, text: string, got: number[], want: number[]): void {
  if (got.length === want.length && got.every((v, i) => v === want[i])) return;
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  const piece = (ids: number[]) =>
    JSON.stringify(decode(ids.slice(Math.max(0, i - 3), i + 5), true).toString('utf8'));
  assert.fail(
    `${label}: token ids differ at index ${i} (ours ${got.length} tokens, llama.cpp ${want.length})\n` +
      `  ours:      ${JSON.stringify(got.slice(Math.max(0, i - 3), i + 5))} ${piece(got)}\n` +
      `  llama.cpp: ${JSON.stringify(want.slice(Math.max(0, i - 3), i + 5))} ${piece(want)}\n` +
      `  text: ${JSON.stringify(text.length > 300 ? text.slice(0, 300) + '…' : text)}`,
  );
}

// ---- tests ------------------------------------------------------------------------------------

test('tokenizer: ids match llama.cpp on the corpus (parseSpecial true and false)', async () => {
  await setup();
  let total = 0;
  for (const [name, text] of Object.entries(CASES)) {
    for (const ps of [true, false]) {
      assertSameIds(`${name} (parseSpecial=${ps})`, text, ours(text, ps), theirs(text, ps));
    }
    total += text.length;
  }
  const corpus = Object.values(CASES).join('\n');
  assert.ok(corpus.length >= 2000, `corpus is only ${corpus.length} chars`);
  for (const ps of [true, false]) assertSameIds(`whole corpus (parseSpecial=${ps})`, corpus, ours(corpus, ps), theirs(corpus, ps));
  assert.ok(total > 0);
});

test('tokenizer: special tokens are parsed only with parseSpecial', async () => {
  await setup();
  const text = '<|begin_of_text|>hi<|eot_id|>';
  assert.deepEqual(ours(text, true), [128000, 6151, 128009]);
  const plain = ours(text, false);
  assert.ok(!plain.includes(128000) && !plain.includes(128009), `plain tokenization has specials: ${plain}`);
  assertSameIds('plain specials', text, plain, theirs(text, false));
});

test('tokenizer: addBos prepends <|begin_of_text|> only', async () => {
  await setup();
  assert.equal(oracle.tokens.bos, BOS);
  for (const text of ['hello', '', ' leading space', '<|begin_of_text|>x']) {
    for (const ps of [true, false]) {
      assert.deepEqual(ours(text, ps, true), [BOS, ...ours(text, ps, false)], JSON.stringify(text));
    }
  }
  assert.deepEqual(ours('', false, false), []);
});

test('tokenizer: ids match llama.cpp on repository source text (chunks and whole)', async () => {
  await setup();
  const src = repoSource(200_000);
  assert.ok(src.length > 10_000, `too little source text found (${src.length} chars)`);
  const chunk = 4000;
  for (let i = 0; i < src.length; i += chunk) {
    const piece = src.slice(i, i + chunk);
    assertSameIds(`source chunk @${i}`, piece, ours(piece, false), theirs(piece, false));
  }
  const t0 = process.hrtime.bigint();
  const mine = ours(src, true);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assertSameIds('whole source', src, mine, theirs(src, true));
  // generous bound (shared machines): 200 KB must take well under a second
  assert.ok(ms < 2000, `tokenizing ${src.length} chars took ${ms.toFixed(0)} ms`);
});

test('tokenizer: decode(encode(x)) gives back the exact bytes', async () => {
  await setup();
  const texts = [...Object.values(CASES), Object.values(CASES).join('\n'), repoSource(50_000)];
  for (const text of texts) {
    const want = Buffer.from(text, 'utf8');
    assert.ok(decode(ours(text, true), true).equals(want), `roundtrip (special) ${JSON.stringify(text.slice(0, 80))}`);
    assert.ok(decode(ours(text, false), false).equals(want), `roundtrip (plain) ${JSON.stringify(text.slice(0, 80))}`);
  }
});

test('tokenizer: every token decodes like llama.cpp', async () => {
  await setup();
  const n = 128256;
  let compared = 0;
  for (let id = 0; id < n; id++) {
    const mine = addon.tokenBytes(id, true);
    const s = mine.toString('utf8');
    // llama.cpp's detokenize returns a JS string: compare where the bytes are valid UTF-8. It also
    // applies clean_up_tokenization_spaces (" ." -> "." etc.), which our raw bytes must not: skip
    // tokens where that rule could apply.
    if (!Buffer.from(s, 'utf8').equals(mine)) continue;
    if (/ [?!.,']/.test(s)) continue;
    assert.equal(s, oracle.detokenize([id], true), `token ${id} (special=true)`);
    compared++;
  }
  assert.ok(compared > 100_000, `only ${compared} tokens compared`);
  // control tokens decode to nothing without `special`
  for (const id of [128000, 128001, 128006, 128007, 128009]) {
    assert.equal(addon.tokenBytes(id, false).length, 0, `token ${id} (special=false)`);
    assert.equal(oracle.detokenize([id], false), '', `llama.cpp token ${id} (special=false)`);
  }
});

test('tokenizer: teardown', async () => {
  if (addon?.dispose) addon.dispose();
  if (oracle) await oracle.dispose();
});
