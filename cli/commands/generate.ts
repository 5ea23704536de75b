import * as fs from 'node:fs';
import * as readline from 'node:readline';
import type { CommandModule } from 'yargs';
import { checkCheckpointDir } from '../../model/checkpoint.js';
import { decodeUtf8 } from '../../core/fsutil.js';
import { generate, parsePrompts, readPrompts, type OnText } from '../../infer/generate.js';
import { checkCache, parseCache } from '../../infer/policy.js';
import { checkSampling, type SamplingOptions } from '../../infer/sampling.js';
import { loadCheckpoint } from '../../infer/text.js';
import { checkInt, once, printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  checkpoint: string;
  cache: string;
  prompts?: string;
  'max-new-tokens': number;
  temperature: number;
  'top-k': number;
  'top-p': number;
  seed: number;
  json: boolean;
}

export const generateCommand: CommandModule<GlobalArgs, Args> = {
  command: 'generate',
  describe: 'multi-round streaming generation over one sinks cache that is never reset (StreamingLLM streaming chat)',
  builder: (y) =>
    withJson(
      y
        .option('checkpoint', { type: 'string', demandOption: true, describe: 'checkpoint directory' })
        .option('cache', { type: 'string', demandOption: true, describe: 'S+W: S initial (sink) tokens + W recent tokens, e.g. 4+252' })
        .option('prompts', { type: 'string', describe: 'user turns: one per line, or JSON lines with a "prompt" (or "text") field; default: stdin lines (at a terminal, a chat until Ctrl-D)' })
        .option('max-new-tokens', { type: 'number', default: 64, describe: 'most tokens sampled per round (a round also stops at the eos token)' })
        .option('temperature', { type: 'number', default: 1, describe: '0 = greedy' })
        .option('top-k', { type: 'number', default: 0, describe: 'sample from the k most likely tokens only (0 = all)' })
        .option('top-p', { type: 'number', default: 1, describe: 'nucleus: sample from the most likely tokens holding this probability (1 = all)' })
        .option('seed', { type: 'number', default: 0, describe: 'sampling seed: the same seed, model and prompts give the same text' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      const cache = parseCache(String(args.cache));
      const sampling: SamplingOptions = { temperature: args.temperature, topK: args['top-k'], topP: args['top-p'], seed: args.seed };
      const maxNew = args['max-new-tokens'];
      const out = (s: string) => process.stdout.write(s);
      // At a terminal it is a chat: each line typed is a turn, answered before the next is read.
      const chat = args.prompts === undefined && process.stdin.isTTY === true && !args.json;
      const prompts =
        args.prompts !== undefined ? readPrompts(args.prompts) : chat ? terminalTurns(out) : parsePrompts(decodeUtf8(fs.readFileSync(0), 'stdin'), 'stdin');
      const ck = await loadCheckpoint(args.checkpoint);
      try {
        const onText: OnText = (text, { round, kind }) => {
          if (kind === 'completion') out(text);
          else out(chat ? 'ASSISTANT: ' : `${round ? '\n\n' : ''}USER: ${text}\nASSISTANT: `);
        };
        const r = await generate(ck, prompts, { cache, maxNewTokens: maxNew, sampling, progress: args.json ? undefined : false }, args.json ? undefined : onText);
        if (args.json) {
          const settings = { seed: args.seed, temperature: args.temperature, top_k: args['top-k'], top_p: args['top-p'], max_new_tokens: maxNew };
          printJson({ rounds: r.rounds, kv_tokens_max: r.kv_tokens_max, cache: r.cache, tokens_fed: r.tokens_fed, backend: r.backend, ...settings });
          return;
        }
        out('\n');
        const sampled = r.rounds.reduce((a, x) => a + x.tokens, 0);
        const ms = r.rounds.reduce((a, x) => a + x.ms_per_token * x.tokens, 0) / Math.max(1, sampled);
        process.stderr.write(
          `${r.rounds.length} rounds, ${sampled} tokens sampled, ${r.tokens_fed} through the model, ${ms.toFixed(2)} ms/token, kv ${r.kv_tokens_max} (cache ${r.cache}) [${r.backend}]\n`,
        );
      } finally {
        ck.model.dispose();
      }
    }, {
      ...ONE_THREAD,
      check: () => {
        once(args, ['checkpoint', 'cache', 'prompts', 'max-new-tokens', 'temperature', 'top-k', 'top-p', 'seed']);
        checkSampling({ temperature: args.temperature, topK: args['top-k'], topP: args['top-p'], seed: args.seed });
        checkInt(args['max-new-tokens'], '--max-new-tokens', 0);
        const config = checkCheckpointDir(args.checkpoint, '--checkpoint');
        checkCache(parseCache(String(args.cache)), 'sinks', config.max_position_embeddings);
        if (args.prompts !== undefined) readPrompts(args.prompts);
      },
    }),
};

/** Lines typed at the terminal, one turn each, until Ctrl-D. */
async function* terminalTurns(out: (s: string) => void): AsyncGenerator<string> {
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  const lines = rl[Symbol.asyncIterator]();
  try {
    for (let first = true; ; first = false) {
      out(first ? 'USER: ' : '\n\nUSER: ');
      const next = await lines.next();
      if (next.done) return;
      if (next.value.trim()) yield next.value;
    }
  } finally {
    rl.close();
  }
}
