/**
 * Multi-round streaming generation (StreamingLLM's streaming chat): one `sinks` cache for
 * the whole conversation, never reset. Each round feeds the user's turn token by token,
 * then samples the reply token by token; prompt and reply tokens alike go into the cache,
 * so the next round continues the same stream. The cache holds at most S + W keys however
 * long the conversation runs.
 */
import { backendInfo } from '../core/backend.js';
import { UserError } from '../core/errors.js';
import { readUtf8File } from '../core/fsutil.js';
import { progressBar } from '../core/progress.js';
import { checkCache, makePolicy, type CacheSpec, type StreamPolicy } from './policy.js';
import { makeSampler, type SamplingOptions } from './sampling.js';
import type { LoadedCheckpoint } from './text.js';

export interface GenerateOptions {
  cache: CacheSpec;
  /** Most tokens sampled per round (fewer when the eos token comes first). */
  maxNewTokens: number;
  sampling: SamplingOptions;
  /** Stop a round at the tokenizer's eos token, when it has one (default true). */
  stopAtEos?: boolean;
  /** Text put before every turn after the first, so a turn does not run on from the last reply. */
  separator?: string;
  /** Progress bar over rounds on stderr (for --json runs, where nothing else shows). */
  progress?: boolean;
}

export interface GenerateRound {
  prompt: string;
  completion: string;
  /** Tokens fed for the turn (separator included). */
  prompt_tokens: number;
  /** Tokens sampled (the eos that ended the round included; it went into the cache too). */
  tokens: number;
  /** Wall time per sampled token: one cached step plus the draw. */
  ms_per_token: number;
  /** Keys the round's last token attended to: grows to S + W and stays there. */
  kv_tokens: number;
}

export interface GenerateResult {
  rounds: GenerateRound[];
  cache: string;
  /** Most keys any token attended to: never more than S + W. */
  kv_tokens_max: number;
  /** Every token that went through the model: sink token, turns and replies. */
  tokens_fed: number;
  backend: string;
}

/** Text as it is produced: the turn once when the round starts, then the reply in pieces. */
export type OnText = (text: string, where: { round: number; kind: 'prompt' | 'completion' }) => void;

export const DEFAULT_SEPARATOR = '\n\n';

/**
 * User turns from a file: JSON lines with a "prompt" (or "text") field, or else one turn
 * per non-blank line. An empty file is bad input.
 */
export function readPrompts(file: string): string[] {
  // The same rule as --text: invalid UTF-8 is refused, not silently replaced.
  return parsePrompts(readUtf8File(file), file);
}

