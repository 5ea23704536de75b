/** From a run config and its tokenizer to the model's HF-style config. */
import type { RunConfig } from '../core/config.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import type { NeoXConfig } from '../model/config.js';
import { validateNeoXConfig } from '../model/config.js';

/** The vocabulary facts a model config needs from a tokenizer. */
export interface VocabInfo {
  vocabSize: number;
  sinkTokenId: number;
  eosTokenId: number | null;
}

export function modelConfigFor(cfg: RunConfig, tok: VocabInfo | TextTokenizer, over: Partial<NeoXConfig> = {}): NeoXConfig {
  const m = cfg.model;
  // Every variant of an ablation shares one vocabulary; the sink id is reserved in all of
  // them and only the `token` mode uses it. A tokenizer without <|sink|> gets one extra row.
  const vocab = Math.max(tok.vocabSize, tok.sinkTokenId + 1);
  return validateNeoXConfig(
    {
      vocab_size: vocab,
      hidden_size: m.hidden_size,
      num_hidden_layers: m.num_hidden_layers,
      num_attention_heads: m.num_attention_heads,
      intermediate_size: m.intermediate_size ?? 4 * m.hidden_size,
      rotary_pct: m.rotary_pct,
      rotary_emb_base: m.rotary_emb_base,
      max_position_embeddings: m.max_position_embeddings ?? cfg.train.seq_len,
      layer_norm_eps: m.layer_norm_eps,
      use_parallel_residual: true,
      hidden_act: m.hidden_act,
      initializer_range: m.initializer_range,
      sink_mode: m.sink_mode,
      sink_token_id: m.sink_mode === 'token' ? tok.sinkTokenId : null,
      bos_token_id: tok.eosTokenId,
      eos_token_id: tok.eosTokenId,
      ...over,
    },
    cfg.source,
  );
}
