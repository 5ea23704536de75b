import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { SINK_MODES, type SinkMode } from '../core/config.js';
import { loadModel } from '../model/checkpoint.js';
import { DenseCache } from '../infer/cache/dense.js';
import { initParams } from '../model/params.js';
import { hostStepOf } from '../model/hoststep.js';
import { attentionWeights, NEG_INF } from '../model/ops.js';
import { maxAbsDiff, testBackend, tinyConfig, tinyModel } from './helpers.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

beforeAll(async () => {
  await testBackend();
});

function fullLogits(model: ReturnType<typeof tinyModel>, ids: number[]): Float32Array {
  return tf.tidy(() => model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'))).dataSync() as Float32Array;
}

describe('parity with independent references (test/fixtures, made by HF transformers / a direct formula)', () => {
  for (const mode of SINK_MODES) {
    it(`${mode}: per-token NLL within 1e-4 of the reference`, () => {
      const dir = path.join(FIXTURES, mode);
      const expected = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { tokens: number[]; nll: number[]; logits_first: number[][] };
      const model = loadModel(dir);
      expect(model.config.sink_mode).toBe(mode);
      const ids = expected.tokens;
      const nll = tf.tidy(() => {
        const logits = model.forward(tf.tensor2d(ids, [1, ids.length], 'int32'));
        return model.tokenNll(tf.slice(logits, [0, 0], [ids.length - 1, -1]), tf.tensor1d(ids.slice(1), 'int32'));
      });
      expect(maxAbsDiff(nll.dataSync(), expected.nll)).toBeLessThan(1e-4);
      const first = tf.tidy(() => tf.slice(model.forward(tf.tensor2d(ids, [1, ids.length], 'int32')), [0, 0], [1, -1])).dataSync();
      expect(maxAbsDiff(first, expected.logits_first[0]!)).toBeLessThan(1e-4);
      nll.dispose();
      model.dispose();
    });
  }
});

describe('incremental step over an external cache equals the full forward', () => {
  const splits: Record<string, number[]> = { 'one at a time': Array(12).fill(1), chunks: [5, 3, 4], 'one chunk': [12] };
  for (const mode of SINK_MODES) {
    for (const [label, split] of Object.entries(splits)) {
      it(`${mode}, ${label}: logits within 1e-5`, () => {
        const model = tinyModel({ sink_mode: mode as SinkMode, sink_token_id: mode === 'token' ? 3 : null });
        const ids = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 32];
        const full = fullLogits(model, ids);
        const cache = new DenseCache();
        const parts: Float32Array[] = [];
        let at = 0;
        for (const n of split) {
          const logits = model.step(ids.slice(at, at + n), cache);
          parts.push(logits.dataSync() as Float32Array);
          logits.dispose();
          at += n;
        }
        const inc = Float32Array.from(parts.flatMap((p) => Array.from(p)));
        expect(maxAbsDiff(inc, full)).toBeLessThan(1e-5);
        cache.dispose();
        model.dispose();
      });
    }
  }
});

describe('forwardLast: the next-token logits of a full forward', () => {
  for (const mode of SINK_MODES) {
    it(`${mode}: equals forward's last row of each sequence to 1e-5, [B, V]`, () => {
      const model = tinyModel({ sink_mode: mode as SinkMode, sink_token_id: mode === 'token' ? 3 : null });
      const ids = [[3, 14, 15, 9, 26, 5, 35], [3, 8, 9, 7, 9, 32, 2]];
      const T = ids[0]!.length;
      const V = model.config.vocab_size;
      const input = tf.tensor2d(ids, [2, T], 'int32');
      const all = model.forward(input);
      const last = model.forwardLast(input);
      expect(last.shape).toEqual([2, V]);
      const a = all.dataSync();
      const l = last.dataSync();
      for (let b = 0; b < 2; b++) expect(maxAbsDiff(l.subarray(b * V, (b + 1) * V), a.subarray((b * T + T - 1) * V, (b * T + T) * V))).toBeLessThan(1e-5);
      // One token: its only row.
      const one = tf.tensor2d([[5]], [1, 1], 'int32');
      const [f1, l1] = [model.forward(one), model.forwardLast(one)];
      expect(maxAbsDiff(l1.dataSync(), f1.dataSync())).toBeLessThan(1e-6);
      tf.dispose([input, all, last, one, f1, l1]);
      model.dispose();
    });
  }
});

