/**
 * Checkpoint directories in the HuggingFace layout: config.json + model.safetensors
 * (+ tokenizer.json). GPTNeoXForCausalLM.from_pretrained reads them as they are, and a
 * real Pythia directory loads here the same way.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../core/errors.js';
import { makeDirs, readJsonFile, writeFileAtomic } from '../core/fsutil.js';
import { checkInputDir } from '../core/outpath.js';
import { fromHFConfig, toHFConfig, type NeoXConfig } from './config.js';
import { GPTNeoX } from './neox.js';
import { isIgnoredBuffer, paramSpecs } from './params.js';
import { readSafetensors, writeSafetensors, type TensorMap } from './safetensors.js';

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';
export const TOKENIZER_FILE = 'tokenizer.json';

export function readCheckpointConfig(dir: string): NeoXConfig {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new UserError('checkpoint directory not found', { file: dir });
  }
  const file = path.join(dir, CONFIG_FILE);
  return fromHFConfig(readJsonFile(file), file);
}

/**
 * What can be known of a checkpoint folder without a backend: it is a folder, its config
 * reads (returned), its weights are safetensors. Commands run it in their checks, before TensorFlow
 * starts, so a wrong folder costs no start-up (and TensorFlow's start-up lines never come
 * before the one error line).
 */
export function checkCheckpointDir(dir: string, what: string): NeoXConfig {
  checkInputDir(dir, what);
  const config = readCheckpointConfig(dir);
  weightFiles(dir);
  return config;
}

export const WEIGHTS_INDEX_FILE = 'model.safetensors.index.json';
const PICKLE_FILES = ['pytorch_model.bin', 'pytorch_model.bin.index.json'];

/**
 * The safetensors file(s) holding a checkpoint's weights: model.safetensors, or the shards
 * a model.safetensors.index.json lists (HF splits large models so). A folder with only
 * PyTorch pickles (older Hub uploads) is refused with the command that converts it:
 * unpickling runs arbitrary code and needs PyTorch, which sinklm does not have.
 */
export function weightFiles(dir: string): string[] {
  const single = path.join(dir, WEIGHTS_FILE);
  if (fs.existsSync(single)) return [single];
  const index = path.join(dir, WEIGHTS_INDEX_FILE);
  if (fs.existsSync(index)) {
    const raw = readJsonFile(index) as { weight_map?: unknown };
    const map = raw?.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new UserError('has no "weight_map" object', { file: index, field: 'weight_map' });
    const shards = [...new Set(Object.values(map as Record<string, unknown>))];
    if (shards.length === 0 || !shards.every((f): f is string => typeof f === 'string' && f !== '' && !f.includes('/') && !f.includes('\\'))) {
      throw new UserError('must map every tensor to a file name in this folder', { file: index, field: 'weight_map' });
    }
    return shards.sort().map((f) => path.join(dir, f));
  }
  const pickle = PICKLE_FILES.find((f) => fs.existsSync(path.join(dir, f)));
  if (pickle) {
    const q = dir.replace(/\\/g, '\\\\').replace(/'/g, "\\'");
    throw new UserError(
      `has ${pickle} but no ${WEIGHTS_FILE}; sinklm reads safetensors only. Convert it once (needs torch and transformers): ` +
        `python3 -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('${q}').save_pretrained('${q}', safe_serialization=True)"`,
      { file: dir },
    );
  }
  throw new UserError('file not found (a checkpoint needs its weights in safetensors)', { file: single });
}

/** Reads and checks the weights against the config: every name present, every shape right. */
export function readCheckpointWeights(dir: string, config: NeoXConfig): TensorMap {
  const files = weightFiles(dir);
  const specs = paramSpecs(config);
  const expected = new Set(specs.map((s) => s.name));
  const tensors: TensorMap = new Map();
  // Buffers (causal masks, inv_freq) are skipped unread: old ones are BOOL, and all are recomputed.
  for (const f of files) for (const [name, t] of readSafetensors(f, { keep: (n) => !isIgnoredBuffer(n) }).tensors) tensors.set(name, t);
  const file = files.length === 1 ? files[0]! : path.join(dir, WEIGHTS_INDEX_FILE);
  for (const s of specs) {
    const t = tensors.get(s.name);
    if (!t) throw new UserError(`tensor ${s.name} is missing (config.json says sink_mode "${config.sink_mode}", ${config.num_hidden_layers} layers)`, { file });
    if (t.shape.join() !== s.shape.join()) {
      throw new UserError(`tensor ${s.name} has shape [${t.shape}] but config.json implies [${s.shape}]`, { file });
    }
  }
  for (const name of tensors.keys()) {
    if (!expected.has(name)) {
      throw new UserError(`unexpected tensor ${name} (config.json says sink_mode "${config.sink_mode}")`, { file });
    }
  }
  return tensors;
}

export function loadModel(dir: string): GPTNeoX {
  const config = readCheckpointConfig(dir);
  return new GPTNeoX(config, readCheckpointWeights(dir, config));
}

/** The checkpoint's tokenizer.json, or a UserError saying it is needed. */
export function checkpointTokenizerPath(dir: string): string {
  const p = path.join(dir, TOKENIZER_FILE);
  if (!fs.existsSync(p)) throw new UserError(`${TOKENIZER_FILE} is missing; it is needed to turn text into tokens`, { file: dir });
  return p;
}

/** The name of the first tensor holding a NaN or an infinity, or null when all are finite. */
export function nonFiniteTensor(tensors: TensorMap): string | null {
  for (const [name, t] of tensors) {
    for (const v of t.data) if (!Number.isFinite(v)) return name;
  }
  return null;
}

/**
 * Writes config.json, model.safetensors and (when given) a copy of tokenizer.json into dir.
 * Each file is written atomically; callers that need the whole directory to appear at
 * once write into core/atomicdir's temporary folder (train/ does).
 */
export async function saveModel(dir: string, model: GPTNeoX, opts: { tokenizerPath?: string; weights?: TensorMap } = {}): Promise<void> {
  makeDirs(dir);
  const weights = opts.weights ?? (await model.weights());
  // A diverged model is never saved: no later reader could tell its weights are garbage.
  const bad = nonFiniteTensor(weights);
  if (bad) throw new Error(`refusing to save ${dir}: tensor ${bad} is not finite`);
  writeSafetensors(path.join(dir, WEIGHTS_FILE), weights, { producer: 'sinklm' });
  writeFileAtomic(path.join(dir, CONFIG_FILE), JSON.stringify(toHFConfig(model.config), null, 2) + '\n');
  if (opts.tokenizerPath && path.resolve(opts.tokenizerPath) !== path.resolve(dir, TOKENIZER_FILE)) {
    writeFileAtomic(path.join(dir, TOKENIZER_FILE), fs.readFileSync(opts.tokenizerPath));
  }
}
