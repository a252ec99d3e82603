#!/usr/bin/env node
// start.js — `npm start [-- FOLDER] [--port N] [--code-server]`: opens the extension in a real VS
// Code on FOLDER (default: this repository). With a local `code` CLI: a window with this
// repository as the extension under development. Otherwise: the pinned code-server (installed by
// test/e2e/setup.sh) on 127.0.0.1 with the freshly built .vsix installed, printing the address to
// open; Ctrl+C stops it. With no model configured or found, the sidecar serves a demo model and
// the chat panel says its answers are meaningless.
'use strict';
const cp = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { repoRoot, ensureCodeServer, startCodeServer, freePort } = require('../test/e2e/codeServer');

function parseArgs(argv) {
  const o = { folder: repoRoot, port: 0, codeServer: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') o.port = Number(argv[++i]);
    else if (a === '--code-server') o.codeServer = true;
    else if (a === '-h' || a === '--help') {
      console.log('usage: npm start [-- FOLDER] [--port N] [--code-server]');
      process.exit(0);
    } else o.folder = path.resolve(a);
  }
  if (!fs.existsSync(o.folder) || !fs.statSync(o.folder).isDirectory()) throw new Error(`not a folder: ${o.folder}`);
  return o;
}

function run(cmd, args) {
  const r = cp.spawnSync(cmd, args, { cwd: repoRoot, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status})`);
}

function newestMtime(dirs, ext) {
  let newest = 0;
  const walk = (d) => {
    if (!fs.existsSync(d)) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith(ext)) newest = Math.max(newest, fs.statSync(p).mtimeMs);
    }
  };
  dirs.forEach((d) => walk(path.join(repoRoot, d)));
  return newest;
}

const mtime = (f) => (fs.existsSync(path.join(repoRoot, f)) ? fs.statSync(path.join(repoRoot, f)).mtimeMs : 0);

/** Compile what is out of date (TypeScript, the webview bundle); the native addon must exist. */
function build() {
  if (!fs.existsSync(path.join(repoRoot, 'build', 'native', 'Release', 'llamakv.node'))) {
    throw new Error('the native engine is not built: run `npm install` (or `npm run build:native`) first');
  }
  if (newestMtime(['extension', 'sidecar'], '.ts') > Math.min(mtime('out/extension/extension.js'), mtime('out/sidecar/server.js'))) {
    console.log('[start] compiling TypeScript…');
    const r = cp.spawnSync(process.execPath, [path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], { cwd: repoRoot, stdio: 'inherit' });
    if (r.status !== 0) console.log('[start] tsc reported errors; continuing with what it emitted');
  }
  if (newestMtime(['media/src', 'extension'], '.ts') > mtime('media/dist/chat.js')) {
    console.log('[start] bundling the webview…');
    run('npm', ['run', '--silent', 'build:media']);
  }
}

function localCode() {
  if (process.env.LLAMAKV_NO_CODE_CLI === '1') return undefined;
  const r = cp.spawnSync('sh', ['-c', 'command -v code'], { encoding: 'utf8' });
  const bin = r.status === 0 ? r.stdout.trim() : '';
  // code-server's own `code` shim is not a desktop VS Code.
  return bin && !/code-server/.test(fs.realpathSync(bin)) ? bin : undefined;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  build();

  const code = o.codeServer ? undefined : localCode();
  if (code) {
    console.log(`[start] ${code} --extensionDevelopmentPath=${repoRoot} ${o.folder}`);
    run(code, [`--extensionDevelopmentPath=${repoRoot}`, '--new-window', o.folder]);
    return;
  }

  const bin = ensureCodeServer();
  const home = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'llamakv-e2e');
  const vsix = path.join(home, 'llamakv-start.vsix');
  console.log('[start] packaging the extension…');
  run(process.execPath, [path.join(repoRoot, 'node_modules', '@vscode', 'vsce', 'vsce'), 'package', '--allow-missing-repository', '--skip-license', '-o', vsix]);
  let port = o.port;
  if (!port) port = (await portFree(8080)) ? 8080 : await freePort();
  const server = await startCodeServer({
    bin,
    stateDir: path.join(home, 'start-state'),
    keepState: true, // the user's settings and chosen model survive restarts
    folder: o.folder,
    port,
    vsix,
    lifetimeS: 0,
  });
  console.log(`\nllamakv is running in code-server (VS Code ${codeServerVscodeVersion(bin, home)}):\n\n    ${server.url}\n`);
  console.log('Open it in a browser (from another machine: ssh -L ' + `${port}:127.0.0.1:${port}). Ctrl+C stops it. Log: ${server.logFile}`);
  // Stay up until Ctrl+C, or until code-server itself ends (the timer also keeps Node alive).
  const why = await new Promise((resolve) => {
    process.once('SIGINT', () => resolve('signal'));
    process.once('SIGTERM', () => resolve('signal'));
    const timer = setInterval(() => {
      try {
        process.kill(-server.pid, 0);
      } catch {
        clearInterval(timer);
        resolve('exited');
      }
    }, 2000);
  });
  if (why === 'exited') {
    console.error(`[start] code-server stopped by itself; see ${server.logFile}`);
    process.exit(1);
  }
  console.log('\n[start] stopping code-server…');
  await server.stop();
  process.exit(0);
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = require('net').createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

function codeServerVscodeVersion(bin, home) {
  const env = { ...process.env, XDG_DATA_HOME: path.join(home, 'start-state', 'xdg', 'data') };
  const r = cp.spawnSync(bin, ['--config', '/dev/null', '--version'], { encoding: 'utf8', env });
  const m = /with Code (\S+)/.exec(r.stdout || '');
  return m ? m[1] : '?';
}

main().catch((e) => {
  console.error(`npm start: ${e.message}`);
  process.exit(1);
});