describe('gradients: autodiff agrees with finite differences', () => {
  for (const mode of SINK_MODES) {
    it(`${mode}`, () => {
      const model = tinyModel({ sink_mode: mode as SinkMode, sink_token_id: mode === 'token' ? 3 : null, hidden_size: 8, intermediate_size: 16, vocab_size: 20 }, 3);
      const ids = [3, 4, 11, 7, 2, 9, 13, 5];
      const input = tf.tensor2d(ids.slice(0, -1), [1, ids.length - 1], 'int32');
      const targets = tf.tensor1d(ids.slice(1), 'int32');
      const mask = tf.ones([ids.length - 1]) as tf.Tensor1D;
      const lossOf = () => model.loss(model.forward(input), targets, mask);
      const { grads } = tf.variableGrads(lossOf);
      const names = [
        'gpt_neox.embed_in.weight',
        'gpt_neox.layers.0.attention.query_key_value.weight',
        'gpt_neox.layers.1.attention.dense.weight',
        'gpt_neox.layers.0.input_layernorm.weight',
        'gpt_neox.layers.1.mlp.dense_h_to_4h.bias',
        'embed_out.weight',
        ...(mode === 'logit' ? ['gpt_neox.layers.0.attention.sinks', 'gpt_neox.layers.1.attention.sinks'] : []),
      ];
      const eps = 1e-2;
      let checked = 0;
      for (const name of names) {
        const v = model.params.get(name)!;
        const g = grads[v.name]!.dataSync();
        const base = v.dataSync().slice();
        // The coordinates with the largest gradients: float32 differences resolve them well.
        const order = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!)).slice(0, 3);
        for (const i of order) {
          const at = (delta: number) => {
            const w = base.slice();
            w[i]! += delta;
            v.assign(tf.tensor(w, v.shape));
            return tf.tidy(() => lossOf().dataSync()[0]!);
          };
          const fd = (at(eps) - at(-eps)) / (2 * eps);
          v.assign(tf.tensor(base, v.shape));
          expect(Math.abs(fd - g[i]!)).toBeLessThan(2e-3 + 2e-2 * Math.abs(g[i]!));
          checked++;
        }
      }
      expect(checked).toBeGreaterThan(10);
      tf.dispose([input, targets, mask, ...Object.values(grads)]);
      model.dispose();
    });
  }
});

describe('initialisation is Pythia\'s (gpt-neox small_init + wang_init)', () => {
  const std = (a: Float32Array) => Math.sqrt(a.reduce((s, x) => s + x * x, 0) / a.length);
  it('matrices have std sqrt(2/(5d)), the residual-writing projections 2/(L sqrt(d)); norms 1, biases 0', () => {
    const c = { ...tinyConfig({ hidden_size: 64, num_hidden_layers: 3, num_attention_heads: 4, intermediate_size: 256, vocab_size: 300 }), sink_mode: 'logit' as const };
    const w = initParams(c, 3);
    const small = Math.sqrt(2 / (5 * 64));
    const wang = 2 / (3 * Math.sqrt(64));
    for (const name of ['gpt_neox.embed_in.weight', 'embed_out.weight', 'gpt_neox.layers.1.attention.query_key_value.weight', 'gpt_neox.layers.2.mlp.dense_h_to_4h.weight']) {
      expect(Math.abs(std(w.get(name)!.data) / small - 1), name).toBeLessThan(0.03);
    }
    for (const name of ['gpt_neox.layers.0.attention.dense.weight', 'gpt_neox.layers.2.mlp.dense_4h_to_h.weight']) {
      expect(Math.abs(std(w.get(name)!.data) / wang - 1), name).toBeLessThan(0.03);
    }
    expect([...w.get('gpt_neox.layers.0.input_layernorm.weight')!.data].every((x) => x === 1)).toBe(true);
    expect([...w.get('gpt_neox.layers.0.attention.dense.bias')!.data].every((x) => x === 0)).toBe(true);
    expect([...w.get('gpt_neox.layers.0.attention.sinks')!.data].every((x) => x === 0)).toBe(true);
    const hf = initParams(c, 3, 'hf');
    expect(Math.abs(std(hf.get('gpt_neox.layers.0.attention.dense.weight')!.data) / c.initializer_range - 1)).toBeLessThan(0.03);
  });
});

