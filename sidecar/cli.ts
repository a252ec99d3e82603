#!/usr/bin/env node
// cli.ts — the `llamakv` command: one table of subcommands over the same engine and sidecar code
// the extension uses. Every command takes --json; errors print one line on stderr and exit 1.
import * as fs from 'fs';
import { BackendName, Model } from './engine';
import { checkFlags, flagBool, flagNum, flagStr, parseArgs, ParsedArgs, UsageError } from './args';
import { synthModel, WEIGHT_TYPES, WeightTypeName } from './synth';

interface Command {
  usage: string;
  run(argv: string[]): Promise<number>;
}

function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? JSON.stringify(value) + '\n' : text() + '\n');
}

function needModel(a: ParsedArgs): string {
  const m = a.positionals[0];
  if (!m) throw new UsageError('missing MODEL (path to a .gguf file)');
  if (!fs.existsSync(m)) throw new Error(`model file not found: ${m}`);
  return m;
}

async function load(a: ParsedArgs): Promise<Model> {
  return Model.load(needModel(a), { threads: flagNum(a, 'threads', 0), backend: flagStr(a, 'backend') as BackendName | undefined });
}

function parseTokens(s: string): number[] {
  const ids = s.split(',').map((x) => x.trim()).filter((x) => x.length > 0).map(Number);
  if (ids.length === 0 || ids.some((x) => !Number.isInteger(x) || x < 0)) throw new UsageError(`--tokens must be comma-separated token ids, got "${s}"`);
  return ids;
}

const fmt = (n: number) => n.toLocaleString('en-US');
const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;

