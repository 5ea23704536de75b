/** From a checkpoint and a text file to the token stream a model sees. */
import { ensureBackend } from '../core/backend.js';
import { UserError } from '../core/errors.js';
import { readUtf8File } from '../core/fsutil.js';
import { checkInputDir } from '../core/outpath.js';
import { loadTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import { checkpointTokenizerPath, loadModel } from '../model/checkpoint.js';
import type { GPTNeoX } from '../model/neox.js';

export interface LoadedCheckpoint {
  dir: string;
  model: GPTNeoX;
  tokenizer: TextTokenizer;
}

export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  checkInputDir(dir, 'checkpoint');
  // Library users call this first: the model's tensors need a backend (the automatic choice).
  await ensureBackend();
  const model = loadModel(dir);
  const tokenizer = await loadTokenizer(checkpointTokenizerPath(dir));
  const needed = tokenizer.vocabSize;
  if (needed > model.config.vocab_size) {
    model.dispose();
    throw new UserError(`tokenizer.json has ${needed} tokens but the model only ${model.config.vocab_size} (config.json vocab_size): they do not belong together`, { file: dir });
  }
  const sink = model.config.sink_token_id;
  if (model.config.sink_mode === 'token' && sink !== tokenizer.sinkTokenId) {
    model.dispose();
    throw new UserError(`config.json says sink_token_id ${sink} but tokenizer.json has <|sink|> at ${tokenizer.sinkTokenId}`, { file: dir });
  }
  return { dir, model, tokenizer };
}

export function readText(file: string): string {
  const text = readUtf8File(file);
  if (!text.trim()) throw new UserError('is empty', { file });
  return text;
}

/**
 * The last text each tokenizer encoded through textStream, with its ids. The grid, its
 * reference rows and the attention statistics all stream one text through one model's
 * tokenizer (validate: ~12 encodes of 0.4 s of the 460 KB test text otherwise).
 */
const lastEncoded = new WeakMap<TextTokenizer, { text: string; ids: readonly number[] }>();

/** tokenizer.encode(text), from the last call's result when the text is the same. */
function encodeOnce(tokenizer: TextTokenizer, text: string): readonly number[] {
  const hit = lastEncoded.get(tokenizer);
  if (hit && hit.text === text) return hit.ids;
  const ids = tokenizer.encode(text);
  lastEncoded.set(tokenizer, { text, ids });
  return ids;
}

/**
 * The stream of a text for a model: its tokens, preceded by the sink token when the model
 * was pre-trained with one (every sample began with it, so every stream does).
 * `maxTextTokens` cuts the text, so every model sees the same text tokens.
 */
export function textStream(ck: LoadedCheckpoint, text: string, maxTextTokens?: number, file?: string): { tokens: number[]; prefix: number } {
  let ids = encodeOnce(ck.tokenizer, text);
  if (maxTextTokens !== undefined) ids = ids.slice(0, maxTextTokens);
  if (ids.length < 2) throw new UserError(`gives ${ids.length} token(s); at least 2 are needed to measure anything`, { file });
  const c = ck.model.config;
  const prefix = c.sink_mode === 'token' ? [c.sink_token_id!] : [];
  return { tokens: [...prefix, ...ids], prefix: prefix.length };
}
