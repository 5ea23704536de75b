/**
 * Streaming perplexity, token by token: for every cache config, feed the stream through a
 * policy and record the loss of predicting each next text token. Every model is scored on
 * the same text tokens (the 2nd onwards), whether or not a sink token leads its stream.
 */
import { backendInfo } from '../core/backend.js';
import { hostMemory } from '../model/hostmem.js';
import { progressBar } from '../core/progress.js';
import { checkCache, makePolicy, makeSinkBatch, type CacheSpec, type DecodePath, type PolicyName } from './policy.js';
import type { LoadedCheckpoint } from './text.js';

export interface StreamRow {
  policy: PolicyName;
  cache: string;
  tokens: number;
  ppl: number;
  nll_mean: number;
  ms_per_token: number;
  kv_tokens_max: number;
  rss_mb_max: number;
  backend: string;
  /** Where the cached step ran: 'host' (typed arrays + SIMD WebAssembly) or 'tensor' (backend kernels). */
  decode: DecodePath;
  /** Set on dense rows: the cache size S+W does not bound them. */
  note?: string;
}

/**
 * Tokens fed before the clock starts for ms_per_token: the first steps pay one-time costs
 * (kernel set-up, WebAssembly compilation, buffer allocation) that no later token pays.
 * Streams shorter than this are timed whole.
 */
export const WARMUP_TOKENS = 8;

export const DENSE_NOTE = 'dense keeps every token: the cache size does not apply (kv_tokens_max is what it held)';

/** ms per token over the tokens fed after the warm-up (all of them for a short stream). */
function msPerToken(started: number, warm: number | undefined, fed: number): number {
  const now = performance.now();
  return warm === undefined ? (now - started) / fed : (now - warm) / (fed - WARMUP_TOKENS);
}

export interface StreamRun {
  row: StreamRow;
  /** NLL of each predicted token, in stream order. */
  nll: Float64Array;
}

/** log-sum-exp(row) - row[target], in float64 (the reference NllScorer is tested against). */
export function nllOf(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  return max + Math.log(sum) - logits[target]!;
}

/**
 * The NLL of each row of a logits block, log-sum-exp(row) - row[target], through the SIMD
 * kernels (float32 exp, float64 sum: nllOf to ~1e-7): a stream scores B rows of V logits per
 * token, and Math.exp over them was a tenth of validate. Holds one block of host memory.
 */
export class NllScorer {
  private readonly mem = hostMemory();
  private at = 0;
  private size = 0;

  /** NLLs of the rows of `logits` ([rows, V] flat) for their targets, into out[0..rows). */
  rows(logits: Float32Array, targets: ArrayLike<number>, out: Float64Array): void {
    const rows = targets.length;
    const V = logits.length / rows;
    if (logits.length > this.size) {
      this.dispose();
      this.at = this.mem.alloc(logits.length);
      this.size = logits.length;
    }
    this.mem.f32(this.at, logits.length).set(logits);
    for (let r = 0; r < rows; r++) out[r] = this.mem.logSumExp(this.at + 4 * r * V, V) - logits[r * V + targets[r]!]!;
  }

  dispose(): void {
    if (this.size) this.mem.release(this.at);
    this.size = 0;
  }
}

