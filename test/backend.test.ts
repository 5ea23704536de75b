/**
 * Backends: native TensorFlow (built by scripts/setup-native.mjs) must compute what the pure-JS
 * cpu backend computes, and SINKLM_NO_NATIVE must hide it from the CLI.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { siftStartupLog } from '../core/backend.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

await import('@tensorflow/tfjs-backend-cpu');

/**
 * tfjs-core's Node bundle registers no gradient functions; the @tensorflow/tfjs union package
 * does (into the global registry tfjs-core reads). tfjs-node loads it, so without native the
 * test loads it itself when present. Non-literal specifier: tsc must not need its types.
 */
async function registerGradients(): Promise<string | undefined> {
  try {
    const union = '@tensorflow/tfjs';
    await import(union);
    return undefined;
  } catch (e) {
    return String((e as Error)?.message ?? e).split('\n')[0];
  }
}

/** Loads tfjs-node, which registers the 'tensorflow' backend; says why when it cannot. */
async function loadNative(): Promise<{ ok: boolean; reason: string }> {
  if (process.env.SINKLM_NO_NATIVE && process.env.SINKLM_NO_NATIVE !== '0') {
    return { ok: false, reason: 'hidden by SINKLM_NO_NATIVE' };
  }
  try {
    // A non-literal specifier: tsc must not need the optional package's types (npm 10 drops it).
    const pkg = '@tensorflow/tfjs-node';
    await import(pkg);
    return { ok: tf.findBackend('tensorflow') != null, reason: 'tensorflow backend not registered' };
  } catch (e) {
    const msg = String((e as Error)?.message ?? e).split('\n')[0]!;
    return { ok: false, reason: /native addon module/.test(msg) ? 'addon not built; run npm run setup-native' : msg };
  }
}
const native = await loadNative();
const gradientsMissing = native.ok ? undefined : await registerGradients();
if (!native.ok) console.warn(`backend.test: native TensorFlow unavailable (${native.reason}); its comparison is skipped`);

/** Deterministic standard normals (mulberry32 + Box-Muller). */
function normals(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(uniform(), 1e-12);
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform());
  }
  return out;
}

const B = 8;
const D = 16;
const H = 32;
const C = 10;
const data = {
  x: normals(B * D, 1),
  w1: normals(D * H, 2, 1 / Math.sqrt(D)),
  b1: normals(H, 3, 0.1),
  w2: normals(H * C, 4, 1 / Math.sqrt(H)),
  b2: normals(C, 5, 0.1),
  labels: Int32Array.from({ length: B }, (_, i) => (i * 7 + 3) % C),
};

interface PassResult {
  logits: Float32Array;
  loss: number;
  grads: Record<string, Float32Array>;
}

/** A 2-layer MLP (exact gelu via erf), softmax cross-entropy, and its gradients. */
async function forwardBackward(backend: string): Promise<PassResult> {
  expect(await tf.setBackend(backend)).toBe(true);
  await tf.ready();
  expect(tf.getBackend()).toBe(backend);
  const gelu = (z: tf.Tensor) => tf.mul(tf.mul(z, 0.5), tf.add(1, tf.erf(tf.div(z, Math.SQRT2))));
  const x = tf.tensor2d(data.x, [B, D]);
  const y = tf.oneHot(tf.tensor1d(data.labels, 'int32'), C);
  const params = {
    w1: tf.tensor2d(data.w1, [D, H]),
    b1: tf.tensor1d(data.b1),
    w2: tf.tensor2d(data.w2, [H, C]),
    b2: tf.tensor1d(data.b2),
  };
  const names = Object.keys(params) as (keyof typeof params)[];
  const logitsOf = (w1: tf.Tensor, b1: tf.Tensor, w2: tf.Tensor, b2: tf.Tensor) =>
    tf.add(tf.matMul(gelu(tf.add(tf.matMul(x, w1 as tf.Tensor2D), b1)) as tf.Tensor2D, w2 as tf.Tensor2D), b2);
  const lossFn = (w1: tf.Tensor, b1: tf.Tensor, w2: tf.Tensor, b2: tf.Tensor) =>
    tf.losses.softmaxCrossEntropy(y, logitsOf(w1, b1, w2, b2)) as tf.Scalar;
  const args = names.map((n) => params[n]);
  const logits = tf.tidy(() => logitsOf(args[0]!, args[1]!, args[2]!, args[3]!));
  const { value, grads } = tf.valueAndGrads((...a: tf.Tensor[]) => lossFn(a[0]!, a[1]!, a[2]!, a[3]!))(args);
  const result: PassResult = {
    logits: (await logits.data()) as Float32Array,
    loss: (await value.data())[0]!,
    grads: Object.fromEntries(await Promise.all(names.map(async (n, i) => [n, (await grads[i]!.data()) as Float32Array]))),
  };
  tf.dispose([x, y, logits, value, ...grads, ...args]);
  return result;
}

