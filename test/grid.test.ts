import { describe, expect, it } from 'vitest';
import { verdicts, type GridCell } from '../experiments/grid.js';

function grid(rows: Record<string, [string, number[]]>): GridCell[] {
  const caches = ['0+64', '1+63', '2+62', '4+60'];
  return Object.entries(rows).flatMap(([model, [mode, ppl]]) =>
    caches.map((cache, i) => ({ model, sink_mode: mode as GridCell['sink_mode'], cache, policy: 'sinks' as const, ppl: ppl[i]!, nll_mean: Math.log(ppl[i]!), tokens: 1280, ms_per_token: 1, backend: 'cpu', decode: 'host' as const })),
  );
}

describe('verdicts on the Table-3 grid', () => {
  it('the paper numbers: vanilla needs its initial tokens, the sink-token model streams with one', () => {
    const v = verdicts(grid({ vanilla: ['none', [27.87, 18.49, 18.05, 18.05]], token: ['token', [1235, 18.01, 18.01, 18.02]] }), 64);
    expect(v.map((x) => x.holds)).toEqual([true, true, true]);
  });
  it('no sink anywhere: vanilla claims fail and the sink-token claim is inconclusive, not "holds"', () => {
    const v = verdicts(grid({ vanilla: ['none', [88.78, 88.78, 88.74, 88.75]], token: ['token', [91.39, 91.33, 91.33, 91.46]] }), 64);
    expect(v.map((x) => x.holds)).toEqual([false, false, null]);
    expect(v[2]!.evidence).toMatch(/inconclusive/);
  });
});
