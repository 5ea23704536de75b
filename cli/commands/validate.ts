import type { CommandModule } from 'yargs';
import { UserError } from '../../core/errors.js';
import { PAPER_TABLE3 } from '../../experiments/report.js';
import { DRIFT_TOLERANCE, parseModelArg, planModels, planShipped, RECOMPUTE_TOKENS, validate, validateModels, type ValidateResult } from '../../experiments/validate.js';
import { formatVerdict, verdictRule } from '../../experiments/verdicts.js';
import { printJson, ONE_THREAD, runCommand, withJson, type GlobalArgs } from '../common.js';

interface Args extends GlobalArgs {
  checkpoints?: string;
  model?: string[];
  text?: string;
  window?: number;
  'max-tokens'?: number;
  'recompute-tokens'?: number;
  tolerance: number;
  json: boolean;
}

const nonNegativeInt = (v: number | undefined, flag: string) => {
  if (v !== undefined && !(Number.isInteger(v) && v >= 0)) throw new UserError(`must be a whole number >= 0 (got ${v})`, { field: flag });
};

export const validateCommand: CommandModule<GlobalArgs, Args> = {
  command: 'validate',
  describe: "the main job: the paper's Table-3 grid, sink statistics and a verdict per claim, on the shipped checkpoints or any --model folders",
  builder: (y) =>
    withJson(
      y
        .option('checkpoints', { type: 'string', describe: 'folder made by `sinklm ablate --ship` (default: the shipped checkpoints/)' })
        .option('model', {
          type: 'string',
          array: true,
          describe: 'NAME=FOLDER of any GPT-NeoX checkpoint (a real Pythia model, your run); repeat for several; needs --text',
        })
        .option('text', { type: 'string', describe: 'UTF-8 text to stream (with --model; e.g. a long public-domain book)' })
        .option('window', { type: 'number', describe: 'total cache W of the grid 0+W, 1+(W-1), 2+(W-2), 4+(W-4) (with --model; default half the smallest context)' })
        .option('max-tokens', { type: 'number', describe: 'text tokens streamed per cell (with --model; default 8 x W)' })
        .option('recompute-tokens', {
          type: 'number',
          describe: `tokens the recompute reference runs over (it re-runs W tokens per token; 0 skips it; default ${RECOMPUTE_TOKENS})`,
        })
        .option('tolerance', {
          type: 'number',
          default: DRIFT_TOLERANCE,
          describe: 'largest relative difference of a recomputed cell from the recorded one; past it validate fails (exit 1)',
        }),
    ),
  handler: (args) => {
    const models = () => ({ models: (args.model ?? []).map(parseModelArg), text: args.text!, window: args.window, maxTokens: args['max-tokens'] });
    return runCommand(
      args,
      async () => {
        const common = {
          progress: args.json ? false : undefined,
          log: args.json ? undefined : (l: string) => process.stderr.write(l + '\n'),
          recomputeTokens: args['recompute-tokens'],
        };
        const r: ValidateResult = args.model?.length
          ? await validateModels({ ...common, ...models() })
          : await validate({ ...common, dir: args.checkpoints, tolerance: args.tolerance });
        if (args.json) return printJson(r);
        process.stdout.write(formatResult(r) + '\n');
      },
      {
        ...ONE_THREAD,
        // Every input, before TensorFlow starts.
        check: () => {
          if (!(args.tolerance >= 0)) throw new UserError(`must be a number >= 0 (got ${args.tolerance})`, { field: '--tolerance' });
          nonNegativeInt(args['recompute-tokens'], '--recompute-tokens');
          if (args.model?.length) {
            if (args.checkpoints !== undefined) throw new UserError('give either --checkpoints (a shipped ablation) or --model folders, not both', { field: '--checkpoints' });
            if (args.text === undefined) throw new UserError('--model needs a text to stream: --text FILE', { field: '--text' });
            planModels(models());
          } else {
            for (const flag of ['text', 'window', 'max-tokens'] as const) {
              if (args[flag] !== undefined) throw new UserError(`applies with --model only (the shipped ablation records its own text and grid)`, { field: `--${flag}` });
            }
            planShipped(args.checkpoints);
          }
        },
      },
    );
  },
};

