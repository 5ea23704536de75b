import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseRunConfig, type RunConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { loadModel } from '../model/checkpoint.js';
import { readSafetensors } from '../model/safetensors.js';
import { listCheckpoints } from '../train/rundir.js';
import { readRecords } from '../train/tensorboard.js';
import { learningRate } from '../train/schedule.js';
import { train } from '../train/trainer.js';
import { numTensors, testBackend } from './helpers.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-train-'));
const dataDir = path.join(tmp, 'data');

function config(over: { train?: Record<string, unknown>; model?: Record<string, unknown> } = {}): RunConfig {
  const file = path.join(tmp, 'cfg.json');
  return parseRunConfig(
    {
      name: 'tiny',
      model: { hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, rotary_pct: 0.5, ...over.model },
      data: { corpus: 'sotu', max_documents: 12, tokenizer: { vocab_size: 300 }, validation_frac: 0.15, test_frac: 0.15, dir: dataDir },
      train: { seq_len: 32, batch_size: 4, max_steps: 20, lr: 3e-3, log_every: 1, eval_every: 10, eval_batches: 1, ckpt_every: 10, ...over.train },
    },
    file,
  );
}

function losses(out: string): Map<number, number> {
  const m = new Map<number, number>();
  for (const l of fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').split('\n')) {
    if (!l) continue;
    const r = JSON.parse(l) as { step: number; loss?: number };
    if (r.loss !== undefined) m.set(r.step, r.loss);
  }
  return m;
}

const quiet = { progress: false, log: () => {}, handleSignals: false };

/** Step folders under OUT/sub, as steps (temporary folders are not steps). */
function stepDirs(out: string, sub: string): number[] {
  const root = path.join(out, sub);
  return (fs.existsSync(root) ? fs.readdirSync(root) : []).filter((n) => /^step-\d+$/.test(n)).map((n) => Number(n.slice(5))).sort((a, b) => a - b);
}

/** Every .safetensors file below dir. */
function safetensorsBelow(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.safetensors')).map((f) => path.join(dir, f));
}

/** Every TensorBoard summary point of a run as `step tag`, sorted (a duplicate shows twice). */
function tbPoints(out: string): string[] {
  const pts: string[] = [];
  for (const f of fs.readdirSync(out).filter((n) => n.startsWith('events.out.tfevents.'))) {
    for (const r of readRecords(path.join(out, f))) for (const tag of r.tags) pts.push(`${String(r.step).padStart(4, '0')} ${tag}`);
  }
  return pts.sort();
}

beforeAll(async () => {
  await testBackend();
});

describe('learning-rate schedule', () => {
  const o = { lr: 1e-3, totalSteps: 1000, warmupFrac: 0.01, minLrRatio: 0.1 };
  it('warms up linearly over 1%, then follows the cosine to 0.1x', () => {
    expect(learningRate(1, o)).toBeCloseTo(1e-4, 12);
    expect(learningRate(10, o)).toBeCloseTo(1e-3, 12);
    for (const s of [10, 200, 505, 800, 1000]) {
      const p = (s - 10) / 990;
      expect(learningRate(s, o)).toBeCloseTo(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + Math.cos(Math.PI * p)), 12);
    }
    expect(learningRate(1000, o)).toBeCloseTo(1e-4, 12);
  });
});

