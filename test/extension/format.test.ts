// format.test.ts — the extension's plain functions (no VS Code needed): the status bar's words
// and figures, and the cache details picture.
import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { cacheDetailsHtml, perLayerSvg, tiersSvg, tokenTiers } from '../../extension/cachePicture';
import { bitsPerValue, escapeHtml, evictedTokens, formatBytes, savedPercent, savingsText } from '../../extension/format';
import { kvSummaryLine } from '../../sidecar/format';
import type { KvStats, StatusResult } from '../../sidecar/protocol';

test('formatBytes uses binary units with one decimal below 10 (the CLI writes sizes the same way)', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(-5), '?');
  assert.equal(formatBytes(Number.NaN), '?');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(1024), '1.0 KB');
  assert.equal(formatBytes(236 * 2 ** 20), '236 MB');
  assert.equal(formatBytes(1.9 * 2 ** 30), '1.9 GB');
  assert.equal(formatBytes(1e9), '954 MB');
  assert.equal(formatBytes(16 * 2 ** 30), '16 GB');
});

test('savingsText is the status bar figure, the CLI summary line\'s words', () => {
  assert.equal(savingsText({ f16Bytes: 1.9 * 2 ** 30, bytes: 236 * 2 ** 20 }), 'KV 1.9 GB \u2192 236 MB (\u221288%)');
  assert.equal(savingsText({ f16Bytes: 341 * 1024, bytes: 341 * 1024 }), 'KV 341 KB \u2192 341 KB (0%)');
  assert.equal(savingsText({ f16Bytes: 0, bytes: 0 }), 'KV 0 B \u2192 0 B (0%)');
  assert.equal(savedPercent({ f16Bytes: 100, bytes: 120 }), -20);
  assert.equal(savingsText({ f16Bytes: 100, bytes: 120 }), 'KV 100 B \u2192 120 B (+20%)');
  const kv = { f16Bytes: 2040109466, bytes: 247463936 };
  assert.ok(kvSummaryLine(kv, 1, 0).startsWith(`KV cache: ${savingsText(kv).slice(3)},`));
});

test('bits per value and evicted tokens', () => {
  assert.equal(bitsPerValue({ f16Bytes: 1000, bytes: 250 }), 4);
  assert.equal(bitsPerValue({ f16Bytes: 0, bytes: 0 }), 0);
  assert.equal(evictedTokens({ tokens: 100, residentTokens: 70 }), 30);
  assert.equal(evictedTokens({ tokens: 10, residentTokens: 12 }), 0);
});

test('escapeHtml escapes the five characters', () => {
  assert.equal(escapeHtml(`<a href="x" title='y'>&</a>`), '&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;');
});

const kv: KvStats = { tokens: 1000, residentTokens: 800, bytes: 2 * 2 ** 20, f16Bytes: 8 * 2 ** 20, spec: 'k4v2', perLayer: [2 ** 20, 2 ** 19, 2 ** 19], tiers: { evicted: 200, q4: 600, q8: 200 } };

test('token tiers come in precision order, or as kept/evicted without tiers', () => {
  assert.deepEqual(tokenTiers(kv).map((t) => t.name), ['q8', 'q4', 'evicted']);
  assert.deepEqual(tokenTiers({ ...kv, tiers: undefined }).map((t) => [t.name, t.tokens]), [['kept', 800], ['evicted', 200]]);
});

test('the per-layer chart has one bar per layer, the tallest full height', () => {
  const svg = perLayerSvg([2 ** 20, 2 ** 19, 2 ** 19]);
  assert.equal((svg.match(/<rect class="c-blue"/g) ?? []).length, 3);
  assert.match(svg, /height="106\.0"><title>layer 0: 1\.0 MB/);
  assert.match(perLayerSvg([]), /no per-layer bytes/);
  assert.match(tiersSvg({ ...kv, tokens: 0, residentTokens: 0, tiers: {} }), /No tokens cached/);
});

test('the cache details page has a strict CSP, no script, and escapes names', () => {
  const status: StatusResult = {
    version: '1', modelState: 'ready', kvSpec: 'k4v2', busy: false, kv,
    model: { path: '/m.gguf', name: '<b>m</b>', architecture: 'llama', nLayer: 3, nEmbd: 64, nHead: 4, nHeadKv: 2, headDim: 16, nVocab: 10, contextLength: 128, fileBytes: 1, weightType: 'f32', backend: 'cpu', backendNote: 'CUDA not used: <no driver>', demo: true },
    workspace: { root: null, state: 'ready', files: 2, tokens: 1000, leftOut: [], budgetTokens: 2000, lastPrefilledTokens: 1000, fromDisk: false },
  };
  const html = cacheDetailsHtml(status, 'https://csp.example', 'NONCE');
  assert.match(html, /content="default-src 'none'; style-src 'nonce-NONCE'; img-src https:\/\/csp\.example data:;"/);
  assert.doesNotMatch(html, /<script/i);
  assert.match(html, /&lt;b&gt;m&lt;\/b&gt;/);
  assert.match(html, /Demo model/);
  assert.match(html, /8\.0 MB → 2\.0 MB/);
  assert.match(html, /CUDA not used: &lt;no driver&gt;/); // why the backend was chosen, escaped
  assert.match(cacheDetailsHtml(undefined, 'x', 'n'), /has not reported a status yet/);
});
