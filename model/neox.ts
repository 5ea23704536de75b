/**
 * GPT-NeoX as Pythia has it: parallel residual x + attn(ln1(x)) + mlp(ln2(x)), rotary on
 * the first rotary_pct of each head, fused query_key_value with per-head [q|k|v] blocks,
 * untied embedding and head. One set of weights, two entry points:
 *   forward(ids [B, T])       full causal sequence (training, scoring)
 *   step(ids [n], cache)      incremental, over an external KV cache with explicit positions
 * Both run the same block code; the four sink modes are one switch inside attention.
 */
import * as tf from '@tensorflow/tfjs-core';
import { checkPositions, type CacheLayout, type KVCache } from './cache.js';
import { headDim, rotaryDims, type NeoXConfig } from './config.js';
import { applyRotary, attentionWeights, gelu, layerNorm, linear, NEG_INF, rotaryTables } from './ops.js';
import { causalAttention, embedding, layerNormPair, linearGelu, tokenNll } from './fused.js';
import { paramSpecs, type ParamSpec } from './params.js';
import type { TensorMap } from './safetensors.js';

interface Geometry {
  /**
   * cos/sin [n, hd] for the queries and [L, hd] for the keys. The query tables carry the
   * scores' 1/sqrt(head_dim): rotary is linear, so scaling its tables scales q for free.
   */
  qCos: tf.Tensor;
  qSin: tf.Tensor;
  kCos: tf.Tensor;
  kSin: tf.Tensor;
  /** Additive mask broadcastable to [B, H, n, L]. */
  bias: tf.Tensor;
  onAttention?: AttentionProbe;
}

export type AttentionProbe = (layer: number, weights: tf.Tensor4D) => void;

export class GPTNeoX {
  readonly config: NeoXConfig;
  readonly specs: ParamSpec[];
  /** Trainable parameters under their HF names. */
  readonly params: Map<string, tf.Variable>;
  /** Rotary tables; qCos/qSin are cos/sin times the scores' 1/sqrt(head_dim), for the queries. */
  private readonly rope: { cos: tf.Tensor2D; sin: tf.Tensor2D; qCos: tf.Tensor2D; qSin: tf.Tensor2D; rot: tf.Tensor2D };
  private readonly ropeHost: { cos: Float32Array; sin: Float32Array; qCos: Float32Array; qSin: Float32Array };
  private readonly causal = new Map<number, tf.Tensor2D>();
  /** Embedding lookups as gathers need UnsortedSegmentSum for their gradient; wasm lacks it. */
  private readonly gatherGrad: boolean;
  private version = 0;
  /**
   * A copy of the weights made elsewhere (the host streaming step's), owned here so that it
   * is freed with the model. It records the weightsVersion it was made from: whoever uses it
   * compares that with the model's and rebuilds a stale copy; the model never looks inside.
   */
  derived: { readonly version: number; dispose(): void } | null = null;

  constructor(config: NeoXConfig, weights: TensorMap) {
    this.config = config;
    this.specs = paramSpecs(config);
    this.params = new Map();
    for (const s of this.specs) {
      const w = weights.get(s.name);
      if (!w) throw new Error(`missing parameter ${s.name}`);
      // tidy frees the initial tensor: a variable takes its own reference to the data.
      this.params.set(s.name, tf.tidy(() => tf.variable(tf.tensor(w.data, s.shape), true)));
    }
    const { host, ...tables } = rotaryTables(Math.max(config.max_position_embeddings, 1), headDim(config), rotaryDims(config), config.rotary_emb_base);
    const scale = 1 / Math.sqrt(headDim(config));
    this.rope = { ...tables, qCos: tf.mul(tables.cos, scale), qSin: tf.mul(tables.sin, scale) };
    const { cos, sin } = host;
    this.ropeHost = { cos, sin, qCos: cos.map((v) => v * scale), qSin: sin.map((v) => v * scale) };
    this.gatherGrad = tf.getKernel('UnsortedSegmentSum', tf.getBackend()) !== undefined;
  }

  private p<R extends tf.Rank>(name: string): tf.Tensor<R> {
    return this.params.get(name)! as unknown as tf.Tensor<R>;
  }

