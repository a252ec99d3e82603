// bench.test.ts — `llamakv bench --quick` runs end to end on the tiny generated model: both engines
// report, the ratios are there, and the three report files are written. Needs the built addon and
// node-llama-cpp; no timing is asserted.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { repoRoot, tmpDir } from './helpers';
import type { BenchReport } from '../sidecar/bench';

test('llamakv bench --quick on the tiny model: both engines, ratios, JSON/markdown/SVG', { timeout: 300_000 }, () => {
  const out = tmpDir('llamakv-bench-');
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'out', 'sidecar', 'cli.js'), 'bench', '--quick', '--preset', 'tiny', '--reps', '1', '--out', out, '--json'], {
    encoding: 'utf8',
    timeout: 280_000,
  });
  assert.equal(r.status, 0, `bench failed: ${r.stderr}`);
  const rep = JSON.parse(fs.readFileSync(path.join(out, 'bench.json'), 'utf8')) as BenchReport;
  assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop()!).rows.length, rep.rows.length);

  assert.deepEqual(rep.rows.map((x) => x.engine).sort(), ['llama.cpp', 'llamakv']);
  for (const row of rep.rows) {
    assert.ok(row.prefill['512']?.median > 0, `${row.engine}: prefill 512 measured`);
    assert.ok(row.decode['128']?.median > 0, `${row.engine}: decode @128 measured`);
    assert.ok(row.decode['128'].kvBytes > 0, `${row.engine}: KV bytes known`);
    assert.ok(row.rss.peakMiB > 0, `${row.engine}: peak RSS known`);
  }
  assert.equal(rep.ratios.length, 1);
  const q = rep.ratios[0];
  assert.equal(q.llamakv, 'f16');
  assert.equal(q.llamaCpp, 'f16');
  assert.ok(q.prefill['512']! > 0 && q.decode['128']! > 0 && q.peakRss! > 0);
  // both engines hold the same f16 cache for the same tokens
  assert.ok(Math.abs(q.kvBytes['128']! - 1) < 0.05, `KV bytes ratio ${q.kvBytes['128']}`);
  assert.ok(rep.bandwidth && rep.bandwidth.readGBps > 0);
  // every decode run has the bandwidth probed around it, and a share against it
  for (const row of rep.rows) {
    const d = row.decode['128'];
    assert.ok(d.samples.every((s) => s.readGBpsAround! > 0), `${row.engine}: bandwidth probed around each decode run`);
    assert.ok(d.adjacentReadFraction! > 0 && Number.isFinite(d.adjacentReadFraction!), `${row.engine}: adjacent share ${d.adjacentReadFraction}`);
  }

  const md = fs.readFileSync(path.join(out, 'bench.md'), 'utf8');
  assert.match(md, /\| prefill 512 \(tok\/s\) \|/);
  assert.match(md, /ratio/);
  assert.match(md, /\| bandwidth @128 \(GB\/s, % of read: run · adjacent\) \| [\d.]+ \(\d+% · \d+%\)/);
  const svg = fs.readFileSync(path.join(out, 'decode.svg'), 'utf8');
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /llama\.cpp · /);
  fs.rmSync(out, { recursive: true, force: true });
});
