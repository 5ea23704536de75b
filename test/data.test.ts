import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { tableToIPC, tableFromArrays } from 'apache-arrow';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DataSection, loadRunConfig, type RunConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { encodeDocuments } from '../data/bpe.js';
import { loadCorpus } from '../data/corpus.js';
import { readShard } from '../data/shards.js';
import { BatchSampler, evalBatches, type Batch } from '../data/sampler.js';
import { SPLITS, splitDocuments } from '../data/split.js';
import { loadTokenizer, trainTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import { loadPrepared, prepareData, readSplitTokens, type PreparedData } from '../data/prepare.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-data-test-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const tmp = (name: string) => path.join(tmpRoot, name);

const TRICKY = [
  'héllo wörld — naïve café, 你好世界 🙂🚀 x',
  'tabs\tand\t\ttabs, runs of spaces     here,\n\n\nblank lines\r\nand CRLF ',
  '   leading and trailing   ',
  'a\u0301 combining, \u200bzero width, \u0000 nul, emoji family 👨‍👩‍👧',
  "It's the U.S.A. , isn't it ? Yes ; 'quoted' \"double\"",
  '\n',
];

/** Expects a UserError whose one-line message names `file`. */
async function expectUserError(fn: () => Promise<unknown> | unknown, file: string, msg?: RegExp): Promise<UserError> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(UserError);
  const err = caught as UserError;
  expect(err.line()).toContain(file);
  if (msg) expect(err.line()).toMatch(msg);
  return err;
}

function smokeConfig(overrides: Partial<RunConfig['data']> = {}): RunConfig {
  const base = loadRunConfig(path.resolve('configs/smoke.json'));
  return { ...base, data: DataSection.parse({ ...base.data, ...overrides }) };
}

function collect(s: BatchSampler, n: number): Batch[] {
  return Array.from({ length: n }, () => s.next());
}

describe('tokenizer', () => {
  let tok: TextTokenizer;
  let texts: string[];
  beforeAll(async () => {
    texts = (await loadCorpus('sotu', { textField: 'text', maxDocuments: 6 })).documents;
    tok = await trainTokenizer(texts, 600, tmp('tok/tokenizer.json'));
  });

  it('has exactly the configured vocabulary, with the special tokens first', () => {
    expect(tok.vocabSize).toBe(600);
    expect(tok.eosTokenId).toBe(0);
    expect(tok.sinkTokenId).toBe(1);
    const json = JSON.parse(fs.readFileSync(tok.path, 'utf8'));
    expect(Object.keys(json.model.vocab)).toHaveLength(600);
  });

  it('round-trips tricky text, and the native bulk encoder agrees with encode()', async () => {
    for (const s of [...TRICKY, texts[0]!.slice(0, 3000)]) {
      const ids = tok.encode(s);
      expect(ids.every((id) => id >= 0 && id < tok.vocabSize)).toBe(true);
      expect(tok.decode(ids)).toBe(s);
    }
    const native = await encodeDocuments(tok.path, TRICKY);
    native.forEach((ids, i) => expect(Array.from(ids)).toEqual(tok.encode(TRICKY[i]!)));
  });

  it('decodes the sink placeholder to nothing', () => {
    expect(tok.decode([tok.sinkTokenId, ...tok.encode('hello')])).toBe('hello');
  });

  it('loads a tokenizer without <|sink|> (as Pythia has none) with the sink one past the end', async () => {
    const json = JSON.parse(fs.readFileSync(tok.path, 'utf8'));
    json.added_tokens = json.added_tokens.filter((t: { content: string }) => t.content !== '<|sink|>');
    delete json.model.vocab['<|sink|>'];
    fs.writeFileSync(tmp('nosink.json'), JSON.stringify(json));
    const t = await loadTokenizer(tmp('nosink.json'));
    expect(t.vocabSize).toBe(600);
    expect(t.sinkTokenId).toBe(600);
    expect(t.decode(t.encode(TRICKY[0]!))).toBe(TRICKY[0]);
  });

  it('refuses a missing or malformed tokenizer file, naming it', async () => {
    await expectUserError(() => loadTokenizer(tmp('nope.json')), tmp('nope.json'), /not found/);
    fs.writeFileSync(tmp('bad.json'), '{"x": 1}');
    await expectUserError(() => loadTokenizer(tmp('bad.json')), tmp('bad.json'));
  });
});