describe('training', () => {
  it('loss falls on the smoke corpus', async () => {
    const out = path.join(tmp, 'falls');
    await train(config({ train: { max_steps: 40, lr: 1e-2 } }), { ...quiet, out });
    const l = losses(out);
    const early = (l.get(1)! + l.get(2)! + l.get(3)!) / 3;
    const late = (l.get(38)! + l.get(39)! + l.get(40)!) / 3;
    expect(late).toBeLessThan(early - 0.5);
  });

  it('resume after 10 of 20 steps gives bit-identical losses for steps 11-20', async () => {
    const a = path.join(tmp, 'straight');
    const b = path.join(tmp, 'split');
    await train(config(), { ...quiet, out: a });
    const first = await train(config(), { ...quiet, out: b, stopAt: 10 });
    expect(first.stopped).toBe('stop-at');
    await train(config(), { ...quiet, out: b, resume: true });
    const la = losses(a);
    const lb = losses(b);
    // Every step is logged (log_every 1): no comparison of two missing values.
    expect([...la.keys()]).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    for (let s = 1; s <= 20; s++) expect(lb.get(s)).toBe(la.get(s));
  });

  it('a run stopped between log lines and resumed logs the same train losses and one TensorBoard point per step', async () => {
    const c = () => config({ train: { log_every: 4, ckpt_every: 5 } });
    const a = path.join(tmp, 'log-straight');
    const b = path.join(tmp, 'log-split');
    await train(c(), { ...quiet, out: a });
    // Stop at 7 (a save between log lines), go on to 13 and lose checkpoint 13 as a kill
    // after step 13's logs would: the resume redoes 11-13, which are already logged.
    await train(c(), { ...quiet, out: b, stopAt: 7 });
    await train(c(), { ...quiet, out: b, stopAt: 13, resume: true });
    fs.rmSync(path.join(b, 'checkpoints', 'step-000013'), { recursive: true });
    expect(listCheckpoints(b).at(-1)!.step).toBe(10);
    await train(c(), { ...quiet, out: b, resume: true });
    expect([...losses(b).entries()]).toEqual([...losses(a).entries()]);
    expect([...losses(a).keys()]).toEqual([4, 8, 12, 16, 20]);
    // The only extra points are the validation the first session ran where it stopped (7).
    expect(tbPoints(b).filter((p) => !p.startsWith('0007 val/'))).toEqual(tbPoints(a));
    expect(new Set(tbPoints(b)).size).toBe(tbPoints(b).length);
    // The top level is the newest checkpoint, through links that one rename switches.
    expect(fs.readlinkSync(path.join(b, 'latest'))).toBe(path.join('checkpoints', 'step-000020'));
    expect(JSON.parse(fs.readFileSync(path.join(b, 'trainer_state.json'), 'utf8')).step).toBe(20);
  });

  it('resuming a finished run says so and changes nothing', async () => {
    const out = path.join(tmp, 'straight');
    const before = fs.readdirSync(out).sort();
    const lines: string[] = [];
    const r = await train(config(), { ...quiet, out, resume: true, log: (l) => lines.push(l) });
    expect(r.stopped).toBe('already-finished');
    expect(r.step).toBe(20);
    expect(lines.filter((l) => !l.startsWith('reusing'))).toEqual([expect.stringMatching(/already at step 20, finished/)]);
    expect(fs.readdirSync(out).sort()).toEqual(before);
  });

  it('two data-parallel replicas give the one-process losses (to float rounding) and resume bit-identically', async () => {
    const one = path.join(tmp, 'replicas-1');
    const two = path.join(tmp, 'replicas-2');
    const split = path.join(tmp, 'replicas-2-split');
    await train(config(), { ...quiet, out: one });
    const r = await train(config({ train: { replicas: 2 } }), { ...quiet, out: two });
    expect(r.step).toBe(20);
    const l1 = losses(one);
    const l2 = losses(two);
    for (let s = 1; s <= 20; s++) expect(Math.abs(l2.get(s)! - l1.get(s)!)).toBeLessThan(1e-4);
    await train(config({ train: { replicas: 2 } }), { ...quiet, out: split, stopAt: 10 });
    await train(config({ train: { replicas: 2 } }), { ...quiet, out: split, resume: true });
    const ls = losses(split);
    expect(ls.size).toBe(20);
    for (let s = 1; s <= 20; s++) expect(ls.get(s)).toBe(l2.get(s));
    // The count may change on resume (cores freed up): same run, float-rounding differences only.
    const changed = path.join(tmp, 'replicas-changed');
    await train(config(), { ...quiet, out: changed, stopAt: 10 });
    await train(config({ train: { replicas: 2 } }), { ...quiet, out: changed, resume: true });
    const lc = losses(changed);
    for (let s = 1; s <= 20; s++) expect(Math.abs(lc.get(s)! - l1.get(s)!)).toBeLessThan(1e-4);
    // The weights the helper trained with are the trainer's: the saved model matches.
    const a = loadModel(two);
    const b = loadModel(split);
    const wa = await a.weights();
    const wb = await b.weights();
    for (const [name, w] of wa) expect(Array.from(wb.get(name)!.data)).toEqual(Array.from(w.data));
    a.dispose();
    b.dispose();
  });

  it('a batch that does not split over the replicas is refused naming train.replicas', () => {
    let err: unknown;
    try {
      config({ train: { batch_size: 6, replicas: 4 } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).line()).toMatch(/train\.replicas/);
  });

  it('refuses a resume whose config changed, and an output folder that holds a run', async () => {
    const out = path.join(tmp, 'straight');
    const err = await train(config({ train: { lr: 5e-3 } }), { ...quiet, out, resume: true }).catch((e) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).line()).toMatch(/train\.lr/);
    await expect(train(config(), { ...quiet, out })).rejects.toThrow(UserError);
  });

  it('a NaN loss stops the run with a clear error and writes no checkpoint at all', async () => {
    const out = path.join(tmp, 'nan');
    const err = await train(config({ train: { lr: 1e30, warmup_frac: 0, max_steps: 20, ckpt_every: 3, grad_clip: 0 } }), { ...quiet, out }).catch((e) => e);
    expect(err).toBeInstanceOf(UserError);
    expect(String(err.message)).toMatch(/became/);
    expect(stepDirs(out, 'checkpoints')).toEqual([]);
  });

  it('an infinite gradient at step 7 stops the run before any later checkpoint or snapshot; all saved weights are finite', async () => {
    const out = path.join(tmp, 'inf-grad');
    process.env.SINKLM_TEST_INF_GRAD_AT = '7';
    const err = await train(config({ train: { max_steps: 20, log_every: 5, ckpt_every: 3, snapshot_every: 2, keep_last: 10 } }), { ...quiet, out })
      .catch((e) => e)
      .finally(() => delete process.env.SINKLM_TEST_INF_GRAD_AT);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).line()).toMatch(/gradient norm became (NaN|Infinity) at step 7/);
    // Saved before the blow-up: checkpoints 3 and 6, snapshots 2, 4 and 6; nothing after.
    expect(stepDirs(out, 'checkpoints')).toEqual([3, 6]);
    expect(stepDirs(out, 'snapshots')).toEqual([2, 4, 6]);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8')).step).toBe(6);
    const files = safetensorsBelow(out);
    expect(files.length).toBeGreaterThanOrEqual(2 * 2 + 3 + 1);
    for (const f of files) {
      for (const [name, t] of readSafetensors(f).tensors) expect(t.data.every(Number.isFinite), `${f} ${name}`).toBe(true);
    }
  });

  it('the tensor count is the same after step 10 and step 1000', async () => {
    const out = path.join(tmp, 'memory');
    // Losses wait on the device until a log line: compare steps with as many waiting.
    const counts = new Map<number, number>();
    await train(config({ model: { hidden_size: 8, num_hidden_layers: 1, intermediate_size: 16 }, train: { seq_len: 10, batch_size: 2, max_steps: 1000, log_every: 10, eval_every: 500, ckpt_every: 500 } }), {
      ...quiet,
      out,
      onStep: (s) => {
        if (s === 10 || s === 1000) counts.set(s, numTensors());
      },
    });
    expect(counts.get(1000)).toBe(counts.get(10));
  });

  it('SIGKILL in the middle of a save leaves the previous checkpoint loadable and resumable', () => {
    const out = path.join(tmp, 'killed');
    const cfgFile = path.join(tmp, 'killed.json');
    const c = config();
    fs.writeFileSync(cfgFile, JSON.stringify({ name: 'tiny', model: c.model, data: c.data, train: c.train }));
    const bin = path.join(ROOT, 'bin', 'sinklm');
    const r = spawnSync(process.execPath, [bin, 'train', '--config', cfgFile, '--out', out], {
      env: { ...process.env, SINKLM_TEST_CRASH_IN_SAVE: '20' },
      encoding: 'utf8',
    });
    expect(r.signal).toBe('SIGKILL');
    const root = path.join(out, 'checkpoints');
    expect(fs.readdirSync(root).some((n) => n.startsWith('.step-000020'))).toBe(true);
    expect(fs.existsSync(path.join(root, 'step-000020'))).toBe(false);
    const m = loadModel(path.join(root, 'step-000010'));
    m.dispose();
    const again = spawnSync(process.execPath, [bin, 'train', '--config', cfgFile, '--out', out, '--resume'], { encoding: 'utf8' });
    expect(again.status, again.stderr).toBe(0);
    expect(fs.existsSync(path.join(root, 'step-000020', 'trainer_state.json'))).toBe(true);
    expect(fs.readdirSync(root).some((n) => n.startsWith('.step-'))).toBe(false);
  });
});
