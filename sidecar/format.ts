// format.ts — how sizes and KV savings are written for people, in one place for the CLI's summary
// line and the extension's status bar, tooltips and cache details ("KV cache: 1.9 GB → 236 MB
// (−88%)"). Units are binary (1 GB = 2^30 bytes), as memory is, and as the benchmark's MiB are.
import type { KvStats } from './protocol';

export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '?';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const digits = u === 0 ? 0 : v < 10 ? 1 : 0;
  return `${v.toFixed(digits)} ${units[u]}`;
}

/** Fraction of the f16 cache saved, in whole percent (0 when nothing is cached). */
export function savedPercent(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>): number {
  return kv.f16Bytes > 0 ? Math.round((100 * (kv.f16Bytes - kv.bytes)) / kv.f16Bytes) : 0;
}

/** "1.9 GB → 236 MB (−88%)"; the percentage uses a real minus sign. */
export function formatKvSaving(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>): string {
  const pct = savedPercent(kv);
  const sign = pct > 0 ? '\u2212' : pct < 0 ? '+' : '';
  return `${formatBytes(kv.f16Bytes)} \u2192 ${formatBytes(kv.bytes)} (${sign}${Math.abs(pct)}%)`;
}

export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

const plural = (n: number, one: string, many: string) => `${formatCount(n)} ${n === 1 ? one : many}`;

/** The CLI's closing line: "KV cache: 1.9 GB → 236 MB (−88%), 96,412 workspace tokens, 4 files left out". */
export function kvSummaryLine(kv: Pick<KvStats, 'bytes' | 'f16Bytes'>, workspaceTokens: number, leftOut: number): string {
  return `KV cache: ${formatKvSaving(kv)}, ${plural(workspaceTokens, 'workspace token', 'workspace tokens')}, ${plural(leftOut, 'file', 'files')} left out`;
}

/**
 * A workspace prefill's progress line: "12,288 / 30,720 tokens", and once it has run a few
 * seconds "12,288 / 30,720 tokens · 41 tok/s · about 8 min left" from the rate so far (attention
 * slows as the context grows, so on long prefills the estimate errs short: "about").
 */
export function prefillProgressText(done: number, total: number, elapsedMs: number): string {
  const base = `${formatCount(done)} / ${formatCount(total)} tokens`;
  if (!(elapsedMs >= 3000) || !(done > 0) || done >= total) return base;
  const rate = done / (elapsedMs / 1000);
  const left = (total - done) / rate;
  const eta = left < 60 ? 'under a minute' : left < 90 * 60 ? `about ${Math.round(left / 60)} min` : `about ${(left / 3600).toFixed(1)} h`;
  return `${base} \u00b7 ${rate >= 10 ? Math.round(rate) : rate.toFixed(1)} tok/s \u00b7 ${eta} left`;
}
