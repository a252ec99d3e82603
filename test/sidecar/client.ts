// client.ts — a test client for the real sidecar: spawns `node out/sidecar/server.js --stdio`,
// speaks JSON-RPC over its stdio (vscode-jsonrpc), records statsChanged notifications, work-done
// progress and stderr, and waits for states rather than for fixed times.
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';
import { pathToFileURL } from 'url';
import { createMessageConnection, MessageConnection, ProgressType, StreamMessageReader, StreamMessageWriter } from 'vscode-jsonrpc/node';
import { StatsChanged, StatusResult, SidecarSettings, TextDelta } from '../../sidecar/protocol';
import { repoRoot } from '../helpers';

export interface WorkDoneValue {
  kind: 'begin' | 'report' | 'end';
  title?: string;
  message?: string;
  percentage?: number;
}
const WorkDone = new ProgressType<WorkDoneValue>();

export class SidecarClient {
  stderr = '';
  readonly stats: StatusResult[] = [];
  /** Work-done tokens the server created (window/workDoneProgress/create). */
  readonly createdProgress: Array<string | number> = [];
  readonly exited: Promise<number | null>;
  private constructor(readonly proc: ChildProcess, readonly conn: MessageConnection) {
    this.exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
    proc.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      if (process.env.LLAMAKV_TEST_VERBOSE) process.stderr.write(d);
    });
    conn.onNotification(StatsChanged, (s) => this.stats.push(s));
    // the server may create work-done tokens for background prefill
    conn.onRequest('window/workDoneProgress/create', (p: { token: string | number }) => {
      this.createdProgress.push(p.token);
      return null;
    });
    conn.onRequest('client/registerCapability', () => null);
  }

  /** Starts the sidecar: `node out/sidecar/server.js --stdio`, or `llamakv serve --stdio` with viaCli. */
  static async start(opts: { roots: string[]; settings: Partial<SidecarSettings>; env?: NodeJS.ProcessEnv; viaCli?: boolean }): Promise<SidecarClient> {
    const args = opts.viaCli ? [path.join(repoRoot, 'out', 'sidecar', 'cli.js'), 'serve', '--stdio'] : [path.join(repoRoot, 'out', 'sidecar', 'server.js'), '--stdio'];
    const proc = spawn(process.execPath, args, {
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const conn = createMessageConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
    const c = new SidecarClient(proc, conn);
    conn.listen();
    await conn.sendRequest('initialize', {
      processId: process.pid,
      rootUri: opts.roots[0] ? pathToFileURL(opts.roots[0]).href : null,
      workspaceFolders: opts.roots.map((r) => ({ uri: pathToFileURL(r).href, name: path.basename(r) })),
      capabilities: { window: { workDoneProgress: true } },
      initializationOptions: opts.settings,
    });
    await conn.sendNotification('initialized', {});
    return c;
  }

  /** Collects `$/progress` values sent on a token. */
  collectProgress(token: string): WorkDoneValue[] {
    const out: WorkDoneValue[] = [];
    this.conn.onProgress(WorkDone, token, (v) => out.push(v));
    return out;
  }

  /** Collects text deltas sent on a partial-result token. */
  collectDeltas(token: string, onDelta?: (d: string, all: string[]) => void): string[] {
    const out: string[] = [];
    this.conn.onProgress(TextDelta, token, (v) => {
      out.push(v);
      onDelta?.(v, out);
    });
    return out;
  }

  /** Polls llamakv/status until `pred` holds (or fails after `ms`). */
  async waitForStatus(pred: (s: StatusResult) => boolean, ms = 60000): Promise<StatusResult> {
    const end = Date.now() + ms;
    for (;;) {
      const s = await this.conn.sendRequest<StatusResult>('llamakv/status');
      if (pred(s)) return s;
      if (Date.now() > end) throw new Error(`status never matched; last: ${JSON.stringify(s).slice(0, 500)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Orderly shutdown (shutdown + exit); kills the process if it does not leave. */
  async stop(): Promise<number | null> {
    if (this.proc.exitCode !== null) return this.proc.exitCode;
    try {
      await Promise.race([this.conn.sendRequest('shutdown'), new Promise((r) => setTimeout(r, 10000))]);
      await this.conn.sendNotification('exit');
    } catch {
      /* already gone */
    }
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10000);
    const code = await this.exited;
    clearTimeout(timer);
    this.conn.dispose();
    return code;
  }
}
