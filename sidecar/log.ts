// log.ts — the sidecar's log: one line per event on stderr (stdout carries JSON-RPC in --stdio
// mode; the extension shows stderr in its output channel). LLAMAKV_LOG=debug shows debug lines.
const levels = { debug: 10, info: 20, warn: 30, error: 40 } as const;
type Level = keyof typeof levels;

let threshold: number = levels[(process.env.LLAMAKV_LOG as Level) in levels ? (process.env.LLAMAKV_LOG as Level) : 'info'];
let quiet = false;

function write(level: Level, msg: string): void {
  if ((quiet && level !== 'error') || levels[level] < threshold) return;
  const t = new Date().toISOString().slice(11, 23);
  process.stderr.write(`[${t}] ${level.padEnd(5)} ${msg}\n`);
}

export const log = {
  debug: (msg: string) => write('debug', msg),
  info: (msg: string) => write('info', msg),
  warn: (msg: string) => write('warn', msg),
  error: (msg: string) => write('error', msg),
  setLevel(level: Level): void {
    threshold = levels[level];
  },
  /** Silences all but errors (the CLI's --json mode). */
  setQuiet(q: boolean): void {
    quiet = q;
  },
};

/** Routes console.* to stderr, so stray output can never corrupt the JSON-RPC stream on stdout. */
export function consoleToStderr(): void {
  const fmt = (args: unknown[]) => args.map((a) => (typeof a === 'string' ? a : require('util').inspect(a))).join(' ');
  console.log = (...a: unknown[]) => write('info', fmt(a));
  console.info = (...a: unknown[]) => write('info', fmt(a));
  console.debug = (...a: unknown[]) => write('debug', fmt(a));
  console.warn = (...a: unknown[]) => write('warn', fmt(a));
  console.error = (...a: unknown[]) => write('error', fmt(a));
}
