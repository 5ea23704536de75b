import type { CommandModule } from 'yargs';
import { checkCheckpointDir } from '../../model/checkpoint.js';
import { writeFileAtomic } from '../../core/fsutil.js';
import { checkOutputPath } from '../../core/outpath.js';
import { attentionPlot, attentionStats, attentionTokens, formatAttentionStats, SINK_EPS } from '../../infer/attention.js';
import { loadCheckpoint, readText } from '../../infer/text.js';
import { checkFraction, once, printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  checkpoint: string;
  text: string;
  tokens?: number;
  eps: number;
  plot?: string;
  json: boolean;
}

export const attentionCommand: CommandModule<GlobalArgs, Args> = {
  command: 'attention',
  describe: 'attention-sink statistics per layer and head over one full forward (first-token attention, Sink^eps)',
  builder: (y) =>
    withJson(
      y
        .option('checkpoint', { type: 'string', demandOption: true, describe: 'checkpoint directory' })
        .option('text', { type: 'string', demandOption: true, describe: 'UTF-8 text file; its first tokens are used' })
        .option('tokens', { type: 'number', describe: "stream length (default and most: the model's max_position_embeddings)" })
        .option('eps', { type: 'number', default: SINK_EPS, describe: 'threshold of the sink metric (Gu et al. use 0.3)' })
        .option('plot', { type: 'string', describe: 'write an SVG: layer x head heatmap of first-token attention + averaged attention maps' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      const ck = await loadCheckpoint(args.checkpoint);
      let stats;
      try {
        const tokens = attentionTokens(ck, readText(args.text), args.tokens, args.text);
        stats = await attentionStats(ck, tokens, { eps: args.eps });
      } finally {
        ck.model.dispose();
      }
      if (args.plot) writeFileAtomic(args.plot, await attentionPlot(stats));
      if (args.json) {
        const { maps: _maps, ...rest } = stats;
        return printJson({ ...rest, note: `means over queries at positions >= ${stats.query_from}; earlier queries can only see the first tokens` });
      }
      process.stdout.write(formatAttentionStats(stats));
      if (args.plot) process.stdout.write(`plot: ${args.plot}\n`);
    }, {
      ...ONE_THREAD,
      check: () => {
        once(args, ['checkpoint', 'text', 'tokens', 'eps', 'plot']);
        checkFraction(args.eps, '--eps');
        checkCheckpointDir(args.checkpoint, '--checkpoint');
        if (args.plot !== undefined) checkOutputPath(args.plot, 'file', '--plot');
      },
    }),
};
