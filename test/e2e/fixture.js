// fixture.js — the workspace the e2e tests open (a copy of test/fixtures/e2e-workspace with
// llamakv settings) and the tiny generated model they point llamakv.modelPath at.
'use strict';
const cp = require('child_process');
const fs = require('fs');
const path = require('path');

const repoRoot = path.resolve(__dirname, '..', '..');
const FIXTURE = path.join(repoRoot, 'test', 'fixtures', 'e2e-workspace');

/** Fresh copy of the fixture workspace at `dest`, with workspace settings. */
function prepareWorkspace(dest, settings) {
  fs.rmSync(dest, { recursive: true, force: true });
  fs.cpSync(FIXTURE, dest, { recursive: true });
  fs.mkdirSync(path.join(dest, '.vscode'), { recursive: true });
  fs.writeFileSync(path.join(dest, '.vscode', 'settings.json'), JSON.stringify(settings, null, 2));
  return dest;
}

/** The tiny random-weight Llama 3 GGUF shared with the other tests (generated once, cached). */
async function tinyModelPath() {
  const helpers = path.join(repoRoot, 'out', 'test', 'helpers.js');
  if (fs.existsSync(helpers)) return require(helpers).tinyModel();
  // Without the compiled helpers: the CLI's synthesizer, into the same cache folder.
  const file = path.join(process.env.LLAMAKV_CACHE || path.join(repoRoot, '.cache', 'models'), 'e2e-tiny.gguf');
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const r = cp.spawnSync(process.execPath, [path.join(repoRoot, 'out', 'sidecar', 'cli.js'), 'model', 'synth', '--out', `${file}.tmp`, '--preset', 'tiny'], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('llamakv model synth failed');
    fs.renameSync(`${file}.tmp`, file);
  }
  return file;
}

module.exports = { FIXTURE, prepareWorkspace, tinyModelPath };
