// explain.test.ts — the headless main job, `llamakv explain FILE`, run as a user would: streamed
// text and the closing KV line; a second run reloads the cache from disk; --json gives the result
// object; usage errors. Needs: the built addon and the generated tiny model.
import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { after, test } from 'node:test';
import { defaultWorkspace } from '../../sidecar/explain';
import { repoRoot, tinyModel, tmpDir } from '../helpers';
import { makeWorkspace } from './fixtures';

const addon = path.join(repoRoot, 'build', 'native', 'Release', 'llamakv.node');
const skip = !fs.existsSync(addon) && !process.env.LLAMAKV_ADDON ? 'native addon not built (npm run build:native)' : false;
const cli = path.join(repoRoot, 'out', 'sidecar', 'cli.js');
const dirs: string[] = [];
after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 120000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('explain: streams, ends with the KV line, reloads from disk, --json', { skip }, async () => {
  const model = await tinyModel();
  const base = tmpDir('llamakv-explain-');
  dirs.push(base);
  const ws = makeWorkspace(path.join(base, 'ws'), { copy: false });
  const file = path.join(ws.root, ws.appFiles[2]);
  const common = ['--workspace', ws.root, '--model', model, '--context', '2048', '--max-tokens', '8', '--storage', path.join(base, 'store')];

  const first = run(['explain', file, ...common]);
  assert.equal(first.code, 0, first.stderr);
  const lines = first.stdout.trimEnd().split('\n');
  assert.match(lines[lines.length - 1], /^KV cache: [\d.]+ [KMG]?B → [\d.]+ [KMG]?B \([−+]?\d+%\), [\d,]+ workspace tokens, \d+ files? left out$/);
  assert.ok(lines.length >= 2, 'answer text before the KV line');
  assert.match(first.stderr, /indexing workspace/);
  assert.match(first.stderr, /prefix cache: saved/);

  const second = run(['explain', file, ...common]);
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stderr, /prefix cache: loaded/);
  assert.doesNotMatch(second.stderr, /indexing workspace/);
  assert.equal(second.stdout, first.stdout, 'same answer from the reloaded cache');

  const json = run(['explain', file, ...common, '--json']);
  assert.equal(json.code, 0, json.stderr);
  const r = JSON.parse(json.stdout);
  assert.equal(typeof r.text, 'string');
  assert.ok(r.usage.promptTokens > r.usage.cachedTokens && r.usage.cachedTokens > 0);
  assert.ok(r.kv.bytes > 0 && r.kv.f16Bytes > 0);
  assert.equal(r.workspace.fromDisk, true);
  assert.equal(r.workspace.lastPrefilledTokens, 0);
  assert.equal(json.stderr, '', '--json keeps stderr quiet');
});

test('explain: usage errors and missing files', () => {
  const noFile = run(['explain']);
  assert.equal(noFile.code, 1);
  assert.match(noFile.stderr, /missing FILE/);
  const missing = run(['explain', '/nonexistent/x.ts']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /file not found/);
  const badFlag = run(['explain', __filename, '--bogus', '1']);
  assert.match(badFlag.stderr, /unknown option --bogus/);
});

test('explain: the default workspace is the repository holding the file', () => {
  const base = tmpDir();
  dirs.push(base);
  fs.mkdirSync(path.join(base, 'repo', '.git'), { recursive: true });
  fs.mkdirSync(path.join(base, 'repo', 'src'), { recursive: true });
  assert.equal(defaultWorkspace(path.join(base, 'repo', 'src', 'a.ts'), '/'), path.join(base, 'repo'));
  assert.equal(defaultWorkspace(path.join(base, 'loose', 'a.ts'), '/elsewhere'), path.join(base, 'loose'));
});
