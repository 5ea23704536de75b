import type { CommandModule } from 'yargs';
import { UserError } from '../../core/errors.js';
import { DRIFT_TOLERANCE, validate } from '../../experiments/validate.js';
import { gridTable, PAPER_TABLE3 } from '../../experiments/report.js';
import { printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  checkpoints?: string;
  tolerance: number;
  json: boolean;
}

export const validateCommand: CommandModule<GlobalArgs, Args> = {
  command: 'validate',
  describe: "the main job: the paper's Table-3 grid on the shipped checkpoints, with a verdict per claim",
  builder: (y) =>
    withJson(
      y
        .option('checkpoints', { type: 'string', describe: 'folder made by `sinklm ablate --ship` (default: the shipped checkpoints/)' })
        .option('tolerance', {
          type: 'number',
          default: DRIFT_TOLERANCE,
          describe: 'largest relative difference of a recomputed cell from the recorded one; past it validate fails (exit 1)',
        }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      if (!(args.tolerance >= 0)) throw new UserError(`must be a number >= 0 (got ${args.tolerance})`, { field: '--tolerance' });
      const r = await validate({ dir: args.checkpoints, tolerance: args.tolerance, progress: args.json ? false : undefined, log: args.json ? undefined : (l) => process.stderr.write(l + '\n') });
      if (args.json) return printJson(r);
      const W = r.spec.window;
      const out: string[] = [];
      out.push(`Streaming perplexity, ${r.spec.maxTokens} held-out tokens per cell, cache S+W' = ${W} (sinklm, backend ${r.backend}, ${r.decode} step, ${r.seconds.toFixed(0)} s):`, '');
      out.push(gridTable({ grid: r.grid.map((c) => ({ ...c, policy: 'sinks', nll_mean: Math.log(c.ppl), tokens: r.spec.maxTokens, ms_per_token: 0, backend: r.backend, decode: r.decode })), spec: r.spec }, r.variants.map((v) => v.name)));
      out.push('', `The paper's Table 3 (Pythia-160M, cache 1024):`, '');
      out.push('| model | 0+1024 | 1+1023 | 2+1022 | 4+1020 |', '|---|---:|---:|---:|---:|');
      for (const p of PAPER_TABLE3) out.push(`| ${p.model} | ${[0, 1, 2, 4].map((s) => p.values[s]).join(' | ')} |`);
      out.push('');
      for (const v of r.verdicts) out.push(`${v.holds === null ? 'INCONCLUSIVE ' : v.holds ? 'HOLDS        ' : 'DOES NOT HOLD'}  ${v.claim}: ${v.evidence}`);
      out.push('', `Recomputed grid vs the one recorded at ablation time (${r.recorded_backend}): max relative difference ${(r.max_rel_diff_vs_recorded * 100).toFixed(4)}%.`);
      out.push(`Models: ${r.variants.map((v) => `${v.name} (${(v.tokens_seen / 1e6).toFixed(1)}M tokens, val loss ${v.val_loss?.toFixed(3)})`).join(', ')}. Report: ${r.checkpoints}/report/report.md`);
      process.stdout.write(out.join('\n') + '\n');
    }, ONE_THREAD),
};
