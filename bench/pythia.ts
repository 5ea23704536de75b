/**
 * A real-size model without a download: a Pythia-160M-shaped checkpoint (12 x 768, 12 heads,
 * vocabulary 50,304, intermediate 3,072, rotary_pct 0.25, 2,048 positions) with random
 * float16 weights, written in the layout HF ships Pythia (Pythia's config.json fields, no
 * sinklm block, float16 safetensors), then loaded and streamed as `stream-eval` would.
 *
 * Measured: the time and memory to load it (read + float16 -> float32 + tensors), and the
 * ms/token of the cached one-token step at a full cache (S+W keys, each timed token evicts
 * one) on the host step and on the tensor step; whether the host step fits its budget in
 * the 4 GiB WebAssembly memory, and which path streaming picks by itself, for every
 * Pythia size (from the shapes alone: nothing that big is built).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SinkCache, type SinkWindow } from '../infer/cache/sinks.js';
import { decodePath, hostStepTooBig, stepOn, type DecodePath } from '../infer/policy.js';
import { readCheckpointConfig, readCheckpointWeights } from '../model/checkpoint.js';
import { fromHFConfig, headDim, type NeoXConfig } from '../model/config.js';
import { HOST_BUDGET_BYTES, hostMemory, hostStepBytes, WASM_MAX_BYTES } from '../model/hostmem.js';
import { releaseHostStep } from '../model/hoststep.js';
import { GPTNeoX } from '../model/neox.js';
import { paramSpecs } from '../model/params.js';
import { writeSafetensorsFrom, type TensorMap } from '../model/safetensors.js';
import { machine } from './decode.js';
import { median } from './train.js';

/** config.json of a Pythia model as the Hub has it (transformers 4.24 fields), for a shape. */
export function pythiaConfigJson(shape: PythiaShape): Record<string, unknown> {
  return {
    architectures: ['GPTNeoXForCausalLM'],
    bos_token_id: 0,
    classifier_dropout: 0.1,
    eos_token_id: 0,
    hidden_act: 'gelu',
    hidden_size: shape.hidden,
    initializer_range: 0.02,
    intermediate_size: 4 * shape.hidden,
    layer_norm_eps: 1e-5,
    max_position_embeddings: 2048,
    model_type: 'gpt_neox',
    num_attention_heads: shape.heads,
    num_hidden_layers: shape.layers,
    rotary_emb_base: 10000,
    rotary_pct: 0.25,
    tie_word_embeddings: false,
    torch_dtype: 'float16',
    transformers_version: '4.24.0',
    use_cache: true,
    use_parallel_residual: true,
    vocab_size: shape.vocab,
  };
}

export interface PythiaShape {
  name: string;
  layers: number;
  hidden: number;
  heads: number;
  vocab: number;
}

/** The Pythia suite's shapes (Biderman et al. 2023, Table 1; vocabularies as the Hub configs). */
export const PYTHIA_SHAPES: PythiaShape[] = [
  { name: 'pythia-70m', layers: 6, hidden: 512, heads: 8, vocab: 50304 },
  { name: 'pythia-160m', layers: 12, hidden: 768, heads: 12, vocab: 50304 },
  { name: 'pythia-410m', layers: 24, hidden: 1024, heads: 16, vocab: 50304 },
  { name: 'pythia-1b', layers: 16, hidden: 2048, heads: 8, vocab: 50304 },
  { name: 'pythia-1.4b', layers: 24, hidden: 2048, heads: 16, vocab: 50304 },
  { name: 'pythia-2.8b', layers: 32, hidden: 2560, heads: 32, vocab: 50304 },
  { name: 'pythia-6.9b', layers: 32, hidden: 4096, heads: 32, vocab: 50432 },
  { name: 'pythia-12b', layers: 36, hidden: 5120, heads: 40, vocab: 50688 },
];

/**
 * Writes a random float16 checkpoint of a Pythia shape into `dir` (config.json and
 * model.safetensors). Weights ~ N(0, 0.02) as Pythia's init, LayerNorm 1 and biases 0; the
 * values do not change the timing, only the shapes do.
 */
