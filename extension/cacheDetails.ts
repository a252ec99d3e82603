// cacheDetails.ts — "llamakv: Show Cache Details": a webview panel picturing the KV cache (see
// cachePicture.ts), redrawn whenever the sidecar reports new statistics. No script runs in it.
import * as crypto from 'crypto';
import * as vscode from 'vscode';
import { cacheDetailsHtml } from './cachePicture';
import { Ctx } from './ctx';

export class CacheDetails implements vscode.Disposable {
  static readonly viewType = 'llamakv.cacheDetails';
  private panel: vscode.WebviewPanel | undefined;
  private readonly subscription: vscode.Disposable;
  private timer: NodeJS.Timeout | undefined;
  /** The statistics last drawn (as JSON), to skip redrawing the same picture. */
  private drawn: string | undefined;

  constructor(private readonly ctx: Ctx) {
    this.subscription = ctx.onDidChangePhase(() => this.render());
  }

  show(): vscode.WebviewPanel {
    if (this.panel) {
      this.panel.reveal(undefined, true);
    } else {
      const panel = vscode.window.createWebviewPanel(CacheDetails.viewType, 'llamakv: KV Cache', vscode.ViewColumn.Active, {
        enableScripts: false,
        localResourceRoots: [vscode.Uri.joinPath(this.ctx.extension.extensionUri, 'media')],
      });
      panel.iconPath = vscode.Uri.joinPath(this.ctx.extension.extensionUri, 'media', 'icon.svg');
      panel.onDidDispose(() => {
        this.panel = undefined;
        this.drawn = undefined;
      });
      this.panel = panel;
      this.draw();
      void this.ctx.refreshStatus();
    }
    return this.panel;
  }

  /** The panel's current HTML (tests read it). */
  get html(): string | undefined {
    return this.panel?.webview.html;
  }

  /** Redraw soon (at most twice a second), when the statistics changed. */
  private render(): void {
    if (!this.panel || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.draw();
    }, 500);
  }

  private draw(): void {
    const key = JSON.stringify(this.ctx.lastStatus ?? null);
    if (!this.panel || key === this.drawn) return;
    this.drawn = key;
    const nonce = crypto.randomBytes(18).toString('base64');
    this.panel.webview.html = cacheDetailsHtml(this.ctx.lastStatus, this.panel.webview.cspSource, nonce);
  }

  dispose(): void {
    this.subscription.dispose();
    if (this.timer) clearTimeout(this.timer);
    this.panel?.dispose();
  }
}
