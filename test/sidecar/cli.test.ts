// cli.test.ts — the CLI's help and usage errors: `llamakv CMD --help` prints that command's usage
// on stdout and succeeds, whatever the command; a usage error names the problem once on stderr,
// then the usage, and fails. Needs only the compiled TypeScript (no model is loaded).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { repoRoot } from '../helpers';

const cli = (...args: string[]) =>
  spawnSync(process.execPath, [path.join(repoRoot, 'out', 'sidecar', 'cli.js'), ...args], { encoding: 'utf8', timeout: 60_000 });

test('llamakv CMD --help / -h: the usage of that command on stdout, exit 0', () => {
  for (const cmd of ['info', 'tokenize', 'eval', 'generate', 'model', 'explain', 'bench', 'tune', 'serve']) {
    for (const args of [[cmd, '--help'], [cmd, 'some.gguf', '-h'], [cmd, '--prompt', 'x', '--help']]) {
      const r = cli(...args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr, '', args.join(' '));
      assert.match(r.stdout, new RegExp(`^usage: llamakv ${cmd} `), args.join(' '));
      assert.equal(r.stdout.trim().split('\n').length, 1, args.join(' '));
    }
  }
  // after `--` it is an argument, not a request for help
  const r = cli('tokenize', '--text', 'x', '--', '--help');
  assert.notEqual(r.status, 0);
  assert.doesNotMatch(r.stdout, /^usage/);
});

test('llamakv: usage errors say what is wrong once, then the usage, exit 1', () => {
  const r = cli('model', 'frobnicate');
  assert.equal(r.status, 1);
  assert.equal(r.stderr, 'llamakv model: unknown subcommand "frobnicate" (there is one: synth)\nusage: llamakv model synth --out FILE ' +
    '[--preset tiny|1b|needle] [--type f32|f16|bf16|q8_0|q4_0|q2_k|q3_k|q4_k|q5_k|q6_k|iq4_nl|iq4_xs|q3_k_m|q4_k_m|q5_k_m] [--dequantized] [--seed N] [--json]\n');
  const g = cli('generate', 'm.gguf', '--prompt');
  assert.equal(g.status, 1);
  assert.match(g.stderr, /^llamakv generate: --prompt needs a value\nusage: llamakv generate MODEL /);
  const u = cli('frobnicate');
  assert.equal(u.status, 1);
  assert.match(u.stderr, /^llamakv: unknown command "frobnicate"\nusage: llamakv <command>/);
});
