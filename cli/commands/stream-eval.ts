import type { CommandModule } from 'yargs';
import { checkCheckpointDir } from '../../model/checkpoint.js';
import { writeFileAtomic } from '../../core/fsutil.js';
import { checkOutputPath } from '../../core/outpath.js';
import { checkCache, parseCache, POLICIES, type PolicyName } from '../../infer/policy.js';
import { streamEval, WARMUP_TOKENS } from '../../infer/stream.js';
import { loadCheckpoint, readText, textStream } from '../../infer/text.js';
import { checkInt, once, printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  checkpoint: string;
  text: string;
  cache: string[];
  policy: PolicyName;
  'max-tokens'?: number;
  'per-token'?: string;
  json: boolean;
}

export const streamEvalCommand: CommandModule<GlobalArgs, Args> = {
  command: 'stream-eval',
  describe: `token-by-token streaming perplexity under a cache policy, one row per --cache. ms_per_token leaves out the warm-up: the first ${WARMUP_TOKENS} tokens, whose steps pay one-time set-up costs (kernels, WebAssembly compilation, buffers). dense keeps every token, so its rows ignore the cache size`,
  builder: (y) =>
    withJson(
      y
        .option('checkpoint', { type: 'string', demandOption: true, describe: 'checkpoint directory' })
        .option('text', { type: 'string', demandOption: true, describe: 'UTF-8 text file, streamed as one token stream' })
        .option('cache', { type: 'string', array: true, demandOption: true, describe: 'S+W: S initial (sink) tokens + W recent tokens; repeatable' })
        .option('policy', { choices: POLICIES, default: 'sinks' as PolicyName, describe: 'sinks | window | dense | recompute' })
        .option('max-tokens', { type: 'number', describe: 'cut the text to this many tokens' })
        .option('per-token', { type: 'string', describe: 'write per-token NLLs as JSON lines {"cache","nll":[...]} to this file' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      const specs = args.cache.map((c) => parseCache(String(c)));
      const max = args['max-tokens'];
      const ck = await loadCheckpoint(args.checkpoint);
      const stream = textStream(ck, readText(args.text), max, args.text);
      const results = [];
      const perToken: string[] = [];
      for (const spec of specs) {
        const run = await streamEval(ck, stream, args.policy, spec, { progress: !args.json });
        results.push(run.row);
        if (args['per-token']) perToken.push(JSON.stringify({ cache: spec.label, nll: Array.from(run.nll) }));
        if (!args.json) {
          const r = run.row;
          process.stdout.write(
            `${r.policy.padEnd(9)} ${(r.policy === 'dense' ? 'no limit' : r.cache).padStart(9)}  ppl ${r.ppl.toFixed(3).padStart(9)}  tokens ${r.tokens}  ${r.ms_per_token.toFixed(2)} ms/token  kv ${r.kv_tokens_max}  rss ${r.rss_mb_max.toFixed(0)} MB  [${r.backend}, ${r.decode} step]\n`,
          );
        }
      }
      ck.model.dispose();
      if (args['per-token']) writeFileAtomic(args['per-token'], perToken.join('\n') + '\n');
      if (args.json) printJson({ results });
    }, {
      ...ONE_THREAD,
      check: () => {
        once(args, ['checkpoint', 'text', 'policy', 'max-tokens', 'per-token']);
        checkInt(args['max-tokens'], '--max-tokens', 2);
        const config = checkCheckpointDir(args.checkpoint, '--checkpoint');
        for (const c of args.cache) checkCache(parseCache(String(c)), args.policy, config.max_position_embeddings);
        readText(args.text);
        if (args['per-token'] !== undefined) checkOutputPath(args['per-token'], 'file', '--per-token');
      },
    }),
};
