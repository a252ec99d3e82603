// args.ts — a small argv parser for the CLI: positionals, --flag value, --flag=value, booleans.
export interface ParsedArgs {
  positionals: string[];
  flags: Map<string, string | true>;
}

export class UsageError extends Error {}

export function parseArgs(argv: string[], booleans: string[] = []): ParsedArgs {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      if (eq >= 0) flags.set(name, a.slice(eq + 1));
      else if (booleans.includes(name)) flags.set(name, true);
      else {
        if (i + 1 >= argv.length) throw new UsageError(`--${name} needs a value`);
        flags.set(name, argv[++i]);
      }
    } else {
      positionals.push(a);
    }
  }
  return { positionals, flags };
}

export function flagStr(a: ParsedArgs, name: string, dflt?: string): string | undefined {
  const v = a.flags.get(name);
  if (v === undefined) return dflt;
  if (v === true) throw new UsageError(`--${name} needs a value`);
  return v;
}

export function flagNum(a: ParsedArgs, name: string, dflt?: number): number | undefined {
  const v = flagStr(a, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${v}"`);
  return n;
}

export function flagBool(a: ParsedArgs, name: string): boolean {
  return a.flags.get(name) === true || a.flags.get(name) === 'true';
}

export function checkFlags(a: ParsedArgs, known: string[]): void {
  for (const k of a.flags.keys()) if (!known.includes(k)) throw new UsageError(`unknown option --${k}`);
}