describe('sink modes at large magnitude (scores and sink logits near +-80)', () => {
  /** The attention weights of one row in float64: exp(s_i) / (exp(b) + sum_j exp(s_j)), b = -inf for plain softmax. */
  function reference(row: number[], b: number): number[] {
    const m = Math.max(b, ...row);
    const e = row.map((s) => Math.exp(s - m));
    const denom = Math.exp(b - m) + e.reduce((a, v) => a + v, 0);
    return e.map((v) => v / denom);
  }

  it('attentionWeights is finite and equals the float64 formula in every mode', () => {
    const rows = [
      [80, 79.5, -80, 3, NEG_INF],
      [-80, -79, -80.5, -78, NEG_INF],
      [0, 80, 80, -80, 79.9],
      [NEG_INF, NEG_INF, -80, NEG_INF, NEG_INF],
      // past float32's exp range (88.7): only a max-subtracted softmax survives these
      [100, 99, -100, 95, NEG_INF],
      [-100, -95, NEG_INF, -99, -100],
    ];
    const sinks = [80, -80, 85, 0, 100, 95];
    for (const mode of SINK_MODES) {
      const got = tf.tidy(() => {
        const s = tf.tensor2d(rows.flat(), [rows.length, 5]);
        return attentionWeights(s, mode, tf.tensor2d(sinks, [rows.length, 1])).arraySync() as number[][];
      });
      rows.forEach((row, r) => {
        const b = mode === 'softmax1' ? 0 : mode === 'logit' ? sinks[r]! : -Infinity;
        const want = reference(row, b);
        got[r]!.forEach((w, j) => {
          expect(Number.isFinite(w), `${mode} row ${r}`).toBe(true);
          expect(Math.abs(w - want[j]!), `${mode} row ${r} col ${j}`).toBeLessThan(1e-6);
        });
      });
    }
  });

  for (const mode of ['softmax1', 'logit', 'none'] as const) {
    it(`${mode}: a model with scores and sink logits near +-80 streams finite logits, host step == full forward`, async () => {
      const model = tinyModel({ sink_mode: mode, num_attention_heads: 4, hidden_size: 32, intermediate_size: 48 });
      // Scale the query/key rows up (x36 on the scores: tens) and set sink logits to +-80.
      const c = model.config;
      const hd = c.hidden_size / c.num_attention_heads;
      const w = await model.weights();
      for (let l = 0; l < c.num_hidden_layers; l++) {
        const p = `gpt_neox.layers.${l}.attention`;
        const qkv = w.get(`${p}.query_key_value.weight`)!;
        for (let row = 0; row < 3 * c.hidden_size; row++) {
          if (row % (3 * hd) < 2 * hd) for (let j = 0; j < c.hidden_size; j++) qkv.data[row * c.hidden_size + j]! *= 6;
        }
        if (mode === 'logit') w.get(`${p}.sinks`)!.data.set([80, -80, 79, -79]);
      }
      model.assign(w);
      const ids = Array.from({ length: 24 }, (_, i) => (i * 17 + 3) % 50);
      const full = fullLogits(model, ids);
      expect(full.every(Number.isFinite)).toBe(true);
      const host = hostStepOf(model);
      const cache = new DenseCache({ heads: c.num_attention_heads, headDim: hd });
      ids.forEach((id, t) => {
        const got = host.step([id], cache);
        const want = full.subarray(t * c.vocab_size, (t + 1) * c.vocab_size);
        expect(got.every(Number.isFinite)).toBe(true);
        expect(maxAbsDiff(got, want) / Math.max(1, ...Array.from(want, Math.abs))).toBeLessThan(1e-4);
      });
      cache.dispose();
      model.dispose();
    });
  }
});
