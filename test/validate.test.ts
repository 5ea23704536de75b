import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CheckFailure } from '../core/errors.js';
import { evaluateGrid } from '../experiments/grid.js';
import { readText } from '../infer/text.js';
import { checkDrift, validate, type ShippedManifest } from '../experiments/validate.js';
import { saveModel } from '../model/checkpoint.js';
import { testBackend, textAndTokenizer, tinyModel } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-validate-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A shipped folder as `ablate --ship` makes it, with two tiny random models. */
async function shipped(dir: string): Promise<ShippedManifest> {
  fs.mkdirSync(dir, { recursive: true });
  const { textFile, tok } = await textAndTokenizer(dir);
  const variants: ShippedManifest['variants'] = [];
  for (const mode of ['none', 'token'] as const) {
    const model = tinyModel({ vocab_size: tok.vocabSize, sink_mode: mode, sink_token_id: mode === 'token' ? tok.sinkTokenId : null });
    await saveModel(path.join(dir, mode), model, { tokenizerPath: tok.path });
    model.dispose();
    variants.push({ name: mode, sink_mode: mode, dir: mode, steps: 1, tokens_seen: 1, val_loss: null });
  }
  const m: ShippedManifest = {
    text: path.basename(textFile),
    spec: { window: 16, initial: [0, 1, 2, 4], maxTokens: 120 },
    backend: 'test',
    created: new Date().toISOString(),
    variants,
    grid: [],
  };
  fs.writeFileSync(path.join(dir, 'validate.json'), JSON.stringify(m));
  // Record what this very code computes, as `ablate --ship` does.
  const { grid } = await evaluateGrid(variants.map((v) => ({ name: v.name, dir: path.join(dir, v.dir) })), readText(textFile), m.spec, { progress: false });
  m.grid = grid.map((c) => ({ model: c.model, sink_mode: c.sink_mode, cache: c.cache, ppl: c.ppl }));
  fs.writeFileSync(path.join(dir, 'validate.json'), JSON.stringify(m));
  return m;
}

describe('validate: the recomputed grid is checked against the recorded one', () => {
  const dir = path.join(tmp, 'ship');
  let manifest: ShippedManifest;
  beforeAll(async () => {
    await testBackend();
    manifest = await shipped(dir);
  });

  it('recomputes the recorded grid exactly (same code, same checkpoints)', async () => {
    const r = await validate({ dir, progress: false });
    expect(r.grid).toHaveLength(8);
    expect(r.max_rel_diff_vs_recorded).toBeLessThan(1e-9);
  });

  it('checkDrift: passes within the tolerance, fails past it or on a cell the record lacks', () => {
    const grid = manifest.grid;
    expect(checkDrift(grid, grid, 1e-3, 'x.json')).toBe(0);
    const off = grid.map((c, i) => (i === 3 ? { ...c, ppl: c.ppl * 1.002 } : c));
    expect(checkDrift(grid, off, 1e-2, 'x.json')).toBeCloseTo(1 - 1 / 1.002, 9);
    expect(() => checkDrift(grid, off, 1e-3, 'x.json')).toThrow(CheckFailure);
    expect(() => checkDrift(grid, grid.slice(1), 1e-3, 'x.json')).toThrow(/no recorded cell/);
    const nan = grid.map((c) => ({ ...c, ppl: NaN }));
    expect(() => checkDrift(nan, grid, 1e-3, 'x.json')).toThrow(CheckFailure);
  });

  it('sinklm validate exits 1 with one line naming the cell when the record drifts, 0 when it does not', () => {
    const bin = path.join(ROOT, 'bin', 'sinklm');
    const run = () => spawnSync(process.execPath, [bin, 'validate', '--checkpoints', dir, '--json'], { encoding: 'utf8', timeout: 120_000 });
    const ok = run();
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).max_rel_diff_vs_recorded).toBeLessThan(1e-9);

    const drifted = { ...manifest, grid: manifest.grid.map((c, i) => (i === 5 ? { ...c, ppl: c.ppl * 1.01 } : c)) };
    fs.writeFileSync(path.join(dir, 'validate.json'), JSON.stringify(drifted));
    try {
      const bad = run();
      expect(bad.status).toBe(1);
      const lines = bad.stderr.split('\n').filter((l) => l.startsWith('sinklm'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`check failed: .*drifts.*${manifest.grid[5]!.model} ${manifest.grid[5]!.cache.replace('+', '\\+')}`));
      expect(bad.stderr).not.toMatch(/\n\s+at /);
      expect(bad.stdout).toBe('');
    } finally {
      fs.writeFileSync(path.join(dir, 'validate.json'), JSON.stringify(manifest));
    }
  });
});

