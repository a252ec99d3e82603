#!/usr/bin/env node
// electron.js — the same integration suite (out/test/e2e/suite) in desktop VS Code, downloaded by
// @vscode/test-electron: `npm run test:electron` on a machine that reaches Microsoft's CDN.
// (Machines without that access run the suite in code-server: test/e2e/run.js.)
// Env: VSCODE_VERSION (default 1.100.3, the VS Code inside the pinned code-server).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { runTests } = require('@vscode/test-electron');
const { prepareWorkspace, tinyModelPath } = require('./fixture');

const repoRoot = path.resolve(__dirname, '..', '..');

async function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'llamakv-electron-'));
  const model = await tinyModelPath();
  const folder = prepareWorkspace(path.join(work, 'ws'), { 'llamakv.modelPath': model, 'llamakv.cache.persist': false });
  const resultsFile = path.join(work, 'results.json');
  let code = 1;
  try {
    code = await runTests({
      version: process.env.VSCODE_VERSION || '1.100.3',
      extensionDevelopmentPath: repoRoot,
      extensionTestsPath: path.join(repoRoot, 'out', 'test', 'e2e', 'suite', 'index.js'),
      launchArgs: [folder, '--disable-extensions', '--disable-workspace-trust', '--skip-welcome', '--skip-release-notes', `--user-data-dir=${path.join(work, 'user-data')}`],
      extensionTestsEnv: { LLAMAKV_E2E_RESULTS: resultsFile },
    });
  } catch (e) {
    const msg = String(e && e.message ? e.message : e);
    console.error(/ENOTFOUND|ECONNREFUSED|ETIMEDOUT|getaddrinfo|download/i.test(msg)
      ? `test:electron: VS Code could not be downloaded (${msg.split('\n')[0]}); run the suite in code-server instead: node test/e2e/run.js`
      : `test:electron: ${msg}`);
  }
  let results = [];
  try {
    results = JSON.parse(fs.readFileSync(resultsFile, 'utf8')).results;
  } catch {
    /* the suite did not run */
  }
  const passed = results.filter((r) => r.ok).length;
  console.log(`${passed} passed, ${results.length - passed} failed`);
  fs.rmSync(work, { recursive: true, force: true });
  process.exit(code === 0 && results.length > 0 && passed === results.length ? 0 : 1);
}

main();