export async function streamEval(
  ck: LoadedCheckpoint,
  stream: { tokens: number[]; prefix: number },
  policy: PolicyName,
  spec: CacheSpec,
  opts: { progress?: boolean; label?: string } = {},
): Promise<StreamRun> {
  const model = ck.model;
  checkCache(spec, policy, model.config.max_position_embeddings);
  const { tokens, prefix } = stream;
  // Predictions of text tokens 1..n-1: fed token t, predict t+1, from t = prefix on.
  const first = prefix;
  const count = tokens.length - 1 - first;
  const nll = new Float64Array(count);
  const p = makePolicy(model, policy, spec);
  const scorer = new NllScorer();
  const one = new Float64Array(1);
  const bar = progressBar({ total: count, unit: 'tok', label: opts.label ?? `${policy} ${spec.label}`, enabled: opts.progress });
  let kvMax = 0;
  let rssMax = process.memoryUsage().rss;
  let sum = 0;
  const started = performance.now();
  let warm: number | undefined;
  try {
    for (let t = 0; t < tokens.length - 1; t++) {
      if (t === WARMUP_TOKENS) warm = performance.now();
      const logits = p.feed(tokens[t]!);
      kvMax = Math.max(kvMax, p.kvTokens);
      if (t >= first) {
        // One read a token, asynchronous: a GPU backend (WebGPU) has no synchronous one.
        scorer.rows((await logits.data()) as Float32Array, [tokens[t + 1]!], one);
        nll[t - first] = one[0]!;
        sum += one[0]!;
      }
      logits.dispose();
      if ((t & 255) === 0) {
        rssMax = Math.max(rssMax, process.memoryUsage().rss);
        bar.update(Math.max(0, t - first), { ppl: t > first ? Math.exp(sum / (t - first + 1)).toFixed(2) : '-' });
      }
    }
  } finally {
    bar.stop();
    p.dispose();
    scorer.dispose();
  }
  const ms = msPerToken(started, warm, tokens.length - 1);
  rssMax = Math.max(rssMax, process.memoryUsage().rss);
  const mean = sum / count;
  return {
    row: {
      policy,
      cache: spec.label,
      tokens: count,
      ppl: Math.exp(mean),
      nll_mean: mean,
      ms_per_token: ms,
      kv_tokens_max: kvMax,
      rss_mb_max: rssMax / 2 ** 20,
      backend: backendInfo().backend,
      decode: p.decode,
      ...(policy === 'dense' ? { note: DENSE_NOTE } : {}),
    },
    nll,
  };
}

/**
 * streamEval for several sinks caches of one capacity at once (one batched step per token).
 * Each row's ms_per_token is its share of the batched step.
 */
export async function streamEvalMany(
  ck: LoadedCheckpoint,
  stream: { tokens: number[]; prefix: number },
  specs: CacheSpec[],
  opts: { progress?: boolean; label?: string } = {},
): Promise<StreamRun[]> {
  const model = ck.model;
  for (const s of specs) checkCache(s, 'sinks', model.config.max_position_embeddings);
  const { tokens, prefix } = stream;
  const count = tokens.length - 1 - prefix;
  const B = specs.length;
  const nll = specs.map(() => new Float64Array(count));
  const sums = new Float64Array(B);
  const p = makeSinkBatch(model, specs);
  const scorer = new NllScorer();
  const targets = new Int32Array(B);
  const row = new Float64Array(B);
  const bar = progressBar({ total: count, unit: 'tok', label: opts.label ?? specs.map((s) => s.label).join(' '), enabled: opts.progress });
  let kvMax = 0;
  let rssMax = process.memoryUsage().rss;
  const started = performance.now();
  let warm: number | undefined;
  try {
    for (let t = 0; t < tokens.length - 1; t++) {
      if (t === WARMUP_TOKENS) warm = performance.now();
      const logits = p.feed(tokens[t]!);
      kvMax = Math.max(kvMax, p.kvTokens);
      if (t >= prefix) {
        targets.fill(tokens[t + 1]!);
        scorer.rows((await logits.data()) as Float32Array, targets, row);
        for (let b = 0; b < B; b++) {
          nll[b]![t - prefix] = row[b]!;
          sums[b]! += row[b]!;
        }
      }
      logits.dispose();
      if ((t & 255) === 0) {
        rssMax = Math.max(rssMax, process.memoryUsage().rss);
        bar.update(Math.max(0, t - prefix), {});
      }
    }
  } finally {
    bar.stop();
    p.dispose();
    scorer.dispose();
  }
  const ms = msPerToken(started, warm, tokens.length - 1);
  rssMax = Math.max(rssMax, process.memoryUsage().rss);
  return specs.map((spec, b) => {
    const mean = sums[b]! / count;
    return {
      row: {
        policy: 'sinks' as PolicyName,
        cache: spec.label,
        tokens: count,
        ppl: Math.exp(mean),
        nll_mean: mean,
        ms_per_token: ms / B,
        kv_tokens_max: kvMax,
        rss_mb_max: rssMax / 2 ** 20,
        backend: backendInfo().backend,
        decode: p.decode,
      },
      nll: nll[b]!,
    };
  });
}
