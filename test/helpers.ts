/** Test helpers: a backend for the test file, tiny models, tensor-count checks. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe } from 'vitest';
import { initBackend, type BackendInfo } from '../core/backend.js';
import { trainTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import type { NeoXConfig } from '../model/config.js';
import { GPTNeoX } from '../model/neox.js';
import { initParams } from '../model/params.js';
import { DECODE_PATHS, type DecodePath } from '../infer/policy.js';

/** Native when it is there (the tests' numbers then match what users run), else the fallback. */
export async function testBackend(): Promise<BackendInfo> {
  return initBackend({ quiet: true });
}

export function tinyConfig(over: Partial<NeoXConfig> = {}): NeoXConfig {
  return {
    vocab_size: 50,
    hidden_size: 16,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    intermediate_size: 32,
    rotary_pct: 0.5,
    rotary_emb_base: 10000,
    max_position_embeddings: 64,
    layer_norm_eps: 1e-5,
    use_parallel_residual: true,
    hidden_act: 'gelu',
    initializer_range: 0.3,
    sink_mode: 'none',
    sink_token_id: null,
    ...over,
  };
}

/** A tiny model whose every parameter (norms, biases, sink logits too) is random. */
export function tinyModel(over: Partial<NeoXConfig> = {}, seed = 7): GPTNeoX {
  const c = tinyConfig(over);
  const w = initParams(c, seed);
  let s = seed;
  for (const t of w.values()) for (let i = 0; i < t.data.length; i++) t.data[i]! += 0.2 * Math.sin(++s * 12.9898);
  return new GPTNeoX(c, w);
}

/** max |a - b| over max |b|: the relative error of a whole tensor. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / Math.max(m, 1e-30);
}

/**
 * The webgpu backend for a test file, or why not: without an adapter the file's suite is
 * skipped with a message on stderr, except under CI, where that is a failure.
 */
export async function webgpuBackend(file: string): Promise<BackendInfo | undefined> {
  try {
    return await initBackend({ prefer: 'webgpu', quiet: true });
  } catch (e) {
    const why = String((e as Error)?.message ?? e);
    if (process.env.CI) throw new Error(`${file}: WebGPU is required under CI: ${why}`);
    process.stderr.write(`${file} skipped: ${why}\n`);
    return undefined;
  }
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function numTensors(): number {
  return tf.memory().numTensors;
}

/** A short English text (written to dir/text.txt) and a 300-token BPE trained on it (dir/tokenizer.json): enough for a CLI checkpoint. */
export async function textAndTokenizer(dir: string): Promise<{ textFile: string; tok: TextTokenizer }> {
  const textFile = path.join(dir, 'text.txt');
  const corpus = 'The state of the Union is strong. We the people, in order to form a more perfect union. '.repeat(20);
  fs.writeFileSync(textFile, corpus);
  return { textFile, tok: await trainTokenizer([corpus], 300, path.join(dir, 'tokenizer.json')) };
}

/**
 * Declares `body` once per decode path, with SINKLM_DECODE set to it while those tests run:
 * every streaming claim is checked on the host step and on the tensor step alike.
 */
export function eachDecodePath(body: (path: DecodePath) => void): void {
  for (const p of DECODE_PATHS) {
    describe(`decode path ${p}`, () => {
      let saved: string | undefined;
      beforeAll(() => {
        saved = process.env.SINKLM_DECODE;
        process.env.SINKLM_DECODE = p;
      });
      afterAll(() => {
        if (saved === undefined) delete process.env.SINKLM_DECODE;
        else process.env.SINKLM_DECODE = saved;
      });
      body(p);
    });
  }
}
