import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { UserError } from '../core/errors.js';
import { checkCache, makePolicy, makeSinkBatch, parseCache, type PolicyName } from '../infer/policy.js';
import type { GPTNeoX } from '../model/neox.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SINK_MODES } from '../core/config.js';
import { hostMemory } from '../model/hostmem.js';
import { loadModel } from '../model/checkpoint.js';
import { nllOf, NllScorer } from '../infer/stream.js';
import { textStream, type LoadedCheckpoint } from '../infer/text.js';
import { eachDecodePath, maxAbsDiff, numTensors, testBackend, tinyModel } from './helpers.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');

beforeAll(async () => {
  await testBackend();
});

const stream = Array.from({ length: 40 }, (_, i) => (i * 7 + 3) % 50);

function run(model: GPTNeoX, policy: PolicyName, cache: string, tokens = stream): Float32Array[] {
  const p = makePolicy(model, policy, parseCache(cache));
  // The path under test really runs (recompute always uses full forwards on the backend).
  if (policy !== 'recompute' && process.env.SINKLM_DECODE) expect(p.decode).toBe(process.env.SINKLM_DECODE);
  const out = tokens.map((t) => {
    const l = p.feed(t);
    const d = l.dataSync() as Float32Array;
    l.dispose();
    return d;
  });
  p.dispose();
  return out;
}

function lastLogits(model: GPTNeoX, ids: number[]): Float32Array {
  return tf.tidy(() => tf.slice(model.forward(tf.tensor2d(ids, [1, ids.length], 'int32')), [ids.length - 1, 0], [1, -1])).dataSync() as Float32Array;
}