  /** Rows of a [V, D] table; a one-hot matmul where the backend cannot differentiate gather. */
  private rows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
    if (this.gatherGrad) return embedding(table, ids);
    return tf.matMul(tf.cast(tf.oneHot(ids, table.shape[0]), 'float32'), table);
  }

  /**
   * Full causal forward: ids [B, T] -> logits [B*T, V]. `onAttention` sees each layer's
   * attention weights [B, H, T, T] (for the attention-sink statistics); in the sink modes
   * softmax1 and logit a row sums to less than 1, the rest went to the implicit sink.
   */
  forward(ids: tf.Tensor2D, onAttention?: AttentionProbe): tf.Tensor2D {
    return this.full(ids, false, onAttention);
  }

  /**
   * Full causal forward for the next token only: ids [B, T] -> the logits of each
   * sequence's last position [B, V], equal to forward's rows T-1, 2T-1, ... The head's
   * product runs over B rows, not B*T (recompute's whole cost at small T).
   */
  forwardLast(ids: tf.Tensor2D): tf.Tensor2D {
    return this.full(ids, true);
  }

  private full(ids: tf.Tensor2D, lastOnly: boolean, onAttention?: AttentionProbe): tf.Tensor2D {
    const [B, T] = ids.shape;
    if (T > this.config.max_position_embeddings) {
      throw new Error(`sequence of ${T} tokens exceeds max_position_embeddings ${this.config.max_position_embeddings}`);
    }
    const first = (table: tf.Tensor2D) => tf.slice(table, [0, 0], [T, -1]);
    const geo: Geometry = {
      qCos: first(this.rope.qCos),
      qSin: first(this.rope.qSin),
      kCos: first(this.rope.cos),
      kSin: first(this.rope.sin),
      bias: this.causalBias(T),
      onAttention,
    };
    return this.run(tf.reshape(ids, [B * T]) as tf.Tensor1D, B, T, geo, undefined, lastOnly);
  }

  /**
   * Incremental step: n new tokens of each of the cache's B streams (ids stream-major,
   * [B * n]), attending to what the cache keeps. Returns logits [B * n, V]; the cache has
   * taken the new keys and values.
   */
  step(ids: number[] | Int32Array, cache: KVCache): tf.Tensor2D {
    const layout: CacheLayout = cache.begin(ids.length / (cache.batch ?? 1));
    const B = layout.batch ?? 1;
    const n = ids.length / B;
    const L = layout.keyPositions.length / B;
    if (!Number.isInteger(n) || layout.queryPositions.length !== B * n) throw new Error(`step: ${ids.length} ids do not split into ${B} streams`);
    checkPositions(layout, this.config.max_position_embeddings);
    const hd = headDim(this.config);
    const logits = tf.tidy(() => {
      // cos/sin rows gathered on the host: a copy of a few KB beats four gather kernels.
      const rows = (table: Float32Array, pos: Int32Array) => {
        const out = new Float32Array(pos.length * hd);
        pos.forEach((p, i) => out.set(table.subarray(p * hd, (p + 1) * hd), i * hd));
        return out;
      };
      const geo: Geometry = {
        qCos: tf.tensor4d(rows(this.ropeHost.qCos, layout.queryPositions), [B, 1, n, hd]),
        qSin: tf.tensor4d(rows(this.ropeHost.qSin, layout.queryPositions), [B, 1, n, hd]),
        kCos: tf.tensor4d(rows(this.ropeHost.cos, layout.keyPositions), [B, 1, L, hd]),
        kSin: tf.tensor4d(rows(this.ropeHost.sin, layout.keyPositions), [B, 1, L, hd]),
        bias: tf.tensor4d(layout.bias, [B, 1, n, L]),
      };
      return this.run(tf.tensor1d(Int32Array.from(ids), 'int32'), B, n, geo, cache);
    });
    cache.commit();
    return logits;
  }

  private causalBias(T: number): tf.Tensor2D {
    let m = this.causal.get(T);
    if (!m) {
      const data = new Float32Array(T * T);
      for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) data[i * T + j] = NEG_INF;
      m = tf.keep(tf.tensor2d(data, [T, T]));
      this.causal.set(T, m);
    }
    return m;
  }

  /**
   * The transformer over B sequences of n tokens (flattened ids [B*n]) -> logits [B*n, V],
   * or with `lastOnly` those of each sequence's last token [B, V].
   */
  private run(ids: tf.Tensor1D, B: number, n: number, geo: Geometry, cache?: KVCache, lastOnly = false): tf.Tensor2D {
    const c = this.config;
    let x = this.rows(this.p<tf.Rank.R2>('gpt_neox.embed_in.weight'), ids);
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const pre = `gpt_neox.layers.${i}`;
      // The parallel residual normalises the same x twice: share the statistics, keep two affines.
      const [ln1, ln2] = layerNormPair(
        x,
        this.p(`${pre}.input_layernorm.weight`),
        this.p(`${pre}.input_layernorm.bias`),
        this.p(`${pre}.post_attention_layernorm.weight`),
        this.p(`${pre}.post_attention_layernorm.bias`),
        c.layer_norm_eps,
      );
      const attn = this.attention(ln1, i, B, n, geo, cache);
      const mlp = this.mlp(ln2, pre);
      x = tf.add(tf.add(x, attn), mlp);
    }
    if (lastOnly && n > 1) {
      const D = c.hidden_size;
      x = tf.reshape(tf.slice(tf.reshape(x, [B, n, D]), [0, n - 1, 0], [B, 1, D]), [B, D]);
    }
    const h = layerNorm(x, this.p('gpt_neox.final_layer_norm.weight'), this.p('gpt_neox.final_layer_norm.bias'), c.layer_norm_eps);
    return linear(h as tf.Tensor2D, this.p<tf.Rank.R2>('embed_out.weight'));
  }

  private attention(x: tf.Tensor2D, layer: number, B: number, n: number, geo: Geometry, cache?: KVCache): tf.Tensor2D {
    const c = this.config;
    const H = c.num_attention_heads;
    const hd = headDim(c);
    const pre = `gpt_neox.layers.${layer}.attention`;
    const qkv = linear(x, this.p(`${pre}.query_key_value.weight`), this.p(`${pre}.query_key_value.bias`));
    if (!cache && !geo.onAttention) {
      // The whole causal attention (rotary, scores, sink softmax, weighted sum) as one operation.
      const ctx = causalAttention({
        qkv,
        qCos: this.rope.qCos,
        qSin: this.rope.qSin,
        kCos: this.rope.cos,
        kSin: this.rope.sin,
        sink: c.sink_mode === 'logit' ? this.p(`${pre}.sinks`) : tf.zeros([1]),
        batch: B,
        heads: H,
        rotaryDims: rotaryDims(c),
        mode: c.sink_mode,
      });
      return linear(ctx, this.p(`${pre}.dense.weight`), this.p(`${pre}.dense.bias`));
    }
    // HF layout: each head owns a contiguous [q|k|v] block of 3*hd columns.
    const heads = tf.transpose(tf.reshape(qkv, [B, n, H, 3 * hd]), [0, 2, 1, 3]);
    let [q, k, v] = tf.split(heads, 3, -1) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
    if (cache) ({ k, v } = cache.update(layer, k, v));
    const qr = applyRotary(q, geo.qCos, geo.qSin, this.rope.rot); // scaled by 1/sqrt(hd) too
    const kr = applyRotary(k, geo.kCos, geo.kSin, this.rope.rot);
    const scores = tf.add(tf.matMul(qr, kr, false, true), geo.bias);
    const sink = c.sink_mode === 'logit' ? tf.reshape(this.p(`${pre}.sinks`), [1, H, 1, 1]) : undefined;
    const w = attentionWeights(scores, c.sink_mode, sink);
    geo.onAttention?.(layer, w as tf.Tensor4D);
    const ctx = tf.reshape(tf.transpose(tf.matMul(w, v), [0, 2, 1, 3]), [B * n, H * hd]) as tf.Tensor2D;
    return linear(ctx, this.p(`${pre}.dense.weight`), this.p(`${pre}.dense.bias`));
  }

  private mlp(x: tf.Tensor2D, pre: string): tf.Tensor2D {
    const w = this.p<tf.Rank.R2>(`${pre}.mlp.dense_h_to_4h.weight`);
    const b = this.p<tf.Rank.R1>(`${pre}.mlp.dense_h_to_4h.bias`);
    const h = this.config.hidden_act === 'gelu' ? linearGelu(x, w, b) : (gelu(linear(x, w, b), this.config.hidden_act) as tf.Tensor2D);
    return linear(h, this.p(`${pre}.mlp.dense_4h_to_h.weight`), this.p(`${pre}.mlp.dense_4h_to_h.bias`));
  }

  /**
   * Mean next-token NLL over the positions where mask = 1.
   * logits [N, V], targets [N] int32, mask [N] float32.
   */
  loss(logits: tf.Tensor2D, targets: tf.Tensor1D, mask: tf.Tensor1D): tf.Scalar {
    const nll = this.tokenNll(logits, targets);
    return tf.div(tf.sum(tf.mul(nll, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
  }

  /** Per-position NLL: logsumexp(logits) - logits[target]. */
  tokenNll(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
    return tokenNll(logits, targets);
  }

  /** Weights as float32 arrays under their HF names, in checkpoint order. */
  async weights(): Promise<TensorMap> {
    const out: TensorMap = new Map();
    for (const s of this.specs) out.set(s.name, { shape: s.shape, data: (await this.params.get(s.name)!.data()) as Float32Array });
    return out;
  }

  /**
   * Counts changes of the weights: anything that writes `params` (assign, an optimizer
   * update) calls weightsChanged(), so copies of the weights can tell they are stale.
   */
  get weightsVersion(): number {
    return this.version;
  }

  weightsChanged(): void {
    this.version += 1;
  }

  /** Sets all weights from arrays (shapes already checked). */
  assign(weights: TensorMap): void {
    for (const s of this.specs) {
      const w = weights.get(s.name)!;
      tf.tidy(() => this.params.get(s.name)!.assign(tf.tensor(w.data, s.shape)));
    }
    this.weightsChanged();
  }

  dispose(): void {
    this.derived?.dispose();
    this.derived = null;
    for (const v of this.params.values()) v.dispose();
    tf.dispose(Object.values(this.rope));
    for (const m of this.causal.values()) m.dispose();
  }
}
