/**
 * The paper's claims, tested on a Table-3 grid as statistics rather than thresholds on one
 * number: each claim compares two caches of one model over the same tokens, and its
 * outcome is read off the 95% interval of their relative perplexity difference
 * (experiments/stats.ts). A difference under MARGIN counts as "no difference": the
 * paper's own 2- vs 4-sink rows differ by 0.0-1.3%.
 */
import type { SinkMode } from '../core/config.js';
import type { GridResult } from './grid.js';
import { formatDiff, noWorseThan, pairedBootstrap, worseBy, type Outcome, type PairedDiff } from './stats.js';

/** The relative perplexity difference below which two caches count as equally good. */
export const MARGIN = 0.01;

export interface Verdict {
  claim: string;
  model: string;
  outcome: Outcome;
  /** outcome as a boolean (null: inconclusive), for older readers of the JSON. */
  holds: boolean | null;
  /** The comparison: ppl(a) / ppl(b) - 1 with its interval. */
  compare: { a: string; b: string } & PairedDiff;
  evidence: string;
  note?: string;
}

interface Claim {
  id: string;
  modes: SinkMode[];
  claim: string;
  /** Initial-token counts of the two caches compared (a against b). */
  a: number;
  b: number;
  test: (d: PairedDiff, margin: number) => Outcome;
}

const CLAIMS: Claim[] = [
  { id: 'vanilla-window', modes: ['none'], claim: 'window attention (0 initial tokens) degrades a vanilla model', a: 0, b: 4, test: worseBy },
  { id: 'vanilla-one', modes: ['none'], claim: 'a vanilla model needs more than one initial token', a: 1, b: 4, test: worseBy },
  { id: 'token-needs', modes: ['token'], claim: 'a sink-token model needs its sink token (0 initial tokens degrade it)', a: 0, b: 1, test: worseBy },
  { id: 'token-streams', modes: ['token'], claim: 'a sink-token model streams with just its one sink token', a: 1, b: 4, test: noWorseThan },
  { id: 'softmax1-streams', modes: ['softmax1'], claim: 'a zero-sink (softmax1) model streams with no initial token', a: 0, b: 4, test: noWorseThan },
  { id: 'logit-streams', modes: ['logit'], claim: 'a per-head sink-logit model streams with no initial token', a: 0, b: 4, test: noWorseThan },
];

const asBool = (o: Outcome): boolean | null => (o === 'inconclusive' ? null : o === 'holds');

/**
 * Every claim that applies to each model of the grid (by its sink mode). Block length for
 * the bootstrap: the cache size, the span over which one eviction decision affects the
 * following predictions.
 */
export function verdicts(result: GridResult, window: number, opts: { margin?: number; resamples?: number } = {}): Verdict[] {
  const margin = opts.margin ?? MARGIN;
  const out: Verdict[] = [];
  const models = [...new Map(result.grid.map((c) => [c.model, c.sink_mode])).entries()];
  for (const [model, mode] of models) {
    const nll = (s: number) => result.curves.find((c) => c.model === model && c.policy === 'sinks' && c.cache === `${s}+${window - s}`)?.nll;
    const byId = new Map<string, Verdict>();
    for (const c of CLAIMS.filter((x) => x.modes.includes(mode))) {
      const a = nll(c.a);
      const b = nll(c.b);
      if (!a || !b) continue;
      const cacheA = `${c.a}+${window - c.a}`;
      const cacheB = `${c.b}+${window - c.b}`;
      const d = pairedBootstrap(a, b, { block: window, resamples: opts.resamples, seed: `${model}:${cacheA}:${cacheB}` });
      const outcome = c.test(d, margin);
      const v: Verdict = {
        claim: c.claim,
        model,
        outcome,
        holds: asBool(outcome),
        compare: { a: cacheA, b: cacheB, ...d },
        evidence: `${model}: ppl ${cacheA} vs ${cacheB} ${formatDiff(d)} over ${d.tokens} tokens`,
      };
      byId.set(c.id, v);
      out.push(v);
    }
    // One sink is "enough" only in a meaningful sense when the model needs it at all.
    const needs = byId.get('token-needs');
    const streams = byId.get('token-streams');
    if (streams && needs && needs.outcome !== 'holds') {
      streams.note = 'vacuous here: this model does not depend on its sink token (no attention sink to keep)';
    }
  }
  return out;
}

/** One line per verdict, as validate and ablate print them. */
export function formatVerdict(v: Verdict): string {
  const tag = { holds: 'HOLDS        ', 'does not hold': 'DOES NOT HOLD', inconclusive: 'INCONCLUSIVE ' }[v.outcome];
  return `${tag}  ${v.claim}: ${v.evidence}${v.note ? ` (${v.note})` : ''}`;
}

export function verdictRule(margin = MARGIN): string {
  return `A claim that one cache is worse than another HOLDS when the whole 95% interval of the relative perplexity difference is above ${(margin * 100).toFixed(0)}%, DOES NOT HOLD when it is all below, and is INCONCLUSIVE when it straddles ${(margin * 100).toFixed(0)}%; "streams with" claims (no worse by more than ${(margin * 100).toFixed(0)}%) mirror it. Intervals: paired circular block bootstrap over the per-token NLLs of the same tokens, blocks of one cache length.`;
}
