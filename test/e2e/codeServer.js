// codeServer.js — a real VS Code for tests and `npm start`: code-server (installed by setup.sh)
// on 127.0.0.1 with a free port and fresh state, Debian's chromium driven by playwright-core,
// and a watchdog so a server never outlives the process that started it.
'use strict';
const cp = require('child_process');
const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

const repoRoot = path.resolve(__dirname, '..', '..');

/** Run setup.sh (idempotent; fast once done) and return the code-server binary. */
function ensureCodeServer({ quiet = false } = {}) {
  const r = cp.spawnSync('bash', [path.join(__dirname, 'setup.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = (r.stdout || '').trim().split('\n');
  if (!quiet) for (const l of lines.slice(0, -1)) console.log(l);
  const bin = lines[lines.length - 1];
  if (r.status !== 0 || !bin || !fs.existsSync(bin)) throw new Error(`test/e2e/setup.sh failed (exit ${r.status})`);
  return bin;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function httpOk(url) {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.setTimeout(2000, () => {
      req.destroy();
      resolve(false);
    });
  });
}

/** Poll `fn` until it returns a truthy value (a state), or fail after `timeoutMs`. */
async function until(what, fn, timeoutMs, intervalMs = 100) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

const USER_SETTINGS = {
  'telemetry.telemetryLevel': 'off',
  'update.mode': 'none',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
  'extensions.ignoreRecommendations': true,
  'workbench.startupEditor': 'none',
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'workbench.welcomePage.walkthroughs.openOnInstall': false,
  'security.workspace.trust.enabled': false,
  'git.enabled': false,
  'npm.autoDetect': 'off',
  'typescript.disableAutomaticTypeAcquisition': true,
  'chat.commandCenter.enabled': false,
  'chat.disableAIFeatures': true,
  'workbench.secondarySideBar.defaultVisibility': 'hidden',
};

/**
 * Start code-server. Options:
 *   bin, stateDir (wiped unless keepState), folder, port (default: a free one), env (extra, passed
 *   to the extension host), vsix (installed first), settings (user settings, merged), lifetimeS
 *   (the watchdog stops it after this long even if its parent lives; default 900), keepState.
 * Returns { pid, port, baseUrl, url, logFile, stop() }.
 */
async function startCodeServer(o) {
  const state = path.resolve(o.stateDir);
  if (!o.keepState) fs.rmSync(state, { recursive: true, force: true });
  fs.mkdirSync(path.join(state, 'user-data', 'User'), { recursive: true });
  fs.mkdirSync(path.join(state, 'extensions'), { recursive: true });
  const settingsFile = path.join(state, 'user-data', 'User', 'settings.json');
  let existing = {};
  try {
    existing = JSON.parse(fs.readFileSync(settingsFile, 'utf8'));
  } catch {
    /* fresh state */
  }
  fs.writeFileSync(settingsFile, JSON.stringify({ ...USER_SETTINGS, ...existing, ...(o.settings || {}) }, null, 2));
  // code-server writes ~/.local/share/code-server and @vscode/deviceid ~/.cache/Microsoft
  // whatever --user-data-dir says: keep all of it inside the state folder.
  const env = {
    ...process.env,
    XDG_DATA_HOME: path.join(state, 'xdg', 'data'),
    XDG_CONFIG_HOME: path.join(state, 'xdg', 'config'),
    XDG_CACHE_HOME: path.join(state, 'xdg', 'cache'),
    EXTENSIONS_GALLERY: '{}', // no marketplace: this machine cannot reach one
    ...(o.env || {}),
  };
  const common = ['--config', '/dev/null', '--user-data-dir', path.join(state, 'user-data'), '--extensions-dir', path.join(state, 'extensions')];
  if (o.vsix) {
    const r = cp.spawnSync(o.bin, [...common, '--install-extension', o.vsix, '--force'], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`installing ${o.vsix} failed:\n${r.stdout}\n${r.stderr}`);
  }
  const port = o.port || (await freePort());
  const logFile = path.join(state, 'code-server.log');
  const log = fs.openSync(logFile, 'a');
  const args = [
    ...common,
    '--bind-addr', `127.0.0.1:${port}`,
    '--auth', 'none',
    '--disable-telemetry',
    '--disable-update-check',
    '--disable-workspace-trust',
    '--disable-getting-started-override',
    '--ignore-last-opened',
    o.folder,
  ];
  // detached: its own process group, so stop() ends the server and everything it started.
  const child = cp.spawn(o.bin, args, { env, detached: true, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  child.unref();
  const pid = child.pid;
  const watchdog = cp.spawn(process.execPath, [path.join(__dirname, 'watchdog.js'), String(process.pid), String(pid), String(o.lifetimeS ?? 900)], {
    detached: true,
    stdio: 'ignore',
  });
  watchdog.unref();
  let exited = false;
  child.on('exit', () => (exited = true));

  const stop = async () => {
    try {
      process.kill(-pid, 'SIGTERM');
    } catch {
      return;
    }
    const t0 = Date.now();
    while (Date.now() - t0 < 5000) {
      try {
        process.kill(-pid, 0);
      } catch {
        return;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  stopAtExit.add(pid);

  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await until('code-server /healthz', async () => {
      if (exited) throw new Error(`code-server exited:\n${fs.readFileSync(logFile, 'utf8')}`);
      return httpOk(`${baseUrl}/healthz`);
    }, 60000);
  } catch (e) {
    await stop();
    throw e;
  }
  return { pid, port, baseUrl, url: `${baseUrl}/?folder=${encodeURIComponent(o.folder)}`, logFile, stop };
}

// Servers stop with this process, however it ends (the watchdog covers SIGKILL).
const stopAtExit = new Set();
process.on('exit', () => {
  for (const pid of stopAtExit) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});
// On a signal, exit (which runs the handler above) unless the program handles that signal itself.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (process.listenerCount(sig) === 1) process.exit(130);
  });
}

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** Debian's chromium through playwright-core, with a throw-away profile. */
async function launchChromium({ viewport = { width: 1400, height: 860 } } = {}) {
  const { chromium } = require('playwright-core');
  const userDataDir = fs.mkdtempSync('/tmp/llamakv-chromium-');
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
    headless: true,
    viewport,
    // keep chromium's ~/.config/chromium and crash reports out of $HOME
    env: { ...process.env, XDG_CONFIG_HOME: userDataDir, XDG_CACHE_HOME: userDataDir },
  });
  const page = context.pages()[0] || (await context.newPage());
  return {
    context,
    page,
    close: async () => {
      await context.close().catch(() => undefined);
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** The URL that opens `folder` with an extension under development and its tests (code-server's
 *  CLI rejects --extensionTestsPath; the workbench reads the same options from `payload`). */
function testUrl(baseUrl, folder, extDevPath, testsPath) {
  const authority = new URL(baseUrl).host;
  const remote = (p) => `vscode-remote://${authority}${p}`;
  const payload = [['extensionDevelopmentPath', remote(extDevPath)]];
  if (testsPath) payload.push(['extensionTestsPath', remote(testsPath)]);
  return `${baseUrl}/?folder=${encodeURIComponent(folder)}&payload=${encodeURIComponent(JSON.stringify(payload))}`;
}

module.exports = { repoRoot, ensureCodeServer, freePort, until, startCodeServer, launchChromium, testUrl };