function table(r: ValidateResult, value: (model: string, cache: string) => string): string[] {
  const W = r.spec.window;
  const caches = r.spec.initial.map((s) => `${s}+${W - s}`);
  const models = [...new Set(r.grid.map((c) => c.model))];
  return [`| model | ${caches.join(' | ')} |`, `|---|${caches.map(() => '---:').join('|')}|`, ...models.map((m) => `| ${m} | ${caches.map((c) => value(m, c)).join(' | ')} |`)];
}

function formatResult(r: ValidateResult): string {
  const W = r.spec.window;
  const at = (m: string, c: string) => r.grid.find((g) => g.model === m && g.cache === c);
  const out: string[] = [];
  const tokens = [...new Set(r.grid.map((c) => c.tokens))].join('/');
  out.push(`Streaming perplexity, ${tokens} tokens of ${r.text} per cell, cache S+W' = ${W} (sinklm, backend ${r.backend}, ${r.decode} step, ${r.seconds.toFixed(0)} s):`, '');
  out.push(...table(r, (m, c) => at(m, c)?.ppl.toFixed(2) ?? '-'));
  out.push('', `Bits per byte of the same cells${r.tokenizers_differ ? ' (the models tokenize the text differently: compare rows by these, not by perplexity)' : ''}:`, '');
  out.push(...table(r, (m, c) => at(m, c)?.bpb.toFixed(4) ?? '-'));
  if (r.references.length) {
    out.push('', 'References:', '', '| model | policy | cache | tokens | ppl | bits/byte | ms/token |', '|---|---|---|---:|---:|---:|---:|');
    for (const c of r.references) out.push(`| ${c.model} | ${c.policy} | ${c.policy === 'dense' ? 'all (within the context)' : c.cache} | ${c.tokens} | ${c.ppl.toFixed(2)} | ${c.bpb.toFixed(4)} | ${c.ms_per_token.toFixed(1)} |`);
  }
  out.push('', `Attention sinks (Sink^${r.models[0]?.eps ?? 0.3}: share of heads whose mean first-token attention exceeds it; ${r.models[0]?.windows ?? 0} windows of ${r.models[0]?.tokens_per_window ?? 0} tokens):`, '');
  out.push('| model | sink mode | Sink^eps | strongest head (layer.head) | first-token attention per layer |', '|---|---|---:|---|---|');
  for (const m of r.models) {
    out.push(`| ${m.name} | ${m.sink_mode} | ${m.sink_metric.toFixed(3)} | ${m.strongest_head.first.toFixed(3)} (${m.strongest_head.layer}.${m.strongest_head.head}) | ${m.first_by_layer.map((x) => x.toFixed(3)).join(' ')} |`);
  }
  out.push('', `The paper's Table 3 (Pythia-160M, cache 1024):`, '');
  out.push('| model | 0+1024 | 1+1023 | 2+1022 | 4+1020 |', '|---|---:|---:|---:|---:|');
  for (const p of PAPER_TABLE3) out.push(`| ${p.model} | ${[0, 1, 2, 4].map((s) => p.values[s]).join(' | ')} |`);
  out.push('');
  for (const v of r.verdicts) out.push(formatVerdict(v));
  out.push('', `${verdictRule(r.margin)} ${r.resamples} resamples.`);
  if (r.max_rel_diff_vs_recorded !== null) {
    out.push('', `Recomputed grid vs the one recorded at ablation time (${r.recorded_backend}): max relative difference ${(r.max_rel_diff_vs_recorded * 100).toFixed(4)}%.`);
  }
  if (r.variants) {
    out.push(`Models: ${r.variants.map((v) => `${v.name} (${(v.tokens_seen / 1e6).toFixed(1)}M tokens, val loss ${v.val_loss?.toFixed(3)})`).join(', ')}. Report: ${r.checkpoints}/report/report.md`);
  }
  return out.join('\n');
}
