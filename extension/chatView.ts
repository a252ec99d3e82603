// chatView.ts — the chat panel (webview view `llamakv.chat`): owns the conversation, streams
// answers from the sidecar into it, and serves the webview (media/dist/chat.js) under a strict
// CSP with a fresh nonce. The conversation lives here, so it survives the view being hidden,
// moved or reloaded; the webview is only a rendering of it.
import * as crypto from 'crypto';
import * as vscode from 'vscode';
import { ResponseError } from 'vscode-languageclient/node';
import { Chat, ChatMessage, ChatParams, ChatResult, ContextMode, ExplainFile, TextDelta } from '../sidecar/protocol';
import { Ctx, errorMessage } from './ctx';
import { request } from './lsp';
import type { SidecarPhase } from './statusBar';
import { FromWebview, PanelInfo, ToWebview, Turn, WEBVIEW_COMMANDS } from './webviewMessages';

/** LSP's RequestCancelled error code. */
const REQUEST_CANCELLED = -32800;
/** Turns of history sent with a follow-up question. */
const HISTORY_TURNS = 6;

export interface AskOptions {
  maxTokens?: number;
  temperature?: number;
}

interface ActiveTurn {
  turn: Turn;
  cts: vscode.CancellationTokenSource;
  /** Settles when the sidecar answered the request (also after a cancel). */
  settled: Promise<void>;
}

export class ChatViewProvider implements vscode.WebviewViewProvider, vscode.Disposable {
  static readonly viewId = 'llamakv.chat';

  private view: vscode.WebviewView | undefined;
  private webviewReady = false;
  private readonly turns: Turn[] = [];
  private active: ActiveTurn | undefined;
  private nextId = 1;
  /** The editor the user last worked in (a webview taking focus does not change it). */
  private lastEditor: vscode.Uri | undefined = vscode.window.activeTextEditor?.document.uri;
  private readonly subscriptions: vscode.Disposable[] = [];
  private readonly renderedEmitter = new vscode.EventEmitter<Extract<FromWebview, { type: 'rendered' }>>();
  /** The webview reports each turn it finished rendering (tests wait on it). */
  readonly onDidRender = this.renderedEmitter.event;
  private readonly turnEmitter = new vscode.EventEmitter<Turn>();
  /** A turn started, received text, or ended. */
  readonly onDidChangeTurn = this.turnEmitter.event;

  constructor(private readonly ctx: Ctx) {
    this.subscriptions.push(
      this.renderedEmitter,
      this.turnEmitter,
      ctx.onDidChangePhase((p) => this.post({ type: 'info', info: this.panelInfo(p) })),
      vscode.window.onDidChangeActiveTextEditor((e) => {
        if (e) this.lastEditor = e.document.uri;
      }),
    );
  }

