import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { formatVerdict } from '../../experiments/verdicts.js';
import { loadRunConfig } from '../../core/config.js';
import { prepareData } from '../../data/prepare.js';
import { checkOutputPath } from '../../core/outpath.js';
import { ablate, ablateRoot, shipAblation } from '../../experiments/ablate.js';
import { gridTable } from '../../experiments/report.js';
import { once, printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  config: string;
  out?: string;
  ship?: string;
  'skip-training': boolean;
  json: boolean;
}

export const ablateCommand: CommandModule<GlobalArgs, Args> = {
  command: 'ablate',
  describe: 'train (or reuse) the sink-mode variants of a config, evaluate the Table-3 grid, write a report',
  builder: (y) =>
    withJson(
      y
        .option('config', { type: 'string', demandOption: true, describe: 'ablation config: configs/ablate-quick/base.json (quick, ~6 min per variant), configs/ablate/base.json (the long one, ~90 min per variant)' })
        .option('out', { type: 'string', describe: 'folder for the variants and report/ (default: ablate.out)' })
        .option('ship', { type: 'string', describe: 'also copy checkpoints, report and test text here for `sinklm validate` (e.g. checkpoints)' })
        .option('skip-training', { type: 'boolean', default: false, describe: 'evaluate the variants as they are' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      const cfg = loadRunConfig(args.config);
      const r = await ablate(cfg, { out: args.out, ship: args.ship, progress: args.json ? false : undefined, skipTraining: args['skip-training'] });
      if (args.ship) {
        const prep = await prepareData(cfg, { log: () => {} });
        shipAblation(r, path.join(prep.dir, 'test_stream.txt'), args.ship);
      }
      if (args.json) return printJson({ ...r, curves: undefined });
      process.stdout.write(`${gridTable(r, r.variants.map((v) => v.name))}\n\n`);
      for (const v of r.verdicts) process.stdout.write(formatVerdict(v) + '\n');
      process.stdout.write(`\nreport: ${path.join(r.out, 'report', 'report.md')} [${r.backend}]\n`);
    }, {
      ...ONE_THREAD,
      check: () => {
        once(args, ['config', 'out', 'ship']);
        const cfg = loadRunConfig(args.config);
        checkOutputPath(ablateRoot(cfg, args.out), 'folder', args.out !== undefined ? '--out' : 'ablate.out');
        if (args.ship !== undefined) checkOutputPath(args.ship, 'folder', '--ship');
      },
    }),
};
