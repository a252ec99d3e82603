// cachePicture.ts — the cache details page as HTML with inline SVG charts: bytes held against
// f16, bytes per layer, and tokens kept/evicted at each precision. Plain functions (no `vscode`),
// so node tests can render them; colours come from the VS Code theme's chart variables.
import type { KvStats, StatusResult } from '../sidecar/protocol';
import { bitsPerValue, escapeHtml, evictedTokens, formatBytes, formatCount, savedPercent } from './format';

const W = 560; // drawing width of every chart, in SVG units

/** Tier names in display order, most precise first; unknown tiers follow in their own order. */
const TIER_ORDER = ['f16', 'q8', 'q4', 'q2', 'evicted'];
const TIER_CLASS: Record<string, string> = { f16: 'c-blue', q8: 'c-green', q4: 'c-yellow', q2: 'c-orange', evicted: 'c-red' };
const EXTRA_CLASSES = ['c-purple', 'c-blue', 'c-green', 'c-yellow'];

/** Tokens per precision: the sidecar's tiers, or kept/evicted when the spec has no tiers. */
export function tokenTiers(kv: KvStats): Array<{ name: string; tokens: number; cls: string }> {
  const raw: Record<string, number> =
    kv.tiers && Object.keys(kv.tiers).length > 0 ? { ...kv.tiers } : { kept: kv.residentTokens, evicted: evictedTokens(kv) };
  const names = Object.keys(raw).sort((a, b) => rank(a) - rank(b));
  return names.map((name, i) => ({
    name,
    tokens: Math.max(0, raw[name] ?? 0),
    cls: TIER_CLASS[name] ?? (name === 'kept' ? 'c-blue' : EXTRA_CLASSES[i % EXTRA_CLASSES.length]),
  }));
}

function rank(tier: string): number {
  const i = TIER_ORDER.indexOf(tier);
  return i >= 0 ? i : TIER_ORDER.indexOf('evicted') - 0.5; // unknown tiers go just before "evicted"
}

/** Two bars: what f16 would hold, what is held. */
export function savingsSvg(kv: KvStats): string {
  const max = Math.max(kv.f16Bytes, kv.bytes, 1);
  const bar = (y: number, v: number, cls: string, label: string) =>
    `<rect class="${cls}" x="120" y="${y}" width="${Math.max(1, ((W - 220) * v) / max).toFixed(1)}" height="22" rx="2"/>` +
    `<text x="0" y="${y + 16}">${label}</text>` +
    `<text x="${(130 + ((W - 220) * v) / max).toFixed(1)}" y="${y + 16}">${formatBytes(v)}</text>`;
  return (
    `<svg class="chart" role="img" aria-label="KV cache bytes: ${formatBytes(kv.bytes)} held, ${formatBytes(kv.f16Bytes)} in f16" ` +
    `viewBox="0 0 ${W} 64" width="${W}" height="64">` +
    bar(4, kv.f16Bytes, 'c-muted', 'f16 cache') +
    bar(36, kv.bytes, 'c-blue', 'held') +
    `</svg>`
  );
}

/** One vertical bar per layer. */
export function perLayerSvg(perLayer: number[]): string {
  if (perLayer.length === 0) return '<p class="muted">The sidecar reports no per-layer bytes for this cache.</p>';
  const H = 140;
  const top = 10;
  const bottom = 24;
  const left = 64;
  const max = Math.max(...perLayer, 1);
  const slot = (W - left) / perLayer.length;
  const barW = Math.max(1, slot * 0.8);
  const every = Math.max(1, Math.ceil(perLayer.length / 16));
  const parts: string[] = [];
  parts.push(`<line class="axis" x1="${left}" y1="${H - bottom}" x2="${W}" y2="${H - bottom}"/>`);
  parts.push(`<text x="0" y="${top + 10}">${formatBytes(max)}</text><text x="0" y="${H - bottom}">0</text>`);
  perLayer.forEach((b, i) => {
    const h = ((H - top - bottom) * b) / max;
    const x = left + i * slot + (slot - barW) / 2;
    parts.push(
      `<rect class="c-blue" x="${x.toFixed(1)}" y="${(H - bottom - h).toFixed(1)}" width="${barW.toFixed(1)}" height="${h.toFixed(1)}">` +
        `<title>layer ${i}: ${formatBytes(b)}</title></rect>`,
    );
    if (i % every === 0) parts.push(`<text class="tick" x="${(x + barW / 2).toFixed(1)}" y="${H - 6}">${i}</text>`);
  });
  return (
    `<svg class="chart" role="img" aria-label="bytes per layer, ${perLayer.length} layers" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">` +
    parts.join('') +
    `</svg>`
  );
}