  // ---- webview ---------------------------------------------------------------------------

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    this.webviewReady = false;
    const media = vscode.Uri.joinPath(this.ctx.extension.extensionUri, 'media');
    view.webview.options = { enableScripts: true, localResourceRoots: [media] };
    view.webview.html = this.html(view.webview, media);
    view.webview.onDidReceiveMessage((m: FromWebview) => this.onMessage(m), undefined, this.subscriptions);
    view.onDidDispose(() => {
      if (this.view === view) {
        this.view = undefined;
        this.webviewReady = false;
      }
    }, undefined, this.subscriptions);
  }

  private html(webview: vscode.Webview, media: vscode.Uri): string {
    const nonce = crypto.randomBytes(18).toString('base64');
    const script = webview.asWebviewUri(vscode.Uri.joinPath(media, 'dist', 'chat.js'));
    const style = webview.asWebviewUri(vscode.Uri.joinPath(media, 'chat.css'));
    const csp = [
      "default-src 'none'",
      `img-src ${webview.cspSource} data:`,
      `style-src ${webview.cspSource}`,
      `font-src ${webview.cspSource}`,
      `script-src 'nonce-${nonce}'`,
    ].join('; ');
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${style}">
<title>llamakv chat</title>
</head>
<body>
<div id="app" data-ready="false"></div>
<script nonce="${nonce}" src="${script}"></script>
</body>
</html>`;
  }

  private post(m: ToWebview): void {
    if (this.view && this.webviewReady) void this.view.webview.postMessage(m);
  }

  private onMessage(m: FromWebview): void {
    switch (m.type) {
      case 'ready':
        this.webviewReady = true;
        this.post({ type: 'state', turns: this.turns, info: this.panelInfo(this.ctx.phase) });
        break;
      case 'ask':
        if (m.text.trim()) void this.ask(m.text.trim(), m.context);
        break;
      case 'stop':
        this.stop();
        break;
      case 'clear':
        this.clear();
        break;
      case 'command':
        if (WEBVIEW_COMMANDS.includes(m.command)) void vscode.commands.executeCommand(m.command);
        break;
      case 'rendered':
        this.renderedEmitter.fire(m);
        break;
    }
  }

  private panelInfo(p: SidecarPhase): PanelInfo {
    const s = p.kind === 'running' ? p.status : undefined;
    const leftOut = s?.workspace.leftOut ?? [];
    return {
      sidecar: p.kind,
      sidecarError: p.kind === 'stopped' ? p.reason : undefined,
      modelState: s?.modelState ?? 'unknown',
      modelError: s?.modelError,
      model: s?.model
        ? { name: s.model.name, demo: s.model.demo, backend: s.model.backend, backendNote: s.model.backendNote, weightType: s.model.weightType }
        : null,
      kvSpec: s?.kvSpec ?? '', // the preset's name; the canonical spec can be long
      notice: s?.notice,
      warnings: s?.warnings ?? [],
      workspace: s
        ? {
            state: s.workspace.state,
            files: s.workspace.files,
            tokens: s.workspace.tokens,
            budgetTokens: s.workspace.budgetTokens,
            leftOut: leftOut.slice(0, 100),
            leftOutCount: leftOut.length,
          }
        : null,
      busy: this.active !== undefined,
    };
  }

  /** Show the panel (resolving it if it was never opened). */
  async reveal(): Promise<void> {
    if (this.view) this.view.show(true);
    else await vscode.commands.executeCommand(`${ChatViewProvider.viewId}.focus`);
  }

  // ---- conversation ----------------------------------------------------------------------

  get transcript(): readonly Turn[] {
    return this.turns;
  }

  get busy(): boolean {
    return this.active !== undefined;
  }

  /** Resolves when no answer is in flight (the sidecar answered, even if cancelled). */
  async idle(): Promise<void> {
    while (this.active) await this.active.settled;
  }

  /** "Explain File": the sidecar builds the prompt from the file and the workspace. */
  explainFile(uri: vscode.Uri, opts: AskOptions = {}): Promise<Turn> {
    const rel = vscode.workspace.asRelativePath(uri, false);
    return this.run('explain', `Explain ${rel}`, undefined, (client, token, ct) =>
      request(client, ExplainFile, { uri: uri.toString(), maxTokens: opts.maxTokens, partialResultToken: token }, ct),
    );
  }

  /** "Ask About Selection": the question plus the selected code, with the workspace as context. */
  askSelection(question: string, doc: vscode.TextDocument, sel: vscode.Range, opts: AskOptions = {}): Promise<Turn> {
    const rel = vscode.workspace.asRelativePath(doc.uri, false);
    const where = `${rel}:${sel.start.line + 1}-${sel.end.line + 1}`;
    const fence = '```';
    const content = `${question}\n\nThe code in question (${where}):\n${fence}${doc.languageId}\n${doc.getText(sel)}\n${fence}`;
    return this.chat('selection', `${question} (${where})`, content, 'workspace', opts);
  }

  /** A question typed in the panel. */
  ask(question: string, context: ContextMode = 'workspace', opts: AskOptions = {}): Promise<Turn> {
    return this.chat('chat', question, question, context, opts);
  }

  private chat(kind: Turn['kind'], shown: string, content: string, context: ContextMode, opts: AskOptions): Promise<Turn> {
    const messages: ChatMessage[] = [];
    for (const t of this.turns.filter((t) => t.state === 'done').slice(-HISTORY_TURNS)) {
      messages.push({ role: 'user', content: t.sent ?? t.prompt }, { role: 'assistant', content: t.answer });
    }
    messages.push({ role: 'user', content });
    const uri = vscode.window.activeTextEditor?.document.uri ?? this.lastEditor;
    return this.run(kind, shown, content !== shown ? content : undefined, (client, token, ct) => {
      const params: ChatParams = {
        messages,
        context,
        uri: context === 'file' && uri ? uri.toString() : undefined,
        maxTokens: opts.maxTokens,
        temperature: opts.temperature,
        partialResultToken: token,
      };
      return request(client, Chat, params, ct);
    });
  }

  /** One turn: start it, stream deltas into it, end it (done, cancelled or error). */
  private async run(
    kind: Turn['kind'],
    prompt: string,
    sent: string | undefined,
    send: (client: import('vscode-languageclient/node').LanguageClient, token: string, ct: vscode.CancellationToken) => Promise<ChatResult>,
  ): Promise<Turn> {
    // A new question stops the answer in flight. A loop, not a single wait: two questions waiting
    // on the same answer would otherwise both start, and the first could no longer be stopped;
    // this way each waiter stops whichever started before it, and the latest question wins.
    while (this.active) {
      this.stop();
      await this.idle();
    }
    const turn: Turn = { id: `t${this.nextId++}`, kind, prompt, answer: '', state: 'streaming', ...(sent !== undefined ? { sent } : {}) };
    const cts = new vscode.CancellationTokenSource();
    let settle!: () => void;
    const settled = new Promise<void>((r) => (settle = r));
    this.active = { turn, cts, settled };
    void vscode.commands.executeCommand('setContext', 'llamakv.busy', true);
    this.turns.push(turn);
    this.post({ type: 'turn', turn });
    this.post({ type: 'info', info: this.panelInfo(this.ctx.phase) });
    this.turnEmitter.fire(turn);
    void this.reveal();

    const token = `llamakv-answer-${process.pid}-${turn.id}-${crypto.randomBytes(4).toString('hex')}`;
    let progress: vscode.Disposable | undefined;
    try {
      const client = await this.ctx.ready();
      progress = client.onProgress(TextDelta, token, (delta) => {
        if (turn.state !== 'streaming' || !delta) return;
        turn.answer += delta;
        this.post({ type: 'delta', id: turn.id, text: delta });
        this.turnEmitter.fire(turn);
      });
      const result = await send(client, token, cts.token);
      // Without partial results (or if some were lost) the final text is authoritative.
      if (turn.state === 'streaming' && result.text.length >= turn.answer.length) turn.answer = result.text;
      turn.context = result.context;
      turn.model = result.model;
      turn.demo = result.demo;
      turn.usage = result.usage;
      turn.stopReason = result.stopReason;
      turn.decodeTokensPerSecond = result.timings?.decodeTokensPerSecond;
      if (turn.state === 'streaming') turn.state = result.stopReason === 'cancelled' ? 'cancelled' : 'done';
    } catch (e) {
      if (cts.token.isCancellationRequested || (e instanceof ResponseError && e.code === REQUEST_CANCELLED)) {
        turn.state = 'cancelled';
        turn.stopReason = 'cancelled';
      } else {
        turn.state = 'error';
        turn.error = errorMessage(e);
        this.ctx.output.error(`${kind} failed: ${turn.error}`);
      }
    } finally {
      progress?.dispose();
      cts.dispose();
      if (this.active?.turn === turn) {
        this.active = undefined;
        void vscode.commands.executeCommand('setContext', 'llamakv.busy', false);
      }
      settle();
      // a turn removed by Clear while it ran stays gone (posting it would bring it back as "stopped")
      if (this.turns.includes(turn)) this.post({ type: 'turn', turn });
      this.post({ type: 'info', info: this.panelInfo(this.ctx.phase) });
      this.turnEmitter.fire(turn);
      void this.ctx.refreshStatus();
    }
    return turn;
  }

  /** Stop the answer in flight: the panel stops at once, the sidecar on `$/cancelRequest`. */
  stop(): void {
    const a = this.active;
    if (!a || a.turn.state !== 'streaming') return;
    a.cts.cancel();
    a.turn.state = 'cancelled';
    a.turn.stopReason = 'cancelled';
    if (this.turns.includes(a.turn)) this.post({ type: 'turn', turn: a.turn });
    this.turnEmitter.fire(a.turn);
  }

  /** Clear Conversation: the turns go first, so stopping the answer in flight shows nothing of it again. */
  clear(): void {
    this.turns.length = 0;
    this.post({ type: 'cleared' });
    this.stop();
  }

  /** Test hook: post any message to the webview as if it came from the conversation. */
  postForTest(m: ToWebview): void {
    this.post(m);
  }

  get isWebviewReady(): boolean {
    return this.webviewReady;
  }

  dispose(): void {
    this.stop();
    for (const d of this.subscriptions) d.dispose();
  }
}
