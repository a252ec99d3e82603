// ui.js — UI tests of the installed .vsix in code-server, through Debian's chromium and
// playwright-core: what a user does and sees. Each step waits for a state (an element, a text),
// never for a fixed time; screenshots go to the artifacts folder.
'use strict';
const fs = require('fs');
const path = require('path');
const { until } = require('./codeServer');

const STATUS_ITEM = '#workbench\\.parts\\.statusbar .statusbar-item';
const SAVING_RE = /KV \d[\d.]* [KMGT]?B → \d[\d.]* [KMGT]?B \([−+]?\d+%\)/;

/** Model output that would run script if it ever reached the DOM unsanitized. */
const XSS_ANSWER = [
  'Inline <script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2"> here.',
  '',
  '<iframe src="javascript:parent.__pwned = 3"></iframe>',
  '',
  '[a markdown link](javascript:window.__pwned=4) and <a href="javascript:window.__pwned=5" onclick="window.__pwned=6">a raw link</a>',
  '',
  '<svg onload="window.__pwned = 7"><script>window.__pwned = 8</script></svg>',
  '',
  '```ts',
  'export function double(x: number): number { return x * 2; }',
  '```',
].join('\n');

/** The webview frame (two iframes deep) whose document has `selector`. */
async function webviewFrame(page, selector, timeoutMs = 30000) {
  return until(`a webview frame with ${selector}`, async () => {
    for (const f of page.frames()) {
      if (f === page.mainFrame() || f.isDetached()) continue;
      try {
        if (await f.$(selector)) return f;
      } catch {
        /* frame navigating */
      }
    }
    return undefined;
  }, timeoutMs, 200);
}

/** Run a command from the palette (F1), by its title. */
async function palette(page, title) {
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 15000 });
  await input.fill(`>${title}`);
  await page.locator('.quick-input-list .monaco-list-row.focused', { hasText: title }).first().waitFor({ timeout: 15000 });
  await page.keyboard.press('Enter');
  // The command has run once the palette closes, or once the widget shows another quick pick
  // (a command such as Select Model reuses it at once, so it may never be hidden in between).
  await page.waitForFunction(() => {
    const w = document.querySelector('.quick-input-widget');
    const i = document.querySelector('.quick-input-widget input');
    return !w || getComputedStyle(w).display === 'none' || !(i && i.value.startsWith('>'));
  }, undefined, { timeout: 30000 });
}

/** Open a workspace file through Quick Open. */
async function quickOpen(page, name) {
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 15000 });
  await input.fill(name);
  await page.locator('.quick-input-list .monaco-list-row.focused', { hasText: name }).first().waitFor({ timeout: 15000 });
  await page.keyboard.press('Enter');
  await page.locator('.tabs-container .tab.active', { hasText: name }).waitFor({ timeout: 15000 });
}

/** One turn's state and text, read from the chat webview. */
function readTurn(frame, which) {
  return frame.evaluate((which) => {
    const turns = [...document.querySelectorAll('.turn')];
    const t = which === 'last' ? turns[turns.length - 1] : document.getElementById(which);
    if (!t) return null;
    return { id: t.id, state: t.dataset.state, kind: t.dataset.kind, text: t.querySelector('.answer').textContent, count: turns.length, meta: t.querySelector('.meta').textContent };
  }, which);
}

/** Wait for a turn to stream: seen in the streaming state with text that then grows. */
async function waitStreamed(frame, which, timeoutMs) {
  const first = await until('the answer to start streaming', async () => {
    const t = await readTurn(frame, which);
    return t && t.state === 'streaming' && t.text.replace('▍', '').length > 0 ? t : undefined;
  }, timeoutMs, 50);
  const grown = await until('the streaming answer to grow', async () => {
    const t = await readTurn(frame, first.id);
    return t && (t.text.length > first.text.length || t.state !== 'streaming') ? t : undefined;
  }, timeoutMs, 50);
  return { first, grown };
}

