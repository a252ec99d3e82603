// harness.ts — a minimal test runner for the extension host (no mocha to install): tests run in
// order, each with a time limit; `until` waits for a state; results go to the console (which
// code-server forwards to the runner) and, as JSON, to $LLAMAKV_E2E_RESULTS.
import * as fs from 'fs';

interface Test {
  name: string;
  fn: () => Promise<void>;
  timeoutMs: number;
}

const tests: Test[] = [];

export function test(name: string, fn: () => Promise<void>, timeoutMs = 60_000): void {
  tests.push({ name, fn, timeoutMs });
}

/** Wait until `fn` returns something truthy (a state), polling; fail with `what` after the limit. */
export async function until<T>(what: string, fn: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs = 30_000, intervalMs = 50): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no result after ${ms} ms`)), ms))),
  ]);
}

export interface Result {
  name: string;
  ok: boolean;
  ms: number;
  error?: string;
}

export async function runAll(label: string): Promise<Result[]> {
  const results: Result[] = [];
  const only = process.env.LLAMAKV_E2E_GREP;
  for (const [i, t] of tests.entries()) {
    // The first test (activation) is every other test's setup: it always runs.
    if (only && i > 0 && !t.name.includes(only)) continue;
    const t0 = Date.now();
    try {
      await withTimeout(t.fn(), t.timeoutMs, t.name);
      results.push({ name: t.name, ok: true, ms: Date.now() - t0 });
      console.log(`ok - ${label}: ${t.name} (${Date.now() - t0} ms)`);
    } catch (e) {
      const error = e instanceof Error ? (e.stack ?? e.message) : String(e);
      results.push({ name: t.name, ok: false, ms: Date.now() - t0, error });
      console.log(`not ok - ${label}: ${t.name} (${Date.now() - t0} ms)\n  ${error.split('\n').join('\n  ')}`);
    }
  }
  const passed = results.filter((r) => r.ok).length;
  console.log(`${label}: ${passed} passed, ${results.length - passed} failed`);
  const out = process.env.LLAMAKV_E2E_RESULTS;
  if (out) fs.writeFileSync(out, JSON.stringify({ label, results }, null, 2));
  return results;
}