const commands: Record<string, Command> = {
  info: {
    usage: 'info MODEL [--backend auto|cpu|cuda] [--json]',
    async run(argv) {
      const a = parseArgs(argv, ['json']);
      checkFlags(a, ['json', 'threads', 'backend']);
      const m = await load(a);
      const i = m.info;
      const out = { ...i, chatTemplate: i.chatTemplate !== null, chatTemplateText: undefined };
      print(flagBool(a, 'json'), out, () =>
        [
          `${i.name || '(unnamed)'}  [${i.architecture}]  ${mib(i.fileBytes)}`,
          `layers ${i.nLayer}, width ${i.nEmbd}, heads ${i.nHead} (kv ${i.nHeadKv}, size ${i.headDim}), ffn ${i.nFf}`,
          `vocabulary ${fmt(i.nVocab)}, context ${fmt(i.contextLength)}, rope base ${i.ropeFreqBase} scaling ${i.ropeScaling}, ${i.tiedOutput ? 'tied' : 'separate'} output`,
          `tensor types: ${Object.entries(i.tensorTypes).map(([k, v]) => `${k} ×${v}`).join(', ')}`,
          `chat template: ${i.chatTemplate ? 'present' : 'absent'}; kernels ${i.kernels}`,
          `backend ${i.backend} on ${i.device}${i.backendNote ? ` (${i.backendNote})` : ''}`,
        ].join('\n'),
      );
      m.dispose();
      return 0;
    },
  },

  tokenize: {
    usage: 'tokenize MODEL --text STR [--bos] [--special] [--json]',
    async run(argv) {
      const a = parseArgs(argv, ['json', 'bos', 'special']);
      checkFlags(a, ['json', 'text', 'bos', 'special', 'threads', 'backend']);
      const text = flagStr(a, 'text');
      if (text === undefined) throw new UsageError('missing --text');
      const m = await load(a);
      const tokens = m.tokenize(text, { addBos: flagBool(a, 'bos'), special: flagBool(a, 'special') });
      print(flagBool(a, 'json'), { tokens }, () => tokens.join(' '));
      m.dispose();
      return 0;
    },
  },

  eval: {
    usage: 'eval MODEL (--tokens 1,2,3 | --prompt STR) [--out FILE] [--kv SPEC] [--backend auto|cpu|cuda] [--json]',
    async run(argv) {
      const a = parseArgs(argv, ['json']);
      checkFlags(a, ['json', 'tokens', 'prompt', 'out', 'kv', 'threads', 'backend']);
      const tokArg = flagStr(a, 'tokens');
      const prompt = flagStr(a, 'prompt');
      if ((tokArg === undefined) === (prompt === undefined)) throw new UsageError('give exactly one of --tokens or --prompt');
      const m = await load(a);
      const tokens = tokArg !== undefined ? parseTokens(tokArg) : m.tokenize(prompt!, { addBos: m.info.addBos, special: true });
      const s = m.createSession({ nCtx: Math.max(tokens.length, 16), kv: flagStr(a, 'kv', 'f16') });
      const logits = (await s.prefill(tokens))!;
      const out = flagStr(a, 'out');
      if (out) fs.writeFileSync(out, Buffer.from(logits.buffer, logits.byteOffset, logits.byteLength));
      const order = Array.from(logits.keys()).sort((x, y) => logits[y] - logits[x]).slice(0, 20);
      const top = order.map((id) => [id, logits[id]]);
      print(flagBool(a, 'json'), { n_vocab: logits.length, top, kv: s.kvStats() }, () =>
        order.map((id) => `${String(id).padStart(7)}  ${logits[id].toFixed(4)}  ${JSON.stringify(m.detokenize([id]))}`).join('\n'),
      );
      s.dispose();
      m.dispose();
      return 0;
    },
  },

  generate: {
    usage: 'generate MODEL --prompt STR [--max-tokens N] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [--chat] [--kv SPEC] [--backend auto|cpu|cuda] [--json]',
    async run(argv) {
      const a = parseArgs(argv, ['json', 'chat']);
      checkFlags(a, ['json', 'prompt', 'max-tokens', 'temp', 'top-k', 'top-p', 'min-p', 'repeat-penalty', 'seed', 'chat', 'kv', 'threads', 'stop', 'backend']);
      const prompt = flagStr(a, 'prompt');
      if (prompt === undefined) throw new UsageError('missing --prompt');
      const json = flagBool(a, 'json');
      const m = await load(a);
      const text = flagBool(a, 'chat') ? m.renderChat([{ role: 'user', content: prompt }]) : prompt;
      const addBos = !flagBool(a, 'chat') && m.info.addBos;
      const tokens = m.tokenize(text, { addBos, special: true });
      const maxTokens = flagNum(a, 'max-tokens', 128)!;
      const s = m.createSession({ nCtx: Math.min(m.info.contextLength, tokens.length + maxTokens + 1), kv: flagStr(a, 'kv', 'f16') });
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      const t0 = performance.now();
      await s.prefill(tokens, { signal: ac.signal });
      const prefillMs = performance.now() - t0;
      const gen = s.generate({
        maxTokens,
        temperature: flagNum(a, 'temp', 0),
        topK: flagNum(a, 'top-k'),
        topP: flagNum(a, 'top-p'),
        minP: flagNum(a, 'min-p'),
        repeatPenalty: flagNum(a, 'repeat-penalty'),
        seed: flagNum(a, 'seed'),
        stop: flagStr(a, 'stop') !== undefined ? [flagStr(a, 'stop')!] : [],
        signal: ac.signal,
      });
      let r = await gen.next();
      while (!r.done) {
        if (!json) process.stdout.write(r.value.text);
        r = await gen.next();
      }
      const sum = r.value;
      const decodeTps = sum.tokens.length > 0 && sum.decodeMs > 0 ? (sum.tokens.length / sum.decodeMs) * 1000 : 0;
      if (json) {
        print(true, {
          text: sum.text,
          tokens: sum.tokens,
          promptTokens: tokens.length,
          stopReason: sum.stopReason,
          backend: s.backend,
          timings: { prefillMs, prefillTokensPerSecond: (tokens.length / prefillMs) * 1000, decodeMs: sum.decodeMs, decodeTokensPerSecond: decodeTps },
          kv: s.kvStats(),
        }, () => '');
      } else {
        process.stdout.write('\n');
        process.stderr.write(`[${tokens.length} prompt tokens at ${((tokens.length / prefillMs) * 1000).toFixed(1)} tok/s, ${sum.tokens.length} generated at ${decodeTps.toFixed(1)} tok/s, ${sum.stopReason}]\n`);
      }
      s.dispose();
      m.dispose();
      return 0;
    },
  },

  model: {
    usage: `model synth --out FILE [--preset tiny|1b|needle] [--type ${WEIGHT_TYPES.join('|')}] [--dequantized] [--seed N] [--json]`,
    async run(argv) {
      const [sub, ...rest] = argv;
      if (sub !== 'synth') throw new UsageError(sub ? `unknown subcommand "${sub}" (there is one: synth)` : 'missing the subcommand (synth)');
      const a = parseArgs(rest, ['json', 'dequantized']);
      checkFlags(a, ['json', 'out', 'preset', 'type', 'seed', 'dequantized']);
      const out = flagStr(a, 'out');
      if (!out) throw new UsageError('missing --out FILE');
      const preset = flagStr(a, 'preset', 'tiny');
      if (preset === 'needle') {
        const nt = flagStr(a, 'type', 'f16');
        if (nt !== 'f32' && nt !== 'f16') throw new UsageError(`--preset needle takes --type f32 or f16, not "${nt}"`);
        const { synthNeedleModel } = require('./needle') as typeof import('./needle');
        const r = await synthNeedleModel({ out, type: nt, seed: flagNum(a, 'seed', 1) });
        print(flagBool(a, 'json'), { path: out, params: r.params, bytes: fs.statSync(out).size }, () => `wrote ${out} (${fmt(r.params)} parameters, ${mib(fs.statSync(out).size)})`);
        return 0;
      }
      if (preset !== 'tiny' && preset !== '1b') throw new UsageError(`unknown preset "${preset}" (tiny, 1b, needle)`);
      const type = flagStr(a, 'type', preset === '1b' ? 'q8_0' : 'f32') as WeightTypeName;
      if (!WEIGHT_TYPES.includes(type)) throw new UsageError(`unknown type "${type}" (${WEIGHT_TYPES.join(', ')})`);
      const r = await synthModel({ out, preset, type, seed: flagNum(a, 'seed', 1), dequantized: flagBool(a, 'dequantized') });
      print(flagBool(a, 'json'), { path: out, params: r.params, bytes: fs.statSync(out).size }, () => `wrote ${out} (${fmt(r.params)} parameters, ${mib(fs.statSync(out).size)})`);
      return 0;
    },
  },

  serve: {
    usage: 'serve --stdio',
    run: (argv) => (require('./server') as { runServe(argv: string[]): Promise<number> }).runServe(argv),
  },

  explain: {
    usage: 'explain FILE [--workspace DIR] [--model M] [--kv SPEC] [--json]',
    run: (argv) => (require('./explain') as { runExplain(argv: string[]): Promise<number> }).runExplain(argv),
  },
};

export function usage(): string {
  return 'usage: llamakv <command> ...\n' + Object.values(commands).map((c) => `  llamakv ${c.usage}`).join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n');
    return name ? 0 : 1;
  }
  const cmd = commands[name];
  if (!cmd) {
    process.stderr.write(`llamakv: unknown command "${name}"\n${usage()}\n`);
    return 1;
  }
  // `llamakv CMD --help` (or -h) anywhere before a `--`: that command's usage, whatever else is given
  const end = rest.indexOf('--');
  if ((end < 0 ? rest : rest.slice(0, end)).some((x) => x === '--help' || x === '-h')) {
    process.stdout.write(`usage: llamakv ${cmd.usage}\n`);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`llamakv ${name}: ${msg.split('\n')[0]}\n`);
    if (e instanceof UsageError) process.stderr.write(`usage: llamakv ${cmd.usage}\n`);
    return 1;
  }
}

/** Registers more commands (bench, tune) from other modules. */
export function registerCommand(name: string, c: Command): void {
  commands[name] = c;
}

require('./bench'); // registers `llamakv bench`
require('./tune'); // registers `llamakv tune`

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