describe('corpus', () => {
  it('reads .txt folders, .jsonl and Arrow files', async () => {
    const dir = tmp('txt');
    fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'b.txt'), 'second');
    fs.writeFileSync(path.join(dir, 'sub', 'c.txt'), 'third');
    fs.writeFileSync(path.join(dir, 'a.txt'), 'first');
    fs.writeFileSync(path.join(dir, 'empty.txt'), '  \n');
    expect((await loadCorpus(dir, { textField: 'text' })).documents).toEqual(['first', 'second', 'third']);

    fs.writeFileSync(tmp('c.jsonl'), '{"body": "one"}\n\n{"body": "two", "n": 2}\n');
    expect((await loadCorpus(tmp('c.jsonl'), { textField: 'body' })).documents).toEqual(['one', 'two']);
    expect((await loadCorpus(tmp('c.jsonl'), { textField: 'body', maxDocuments: 1 })).documents).toEqual(['one']);

    fs.writeFileSync(tmp('c.arrow'), tableToIPC(tableFromArrays({ text: ['x y', 'z'], id: Int32Array.from([1, 2]) }), 'file'));
    expect((await loadCorpus(tmp('c.arrow'), { textField: 'text' })).documents).toEqual(['x y', 'z']);
    await expectUserError(() => loadCorpus(tmp('c.arrow'), { textField: 'body' }), tmp('c.arrow'), /no column "body"/);
  });

  it('turns bad input into a UserError naming the file', async () => {
    const empty = tmp('emptydir');
    fs.mkdirSync(empty);
    await expectUserError(() => loadCorpus(empty, { textField: 'text' }), empty, /no corpus files/);
    await expectUserError(() => loadCorpus(tmp('missing'), { textField: 'text' }), tmp('missing'), /not found/);

    const onlyBlank = tmp('blankdir');
    fs.mkdirSync(onlyBlank);
    fs.writeFileSync(path.join(onlyBlank, 'a.txt'), '\n\n');
    await expectUserError(() => loadCorpus(onlyBlank, { textField: 'text' }), onlyBlank, /no non-empty documents/);

    fs.writeFileSync(tmp('bin.txt'), Buffer.from([0x47, 0x49, 0x46, 0x00, 0x01, 0x02]));
    await expectUserError(() => loadCorpus(tmp('bin.txt'), { textField: 'text' }), tmp('bin.txt'), /binary/);
    fs.writeFileSync(tmp('latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x6f, 0x6b]));
    await expectUserError(() => loadCorpus(tmp('latin1.txt'), { textField: 'text' }), tmp('latin1.txt'), /UTF-8/);

    fs.writeFileSync(tmp('badline.jsonl'), '{"text": "fine"}\n{"text": oops}\n');
    await expectUserError(() => loadCorpus(tmp('badline.jsonl'), { textField: 'text' }), tmp('badline.jsonl'), /line 2: not valid JSON/);
    fs.writeFileSync(tmp('nofield.jsonl'), '{"text": "fine"}\n{"body": "x"}\n');
    await expectUserError(() => loadCorpus(tmp('nofield.jsonl'), { textField: 'text' }), tmp('nofield.jsonl'), /line 2: no "text" field/);
  });
});

describe('split', () => {
  it('is deterministic, disjoint and complete', () => {
    const opts = { validationFrac: 0.1, testFrac: 0.2, seed: 7 };
    const a = splitDocuments(50, opts);
    expect(splitDocuments(50, opts)).toEqual(a);
    expect(splitDocuments(50, { ...opts, seed: 8 })).not.toEqual(a);
    const all = SPLITS.flatMap((s) => a[s]);
    expect(new Set(all).size).toBe(50);
    expect([a.train.length, a.validation.length, a.test.length]).toEqual([35, 5, 10]);
  });

  it('refuses a corpus too small for three splits', async () => {
    await expectUserError(() => splitDocuments(2, { validationFrac: 0.1, testFrac: 0.1, seed: 1, corpus: 'tiny.jsonl' }), 'tiny.jsonl', /too few/);
  });
});

