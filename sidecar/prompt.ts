// prompt.ts — the prompt layout: the model's chat template around a system message that holds the
// workspace files (path header + text, stable-first), then the conversation. The workspace part
// is tokenized piece by piece (template text, the intro, then each file's chunk on its own) so it
// is a token prefix shared by every question, and a change in one file never changes the tokens
// of the files before it.
import { Template } from '@huggingface/jinja';
import { llama3Chat } from './engine';
import type { Model } from './engine';
import type { ChatMessage } from './protocol';

/** Bump when the layout changes: persisted caches built with another layout are discarded. */
export const PROMPT_VERSION = 1;

export const WORKSPACE_INTRO =
  'You are llamakv, an assistant that answers questions about the code in the user\'s workspace. ' +
  'The workspace files follow, each under a "## File:" header with its path. Answer from these files, ' +
  'name the files and lines you rely on, and say so when the files do not contain the answer.\n\n';

export const FILE_INTRO =
  'You are llamakv, an assistant that answers questions about code. The file the user is asking about ' +
  'follows under a "## File:" header with its path.\n\n';

export const PLAIN_INTRO = 'You are llamakv, a helpful assistant for programmers.';

/** What the prompt code needs from a model (a Model, or a stand-in in tests). */
export type PromptModel = Pick<Model, 'tokenize' | 'detokenize' | 'info'>;

const LANG_BY_EXT: Record<string, string> = {
  ts: 'ts', tsx: 'tsx', js: 'js', jsx: 'jsx', mjs: 'js', cjs: 'js', py: 'python', rs: 'rust', go: 'go',
  c: 'c', h: 'c', cc: 'cpp', cpp: 'cpp', hpp: 'cpp', cu: 'cuda', java: 'java', kt: 'kotlin', cs: 'csharp',
  rb: 'ruby', php: 'php', swift: 'swift', sh: 'bash', json: 'json', md: 'markdown', yml: 'yaml', yaml: 'yaml',
  toml: 'toml', html: 'html', css: 'css', scss: 'scss', sql: 'sql', lua: 'lua',
};

/** One file as it appears in the prompt: header, fenced text, blank line. */
export function fileChunk(rel: string, text: string): string {
  const ext = rel.includes('.') ? rel.slice(rel.lastIndexOf('.') + 1).toLowerCase() : '';
  let fence = '```';
  while (text.includes(fence)) fence += '`';
  const body = text.endsWith('\n') ? text : `${text}\n`;
  return `## File: ${rel}\n${fence}${LANG_BY_EXT[ext] ?? ''}\n${body}${fence}\n\n`;
}

/** A piece of rendered prompt: template text may hold special tokens, content never does. */
export interface Segment {
  kind: 'template' | 'content';
  text: string;
}

const SLOT = (i: number) => `\u0001LLAMAKV_SLOT_${i}\u0001`;

/**
 * Renders messages with the model's chat template and splits the result into template and content
 * segments (content goes through sentinels, so the template never sees it and never trims it).
 * No date is passed, so templates that print one use their fixed default and stay stable.
 */
export function renderSegments(model: PromptModel, messages: ChatMessage[]): Segment[] {
  const slotted = messages.map((m, i) => ({ role: m.role, content: SLOT(i) }));
  let rendered: string;
  const source = model.info.chatTemplate;
  if (source) {
    try {
      rendered = templateFor(source).render({
        messages: slotted,
        add_generation_prompt: true,
        bos_token: model.detokenize([model.info.bos]),
        eos_token: model.detokenize([model.info.eos]),
      });
    } catch {
      rendered = llama3Chat(slotted, true);
    }
  } else {
    rendered = llama3Chat(slotted, true);
  }
  const segments: Segment[] = [];
  let rest = rendered;
  for (let i = 0; i < messages.length; i++) {
    const at = rest.indexOf(SLOT(i));
    if (at < 0) throw new Error(`chat template dropped message ${i} (${messages[i].role})`);
    if (at > 0) segments.push({ kind: 'template', text: rest.slice(0, at) });
    segments.push({ kind: 'content', text: messages[i].content.trim() }); // as the templates' `| trim`
    rest = rest.slice(at + SLOT(i).length);
  }
  if (rest.length > 0) segments.push({ kind: 'template', text: rest });
  return segments;
}

