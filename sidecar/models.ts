// models.ts — finds GGUF Llama models the user already has (explicit setting, Ollama, LM Studio,
// the Hugging Face cache, llama.cpp's cache), reports each one's architecture and size from its
// header, refuses non-Llama files with a reason, and generates the demo model when none is found.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { inspectGguf, unsupportedReason } from './gguf-header';
import { log } from './log';
import type { DiscoveredModel } from './protocol';

export interface DiscoveryOptions {
  /** Explicit model path from the settings (tried first). */
  setting?: string;
  /** Home directory (default os.homedir()); tests point it at a fake tree. */
  home?: string;
  /** Environment (default process.env): OLLAMA_MODELS, HF_HUB_CACHE, HF_HOME, LLAMA_CACHE, XDG_CACHE_HOME. */
  env?: NodeJS.ProcessEnv;
}

/** Where each source keeps its files. Exported so `status`/docs can show what was searched. */
export function searchRoots(opts: DiscoveryOptions = {}): Array<{ source: DiscoveredModel['source']; dir: string }> {
  const home = opts.home ?? os.homedir();
  const env = opts.env ?? process.env;
  const xdgCache = env.XDG_CACHE_HOME || path.join(home, '.cache');
  const roots: Array<{ source: DiscoveredModel['source']; dir: string }> = [];
  if (env.OLLAMA_MODELS) roots.push({ source: 'ollama', dir: env.OLLAMA_MODELS });
  roots.push({ source: 'ollama', dir: path.join(home, '.ollama', 'models') });
  roots.push({ source: 'ollama', dir: '/usr/share/ollama/.ollama/models' }); // Linux system service
  roots.push({ source: 'lmstudio', dir: path.join(home, '.lmstudio', 'models') });
  roots.push({ source: 'lmstudio', dir: path.join(xdgCache, 'lm-studio', 'models') });
  if (env.HF_HUB_CACHE) roots.push({ source: 'huggingface', dir: env.HF_HUB_CACHE });
  if (env.HF_HOME) roots.push({ source: 'huggingface', dir: path.join(env.HF_HOME, 'hub') });
  roots.push({ source: 'huggingface', dir: path.join(xdgCache, 'huggingface', 'hub') });
  if (env.LLAMA_CACHE) roots.push({ source: 'llama.cpp', dir: env.LLAMA_CACHE });
  roots.push({ source: 'llama.cpp', dir: path.join(xdgCache, 'llama.cpp') });
  return roots;
}

/** Inspects one candidate file: architecture, size, and whether llamakv can run it. */
export function describeModel(file: string, name: string, source: DiscoveredModel['source']): DiscoveredModel {
  let bytes = 0;
  try {
    bytes = fs.statSync(file).size;
  } catch (e) {
    return { path: file, name, source, architecture: null, bytes: 0, usable: false, reason: `cannot read: ${(e as Error).message}` };
  }
  try {
    const s = inspectGguf(file);
    const reason = unsupportedReason(s);
    return { path: file, name, source, architecture: s.architecture, bytes, usable: !reason, ...(reason ? { reason } : {}) };
  } catch (e) {
    return { path: file, name, source, architecture: null, bytes, usable: false, reason: (e as Error).message };
  }
}

/** A folder's entries by name; none when it cannot be read (missing, no permission). */
function sortedEntries(dir: string): fs.Dirent[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name));
  } catch {
    return [];
  }
}

/** Files ending in .gguf under dir, following symlinks (the HF cache links snapshots to blobs). */
function findGguf(dir: string, maxDepth: number): string[] {
  const out: string[] = [];
  const walk = (d: string, depth: number) => {
    for (const e of sortedEntries(d)) {
      const p = path.join(d, e.name);
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        try {
          const st = fs.statSync(p);
          isDir = st.isDirectory();
          isFile = st.isFile();
        } catch {
          continue; // dangling link (an interrupted download)
        }
      }
      if (isDir && depth < maxDepth && !e.name.startsWith('.')) walk(p, depth + 1);
      else if (isFile && /\.gguf$/i.test(e.name)) out.push(p);
    }
  };
  walk(dir, 0);
  return out;
}

