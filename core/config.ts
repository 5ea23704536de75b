/**
 * Run configs: JSON files in configs/, one zod schema, defaults filled in, `extends` for
 * shared bases. Every error names the file and the field (`model.hidden_size`) and says
 * what is allowed, the way web-llm's config.ts does.
 */
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from './errors.js';
import { readJsonFile } from './fsutil.js';

export const SINK_MODES = ['none', 'token', 'softmax1', 'logit'] as const;
export type SinkMode = (typeof SINK_MODES)[number];

const positiveInt = z.number().int().positive();

export const ModelSection = z
  .object({
    hidden_size: positiveInt.default(128),
    num_hidden_layers: positiveInt.default(6),
    num_attention_heads: positiveInt.default(4),
    /** Defaults to 4 x hidden_size, as Pythia has it. */
    intermediate_size: positiveInt.optional(),
    rotary_pct: z.number().gt(0).lte(1).default(0.25),
    rotary_emb_base: z.number().positive().default(10000),
    /** Defaults to the training context. */
    max_position_embeddings: positiveInt.optional(),
    layer_norm_eps: z.number().positive().default(1e-5),
    hidden_act: z.enum(['gelu', 'gelu_new']).default('gelu'),
    sink_mode: z.enum(SINK_MODES).default('none'),
    /** `pythia` (gpt-neox small_init + wang_init) or `hf` (normal, std initializer_range). */
    init: z.enum(['pythia', 'hf']).default('pythia'),
    initializer_range: z.number().positive().default(0.02),
  })
  .strict();

export const TokenizerSection = z
  .object({
    /** Train a byte-level BPE of this size on the training split... */
    vocab_size: positiveInt.min(300).max(65536).default(4096),
    /** ...or use this existing tokenizer.json (e.g. Pythia's). */
    path: z.string().optional(),
  })
  .strict();

export const DataSection = z
  .object({
    /** `sotu` (the embedded State of the Union corpus) or a path to .txt/.jsonl/.arrow files. */
    corpus: z.string().default('sotu'),
    /** Field holding the text in .jsonl records and Arrow tables. */
    text_field: z.string().default('text'),
    tokenizer: TokenizerSection.default({ vocab_size: 4096 }),
    validation_frac: z.number().gt(0).lt(0.5).default(0.05),
    test_frac: z.number().gt(0).lt(0.5).default(0.05),
    seed: z.number().int().default(1234),
    /** Where prepared shards live; relative paths are from the working directory. */
    dir: z.string().optional(),
    /** Cap on documents taken from the corpus (for smoke runs). */
    max_documents: positiveInt.optional(),
  })
  .strict();

export const TrainSection = z
  .object({
    seq_len: positiveInt.min(2).default(256),
    batch_size: positiveInt.default(16),
    grad_accum: positiveInt.default(1),
    /** Data-parallel processes sharing every batch, each on one TensorFlow thread (train/replicas.ts). */
    replicas: positiveInt.default(1),
    max_steps: positiveInt.default(1000),
    lr: z.number().positive().default(1e-3),
    min_lr_ratio: z.number().min(0).max(1).default(0.1),
    warmup_frac: z.number().min(0).lt(1).default(0.01),
    weight_decay: z.number().min(0).default(0.1),
    beta1: z.number().min(0).lt(1).default(0.9),
    beta2: z.number().min(0).lt(1).default(0.95),
    eps: z.number().positive().default(1e-8),
    grad_clip: z.number().min(0).default(1.0),
    seed: z.number().int().default(1234),
    log_every: positiveInt.default(10),
    eval_every: positiveInt.default(200),
    eval_batches: positiveInt.default(8),
    ckpt_every: positiveInt.default(500),
    keep_last: positiveInt.default(3),
    /** Also keep a copy of the weights every N steps (for "how the sink emerges"). */
    snapshot_every: z.number().int().min(0).default(0),
    out: z.string().optional(),
  })
  .strict();

export const AblateSection = z
  .object({
    variants: z.array(z.enum(SINK_MODES)).min(1).default([...SINK_MODES]),
    /** Recent-window size W of the grid; defaults to half the training context. */
    window: positiveInt.optional(),
    initial: z.array(z.number().int().min(0)).default([0, 1, 2, 4]),
    /** Streamed tokens per cache config; defaults to 20 x the cache. */
    max_tokens: positiveInt.optional(),
    out: z.string().optional(),
  })
  .strict();

export const RunConfigSchema = z
  .object({
    $schema: z.string().optional(),
    name: z.string().optional(),
    description: z.string().optional(),
    model: ModelSection.default(ModelSection.parse({})),
    data: DataSection.default(DataSection.parse({})),
    train: TrainSection.default(TrainSection.parse({})),
    ablate: AblateSection.default(AblateSection.parse({})),
  })
  .strict();