const templates = new Map<string, Template>();
function templateFor(source: string): Template {
  let t = templates.get(source);
  if (!t) {
    t = new Template(source);
    templates.set(source, t);
  }
  return t;
}

export function tokenizeSegment(model: PromptModel, s: Segment): number[] {
  return model.tokenize(s.text, { addBos: false, special: s.kind === 'template' });
}

/** A file's chunk and its tokens, as laid out in the workspace prefix. */
export interface PrefixFile {
  rel: string;
  hash: string;
  tokens: number[];
}

/** The workspace prefix: template head + intro, then each file; `spans` locate each file. */
export interface PrefixLayout {
  tokens: number[];
  /** Tokens before the first file (template head and intro). */
  headTokens: number;
  spans: Array<{ rel: string; hash: string; start: number; end: number }>;
}

/**
 * Splits the full conversation at the end of the workspace system message: the head (template text
 * before the system content), and the tail (everything after it: the conversation and the
 * assistant header). The system content itself (intro + files) is supplied by the caller.
 */
export function splitAroundSystem(model: PromptModel, conversation: ChatMessage[]): { head: Segment[]; tail: Segment[] } {
  const segs = renderSegments(model, [{ role: 'system', content: '' }, ...conversation]);
  const first = segs.findIndex((s) => s.kind === 'content');
  return { head: segs.slice(0, first), tail: segs.slice(first + 1) };
}

function headTokens(model: PromptModel, head: Segment[]): number[] {
  const toks = head.flatMap((s) => tokenizeSegment(model, s));
  if (model.info.addBos && toks[0] !== model.info.bos) toks.unshift(model.info.bos);
  return toks;
}

/** Builds the workspace prefix from files already tokenized as chunks (see fileChunk). */
export function layoutPrefix(model: PromptModel, intro: string, files: PrefixFile[]): PrefixLayout {
  const { head } = splitAroundSystem(model, [{ role: 'user', content: '' }]);
  const tokens = headTokens(model, head);
  tokens.push(...model.tokenize(intro, { addBos: false, special: false }));
  const headLen = tokens.length;
  const spans: PrefixLayout['spans'] = [];
  for (const f of files) {
    const start = tokens.length;
    for (const t of f.tokens) tokens.push(t);
    spans.push({ rel: f.rel, hash: f.hash, start, end: tokens.length });
  }
  return { tokens, headTokens: headLen, spans };
}

/** Tokens of the head + intro alone (what a prefix costs before any file). */
export function prefixOverhead(model: PromptModel, intro: string): number {
  return layoutPrefix(model, intro, []).tokens.length;
}

/** Tokens that follow the workspace prefix for a conversation: end of system, messages, assistant header. */
export function conversationTail(model: PromptModel, conversation: ChatMessage[]): number[] {
  const { tail } = splitAroundSystem(model, conversation);
  return tail.flatMap((s) => tokenizeSegment(model, s));
}

/** A whole prompt without the workspace prefix (context "file" or "none"). */
export function standalonePrompt(model: PromptModel, system: string, conversation: ChatMessage[]): number[] {
  const { head, tail } = splitAroundSystem(model, conversation);
  const toks = headTokens(model, head);
  toks.push(...model.tokenize(system, { addBos: false, special: false }));
  for (const s of tail) toks.push(...tokenizeSegment(model, s));
  return toks;
}

/** Length of the common prefix of two token arrays. */
export function commonPrefix(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * The prompt `build` makes of the conversation, without as many of its oldest turns as it takes
 * to stay within `limit` tokens: leading system messages stay, then the earliest turns go first
 * (a user message with the answer after it, together), and the last message (the question)
 * always stays, so a long chat leaves the answer its room instead of failing or cutting it short.
 */
export function fitHistory(conversation: ChatMessage[], build: (c: ChatMessage[]) => number[], limit: number): { tokens: number[]; dropped: number } {
  let c = conversation;
  let tokens = build(c);
  let dropped = 0;
  const sys = c.findIndex((m) => m.role !== 'system');
  for (;;) {
    if (tokens.length <= limit || sys < 0 || c.length - sys <= 1) return { tokens, dropped };
    const n = c[sys].role === 'user' && c[sys + 1]?.role === 'assistant' && c.length - sys > 2 ? 2 : 1;
    c = [...c.slice(0, sys), ...c.slice(sys + n)];
    dropped += n;
    tokens = build(c);
  }
}
