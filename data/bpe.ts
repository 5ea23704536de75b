/**
 * Training a byte-level BPE of an exact vocabulary size with HuggingFace `tokenizers`.
 *
 * The node binding's `train()` always runs the model's default trainer (30,000 tokens) and
 * ignores any requested size. BPE learns its merges greedily, one at a time, so the first K
 * merges of that run are exactly the merges a run stopped at K would have learned: we train
 * once, keep that prefix, and write a tokenizer.json over the full 256-byte alphabet (so any
 * text encodes, even bytes the training split never had) with the two special tokens first.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { Tokenizer as NativeTokenizer } from 'tokenizers';
import { UserError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';

/** Document separator, id 0 in a trained tokenizer (the name Pythia uses for it). */
export const EOS_TOKEN = '<|endoftext|>';
/** The attention-sink placeholder, id 1 in a trained tokenizer. */
export const SINK_TOKEN = '<|sink|>';
const SPECIAL_TOKENS = [EOS_TOKEN, SINK_TOKEN];

/** Merges the default trainer learns at most: enough for any vocabulary up to ~29,000. */
const DEFAULT_TRAINER_VOCAB = 30_000;

/**
 * GPT-2's byte-to-character table, in byte order: byte-level BPE works on these printable
 * stand-ins so that every byte is one symbol and whitespace survives pre-tokenization.
 */
export function byteLevelAlphabet(): string[] {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const out: string[] = [];
  let shifted = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(printable(b) ? b : 256 + shifted++));
  return out;
}

const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };

type Merge = [string, string];

/** A tokenizer.json (HF format) for a byte-level BPE with the given vocabulary and merges. */
function tokenizerJson(vocab: Record<string, number>, merges: Merge[]): object {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: BYTE_LEVEL,
    post_processor: null,
    decoder: BYTE_LEVEL,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

function asMerge(m: unknown): Merge {
  if (Array.isArray(m) && m.length === 2) return [String(m[0]), String(m[1])];
  if (typeof m === 'string') {
    const i = m.indexOf(' ', 1);
    return [m.slice(0, i), m.slice(i + 1)];
  }
  throw new Error(`unexpected merge entry ${JSON.stringify(m)} in the trainer's output`);
}

/**
 * Keeps merges in learned order until the vocabulary (specials + bytes + merged tokens)
 * reaches `vocabSize`; ids are dense: specials, then the 256 bytes, then merges in order.
 */
export function truncateMerges(learned: unknown[], vocabSize: number): { vocab: Record<string, number>; merges: Merge[] } {
  const vocab: Record<string, number> = {};
  let next = 0;
  for (const t of [...SPECIAL_TOKENS, ...byteLevelAlphabet()]) vocab[t] = next++;
  const merges: Merge[] = [];
  for (const m of learned) {
    if (next >= vocabSize) break;
    const merge = asMerge(m);
    merges.push(merge);
    // The trainer can reach one token by two different merges; it keeps one id for it.
    const token = merge[0] + merge[1];
    if (!(token in vocab)) vocab[token] = next++;
  }
  return { vocab, merges };
}

/**
 * Runs the library's trainer in a child process: it prints progress to file descriptor 1,
 * which must stay clean for `--json`, and it blocks its thread for the whole run.
 */
async function runTrainer(work: string, corpusFile: string, outFile: string): Promise<void> {
  const init = path.join(work, 'init.json');
  fs.writeFileSync(init, JSON.stringify(tokenizerJson({}, [])));
  const binding = createRequire(import.meta.url).resolve('tokenizers');
  const script = [
    "const fs = require('fs');",
    'const [binding, init, corpus, out] = process.argv.slice(1);',
    "const tok = require(binding).Tokenizer.fromString(fs.readFileSync(init, 'utf8'));",
    'tok.train([corpus]);',
    'tok.save(out);',
  ].join('\n');
  const child = spawn(process.execPath, ['-e', script, binding, init, corpusFile, outFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (code !== 0) throw new Error(`tokenizer training failed (exit ${code}): ${stderr.trim()}`);
}

/**
 * Trains on `texts` and writes `outPath` (tokenizer.json) with exactly `vocabSize` tokens.
 * Throws a UserError when the texts are too small to learn that many merges.
 */
export async function trainBpeFile(texts: string[], vocabSize: number, outPath: string): Promise<void> {
  const minimum = SPECIAL_TOKENS.length + 256;
  if (vocabSize <= minimum) {
    throw new UserError(`must be more than ${minimum} (2 special tokens + 256 bytes)`, { field: 'data.tokenizer.vocab_size' });
  }
  if (vocabSize > DEFAULT_TRAINER_VOCAB - 256) {
    throw new UserError(`at most ${DEFAULT_TRAINER_VOCAB - 256} can be trained here; use data.tokenizer.path for a larger tokenizer`, {
      field: 'data.tokenizer.vocab_size',
    });
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-bpe-'));
  try {
    const corpusFile = path.join(work, 'train.txt');
    fs.writeFileSync(corpusFile, texts.join('\n'));
    const full = path.join(work, 'full.json');
    await runTrainer(work, corpusFile, full);
    const learned = (JSON.parse(fs.readFileSync(full, 'utf8')) as { model: { merges: unknown[] } }).model.merges;
    const { vocab, merges } = truncateMerges(learned, vocabSize);
    const size = Object.keys(vocab).length;
    if (size < vocabSize) {
      throw new UserError(`the training split only yields ${size} tokens, fewer than vocab_size ${vocabSize}: use a larger corpus or a smaller vocabulary`, {
        field: 'data.tokenizer.vocab_size',
      });
    }
    // Round-trip through the library so the file is in its own canonical format.
    const tok = NativeTokenizer.fromString(JSON.stringify(tokenizerJson(vocab, merges)));
    const tmp = path.join(work, 'tokenizer.json');
    tok.save(tmp);
    writeFileAtomic(outPath, fs.readFileSync(tmp));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Encodes many documents with the native library (parallel, a few seconds for ~10 MB);
 * gives the same ids as TextTokenizer.encode, which is synchronous but slower.
 */
export async function encodeDocuments(
  tokenizerFile: string,
  texts: string[],
  onProgress?: (done: number) => void,
): Promise<Int32Array[]> {
  const tok = NativeTokenizer.fromFile(tokenizerFile);
  const out: Int32Array[] = [];
  const chunk = Math.max(32, Math.ceil(texts.length / 4));
  for (let i = 0; i < texts.length; i += chunk) {
    const encs = await tok.encodeBatch(texts.slice(i, i + chunk), { addSpecialTokens: false });
    for (const e of encs) out.push(Int32Array.from(e.getIds()));
    onProgress?.(out.length);
  }
  return out;
}