export function writeRandomPythia(dir: string, shape: PythiaShape, seed = 1): { bytes: number; params: number } {
  fs.mkdirSync(dir, { recursive: true });
  const json = pythiaConfigJson(shape);
  const config = fromHFConfig(json);
  let s = seed >>> 0 || 1;
  // xorshift32 and a 4-uniform sum: fast enough for 10^8 weights, normal enough for a bench.
  const uniform = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  const specs = paramSpecs(config);
  let params = 0;
  const file = path.join(dir, 'model.safetensors');
  // One tensor in memory at a time: what is measured next is loading, not this.
  writeSafetensorsFrom(
    file,
    specs,
    (i) => {
      const spec = specs[i]!;
      const n = spec.shape.reduce((a, b) => a * b, 1);
      params += n;
      const data = new Float32Array(n);
      if (spec.kind === 'norm_weight') data.fill(1);
      else if (spec.kind !== 'bias') for (let j = 0; j < n; j++) data[j] = 0.02 * 1.7320508 * (uniform() + uniform() + uniform() + uniform() - 2);
      return data;
    },
    {},
    { dtype: 'F16' },
  );
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(json, null, 2) + '\n');
  return { bytes: fs.statSync(file).size, params };
}

export interface StepTiming {
  decode: DecodePath;
  cache: string;
  /** Seconds to fill the cache to S+W keys (prefill chunks on the same path). */
  fill_s: number;
  tokens: number;
  ms_per_token: number;
  ms_median: number;
  /** Bytes held in the host memory after the row (weights + cache + activations; host step only). */
  host_mb: number;
  rss_mb: number;
}

/**
 * ms/token of the cached step on one path, at full S+W caches (every timed token evicts
 * one). Several streams of one capacity step as one batch, as validate's grid does.
 */
export async function timeStep(model: GPTNeoX, decode: DecodePath, streams: SinkWindow[], tokens: number, warmup = 2): Promise<StepTiming> {
  const c = model.config;
  const B = streams.length;
  const cache = new SinkCache(streams, 0, { layers: c.num_hidden_layers, heads: c.num_attention_heads, headDim: headDim(c) });
  let s = 12345;
  const rand = () => (s = (s * 1103515245 + 12345) % 2147483648) % c.vocab_size;
  // The same tokens in every stream, stream-major, as makeSinkBatch feeds them.
  const batch = (ids: number[]) => Array.from({ length: B }, () => ids).flat();
  try {
    const t0 = performance.now();
    const cap = cache.capacity;
    // A batched SinkCache takes one token at a time; a single stream takes chunks until full.
    const chunk = B > 1 ? 1 : 128;
    for (let at = 0; at < cap; at += chunk) stepOn(decode, model, batch(Array.from({ length: Math.min(chunk, cap - at) }, rand)), cache).dispose();
    const fill = (performance.now() - t0) / 1000;
    const one = async () => {
      const logits = stepOn(decode, model, batch([rand()]), cache);
      await logits.data();
      logits.dispose();
    };
    for (let i = 0; i < warmup; i++) await one();
    const ms: number[] = [];
    for (let i = 0; i < tokens; i++) {
      const t = performance.now();
      await one();
      ms.push(performance.now() - t);
    }
    return {
      decode,
      cache: streams.map((x) => `${x.sinks}+${x.window}`).join(','),
      fill_s: fill,
      tokens,
      ms_per_token: ms.reduce((a, b) => a + b, 0) / ms.length,
      ms_median: median(ms),
      host_mb: hostMemory().used / 2 ** 20,
      rss_mb: process.memoryUsage().rss / 2 ** 20,
    };
  } finally {
    cache.dispose();
  }
}

export interface PythiaFit {
  name: string;
  params_m: number;
  /** Host memory the host step needs at the bench's cache (weights + KV + activations). */
  host_mb: number;
  fits_budget: boolean;
  fits_wasm: boolean;
  /** The path streaming picks by itself on a CPU (no SINKLM_DECODE). */
  auto: DecodePath;
}