/** Largest |a-b| / (1 + |b|): an absolute tolerance near zero, relative for large values. */
function maxError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!)));
  return worst;
}

function withoutBackendOverride(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.SINKLM_BACKEND;
  return env;
}

describe('backends', () => {
  it('cpu backend runs the forward and backward pass', async () => {
    expect(gradientsMissing, 'no gradient functions registered: @tensorflow/tfjs could not be loaded').toBeUndefined();
    const cpu = await forwardBackward('cpu');
    expect(Number.isFinite(cpu.loss)).toBe(true);
    expect(cpu.loss).toBeGreaterThan(0);
    for (const g of Object.values(cpu.grads)) expect(g.some((v) => v !== 0)).toBe(true);
  });

  it.skipIf(!native.ok)(
    `native tensorflow matches cpu to 1e-5 (forward and gradients)${native.ok ? '' : ` [skipped: native unavailable: ${native.reason}]`}`,
    async () => {
      const cpu = await forwardBackward('cpu');
      const tfn = await forwardBackward('tensorflow');
      const tol = 1e-5;
      expect(maxError([tfn.loss], [cpu.loss]), 'loss').toBeLessThan(tol);
      expect(maxError(tfn.logits, cpu.logits), 'logits').toBeLessThan(tol);
      for (const name of Object.keys(cpu.grads)) {
        expect(maxError(tfn.grads[name]!, cpu.grads[name]!), `d loss / d ${name}`).toBeLessThan(tol);
      }
      await tf.setBackend('cpu');
    },
  );

  it('SINKLM_NO_NATIVE=1 makes `sinklm doctor --json` use a non-native backend and say why', () => {
    const main = path.join(ROOT, 'dist', 'cli', 'main.js');
    expect(fs.existsSync(main), `${main} is missing: run npx tsc -p . first`).toBe(true);
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'sinklm'), 'doctor', '--json'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...withoutBackendOverride(), SINKLM_NO_NATIVE: '1' },
    });
    expect(r.status, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as { backend: string; reason: string; native: { available: boolean } };
    expect(info.backend).not.toBe('tensorflow');
    expect(['wasm', 'cpu']).toContain(info.backend);
    expect(info.native.available).toBe(false);
    expect(info.reason).toMatch(/SINKLM_NO_NATIVE/);
  });

  it('--backend cpu runs a command with no tfjs banner on stderr (sinklm says which backend runs itself)', () => {
    const ck = path.join(ROOT, 'checkpoints', 'token');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'sinklm'), 'score', '--backend', 'cpu', '--checkpoint', ck, '--text', path.join(ROOT, 'checkpoints', 'test_stream.txt'), '--json'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 120_000,
      env: withoutBackendOverride(),
    });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).backend).toBe('cpu');
    expect(r.stderr).not.toMatch(/Hi, looks like|====|absl|cpu_feature_guard/);
  });
});

describe("TensorFlow's start-up log (written while its libraries load)", () => {
  const log = [
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1796123767.693372   17531 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.',
    'I0000 00:00:1796123767.951456   17531 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions.',
    'To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.',
    'W1201 14:35:00.000001    4321 env.cc:12] a warning',
    'E1201 14:35:00.000002    4321 loader.cc:99] could not load something',
    'something else the library printed',
    '',
  ].join('\n');

  it('keeps what TF_CPP_MIN_LOG_LEVEL lets through, and everything that is not its log', () => {
    expect(siftStartupLog(log, 2)).toBe(
      'E1201 14:35:00.000002    4321 loader.cc:99] could not load something\nsomething else the library printed\n',
    );
    expect(siftStartupLog(log, 1).split('\n')[0]).toMatch(/^W1201 .*a warning$/);
    const all = siftStartupLog(log, 0).split('\n');
    expect(all).toHaveLength(7); // six lines and the last newline: only absl's banner goes
    expect(all[2]).toMatch(/^To enable/); // a kept message keeps its continuation
    expect(siftStartupLog(log, 3)).toBe('');
    expect(siftStartupLog('plain text, no newline', 2)).toBe('plain text, no newline\n');
  });
});
