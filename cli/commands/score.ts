import type { CommandModule } from 'yargs';
import { checkCheckpointDir } from '../../model/checkpoint.js';
import { backendInfo } from '../../core/backend.js';
import { loadCheckpoint, readText } from '../../infer/text.js';
import { score } from '../../infer/score.js';
import { once, printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  checkpoint: string;
  text: string;
  json: boolean;
}

export const scoreCommand: CommandModule<GlobalArgs, Args> = {
  command: 'score',
  describe: "full-context per-token NLL of the first tokens of a text (up to the model's context)",
  builder: (y) =>
    withJson(
      y
        .option('checkpoint', { type: 'string', demandOption: true, describe: 'checkpoint directory (HF GPT-NeoX layout)' })
        .option('text', { type: 'string', demandOption: true, describe: 'UTF-8 text file' }),
    ),
  handler: (args) =>
    runCommand(
      args,
      async () => {
        const ck = await loadCheckpoint(args.checkpoint);
        const r = await score(ck, readText(args.text), args.text);
        ck.model.dispose();
        const mean = r.nll.reduce((a, b) => a + b, 0) / r.nll.length;
        const backend = backendInfo().backend;
        if (args.json) return printJson({ ...r, nll_mean: mean, ppl: Math.exp(mean), backend });
        process.stderr.write(`score: backend ${backend}\n`);
        process.stdout.write(`tokens ${r.tokens.length}  nll_mean ${mean.toFixed(4)}  ppl ${Math.exp(mean).toFixed(3)}  [${backend}]\n`);
      },
      {
        ...ONE_THREAD,
        check: () => {
          once(args, ['checkpoint', 'text']);
          checkCheckpointDir(args.checkpoint, '--checkpoint');
          readText(args.text);
        },
      },
    ),
};
