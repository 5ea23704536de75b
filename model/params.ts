/**
 * The parameter layout: HF GPT-NeoX names and PyTorch shapes, one to one, so loading a
 * checkpoint is a lookup. Initialisation is Pythia's as gpt-neox configures it
 * (`init_method: small_init`, `output_layer_init_method: wang_init`), or HF's
 * `_init_weights` (normal, std initializer_range) on request; LayerNorm 1/0, biases 0;
 * seeded and backend-independent.
 */
import seedrandom from 'seedrandom';
import type { NeoXConfig } from './config.js';
import type { NamedArray, TensorMap } from './safetensors.js';

export type ParamKind = 'weight' | 'output' | 'embedding' | 'norm_weight' | 'bias' | 'sink';

export interface ParamSpec {
  name: string;
  shape: number[];
  kind: ParamKind;
}

/** Every parameter of the model, in checkpoint order. */
export function paramSpecs(c: NeoXConfig): ParamSpec[] {
  const D = c.hidden_size;
  const F = c.intermediate_size;
  const specs: ParamSpec[] = [{ name: 'gpt_neox.embed_in.weight', shape: [c.vocab_size, D], kind: 'embedding' }];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `gpt_neox.layers.${i}`;
    specs.push(
      { name: `${p}.input_layernorm.weight`, shape: [D], kind: 'norm_weight' },
      { name: `${p}.input_layernorm.bias`, shape: [D], kind: 'bias' },
      { name: `${p}.post_attention_layernorm.weight`, shape: [D], kind: 'norm_weight' },
      { name: `${p}.post_attention_layernorm.bias`, shape: [D], kind: 'bias' },
      { name: `${p}.attention.query_key_value.weight`, shape: [3 * D, D], kind: 'weight' },
      { name: `${p}.attention.query_key_value.bias`, shape: [3 * D], kind: 'bias' },
      { name: `${p}.attention.dense.weight`, shape: [D, D], kind: 'output' },
      { name: `${p}.attention.dense.bias`, shape: [D], kind: 'bias' },
      { name: `${p}.mlp.dense_h_to_4h.weight`, shape: [F, D], kind: 'weight' },
      { name: `${p}.mlp.dense_h_to_4h.bias`, shape: [F], kind: 'bias' },
      { name: `${p}.mlp.dense_4h_to_h.weight`, shape: [D, F], kind: 'output' },
      { name: `${p}.mlp.dense_4h_to_h.bias`, shape: [D], kind: 'bias' },
    );
    if (c.sink_mode === 'logit') specs.push({ name: `${p}.attention.sinks`, shape: [c.num_attention_heads], kind: 'sink' });
  }
  specs.push(
    { name: 'gpt_neox.final_layer_norm.weight', shape: [D], kind: 'norm_weight' },
    { name: 'gpt_neox.final_layer_norm.bias', shape: [D], kind: 'bias' },
    { name: 'embed_out.weight', shape: [c.vocab_size, D], kind: 'weight' },
  );
  return specs;
}

/** Buffers some HF checkpoints carry that are not parameters (recomputed, never learned). */
export function isIgnoredBuffer(name: string): boolean {
  return /\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$/.test(name) || name.endsWith('.rotary_emb.inv_freq');
}

/** Weight decay applies to matrices only: not to biases, LayerNorm or sink logits (Pythia). */
export function decays(kind: ParamKind): boolean {
  return kind === 'weight' || kind === 'output' || kind === 'embedding';
}

/**
 * `pythia`: gpt-neox's small_init, std sqrt(2 / (5 d)) (Nguyen & Salazar), for the embedding,
 * QKV, h->4h and the output head; wang_init, std 2 / (L sqrt(d)), for the two projections that
 * write into the residual stream (attention.dense, dense_4h_to_h), so it does not grow with
 * depth. `hf`: every matrix normal with std initializer_range, as HF's _init_weights does.
 */
export const INIT_METHODS = ['pythia', 'hf'] as const;
export type InitMethod = (typeof INIT_METHODS)[number];

export function initStd(c: NeoXConfig, kind: 'weight' | 'output' | 'embedding', method: InitMethod = 'pythia'): number {
  if (method === 'hf') return c.initializer_range;
  const d = c.hidden_size;
  return kind === 'output' ? 2 / (c.num_hidden_layers * Math.sqrt(d)) : Math.sqrt(2 / (5 * d));
}

export function initParams(c: NeoXConfig, seed: number, method: InitMethod = 'pythia'): TensorMap {
  const rng = seedrandom(`sinklm-init-${seed}`);
  // Box-Muller on a seeded uniform: the same numbers on every backend and machine.
  const normal = (std: number, n: number): Float32Array => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u = Math.max(rng(), 1e-12);
      const v = rng();
      const r = Math.sqrt(-2 * Math.log(u)) * std;
      out[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return out;
  };
  const map: TensorMap = new Map();
  for (const s of paramSpecs(c)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    let data: Float32Array;
    if (s.kind === 'weight' || s.kind === 'embedding' || s.kind === 'output') data = normal(initStd(c, s.kind, method), n);
    else if (s.kind === 'norm_weight') data = new Float32Array(n).fill(1);
    else data = new Float32Array(n); // biases and sink logits start at 0
    map.set(s.name, { shape: s.shape, data } satisfies NamedArray);
  }
  return map;
}