export function pythiaFits(keys: number): PythiaFit[] {
  return PYTHIA_SHAPES.map((shape) => {
    const c: NeoXConfig = fromHFConfig(pythiaConfigJson(shape));
    const need = hostStepBytes(c, keys);
    const params = paramSpecs(c).reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0);
    // Decided as decodePath decides for a model with no host step yet (and nothing else in host memory).
    const stand = { config: c, derived: null, weightsVersion: 0 } as unknown as GPTNeoX;
    return {
      name: shape.name,
      params_m: params / 1e6,
      host_mb: need / 2 ** 20,
      fits_budget: need <= HOST_BUDGET_BYTES,
      fits_wasm: need <= WASM_MAX_BYTES,
      auto: hostStepTooBig(stand, keys) ? 'tensor' : 'host',
    };
  });
}

export interface PythiaBenchOptions {
  /** Where to write the checkpoint (default: a temporary folder, removed afterwards). */
  dir?: string;
  sinks: number;
  window: number;
  tokens: number;
  paths: DecodePath[];
  /** Paths to time validate's grid on: its four caches of one capacity stepped as one batch. */
  grid?: DecodePath[];
  log?: (line: string) => void;
}

export interface PythiaBenchResult {
  model: { shape: string; params_m: number; file_mb: number; dtype: 'F16'; dir: string | null };
  build_s: number;
  load: { read_s: number; tensors_s: number; total_s: number; rss_before_mb: number; rss_after_mb: number };
  steps: StepTiming[];
  host_step: { need_mb: number; budget_mb: number; wasm_max_mb: number; fits: boolean; auto: DecodePath };
  suite: PythiaFit[];
  max_rss_mb: number;
  backend: string;
  threads: number;
  loadavg_start: number;
  loadavg: number;
}

