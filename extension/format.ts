// format.ts — plain functions that turn sidecar numbers into the words and figures the user reads
// (status bar, tooltips, cache details). No `vscode` import, so node tests can load it.
import type { KvStats } from '../sidecar/protocol';

const MINUS = '\u2212'; // typographic minus, as in "−88%"

/** Decimal units, like the OS file manager: 236 MB, 1.9 GB. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n <= 0) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = i === 0 || v >= 100 ? 0 : v >= 10 ? 0 : 1;
  return `${v.toFixed(digits)} ${units[i]}`;
}

export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** Fraction of the f16 cache saved, in whole percent (0 when nothing is cached). */
export function savedPercent(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>): number {
  if (kv.f16Bytes <= 0) return 0;
  return Math.round((1 - kv.bytes / kv.f16Bytes) * 100);
}

/** "KV 1.9 GB → 236 MB (−88%)": what an f16 cache would hold, what is held, the saving. */
export function savingsText(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>): string {
  const pct = savedPercent(kv);
  const sign = pct > 0 ? MINUS : pct < 0 ? '+' : '';
  return `KV ${formatBytes(kv.f16Bytes)} \u2192 ${formatBytes(kv.bytes)} (${sign}${Math.abs(pct)}%)`;
}

/** Average bits per cached value, keys and values together, relative to f16's 16 bits. */
export function bitsPerValue(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>): number {
  return kv.f16Bytes > 0 ? (16 * kv.bytes) / kv.f16Bytes : 0;
}

/** Tokens evicted (logical length minus resident), never negative. */
export function evictedTokens(kv: Pick<KvStats, 'tokens' | 'residentTokens'>): number {
  return Math.max(0, kv.tokens - kv.residentTokens);
}

/** Escape text for HTML (and for markdown tooltips that allow no HTML). */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}
