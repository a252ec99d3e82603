#!/usr/bin/env node
// run.js — the whole end-to-end run in a real VS Code (code-server 4.100.3 + Debian chromium):
//   1. setup check (test/e2e/setup.sh: Debian packages, pinned code-server; idempotent)
//   2. build (tsc, webview bundle) and package the .vsix; check what it holds; boot the packaged
//      sidecar from the unpacked .vsix alone
//   3. the integration suite (out/test/e2e/suite) inside code-server's extension host, with the
//      repository as the extension under development (page-address payload)
//   4. the UI tests (ui.js) against the installed .vsix
// and prints `N passed, N failed`; exits non-zero on any failure. Servers stop with it.
// Env: LLAMAKV_E2E_NO_BUILD=1 skips step 2's compile (when `npm test` just compiled);
//      LLAMAKV_E2E_ONLY=suite|ui|package runs one part; LLAMAKV_E2E_GREP=text runs the suite's
//      tests whose name has it; LLAMAKV_E2E_KEEP=1 keeps the temp folder.
'use strict';
const cp = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { repoRoot, ensureCodeServer, startCodeServer, launchChromium, testUrl, until } = require('./codeServer');
const { prepareWorkspace, tinyModelPath } = require('./fixture');
const { runUi } = require('./ui');

const ARTIFACTS = path.join(repoRoot, 'test-artifacts', 'e2e');
const only = process.env.LLAMAKV_E2E_ONLY || '';
const T0 = Date.now();
const secs = () => `${((Date.now() - T0) / 1000).toFixed(0)}s`;

const results = [];
function check(name, ok, detail) {
  results.push({ name, ok, detail });
  console.log(`${ok ? 'ok' : 'not ok'} - ${name}${detail ? ` (${detail})` : ''} [${secs()}]`);
}

function sh(cmd, args, opts = {}) {
  const r = cp.spawnSync(cmd, args, { cwd: repoRoot, encoding: 'utf8', ...opts });
  return { status: r.status, out: `${r.stdout || ''}${r.stderr || ''}` };
}

// ---- 2. build, package, inspect ------------------------------------------------------------

const REQUIRED_IN_VSIX = [
  'extension/package.json',
  'extension/out/extension/extension.js',
  'extension/out/sidecar/server.js',
  'extension/out/sidecar/protocol.js',
  'extension/build/native/Release/llamakv.node',
  'extension/media/dist/chat.js',
  'extension/media/chat.css',
  'extension/node_modules/vscode-languageclient/package.json',
  'extension/node_modules/vscode-languageserver/package.json',
];
const ALLOWED_IN_VSIX = [
  /^\[Content_Types\]\.xml$/,
  /^extension\.vsixmanifest$/,
  /^extension\/(package\.json|README\.md|LICENSE(\.\w+)?|CHANGELOG\.md|readme\.md|changelog\.md)$/,
  /^extension\/out\/(extension|sidecar)\/.*\.js$/,
  /^extension\/build\/native\/Release\/llamakv\.node$/,
  /^extension\/media\/(chat\.css|icon\.svg|dist\/chat\.js)$/,
  /^extension\/node_modules\//,
];