export async function benchPythia(o: PythiaBenchOptions): Promise<PythiaBenchResult> {
  const log = o.log ?? (() => {});
  const loadStart = machine().loadavg;
  const shape = PYTHIA_SHAPES.find((s) => s.name === 'pythia-160m')!;
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-pythia-bench-'));
  try {
    log(`bench pythia: writing a random float16 ${shape.name}-shaped checkpoint to ${dir}`);
    let t = performance.now();
    const built = writeRandomPythia(dir, shape);
    const build = (performance.now() - t) / 1000;
    log(`bench pythia: ${(built.params / 1e6).toFixed(1)}M parameters, ${(built.bytes / 2 ** 20).toFixed(0)} MB in ${build.toFixed(1)} s; loading`);

    const rssBefore = process.memoryUsage().rss / 2 ** 20;
    t = performance.now();
    const config = readCheckpointConfig(dir);
    let weights: TensorMap | null = readCheckpointWeights(dir, config);
    const read = (performance.now() - t) / 1000;
    t = performance.now();
    const model = new GPTNeoX(config, weights);
    weights = null;
    const tensors = (performance.now() - t) / 1000;
    const rssAfter = process.memoryUsage().rss / 2 ** 20;
    log(`bench pythia: loaded in ${(read + tensors).toFixed(2)} s (read + float16 -> float32 ${read.toFixed(2)} s, tensors ${tensors.toFixed(2)} s), rss ${rssAfter.toFixed(0)} MB`);

    const keys = o.sinks + o.window;
    const need = hostStepBytes(config, keys);
    const saved = process.env.SINKLM_DECODE;
    delete process.env.SINKLM_DECODE;
    const auto = decodePath(model, keys);
    const steps: StepTiming[] = [];
    try {
      // One stream on each path, then validate's grid (0+C, 1+(C-1), 2+(C-2), 4+(C-4)) batched.
      const runs: [DecodePath, SinkWindow[]][] = o.paths.map((p) => [p, [{ sinks: o.sinks, window: o.window }]]);
      if (o.grid) for (const p of o.grid) runs.push([p, [0, 1, 2, 4].map((k) => ({ sinks: k, window: keys - k }))]);
      for (const [p, streams] of runs) {
        const what = streams.length > 1 ? `${streams.length} streams batched` : `${o.sinks}+${o.window}`;
        log(`bench pythia: ${p} step, ${what}: filling the cache, then ${o.tokens} timed tokens`);
        const r = await timeStep(model, p, streams, o.tokens);
        log(`bench pythia: ${p} step, ${what}: ${r.ms_median.toFixed(1)} ms/token (median; mean ${r.ms_per_token.toFixed(1)}), cache filled in ${r.fill_s.toFixed(1)} s, rss ${r.rss_mb.toFixed(0)} MB`);
        steps.push(r);
        // Each run is measured with only its own memory.
        releaseHostStep(model);
      }
    } finally {
      if (saved !== undefined) process.env.SINKLM_DECODE = saved;
      model.dispose();
    }
    const m = machine();
    return {
      model: { shape: `${shape.name}: ${shape.layers} x ${shape.hidden}, ${shape.heads} heads, intermediate ${4 * shape.hidden}, vocab ${shape.vocab}, rotary_pct 0.25, 2048 positions`, params_m: built.params / 1e6, file_mb: built.bytes / 2 ** 20, dtype: 'F16', dir: o.dir ?? null },
      build_s: build,
      load: { read_s: read, tensors_s: tensors, total_s: read + tensors, rss_before_mb: rssBefore, rss_after_mb: rssAfter },
      steps,
      host_step: { need_mb: need / 2 ** 20, budget_mb: HOST_BUDGET_BYTES / 2 ** 20, wasm_max_mb: WASM_MAX_BYTES / 2 ** 20, fits: need <= HOST_BUDGET_BYTES, auto },
      suite: pythiaFits(keys),
      max_rss_mb: process.resourceUsage().maxRSS / 1024,
      backend: m.backend,
      threads: m.threads,
      loadavg_start: loadStart,
      loadavg: m.loadavg,
    };
  } finally {
    if (!o.dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function formatPythiaBench(r: PythiaBenchResult): string {
  const out = [
    `sinklm bench pythia  [backend ${r.backend}, ${r.threads} threads, load average ${r.loadavg_start.toFixed(2)} at start, ${r.loadavg.toFixed(2)} at end]`,
    `model: ${r.model.shape}; ${r.model.params_m.toFixed(1)}M parameters, random float16 weights, ${r.model.file_mb.toFixed(0)} MB of safetensors (written in ${r.build_s.toFixed(1)} s)`,
    `load: ${r.load.total_s.toFixed(2)} s (read + float16 -> float32 ${r.load.read_s.toFixed(2)} s, tensors ${r.load.tensors_s.toFixed(2)} s); rss ${r.load.rss_before_mb.toFixed(0)} -> ${r.load.rss_after_mb.toFixed(0)} MB`,
    `step    cache(s)                            ms/token  median  cache fill s  host MB  rss MB`,
  ];
  for (const s of r.steps) {
    out.push(`${s.decode.padEnd(7)} ${s.cache.padEnd(33)} ${s.ms_per_token.toFixed(1).padStart(11)} ${s.ms_median.toFixed(1).padStart(7)} ${s.fill_s.toFixed(1).padStart(13)} ${s.host_mb.toFixed(0).padStart(8)} ${s.rss_mb.toFixed(0).padStart(7)}`);
  }
  const h = r.host_step;
  out.push(`host step of this model at this cache: ${h.need_mb.toFixed(0)} MB of WebAssembly memory (budget ${h.budget_mb} MB of the ${h.wasm_max_mb} MB maximum): ${h.fits ? 'fits' : 'does not fit'}; streaming picks the ${h.auto} step by itself`);
  out.push(`the Pythia suite at this cache (from the shapes):`);
  out.push(`model          params M  host step MB  fits budget  fits 4 GiB  automatic step`);
  for (const f of r.suite) {
    out.push(`${f.name.padEnd(14)} ${f.params_m.toFixed(0).padStart(8)} ${f.host_mb.toFixed(0).padStart(13)} ${String(f.fits_budget).padStart(12)} ${String(f.fits_wasm).padStart(11)}  ${f.auto}`);
  }
  out.push(`peak rss of the run ${r.max_rss_mb.toFixed(0)} MB (writing the checkpoint included)`);
  if (r.loadavg_start > 0.5 * r.threads) out.push(`machine busy: load average ${r.loadavg_start.toFixed(2)} on ${r.threads} threads; other processes share the cores, so these figures understate an idle machine`);
  return out.join('\n');
}
