// extension.ts — entry point: builds the Ctx (sidecar lifecycle, status bar, output channel), the
// chat view, the cache details and the command table, and starts the sidecar. Activation errors
// are shown to the user, never swallowed.
import * as vscode from 'vscode';
import { CacheDetails } from './cacheDetails';
import { ChatViewProvider } from './chatView';
import { COMMANDS, registerCommands } from './commands';
import { Ctx, errorMessage } from './ctx';
import type { ToWebview, Turn } from './webviewMessages';
import type { StatusResult } from '../sidecar/protocol';
import type { SidecarPhase, StatusView } from './statusBar';
import { renderStatus } from './statusBar';

/** What activate() returns: a small surface for the integration tests (and other extensions). */
export interface LlamakvApi {
  readonly commands: string[];
  phase(): SidecarPhase;
  lastStatus(): StatusResult | undefined;
  sidecarPid(): number | undefined;
  sidecarStarts(): number;
  statusBar(): StatusView;
  renderStatus(p: SidecarPhase): StatusView;
  onDidChangePhase: vscode.Event<SidecarPhase>;
  chat: {
    transcript(): readonly Turn[];
    busy(): boolean;
    idle(): Promise<void>;
    webviewReady(): boolean;
    onDidChangeTurn: vscode.Event<Turn>;
    onDidRender: ChatViewProvider['onDidRender'];
    post(m: ToWebview): void;
  };
  cacheDetailsHtml(): string | undefined;
}

let ctx: Ctx | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<LlamakvApi> {
  try {
    return doActivate(context);
  } catch (e) {
    // VS Code would only log it; the user needs to know the extension is not working.
    void vscode.window.showErrorMessage(`llamakv could not start: ${errorMessage(e)}`);
    throw e;
  }
}

function doActivate(context: vscode.ExtensionContext): LlamakvApi {
  ctx = new Ctx(context);
  const c = ctx;
  context.subscriptions.push(c);
  const chat = new ChatViewProvider(c);
  const details = new CacheDetails(c);
  context.subscriptions.push(
    chat,
    details,
    vscode.window.registerWebviewViewProvider(ChatViewProvider.viewId, chat, { webviewOptions: { retainContextWhenHidden: true } }),
    ...registerCommands({ ctx: c, chat, details }),
  );
  c.output.info(`llamakv ${context.extension.packageJSON.version} activating on ${vscode.env.appName} ${vscode.version}, node ${process.version}`);
  // Start the sidecar without holding up activation; failures are shown by Ctx.
  c.start().catch((e) => c.output.error(`sidecar start failed: ${errorMessage(e)}`));

  return {
    commands: Object.keys(COMMANDS),
    phase: () => c.phase,
    lastStatus: () => c.lastStatus,
    sidecarPid: () => c.sidecarPid,
    sidecarStarts: () => c.starts,
    statusBar: () => c.statusBar.current,
    renderStatus,
    onDidChangePhase: c.onDidChangePhase,
    chat: {
      transcript: () => chat.transcript,
      busy: () => chat.busy,
      idle: () => chat.idle(),
      webviewReady: () => chat.isWebviewReady,
      onDidChangeTurn: chat.onDidChangeTurn,
      onDidRender: chat.onDidRender,
      post: (m) => chat.postForTest(m),
    },
    cacheDetailsHtml: () => details.html,
  };
}

export async function deactivate(): Promise<void> {
  const c = ctx;
  ctx = undefined;
  if (c) await c.stop();
}
