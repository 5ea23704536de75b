import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UserError } from '../core/errors.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { generate, parsePrompts, StreamDecoder, type GenerateOptions } from '../infer/generate.js';
import { argmax, candidates, checkSampling, makeSampler, type SamplingOptions } from '../infer/sampling.js';
import { makePolicy, parseCache } from '../infer/policy.js';
import type { LoadedCheckpoint } from '../infer/text.js';
import { saveModel } from '../model/checkpoint.js';
import type { NeoXConfig } from '../model/config.js';
import { eachDecodePath, numTensors, testBackend, textAndTokenizer, tinyModel } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-generate-'));

beforeAll(async () => {
  await testBackend();
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Deterministic pseudo-random logits. */
function logitsOf(seed: number, V = 50, scale = 3): Float32Array {
  return Float32Array.from({ length: V }, (_, i) => scale * Math.sin(seed * 97.1 + i * 12.9898));
}

function softmax(x: ArrayLike<number>, t = 1): number[] {
  const m = Math.max(...Array.from(x));
  const e = Array.from(x, (v) => Math.exp((v - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function draws(o: Partial<SamplingOptions>, n: number, logits: (i: number) => ArrayLike<number>): number[] {
  const s = makeSampler(o);
  return Array.from({ length: n }, (_, i) => s.next(logits(i)));
}

describe('sampling', () => {
  it('greedy (temperature 0) picks the argmax whatever the seed', () => {
    for (let i = 0; i < 50; i++) {
      const l = logitsOf(i);
      let best = 0;
      for (let j = 0; j < l.length; j++) if (l[j]! > l[best]!) best = j;
      expect(makeSampler({ temperature: 0, seed: i }).next(l)).toBe(best);
      expect(argmax(l)).toBe(best);
    }
  });

  it('the same seed gives the same draws; another seed other draws', () => {
    const a = draws({ temperature: 1, seed: 42 }, 300, logitsOf);
    const b = draws({ temperature: 1, seed: 42 }, 300, logitsOf);
    const c = draws({ temperature: 1, seed: 43 }, 300, logitsOf);
    expect(a).toEqual(b);
    expect(c).not.toEqual(a);
  });

  it('draws follow the softmax at the temperature', () => {
    const l = Float32Array.of(2, 1, 0, -1);
    for (const t of [0.5, 1, 2]) {
      const n = 20000;
      const counts = [0, 0, 0, 0];
      for (const id of draws({ temperature: t, seed: 1 }, n, () => l)) counts[id]!++;
      const p = softmax(l, t);
      // 4 standard errors of a proportion at n = 20000 is at most 0.0142.
      counts.forEach((c, i) => expect(Math.abs(c / n - p[i]!)).toBeLessThan(0.015));
    }
  });

  it('top-k never picks outside the k most likely tokens', () => {
    for (const k of [1, 3, 10]) {
      for (let i = 0; i < 20; i++) {
        const l = logitsOf(i);
        const allowed = new Set(
          Array.from(l.keys())
            .sort((a, b) => l[b]! - l[a]!)
            .slice(0, k),
        );
        expect(new Set(candidates(l, { temperature: 1, topK: k }).ids)).toEqual(allowed);
        for (const id of draws({ temperature: 1.5, topK: k, seed: i }, 200, () => l)) expect(allowed.has(id)).toBe(true);
      }
    }
  });

  it('top-p keeps the smallest most likely set reaching p, and never picks outside it', () => {
    for (const p of [0.1, 0.5, 0.9]) {
      for (let i = 0; i < 20; i++) {
        const l = logitsOf(i);
        const probs = softmax(l, 0.7);
        const order = Array.from(l.keys()).sort((a, b) => probs[b]! - probs[a]!);
        const nucleus = new Set<number>();
        let mass = 0;
        for (const id of order) {
          if (mass >= p) break;
          nucleus.add(id);
          mass += probs[id]!;
        }
        const got = candidates(l, { temperature: 0.7, topP: p });
        expect(new Set(got.ids)).toEqual(nucleus);
        expect(got.probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
        for (const id of draws({ temperature: 0.7, topP: p, seed: i }, 200, () => l)) expect(nucleus.has(id)).toBe(true);
      }
    }
  });

  it('top-k then top-p: the nucleus is taken within the top k', () => {
    const l = Float32Array.of(0, 0, 0, 0, 0, 0, 0, 0);
    // Equal logits: top-3 keeps ids 0..2 (ties keep the lower ids); p = 0.5 of those needs 2.
    expect(Array.from(candidates(l, { temperature: 1, topK: 3 }).ids)).toEqual([0, 1, 2]);
    expect(Array.from(candidates(l, { temperature: 1, topK: 3, topP: 0.5 }).ids)).toEqual([0, 1]);
  });

  it('rejects bad options as bad input', () => {
    for (const bad of [{ temperature: -1 }, { temperature: NaN }, { temperature: 1, topK: 1.5 }, { temperature: 1, topP: 0 }, { temperature: 1, topP: 1.2 }]) {
      expect(() => checkSampling(bad)).toThrow(UserError);
    }
  });
});

describe('prompts', () => {
  it('reads one turn per line, or JSON lines with "prompt" or "text", skipping blank lines', () => {
    expect(parsePrompts('hello\n\n  \nworld\n')).toEqual(['hello', 'world']);
    expect(parsePrompts('{"prompt": "a"}\n{"text": "b", "id": 2}\n')).toEqual(['a', 'b']);
    // A text line that happens to be JSON among plain lines is just text.
    expect(parsePrompts('{"prompt": "a"}\nplain\n')).toEqual(['{"prompt": "a"}', 'plain']);
    expect(() => parsePrompts('\n \n')).toThrow(UserError);
    expect(() => parsePrompts('{"prompt": 3}\n')).toThrow(UserError);
  });
});

describe('StreamDecoder', () => {
  it('hands on whole characters only, and the pieces add up to the text', () => {
    const text = 'aé你😀b';
    const bytes = Array.from(new TextEncoder().encode(text));
    const d = new StreamDecoder((ids) => new TextDecoder().decode(Uint8Array.from(ids)));
    const pieces = bytes.map((b) => d.push(b));
    expect(pieces.filter((p) => p !== '')).toEqual(['a', 'é', '你', '😀', 'b']);
    expect(d.finish()).toEqual({ text, rest: '' });
  });
});

/** A character tokenizer (id 1 is the sink): exact to decode, so replies can be re-encoded. */
function charTokenizer(): TextTokenizer {
  const alphabet = 'a_bcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW';
  return {
    vocabSize: 50,
    sinkTokenId: 1,
    eosTokenId: null,
    path: '(test)',
    encode: (text) => Array.from(text).map((ch) => alphabet.indexOf(ch)).filter((id) => id >= 0 && id !== 1),
    decode: (ids) => ids.filter((id) => id !== 1).map((id) => alphabet[id]!).join(''),
  };
}

function checkpointOf(over: Partial<NeoXConfig> = {}): LoadedCheckpoint {
  return { dir: '(memory)', model: tinyModel(over), tokenizer: charTokenizer() };
}

eachDecodePath(() => describe('generate', () => {
  const prompts = ['abcdef', 'ghij', 'klmnopq', 'rs', 'tuvwxyz'];
  const opts = (cache: string, over: Partial<GenerateOptions> = {}): GenerateOptions => ({
    cache: parseCache(cache),
    maxNewTokens: 8,
    sampling: { temperature: 0 },
    separator: '',
    ...over,
  });

  for (const mode of ['none', 'token'] as const) {
    it(`${mode}: rounds continue one stream that is never reset; every prompt and reply token goes through once`, async () => {
      const ck = checkpointOf(mode === 'token' ? { sink_mode: 'token', sink_token_id: 1 } : {});
      const before = numTensors();
      const r = await generate(ck, prompts, opts('2+10'));
      expect(numTensors()).toBe(before);
      const sink = mode === 'token' ? 1 : 0;
      const sum = (f: (x: (typeof r.rounds)[number]) => number) => r.rounds.reduce((a, x) => a + f(x), 0);
      expect(r.tokens_fed).toBe(sink + sum((x) => x.prompt_tokens) + sum((x) => x.tokens));
      expect(r.rounds.every((x) => x.tokens === 8 && x.completion.length === 8)).toBe(true);
      // The sink token is never sampled (it has no text; it only ever stands at position 0).
      expect(r.rounds.some((x) => x.completion.includes('_'))).toBe(false);

      // The cache fills up to S + W and then stays there, round after round.
      let fed = sink;
      for (const round of r.rounds) {
        fed += round.prompt_tokens + round.tokens;
        expect(round.kv_tokens).toBe(Math.min(fed, 12));
      }
      expect(r.kv_tokens_max).toBe(12);

      // Replaying the whole conversation through one fresh sinks cache (sink token once, at
      // the start) reproduces every greedy reply token: no round started from scratch.
      const p = makePolicy(ck.model, 'sinks', parseCache('2+10'));
      let logits: Float32Array | null = null;
      const feed = (t: number) => {
        const l = p.feed(t);
        logits = l.dataSync() as Float32Array;
        l.dispose();
      };
      if (sink) feed(1);
      for (const round of r.rounds) {
        for (const t of ck.tokenizer.encode(round.prompt)) feed(t);
        for (const t of ck.tokenizer.encode(round.completion)) {
          expect(argmax(logits!)).toBe(t);
          feed(t);
        }
      }
      p.dispose();
      ck.model.dispose();
    });
  }

  it('a reset stream would differ: the second round depends on the first', async () => {
    const ck = checkpointOf();
    const both = await generate(ck, ['abcdef', 'ghij'], opts('2+30'));
    const alone = await generate(ck, ['ghij'], opts('2+30'));
    expect(both.rounds[1]!.completion).not.toBe(alone.rounds[0]!.completion);
    ck.model.dispose();
  });

  it('sampled generation reproduces with a seed; text arrives in pieces that add up to the replies', async () => {
    const ck = checkpointOf();
    const run = async (seed: number) => {
      const pieces: string[] = [];
      const r = await generate(ck, prompts, opts('4+8', { sampling: { temperature: 1, topK: 20, topP: 0.9, seed } }), (text, { round, kind }) => {
        if (kind === 'completion') pieces[round] = (pieces[round] ?? '') + text;
      });
      r.rounds.forEach((x, i) => expect(pieces[i] ?? '').toBe(x.completion));
      return r.rounds.map((x) => x.completion);
    };
    const a = await run(7);
    expect(await run(7)).toEqual(a);
    expect(await run(8)).not.toEqual(a);
    ck.model.dispose();
  });

  it('takes turns from an async iterable, answering each before the next is read (a chat)', async () => {
    const ck = checkpointOf();
    const log: string[] = [];
    async function* turns() {
      for (const p of ['abc', 'de', 'fgh']) {
        log.push(`read ${p}`);
        yield p;
      }
    }
    const r = await generate(ck, turns(), opts('2+10', { maxNewTokens: 2 }), (_, { round, kind }) => {
      if (kind === 'completion' && log[log.length - 1] !== `reply ${round}`) log.push(`reply ${round}`);
    });
    expect(log).toEqual(['read abc', 'reply 0', 'read de', 'reply 1', 'read fgh', 'reply 2']);
    expect(r.rounds).toHaveLength(3);
    await expect(generate(ck, (async function* () {})(), opts('2+10'))).rejects.toThrow(UserError);
    ck.model.dispose();
  });

  it('stops a round at the eos token, which still goes into the cache', async () => {
    const ck = checkpointOf();
    // Call the greedy first reply token "eos": the round ends right after it.
    const first = await generate(ck, ['abc'], opts('2+10', { maxNewTokens: 1 }));
    const eos = ck.tokenizer.encode(first.rounds[0]!.completion)[0]!;
    const r = await generate({ ...ck, tokenizer: { ...ck.tokenizer, eosTokenId: eos } }, ['abc', 'de'], opts('2+10'));
    expect(r.rounds[0]!.tokens).toBe(1);
    expect(r.rounds[0]!.completion).toBe('');
    expect(r.tokens_fed).toBe(r.rounds.reduce((a, x) => a + x.prompt_tokens + x.tokens, 0));
    ck.model.dispose();
  });

  it('bad input: a cache beyond the model positions, no prompts', async () => {
    const ck = checkpointOf();
    await expect(generate(ck, ['ab'], opts('4+61'))).rejects.toThrow(/max_position_embeddings/);
    await expect(generate(ck, ['ab'], opts('4+0'))).rejects.toThrow(UserError);
    await expect(generate(ck, [], opts('4+8'))).rejects.toThrow(UserError);
    ck.model.dispose();
  });
}));

describe('sinklm generate (CLI)', () => {
  let dir: string;
  const bin = path.join(ROOT, 'bin', 'sinklm');
  const cli = (args: string[], input?: string) => spawnSync(process.execPath, [bin, 'generate', '--checkpoint', dir, ...args], { encoding: 'utf8', input, timeout: 60_000 });

  beforeAll(async () => {
    dir = path.join(tmp, 'ck');
    const { tok } = await textAndTokenizer(tmp);
    const model = tinyModel({ vocab_size: tok.vocabSize, sink_mode: 'token', sink_token_id: tok.sinkTokenId });
    await saveModel(dir, model, { tokenizerPath: tok.path });
    model.dispose();
  });

  it('--json prints one object with every round, from stdin lines', () => {
    const r = cli(['--cache', '2+14', '--max-new-tokens', '6', '--seed', '3', '--json'], 'The state\n\nWe the people\n');
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { rounds: { prompt: string; completion: string; tokens: number; ms_per_token: number }[]; kv_tokens_max: number; backend: string };
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    expect(out.rounds.map((x) => x.prompt)).toEqual(['The state', 'We the people']);
    expect(out.rounds.every((x) => x.tokens >= 1 && x.tokens <= 6 && typeof x.completion === 'string' && x.ms_per_token >= 0)).toBe(true);
    expect(out.kv_tokens_max).toBeLessThanOrEqual(16);
    expect(typeof out.backend).toBe('string');
    // Same seed, same text.
    const again = cli(['--cache', '2+14', '--max-new-tokens', '6', '--seed', '3', '--json'], 'The state\n\nWe the people\n');
    expect(JSON.parse(again.stdout).rounds.map((x: { completion: string }) => x.completion)).toEqual(out.rounds.map((x) => x.completion));
  });

  it('streams text with the turns, from a prompts file', () => {
    const file = path.join(tmp, 'prompts.jsonl');
    fs.writeFileSync(file, '{"prompt": "The state"}\n{"text": "We the"}\n');
    const r = cli(['--cache', '2+14', '--prompts', file, '--max-new-tokens', '4', '--temperature', '0']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^USER: The state\nASSISTANT: [^]*\n\nUSER: We the\nASSISTANT: /);
  });

  it('bad input exits 2 with one line', () => {
    const empty = path.join(tmp, 'empty.txt');
    fs.writeFileSync(empty, '\n\n');
    const one = path.join(tmp, 'one.txt');
    fs.writeFileSync(one, 'The state\n');
    for (const [args, why] of [
      [['--cache', '4+x', '--prompts', one], /not a cache size/],
      [['--cache', '4+100', '--prompts', one], /max_position_embeddings/],
      [['--cache', '4+8', '--prompts', empty], /has no prompts/],
      [['--cache', '4+8', '--prompts', path.join(tmp, 'missing.txt')], /not found/],
      [['--cache', '4+8', '--temperature', '-1', '--prompts', one], /--temperature/],
    ] as [string[], RegExp][]) {
      const r = cli(args);
      expect(r.status, args.join(' ')).toBe(2);
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('sinklm'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(why);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stdout).toBe('');
    }
  });
});
