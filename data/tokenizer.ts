/**
 * Where a token's journey starts: text <-> ids, from a HuggingFace tokenizer.json.
 *
 * Encoding and decoding are synchronous (streaming decodes one token at a time), so they run
 * on the pure-JS `@huggingface/tokenizers`; training and bulk encoding use the native
 * `tokenizers` binding (bpe.ts) over the same file, and a test checks both give the same ids.
 */
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { UserError } from '../core/errors.js';
import { readJsonFile } from '../core/fsutil.js';
import { EOS_TOKEN, SINK_TOKEN, trainBpeFile } from './bpe.js';

export { EOS_TOKEN, SINK_TOKEN } from './bpe.js';

export interface TextTokenizer {
  /** Text to ids; no special tokens are added. */
  encode(text: string): number[];
  /** Ids to text; the sink token is a placeholder with no text and decodes to nothing. */
  decode(ids: number[]): string;
  /** Number of ids the tokenizer itself has (the sink may be one past it, see sinkTokenId). */
  vocabSize: number;
  /**
   * Id of `<|sink|>`; for a tokenizer without it (e.g. Pythia's) this is `vocabSize`, one past
   * the end, and the model adds one embedding row for it.
   */
  sinkTokenId: number;
  /** Id of `<|endoftext|>`, the document separator, when the tokenizer has it. */
  eosTokenId: number | null;
  /** Absolute path of the tokenizer.json it came from. */
  path: string;
}

interface TokenizerFile {
  model?: { vocab?: Record<string, number> | [string, number][] };
  added_tokens?: { id: number; content: string }[];
}

/** Every id the file defines: the model's vocabulary plus the added tokens. */
function tokenTable(json: TokenizerFile): Map<string, number> {
  const table = new Map<string, number>();
  const vocab = json.model?.vocab;
  if (Array.isArray(vocab)) vocab.forEach(([tok], id) => table.set(tok, id));
  else if (vocab) for (const [tok, id] of Object.entries(vocab)) table.set(tok, id);
  for (const t of json.added_tokens ?? []) table.set(t.content, t.id);
  return table;
}

/** Loads a HuggingFace tokenizer.json (one this package trained, or e.g. Pythia's). */
export async function loadTokenizer(file: string): Promise<TextTokenizer> {
  const abs = path.resolve(file);
  const json = readJsonFile(abs);
  if (typeof json !== 'object' || json === null || !('model' in json)) {
    throw new UserError('not a HuggingFace tokenizer.json (no "model")', { file: abs });
  }
  const table = tokenTable(json as TokenizerFile);
  if (table.size === 0) throw new UserError('the tokenizer has an empty vocabulary', { file: abs, field: 'model.vocab' });
  let lib: Tokenizer;
  try {
    lib = new Tokenizer(json, { clean_up_tokenization_spaces: false });
  } catch (e) {
    throw new UserError(`cannot load this tokenizer (${(e as Error).message})`, { file: abs });
  }
  let vocabSize = 0;
  for (const id of table.values()) vocabSize = Math.max(vocabSize, id + 1);
  const sinkTokenId = table.get(SINK_TOKEN) ?? vocabSize;
  const eosTokenId = table.get(EOS_TOKEN) ?? null;
  return {
    vocabSize,
    sinkTokenId,
    eosTokenId,
    path: abs,
    encode: (text) => lib.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) =>
      lib.decode(
        ids.filter((id) => id !== sinkTokenId && id >= 0 && id < vocabSize),
        { skip_special_tokens: false, clean_up_tokenization_spaces: false },
      ),
  };
}

/**
 * Trains a byte-level BPE of exactly `vocabSize` tokens on `texts` (`<|endoftext|>` = 0,
 * `<|sink|>` = 1), writes it to `outPath` and loads it.
 */
export async function trainTokenizer(texts: string[], vocabSize: number, outPath: string): Promise<TextTokenizer> {
  const abs = path.resolve(outPath);
  await trainBpeFile(texts, vocabSize, abs);
  return loadTokenizer(abs);
}
