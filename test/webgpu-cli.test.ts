/**
 * The commands on webgpu, through the real CLI, against the tensorflow backend (the cpu
 * backend where native TensorFlow is missing): 20 training steps of the smoke config (every
 * logged loss and validation loss to 1e-3 relative), a resume on webgpu bit-exact against
 * the run that never stopped, and score and stream-eval of a shipped checkpoint to 1e-4.
 * On SwiftShader where there is no GPU (CI installs it); skipped with a message elsewhere,
 * a failure under CI.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, sinklm } from './cli.js';

const SMOKE = path.join(ROOT, 'configs', 'smoke.json');
const CKPT = path.join(ROOT, 'checkpoints', 'token');
const TEXT = path.join(ROOT, 'checkpoints', 'test_stream.txt');
const TIMEOUT = 240_000;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-webgpu-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const doctor = await sinklm(['doctor', '--backend', 'webgpu', '--json'], ROOT, { timeoutMs: 60_000 });
const info = doctor.code === 0 ? (JSON.parse(doctor.stdout) as { backend: string; webgpu: { adapter?: { architecture: string } } }) : undefined;
const reference = (await sinklm(['doctor', '--json'], ROOT, { timeoutMs: 60_000, env: { SINKLM_NO_WEBGPU: '1' } })).stdout.includes('"backend":"tensorflow"') ? 'tensorflow' : 'cpu';
if (!info && !process.env.CI) process.stderr.write(`test/webgpu-cli.test.ts skipped: ${doctor.stderr.trim()}\n`);
const suite = !info && !process.env.CI ? describe.skip : describe;

/** The metrics rows of a run: train losses by step, and validation losses by step. */
function metrics(dir: string): { loss: Map<number, number>; val: Map<number, number> } {
  const rows = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
  return {
    loss: new Map(rows.filter((r) => 'loss' in r).map((r) => [r.step!, r.loss!])),
    val: new Map(rows.filter((r) => 'val_loss' in r).map((r) => [r.step!, r.val_loss!])),
  };
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

async function ok(args: string[]) {
  const r = await sinklm(args, tmp, { timeoutMs: TIMEOUT });
  expect(r.code, r.stderr).toBe(0);
  return r;
}

suite(`sinklm on webgpu against ${reference}`, () => {
  it('doctor names a real adapter (a GPU, or SwiftShader)', () => {
    expect(info?.backend).toBe('webgpu');
    expect(info?.webgpu.adapter?.architecture).toBeTruthy();
  });

  it('trains the smoke config for 20 steps with the same losses (1e-3), and resumes bit-exact', { timeout: 3 * TIMEOUT }, async () => {
    const gpu = path.join(tmp, 'gpu');
    const ref = path.join(tmp, 'ref');
    await ok(['train', '--config', SMOKE, '--backend', 'webgpu', '--max-steps', '20', '--out', gpu]);
    await ok(['train', '--config', SMOKE, '--backend', reference, '--max-steps', '20', '--out', ref]);
    const a = metrics(gpu);
    const b = metrics(ref);
    expect([...a.loss.keys()]).toEqual([5, 10, 15, 20]);
    for (const [step, loss] of b.loss) expect(rel(a.loss.get(step)!, loss), `train loss at step ${step}`).toBeLessThan(1e-3);
    for (const [step, loss] of b.val) expect(rel(a.val.get(step)!, loss), `val loss at step ${step}`).toBeLessThan(1e-3);

    // Stopped at 10 and resumed on webgpu: steps 11-20 exactly as the run that went through.
    const split = path.join(tmp, 'split');
    await ok(['train', '--config', SMOKE, '--backend', 'webgpu', '--max-steps', '10', '--out', split]);
    await ok(['train', '--config', SMOKE, '--backend', 'webgpu', '--resume', '--out', split]);
    const c = metrics(split);
    for (const step of [15, 20]) expect(c.loss.get(step), `train loss at step ${step}`).toBe(a.loss.get(step));
    expect(c.val.get(20)).toBe(a.val.get(20));
  });

  it('stream-eval of the shipped token model at 1+63 over 256 tokens: the same perplexity (1e-4)', { timeout: 2 * TIMEOUT }, async () => {
    const args = ['stream-eval', '--checkpoint', CKPT, '--text', TEXT, '--cache', '1+63', '--max-tokens', '256', '--json'];
    const gpu = JSON.parse((await ok([...args, '--backend', 'webgpu'])).stdout).results[0];
    const ref = JSON.parse((await ok([...args, '--backend', reference])).stdout).results[0];
    expect(gpu.backend).toBe('webgpu');
    expect(gpu.tokens).toBe(ref.tokens);
    expect(rel(gpu.ppl, ref.ppl)).toBeLessThan(1e-4);
  });

  it('score of the shipped token model: every NLL the same (1e-4 of the largest)', { timeout: 2 * TIMEOUT }, async () => {
    const args = ['score', '--checkpoint', CKPT, '--text', TEXT, '--json'];
    const gpu = JSON.parse((await ok([...args, '--backend', 'webgpu'])).stdout) as { tokens: number[]; nll: number[] };
    const ref = JSON.parse((await ok([...args, '--backend', reference])).stdout) as { tokens: number[]; nll: number[] };
    expect(gpu.tokens).toEqual(ref.tokens);
    const scale = Math.max(...ref.nll.map(Math.abs));
    expect(Math.max(...gpu.nll.map((v, i) => Math.abs(v - ref.nll[i]!))) / scale).toBeLessThan(1e-4);
  });
});
