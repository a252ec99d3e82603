// chat.ts — the chat webview: renders the conversation the extension host owns (markdown via
// markdown-it, code via highlight.js, every answer through DOMPurify before it touches the DOM)
// and sends the user's questions, stop and clear back. Bundled by esbuild into media/dist/chat.js.
import DOMPurify, { type Config as PurifyConfig } from 'dompurify';
import hljs from 'highlight.js/lib/common';
import MarkdownIt from 'markdown-it';
import type { ContextMode } from '../../sidecar/protocol';
import type { FromWebview, PanelInfo, ToWebview, Turn } from '../../extension/webviewMessages';

interface VsCodeApi {
  postMessage(m: FromWebview): void;
}
declare function acquireVsCodeApi(): VsCodeApi;
const vscode = acquireVsCodeApi();
const post = (m: FromWebview) => vscode.postMessage(m);

// ---- markdown → sanitized HTML --------------------------------------------------------------

/** Code blocks longer than this are not auto-detected (too slow). */
const AUTO_DETECT_LIMIT = 4000;
/**
 * True while a streaming answer renders: every flush re-renders the whole answer, and guessing
 * each code block's language (highlightAuto tries every grammar) on every flush made long answers
 * lag; blocks with a stated language are still highlighted, the rest once the answer ends.
 */
let streamingRender = false;

const md = new MarkdownIt({
  html: false, // raw HTML in model output is shown as text, never parsed
  linkify: true,
  highlight(code, lang): string {
    let body: string;
    try {
      if (lang && hljs.getLanguage(lang)) body = hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
      else if (!streamingRender && code.length <= AUTO_DETECT_LIMIT) body = hljs.highlightAuto(code).value;
      else body = md.utils.escapeHtml(code);
    } catch {
      body = md.utils.escapeHtml(code);
    }
    const cls = lang ? ` language-${md.utils.escapeHtml(lang)}` : '';
    return `<pre class="hljs"><code class="hljs${cls}">${body}</code></pre>`;
  },
});

const PURIFY: PurifyConfig = {
  ALLOWED_TAGS: [
    'a', 'b', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'i', 'li', 'ol', 'p',
    'pre', 's', 'span', 'strong', 'sub', 'sup', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul',
  ],
  ALLOWED_ATTR: ['href', 'title', 'class', 'start', 'align'],
  ALLOW_DATA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') node.setAttribute('rel', 'noopener noreferrer');
});

/** Model output → safe HTML. Returns how many elements/attributes the sanitizer removed. */
function renderMarkdown(text: string): { html: string; blocked: number } {
  const html = DOMPurify.sanitize(md.render(text), PURIFY) as unknown as string;
  return { html, blocked: DOMPurify.removed.length };
}

// ---- DOM helpers ------------------------------------------------------------------------------

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

// ---- layout -----------------------------------------------------------------------------------

const app = document.getElementById('app')!;
const header = el('header', 'header');
const modelLine = el('div', 'model-line');
const demoBanner = el('div', 'banner demo');
demoBanner.setAttribute('role', 'alert');
demoBanner.hidden = true;
const errorBanner = el('div', 'banner error');
errorBanner.setAttribute('role', 'alert');
errorBanner.hidden = true;
const warnBanner = el('ul', 'banner warn');
warnBanner.hidden = true;
const contextLine = el('details', 'context-line');
header.append(modelLine, demoBanner, errorBanner, warnBanner, contextLine);

const transcript = el('main', 'transcript');
transcript.setAttribute('aria-live', 'polite');
const empty = el('div', 'empty');
empty.append(
  el('p', undefined, 'Ask about your code. The whole workspace is the context.'),
  el('p', 'muted', 'Or run “llamakv: Explain File” from the Command Palette, the Explorer or an editor tab.'),
);

const composer = el('form', 'composer');
const input = el('textarea', 'input');
input.rows = 3;
input.placeholder = 'Ask a question (Enter to send, Shift+Enter for a new line)';
input.setAttribute('aria-label', 'Question');
const contextSelect = el('select', 'context-select');
contextSelect.setAttribute('aria-label', 'Context');
for (const [value, label] of [['workspace', 'Workspace'], ['file', 'Current file'], ['none', 'No context']] as const) {
  const o = el('option', undefined, label);
  o.value = value;
  contextSelect.append(o);
}
const sendButton = el('button', 'send', 'Send');
sendButton.type = 'submit';
const stopButton = el('button', 'stop secondary', 'Stop');
stopButton.type = 'button';
stopButton.hidden = true;
const clearButton = el('button', 'clear secondary', 'Clear');
clearButton.type = 'button';
const buttons = el('div', 'buttons');
buttons.append(contextSelect, stopButton, clearButton, sendButton);
composer.append(input, buttons);
app.append(header, transcript, composer);