describe('sampler', () => {
  const tokens = Int32Array.from({ length: 5000 }, (_, i) => 2 + (i % 997));
  const opts = { tokens, seqLen: 16, batchSize: 4, seed: 1, sinkTokenId: null };

  it('gives [B, T] windows whose targets are the next tokens', () => {
    const b = new BatchSampler(opts).next();
    expect(b.input).toHaveLength(64);
    expect(b.target).toHaveLength(64);
    for (let r = 0; r < 4; r++) {
      for (let t = 0; t < 15; t++) expect(b.target[r * 16 + t]).toBe(b.input[r * 16 + t + 1]);
    }
    expect(Array.from(b.mask).every((m) => m === 1)).toBe(true);
  });

  it('same seed gives the same batches, another seed different ones', () => {
    const a = collect(new BatchSampler(opts), 5);
    expect(collect(new BatchSampler(opts), 5)).toEqual(a);
    expect(collect(new BatchSampler({ ...opts, seed: 2 }), 5)).not.toEqual(a);
  });

  it('resumes from state() with exactly the batches an uninterrupted run draws', () => {
    const whole = collect(new BatchSampler(opts), 10);
    const first = new BatchSampler(opts);
    collect(first, 4);
    const saved = JSON.parse(JSON.stringify(first.state()));
    expect(saved.batches).toBe(4);
    expect(collect(BatchSampler.restore(opts, saved), 6)).toEqual(whole.slice(4));
    expect(() => BatchSampler.restore({ ...opts, seqLen: 32 }, saved)).toThrow(UserError);
  });

  it('with a sink token: every sample starts with it and it is never a target', () => {
    const sink = 1;
    const b = new BatchSampler({ ...opts, sinkTokenId: sink }).next();
    for (let r = 0; r < 4; r++) {
      const row = (a: Int32Array) => Array.from(a.subarray(r * 16, r * 16 + 16));
      expect(row(b.input)[0]).toBe(sink);
      expect(row(b.input).slice(1)).not.toContain(sink);
      expect(row(b.target)).not.toContain(sink);
      // The sink's target is the first text token, the next input.
      expect(row(b.target).slice(0, 15)).toEqual(row(b.input).slice(1));
    }
    // A sink id that also occurs in the text (never in practice) is still masked out.
    const withSink = Int32Array.from(tokens, (t, i) => (i % 5 === 0 ? sink : t));
    const c = new BatchSampler({ ...opts, tokens: withSink, sinkTokenId: sink }).next();
    c.target.forEach((t, i) => expect(c.mask[i]).toBe(t === sink ? 0 : 1));
  });

  it('gives fixed evaluation batches', () => {
    const a = evalBatches(tokens, 16, 4, 3, 1);
    expect(a).toHaveLength(3);
    expect(evalBatches(tokens, 16, 4, 3, 1)).toEqual(a);
    expect(a[0]!.input[0]).toBe(1);
    expect(() => evalBatches(tokens.subarray(0, 10), 16, 4, 1, null)).toThrow(UserError);
  });
});

