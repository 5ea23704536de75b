import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UserError } from '../core/errors.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { emergencePlot, emergenceTrace, runLabels, runWeights, uniformFirst } from '../experiments/emergence.js';
import { attentionStats, attentionStatsOver, attentionWindows } from '../infer/attention.js';
import type { LoadedCheckpoint } from '../infer/text.js';
import { saveModel } from '../model/checkpoint.js';
import { STATE_FILE, METRICS_FILE } from '../train/rundir.js';
import { testBackend, textAndTokenizer, tinyModel } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-emergence-'));

beforeAll(async () => {
  await testBackend();
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// One character per token, so the windows' contents can be checked by position.
const tokenizer = { encode: (t: string) => Array.from(t, (ch) => ch.charCodeAt(0) - 40) } as TextTokenizer;
const text = Array.from({ length: 200 }, (_, i) => String.fromCharCode(42 + (i % 45))).join('');

describe('attentionWindows', () => {
  it('spreads windows of the context over the text, first at its start, last at its end', () => {
    const ck: LoadedCheckpoint = { dir: '', model: tinyModel(), tokenizer };
    const ids = tokenizer.encode(text);
    const w = attentionWindows(ck, text, 4);
    expect(w).toHaveLength(4);
    for (const x of w) expect(x).toHaveLength(64);
    expect(w[0]).toEqual(ids.slice(0, 64));
    expect(w[3]).toEqual(ids.slice(200 - 64));
    expect(w[1]).toEqual(ids.slice(45, 45 + 64)); // round(136 / 3)
    // A text shorter than the context gives one window of all of it.
    expect(attentionWindows(ck, text.slice(0, 30), 4)).toEqual([ids.slice(0, 30)]);
    for (const bad of [0, 1.5]) expect(() => attentionWindows(ck, text, bad)).toThrow(UserError);
    ck.model.dispose();
  });

  it('leads every window with the sink token in a sink-token model', () => {
    const ck: LoadedCheckpoint = { dir: '', model: tinyModel({ sink_mode: 'token', sink_token_id: 1 }), tokenizer };
    const w = attentionWindows(ck, text, 3);
    for (const x of w) {
      expect(x).toHaveLength(64);
      expect(x[0]).toBe(1);
      expect(x.slice(1).includes(1)).toBe(false);
    }
    ck.model.dispose();
  });
});

describe('attentionStatsOver', () => {
  it('averages per-head means and maps over windows and thresholds the averages', async () => {
    const ck: LoadedCheckpoint = { dir: '', model: tinyModel({ sink_mode: 'logit', num_attention_heads: 4 }), tokenizer };
    const w = attentionWindows(ck, text, 3);
    const one = await Promise.all(w.map((x) => attentionStats(ck, x)));
    const s = await attentionStatsOver(ck, w);
    expect(s.windows).toBe(3);
    const firsts: number[] = [];
    for (const l of s.layers) {
      for (const h of l.heads) {
        const each = one.map((o) => o.layers[l.layer]!.heads[h.head]!);
        expect(h.first).toBeCloseTo(each.reduce((a, e) => a + e.first, 0) / 3, 6);
        expect(h.first4).toBeCloseTo(each.reduce((a, e) => a + e.first4, 0) / 3, 6);
        expect(h.implicit_sink!).toBeCloseTo(each.reduce((a, e) => a + e.implicit_sink!, 0) / 3, 6);
        firsts.push(h.first);
      }
    }
    expect(s.maps[1]!.values[5]![2]).toBeCloseTo(one.reduce((a, o) => a + o.maps[1]!.values[5]![2]!, 0) / 3, 6);
    expect(Number.isNaN(s.maps[0]!.values[2]![3])).toBe(true);
    const sorted = [...firsts].sort((a, b) => a - b);
    const eps = (sorted[3]! + sorted[4]!) / 2;
    expect((await attentionStatsOver(ck, w, { eps })).sink_metric.first).toBe(4 / 8);
    ck.model.dispose();
  });
});

describe('emergence helpers', () => {
  it('uniformFirst is what an even spread gives token 0, averaged over queries 4..T-1', () => {
    expect(uniformFirst(5)).toBeCloseTo(1 / 5, 12);
    expect(uniformFirst(6)).toBeCloseTo((1 / 5 + 1 / 6) / 2, 12);
    expect(uniformFirst(128)).toBeCloseTo(0.0270, 4);
  });
  it('runLabels adds the parent folder only where names collide', () => {
    expect(runLabels(['runs/a/none', 'runs/b/none', 'runs/emerge/wd1'])).toEqual(['a/none', 'b/none', 'wd1']);
  });
});

describe('emergenceTrace and `sinklm emergence`', () => {
  let run: string;
  let textFile: string;
  beforeAll(async () => {
    run = path.join(tmp, 'run');
    const made = await textAndTokenizer(tmp);
    textFile = made.textFile;
    const tok = made.tok;
    // Snapshots at 10 and 20 (different weights), newest weights at 30 in the run folder.
    for (const [step, dir, seed] of [[10, path.join(run, 'snapshots', 'step-000010'), 1], [20, path.join(run, 'snapshots', 'step-000020'), 2], [30, run, 3]] as const) {
      const model = tinyModel({ vocab_size: 320 }, seed);
      await saveModel(dir, model, { tokenizerPath: tok.path });
      model.dispose();
      if (dir === run) fs.writeFileSync(path.join(run, STATE_FILE), JSON.stringify({ step }));
    }
    fs.writeFileSync(path.join(run, METRICS_FILE), [{ step: 10, loss: 5 }, { step: 15, val_loss: 4.5 }, { step: 30, val_loss: 4 }].map((m) => JSON.stringify(m)).join('\n') + '\n');
  });

  it('measures every snapshot and the newest weights, with the last validation loss before each', async () => {
    expect(runWeights(run).map((w) => w.step)).toEqual([10, 20, 30]);
    const t = await emergenceTrace(run, fs.readFileSync(textFile, 'utf8'), { windows: 2 });
    expect(t.points.map((p) => p.step)).toEqual([10, 20, 30]);
    expect(t.points.map((p) => p.val_step)).toEqual([null, 15, 30]);
    expect(t.points.map((p) => p.val_loss)).toEqual([null, 4.5, 4]);
    expect(t.windows).toBe(2);
    for (const p of t.points) {
      expect(p.max_first).toBeGreaterThanOrEqual(p.mean_first);
      expect(p.sink).toBeGreaterThanOrEqual(0);
    }
    expect(new Set(t.points.map((p) => p.mean_first)).size).toBe(3);
    const svg = await emergencePlot([t, { ...t, name: 'other' }]);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('First-token attention of the strongest head');
    expect(svg).toContain('>other<');
  });

  it('the CLI prints the table and --json; a folder without weights is a one-line error', () => {
    const bin = path.join(ROOT, 'bin', 'sinklm');
    const ok = spawnSync(process.execPath, [bin, 'emergence', run, '--text', textFile, '--windows', '2', '--json'], { encoding: 'utf8', timeout: 60_000 });
    expect(ok.status, ok.stderr).toBe(0);
    const j = JSON.parse(ok.stdout) as { runs: { points: { step: number }[] }[] };
    expect(j.runs[0]!.points.map((p) => p.step)).toEqual([10, 20, 30]);
    const empty = path.join(tmp, 'empty');
    fs.mkdirSync(empty);
    const bad = spawnSync(process.execPath, [bin, 'emergence', empty, '--text', textFile], { encoding: 'utf8', timeout: 60_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim().split('\n').filter((l) => l.startsWith('sinklm:')).length).toBe(1);
    expect(bad.stderr).toContain('empty');
  });
});