// ---- state and rendering ----------------------------------------------------------------------

const turns = new Map<string, Turn>();
const order: string[] = [];
const pending = new Set<string>(); // turns whose DOM is stale
let flushTimer: ReturnType<typeof setTimeout> | undefined;
let info: PanelInfo | undefined;

function scheduleRender(id: string): void {
  pending.add(id);
  // setTimeout rather than requestAnimationFrame: a hidden (retained) webview gets no frames.
  if (!flushTimer) flushTimer = setTimeout(flush, 30);
}

function flush(): void {
  flushTimer = undefined;
  const nearBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  for (const id of pending) renderTurn(id);
  pending.clear();
  empty.hidden = order.length > 0;
  if (nearBottom) transcript.scrollTop = transcript.scrollHeight;
}

function turnElement(t: Turn): HTMLElement {
  let sec = document.getElementById(`turn-${t.id}`);
  if (!sec) {
    sec = el('section', 'turn');
    sec.id = `turn-${t.id}`;
    sec.append(el('div', 'prompt'), el('div', 'answer markdown'), el('div', 'meta'));
    transcript.append(sec);
  }
  return sec;
}

const reported = new Map<string, string>();

function renderTurn(id: string): void {
  const t = turns.get(id);
  if (!t) return;
  const sec = turnElement(t);
  sec.dataset.state = t.state;
  sec.dataset.kind = t.kind;
  const [prompt, answer, meta] = Array.from(sec.children) as HTMLElement[];
  prompt.textContent = t.prompt;
  streamingRender = t.state === 'streaming';
  let rendered: ReturnType<typeof renderMarkdown>;
  try {
    rendered = renderMarkdown(t.answer);
  } finally {
    streamingRender = false;
  }
  const { html, blocked } = rendered;
  answer.innerHTML = html;
  if (t.state === 'streaming') answer.append(el('span', 'cursor', '▍'));
  meta.replaceChildren(...metaParts(t));
  const key = `${t.state}:${t.answer.length}`;
  if (t.state !== 'streaming' && reported.get(id) !== key) {
    reported.set(id, key);
    post({ type: 'rendered', id, state: t.state, chars: t.answer.length, blocked });
  }
}

function metaParts(t: Turn): Node[] {
  const parts: Node[] = [];
  switch (t.state) {
    case 'streaming':
      parts.push(el('span', 'status', 'answering…'));
      break;
    case 'cancelled':
      parts.push(el('span', 'status warn', 'stopped'));
      break;
    case 'error':
      parts.push(el('span', 'status err', `error: ${t.error ?? 'unknown'}`));
      break;
    case 'done':
      break;
  }
  if (t.context) {
    const c = t.context;
    const what = c.mode === 'none' ? 'no context' : `${c.mode}: ${fmt(c.files)} file${c.files === 1 ? '' : 's'}, ${fmt(c.tokens)} tokens`;
    parts.push(el('span', 'context', `context ${what}${c.leftOut ? `, ${fmt(c.leftOut)} left out` : ''}`));
  }
  if (t.model) parts.push(el('span', 'model', `${t.model}${t.demo ? ' (demo)' : ''}`));
  if (t.usage) parts.push(el('span', 'usage', `${fmt(t.usage.completionTokens)} tokens${t.decodeTokensPerSecond ? ` · ${t.decodeTokensPerSecond.toFixed(1)} tok/s` : ''}`));
  return parts;
}