/** Ollama: manifests/<host>/<namespace>/<model>/<tag> (JSON) name a blob layer of type image.model. */
function ollamaModels(dir: string): Array<{ file: string; name: string }> {
  const manifests = path.join(dir, 'manifests');
  const out: Array<{ file: string; name: string }> = [];
  const walk = (d: string, parts: string[]) => {
    for (const e of sortedEntries(d)) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && parts.length < 3) walk(p, [...parts, e.name]);
      else if (e.isFile() && parts.length === 3) {
        const [host, ns, model] = parts;
        const name =
          host === 'registry.ollama.ai' && ns === 'library' ? `${model}:${e.name}` : host === 'registry.ollama.ai' ? `${ns}/${model}:${e.name}` : `${host}/${ns}/${model}:${e.name}`;
        try {
          const manifest = JSON.parse(fs.readFileSync(p, 'utf8')) as { layers?: Array<{ mediaType?: string; digest?: string }> };
          const layer = manifest.layers?.find((l) => l.mediaType === 'application/vnd.ollama.image.model');
          if (!layer?.digest || !/^sha256:[0-9a-f]{64}$/.test(layer.digest)) continue;
          const hex = layer.digest.slice(7);
          const candidates = [path.join(dir, 'blobs', `sha256-${hex}`), path.join(dir, 'blobs', `sha256:${hex}`)];
          const file = candidates.find((c) => fs.existsSync(c));
          if (file) out.push({ file, name });
        } catch (err) {
          log.warn(`models: skipping unreadable Ollama manifest ${p}: ${(err as Error).message}`);
        }
      }
    }
  };
  walk(manifests, []);
  return out;
}

function friendlyName(source: DiscoveredModel['source'], root: string, file: string): string {
  const rel = path.relative(root, file);
  if (source === 'huggingface') {
    // models--org--repo/snapshots/<rev>/file.gguf → org/repo/file.gguf
    const m = /^models--([^/\\]+)[/\\]snapshots[/\\][^/\\]+[/\\](.+)$/.exec(rel);
    if (m) return `${m[1].replace(/--/g, '/')}/${m[2]}`;
  }
  return rel.split(path.sep).join('/');
}

/**
 * Every GGUF model found, setting first, then Ollama, LM Studio, Hugging Face, llama.cpp. Files
 * reached twice (links, overlapping roots) are listed once. Unusable ones stay in the list with
 * a reason so the user sees why a model they have is not offered.
 */
export function discoverModels(opts: DiscoveryOptions = {}): DiscoveredModel[] {
  const found: DiscoveredModel[] = [];
  const seen = new Set<string>();
  const add = (file: string, name: string, source: DiscoveredModel['source']) => {
    let key = file;
    try {
      key = fs.realpathSync(file);
    } catch {
      /* keep the path */
    }
    if (seen.has(key)) return;
    seen.add(key);
    found.push(describeModel(file, name, source));
  };
  if (opts.setting) {
    const file = path.resolve(opts.setting.replace(/^~(?=$|[/\\])/, opts.home ?? os.homedir()));
    if (fs.existsSync(file)) add(file, path.basename(file), 'setting');
    else found.push({ path: file, name: path.basename(file), source: 'setting', architecture: null, bytes: 0, usable: false, reason: 'file not found' });
  }
  const doneRoots = new Set<string>();
  for (const { source, dir } of searchRoots(opts)) {
    const resolved = path.resolve(dir);
    if (doneRoots.has(resolved) || !fs.existsSync(resolved)) continue;
    doneRoots.add(resolved);
    if (source === 'ollama') {
      for (const m of ollamaModels(resolved)) add(m.file, m.name, source);
    } else {
      const depth = source === 'huggingface' ? 5 : source === 'lmstudio' ? 4 : 2;
      for (const f of findGguf(resolved, depth)) add(f, friendlyName(source, resolved, f), source);
    }
  }
  return found;
}

/** The model to use: the setting when it is usable, else the first usable discovered one. */
export function pickModel(models: DiscoveredModel[]): DiscoveredModel | null {
  return models.find((m) => m.usable) ?? null;
}

export const DEMO_FILE = 'llamakv-demo-llama3.gguf';
export const DEMO_NOTICE = 'demo model (random weights): its answers are meaningless; point llamakv.modelPath at a Llama 3 GGUF for real answers';

/**
 * The demo model (random weights, real Llama 3 vocabulary) under storageDir, generated on first
 * use with the engine's synthesizer. Written to a temporary name and renamed, so a crash never
 * leaves a half-written model behind.
 */
export async function ensureDemoModel(storageDir: string): Promise<DiscoveredModel> {
  const file = path.join(storageDir, DEMO_FILE);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(storageDir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    log.info(`models: no Llama model found; generating the demo model at ${file}`);
    const { synthModel } = await import('./synth');
    try {
      await synthModel({ out: tmp, preset: 'tiny', type: 'q8_0', seed: 42 }); // ~42 MiB, quick on any CPU
      fs.renameSync(tmp, file);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  }
  const d = describeModel(file, 'llamakv demo (random weights)', 'demo');
  return d;
}
