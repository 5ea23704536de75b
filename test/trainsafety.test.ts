/**
 * The training run's guarantees beyond its losses: folders appear whole or not at all,
 * gradients of split batches are the batch's, the host streaming step follows the weights
 * the optimizer writes, old run folders resume, and Ctrl-C is told apart from a finish.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recoverDir, writeDirAtomic } from '../core/atomicdir.js';
import { parseRunConfig } from '../core/config.js';
import { runWeights } from '../experiments/emergence.js';
import { SinkCache } from '../infer/cache/sinks.js';
import { headDim } from '../model/config.js';
import { hostStepOf } from '../model/hoststep.js';
import type { GPTNeoX } from '../model/neox.js';
import { TokenWeightedSum, type Part } from '../train/accumulate.js';
import { AdamW } from '../train/optimizer.js';
import { shareGradients } from '../train/replicas.js';
import { listCheckpoints, readMetrics } from '../train/rundir.js';
import { train } from '../train/trainer.js';
import { maxAbsDiff, testBackend, tinyModel } from './helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-safety-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
beforeAll(async () => {
  await testBackend();
});

describe('atomic folders', () => {
  it('replace a folder whole, and a failed write leaves the old one and no temporary', async () => {
    const dir = path.join(tmp, 'atomic', 'out');
    await writeDirAtomic(dir, (t) => fs.writeFileSync(path.join(t, 'a'), 'old'));
    await writeDirAtomic(dir, (t) => fs.writeFileSync(path.join(t, 'b'), 'new'));
    expect(fs.readdirSync(dir)).toEqual(['b']);
    await expect(
      writeDirAtomic(dir, (t) => {
        fs.writeFileSync(path.join(t, 'c'), 'half');
        throw new Error('disk full');
      }),
    ).rejects.toThrow('disk full');
    expect(fs.readdirSync(dir)).toEqual(['b']);
    expect(fs.readdirSync(path.dirname(dir))).toEqual(['out']);
  });

  it('puts back a folder whose replacement died between its two renames', () => {
    const parent = path.join(tmp, 'atomic2');
    fs.mkdirSync(path.join(parent, '.out.old-999999999-abcdef'), { recursive: true });
    fs.writeFileSync(path.join(parent, '.out.old-999999999-abcdef', 'a'), 'kept');
    fs.mkdirSync(path.join(parent, '.out.tmp-999999999-ghijkl'));
    recoverDir(path.join(parent, 'out'));
    expect(fs.readdirSync(parent)).toEqual(['out']);
    expect(fs.readFileSync(path.join(parent, 'out', 'a'), 'utf8')).toBe('kept');
  });
});

describe('a training run folder', () => {
  const cfgFile = path.join(tmp, 'cfg.json');
  const raw = (train: Record<string, unknown> = {}) => ({
    name: 'tiny',
    model: { hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, rotary_pct: 0.5 },
    data: { corpus: 'sotu', max_documents: 12, tokenizer: { vocab_size: 300 }, validation_frac: 0.15, test_frac: 0.15, dir: path.join(tmp, 'data') },
    train: { seq_len: 32, batch_size: 4, max_steps: 20, lr: 3e-3, log_every: 1, eval_every: 10, eval_batches: 1, ckpt_every: 10, snapshot_every: 5, ...train },
  });
  const quiet = { progress: false, log: () => {}, handleSignals: false };
  const trainLosses = (out: string) => readMetrics<{ step: number; loss?: number }>(out).filter((m) => m.loss !== undefined);

  it('lists no partial checkpoint or snapshot, and an old-layout run (copies at the top) resumes', async () => {
    const cfg = parseRunConfig(raw(), cfgFile);
    const straight = path.join(tmp, 'straight');
    const old = path.join(tmp, 'old');
    await train(cfg, { ...quiet, out: straight });
    await train(cfg, { ...quiet, out: old, stopAt: 10 });
    // What a kill mid-save leaves: a temporary folder with every file in it.
    const ck = path.join(old, 'checkpoints');
    fs.cpSync(path.join(ck, 'step-000010'), path.join(ck, '.step-000015.tmp-999999999-abcdef'), { recursive: true });
    fs.cpSync(path.join(old, 'snapshots', 'step-000010'), path.join(old, 'snapshots', '.step-000015.tmp-999999999-abcdef'), { recursive: true });
    expect(listCheckpoints(old).map((c) => c.step)).toEqual([10]);
    expect(runWeights(old).map((w) => w.step)).toEqual([5, 10]);
    // Older sinklm copied the newest checkpoint's files to the top and had no `latest`.
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'trainer_state.json']) {
      const p = path.join(old, f);
      const bytes = fs.readFileSync(p);
      fs.rmSync(p);
      fs.writeFileSync(p, bytes);
    }
    fs.rmSync(path.join(old, 'latest'));
    const r = await train(cfg, { ...quiet, out: old, resume: true });
    expect(r.step).toBe(20);
    expect(trainLosses(old)).toEqual(trainLosses(straight).map((m) => ({ ...m, time: expect.any(String), tokens_per_s: expect.any(Number) })));
    expect(fs.lstatSync(path.join(old, 'model.safetensors')).isSymbolicLink()).toBe(true);
    expect(fs.readdirSync(ck)).toEqual(['step-000010', 'step-000020']);
  });

  it('Ctrl-C saves, prints the loss of the step it stopped at and exits 130', async () => {
    fs.writeFileSync(cfgFile, JSON.stringify(raw({ max_steps: 100000, log_every: 1000, ckpt_every: 100000, snapshot_every: 0 })));
    const out = path.join(tmp, 'sigint');
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'sinklm'), 'train', '--config', cfgFile, '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let armed = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // Interrupt a little after the data is ready: training is under way by then.
      if (!armed && /reusing/.test(stderr)) {
        armed = true;
        setTimeout(() => child.kill('SIGINT'), 2500);
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(code, stderr).toBe(130);
    const [, step, loss] = /^interrupted: step (\d+), loss ([\d.]+)/.exec(stdout) ?? [];
    expect(step, stdout).toBeDefined();
    const saved = listCheckpoints(out).at(-1)!;
    expect(saved.step).toBe(Number(step));
    const state = JSON.parse(fs.readFileSync(path.join(saved.dir, 'trainer_state.json'), 'utf8'));
    expect(Number(loss)).toBeCloseTo(state.last_loss, 4);
    expect(state.log_interval.at(-1).loss).toBe(state.last_loss);
    expect(stderr).toMatch(new RegExp(`interrupted at step ${step} \\(loss ${loss}\\)`));
  }, 120_000);
});

describe('gradient accumulation', () => {
  it('two micro-batches with different counted tokens give the whole batch gradient', () => {
    const model = tinyModel();
    const T = 8;
    const rows = (n: number, seed: number) => Int32Array.from({ length: n * T }, (_, i) => (i * 7 + seed * 13) % 50);
    const input = rows(4, 1);
    const target = rows(4, 2);
    // Micro-batch 1 counts 16 tokens, micro-batch 2 only 3.
    const mask = Float32Array.from({ length: 4 * T }, (_, i) => (i < 2 * T || (i < 3 * T && i % T < 3) ? 1 : 0));
    const part = (from: number, n: number) =>
      shareGradients(model, { input: input.slice(from * T, (from + n) * T), target: target.slice(from * T, (from + n) * T), mask: mask.slice(from * T, (from + n) * T), B: n, T });
    const whole = part(0, 4);
    const halves: Part[] = [part(0, 2), part(2, 2)];
    expect(halves.map((h) => h.count)).toEqual([16, 3]);
    // The plain average (what a per-micro-batch mean would give) is not the batch's gradient.
    const name = 'embed_out.weight';
    const plain = tf.tidy(() => tf.div(tf.add(halves[0]!.grads.get(name)!, halves[1]!.grads.get(name)!), 2).dataSync() as Float32Array);
    const sum = new TokenWeightedSum();
    for (const h of halves) sum.add(h);
    const acc = sum.result();
    expect(acc.loss.dataSync()[0]).toBeCloseTo(whole.loss.dataSync()[0]!, 5);
    for (const [n, g] of whole.grads) expect(maxAbsDiff(acc.grads.get(n)!.dataSync(), g.dataSync()), n).toBeLessThan(1e-6);
    expect(maxAbsDiff(plain, whole.grads.get(name)!.dataSync())).toBeGreaterThan(1e-4);
    tf.dispose([whole.loss, ...whole.grads.values(), acc.loss, ...acc.grads.values()]);
    model.dispose();
  });
});

describe('the host streaming step after training', () => {
  const shape = (m: GPTNeoX) => ({ layers: m.config.num_hidden_layers, heads: m.config.num_attention_heads, headDim: headDim(m.config) });

  it('runs on the weights of the last optimizer step, not a copy from before it', () => {
    const model = tinyModel();
    const before = hostStepOf(model);
    const opt = new AdamW(model, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1 });
    const T = 8;
    const ids = Int32Array.from({ length: 2 * T }, (_, i) => (i * 5 + 3) % 50);
    const { loss, grads } = shareGradients(model, { input: ids, target: ids.map((t) => (t + 1) % 50), mask: new Float32Array(2 * T).fill(1), B: 2, T });
    tf.dispose([opt.apply(grads, 0.05), loss, ...grads.values()]);
    const host = hostStepOf(model);
    expect(host).not.toBe(before);
    const tensorCache = new SinkCache(2, 6, shape(model));
    const hostCache = new SinkCache(2, 6, shape(model));
    for (const t of [1, 7, 19, 33, 4, 40, 2, 11]) {
      const l = model.step([t], tensorCache);
      expect(maxAbsDiff(l.dataSync(), host.step([t], hostCache))).toBeLessThan(1e-5);
      l.dispose();
    }
    tensorCache.dispose();
    hostCache.dispose();
    opt.dispose();
    model.dispose();
  });
});