describe('validate --model: any checkpoint folders on any text', () => {
  const dir = path.join(tmp, 'models');
  const bin = path.join(ROOT, 'bin', 'sinklm');
  const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawnSync(process.execPath, [bin, 'validate', ...args], { encoding: 'utf8', timeout: 180_000, env: { ...process.env, ...env } });
  let textFile: string;
  beforeAll(async () => {
    await testBackend();
    fs.mkdirSync(dir, { recursive: true });
    const t = await textAndTokenizer(dir);
    textFile = t.textFile;
    const model = tinyModel({ vocab_size: t.tok.vocabSize });
    await saveModel(path.join(dir, 'tiny'), model, { tokenizerPath: t.tok.path });
    model.dispose();
  });

  it('two models with different tokenizers: grid with bits per byte, references, sink statistics, verdicts with intervals', () => {
    const shipped = path.join(ROOT, 'checkpoints', 'token');
    const r = cli(['--model', `tiny=${path.join(dir, 'tiny')}`, '--model', `sinktoken=${shipped}`, '--text', textFile, '--max-tokens', '150', '--recompute-tokens', '20', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      source: string;
      spec: { window: number };
      grid: { model: string; cache: string; ppl: number; bpb: number; tokens: number }[];
      references: { model: string; policy: string }[];
      models: { name: string; sink_mode: string; sink_metric: number; first_by_layer: number[] }[];
      verdicts: { model: string; outcome: string; compare: { lo: number; hi: number; rel: number } }[];
      tokenizers_differ: boolean;
      max_rel_diff_vs_recorded: number | null;
    };
    expect(out.source).toBe('models');
    // Default window: half the smaller context (the tiny model has 64 positions).
    expect(out.spec.window).toBe(32);
    expect(out.grid.map((c) => `${c.model} ${c.cache}`)).toEqual(['tiny', 'sinktoken'].flatMap((m) => ['0+32', '1+31', '2+30', '4+28'].map((c) => `${m} ${c}`)));
    expect(out.grid.every((c) => Number.isFinite(c.ppl) && c.bpb > 0 && c.bpb < 20)).toBe(true);
    expect(out.tokenizers_differ).toBe(true);
    expect(out.references.map((c) => `${c.model} ${c.policy}`)).toEqual(['tiny dense', 'tiny recompute', 'sinktoken dense', 'sinktoken recompute']);
    expect(out.models.map((m) => [m.name, m.sink_mode, m.first_by_layer.length])).toEqual([['tiny', 'none', 2], ['sinktoken', 'token', 4]]);
    expect(out.verdicts.map((v) => v.model)).toEqual(['tiny', 'tiny', 'sinktoken', 'sinktoken']);
    for (const v of out.verdicts) expect(v.compare.lo).toBeLessThanOrEqual(v.compare.hi);
    expect(out.max_rel_diff_vs_recorded).toBeNull();
  });

  it('bad input: one line, exit 2, before any streaming', () => {
    const tiny = `t=${path.join(dir, 'tiny')}`;
    const cases: [string[], RegExp][] = [
      [['--model', `x=${dir}`, '--text', textFile], /config\.json|tokenizer\.json/],
      [['--model', `x=${textFile}`, '--text', textFile], /is a file, not a folder/],
      [['--model', tiny], /--text/],
      [['--model', tiny, '--text', textFile, '--window', '100'], /--window.*context/],
      [['--model', tiny, '--text', textFile, '--window', '3'], /--window/],
      [['--model', tiny, '--model', tiny, '--text', textFile], /two models are called "t"/],
      [['--text', textFile], /--text: applies with --model only/],
      [['--checkpoints', dir], /no validate\.json/],
      [['--tolerance', '-1'], /--tolerance/],
    ];
    for (const [args, why] of cases) {
      // A backend that cannot start: the input's own line comes first only if it is checked first.
      const r = cli(args, { SINKLM_BACKEND: 'no-such-backend' });
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      const lines = r.stderr.split('\n').filter((l) => l.trim());
      expect(lines, args.join(' ')).toHaveLength(1);
      expect(lines[0]).toMatch(why);
      expect(r.stdout).toBe('');
    }
  });
});
