import type { CommandModule } from 'yargs';
import { loadRunConfig } from '../../core/config.js';
import { prepareData } from '../../data/prepare.js';
import { SPLITS } from '../../data/split.js';
import { printJson, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  config: string;
  corpus?: string;
  out?: string;
  json: boolean;
}

export const prepare: CommandModule<GlobalArgs, Args> = {
  command: 'prepare',
  describe: 'corpus -> tokenizer -> Arrow shards + manifest, split by document (reused when already made)',
  builder: (y) =>
    withJson(y)
      .option('config', { type: 'string', demandOption: true, describe: 'run config (JSON); its data section says what to prepare' })
      .option('corpus', { type: 'string', describe: 'corpus overriding data.corpus: "sotu" or a .txt/.jsonl/.arrow file or folder' })
      .option('out', { type: 'string', describe: 'output folder overriding data.dir (default: data-cache/<corpus, vocab, seed, splits>)' }),
  handler: (args) =>
    runCommand(
      args,
      async () => {
        const t0 = Date.now();
        const cfg = loadRunConfig(args.config);
        const prep = await prepareData(cfg, {
          corpus: args.corpus,
          out: args.out,
          log: (line) => process.stderr.write(`prepare: ${line}\n`),
        });
        const seconds = Number(((Date.now() - t0) / 1000).toFixed(2));
        const m = prep.manifest;
        const splits = Object.fromEntries(SPLITS.map((s) => [s, { documents: m.splits[s].documents, tokens: m.splits[s].tokens }]));
        const tokenizer = { vocab_size: m.tokenizer.vocab_size, sink_token_id: m.tokenizer.sink_token_id, eos_token_id: m.tokenizer.eos_token_id };
        if (args.json) {
          return printJson({ dir: prep.dir, reused: prep.reused, seconds, manifest_sha256: prep.manifestHash, corpus: m.corpus.name, splits, tokenizer });
        }
        const lines = [
          `${prep.reused ? 'reused' : 'prepared'} ${prep.dir} in ${seconds} s`,
          `corpus:     ${m.corpus.name}, ${m.corpus.documents} documents`,
          `tokenizer:  ${m.tokenizer.file}, vocab ${tokenizer.vocab_size}, sink id ${tokenizer.sink_token_id}, eos id ${tokenizer.eos_token_id ?? 'none'}`,
          ...SPLITS.map((s) => `${(s + ':').padEnd(11)} ${String(splits[s]!.documents).padStart(6)} documents ${String(splits[s]!.tokens).padStart(10)} tokens`),
          `test text:  ${m.test_stream.file} (${m.test_stream.chars} characters)`,
        ];
        process.stdout.write(lines.join('\n') + '\n');
      },
      { backend: false },
    ),
};