describe('prepare', () => {
  let prep: PreparedData;
  const out = tmp('prep');
  beforeAll(async () => {
    prep = await prepareData(smokeConfig(), { out, shardTokens: 40_000 });
  });

  it('writes what the manifest says, split by document', async () => {
    const m = prep.manifest;
    expect(prep.reused).toBe(false);
    expect(m.tokenizer.vocab_size).toBe(512);
    expect(prep.tokenizer.vocabSize).toBe(512);
    expect(m.corpus.documents).toBe(24);
    expect(m.splits.train.shards.length).toBeGreaterThan(1);
    const seen = new Set<number>();
    for (const s of SPLITS) {
      let docs = 0;
      let toks = 0;
      for (const sh of m.splits[s].shards) {
        const c = readShard(path.join(out, sh.file));
        expect([c.docIds.length, c.tokens.length]).toEqual([sh.documents, sh.tokens]);
        docs += c.docIds.length;
        toks += c.tokens.length;
        for (const id of c.docIds) {
          expect(seen.has(id)).toBe(false);
          seen.add(id);
        }
      }
      expect([docs, toks]).toEqual([m.splits[s].documents, m.splits[s].tokens]);
    }
    expect(seen.size).toBe(24);
    expect(fs.readdirSync(path.dirname(out)).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('reads a split back as one stream with <|endoftext|> between documents', async () => {
    const { tokens, docStarts } = await readSplitTokens(prep, 'test');
    expect(docStarts).toHaveLength(2);
    expect(tokens.length).toBe(prep.manifest.splits.test.tokens + 1);
    expect(tokens[docStarts[1]! - 1]).toBe(0);
    const text = fs.readFileSync(path.join(out, 'test_stream.txt'), 'utf8');
    const first = prep.tokenizer.decode(Array.from(tokens.subarray(0, docStarts[1]! - 1)));
    expect(text.startsWith(first + '\n\n')).toBe(true);
  });

  it('reuses an intact preparation without touching it', async () => {
    const before = fs.readdirSync(out).map((f) => [f, fs.statSync(path.join(out, f)).mtimeMs]);
    const t0 = Date.now();
    const again = await prepareData(smokeConfig(), { out, shardTokens: 40_000 });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(again.reused).toBe(true);
    expect(again.manifestHash).toBe(prep.manifestHash);
    expect(fs.readdirSync(out).map((f) => [f, fs.statSync(path.join(out, f)).mtimeMs])).toEqual(before);
  });

  it('detects a tampered shard, and prepare remakes it', async () => {
    const shard = path.join(out, prep.manifest.splits.train.shards[0]!.file);
    const bytes = fs.readFileSync(shard);
    bytes[bytes.length - 20] ^= 0xff;
    fs.writeFileSync(shard, bytes);
    await expectUserError(() => loadPrepared(out), shard, /sha256/);
    const redone = await prepareData(smokeConfig(), { out, shardTokens: 40_000 });
    expect(redone.reused).toBe(false);
    expect((await loadPrepared(out)).manifest.splits).toEqual(prep.manifest.splits);
  });

  it('remakes the data when the data config changes', async () => {
    const other = await prepareData(smokeConfig({ seed: 99 }), { out, shardTokens: 40_000 });
    expect(other.reused).toBe(false);
    expect(other.manifest.source_config.seed).toBe(99);
  });

  it('names a default folder from corpus, vocab, seed and fractions', async () => {
    const { defaultDataDir } = await import('../data/prepare.js');
    expect(path.relative(process.cwd(), defaultDataDir(smokeConfig().data))).toBe(path.join('data-cache', 'sotu-n24-v512-s1234-val0.1-test0.1'));
  });

  it('refuses unwritable, foreign and too-small outputs', async () => {
    fs.writeFileSync(tmp('afile'), 'x');
    await expectUserError(() => prepareData(smokeConfig(), { out: tmp('afile/sub') }), tmp('afile/sub'), /afile is a file, not a folder/);
    const foreign = tmp('foreign');
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, 'notes.md'), 'mine');
    await expectUserError(() => prepareData(smokeConfig(), { out: foreign }), foreign, /not prepared data/);
    expect(fs.readFileSync(path.join(foreign, 'notes.md'), 'utf8')).toBe('mine');

    const small = tmp('small');
    fs.mkdirSync(small);
    for (let i = 0; i < 4; i++) fs.writeFileSync(path.join(small, `${i}.txt`), `Document ${i}. ` + 'The quick brown fox jumps.');
    const tooBigVocab = smokeConfig({ corpus: small, validation_frac: 0.25, test_frac: 0.25 });
    await expectUserError(() => prepareData(tooBigVocab, { out: tmp('small-out') }), tooBigVocab.source, /vocab_size/);
    fs.copyFileSync(path.join(out, 'tokenizer.json'), tmp('given-tokenizer.json'));
    const cfg = smokeConfig({ corpus: small, validation_frac: 0.25, test_frac: 0.25, tokenizer: { vocab_size: 4096, path: tmp('given-tokenizer.json') } });
    await expectUserError(() => prepareData(cfg, { out: tmp('small-out') }), cfg.source, /seq_len/);
    expect(fs.existsSync(tmp('small-out'))).toBe(false);
    const roomy = await prepareData({ ...cfg, train: { ...cfg.train, seq_len: 8 } }, { out: tmp('small-out') });
    expect(roomy.manifest.tokenizer.trained).toBe(false);
    expect(roomy.manifest.splits.train.documents).toBe(2);
  });
});
