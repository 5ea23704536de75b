import type { CommandModule } from 'yargs';
import { writeFileAtomic } from '../../core/fsutil.js';
import { checkInputDir, checkOutputPath } from '../../core/outpath.js';
import { emergencePlot, emergenceTrace, formatEmergence, runLabels, runTestText, type EmergenceTrace } from '../../experiments/emergence.js';
import { SINK_EPS } from '../../infer/attention.js';
import { readText } from '../../infer/text.js';
import { checkFraction, checkInt, once, printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  runs: string[];
  text?: string;
  windows: number;
  eps: number;
  plot?: string;
  json: boolean;
}

export const emergenceCommand: CommandModule<GlobalArgs, Args> = {
  command: 'emergence <runs..>',
  describe: 'how the attention sink emerges: Sink^eps, first-token attention and val loss at every snapshot of one or more training runs',
  builder: (y) =>
    withJson(
      y
        .positional('runs', { type: 'string', array: true, demandOption: true, describe: 'training run folders (train.out), with snapshots/ from train.snapshot_every' })
        .option('text', { type: 'string', describe: "held-out text (default: the test stream of each run's data)" })
        .option('windows', { type: 'number', default: 8, describe: 'context-long windows of the text the means run over' })
        .option('eps', { type: 'number', default: SINK_EPS, describe: 'threshold of the sink metric (Gu et al. use 0.3)' })
        .option('plot', { type: 'string', describe: 'write an SVG: Sink^eps and first-token attention over steps, one line per run' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      const log = (l: string) => process.stderr.write(l + '\n');
      const traces: EmergenceTrace[] = [];
      const names = runLabels(args.runs);
      for (const [i, run] of args.runs.entries()) {
        const file = args.text ?? (await runTestText(run, args.json ? undefined : log));
        const name = names[i]!;
        if (!args.json) log(`emergence: ${name}: measuring every snapshot over ${args.windows} windows of ${file}`);
        traces.push(await emergenceTrace(run, readText(file), { windows: args.windows, eps: args.eps, file, name }));
      }
      if (args.plot) writeFileAtomic(args.plot, await emergencePlot(traces));
      if (args.json) return printJson({ runs: traces });
      process.stdout.write(formatEmergence(traces));
      if (args.plot) process.stdout.write(`plot: ${args.plot}\n`);
    }, {
      ...ONE_THREAD,
      check: () => {
        once(args, ['text', 'windows', 'eps', 'plot']);
        checkFraction(args.eps, '--eps');
        checkInt(args.windows, '--windows');
        for (const run of args.runs) checkInputDir(String(run), 'run folder');
        if (args.plot !== undefined) checkOutputPath(args.plot, 'file', '--plot');
      },
    }),
};
