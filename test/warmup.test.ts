/**
 * stream-eval's ms_per_token leaves out the warm-up: a clock that only moves when the model
 * steps, with a slow first step (the one-time set-up a real backend pays), shows it.
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TextTokenizer } from '../data/tokenizer.js';
import { streamEval, streamEvalMany, WARMUP_TOKENS } from '../infer/stream.js';
import { parseCache } from '../infer/policy.js';
import type { LoadedCheckpoint } from '../infer/text.js';
import type { GPTNeoX } from '../model/neox.js';
import { testBackend, tinyModel } from './helpers.js';

const FIRST_STEP_MS = 1000;
const STEP_MS = 2;

beforeAll(async () => {
  await testBackend();
});
afterEach(() => {
  vi.restoreAllMocks();
  vi.unstubAllEnvs();
});

/** A model whose steps advance a fake clock: the first by FIRST_STEP_MS, the others by STEP_MS. */
function clockedModel(): GPTNeoX {
  let now = 0;
  let steps = 0;
  vi.spyOn(performance, 'now').mockImplementation(() => now);
  const model = tinyModel();
  const step = model.step.bind(model);
  model.step = (...a: Parameters<GPTNeoX['step']>) => {
    now += steps++ === 0 ? FIRST_STEP_MS : STEP_MS;
    return step(...a);
  };
  return model;
}

const stream = { tokens: Array.from({ length: 41 }, (_, i) => (i * 7) % 50), prefix: 0 };

/** Runs `f` on a fresh clocked model, on the tensor step (the host step bypasses model.step, which the clock wraps). */
async function withClock<T>(f: (ck: LoadedCheckpoint) => Promise<T>): Promise<T> {
  vi.stubEnv('SINKLM_DECODE', 'tensor');
  const model = clockedModel();
  try {
    return await f({ dir: 'tiny', model, tokenizer: {} as TextTokenizer });
  } finally {
    model.dispose();
  }
}

describe('ms_per_token', () => {
  it(`leaves out the first ${WARMUP_TOKENS} tokens (their one-time costs)`, async () => {
    expect(await withClock(async (ck) => (await streamEval(ck, stream, 'sinks', parseCache('2+14'))).row.ms_per_token)).toBeCloseTo(STEP_MS, 9);
  });
  it('does so for the batched grid too, each row its share of the one step', async () => {
    const rows = await withClock(async (ck) => (await streamEvalMany(ck, stream, [parseCache('0+16'), parseCache('2+14')])).map((r) => r.row.ms_per_token));
    expect(rows[0]).toBeCloseTo(STEP_MS / 2, 9);
    expect(rows[1]).toBeCloseTo(STEP_MS / 2, 9);
  });
});
