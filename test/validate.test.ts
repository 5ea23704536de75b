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
