// ctx.ts — the one owner of the sidecar: starts it with vscode-languageclient (on the extension
// host's own Node), restarts it when it crashes and says so, pushes settings, and publishes the
// sidecar's phase and last status to the status bar, the chat panel and the cache details.
import * as cp from 'child_process';
import * as fs from 'fs';
import * as vscode from 'vscode';
import {
  CloseAction,
  CloseHandlerResult,
  ErrorAction,
  ErrorHandlerResult,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';
import { StatsChanged, Status, StatusResult, UpdateSettings } from '../sidecar/protocol';
import { Config } from './config';
import { notify, onNotification, request0 } from './lsp';
import { SidecarPhase, StatusBar } from './statusBar';

/** Crashes within this window count towards giving up. */
const CRASH_WINDOW_MS = 3 * 60_000;
const MAX_CRASHES = 4;

export class Ctx implements vscode.Disposable {
  readonly output: vscode.LogOutputChannel;
  readonly config: Config;
  readonly statusBar: StatusBar;
  /** File changes go to the sidecar (it re-indexes what changed); one watcher for every client. */
  private readonly watcher = vscode.workspace.createFileSystemWatcher('**/*');

  private client: LanguageClient | undefined;
  private child: cp.ChildProcess | undefined;
  /** Start, stop and restart run one at a time, in order (a restart never races a start). */
  private lifecycle: Promise<unknown> = Promise.resolve();
  private stopping = false;
  private disposed = false;
  /** Set between a crash and languageclient's own restart of the process. */
  private restartingAfterCrash = false;
  private crashes: number[] = [];
  /** Why languageclient was told not to restart it any more (cleared by the next start). */
  private gaveUpReason: string | undefined;
  private lastExit: string | undefined;
  private phase_: SidecarPhase = { kind: 'stopped', reason: 'not started yet' };
  private phaseBefore: SidecarPhase = this.phase_;
  private readonly subscriptions: vscode.Disposable[] = [];
  private readonly phaseEmitter = new vscode.EventEmitter<SidecarPhase>();
  /** Fires on every phase change and every status the sidecar reports. */
  readonly onDidChangePhase = this.phaseEmitter.event;
  /** How often the sidecar was (re)started; tests read it. */
  starts = 0;

  constructor(readonly extension: vscode.ExtensionContext) {
    this.output = vscode.window.createOutputChannel('llamakv', { log: true });
    const storage = (extension.storageUri ?? extension.globalStorageUri).fsPath;
    this.config = new Config(storage);
    this.statusBar = new StatusBar();
    this.statusBar.update(this.phase_);
    this.subscriptions.push(
      this.watcher,
      this.output,
      this.statusBar,
      this.phaseEmitter,
      vscode.workspace.onDidChangeConfiguration((e) => this.onConfigChange(e)),
    );
  }

  get phase(): SidecarPhase {
    return this.phase_;
  }

  /** The last status the sidecar reported (through `statsChanged` or `status`). */
  get lastStatus(): StatusResult | undefined {
    return this.phase_.kind === 'running' ? this.phase_.status : undefined;
  }

  /** Process id of the running sidecar. */
  get sidecarPid(): number | undefined {
    return this.child && this.child.exitCode === null && this.child.signalCode === null ? this.child.pid : undefined;
  }

  private setPhase(p: SidecarPhase): void {
    if (this.disposed) return;
    const before = this.lastStatus;
    this.phase_ = p;
    const now = this.lastStatus;
    const summary = (x: SidecarPhase) =>
      x.kind === 'running' ? `running (model ${x.status?.modelState ?? '?'}, workspace ${x.status?.workspace.state ?? '?'})` : x.kind;
    if (summary(p) !== summary(this.phaseBefore)) this.output.info(`sidecar: ${summary(p)}`);
    this.phaseBefore = p;
    if (now?.modelState === 'error' && (before?.modelState !== 'error' || before.modelError !== now.modelError)) {
      void this.showModelError(now.modelError ?? 'unknown error');
    }
    this.statusBar.update(p);
    this.phaseEmitter.fire(p);
  }

  /** The running client, starting the sidecar first when needed. */
  async ready(): Promise<LanguageClient> {
    const client = this.client;
    if (client && client.state === State.Running) return client;
    if (client && this.restartingAfterCrash) {
      // languageclient is restarting it after a crash: wait for that rather than start another.
      await new Promise<void>((resolve, reject) => {
        const d = this.onDidChangePhase((p) => {
          if (p.kind === 'running' && this.client === client && client.state === State.Running) {
            d.dispose();
            resolve();
          } else if (p.kind === 'stopped') {
            d.dispose();
            reject(new Error(`the llamakv sidecar did not restart: ${p.reason}`));
          }
        });
      });
      return client;
    }
    return this.start();
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const p = this.lifecycle.then(op, op);
    this.lifecycle = p.catch(() => undefined);
    return p;
  }

  /** Start the sidecar (unless it runs); resolves once it has answered `initialize`. */
  start(): Promise<LanguageClient> {
    return this.serial(async () => {
      const c = this.client;
      if (c && c.state === State.Running) return c;
      if (c) await this.doStop();
      return this.doStart();
    });
  }

  /** Stop and start again (command "Restart Sidecar", and settings that need a new process). */
  restart(): Promise<LanguageClient> {
    return this.serial(async () => {
      await this.doStop();
      this.crashes = [];
      return this.doStart();
    });
  }

  stop(): Promise<void> {
    return this.serial(() => this.doStop());
  }

  private async doStart(): Promise<LanguageClient> {
    // LLAMAKV_SIDECAR: a development override (e.g. a sidecar built from another checkout).
    const serverMain = process.env.LLAMAKV_SIDECAR || this.extension.asAbsolutePath('out/sidecar/server.js');
    if (!fs.existsSync(serverMain)) {
      const reason = `the sidecar is missing (${serverMain}); build it with \`npm run build:ts\``;
      this.setPhase({ kind: 'stopped', reason });
      throw new Error(reason);
    }
    this.stopping = false;
    this.gaveUpReason = undefined;
    this.setPhase({ kind: 'starting' });

    // A function, not an Executable, so that the child (and its pid) is ours to watch.
    const serverOptions: ServerOptions = async () => {
      const child = cp.spawn(process.execPath, [serverMain, '--stdio'], {
        cwd: this.extension.extensionPath,
        // In desktop VS Code process.execPath is Electron: ELECTRON_RUN_AS_NODE makes it plain Node.
        env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' },
        stdio: 'pipe',
      });
      this.child = child;
      this.lastExit = undefined;
      this.starts++;
      this.output.info(`sidecar started: pid ${child.pid}, ${process.execPath} ${serverMain} --stdio`);
      child.on('exit', (code, signal) => {
        this.lastExit = signal ? `killed by ${signal}` : `exit code ${code}`;
        const log = this.stopping ? this.output.info : this.output.warn;
        log.call(this.output, `sidecar pid ${child.pid} ended: ${this.lastExit}`);
      });
      child.on('error', (e) => this.output.error(`sidecar process error: ${e.message}`));
      return child;
    };

    const clientOptions: LanguageClientOptions = {
      // Open documents go to the sidecar, so unsaved editor contents win over disk.
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      synchronize: { fileEvents: this.watcher },
      outputChannel: this.output,
      initializationOptions: () => this.config.sidecarSettings(),
      errorHandler: {
        error: (): ErrorHandlerResult => ({ action: ErrorAction.Continue, handled: true }),
        closed: () => this.onClosed(),
      },
      initializationFailedHandler: (e) => {
        this.output.error(`sidecar initialization failed: ${errorMessage(e)}`);
        return false;
      },
    };

    const client = new LanguageClient('llamakv', 'llamakv sidecar', serverOptions, clientOptions);
    this.client = client;
    client.onDidChangeState((e) => {
      if (this.client !== client || this.stopping) return;
      if (e.newState === State.Starting) {
        this.setPhase({ kind: 'starting' });
      } else if (e.newState === State.Running) {
        this.restartingAfterCrash = false;
        this.setPhase({ kind: 'running', status: undefined });
        // Settings that changed while it was starting: the sidecar ignores what did not change.
        notify(client, UpdateSettings, this.config.sidecarSettings()).catch(() => undefined);
        void this.refreshStatus();
      } else if (e.oldState === State.Starting || !this.restartingAfterCrash) {
        // Stopped: either a (re)start failed, or it stopped for good.
        this.restartingAfterCrash = false;
        this.setPhase({ kind: 'stopped', reason: this.gaveUpReason ?? this.lastExit ?? 'stopped' });
      }
    });
    onNotification(client, StatsChanged, (s) => {
      if (this.client === client) this.setPhase({ kind: 'running', status: s });
    });

    try {
      await client.start();
    } catch (e) {
      const reason = errorMessage(e);
      this.setPhase({ kind: 'stopped', reason });
      this.client = undefined;
      void client.dispose().catch(() => undefined);
      this.killChild();
      void this.showError(`llamakv: the sidecar could not start: ${reason}`);
      throw e;
    }
    return client;
  }

  /** Ask the sidecar for its status now (after start, and after requests that change it). */
  async refreshStatus(): Promise<StatusResult | undefined> {
    const client = this.client;
    if (!client || client.state !== State.Running) return undefined;
    try {
      const s = await request0(client, Status);
      if (this.client === client && client.state === State.Running) this.setPhase({ kind: 'running', status: s });
      return s;
    } catch (e) {
      this.output.warn(`status request failed: ${errorMessage(e)}`);
      return undefined;
    }
  }

  /** languageclient's connection closed: restart after a crash, and tell the user. */
  private onClosed(): CloseHandlerResult {
    if (this.stopping) return { action: CloseAction.DoNotRestart, handled: true };
    const now = Date.now();
    this.crashes = this.crashes.filter((t) => now - t < CRASH_WINDOW_MS);
    this.crashes.push(now);
    const how = this.lastExit ?? 'connection closed';
    if (this.crashes.length > MAX_CRASHES) {
      this.restartingAfterCrash = false;
      const reason = `it stopped ${this.crashes.length} times in 3 minutes (last: ${how})`;
      this.gaveUpReason = reason;
      this.setPhase({ kind: 'stopped', reason });
      void this.showError(`llamakv: the sidecar keeps stopping, so it was not restarted: ${reason}.`);
      return { action: CloseAction.DoNotRestart, handled: true };
    }
    this.output.warn(`sidecar stopped unexpectedly (${how}); restarting it`);
    this.restartingAfterCrash = true;
    this.setPhase({ kind: 'starting' });
    void vscode.window
      .showWarningMessage(`llamakv: the sidecar stopped unexpectedly (${how}) and was restarted.`, 'Show Log')
      .then((a) => a && this.output.show());
    return { action: CloseAction.Restart, handled: true };
  }

  private async doStop(): Promise<void> {
    const client = this.client;
    this.stopping = true;
    this.client = undefined;
    if (client) {
      try {
        if (client.state !== State.Stopped) await client.stop(3000);
      } catch (e) {
        this.output.warn(`sidecar did not stop cleanly: ${errorMessage(e)}`);
      }
      await client.dispose().catch(() => undefined);
    }
    this.killChild();
    this.setPhase({ kind: 'stopped', reason: 'stopped' });
  }

  private killChild(): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }

  private onConfigChange(e: vscode.ConfigurationChangeEvent): void {
    const what = Config.classify(e);
    if (what === 'none') return;
    if (this.gaveUpReason !== undefined) {
      // it kept crashing (a model too large, say): a changed setting is worth another try
      this.output.info('settings changed while the sidecar was stopped after repeated failures: starting it again');
      this.restart().catch((err) => this.output.error(`restart failed: ${errorMessage(err)}`));
      return;
    }
    if (!this.client) return;
    if (what === 'restart') {
      this.output.info('a setting that needs a new sidecar changed: restarting it');
      this.restart().catch((err) => this.output.error(`restart failed: ${errorMessage(err)}`));
    } else if (this.client.state === State.Running) {
      const s = this.config.sidecarSettings();
      this.output.info(`settings changed: ${JSON.stringify({ modelPath: s.modelPath, kvPreset: s.kvPreset, kvSpec: s.kvSpec })}`);
      notify(this.client, UpdateSettings, s).catch((err) => this.output.error(`updateSettings failed: ${errorMessage(err)}`));
    }
  }

  private async showModelError(reason: string): Promise<void> {
    const path = this.config.modelPath || 'the automatic choice';
    this.output.error(`model ${path} could not be loaded: ${reason}`);
    const a = await vscode.window.showErrorMessage(`llamakv: the model (${path}) could not be loaded: ${reason}`, 'Select Model', 'Show Log');
    if (a === 'Select Model') void vscode.commands.executeCommand('llamakv.selectModel');
    else if (a === 'Show Log') this.output.show();
  }

  /** An error the user can act on: show the log, or restart. */
  async showError(message: string): Promise<void> {
    this.output.error(message);
    const a = await vscode.window.showErrorMessage(message, 'Show Log', 'Restart Sidecar');
    if (a === 'Show Log') this.output.show();
    else if (a === 'Restart Sidecar') void vscode.commands.executeCommand('llamakv.restartSidecar');
  }

  dispose(): void {
    void this.stop().finally(() => {
      this.disposed = true;
      for (const d of this.subscriptions) d.dispose();
    });
  }
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
