// config.ts — the one typed view of llamakv's settings; mirrors package.json
// `contributes.configuration` key for key, and turns them into the sidecar's SidecarSettings.
import * as vscode from 'vscode';
import type { SidecarSettings } from '../sidecar/protocol';

export type Backend = SidecarSettings['backend'];

/** Setting keys (without the `llamakv.` prefix) whose change needs a fresh sidecar process. */
// The backend is chosen when the engine starts (a CUDA context is not torn down in-process); every
// other setting the sidecar applies itself through `llamakv/updateSettings`.
export const RESTART_KEYS = ['backend'] as const;

export class Config {
  static readonly section = 'llamakv';

  constructor(private readonly storageDir: string) {}

  private get cfg(): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration(Config.section);
  }

  /** Path of a GGUF model; empty = the first discovered model, else the demo model. */
  get modelPath(): string {
    return this.cfg.get<string>('modelPath', '').trim();
  }
  get backend(): Backend {
    const b = this.cfg.get<string>('backend', 'auto');
    return b === 'cpu' || b === 'cuda' ? b : 'auto';
  }
  /** 0 = as many as the machine has cores. */
  get threads(): number {
    return Math.max(0, Math.floor(this.cfg.get<number>('threads', 0)));
  }
  get kvPreset(): string {
    return this.cfg.get<string>('kv.preset', 'balanced');
  }
  /** Custom compression spec; when set it wins over kv.preset. */
  get kvSpec(): string {
    return this.cfg.get<string>('kv.spec', '').trim();
  }
  /** 0 = no explicit budget. */
  get kvBudgetMB(): number {
    return Math.max(0, this.cfg.get<number>('kv.budgetMB', 0));
  }
  get contextMaxTokens(): number {
    return Math.max(0, Math.floor(this.cfg.get<number>('context.maxTokens', 32768)));
  }
  get include(): string[] {
    return this.cfg.get<string[]>('context.include', []);
  }
  get exclude(): string[] {
    return this.cfg.get<string[]>('context.exclude', []);
  }
  get persistCache(): boolean {
    return this.cfg.get<boolean>('cache.persist', true);
  }
  /** `files.exclude` globs that are switched on. */
  get filesExclude(): string[] {
    const fe = vscode.workspace.getConfiguration('files').get<Record<string, unknown>>('exclude', {});
    return Object.entries(fe)
      .filter(([, on]) => on === true)
      .map(([glob]) => glob);
  }

  /** Everything the sidecar is told, at start (initializationOptions) and on change. */
  sidecarSettings(): SidecarSettings {
    return {
      modelPath: this.modelPath,
      backend: this.backend,
      threads: this.threads,
      kvPreset: this.kvPreset,
      kvSpec: this.kvSpec,
      kvBudgetMB: this.kvBudgetMB,
      contextMaxTokens: this.contextMaxTokens,
      include: this.include,
      exclude: this.exclude,
      filesExclude: this.filesExclude,
      persistCache: this.persistCache,
      storageDir: this.storageDir,
    };
  }

  /** Whether a configuration change concerns llamakv at all, and whether it needs a restart. */
  static classify(e: vscode.ConfigurationChangeEvent): 'none' | 'update' | 'restart' {
    if (RESTART_KEYS.some((k) => e.affectsConfiguration(`${Config.section}.${k}`))) return 'restart';
    if (e.affectsConfiguration(Config.section) || e.affectsConfiguration('files.exclude')) return 'update';
    return 'none';
  }
}