/**
 * The UI tests. `url` opens the fixture workspace in code-server with the .vsix installed.
 * `check(name, ok, detail)` records a result. Returns when done; never throws.
 */
async function runUi({ page, url, artifacts, check }) {
  fs.mkdirSync(artifacts, { recursive: true });
  const shot = (name) => page.screenshot({ path: path.join(artifacts, name) }).catch(() => undefined);
  // Webview resources use *.vscode-resource.vscode-cdn.net addresses that the webview's service
  // worker answers from the server; only what really went (or tried to go) out counts.
  const external = new Set();
  const isLocal = (u) => ['127.0.0.1', 'localhost'].includes(u.hostname) || ['data:', 'blob:', 'vscode-file:'].includes(u.protocol);
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (!isLocal(u) && !r.fromServiceWorker()) external.add(u.origin);
  });
  page.on('requestfailed', (r) => {
    const u = new URL(r.url());
    if (!isLocal(u)) external.add(`${u.origin} (failed)`);
  });
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));

  let failed = 0;
  const step = async (name, fn) => {
    if (failed >= 3) return check(name, false, 'skipped after 3 failures');
    const t0 = Date.now();
    try {
      const detail = await fn();
      check(name, true, `${detail ? `${detail}, ` : ''}${Date.now() - t0} ms`);
    } catch (e) {
      failed++;
      check(name, false, String(e && e.message ? e.message : e).split('\n')[0]);
      await shot(`failed-${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
    }
  };

  let chat;
  let explained;
  await step('workbench loads the fixture folder', async () => {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
    await page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'src' }).first().waitFor({ timeout: 60000 });
    await page.locator('.monaco-workbench .part.editor').click({ position: { x: 300, y: 200 } }).catch(() => undefined);
  });

  await step('palette "llamakv: Explain File" on an open file', async () => {
    await quickOpen(page, 'greet.ts');
    await palette(page, 'llamakv: Explain File');
  });

  await step('the answer streams into the chat webview', async () => {
    chat = await webviewFrame(page, '#app[data-ready="true"]', 60000);
    const { first, grown } = await waitStreamed(chat, 'last', 90000);
    if (first.kind !== 'explain') throw new Error(`turn kind ${first.kind}`);
    explained = first.id;
    return `${first.text.length} → ${grown.text.length} chars while streaming`;
  });

  await step('the explained answer finishes, with the context used', async () => {
    const t = await until('the answer to finish', async () => {
      const x = await readTurn(chat, explained);
      return x && x.state !== 'streaming' ? x : undefined;
    }, 120000, 200);
    if (t.state !== 'done') throw new Error(`state ${t.state}: ${t.meta}`);
    if (!/context workspace: \d+ files?, [\d,]+ tokens/.test(t.meta)) throw new Error(`no context line: ${t.meta}`);
    const header = await chat.locator('.model-line').innerText();
    const demo = await chat.locator('.banner.demo').isVisible();
    await shot('explain-file.png');
    return `${t.text.length} chars; header "${header.replace(/\s+/g, ' ')}"; demo banner ${demo ? 'shown' : 'hidden'}`;
  });

  await step('the status bar shows the memory the KV cache saves', async () => {
    const item = page.locator(STATUS_ITEM, { hasText: /KV / }).first();
    await item.waitFor({ timeout: 30000 });
    const text = await until('a saving figure in the status bar', async () => {
      const s = (await item.innerText()).trim();
      return SAVING_RE.test(s) ? s : undefined;
    }, 30000, 200);
    await shot('status-bar.png');
    await page.locator('#workbench\\.parts\\.statusbar').screenshot({ path: path.join(artifacts, 'status-bar-only.png') }).catch(() => undefined);
    return `"${text}"`;
  });

  await step('the Stop button cancels a streaming answer', async () => {
    await chat.locator('textarea.input').fill('Explain src/main.ts in detail, line by line.');
    await chat.locator('textarea.input').press('Enter');
    const before = explained;
    const t = await until('a new streaming turn', async () => {
      const x = await readTurn(chat, 'last');
      return x && x.id !== before && x.state === 'streaming' && x.text.replace('▍', '').length > 0 ? x : undefined;
    }, 60000, 50);
    await chat.locator('button.stop').click();
    await until('the turn to show as stopped', async () => (await readTurn(chat, t.id))?.state === 'cancelled', 5000, 50);
    await chat.locator('button.stop').waitFor({ state: 'hidden', timeout: 15000 });
    await shot('stopped.png');
    return 'stopped, and the sidecar settled';
  });

  await step('model output with <script>/<img onerror> is inert', async () => {
    await chat.evaluate(() => {
      window.__pwned = 0;
      window.__violations = [];
      document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    await chat.evaluate((answer) => {
      const turn = { id: 'xss', kind: 'chat', prompt: 'Prompt <img src=x onerror="window.__pwned = 9">', answer, state: 'done' };
      window.dispatchEvent(new MessageEvent('message', { data: { type: 'turn', turn } }));
    }, XSS_ANSWER);
    await chat.locator('#turn-xss[data-state="done"] .answer pre code').waitFor({ timeout: 10000 });
    const r = await chat.evaluate(() => {
      const t = document.getElementById('turn-xss');
      return {
        pwned: window.__pwned,
        violations: window.__violations,
        scripts: t.querySelectorAll('script').length,
        imgs: t.querySelectorAll('img').length,
        iframes: t.querySelectorAll('iframe, svg, object, embed').length,
        handlers: [...t.querySelectorAll('*')].filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length,
        jsLinks: [...t.querySelectorAll('a')].filter((a) => /^\s*javascript:/i.test(a.getAttribute('href') || '')).length,
        literal: t.querySelector('.answer').textContent.includes('<script>window.__pwned = 1</script>'),
        promptLiteral: t.querySelector('.prompt').textContent.includes('<img src=x'),
        highlighted: t.querySelectorAll('.answer pre code .hljs-keyword').length,
      };
    });
    await chat.locator('#turn-xss').scrollIntoViewIfNeeded();
    await shot('sanitizer.png');
    const bad = [];
    if (r.pwned !== 0) bad.push(`script ran (__pwned=${r.pwned})`);
    if (r.scripts || r.imgs || r.iframes || r.handlers || r.jsLinks) bad.push(`unsafe DOM: ${JSON.stringify(r)}`);
    if (r.violations.length) bad.push(`CSP had to block: ${r.violations.join('; ')}`);
    if (!r.literal || !r.promptLiteral) bad.push('the markup was not shown as text');
    if (!r.highlighted) bad.push('the code block was not highlighted');
    if (bad.length) throw new Error(bad.join('; '));
    return 'shown as text, nothing executed, code highlighted';
  });

  await step('while an answer streams, unlabeled code is not language-guessed; once done it is highlighted', async () => {
    const answer = 'Here:\n\n```\nfunction add(a, b) {\n  return a + b;\n}\n```\n';
    const send = (state) => chat.evaluate(([text, st]) => {
      const turn = { id: 'stream-hl', kind: 'chat', prompt: 'add?', answer: text, state: st };
      window.dispatchEvent(new MessageEvent('message', { data: { type: 'turn', turn } }));
    }, [answer, state]);
    const spans = () => chat.evaluate(() => document.querySelectorAll('#turn-stream-hl .answer pre code [class^="hljs-"]').length);
    await send('streaming');
    await chat.locator('#turn-stream-hl[data-state="streaming"] .answer pre code').waitFor({ timeout: 10000 });
    const during = await spans();
    await send('done');
    await chat.locator('#turn-stream-hl[data-state="done"] .answer pre code').waitFor({ timeout: 10000 });
    const after = await spans();
    if (during !== 0 || after === 0) throw new Error(`highlighted spans while streaming ${during}, after ${after}`);
    return `plain while streaming, ${after} highlighted spans once done`;
  });

  await step('the conversation survives hiding and showing the panel', async () => {
    const before = await chat.evaluate(() => [...document.querySelectorAll('.turn')].map((t) => `${t.id}:${t.dataset.state}:${t.textContent.length}`).join('|'));
    await palette(page, 'View: Toggle Primary Side Bar Visibility');
    await page.locator('#workbench\\.parts\\.sidebar').waitFor({ state: 'hidden', timeout: 10000 });
    await palette(page, 'llamakv: Focus on Chat View');
    await page.locator('#workbench\\.parts\\.sidebar').waitFor({ state: 'visible', timeout: 10000 });
    const again = await webviewFrame(page, '#app[data-ready="true"] .turn', 15000);
    const after = await until('the same conversation', async () => {
      const a = await again.evaluate(() => [...document.querySelectorAll('.turn')].map((t) => `${t.id}:${t.dataset.state}:${t.textContent.length}`).join('|'));
      return a === before ? a : undefined;
    }, 15000, 200);
    await shot('after-hide-show.png');
    return `${after.split('|').length} turns kept`;
  });

  await step('"llamakv: Select Model" lists the models the sidecar found', async () => {
    await palette(page, 'llamakv: Select Model');
    const row = page.locator('.quick-input-list .monaco-list-row', { hasText: 'setting' }).first();
    await row.waitFor({ timeout: 30000 });
    const text = (await row.innerText()).replace(/\s+/g, ' ');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'Browse' }).first().waitFor({ timeout: 5000 });
    await shot('select-model.png');
    await page.keyboard.press('Escape');
    await page.locator('.quick-input-widget').waitFor({ state: 'hidden', timeout: 5000 });
    return `"${text}"`;
  });

  await step('the demo model is labelled in the chat panel', async () => {
    // The header as it is when the sidecar serves the demo model (the protocol side of the demo
    // is checked on the packaged sidecar); the next real status puts the header back.
    await chat.evaluate(() => {
      const info = {
        sidecar: 'running', modelState: 'ready', kvSpec: 'balanced', warnings: [], busy: false,
        model: { name: 'llamakv demo (random weights)', demo: true, backend: 'cpu', weightType: 'q8_0' },
        notice: 'demo model (random weights): its answers are meaningless',
        workspace: { state: 'ready', files: 3, tokens: 300, budgetTokens: 6144, leftOut: [{ path: 'assets/logo.png', reason: 'binary' }], leftOutCount: 1 },
      };
      window.dispatchEvent(new MessageEvent('message', { data: { type: 'info', info } }));
    });
    const banner = chat.locator('.banner.demo');
    await banner.waitFor({ state: 'visible', timeout: 5000 });
    const text = await banner.innerText();
    if (!/meaningless/.test(text)) throw new Error(`banner: ${text}`);
    await chat.locator('.context-line summary').click();
    await chat.locator('.left-out li', { hasText: 'assets/logo.png' }).waitFor({ timeout: 5000 });
    await shot('demo-banner.png');
    return `"${text}"`;
  });

  await step('clicking the status bar opens the cache details picture', async () => {
    await page.locator(STATUS_ITEM, { hasText: /KV / }).first().click();
    const details = await webviewFrame(page, '#saving', 30000);
    const svgs = await details.locator('svg.chart').count();
    if (svgs < 3) throw new Error(`${svgs} charts`);
    await shot('cache-details.png');
    return `${svgs} charts; "${(await details.locator('#saving').innerText()).trim()}"`;
  });

  check('no request left 127.0.0.1', external.size === 0, [...external].join(', ') || 'none');
  fs.writeFileSync(path.join(artifacts, 'browser-console-errors.txt'), consoleErrors.join('\n---\n'));
}

module.exports = { runUi, webviewFrame, palette };
