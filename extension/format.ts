// format.ts — plain functions that turn sidecar numbers into the words and figures the user reads
// (status bar, tooltips, cache details); sizes and savings come from the sidecar's format.ts, so
// the CLI and the editor write them alike. No `vscode` import, so node tests can load it.
import { formatKvSaving } from '../sidecar/format';
import type { KvStats } from '../sidecar/protocol';

export { formatBytes, formatCount, savedPercent } from '../sidecar/format';

/** "KV 1.9 GB → 236 MB (−88%)": what an f16 cache would hold, what is held, the saving. */
export function savingsText(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>): string {
  return `KV ${formatKvSaving(kv)}`;
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
