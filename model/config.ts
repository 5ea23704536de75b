/**
 * The model's configuration: the HuggingFace GPT-NeoX fields, as config.json carries them,
 * plus the `sinklm` object that says which sink mechanism the attention uses.
 */
import { UserError } from '../core/errors.js';
import { SINK_MODES, type SinkMode } from '../core/config.js';

export interface NeoXConfig {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  rotary_pct: number;
  rotary_emb_base: number;
  max_position_embeddings: number;
  layer_norm_eps: number;
  use_parallel_residual: boolean;
  hidden_act: 'gelu' | 'gelu_new';
  initializer_range: number;
  sink_mode: SinkMode;
  /** The learnable sink token's id (mode `token`), else null. */
  sink_token_id: number | null;
  bos_token_id?: number | null;
  eos_token_id?: number | null;
}

export function headDim(c: NeoXConfig): number {
  return c.hidden_size / c.num_attention_heads;
}

/** Rotary dims per head, as HF computes them: int(head_dim * rotary_pct). */
export function rotaryDims(c: NeoXConfig): number {
  return Math.floor(headDim(c) * c.rotary_pct);
}

/** Checks the invariants HF's GPTNeoXConfig would reject, naming the field. */
export function validateNeoXConfig(c: NeoXConfig, file?: string): NeoXConfig {
  const bad = (field: string, msg: string) => new UserError(msg, { file, field });
  for (const f of ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings'] as const) {
    const v = c[f];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw bad(f, `must be a positive integer (got ${JSON.stringify(v)})`);
  }
  if (c.hidden_size % c.num_attention_heads !== 0) {
    throw bad('num_attention_heads', `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}`);
  }
  if (!(c.rotary_pct > 0 && c.rotary_pct <= 1)) throw bad('rotary_pct', `must be in (0, 1] (got ${c.rotary_pct})`);
  const rd = rotaryDims(c);
  if (rd < 2 || rd % 2) throw bad('rotary_pct', `gives ${rd} rotary dims per head; it must be an even number >= 2`);
  if (!(c.rotary_emb_base > 0)) throw bad('rotary_emb_base', 'must be positive');
  if (!(c.layer_norm_eps > 0)) throw bad('layer_norm_eps', 'must be positive');
  if (typeof c.use_parallel_residual !== 'boolean') throw bad('use_parallel_residual', `must be true or false (got ${JSON.stringify(c.use_parallel_residual)})`);
  if (c.use_parallel_residual !== true) throw bad('use_parallel_residual', 'only the parallel residual (Pythia) is supported');
  if (!['gelu', 'gelu_new'].includes(c.hidden_act)) throw bad('hidden_act', `must be "gelu" or "gelu_new" (got ${JSON.stringify(c.hidden_act)})`);
  if (!SINK_MODES.includes(c.sink_mode)) {
    throw bad('sinklm.sink_mode', `must be one of ${SINK_MODES.join(', ')} (got ${JSON.stringify(c.sink_mode)})`);
  }
  if (c.sink_mode === 'token') {
    const id = c.sink_token_id;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= c.vocab_size) {
      throw bad('sinklm.sink_token_id', `sink_mode "token" needs an id in [0, ${c.vocab_size}) (got ${JSON.stringify(id)})`);
    }
  }
  return c;
}

/** The HF config.json object for this model (what GPTNeoXForCausalLM.from_pretrained reads). */
export function toHFConfig(c: NeoXConfig): Record<string, unknown> {
  return {
    architectures: ['GPTNeoXForCausalLM'],
    model_type: 'gpt_neox',
    vocab_size: c.vocab_size,
    hidden_size: c.hidden_size,
    num_hidden_layers: c.num_hidden_layers,
    num_attention_heads: c.num_attention_heads,
    intermediate_size: c.intermediate_size,
    rotary_pct: c.rotary_pct,
    rotary_emb_base: c.rotary_emb_base,
    max_position_embeddings: c.max_position_embeddings,
    layer_norm_eps: c.layer_norm_eps,
    use_parallel_residual: c.use_parallel_residual,
    hidden_act: c.hidden_act,
    initializer_range: c.initializer_range,
    tie_word_embeddings: false,
    attention_bias: true,
    attention_dropout: 0.0,
    hidden_dropout: 0.0,
    classifier_dropout: 0.1,
    use_cache: true,
    bos_token_id: c.bos_token_id ?? 0,
    eos_token_id: c.eos_token_id ?? 0,
    torch_dtype: 'float32',
    sinklm: { sink_mode: c.sink_mode, sink_token_id: c.sink_token_id },
  };
}