function buildAndPackage(work) {
  if (process.env.LLAMAKV_E2E_NO_BUILD !== '1') {
    const tsc = sh(process.execPath, [path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.']);
    // Errors elsewhere in the repository are not this suite's; missing outputs are.
    if (tsc.status !== 0) console.log(`[e2e] tsc reported errors (outputs are still written):\n${tsc.out.split('\n').slice(0, 15).join('\n')}`);
  }
  const media = sh('npm', ['run', '--silent', 'build:media']);
  check('webview bundle builds (tsc + esbuild)', media.status === 0, media.status === 0 ? '' : media.out.slice(-400));
  for (const f of ['out/extension/extension.js', 'out/sidecar/server.js', 'out/test/e2e/suite/index.js', 'build/native/Release/llamakv.node']) {
    if (!fs.existsSync(path.join(repoRoot, f))) throw new Error(`${f} is missing: build the project first (npm install / npm run build)`);
  }
  const vsix = path.join(work, 'llamakv.vsix');
  const vsce = sh(process.execPath, [path.join(repoRoot, 'node_modules', '@vscode', 'vsce', 'vsce'), 'package', '--allow-missing-repository', '--no-rewrite-relative-links', '--skip-license', '-o', vsix]);
  check('vsce package produces a .vsix', vsce.status === 0 && fs.existsSync(vsix), vsce.status === 0 ? `${(fs.statSync(vsix).size / 1e6).toFixed(2)} MB` : vsce.out.slice(-600));
  if (vsce.status !== 0) return undefined;

  const list = sh('unzip', ['-Z1', vsix]).out.split('\n').filter(Boolean);
  const missing = REQUIRED_IN_VSIX.filter((f) => !list.includes(f));
  check('the .vsix holds the extension, sidecar, native addon and media', missing.length === 0, missing.length ? `missing ${missing.join(', ')}` : `${list.length} files`);
  const extra = list.filter((f) => !ALLOWED_IN_VSIX.some((re) => re.test(f)));
  check('the .vsix holds nothing else', extra.length === 0, extra.length ? extra.slice(0, 10).join(', ') : '');

  // Boot the packaged sidecar from the unpacked .vsix alone (outside the repository, so no
  // module can resolve from the repo's node_modules): proves its run-time dependencies are in.
  const unpacked = path.join(work, 'unpacked');
  sh('unzip', ['-q', '-o', vsix, '-d', unpacked]);
  return { vsix, unpacked };
}

/** The packaged sidecar, run from the unpacked .vsix alone with no model anywhere (an empty
 *  HOME): it must start, generate the demo model, answer, and say the answer is from the demo. */
async function packagedSidecarBoots(unpacked, work) {
  const rpc = require('vscode-jsonrpc/node');
  const server = path.join(unpacked, 'extension', 'out', 'sidecar', 'server.js');
  const home = path.join(work, 'empty-home');
  fs.mkdirSync(home, { recursive: true });
  const env = { ...process.env, HOME: home, XDG_CACHE_HOME: path.join(home, '.cache') };
  for (const k of ['OLLAMA_MODELS', 'HF_HOME', 'HF_HUB_CACHE', 'LLAMA_CACHE']) delete env[k];
  const child = cp.spawn(process.execPath, [server, '--stdio'], { stdio: ['pipe', 'pipe', 'pipe'], cwd: home, env });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdin.on('error', () => undefined); // it may exit before our last write lands
  const conn = rpc.createMessageConnection(new rpc.StreamMessageReader(child.stdout), new rpc.StreamMessageWriter(child.stdin));
  conn.listen();
  try {
    const exited = new Promise((_, reject) => child.on('exit', (c) => reject(new Error(`exited ${c}: ${stderr.slice(-500)}`))));
    const work = (async () => {
      const opts = { modelPath: '', autoIndex: false, persistCache: false, storageDir: path.join(home, 'storage') };
      await conn.sendRequest('initialize', { processId: process.pid, rootUri: null, capabilities: {}, initializationOptions: opts });
      conn.sendNotification('initialized', {});
      const s = await conn.sendRequest('llamakv/status');
      check('the packaged sidecar starts from the unpacked .vsix alone', typeof s.version === 'string', `status version ${s.version}`);
      const r = await conn.sendRequest('llamakv/chat', { messages: [{ role: 'user', content: 'hi' }], context: 'none', maxTokens: 2 });
      await conn.sendRequest('shutdown');
      conn.sendNotification('exit').catch(() => undefined);
      return r;
    })();
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no answer after 120 s')), 120_000));
    const r = await Promise.race([work, exited, timeout]);
    check('with no model anywhere, the packaged sidecar answers with the demo model and says so', r.demo === true && typeof r.text === 'string', `model ${r.model}, demo ${r.demo}`);
  } catch (e) {
    check('the packaged sidecar runs from the .vsix with no model anywhere (demo model)', false, e.message.split('\n')[0]);
  } finally {
    conn.dispose();
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

// ---- 3. integration suite in code-server's extension host ---------------------------------

async function runSuite(bin, work, model) {
  const folder = prepareWorkspace(path.join(work, 'ws-suite'), { 'llamakv.modelPath': model, 'llamakv.cache.persist': false });
  const resultsFile = path.join(work, 'suite-results.json');
  const server = await startCodeServer({
    bin,
    stateDir: path.join(work, 'state-suite'),
    folder,
    env: { LLAMAKV_E2E_RESULTS: resultsFile },
  });
  const browser = await launchChromium();
  let code;
  try {
    const { page } = browser;
    let done;
    const exited = new Promise((r) => (done = r));
    await page.exposeFunction('codeAutomationLog', (type, args) => {
      const line = (Array.isArray(args) ? args : [args]).join(' ');
      if (/^(ok|not ok) - |passed, \d+ failed|^ {2,}/.test(line)) console.log(`  [host] ${line}`);
    });
    await page.exposeFunction('codeAutomationExit', (c) => done(c));
    const url = testUrl(server.baseUrl, folder, repoRoot, path.join(repoRoot, 'out', 'test', 'e2e', 'suite', 'index.js'));
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 6 * 60_000))]);
    if (code !== 0) await page.screenshot({ path: path.join(ARTIFACTS, 'suite-end.png') }).catch(() => undefined);
  } finally {
    await browser.close();
    await server.stop();
    saveLogs(path.join(work, 'state-suite'), 'suite');
  }
  let suite = [];
  try {
    suite = JSON.parse(fs.readFileSync(resultsFile, 'utf8')).results;
  } catch {
    /* the suite never wrote its results */
  }
  for (const r of suite) results.push({ name: `extension host: ${r.name}`, ok: r.ok, detail: r.error });
  if (suite.length === 0 || (code !== 0 && suite.every((r) => r.ok))) {
    check('the integration suite ran to its end', false, `exit ${code}; see ${path.join(work, 'state-suite', 'code-server.log')}`);
  }
}