eachDecodePath((decode) => describe('cache policies', () => {
  for (const mode of ['none', 'softmax1', 'logit'] as const) {
    it(`${mode}: sinks with S+W >= stream length equals dense to 1e-5`, () => {
      const model = tinyModel({ sink_mode: mode });
      const dense = run(model, 'dense', '0+1');
      const sinks = run(model, 'sinks', '4+40');
      for (let t = 0; t < stream.length; t++) expect(maxAbsDiff(sinks[t]!, dense[t]!)).toBeLessThan(1e-5);
      model.dispose();
    });
  }

  it('window equals sinks with S=0', () => {
    const model = tinyModel();
    const a = run(model, 'window', '0+8');
    const b = run(model, 'sinks', '0+8');
    for (let t = 0; t < stream.length; t++) expect(maxAbsDiff(a[t]!, b[t]!)).toBeLessThan(1e-6);
    model.dispose();
  });

  it('sinks S+W after eviction equals a fresh forward over [first S] + [last W] with positions 0..S+W-1 (one layer)', () => {
    // The contract's cache rule: keys re-rotated at their cache positions. With one layer a
    // cached key/value depends on its token alone, so the equality is exact; deeper caches
    // legitimately remember context that a fresh forward no longer sees.
    const model = tinyModel({ sink_mode: 'logit', num_hidden_layers: 1 });
    const S = 2;
    const W = 6;
    const got = run(model, 'sinks', `${S}+${W}`);
    for (const t of [8, 9, 15, 27, 39]) {
      const ids = [...stream.slice(0, S), ...stream.slice(t - W + 1, t + 1)];
      expect(maxAbsDiff(got[t]!, lastLogits(model, ids))).toBeLessThan(1e-5);
    }
    model.dispose();
  });

  it('several caches of one capacity stepped as a batch equal each run alone', () => {
    const model = tinyModel({ sink_mode: 'softmax1' });
    const caches = ['0+8', '1+7', '2+6', '4+4'];
    const batch = makeSinkBatch(model, caches.map((c) => parseCache(c)));
    const alone = caches.map((c) => run(model, 'sinks', c));
    for (let t = 0; t < stream.length; t++) {
      const l = batch.feed(stream[t]!);
      const all = l.dataSync() as Float32Array;
      l.dispose();
      const V = all.length / caches.length;
      caches.forEach((_, b) => expect(maxAbsDiff(all.subarray(b * V, (b + 1) * V), alone[b]![t]!)).toBeLessThan(1e-5));
    }
    batch.dispose();
    model.dispose();
  });

  it('recompute at step t equals a full forward over the last W tokens', () => {
    const model = tinyModel();
    const W = 7;
    const got = run(model, 'recompute', `0+${W}`);
    for (const t of [3, 6, 7, 20, 39]) {
      const ids = stream.slice(Math.max(0, t - W + 1), t + 1);
      expect(maxAbsDiff(got[t]!, lastLogits(model, ids))).toBeLessThan(1e-5);
    }
    model.dispose();
  });

  it('tensor count and host memory are flat across a long stream (sinks), and return to baseline', async () => {
    const tensorsBefore = numTensors();
    const hostBefore = hostMemory().used;
    const model = tinyModel({ num_hidden_layers: 1 });
    const p = makePolicy(model, 'sinks', parseCache('4+28'));
    // One layer keeps the steps fast on every backend; the cache is the same per layer.
    const steps = decode === 'host' ? 10_000 : 3_000;
    const counts: number[] = [];
    const host: number[] = [];
    for (let t = 0; t < steps; t++) {
      const l = p.feed((t * 13) % 50);
      l.dataSync();
      l.dispose();
      if (t === 100 || t === steps - 1) {
        counts.push(numTensors());
        host.push(hostMemory().used);
      }
      // Yield now and then: a worker busy for minutes misses vitest's RPC deadline.
      if (t % 500 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(counts[1]).toBe(counts[0]);
    expect(host[1]).toBe(host[0]);
    // The tensor step keeps its cache in tensors, the host step in host memory: each path
    // holds something while streaming, and nothing once disposed.
    if (decode === 'tensor') expect(counts[0]).toBeGreaterThan(tensorsBefore + model.params.size);
    else expect(host[0]).toBeGreaterThan(hostBefore);
    p.dispose();
    model.dispose();
    expect(numTensors()).toBe(tensorsBefore);
    expect(hostMemory().used).toBe(hostBefore);
  });
}));

describe('independent streaming fixture (make_fixtures.py stream_reference: float64, multi-layer, eviction past max_position_embeddings)', () => {
  eachDecodePath(() => {
    for (const mode of SINK_MODES) {
      it(`${mode}: per-token NLL of every cache within 1e-4`, () => {
        const dir = path.join(FIXTURES, mode);
        const ref = JSON.parse(fs.readFileSync(path.join(dir, 'expected_stream.json'), 'utf8')) as { tokens: number[]; caches: Record<string, number[]> };
        const model = loadModel(dir);
        expect(ref.tokens.length).toBeGreaterThan(model.config.max_position_embeddings);
        for (const [cache, expected] of Object.entries(ref.caches)) {
          const logits = run(model, 'sinks', cache, ref.tokens);
          const got = ref.tokens.slice(1).map((next, i) => nllOf(logits[i]!, next));
          expect(maxAbsDiff(got, expected), cache).toBeLessThan(1e-4);
        }
        model.dispose();
      });
    }
  });
});

describe('cache strings and sizes', () => {
  it('parses S+W and W', () => {
    expect(parseCache('4+1020')).toMatchObject({ sinks: 4, window: 1020, label: '4+1020' });
    expect(parseCache('256')).toMatchObject({ sinks: 0, window: 256 });
  });
  for (const bad of ['', 'x', '4+', '+4', '1+2+3', '-1+4', '0+0']) {
    it(`rejects "${bad}" as bad input`, () => {
      expect(() => parseCache(bad)).toThrow(UserError);
    });
  }
  it('rejects S+W beyond the model positions and W = 0', () => {
    expect(() => checkCache(parseCache('4+100'), 'sinks', 64)).toThrow(/max_position_embeddings/);
    expect(() => checkCache(parseCache('4+0'), 'sinks', 64)).toThrow(UserError);
  });
});

describe('textStream', () => {
  it('encodes a text once per tokenizer (later calls reuse the ids), again for a new text, and each stream is its own array', () => {
    let calls = 0;
    const tokenizer = {
      encode: (t: string) => (calls++, Array.from(t, (ch) => ch.charCodeAt(0) % 50)),
      decode: () => '',
      vocabSize: 50,
      sinkTokenId: 50,
      eosTokenId: null,
      path: '',
    };
    const model = tinyModel({ sink_mode: 'token', vocab_size: 51, sink_token_id: 50 });
    const ck = { dir: '', model, tokenizer } as unknown as LoadedCheckpoint;
    const text = 'the state of the union';
    const a = textStream(ck, text);
    const b = textStream(ck, text, 5);
    expect(calls).toBe(1);
    expect(a.tokens).toEqual([50, ...Array.from(text, (ch) => ch.charCodeAt(0) % 50)]);
    expect(b.tokens).toEqual(a.tokens.slice(0, 6));
    a.tokens[1] = 0; // a caller's stream is its own: the next one is unchanged
    expect(textStream(ck, text).tokens[1]).toBe(text.charCodeAt(0) % 50);
    expect(calls).toBe(1);
    textStream(ck, text + '.');
    expect(calls).toBe(2);
    // Another tokenizer (another checkpoint) encodes for itself.
    textStream({ ...ck, tokenizer: { ...tokenizer } } as LoadedCheckpoint, text + '.');
    expect(calls).toBe(3);
    model.dispose();
  });
});

describe('NllScorer', () => {
  it('equals nllOf (float64) to 1e-6 relative row by row, any V, large logits; gives its host memory back', () => {
    const mem = hostMemory();
    const before = mem.used;
    let seed = 5;
    const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
    const scorer = new NllScorer();
    for (const [rows, V, scale] of [[1, 1, 1], [1, 7, 3], [4, 4096, 8], [3, 50277, 30], [2, 13, 80]] as const) {
      const logits = Float32Array.from({ length: rows * V }, () => rnd() * scale);
      const targets = Array.from({ length: rows }, (_, r) => (r * 7919) % V);
      const out = new Float64Array(rows);
      scorer.rows(logits, targets, out);
      for (let r = 0; r < rows; r++) {
        const ref = nllOf(logits.subarray(r * V, (r + 1) * V), targets[r]!);
        expect(Math.abs(out[r]! - ref), `rows ${rows} V ${V} row ${r}`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(ref)));
      }
    }
    scorer.dispose();
    expect(mem.used).toBe(before);
  });
});
