// commands.ts — the command table: every `llamakv.*` command id and what it does, in one place.
// package.json `contributes.commands` lists the same ids (a test checks the two agree).
import * as vscode from 'vscode';
import { WorkDoneProgress } from 'vscode-languageclient/node';
import { ClearCache, DiscoveredModel, IndexWorkspace, ListModels } from '../sidecar/protocol';
import { CacheDetails } from './cacheDetails';
import { AskOptions, ChatViewProvider } from './chatView';
import { Ctx, errorMessage } from './ctx';
import { formatBytes, formatCount } from './format';
import { request, request0 } from './lsp';

export interface Services {
  ctx: Ctx;
  chat: ChatViewProvider;
  details: CacheDetails;
}

// Arguments are whatever VS Code passes (a menu passes the clicked resource), hence `any`.
type Handler = (s: Services, ...args: any[]) => unknown;

export const COMMANDS: Record<string, Handler> = {
  /** Explorer / editor title / palette: the answer streams into the chat panel. */
  'llamakv.explainFile': async (s, uri?: vscode.Uri, opts?: AskOptions) => {
    const target = uri instanceof vscode.Uri ? uri : vscode.window.activeTextEditor?.document.uri;
    if (!target) {
      void vscode.window.showWarningMessage('llamakv: open a file, or right-click one in the Explorer, to explain it.');
      return undefined;
    }
    return s.chat.explainFile(target, opts && typeof opts === 'object' && !Array.isArray(opts) ? opts : {});
  },

  'llamakv.askSelection': async (s, question?: string, opts?: AskOptions) => {
    const editor = vscode.window.activeTextEditor;
    if (!editor || editor.selection.isEmpty) {
      void vscode.window.showWarningMessage('llamakv: select some code in an editor first.');
      return undefined;
    }
    const q =
      typeof question === 'string' && question.trim()
        ? question.trim()
        : await vscode.window.showInputBox({ title: 'llamakv: Ask About Selection', prompt: 'Your question about the selected code', value: 'What does this code do?' });
    if (!q) return undefined;
    return s.chat.askSelection(q, editor.document, editor.selection, opts ?? {});
  },

  'llamakv.indexWorkspace': (s) =>
    vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: 'llamakv: indexing the workspace', cancellable: true },
      async (progress, cancel) => {
        const client = await s.ctx.ready();
        const token = `llamakv-index-${Date.now()}`;
        let last = 0;
        const sub = client.onProgress(WorkDoneProgress.type, token, (v) => {
          if (v.kind === 'end') return;
          const pct = v.percentage ?? last;
          progress.report({ message: v.message, increment: Math.max(0, pct - last) });
          last = pct;
        });
        try {
          const w = await request(client, IndexWorkspace, { workDoneToken: token }, cancel);
          if (w.state === 'error') {
            void s.ctx.showError(`llamakv: indexing failed: ${w.error ?? 'unknown error'}`);
          } else if (!cancel.isCancellationRequested) {
            const left = w.leftOut.length;
            const msg = `llamakv: ${formatCount(w.files)} files, ${formatCount(w.tokens)} tokens in context${left ? `; ${left} left out` : ''}.`;
            void vscode.window.showInformationMessage(msg, ...(left ? ['Show Left Out'] : [])).then((a) => {
              if (!a) return;
              s.ctx.output.info(`left out of the context (${left}):\n${w.leftOut.map((f) => `  ${f.path}: ${f.reason}`).join('\n')}`);
              s.ctx.output.show();
            });
          }
          return w;
        } catch (e) {
          if (!cancel.isCancellationRequested) void s.ctx.showError(`llamakv: indexing failed: ${errorMessage(e)}`);
          return undefined;
        } finally {
          sub.dispose();
          void s.ctx.refreshStatus();
        }
      },
    ),

  /** Quick pick of the models the sidecar found (Ollama, LM Studio, HF cache, ...) plus Browse. */
  'llamakv.selectModel': async (s, modelPath?: string) => {
    let chosen = typeof modelPath === 'string' ? modelPath : undefined;
    if (chosen === undefined) {
      type Item = vscode.QuickPickItem & { model?: DiscoveredModel; browse?: boolean };
      const current = s.ctx.config.modelPath;
      const picker = vscode.window.createQuickPick<Item>();
      picker.title = 'llamakv: Select Model';
      picker.placeholder = 'Looking for GGUF models…';
      picker.busy = true;
      picker.show();
      const browse: Item = { label: '$(folder-opened) Browse…', description: 'a .gguf file', browse: true, alwaysShow: true };
      picker.items = [browse];
      // the picker opens at once, also while the sidecar is down (Browse needs no sidecar)
      s.ctx.ready().then((client) => request0(client, ListModels)).then(
        (models) => {
          picker.items = [
            ...models.map<Item>((m) => ({
              label: `${m.path === current ? '$(check) ' : ''}${m.name}`,
              description: `${m.source}${m.bytes ? ` · ${formatBytes(m.bytes)}` : ''}${m.source === 'demo' ? ' · answers are meaningless' : ''}`,
              detail: m.usable ? m.path : `${m.path} — ${m.reason ?? 'not usable'}`,
              model: m,
            })),
            { label: '', kind: vscode.QuickPickItemKind.Separator },
            browse,
          ];
          picker.placeholder = models.length ? 'Pick a model' : 'No models found: browse for a .gguf file';
          picker.busy = false;
        },
        (e) => {
          picker.placeholder = `Could not list models: ${errorMessage(e)}`;
          picker.busy = false;
        },
      );
      const item = await new Promise<Item | undefined>((resolve) => {
        picker.onDidAccept(() => resolve(picker.selectedItems[0]));
        picker.onDidHide(() => resolve(undefined));
      });
      picker.dispose();
      if (!item) return undefined;
      if (item.browse) {
        const files = await vscode.window.showOpenDialog({ title: 'llamakv: GGUF model', canSelectMany: false, filters: { 'GGUF model': ['gguf'] } });
        chosen = files?.[0]?.fsPath;
      } else if (item.model) {
        if (!item.model.usable) {
          void vscode.window.showWarningMessage(`llamakv: ${item.model.name} cannot be used: ${item.model.reason ?? 'not a supported model'}.`);
          return undefined;
        }
        chosen = item.model.path;
      }
    }
    if (chosen === undefined) return undefined;
    // Where the user set it before wins; otherwise it is a user (global) choice.
    const inspect = vscode.workspace.getConfiguration('llamakv').inspect<string>('modelPath');
    const target = inspect?.workspaceValue !== undefined ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    await vscode.workspace.getConfiguration('llamakv').update('modelPath', chosen, target);
    s.ctx.output.info(`model set to ${chosen || '(automatic)'}`);
    return chosen;
  },

  'llamakv.showCacheDetails': (s) => {
    s.details.show();
  },

  'llamakv.clearCache': async (s) => {
    const before = s.ctx.lastStatus?.kv.bytes ?? 0;
    try {
      const client = await s.ctx.ready();
      const kv = await request0(client, ClearCache);
      void vscode.window.showInformationMessage(`llamakv: KV cache cleared (${formatBytes(Math.max(0, before - kv.bytes))} freed, saved state removed).`);
      await s.ctx.refreshStatus();
      return kv;
    } catch (e) {
      void s.ctx.showError(`llamakv: clearing the cache failed: ${errorMessage(e)}`);
      return undefined;
    }
  },

  'llamakv.restartSidecar': async (s) => {
    try {
      await s.ctx.restart();
    } catch (e) {
      // ctx already showed the reason
      s.ctx.output.error(`restart failed: ${errorMessage(e)}`);
    }
  },

  'llamakv.stop': (s) => s.chat.stop(),

  'llamakv.clearChat': (s) => s.chat.clear(),

  'llamakv.showLog': (s) => s.ctx.output.show(),
};

export function registerCommands(s: Services): vscode.Disposable[] {
  return Object.entries(COMMANDS).map(([id, handler]) =>
    vscode.commands.registerCommand(id, async (...args: unknown[]) => {
      try {
        return await handler(s, ...args);
      } catch (e) {
        void s.ctx.showError(`${id.replace('llamakv.', 'llamakv: ')} failed: ${errorMessage(e)}`);
        return undefined;
      }
    }),
  );
}