export type RunConfig = z.infer<typeof RunConfigSchema> & {
  /** Absolute path of the file the config came from. */
  source: string;
};

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function isPlainObject(v: unknown): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge where `over` wins; arrays are replaced, not concatenated. */
function merge(base: Record<string, Json>, over: Record<string, Json>): Record<string, Json> {
  const out: Record<string, Json> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? merge(b, v) : v;
  }
  return out;
}

function loadRaw(file: string, seen: string[]): Record<string, Json> {
  const abs = path.resolve(file);
  if (seen.includes(abs)) {
    throw new UserError(`"extends" loops back to ${seen[0]}`, { file: abs, field: 'extends' });
  }
  const raw = readJsonFile(abs);
  if (!isPlainObject(raw)) throw new UserError('a config must be a JSON object', { file: abs });
  const ext = raw['extends'];
  const { extends: _drop, ...own } = raw;
  if (ext === undefined) return own;
  if (typeof ext !== 'string') {
    throw new UserError('must be a path to another config file', { file: abs, field: 'extends' });
  }
  const basePath = path.resolve(path.dirname(abs), ext);
  let base: Record<string, Json>;
  try {
    base = loadRaw(basePath, [...seen, abs]);
  } catch (e) {
    if (e instanceof UserError && e.file === basePath && e.message === 'file not found') {
      throw new UserError(`base config ${ext} not found`, { file: abs, field: 'extends' });
    }
    throw e;
  }
  return merge(base, own);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    return `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  }
  if (issue.code === 'invalid_value') {
    return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  }
  return issue.message;
}

/** Validates an already-parsed object as a run config. `file` is used in error lines. */
export function parseRunConfig(raw: unknown, file: string): RunConfig {
  const res = RunConfigSchema.safeParse(raw);
  if (!res.success) {
    const issue = res.error.issues[0]!;
    const field = issue.path.map(String).join('.');
    throw new UserError(describeIssue(issue), { file, field: field || undefined });
  }
  const cfg = res.data;
  const m = cfg.model;
  if (m.hidden_size % m.num_attention_heads !== 0) {
    throw new UserError(
      `hidden_size ${m.hidden_size} is not divisible by num_attention_heads ${m.num_attention_heads}`,
      { file, field: 'model.num_attention_heads' },
    );
  }
  const headDim = m.hidden_size / m.num_attention_heads;
  const rotary = Math.floor(headDim * m.rotary_pct);
  if (rotary < 2 || rotary % 2 !== 0) {
    throw new UserError(
      `rotary_pct ${m.rotary_pct} x head dim ${headDim} gives ${rotary} rotary dims; it must be an even number >= 2`,
      { file, field: 'model.rotary_pct' },
    );
  }
  if (cfg.train.batch_size % cfg.train.replicas !== 0) {
    throw new UserError(`batch_size ${cfg.train.batch_size} does not split evenly over ${cfg.train.replicas} replicas`, { file, field: 'train.replicas' });
  }
  if (m.max_position_embeddings !== undefined && m.max_position_embeddings < cfg.train.seq_len) {
    throw new UserError(
      `max_position_embeddings ${m.max_position_embeddings} is smaller than train.seq_len ${cfg.train.seq_len}`,
      { file, field: 'model.max_position_embeddings' },
    );
  }
  checkAblate(cfg, file);
  return { ...cfg, source: path.resolve(file) };
}

/**
 * The ablation grid's caches, checked at load rather than after four variants have trained:
 * the window must fit the model's positions, and `initial` must hold the 0, 1 and 4 sink
 * tokens whose cells the verdicts compare (experiments/grid.ts).
 */
function checkAblate(cfg: z.infer<typeof RunConfigSchema>, file: string): void {
  const context = cfg.model.max_position_embeddings ?? cfg.train.seq_len;
  const a = cfg.ablate;
  const window = a.window ?? Math.floor(cfg.train.seq_len / 2);
  if (window > context) {
    throw new UserError(
      `${window} is more than the model's context of ${context} positions (model.max_position_embeddings, else train.seq_len); StreamingLLM's cache must fit in it`,
      { file, field: 'ablate.window' },
    );
  }
  const missing = VERDICT_SINKS.filter((s) => !a.initial.includes(s));
  if (missing.length) {
    throw new UserError(`must include ${VERDICT_SINKS.join(', ')} (the verdicts compare those cells); ${missing.join(', ')} missing`, { file, field: 'ablate.initial' });
  }
  const tooMany = a.initial.find((s) => s >= window);
  if (tooMany !== undefined) {
    throw new UserError(`${tooMany} sink tokens leave no recent tokens in a window of ${window} (ablate.window)`, { file, field: 'ablate.initial' });
  }
}

/** Sink-token counts whose grid cells the ablation's verdicts read. */
export const VERDICT_SINKS = [0, 1, 4] as const;

/** Loads configs/NAME.json (or any path), resolving `extends` and filling defaults. */
export function loadRunConfig(file: string): RunConfig {
  const abs = path.resolve(file);
  return parseRunConfig(loadRaw(abs, []), abs);
}