export function parsePrompts(text: string, file = 'stdin'): string[] {
  const lines = text.split(/\r?\n/).map((l, i) => ({ l, n: i + 1 })).filter(({ l }) => l.trim() !== '');
  if (lines.length === 0) throw new UserError('has no prompts (one user turn per line, or JSON lines with a "prompt" field)', { file });
  // JSONL only when every line is a JSON object; a plain-text turn may well start with "{".
  const records = lines.map(({ l }) => {
    try {
      const v: unknown = JSON.parse(l);
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  });
  if (records.some((r) => r === null)) return lines.map(({ l }) => l);
  return records.map((r, i) => {
    const p = r!.prompt ?? r!.text;
    if (typeof p !== 'string' || p.trim() === '') {
      throw new UserError(`line ${lines[i]!.n}: needs a non-empty string "prompt" (or "text") field`, { file });
    }
    return p;
  });
}

/**
 * Prints a reply as it grows without splitting characters: decode all the round's ids so
 * far and hand on the new suffix, holding back while the text ends in an unfinished
 * multi-byte sequence (decoded as U+FFFD).
 */
export class StreamDecoder {
  private ids: number[] = [];
  private shown = '';
  constructor(private readonly decode: (ids: number[]) => string) {}
  push(id: number): string {
    this.ids.push(id);
    const text = this.decode(this.ids);
    if (text.endsWith('\uFFFD')) return '';
    const delta = text.startsWith(this.shown) ? text.slice(this.shown.length) : text.slice(Math.min(this.shown.length, text.length));
    this.shown = text;
    return delta;
  }
  /** The whole reply, and whatever was still held back (an unfinished character at the end). */
  finish(): { text: string; rest: string } {
    const text = this.decode(this.ids);
    return { text, rest: text.startsWith(this.shown) ? text.slice(this.shown.length) : '' };
  }
}

function ban(logits: Float32Array, ids: number[]): Float32Array {
  for (const id of ids) logits[id] = -Infinity;
  return logits;
}

/** Feeds one token and returns the next-token logits as a plain array (read asynchronously: WebGPU has no other way). */
async function feed(policy: StreamPolicy, token: number): Promise<Float32Array> {
  const logits = policy.feed(token);
  try {
    return (await logits.data()) as Float32Array;
  } finally {
    logits.dispose();
  }
}

/**
 * Runs the conversation. `prompts` may be an async iterable (e.g. lines typed at a
 * terminal): each turn is answered before the next one is read.
 */
export async function generate(
  ck: LoadedCheckpoint,
  prompts: Iterable<string> | AsyncIterable<string>,
  opts: GenerateOptions,
  onText?: OnText,
): Promise<GenerateResult> {
  const { model, tokenizer } = ck;
  const c = model.config;
  checkCache(opts.cache, 'sinks', c.max_position_embeddings);
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new UserError('must be a whole number >= 0', { field: '--max-new-tokens' });
  if (Array.isArray(prompts) && prompts.length === 0) throw new UserError('no prompts given', { field: '--prompts' });
  const sampler = makeSampler(opts.sampling);
  const eos = opts.stopAtEos === false ? null : tokenizer.eosTokenId;
  const separator = opts.separator ?? DEFAULT_SEPARATOR;
  // Never sampled: the sink token (a placeholder with no text, only ever at position 0) and
  // embedding rows past the tokenizer's vocabulary (padding, as in Pythia), which decode to nothing.
  const banned: number[] = [];
  for (let id = tokenizer.vocabSize; id < c.vocab_size; id++) banned.push(id);
  if (tokenizer.sinkTokenId < tokenizer.vocabSize) banned.push(tokenizer.sinkTokenId);
  const policy = makePolicy(model, 'sinks', opts.cache);
  const total = Array.isArray(prompts) ? prompts.length : 0;
  const bar = progressBar({ total, unit: 'round', label: `generate ${opts.cache.label}`, enabled: total > 0 && opts.progress });
  const rounds: GenerateRound[] = [];
  let kvMax = 0;
  let fed = 0;
  const step = async (token: number): Promise<Float32Array> => {
    const logits = await feed(policy, token);
    fed++;
    kvMax = Math.max(kvMax, policy.kvTokens);
    return logits;
  };
  try {
    // A sink-token model saw its sink token at the start of every sample: once per stream.
    let logits: Float32Array | null = c.sink_mode === 'token' ? await step(c.sink_token_id!) : null;
    let r = -1;
    for await (const prompt of prompts) {
      r++;
      onText?.(prompt, { round: r, kind: 'prompt' });
      const ids = tokenizer.encode(r === 0 ? prompt : separator + prompt);
      if (ids.length === 0) throw new UserError(`prompt ${r + 1} gives no tokens`, { field: '--prompts' });
      for (const id of ids) logits = await step(id);
      const detok = new StreamDecoder((x) => tokenizer.decode(x));
      let sampled = 0;
      const started = performance.now();
      for (; sampled < opts.maxNewTokens; sampled++) {
        const next = sampler.next(banned.length ? ban(logits!, banned) : logits!);
        logits = await step(next);
        if (next === eos) {
          sampled++;
          break;
        }
        const delta = detok.push(next);
        if (delta) onText?.(delta, { round: r, kind: 'completion' });
      }
      const ms = performance.now() - started;
      const done = detok.finish();
      if (done.rest) onText?.(done.rest, { round: r, kind: 'completion' });
      rounds.push({ prompt, completion: done.text, prompt_tokens: ids.length, tokens: sampled, ms_per_token: sampled ? ms / sampled : 0, kv_tokens: policy.kvTokens });
      bar.update(r + 1, { kv: kvMax });
      // Lets a pending signal or a slow stdout through between rounds.
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (r < 0) throw new UserError('no prompts given', { field: '--prompts' });
  } finally {
    bar.stop();
    policy.dispose();
  }
  return { rounds, cache: opts.cache.label, kv_tokens_max: kvMax, tokens_fed: fed, backend: backendInfo().backend };
}