/** Reads an HF config.json object (ours or a real Pythia one) into a NeoXConfig. */
export function fromHFConfig(raw: unknown, file?: string): NeoXConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new UserError('config.json must be a JSON object', { file });
  }
  const r = raw as Record<string, unknown>;
  if (r.model_type !== 'gpt_neox') {
    throw new UserError(`must be "gpt_neox" (got ${JSON.stringify(r.model_type)})`, { file, field: 'model_type' });
  }
  if (r.tie_word_embeddings === true) {
    throw new UserError('tied embeddings are not GPT-NeoX; must be false', { file, field: 'tie_word_embeddings' });
  }
  const sl = (typeof r.sinklm === 'object' && r.sinklm !== null ? r.sinklm : {}) as Record<string, unknown>;
  const num = (k: string, dflt?: number): number => {
    const v = r[k] ?? dflt;
    if (typeof v !== 'number') throw new UserError(`missing or not a number`, { file, field: k });
    return v;
  };
  // HF's own defaults for the fields old Pythia configs leave out. transformers 5 moved the
  // rotary fields under rope_parameters (partial_rotary_factor, rope_theta); Pythia's own
  // config.json has rotary_pct and rotary_emb_base. Dropouts, use_cache, dtype/torch_dtype,
  // initializer_range, architectures, pad/bos/eos ids are training or HF-runtime settings
  // that do not change a forward pass: read where useful, never required.
  const rope = (typeof r.rope_parameters === 'object' && r.rope_parameters !== null ? r.rope_parameters : {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? 'default';
  if (ropeType !== 'default') {
    throw new UserError(`rope_type ${JSON.stringify(ropeType)} is not supported; only plain rotary ("default", as Pythia) is`, { file, field: 'rope_parameters.rope_type' });
  }
  if (r.rope_scaling !== undefined && r.rope_scaling !== null) {
    throw new UserError('rotary scaling is not supported (Pythia has none); must be null or absent', { file, field: 'rope_scaling' });
  }
  if (r.attention_bias !== undefined && r.attention_bias !== true) {
    throw new UserError(`must be true: GPT-NeoX attention has biases (got ${JSON.stringify(r.attention_bias)})`, { file, field: 'attention_bias' });
  }
  // Both spellings may be present (our checkpoints write both); they must agree, since
  // transformers 5 reads rope_parameters and older code rotary_pct.
  for (const [legacy, v5] of [['rotary_pct', 'partial_rotary_factor'], ['rotary_emb_base', 'rope_theta']] as const) {
    if (r[legacy] !== undefined && rope[v5] !== undefined && r[legacy] !== rope[v5]) {
      throw new UserError(`${legacy} is ${JSON.stringify(r[legacy])} but rope_parameters.${v5} is ${JSON.stringify(rope[v5])}; they must agree`, { file, field: legacy });
    }
  }
  const rotaryPct = r.rotary_pct ?? rope.partial_rotary_factor ?? r.partial_rotary_factor ?? 0.25;
  const base = r.rotary_emb_base ?? rope.rope_theta ?? r.rope_theta ?? 10000;
  for (const [field, v] of [['rotary_pct', rotaryPct], ['rotary_emb_base', base]] as const) {
    if (typeof v !== 'number') throw new UserError(`must be a number (got ${JSON.stringify(v)})`, { file, field });
  }
  const bosEos = (k: 'bos_token_id' | 'eos_token_id'): number | null => {
    const v = r[k];
    // Some configs list several ids; the first is the one a stream would use.
    const id = Array.isArray(v) ? v[0] : v;
    return typeof id === 'number' ? id : null;
  };
  const cfg: NeoXConfig = {
    vocab_size: num('vocab_size'),
    hidden_size: num('hidden_size'),
    num_hidden_layers: num('num_hidden_layers'),
    num_attention_heads: num('num_attention_heads'),
    intermediate_size: num('intermediate_size'),
    rotary_pct: rotaryPct as number,
    rotary_emb_base: base as number,
    max_position_embeddings: num('max_position_embeddings', 2048),
    layer_norm_eps: num('layer_norm_eps', 1e-5),
    use_parallel_residual: (r.use_parallel_residual ?? true) as boolean,
    hidden_act: (r.hidden_act ?? 'gelu') as NeoXConfig['hidden_act'],
    initializer_range: num('initializer_range', 0.02),
    sink_mode: (sl.sink_mode ?? 'none') as SinkMode,
    sink_token_id: (sl.sink_token_id ?? null) as number | null,
    bos_token_id: bosEos('bos_token_id'),
    eos_token_id: bosEos('eos_token_id'),
  };
  return validateNeoXConfig(cfg, file);
}
