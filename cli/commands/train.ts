import type { CommandModule } from 'yargs';
import { initBackend } from '../../core/backend.js';
import { loadRunConfig } from '../../core/config.js';
import { UserError } from '../../core/errors.js';
import { checkOutputPath } from '../../core/outpath.js';
import { defaultOutDir, train } from '../../train/trainer.js';
import { printJson, runCommand, snakeKeys, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  config: string;
  out?: string;
  'max-steps'?: number;
  resume: boolean;
  replicas?: number;
  json: boolean;
}

export const trainCommand: CommandModule<GlobalArgs, Args> = {
  command: 'train',
  describe: 'pre-train a model (prepares the data its config names when missing); Ctrl-C saves and stops',
  builder: (y) =>
    withJson(
      y
        .option('config', { type: 'string', demandOption: true, describe: 'run config (configs/*.json)' })
        .option('out', { type: 'string', describe: 'output folder (default: train.out, else runs/<config name>)' })
        .option('max-steps', { type: 'number', describe: 'stop after this step; the schedule still spans train.max_steps, so a later --resume continues the same run' })
        .option('resume', { type: 'boolean', default: false, describe: 'continue from the newest complete checkpoint in the output folder' })
        .option('replicas', { type: 'number', describe: 'data-parallel processes, one TensorFlow thread each (overrides train.replicas; may change on --resume)' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      const loaded = loadRunConfig(args.config);
      const replicas = args.replicas ?? loaded.train.replicas;
      if (!Number.isInteger(replicas) || replicas < 1) throw new UserError('must be a positive integer', { field: '--replicas' });
      if (loaded.train.batch_size % replicas !== 0) {
        throw new UserError(`batch_size ${loaded.train.batch_size} does not split evenly over ${replicas} replicas`, { field: '--replicas' });
      }
      const cfg = { ...loaded, train: { ...loaded.train, replicas } };
      const stopAt = args['max-steps'];
      if (stopAt !== undefined && (!Number.isInteger(stopAt) || stopAt < 1)) throw new UserError('must be a positive integer', { field: '--max-steps' });
      checkOutputPath(args.out ?? defaultOutDir(cfg), 'folder', args.out !== undefined ? '--out' : 'train.out');
      // Data-parallel replicas each run one TensorFlow thread; so does this process, their rank 0.
      await initBackend({ prefer: args.backend, quiet: !!args.json, intraOpThreads: cfg.train.replicas > 1 ? 1 : undefined });
      const r = await train(cfg, { out: args.out, stopAt, resume: args.resume, progress: args.json ? false : undefined });
      // 128 + SIGINT, as shells report: a script tells an interrupted run from a finished one.
      if (r.stopped === 'signal') process.exitCode = 130;
      if (r.stopped === 'already-finished') {
        if (!args.json) process.stdout.write(`already finished: step ${r.step}, loss ${r.loss?.toFixed(4) ?? '-'}, val loss ${r.valLoss?.toFixed(4) ?? '-'} -> ${r.out}\n`);
        else printJson(snakeKeys(r));
        return;
      }
      if (args.json) {
        return printJson(snakeKeys(r));
      }
      process.stdout.write(
        `${r.stopped === 'signal' ? 'interrupted' : 'done'}: step ${r.step}, loss ${r.loss?.toFixed(4) ?? '-'}, val loss ${r.valLoss?.toFixed(4) ?? '-'}, ${Math.round(r.tokensPerSecond)} tokens/s [${r.backend}] -> ${r.out}\n`,
      );
    }, { backend: false }),
};
