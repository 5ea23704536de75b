/**
 * Streaming policies: how a model runs over a stream that never ends. Each is a small
 * object fed one token at a time that returns the logits for the next one; the model does
 * not know which policy runs.
 *   sinks      S sink tokens + a ring of W recent ones, positions within the cache (StreamingLLM)
 *   window     the last W only (sinks with S = 0)
 *   dense      no eviction (grows without bound; only within the model's positions)
 *   recompute  re-run the first S + last W tokens from scratch for every token (the paper's
 *              "sliding window with re-computation": stable, quadratic per token)
 */
import * as tf from '@tensorflow/tfjs-core';
import { backendInfo } from '../core/backend.js';
import { UserError } from '../core/errors.js';
import { headDim } from '../model/config.js';
import { HOST_BUDGET_BYTES, hostMemory, hostStepBytes, hostWeightBytes, WASM_MAX_BYTES } from '../model/hostmem.js';
import { hasHostStep, hostStepOf, type HostKVCache } from '../model/hoststep.js';
import type { GPTNeoX } from '../model/neox.js';
import { DenseCache } from './cache/dense.js';
import { SinkCache } from './cache/sinks.js';

export const POLICIES = ['sinks', 'window', 'dense', 'recompute'] as const;
export type PolicyName = (typeof POLICIES)[number];

export interface CacheSpec {
  sinks: number;
  window: number;
  /** As the user wrote it, normalised: "S+W". */
  label: string;
}

/** Parses "S+W" (or "W" = "0+W"); bad strings are bad input naming the option. */
export function parseCache(text: string, field = '--cache'): CacheSpec {
  const m = /^\s*(?:(\d+)\s*\+\s*)?(\d+)\s*$/.exec(text);
  if (!m) {
    const why = /-\s*\d/.test(text) ? 'S and W cannot be negative' : 'not of the form S+W';
    throw new UserError(`"${text}" is not a cache size (${why}); write S+W with whole numbers, e.g. 4+252 (S sink tokens + W recent tokens)`, { field });
  }
  const sinks = m[1] === undefined ? 0 : Number(m[1]);
  const window = Number(m[2]);
  if (sinks + window < 1) throw new UserError(`"${text}": S+W must be at least 1`, { field });
  return { sinks, window, label: `${sinks}+${window}` };
}

/** Checks a cache against what the model can position and what the policy needs. */
export function checkCache(spec: CacheSpec, policy: PolicyName, maxPositions: number, field = '--cache'): void {
  if (policy === 'dense') return;
  if (spec.window < 1) throw new UserError(`${spec.label}: W must be at least 1 (the current token is always kept)`, { field });
  if (policy === 'window' && spec.sinks !== 0) throw new UserError(`${spec.label}: the window policy keeps no sinks; write 0+W or use --policy sinks`, { field });
  if (spec.sinks + spec.window > maxPositions) {
    throw new UserError(
      `${spec.label}: S+W = ${spec.sinks + spec.window} is more than the model's ${maxPositions} positions (max_position_embeddings); StreamingLLM does not extend the context window`,
      { field },
    );
  }
}

export const DECODE_PATHS = ['host', 'tensor'] as const;
export type DecodePath = (typeof DECODE_PATHS)[number];

/**
 * Where the cached policies run their one-token step: 'host' (model/hoststep.ts, typed
 * arrays, no kernel dispatch; the default on CPU) or 'tensor' (GPTNeoX.step through the
 * backend; the default on a GPU). SINKLM_DECODE=host|tensor overrides.
 *
 * Given the model and its cache (`keys` cached tokens in each of `batch` streams), a model
 * whose host step would not fit (over HOST_BUDGET_BYTES: Pythia-1B and up; or more than the
 * 4 GiB WebAssembly memory has left beside the other models' host steps) runs on the
 * tensor step, and stderr says so once.
 */
export function decodePath(model?: GPTNeoX, keys?: number, batch = 1): DecodePath {
  const env = process.env.SINKLM_DECODE;
  if (env !== undefined && env !== '') {
    if (!(DECODE_PATHS as readonly string[]).includes(env)) throw new UserError(`must be one of ${DECODE_PATHS.join(', ')} (got "${env}")`, { field: 'SINKLM_DECODE' });
    return env as DecodePath;
  }
  // On WebGPU the weights live on the device (and Node has no synchronous reads there).
  if (backendInfo().gpu || backendInfo().backend === 'webgpu') return 'tensor';
  if (model) {
    const why = hostStepTooBig(model, keys ?? model.config.max_position_embeddings, batch);
    if (why) {
      noteOnce(`sinklm: streaming on the tensor step: ${why} (SINKLM_DECODE=host forces the host step)`);
      return 'tensor';
    }
  }
  return 'host';
}

/** Why this model's host step should not be made, or null when it fits. */
export function hostStepTooBig(model: GPTNeoX, keys: number, batch = 1): string | null {
  const c = model.config;
  const need = hostStepBytes(c, keys, batch);
  const mb = (b: number) => `${Math.ceil(b / 2 ** 20)} MB`;
  const shape = `${c.num_hidden_layers} x ${c.hidden_size}, ${batch > 1 ? `${batch} streams of ` : ''}${keys} cached tokens`;
  if (need > HOST_BUDGET_BYTES) return `the host step of this model (${shape}) would need ${mb(need)} of WebAssembly memory, over its ${mb(HOST_BUDGET_BYTES)} budget`;
  // Weights already copied (an earlier policy on this model) are already counted as used.
  const held = hasHostStep(model) ? hostWeightBytes(c) : 0;
  const free = WASM_MAX_BYTES - hostMemory().used;
  if (need - held > free) return `the host step of this model (${shape}) needs ${mb(need - held)} more WebAssembly memory and only ${mb(free)} of the 4 GiB is left`;
  return null;
}

