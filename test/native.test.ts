// native.test.ts — builds the C++ test programs (native/tests/test_*.cpp: kernels against their
// references, GGUF reader cases, tokenizer cases) and the GGUF fuzz target, and runs them.
// Needs: cmake, g++; clang for the fuzzer (installed by .ci/run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { repoRoot } from './helpers';

const buildDir = path.join(repoRoot, 'build', 'native-tests');

function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  const r = spawnSync(cmd, args, { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, ...opts.env }, timeout: opts.timeoutMs ?? 600_000 });
  return { code: r.status, signal: r.signal, out: (r.stdout ?? '') + (r.stderr ?? '') };
}

test('C++ test programs build', () => {
  let r = run('cmake', ['-S', 'native', '-B', buildDir, '-DLLAMAKV_TESTS=ON', '-DLLAMAKV_CUDA=OFF', '-DCMAKE_BUILD_TYPE=Release']);
  assert.equal(r.code, 0, r.out);
  r = run('cmake', ['--build', buildDir, '-j', '2']);
  assert.equal(r.code, 0, r.out.slice(-4000));
});

const programs = fs
  .readdirSync(path.join(repoRoot, 'native', 'tests'))
  .filter((f) => /^test_.*\.cpp$/.test(f))
  .map((f) => f.replace(/\.cpp$/, ''));

for (const name of programs) {
  test(`native ${name}`, () => {
    const exe = path.join(buildDir, name);
    assert.ok(fs.existsSync(exe), `${exe} was not built`);
    const r = run(exe, []);
    const summary = r.out.trim().split('\n').filter((l) => /\d+ passed, \d+ failed/.test(l)).pop();
    console.log(`${name}: ${summary ?? '(no summary)'}`);
    // what a failed run needs to be reproduced: the first line (the programs print their seed
    // there), every FAIL line wherever it is, how the process ended, then the tail
    const lines = r.out.split('\n');
    const failures = lines.filter((l) => l.startsWith('FAIL')).slice(0, 40);
    const why = [lines[0], ...failures, `exit code ${r.code}${r.signal ? `, signal ${r.signal}` : ''}`, '--- tail:', r.out.slice(-3000)];
    assert.equal(r.code, 0, why.join('\n'));
    assert.match(summary ?? '', /\d+ passed, 0 failed/);
  });
}

test('GGUF loader fuzzing finds no crash (bounded run)', (t) => {
  const clang = run('sh', ['-c', 'command -v clang++']);
  if (clang.code !== 0) {
    t.skip('clang++ not installed (apt-get install clang); .ci/run installs it');
    return;
  }
  const r = run('bash', ['native/tools/fuzz.sh', path.join(repoRoot, 'build', 'fuzz')], {
    env: { FUZZ_SECONDS: process.env.FUZZ_SECONDS ?? '45' },
    timeoutMs: 900_000,
  });
  console.log(r.out.trim().split('\n').slice(-3).join('\n'));
  assert.equal(r.code, 0, r.out.slice(-6000));
});
