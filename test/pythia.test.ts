/**
 * A checkpoint as HF ships Pythia (test/fixtures/pythia, made by make_pythia_fixture.py with
 * transformers itself): float16 safetensors with old BOOL buffers beside the weights,
 * Pythia's config.json (no sinklm block), a 50,304-row embedding for a 2,023-token NeoX-style
 * tokenizer. sinklm must read it as HF does: the same token ids, and the NLLs HF (score) and
 * a float64 StreamingLLM reference (stream with eviction) computed on the upcast weights.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { UserError } from '../core/errors.js';
import { fromHFConfig } from '../model/config.js';
import { loadTokenizer } from '../data/tokenizer.js';
import { readCheckpointWeights, readCheckpointConfig } from '../model/checkpoint.js';
import { f16ToF32, f32ToF16, readSafetensors, readSafetensorsHeader, writeSafetensors, type TensorMap } from '../model/safetensors.js';
import { attentionStats, attentionTokens } from '../infer/attention.js';
import { generate } from '../infer/generate.js';
import { decodePath, hostStepTooBig, makePolicy, parseCache } from '../infer/policy.js';
import { score } from '../infer/score.js';
import { streamEval } from '../infer/stream.js';
import { loadCheckpoint, textStream, type LoadedCheckpoint } from '../infer/text.js';
import { hostMemory, hostStepBytes } from '../model/hostmem.js';
import { releaseHostStep } from '../model/hoststep.js';
import { GPTNeoX } from '../model/neox.js';
import { PYTHIA_SHAPES, pythiaConfigJson, timeStep, writeRandomPythia } from '../bench/pythia.js';
import { ROOT, sinklm } from './cli.js';
import { eachDecodePath, maxAbsDiff, testBackend } from './helpers.js';

const DIR = path.join(ROOT, 'test', 'fixtures', 'pythia');
const TEXT = path.join(DIR, 'text.txt');
const TOL = 1e-3;

interface Expected {
  tokenizer_size: number;
  tokens: number[];
  score: { tokens: number[]; nll: number[] };
  stream: Record<string, number[]>;
  attention: { query_from: number; first: number[][]; first4: number[][] };
}
const expected = JSON.parse(fs.readFileSync(path.join(DIR, 'expected.json'), 'utf8')) as Expected;
const text = fs.readFileSync(TEXT, 'utf8');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-pythia-'));
let ck: LoadedCheckpoint;

beforeAll(async () => {
  await testBackend();
  ck = await loadCheckpoint(DIR);
});
afterAll(() => {
  ck?.model.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('the files as HF ships them', () => {
  it('the fixture really is float16 with BOOL buffers, and the weights come out as float32 with the float16 values', () => {
    const { entries } = readSafetensorsHeader(path.join(DIR, 'model.safetensors'));
    const dtypes = new Set([...entries.values()].map((e) => e.dtype));
    expect(dtypes).toEqual(new Set(['F16', 'BOOL', 'F32']));
    expect(entries.get('gpt_neox.embed_in.weight')).toMatchObject({ dtype: 'F16', shape: [50304, 16] });
    const weights = readCheckpointWeights(DIR, readCheckpointConfig(DIR));
    expect(weights.has('gpt_neox.layers.0.attention.bias')).toBe(false);
    const w = weights.get('embed_out.weight')!;
    expect(w.data).toBeInstanceOf(Float32Array);
    // Every value is a float16 exactly: re-encoding loses nothing.
    expect(w.data.every((v) => f16ToF32(f32ToF16(v)) === v)).toBe(true);
  });

  it("Pythia's config.json and transformers 5's spelling of it read as the same model, sink_mode none", () => {
    const pythia = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
    const hf5 = JSON.parse(fs.readFileSync(path.join(ROOT, 'test', 'fixtures', 'pythia-transformers5-config.json'), 'utf8')) as Record<string, unknown>;
    expect(pythia.sinklm).toBeUndefined();
    expect(hf5.rope_parameters).toBeDefined();
    expect(hf5.rotary_pct).toBeUndefined();
    const a = fromHFConfig(pythia);
    expect(fromHFConfig(hf5)).toEqual(a);
    expect(a).toMatchObject({ sink_mode: 'none', sink_token_id: null, rotary_pct: 0.25, rotary_emb_base: 10000, vocab_size: 50304, bos_token_id: 0, eos_token_id: 0 });
  });

  it('config fields sinklm cannot honour are refused by name, not ignored', () => {
    const pythia = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ rope_parameters: { rope_type: 'linear', factor: 2 } }, /rope_parameters\.rope_type/],
      [{ rope_scaling: { type: 'dynamic', factor: 2 } }, /rope_scaling/],
      [{ attention_bias: false }, /attention_bias/],
      [{ rope_parameters: { rope_theta: 500 } }, /rotary_emb_base is 10000 but rope_parameters\.rope_theta is 500/],
      [{ rotary_pct: '0.25' }, /rotary_pct: must be a number/],
      [{ tie_word_embeddings: true }, /tie_word_embeddings/],
    ];
    for (const [over, msg] of bad) {
      let line = 'no error';
      try {
        fromHFConfig({ ...pythia, ...over }, 'config.json');
      } catch (e) {
        line = e instanceof UserError ? e.line() : String(e);
      }
      expect(line, JSON.stringify(over)).toMatch(msg);
    }
  });

  it("the NeoX tokenizer gives HF tokenizers' ids (space runs, NFC, <|endoftext|>, bytes) and decodes back", async () => {
    const tok = await loadTokenizer(path.join(DIR, 'tokenizer.json'));
    expect(tok.vocabSize).toBe(expected.tokenizer_size);
    expect(tok.eosTokenId).toBe(0);
    expect(tok.sinkTokenId).toBe(tok.vocabSize); // no <|sink|>: one past the end
    const ids = tok.encode(text);
    expect(ids).toEqual(expected.tokens);
    expect(tok.decode(ids)).toBe(text.normalize('NFC'));
    expect(textStream(ck, text).tokens).toEqual(expected.tokens); // no sink token prepended
  });
});

describe('numbers: sinklm equals HF on the upcast float16 weights', () => {
  it(`score: the first 64 tokens' NLLs within ${TOL} of HF GPTNeoXForCausalLM`, async () => {
    const r = await score(ck, text, TEXT);
    expect(r.tokens).toEqual(expected.score.tokens);
    expect(maxAbsDiff(r.nll, expected.score.nll)).toBeLessThan(TOL);
  });

  it('attention: first-token and first-4 attention per layer and head equal HF output_attentions', async () => {
    const s = await attentionStats(ck, attentionTokens(ck, text));
    expect(s.query_from).toBe(expected.attention.query_from);
    for (const l of s.layers) {
      expect(maxAbsDiff(l.heads.map((h) => h.first), expected.attention.first[l.layer]!)).toBeLessThan(1e-4);
      expect(maxAbsDiff(l.heads.map((h) => h.first4), expected.attention.first4[l.layer]!)).toBeLessThan(1e-4);
    }
  });

  eachDecodePath(() => {
    for (const cache of Object.keys(expected.stream)) {
      it(`stream-eval ${cache}: every NLL over ${expected.tokens.length} tokens (past the 64 positions) within ${TOL} of the float64 reference`, async () => {
        const run = await streamEval(ck, textStream(ck, text), 'sinks', parseCache(cache));
        expect(run.nll.length).toBe(expected.stream[cache]!.length);
        expect(maxAbsDiff(run.nll, expected.stream[cache]!)).toBeLessThan(TOL);
      });
    }
  });

  it('generate: the 281 padding rows past the tokenizer are never sampled', async () => {
    const r = await generate(ck, ['Gentlemen of the Senate'], { cache: parseCache('4+12'), maxNewTokens: 40, sampling: { temperature: 1, topK: 0, topP: 1, seed: 3 }, stopAtEos: false });
    expect(r.rounds[0]!.tokens).toBe(40);
    expect(r.tokens_fed).toBeGreaterThan(40);
  });
});

describe('through the CLI', () => {
  it('score --json prints the same ids and NLLs', async () => {
    const r = await sinklm(['score', '--checkpoint', DIR, '--text', TEXT, '--json'], tmp);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { tokens: number[]; nll: number[] };
    expect(out.tokens).toEqual(expected.score.tokens);
    expect(maxAbsDiff(out.nll, expected.score.nll)).toBeLessThan(TOL);
  });

  it('stream-eval --per-token writes the reference NLLs for both caches', async () => {
    const caches = Object.keys(expected.stream);
    const out = path.join(tmp, 'per-token.jsonl');
    const r = await sinklm(['stream-eval', '--checkpoint', DIR, '--text', TEXT, ...caches.flatMap((c) => ['--cache', c]), '--per-token', out, '--json'], tmp);
    expect(r.code, r.stderr).toBe(0);
    const rows = (JSON.parse(r.stdout) as { results: { cache: string; tokens: number }[] }).results;
    expect(rows.map((x) => x.cache)).toEqual(caches);
    const lines = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { cache: string; nll: number[] });
    for (const l of lines) expect(maxAbsDiff(l.nll, expected.stream[l.cache]!), l.cache).toBeLessThan(TOL);
    expect(lines.map((l) => l.cache)).toEqual(caches);
  });

  it('a folder with only pytorch_model.bin: exit 2 and one line with the command that converts it', async () => {
    const dir = path.join(tmp, 'bin-only');
    fs.mkdirSync(dir);
    for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(DIR, f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'PK\u0003\u0004 not read');
    const r = await sinklm(['score', '--checkpoint', dir, '--text', TEXT, '--json'], tmp);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('pytorch_model.bin');
    expect(lines[0]).toContain(`save_pretrained('${dir}', safe_serialization=True)`);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('safetensors details', () => {
  it('float16 encoding: every finite half survives the round trip; ties round to even; overflow is infinity', () => {
    for (let h = 0; h < 65536; h++) {
      const v = f16ToF32(h);
      if (!Number.isNaN(v)) expect(f32ToF16(v)).toBe(h);
    }
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // halfway between 1 and the next half: even
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToF16(2 ** -25)).toBe(0); // half the smallest subnormal: even (zero)
    expect(f32ToF16(1e6)).toBe(0x7c00);
    expect(Number.isNaN(f16ToF32(f32ToF16(NaN)))).toBe(true);
  });

  it('writes float16 that reads back as the rounded values', () => {
    const t: TensorMap = new Map([['a', { shape: [2, 3], data: new Float32Array([0.1, -2.5, 65504, 1e-7, 3.14159, -0]) }]]);
    const f = path.join(tmp, 'half.safetensors');
    writeSafetensors(f, t, {}, { dtype: 'F16' });
    expect(readSafetensorsHeader(f).entries.get('a')).toMatchObject({ dtype: 'F16', shape: [2, 3] });
    const back = readSafetensors(f).tensors.get('a')!.data;
    expect(Array.from(back)).toEqual(Array.from(t.get('a')!.data, (v) => f16ToF32(f32ToF16(v))));
  });

  it('bfloat16 and float64 tensors read as float32 (bfloat16: the top half of a float32)', () => {
    const values = new Float32Array([1, -2.5, 3.140625, 1e-3, -0]);
    const u32 = new Uint32Array(values.buffer);
    const bf16 = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) bf16[i] = u32[i]! >>> 16;
    const f64 = new Float64Array([0.1, 1e30]);
    const header = JSON.stringify({
      b: { dtype: 'BF16', shape: [5], data_offsets: [0, 10] },
      d: { dtype: 'F64', shape: [2], data_offsets: [16, 32] },
    });
    const f = path.join(tmp, 'mixed.safetensors');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(f, Buffer.concat([len, Buffer.from(header), Buffer.from(bf16.buffer), Buffer.alloc(6), Buffer.from(f64.buffer)]));
    const t = readSafetensors(f).tensors;
    const top = Float32Array.from(values, (v) => new Float32Array(new Uint32Array([new Uint32Array(new Float32Array([v]).buffer)[0]! & 0xffff0000]).buffer)[0]!);
    expect(Array.from(t.get('b')!.data)).toEqual(Array.from(top));
    expect(Array.from(t.get('d')!.data)).toEqual([Math.fround(0.1), Math.fround(1e30)]);
  });

  it('a sharded checkpoint (model.safetensors.index.json) loads as the single file does', async () => {
    const dir = path.join(tmp, 'sharded');
    fs.mkdirSync(dir);
    for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(DIR, f), path.join(dir, f));
    const all = readSafetensors(path.join(DIR, 'model.safetensors'), { keep: (n) => !n.includes('attention.bias') }).tensors;
    const names = [...all.keys()];
    const map: Record<string, string> = {};
    names.forEach((n, i) => (map[n] = i < names.length / 2 ? 'model-00001-of-00002.safetensors' : 'model-00002-of-00002.safetensors'));
    for (const shard of new Set(Object.values(map))) {
      writeSafetensors(path.join(dir, shard), new Map(names.filter((n) => map[n] === shard).map((n) => [n, all.get(n)!])), {}, { dtype: 'F16' });
    }
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
    const sharded = await loadCheckpoint(dir);
    try {
      expect(maxAbsDiff((await score(sharded, text)).nll, expected.score.nll)).toBeLessThan(TOL);
    } finally {
      sharded.model.dispose();
    }
  });
});

describe('which step streams a model: the host step only where it fits', () => {
  const stand = (name: string) => {
    const shape = PYTHIA_SHAPES.find((s) => s.name === name)!;
    return { config: fromHFConfig(pythiaConfigJson(shape)), derived: null, weightsVersion: 0 } as unknown as GPTNeoX;
  };
  let saved: string | undefined;
  let lines: string[];
  beforeEach(() => {
    saved = process.env.SINKLM_DECODE;
    delete process.env.SINKLM_DECODE;
    lines = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (lines.push(String(s)), true));
  });
  afterEach(() => {
    vi.restoreAllMocks();
    if (saved !== undefined) process.env.SINKLM_DECODE = saved;
  });

  it('Pythia-160M and 410M stream on the host step at cache 1024; 1B and up on the tensor step, said once on stderr', () => {
    expect(decodePath(stand('pythia-160m'), 1024)).toBe('host');
    expect(decodePath(stand('pythia-410m'), 1024)).toBe('host');
    expect(lines).toEqual([]);
    for (const name of ['pythia-1b', 'pythia-1.4b', 'pythia-12b']) expect(decodePath(stand(name), 1024), name).toBe('tensor');
    expect(decodePath(stand('pythia-1b'), 1024)).toBe('tensor');
    const notes = lines.filter((l) => l.includes('16 x 2048'));
    expect(notes).toHaveLength(1);
    expect(notes[0]).toMatch(/^sinklm: streaming on the tensor step: the host step of this model \(16 x 2048, 1024 cached tokens\) would need 3723 MB of WebAssembly memory, over its 2048 MB budget/);
    // The user can still ask for the host step.
    process.env.SINKLM_DECODE = 'host';
    expect(decodePath(stand('pythia-1b'), 1024)).toBe('host');
  });

  it('a model that fits the budget but not what is left of the 4 GiB goes to the tensor step too', () => {
    vi.spyOn(hostMemory(), 'used', 'get').mockReturnValue(3.25 * 2 ** 30);
    expect(hostStepTooBig(stand('pythia-410m'), 1024)).toMatch(/needs 1542 MB more WebAssembly memory and only 768 MB of the 4 GiB is left/);
    expect(decodePath(stand('pythia-410m'), 1024)).toBe('tensor');
    expect(decodePath(stand('pythia-160m'), 1024)).toBe('host');
  });

  it('the estimate covers what the host step really holds', () => {
    releaseHostStep(ck.model); // an earlier test's copy of the weights would already be counted
    const before = hostMemory().used;
    const p = makePolicy(ck.model, 'sinks', parseCache('4+12'));
    expect(p.decode).toBe('host');
    p.feed(5).dispose();
    const held = hostMemory().used - before;
    const est = hostStepBytes(ck.model.config, 16);
    p.dispose();
    releaseHostStep(ck.model);
    expect(held).toBeLessThanOrEqual(est * 1.05);
    expect(held).toBeGreaterThan(est * 0.9);
  });
});

describe('bench pythia (a small shape: the real one is 310 MB)', () => {
  it('writes a float16 Pythia-layout checkpoint that loads, and times both steps', async () => {
    const dir = path.join(tmp, 'bench');
    const built = writeRandomPythia(dir, { name: 'small', layers: 2, hidden: 64, heads: 4, vocab: 512 });
    expect(readSafetensorsHeader(path.join(dir, 'model.safetensors')).entries.get('embed_out.weight')).toMatchObject({ dtype: 'F16', shape: [512, 64] });
    expect(built.bytes).toBeGreaterThan(2 * built.params);
    const model = new GPTNeoX(readCheckpointConfig(dir), readCheckpointWeights(dir, readCheckpointConfig(dir)));
    try {
      expect(model.config).toMatchObject({ sink_mode: 'none', rotary_pct: 0.25, max_position_embeddings: 2048 });
      for (const d of ['host', 'tensor'] as const) {
        const r = await timeStep(model, d, [{ sinks: 4, window: 28 }], 3, 1);
        expect(r).toMatchObject({ decode: d, cache: '4+28', tokens: 3 });
        expect(r.ms_per_token).toBeGreaterThan(0);
      }
      const grid = await timeStep(model, 'host', [0, 1, 2, 4].map((k) => ({ sinks: k, window: 32 - k })), 2, 1);
      expect(grid.cache).toBe('0+32,1+31,2+30,4+28');
    } finally {
      model.dispose();
    }
  });
});