const noted = new Set<string>();
function noteOnce(line: string): void {
  if (noted.has(line)) return;
  noted.add(line);
  process.stderr.write(line + '\n');
}

/** One step of the model over a cache, on the chosen path: logits [B * n, V]. */
export function stepOn(path: DecodePath, model: GPTNeoX, ids: number[], cache: (DenseCache | SinkCache) & HostKVCache): tf.Tensor2D {
  if (path === 'tensor') return model.step(ids, cache);
  const logits = hostStepOf(model).step(ids, cache);
  return tf.tensor2d(logits, [ids.length, model.config.vocab_size]);
}

export interface StreamPolicy {
  readonly name: PolicyName;
  /** Where its step runs (recompute's full forwards always run on the backend). */
  readonly decode: DecodePath;
  readonly spec: CacheSpec;
  /** Feeds one token; returns the logits [1, V] for the next (the caller disposes them). */
  feed(token: number): tf.Tensor2D;
  /** Keys the last token attended to. */
  readonly kvTokens: number;
  dispose(): void;
}

class CachedPolicy implements StreamPolicy {
  private seen = 0;
  readonly decode: DecodePath;
  constructor(
    readonly name: PolicyName,
    readonly spec: CacheSpec,
    private readonly model: GPTNeoX,
    private readonly cache: DenseCache | SinkCache,
  ) {
    // A dense cache's room doubles as it grows: up to twice the model's positions.
    const keys = name === 'dense' ? 2 * model.config.max_position_embeddings : spec.sinks + spec.window;
    this.decode = decodePath(model, keys);
  }
  feed(token: number): tf.Tensor2D {
    if (this.name === 'dense' && this.seen >= this.model.config.max_position_embeddings) {
      throw new UserError(
        `dense attention cannot go past the model's ${this.model.config.max_position_embeddings} positions; cut the stream with --max-tokens`,
        { field: '--policy dense' },
      );
    }
    this.seen++;
    return stepOn(this.decode, this.model, [token], this.cache);
  }
  get kvTokens(): number {
    return this.name === 'dense' ? this.cache.size : Math.min(this.seen, (this.cache as SinkCache).capacity);
  }
  dispose(): void {
    this.cache.dispose();
  }
}

class RecomputePolicy implements StreamPolicy {
  readonly name = 'recompute' as const;
  readonly decode = 'tensor' as const;
  private readonly first: number[] = [];
  private recent: number[] = [];
  private last = 0;
  constructor(
    readonly spec: CacheSpec,
    private readonly model: GPTNeoX,
  ) {}
  feed(token: number): tf.Tensor2D {
    if (this.first.length < this.spec.sinks) this.first.push(token);
    else {
      this.recent.push(token);
      if (this.recent.length > 2 * this.spec.window) this.recent = this.recent.slice(-this.spec.window);
    }
    const ids = [...this.first, ...this.recent.slice(-this.spec.window)];
    this.last = ids.length;
    return tf.tidy(() => this.model.forwardLast(tf.tensor2d(ids, [1, ids.length], 'int32')));
  }
  get kvTokens(): number {
    return this.last;
  }
  dispose(): void {}
}

/**
 * Several sinks/window caches of the same capacity S+W over one stream, stepped as one
 * batch: feed returns logits [B, V], row b for spec b. The grid's caches (0+W, 1+(W-1),
 * ...) share their capacity, so the whole grid costs one stream's steps.
 */
export function makeSinkBatch(model: GPTNeoX, specs: CacheSpec[]): { feed(token: number): tf.Tensor2D; dispose(): void; readonly kvTokens: number; readonly decode: DecodePath } {
  const c = model.config;
  const shape = { layers: c.num_hidden_layers, heads: c.num_attention_heads, headDim: headDim(c) };
  const cache = new SinkCache(
    specs.map((s) => ({ sinks: s.sinks, window: s.window })),
    0,
    shape,
  );
  let seen = 0;
  const decode = decodePath(model, cache.capacity, specs.length);
  return {
    decode,
    feed(token: number) {
      seen++;
      return stepOn(decode, model, new Array<number>(specs.length).fill(token), cache);
    },
    get kvTokens() {
      return Math.min(seen, cache.capacity);
    },
    dispose: () => cache.dispose(),
  };
}

export function makePolicy(model: GPTNeoX, name: PolicyName, spec: CacheSpec): StreamPolicy {
  const c = model.config;
  if (name === 'recompute') return new RecomputePolicy(spec, model);
  const shape = { layers: c.num_hidden_layers, heads: c.num_attention_heads, headDim: headDim(c) };
  if (name === 'dense') return new CachedPolicy(name, spec, model, new DenseCache(shape));
  return new CachedPolicy(name, spec, model, new SinkCache(spec.sinks, spec.window, shape));
}
