/**
 * The exact batches the trainer sees: seeded random windows of the training stream, as
 * row-major [B, T] arrays. With a sink token (sink_mode `token`) every sample starts with
 * it, the paper's learnable placeholder, followed by T-1 text tokens; the sink is never a
 * target, since predicting it is meaningless.
 *
 * The RNG state and the count of batches drawn are the sampler's whole state: saved with a
 * checkpoint, they make a resumed run draw exactly the batches an uninterrupted one would.
 */
import seedrandom from 'seedrandom';
import { UserError } from '../core/errors.js';

export interface SamplerOptions {
  /** The split as one stream (readSplitTokens). */
  tokens: Int32Array;
  seqLen: number;
  batchSize: number;
  seed: number;
  /** The sink id when the model uses a sink token, else null. */
  sinkTokenId: number | null;
}

/** One batch, each array batchSize * seqLen long, row-major [B, T]. */
export interface Batch {
  input: Int32Array;
  /** target[b, t] is the token that follows input[b, t]. */
  target: Int32Array;
  /** 1 where the loss counts, 0 where it does not. */
  mask: Float32Array;
}

/** JSON-serialisable: goes into a checkpoint's training state. */
export interface SamplerState {
  version: 1;
  seed: number;
  seq_len: number;
  batch_size: number;
  sink_token_id: number | null;
  stream_tokens: number;
  /** Batches drawn so far. */
  batches: number;
  /** seedrandom's ARC4 state. */
  rng: seedrandom.State.Arc4;
}

/** Text tokens one sample reads: T+1 (inputs and shifted targets), or T after a sink. */
function textSpan(seqLen: number, sink: number | null): number {
  return sink === null ? seqLen + 1 : seqLen;
}

function checkFits(tokens: Int32Array, seqLen: number, sink: number | null): number {
  const need = textSpan(seqLen, sink);
  if (!Number.isInteger(seqLen) || seqLen < 2) throw new UserError(`seq_len must be an integer >= 2, got ${seqLen}`, { field: 'train.seq_len' });
  if (tokens.length < need) {
    throw new UserError(`the token stream has ${tokens.length} tokens, fewer than the ${need} one sample of seq_len ${seqLen} needs`, {
      field: 'train.seq_len',
    });
  }
  return tokens.length - need;
}

/** Writes the sample starting at text position `start` into row `row` of `out`. */
function fillRow(tokens: Int32Array, start: number, seqLen: number, sink: number | null, out: Batch, row: number): void {
  const o = row * seqLen;
  if (sink === null) {
    out.input.set(tokens.subarray(start, start + seqLen), o);
  } else {
    out.input[o] = sink;
    out.input.set(tokens.subarray(start, start + seqLen - 1), o + 1);
  }
  // Without a sink the targets are the window shifted by one; after a sink, the sink's
  // target is the first text token, so the targets are the text tokens themselves.
  const t0 = sink === null ? start + 1 : start;
  out.target.set(tokens.subarray(t0, t0 + seqLen), o);
  for (let t = 0; t < seqLen; t++) out.mask[o + t] = out.target[o + t] === sink ? 0 : 1;
}

function emptyBatch(batchSize: number, seqLen: number): Batch {
  const n = batchSize * seqLen;
  return { input: new Int32Array(n), target: new Int32Array(n), mask: new Float32Array(n) };
}

export class BatchSampler {
  private readonly opts: SamplerOptions;
  private rng: seedrandom.StatefulPRNG<seedrandom.State.Arc4>;
  private readonly maxStart: number;
  private batches = 0;

  /** A fresh sampler: the sequence of batches depends only on the options. */
  constructor(opts: SamplerOptions) {
    this.opts = { ...opts };
    this.maxStart = checkFits(opts.tokens, opts.seqLen, opts.sinkTokenId);
    this.rng = seedrandom(`sampler:${opts.seed}`, { state: true });
  }

  /** Continues where `state()` was taken; the options must describe the same run and data. */
  static restore(opts: SamplerOptions, state: SamplerState): BatchSampler {
    if (state?.version !== 1 || !state.rng) throw new UserError('not a sinklm sampler state', { field: 'sampler' });
    const mismatch = (
      [
        ['seed', state.seed, opts.seed],
        ['seq_len', state.seq_len, opts.seqLen],
        ['batch_size', state.batch_size, opts.batchSize],
        ['sink_token_id', state.sink_token_id, opts.sinkTokenId],
        ['stream_tokens', state.stream_tokens, opts.tokens.length],
      ] as const
    ).find(([, saved, now]) => saved !== now);
    if (mismatch) {
      throw new UserError(`sampler state was saved with ${mismatch[0]} ${mismatch[1]}, this run has ${mismatch[2]}`, { field: 'sampler' });
    }
    const s = new BatchSampler(opts);
    s.rng = seedrandom('', { state: state.rng });
    s.batches = state.batches;
    return s;
  }

  next(): Batch {
    const { tokens, seqLen, batchSize, sinkTokenId } = this.opts;
    const out = emptyBatch(batchSize, seqLen);
    for (let b = 0; b < batchSize; b++) {
      const start = Math.floor(this.rng() * (this.maxStart + 1));
      fillRow(tokens, start, seqLen, sinkTokenId, out, b);
    }
    this.batches++;
    return out;
  }

  /** Batches drawn so far. */
  get drawn(): number {
    return this.batches;
  }

  state(): SamplerState {
    return {
      version: 1,
      seed: this.opts.seed,
      seq_len: this.opts.seqLen,
      batch_size: this.opts.batchSize,
      sink_token_id: this.opts.sinkTokenId,
      stream_tokens: this.opts.tokens.length,
      batches: this.batches,
      rng: this.rng.state(),
    };
  }
}

/**
 * Fixed validation batches: `count * batchSize` windows spread evenly over the stream,
 * the same every time, so evaluations at different steps are comparable.
 */
export function evalBatches(tokens: Int32Array, seqLen: number, batchSize: number, count: number, sinkTokenId: number | null): Batch[] {
  const maxStart = checkFits(tokens, seqLen, sinkTokenId);
  const total = count * batchSize;
  const out: Batch[] = [];
  for (let k = 0; k < count; k++) {
    const batch = emptyBatch(batchSize, seqLen);
    for (let b = 0; b < batchSize; b++) {
      const w = k * batchSize + b;
      const start = total === 1 ? 0 : Math.round((w * maxStart) / (total - 1));
      fillRow(tokens, start, seqLen, sinkTokenId, batch, b);
    }
    out.push(batch);
  }
  return out;
}