// ---- 4. UI tests against the installed .vsix ------------------------------------------------

async function runUiTests(bin, work, model, vsix) {
  const folder = prepareWorkspace(path.join(work, 'ws-ui'), { 'llamakv.modelPath': model });
  const server = await startCodeServer({ bin, stateDir: path.join(work, 'state-ui'), folder, vsix });
  const browser = await launchChromium();
  try {
    await runUi({ page: browser.page, url: server.url, artifacts: ARTIFACTS, check });
  } finally {
    await browser.close();
    await server.stop();
    saveLogs(path.join(work, 'state-ui'), 'ui');
  }
}

/** Keep the extension's output channel and the server log of a run with the screenshots. */
function saveLogs(stateDir, prefix) {
  const find = (dir, name) => {
    if (!fs.existsSync(dir)) return [];
    return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
      const p = path.join(dir, e.name);
      return e.isDirectory() ? find(p, name) : e.name === name ? [p] : [];
    });
  };
  for (const f of find(path.join(stateDir, 'user-data', 'logs'), 'llamakv.log')) fs.copyFileSync(f, path.join(ARTIFACTS, `${prefix}-llamakv.log`));
  const cs = path.join(stateDir, 'code-server.log');
  if (fs.existsSync(cs)) fs.copyFileSync(cs, path.join(ARTIFACTS, `${prefix}-code-server.log`));
}

// ---- main -----------------------------------------------------------------------------------

async function main() {
  fs.rmSync(ARTIFACTS, { recursive: true, force: true });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'llamakv-e2e-'));
  try {
    const bin = ensureCodeServer();
    console.log(`[e2e] code-server: ${bin} [${secs()}]`);
    const pkg = buildAndPackage(work);
    console.log(`[e2e] built and packaged [${secs()}]`);
    if (pkg && (!only || only === 'package')) await packagedSidecarBoots(pkg.unpacked, work);
    const model = await tinyModelPath();
    console.log(`[e2e] model: ${model} [${secs()}]`);
    if (!only || only === 'suite') {
      await runSuite(bin, work, model);
      console.log(`[e2e] integration suite done [${secs()}]`);
    }
    if (pkg && (!only || only === 'ui')) {
      await runUiTests(bin, work, model, pkg.vsix);
      console.log(`[e2e] UI tests done [${secs()}]`);
    }
  } catch (e) {
    check('e2e harness', false, e && e.stack ? e.stack : String(e));
  } finally {
    if (process.env.LLAMAKV_E2E_KEEP === '1') console.log(`[e2e] kept ${work}`);
    else fs.rmSync(work, { recursive: true, force: true });
  }
  const failed = results.filter((r) => !r.ok);
  fs.writeFileSync(path.join(ARTIFACTS, 'results.json'), JSON.stringify(results, null, 2));
  if (failed.length) {
    console.log('\nfailed:');
    for (const r of failed) console.log(`  - ${r.name}${r.detail ? `: ${String(r.detail).split('\n').slice(0, 6).join('\n      ')}` : ''}`);
  }
  console.log(`\ne2e: ${results.length - failed.length} passed, ${failed.length} failed (${secs()}; screenshots in ${path.relative(repoRoot, ARTIFACTS)}/)`);
  process.exit(failed.length ? 1 : 0);
}

main();
