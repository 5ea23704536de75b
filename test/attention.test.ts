import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UserError } from '../core/errors.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { attentionPlot, attentionStats, attentionTokens, FIRST_K, mapLayers, stackSvgs, type AttentionStats } from '../infer/attention.js';
import type { LoadedCheckpoint } from '../infer/text.js';
import { saveModel } from '../model/checkpoint.js';
import type { NeoXConfig } from '../model/config.js';
import { numTensors, testBackend, textAndTokenizer, tinyModel } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-attention-'));

beforeAll(async () => {
  await testBackend();
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const tokens = Array.from({ length: 40 }, (_, i) => (i * 7 + 3) % 50);

function checkpointOf(over: Partial<NeoXConfig> = {}): LoadedCheckpoint {
  const tokenizer = {} as TextTokenizer;
  return { dir: '(memory)', model: tinyModel(over), tokenizer };
}

/** Each layer's weights [H][T][T] exactly as the probe sees them. */
function probeWeights(ck: LoadedCheckpoint, ids: number[]): number[][][][] {
  const out: number[][][][] = [];
  tf.tidy(() => {
    ck.model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'), (layer, w) => {
      out[layer] = (w.arraySync() as number[][][][])[0]!;
    });
  });
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('attentionStats', () => {
  for (const mode of ['none', 'token', 'softmax1', 'logit'] as const) {
    it(`${mode}: per-head means agree with the weights the probe saw`, async () => {
      const ck = checkpointOf({ sink_mode: mode, sink_token_id: mode === 'token' ? 1 : null, num_hidden_layers: 2, num_attention_heads: 4 });
      await attentionStats(ck, tokens); // the model keeps a causal mask per length, once
      const before = numTensors();
      const s = await attentionStats(ck, tokens);
      expect(numTensors()).toBe(before);
      const w = probeWeights(ck, tokens);
      const T = tokens.length;
      expect(s.tokens).toBe(T);
      expect(s.layers).toHaveLength(2);
      const implicit = mode === 'softmax1' || mode === 'logit';
      for (const l of s.layers) {
        expect(l.heads).toHaveLength(4);
        for (const h of l.heads) {
          const rows = w[l.layer]![h.head]!.slice(FIRST_K);
          expect(rows).toHaveLength(T - FIRST_K);
          expect(h.first).toBeCloseTo(mean(rows.map((r) => r[0]!)), 5);
          expect(h.first4).toBeCloseTo(mean(rows.map((r) => r[0]! + r[1]! + r[2]! + r[3]!)), 5);
          if (implicit) {
            expect(h.implicit_sink).toBeCloseTo(mean(rows.map((r) => 1 - r.reduce((a, b) => a + b, 0))), 5);
            expect(h.implicit_sink!).toBeGreaterThan(0);
          } else {
            expect(h.implicit_sink).toBeNull();
          }
          expect(h.first).toBeLessThanOrEqual(h.first4 + 1e-7);
          expect(h.first4 + (h.implicit_sink ?? 0)).toBeLessThanOrEqual(1 + 1e-5);
        }
      }
      // The maps: head means over the first 16 tokens, blank above the diagonal.
      for (const m of s.maps) {
        expect(m.values).toHaveLength(16);
        for (let q = 0; q < 16; q++) {
          for (let k = 0; k < 16; k++) {
            if (k > q) expect(m.values[q]![k]).toBeNaN();
            else expect(m.values[q]![k]).toBeCloseTo(mean(w[m.layer]!.map((head) => head[q]![k]!)), 5);
          }
          // A query before position 16 sees only keys before it: its row is the whole row.
          const sum = m.values[q]!.slice(0, q + 1).reduce((a, b) => a + b, 0);
          if (implicit) expect(sum).toBeLessThan(1);
          else expect(sum).toBeCloseTo(1, 5);
        }
        // Query 0 sees only itself: with plain softmax it puts everything on token 0.
        if (!implicit) expect(m.values[0]![0]).toBeCloseTo(1, 6);
      }
      ck.model.dispose();
    });
  }

  it('Sink^eps is the share of layer-head pairs above eps, on first-token and implicit-sink mass apart', async () => {
    const ck = checkpointOf({ sink_mode: 'softmax1', num_hidden_layers: 2, num_attention_heads: 4 });
    const base = await attentionStats(ck, tokens);
    const firsts = base.layers.flatMap((l) => l.heads.map((h) => h.first)).sort((a, b) => a - b);
    const sinks = base.layers.flatMap((l) => l.heads.map((h) => h.implicit_sink!));
    // eps between the 3rd and 4th smallest first-token means: 5 of 8 pairs are above it.
    const eps = (firsts[2]! + firsts[3]!) / 2;
    const s = await attentionStats(ck, tokens, { eps });
    expect(s.eps).toBe(eps);
    expect(s.sink_metric.first).toBe(5 / 8);
    expect(s.sink_metric.implicit_sink).toBe(sinks.filter((v) => v > eps).length / 8);
    expect((await attentionStats(ck, tokens, { eps: 1 })).sink_metric).toEqual({ first: 0, implicit_sink: 0 });
    expect((await attentionStats(ck, tokens, { eps: -1 })).sink_metric).toEqual({ first: 1, implicit_sink: 1 });
    expect(base.sink_metric.implicit_sink).not.toBeNull();
    ck.model.dispose();
  });

  it('none/token models have no implicit-sink metric', async () => {
    const ck = checkpointOf({ sink_mode: 'token', sink_token_id: 1 });
    expect((await attentionStats(ck, tokens)).sink_metric.implicit_sink).toBeNull();
    ck.model.dispose();
  });

  it('streams shorter than 16 tokens give smaller maps; 4 tokens or fewer are refused', async () => {
    const ck = checkpointOf();
    const s = await attentionStats(ck, tokens.slice(0, 9));
    expect(s.maps[0]!.values).toHaveLength(9);
    await expect(attentionStats(ck, tokens.slice(0, 4))).rejects.toThrow();
    ck.model.dispose();
  });
});

describe('attentionTokens', () => {
  const tokenizer = { encode: (t: string) => Array.from(t, (ch) => ch.charCodeAt(0) % 48 + 2) } as TextTokenizer;
  it("cuts the stream to N (default: the model's positions) and starts a sink-token model with its sink", () => {
    const ck: LoadedCheckpoint = { dir: '', model: tinyModel({ sink_mode: 'token', sink_token_id: 1 }), tokenizer };
    const text = 'x'.repeat(200);
    expect(attentionTokens(ck, text)).toHaveLength(64);
    const t = attentionTokens(ck, text, 10);
    expect(t).toHaveLength(10);
    expect(t[0]).toBe(1);
    expect(t.slice(1).includes(1)).toBe(false);
    for (const bad of [4, 65, 7.5]) expect(() => attentionTokens(ck, text, bad)).toThrow(UserError);
    expect(() => attentionTokens(ck, 'abc')).toThrow(UserError);
    ck.model.dispose();
  });
});

describe('attentionPlot', () => {
  it('mapLayers picks first, last and evenly between', () => {
    expect(mapLayers(3)).toEqual([0, 1, 2]);
    expect(mapLayers(6)).toEqual([0, 2, 3, 5]);
    expect(mapLayers(24)).toEqual([0, 8, 15, 23]);
  });

  it('stackSvgs keeps ids apart and every reference resolving', () => {
    const part = '<svg width="10" height="20" viewBox="0 0 10 20"><defs><linearGradient id="g"/></defs><rect fill="url(#g)"/></svg>';
    const s = stackSvgs([part, part]);
    expect(s).toMatch(/^<svg[^>]*width="10" height="40"/);
    expect([...s.matchAll(/id="([^"]+)"/g)].map((m) => m[1])).toEqual(['p0-g', 'p1-g']);
    expect(s).toContain('<svg x="0" y="20"');
  });

  for (const mode of ['none', 'logit'] as const) {
    it(`${mode}: one SVG with the layer x head heatmap and the maps, ids unique and resolving`, async () => {
      const ck = checkpointOf({ sink_mode: mode, num_hidden_layers: 5, num_attention_heads: 4 });
      const s: AttentionStats = await attentionStats(ck, tokens);
      ck.model.dispose();
      const svg = await attentionPlot(s, { name: 'tiny' });
      expect(svg.startsWith('<svg')).toBe(true);
      const ids = [...svg.matchAll(/\bid="([^"]+)"/g)].map((m) => m[1]!);
      expect(new Set(ids).size).toBe(ids.length);
      for (const m of svg.matchAll(/url\(#([^)]+)\)/g)) expect(ids).toContain(m[1]);
      expect(svg).toContain('attention to the first token');
      expect(svg.includes('mass on the implicit sink')).toBe(mode === 'logit');
      // Maps of 4 of the 5 layers: first, last and two between.
      for (const l of [0, 1, 3, 4]) expect(svg).toContain(`>layer ${l}<`);
      expect(svg).not.toContain('>layer 2<');
      const file = path.join(tmp, `plot-${mode}.svg`);
      fs.writeFileSync(file, svg);
      const r = spawnSync('rsvg-convert', [file, '-o', file.replace(/svg$/, 'png')], { encoding: 'utf8' });
      if (!r.error) expect(r.status, r.stderr).toBe(0);
    });
  }
});

describe('sinklm attention (CLI)', () => {
  let dir: string;
  let text: string;
  const bin = path.join(ROOT, 'bin', 'sinklm');
  const cli = (args: string[]) => spawnSync(process.execPath, [bin, 'attention', '--checkpoint', dir, '--text', text, ...args], { encoding: 'utf8', timeout: 60_000 });

  beforeAll(async () => {
    dir = path.join(tmp, 'ck');
    const made = await textAndTokenizer(tmp);
    text = made.textFile;
    const tok = made.tok;
    const model = tinyModel({ vocab_size: tok.vocabSize, sink_mode: 'softmax1' });
    await saveModel(dir, model, { tokenizerPath: tok.path });
    model.dispose();
  });

  it('--json prints the stats, --plot writes the SVG', () => {
    const plot = path.join(tmp, 'out', 'att.svg');
    const r = cli(['--tokens', '32', '--json', '--plot', plot]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ model: dir, sink_mode: 'softmax1', tokens: 32, eps: 0.3 });
    expect(s.layers).toHaveLength(2);
    expect(Object.keys(s.layers[0].heads[0]).sort()).toEqual(['first', 'first4', 'head', 'implicit_sink']);
    expect(typeof s.sink_metric.first).toBe('number');
    expect(typeof s.sink_metric.implicit_sink).toBe('number');
    expect(typeof s.backend).toBe('string');
    expect(fs.readFileSync(plot, 'utf8').startsWith('<svg')).toBe(true);
    expect(fs.readdirSync(path.dirname(plot))).toEqual(['att.svg']);
  });

  it('prints a table per layer, saying which queries the means cover', () => {
    const r = cli(['--tokens', '20']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/queries at positions 4\.\.19/);
    expect(r.stdout).toMatch(/layer 1 /);
    expect(r.stdout).toMatch(/implicit sink/);
    expect(r.stdout).toMatch(/Sink\^0\.3/);
  });

  it('bad --tokens exits 2 with one line', () => {
    const r = cli(['--tokens', '3']);
    expect(r.status).toBe(2);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('sinklm'))).toEqual([expect.stringMatching(/--tokens/)]);
  });
});
