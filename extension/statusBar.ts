// statusBar.ts — the status bar item: the KV memory the cache saves, or what the sidecar is doing.
// One `switch` over the last sidecar status decides text, tooltip and colour; a click opens the
// cache details.
import * as vscode from 'vscode';
import type { StatusResult } from '../sidecar/protocol';
import { evictedTokens, formatBytes, formatCount, savingsText, bitsPerValue } from './format';

/** What the extension last knew about its sidecar. */
export type SidecarPhase =
  | { kind: 'starting' }
  | { kind: 'running'; status: StatusResult | undefined }
  | { kind: 'stopped'; reason: string };

export interface StatusView {
  text: string;
  tooltip: string; // markdown
  severity: 'normal' | 'warning' | 'error';
}

type ViewKind = 'starting' | 'stopped' | 'connecting' | 'modelError' | 'loading' | 'noModel' | 'workspaceError' | 'indexing' | 'empty' | 'saving';

function viewKind(p: SidecarPhase): ViewKind {
  if (p.kind !== 'running') return p.kind;
  const s = p.status;
  if (!s) return 'connecting';
  if (s.modelState === 'error') return 'modelError';
  if (s.modelState === 'loading') return 'loading';
  if (s.modelState === 'none') return 'noModel';
  if (s.workspace.state === 'error') return 'workspaceError';
  if (s.workspace.state === 'collecting' || s.workspace.state === 'prefilling') return 'indexing';
  return s.kv.f16Bytes > 0 ? 'saving' : 'empty';
}

/** The one place that decides what the status bar says. */
export function renderStatus(p: SidecarPhase): StatusView {
  const s = p.kind === 'running' ? p.status : undefined;
  switch (viewKind(p)) {
    case 'starting':
      return { text: '$(sync~spin) llamakv: starting', tooltip: 'Starting the llamakv sidecar…', severity: 'normal' };
    case 'connecting':
      return { text: '$(sync~spin) llamakv', tooltip: 'Waiting for the sidecar status…', severity: 'normal' };
    case 'stopped':
      return {
        text: '$(error) llamakv: stopped',
        tooltip: `The sidecar is not running: ${p.kind === 'stopped' ? p.reason : ''}\n\nRun **llamakv: Restart Sidecar**.`,
        severity: 'error',
      };
    case 'modelError':
      return {
        text: '$(error) llamakv: model error',
        tooltip: `The model could not be loaded: ${s!.modelError ?? 'unknown error'}\n\nRun **llamakv: Select Model**.`,
        severity: 'error',
      };
    case 'loading':
      return { text: '$(sync~spin) llamakv: loading model', tooltip: 'Loading the model…', severity: 'normal' };
    case 'noModel':
      return { text: '$(circle-slash) llamakv: no model', tooltip: 'No model loaded. Run **llamakv: Select Model**.', severity: 'warning' };
    case 'workspaceError':
      return {
        text: '$(warning) llamakv: index failed',
        tooltip: `Indexing the workspace failed: ${s!.workspace.error ?? 'unknown error'}\n\n${breakdown(s!)}`,
        severity: 'warning',
      };
    case 'indexing': {
      const w = s!.workspace;
      const what = w.state === 'collecting' ? 'collecting files' : `prefilling ${formatCount(w.tokens)} tokens`;
      return { text: `$(sync~spin) KV: indexing`, tooltip: `Indexing the workspace: ${what}…\n\n${breakdown(s!)}`, severity: 'normal' };
    }
    case 'empty':
      return { text: '$(database) KV: empty', tooltip: `The KV cache holds nothing yet.\n\n${breakdown(s!)}`, severity: 'normal' };
    case 'saving':
      return { text: `$(database) ${savingsText(s!.kv)}`, tooltip: breakdown(s!), severity: 'normal' };
  }
}

/** Markdown tooltip: model, spec, tokens kept/evicted/per tier, per-layer bytes, workspace. */
export function breakdown(s: StatusResult): string {
  const kv = s.kv;
  const lines: string[] = [];
  const m = s.model;
  lines.push(`**llamakv KV cache**${m?.demo ? ' — demo model (answers are meaningless)' : ''}`);
  if (s.notice) lines.push('', s.notice);
  lines.push('');
  if (m) lines.push(`Model: ${m.name} (${m.weightType}, ${m.backend})  `);
  if (m?.backendNote) lines.push(`Backend: ${m.backendNote}  `);
  const spec = kv.spec && kv.spec !== s.kvSpec ? `\`${s.kvSpec}\` (\`${kv.spec}\`)` : `\`${s.kvSpec}\``;
  lines.push(`Compression: ${spec} — ${bitsPerValue(kv).toFixed(1)} bits per value  `);
  lines.push(`Held: ${formatBytes(kv.bytes)} of ${formatBytes(kv.f16Bytes)} (f16)  `);
  lines.push(`Tokens: ${formatCount(kv.tokens)} cached, ${formatCount(kv.residentTokens)} kept, ${formatCount(evictedTokens(kv))} evicted  `);
  if (kv.tiers && Object.keys(kv.tiers).length > 0) {
    lines.push(`Per precision: ${Object.entries(kv.tiers).map(([t, n]) => `${t} ${formatCount(n)}`).join(', ')}  `);
  }
  if (kv.perLayer && kv.perLayer.length > 0) {
    const per = kv.perLayer;
    const min = Math.min(...per);
    const max = Math.max(...per);
    lines.push(`Per layer (${per.length}): ${formatBytes(min)}${max !== min ? ` – ${formatBytes(max)}` : ' each'}  `);
  }
  const w = s.workspace;
  lines.push(`Workspace: ${formatCount(w.files)} files, ${formatCount(w.tokens)} tokens (budget ${formatCount(w.budgetTokens)})` +
    `${w.leftOut.length ? `, ${w.leftOut.length} left out` : ''}${w.fromDisk ? ', restored from disk' : ''}  `);
  for (const w of s.warnings ?? []) lines.push(`$(warning) ${w}  `);
  lines.push('');
  lines.push('Click for cache details.');
  return lines.join('\n');
}

export class StatusBar implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private view: StatusView = renderStatus({ kind: 'starting' });

  constructor() {
    this.item = vscode.window.createStatusBarItem('llamakv.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'llamakv KV cache';
    this.item.command = 'llamakv.showCacheDetails';
  }

  update(p: SidecarPhase): void {
    this.view = renderStatus(p);
    this.item.text = this.view.text;
    const md = new vscode.MarkdownString(this.view.tooltip);
    md.supportThemeIcons = true;
    this.item.tooltip = md;
    this.item.backgroundColor =
      this.view.severity === 'error'
        ? new vscode.ThemeColor('statusBarItem.errorBackground')
        : this.view.severity === 'warning'
          ? new vscode.ThemeColor('statusBarItem.warningBackground')
          : undefined;
    this.item.show();
  }

  /** What the item shows now (for tests and the output log). */
  get current(): StatusView {
    return this.view;
  }

  dispose(): void {
    this.item.dispose();
  }
}