/** One stacked bar: tokens at each precision (or kept/evicted), with a legend. */
export function tiersSvg(kv: KvStats): string {
  const tiers = tokenTiers(kv);
  const total = tiers.reduce((a, t) => a + t.tokens, 0);
  if (total === 0) return '<p class="muted">No tokens cached yet.</p>';
  const parts: string[] = [];
  let x = 0;
  for (const t of tiers) {
    const w = (W * t.tokens) / total;
    if (w > 0) parts.push(`<rect class="${t.cls}" x="${x.toFixed(1)}" y="0" width="${w.toFixed(1)}" height="26"><title>${escapeHtml(t.name)}: ${formatCount(t.tokens)} tokens</title></rect>`);
    x += w;
  }
  let lx = 0;
  for (const t of tiers) {
    const label = `${t.name} ${formatCount(t.tokens)} (${Math.round((100 * t.tokens) / total)}%)`;
    parts.push(`<rect class="${t.cls}" x="${lx}" y="36" width="12" height="12"/><text x="${lx + 16}" y="47">${escapeHtml(label)}</text>`);
    lx += 24 + label.length * 7;
  }
  return `<svg class="chart" role="img" aria-label="tokens per precision" viewBox="0 0 ${Math.max(W, lx)} 56" width="${Math.max(W, lx)}" height="56">${parts.join('')}</svg>`;
}

const STYLE = `
body { font-family: var(--vscode-font-family); color: var(--vscode-foreground); padding: 0 20px 20px; }
h1 { font-size: 1.4em; font-weight: 600; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.big { font-size: 1.6em; font-weight: 600; }
.muted { opacity: .75; }
table { border-collapse: collapse; } td { padding: 2px 14px 2px 0; vertical-align: top; }
.chart text { fill: var(--vscode-foreground); font-size: 12px; font-family: var(--vscode-font-family); }
.chart text.tick { text-anchor: middle; font-size: 10px; opacity: .8; }
.chart .axis { stroke: var(--vscode-charts-lines, #888); }
.c-blue { fill: var(--vscode-charts-blue, #3794ff); } .c-green { fill: var(--vscode-charts-green, #89d185); }
.c-yellow { fill: var(--vscode-charts-yellow, #cca700); } .c-orange { fill: var(--vscode-charts-orange, #d18616); }
.c-red { fill: var(--vscode-charts-red, #f14c4c); } .c-purple { fill: var(--vscode-charts-purple, #b180d7); }
.c-muted { fill: var(--vscode-charts-lines, #888); opacity: .6; }
.demo { border-left: 4px solid var(--vscode-editorWarning-foreground, #cca700); padding: 4px 10px; }
`;

/** The whole page. `cspSource` and `nonce` come from the webview panel; no script runs in it. */
export function cacheDetailsHtml(status: StatusResult | undefined, cspSource: string, nonce: string): string {
  const csp = `default-src 'none'; style-src 'nonce-${nonce}'; img-src ${cspSource} data:;`;
  const head = `<!DOCTYPE html><html lang="en"><head><meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<style nonce="${nonce}">${STYLE}</style><title>llamakv KV cache</title></head><body>`;
  if (!status) {
    return `${head}<h1>llamakv KV cache</h1><p class="muted" id="empty">The sidecar has not reported a status yet.</p></body></html>`;
  }
  const kv = status.kv;
  const m = status.model;
  const rows: Array<[string, string]> = [
    ['Model', m ? `${escapeHtml(m.name)} — ${escapeHtml(m.weightType)}, ${m.nLayer} layers, ${m.nHeadKv} KV heads × ${m.headDim}, ${escapeHtml(m.backend)}` : 'none'],
    ...(m?.backendNote ? [['Backend', escapeHtml(m.backendNote)] as [string, string]] : []),
    ['Compression', `<code>${escapeHtml(status.kvSpec)}</code>${kv.spec && kv.spec !== status.kvSpec ? ` = <code>${escapeHtml(kv.spec)}</code>` : ''} — ${bitsPerValue(kv).toFixed(2)} bits per value`],
    ['Held', `${formatBytes(kv.bytes)} (${formatCount(kv.bytes)} bytes)`],
    ['f16 would hold', `${formatBytes(kv.f16Bytes)} (${formatCount(kv.f16Bytes)} bytes)`],
    ['Tokens', `${formatCount(kv.tokens)} cached, ${formatCount(kv.residentTokens)} kept, ${formatCount(evictedTokens(kv))} evicted`],
    ['Workspace', `${formatCount(status.workspace.files)} files, ${formatCount(status.workspace.tokens)} tokens, state ${escapeHtml(status.workspace.state)}` +
      `${status.workspace.leftOut.length ? `, ${status.workspace.leftOut.length} left out` : ''}${status.workspace.fromDisk ? ', restored from disk' : ''}`],
  ];
  return `${head}
<h1>llamakv KV cache</h1>
${m?.demo ? '<p class="demo">Demo model: the numbers are real, the answers are meaningless.</p>' : ''}
<p class="big" id="saving">${formatBytes(kv.f16Bytes)} → ${formatBytes(kv.bytes)} <span class="muted">(${savedPercent(kv)}% saved)</span></p>
${savingsSvg(kv)}
<h2>Bytes per layer</h2>
${perLayerSvg(kv.perLayer ?? [])}
<h2>Tokens kept, evicted, and at which precision</h2>
${tiersSvg(kv)}
<h2>Numbers</h2>
<table>${rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join('')}</table>
</body></html>`;
}