function renderInfo(): void {
  const i = info;
  if (!i) return;
  modelLine.replaceChildren();
  const name = el('span', 'model-name');
  if (i.sidecar === 'starting') name.textContent = 'Starting the sidecar…';
  else if (i.sidecar === 'stopped') name.textContent = 'Sidecar stopped';
  else if (i.modelState === 'loading') name.textContent = 'Loading the model…';
  else if (i.model) name.textContent = i.model.name;
  else name.textContent = 'No model';
  modelLine.append(name);
  if (i.model) {
    const detail = el('span', 'muted', ` ${i.model.weightType} · ${i.model.backend}${i.kvSpec ? ` · KV ${i.kvSpec}` : ''}`);
    if (i.model.backendNote) detail.title = i.model.backendNote; // why CUDA is or is not in use
    modelLine.append(detail);
  }
  const pick = el('button', 'link', 'Select model');
  pick.type = 'button';
  pick.addEventListener('click', () => post({ type: 'command', command: 'llamakv.selectModel' }));
  modelLine.append(pick);

  demoBanner.hidden = !i.model?.demo;
  const notice = i.notice ?? 'demo model: it keeps every part of llamakv working, but its answers are meaningless; select a real Llama 3 GGUF model';
  demoBanner.textContent = `${notice.charAt(0).toUpperCase()}${notice.slice(1)}.`;
  warnBanner.replaceChildren(...i.warnings.map((w) => el('li', undefined, w)));
  warnBanner.hidden = i.warnings.length === 0;

  const err = i.sidecar === 'stopped' ? `The sidecar is not running: ${i.sidecarError ?? ''}` : i.modelState === 'error' ? `The model could not be loaded: ${i.modelError ?? ''}` : '';
  errorBanner.hidden = !err;
  errorBanner.textContent = err;

  contextLine.replaceChildren();
  const w = i.workspace;
  const summary = el('summary');
  if (!w || w.state === 'none') summary.textContent = 'Workspace not indexed yet';
  else if (w.state === 'collecting' || w.state === 'prefilling') summary.textContent = `Indexing the workspace (${w.state})…`;
  else if (w.state === 'error') summary.textContent = 'Indexing the workspace failed';
  else summary.textContent = `Context: ${fmt(w.files)} files, ${fmt(w.tokens)} of ${fmt(w.budgetTokens)} tokens${w.leftOutCount ? `, ${fmt(w.leftOutCount)} left out` : ''}`;
  contextLine.append(summary);
  if (w && w.leftOutCount > 0) {
    const list = el('ul', 'left-out');
    for (const f of w.leftOut) list.append(el('li', undefined, `${f.path} — ${f.reason}${f.tokens ? ` (${fmt(f.tokens)} tokens)` : ''}`));
    if (w.leftOutCount > w.leftOut.length) list.append(el('li', 'muted', `… and ${fmt(w.leftOutCount - w.leftOut.length)} more`));
    contextLine.append(list);
  }
  const index = el('button', 'link', 'Index workspace');
  index.type = 'button';
  index.addEventListener('click', () => post({ type: 'command', command: 'llamakv.indexWorkspace' }));
  contextLine.append(index);

  stopButton.hidden = !i.busy;
  app.dataset.busy = String(i.busy);
}

function upsert(t: Turn): void {
  if (!turns.has(t.id)) order.push(t.id);
  turns.set(t.id, t);
  scheduleRender(t.id);
}

function clearAll(): void {
  turns.clear();
  order.length = 0;
  reported.clear();
  transcript.replaceChildren(empty);
  empty.hidden = false;
}

window.addEventListener('message', (event: MessageEvent<ToWebview>) => {
  const m = event.data;
  if (!m || typeof m !== 'object') return;
  switch (m.type) {
    case 'state':
      clearAll();
      for (const t of m.turns) upsert(t);
      info = m.info;
      renderInfo();
      break;
    case 'info':
      info = m.info;
      renderInfo();
      break;
    case 'turn':
      upsert(m.turn);
      break;
    case 'delta': {
      const t = turns.get(m.id);
      if (t && t.state === 'streaming') {
        t.answer += m.text;
        scheduleRender(t.id);
      }
      break;
    }
    case 'cleared':
      clearAll();
      break;
  }
});

// ---- input ------------------------------------------------------------------------------------

function send(): void {
  const text = input.value.trim();
  if (!text) return;
  post({ type: 'ask', text, context: contextSelect.value as ContextMode });
  input.value = '';
}

composer.addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
stopButton.addEventListener('click', () => post({ type: 'stop' }));
clearButton.addEventListener('click', () => post({ type: 'clear' }));

clearAll();
app.dataset.ready = 'true';
post({ type: 'ready' });
