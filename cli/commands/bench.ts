import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Argv, CommandModule } from 'yargs';
import { benchDecode, benchLong, cacheSpecFor, longDrift, machine } from '../../bench/decode.js';
import { benchModelConfig, benchTrain, type TrainBenchResult } from '../../bench/train.js';
import { benchPythia, formatPythiaBench } from '../../bench/pythia.js';
import { initBackend } from '../../core/backend.js';
import { loadRunConfig } from '../../core/config.js';
import { UserError } from '../../core/errors.js';
import { checkOutputPath } from '../../core/outpath.js';
import { checkCache, DECODE_PATHS, parseCache, POLICIES, type DecodePath, type PolicyName } from '../../infer/policy.js';
import { checkCheckpointDir, loadModel, readCheckpointConfig } from '../../model/checkpoint.js';
import type { NeoXConfig } from '../../model/config.js';
import { GPTNeoX } from '../../model/neox.js';
import { initParams } from '../../model/params.js';
import { printJson, runCommand, withJson, type GlobalArgs } from '../common.js';

const DEFAULT_CONFIG = 'configs/pythia-14m.json';

/** The bench preset: in the working directory, else the one shipped with the package. */
function defaultConfig(): string {
  if (fs.existsSync(DEFAULT_CONFIG)) return DEFAULT_CONFIG;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const p = path.join(dir, DEFAULT_CONFIG);
    if (fs.existsSync(p)) return p;
    const up = path.dirname(dir);
    if (up === dir) return DEFAULT_CONFIG;
    dir = up;
  }
}

const log = (line: string) => process.stderr.write(line + '\n');

function positiveInt(v: number | undefined, field: string, min = 1): void {
  if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new UserError(`must be an integer >= ${min} (got ${v})`, { field });
}

/** "256,1024,4096" (k and M allowed: "10k,1M") -> integers. */
function intList(text: string, field: string): number[] {
  return text.split(',').map((s) => {
    const m = /^\s*(\d+)([kKmM]?)\s*$/.exec(s);
    const scale = m?.[2] ? (m[2].toLowerCase() === 'k' ? 1e3 : 1e6) : 1;
    const n = m ? Number(m[1]) * scale : NaN;
    if (!Number.isInteger(n) || n < 1) throw new UserError(`"${s}" is not a positive integer; write e.g. 256,1024,4096`, { field });
    return n;
  });
}

function policyList(text: string): PolicyName[] {
  return text.split(',').map((s) => {
    const p = s.trim() as PolicyName;
    if (!POLICIES.includes(p)) throw new UserError(`"${s}" is not a policy; choose from ${POLICIES.join(', ')}`, { field: '--policies' });
    return p;
  });
}

/** A note when other processes share the cores: then every figure understates this machine. */
function busyNote(loadavg: number, threads: number): string | undefined {
  return loadavg > 0.5 * threads ? `machine busy: 1-min load average ${loadavg.toFixed(2)} on ${threads} threads; other processes share the cores, so these figures understate an idle machine` : undefined;
}

interface TrainArgs extends GlobalArgs {
  config?: string;
  steps: number;
  warmup: number;
  batch?: number;
  seq?: number;
  replicas?: number;
  json: boolean;
}

const trainSub: CommandModule<GlobalArgs, TrainArgs> = {
  command: 'train',
  describe: 'training tokens/s, ms per step (forward, backward, optimizer) and MFU on random batches',
  builder: (y) =>
    withJson(
      y
        .option('config', { type: 'string', describe: `run config whose model, batch and seq are measured (default ${DEFAULT_CONFIG})` })
        .option('steps', { type: 'number', default: 10, describe: 'timed steps (the split runs as many again)' })
        .option('warmup', { type: 'number', default: 2, describe: 'untimed steps first' })
        .option('batch', { type: 'number', describe: 'override train.batch_size' })
        .option('seq', { type: 'number', describe: 'override train.seq_len' })
        .option('replicas', { type: 'number', describe: 'data-parallel processes, one TensorFlow thread each (override train.replicas)' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      positiveInt(args.steps, '--steps');
      positiveInt(args.replicas, '--replicas');
      positiveInt(args.warmup, '--warmup', 0);
      positiveInt(args.batch, '--batch');
      positiveInt(args.seq, '--seq', 2);
      const cfg = loadRunConfig(args.config ?? defaultConfig());
      const t = cfg.train;
      const replicas = args.replicas ?? t.replicas;
      const batch = args.batch ?? t.batch_size;
      if (batch % replicas !== 0) throw new UserError(`batch ${batch} does not split evenly over ${replicas} replicas`, { field: '--replicas' });
      await initBackend({ prefer: args.backend, quiet: !!args.json, intraOpThreads: replicas > 1 ? 1 : undefined });
      const seq = args.seq ?? t.seq_len;
      const model = benchModelConfig(cfg, { max_position_embeddings: Math.max(seq, cfg.model.max_position_embeddings ?? t.seq_len) });
      const r = await benchTrain({
        model,
        batch,
        seq,
        replicas,
        steps: args.steps,
        warmup: args.warmup,
        adamw: { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weightDecay: t.weight_decay, gradClip: t.grad_clip },
        lr: t.lr,
        seed: t.seed,
        log,
      });
      const note = busyNote(r.loadavg, r.threads);
      if (args.json) return printJson({ ...r, config_file: path.relative(process.cwd(), cfg.source), ...(note ? { note } : {}) });
      process.stdout.write(trainTable(r, cfg.name ?? path.basename(cfg.source, '.json'), note));
    }, { backend: false }),
};

/** The kernel set a figure was measured with, in one line. */
export function kernelSummary(k: TrainBenchResult['kernels']): string {
  if (!k.in_use) return `off (${k.reason ?? 'not loaded'})`;
  return `on: ${k.ops.filter((o) => !o.endsWith('Grad')).map((o) => o.replace(/^Sinklm/, '')).join(', ')} (+ backward; ${k.build ?? '?'}, ${k.threads ?? '?'} threads)`;
}

function trainTable(r: TrainBenchResult, name: string, note?: string): string {
  const c = r.config as Record<string, number>;
  const f = (x: number, d = 1) => x.toFixed(d).padStart(9);
  const lines = [
    `sinklm bench train  [backend ${r.backend}, ${r.replicas > 1 ? `${r.replicas} replicas x ` : ''}${r.threads} threads, load average ${r.loadavg.toFixed(2)}, CPU utilisation ${r.cpu_utilization.toFixed(2)}${r.replicas > 1 ? ' (this process)' : ''}]`,
    `sinklm kernels   ${kernelSummary(r.kernels)}`,
    `model            ${name}: ${c.num_hidden_layers} layers x ${c.hidden_size}, ${c.num_attention_heads} heads, vocab ${c.vocab_size}; ${(r.params / 1e6).toFixed(2)}M params (${(r.params_matmul / 1e6).toFixed(2)}M in matmuls)`,
    `batch x seq      ${r.batch} x ${r.seq} = ${r.batch * r.seq} tokens/step; ${r.steps} timed steps after ${r.warmup} warmup`,
    `tokens/s        ${f(r.tokens_per_s, 0)}${r.replicas > 1 ? `   (${r.replicas} data-parallel replicas; the split and profile below are this process alone on the whole batch)` : ''}`,
    `ms/step         ${f(r.ms_per_step)}   (median ${r.ms_per_step_median.toFixed(1)})`,
    `  forward       ${f(r.ms_forward)}`,
    `  backward      ${f(r.ms_backward)}`,
    `  optimizer     ${f(r.ms_optimizer)}`,
    `model GFLOP/step${f(r.model_gflops_per_step, 2)}   (${(r.model_flops_per_token / 1e6).toFixed(2)} MFLOP/token: 6N + 12LTD)`,
    `matmul peak     ${f(r.peak_gflops)} GFLOP/s   (${r.peak.n}^3 float32, same backend, same run)`,
    `MFU             ${f(100 * r.mfu)} %`,
    `profile, 1 step: ${r.profile.kernels} kernels, ${r.profile.kernel_ms.toFixed(0)} ms in kernels of ${r.profile.wall_ms.toFixed(0)} ms wall (profiled)`,
    ...r.profile.top.map((k) => `  ${k.name.padEnd(22)} ${f(k.ms)} ms ${f(100 * k.share)} %  x${k.count}`),
  ];
  if (note) lines.push(note);
  return lines.join('\n') + '\n';
}

interface DecodeArgs extends GlobalArgs {
  config?: string;
  checkpoint?: string;
  caches?: string;
  policies: string;
  tokens: number;
  'recompute-tokens': number;
  warmup: number;
  sinks: number;
  long?: string;
  'long-cache': number;
  'long-window': number;
  json: boolean;
}

const decodeSub: CommandModule<GlobalArgs, DecodeArgs> = {
  command: 'decode',
  describe: 'per-token latency and memory of each streaming policy at each cache size; --long: flatness over a long stream',
  builder: (y) =>
    withJson(
      y
        .option('config', { type: 'string', describe: `model shape with random weights (default ${DEFAULT_CONFIG}; positions raised to fit the caches)` })
        .option('checkpoint', { type: 'string', describe: 'measure this checkpoint instead of random weights' })
        .option('caches', { type: 'string', describe: 'keys per token, comma-separated (default 256,1024,4096; none with --long unless given)' })
        .option('policies', { type: 'string', default: POLICIES.join(','), describe: 'comma-separated: sinks, window, dense, recompute' })
        .option('tokens', { type: 'number', default: 32, describe: 'timed tokens per row for sinks, window and dense' })
        .option('recompute-tokens', { type: 'number', default: 8, describe: 'timed tokens per row for recompute (each re-runs the whole window)' })
        .option('warmup', { type: 'number', default: 2, describe: 'untimed tokens before each row' })
        .option('sinks', { type: 'number', default: 4, describe: 'sink tokens S of the sinks policy (W = cache - S)' })
        .option('long', { type: 'string', describe: 'stream this many tokens through sinks, reporting at each milestone, e.g. 10000,100000,1000000 (1M takes hours)' })
        .option('long-cache', { type: 'number', default: 256, describe: 'keys per token (S+W) of the --long stream' })
        .option('long-window', { type: 'number', default: 1000, describe: 'tokens averaged before each --long milestone' })
        .conflicts('config', 'checkpoint'),
    ),
  handler: (args) =>
    runCommand(
      args,
      async () => {
        const { policies, caches, long, source, config, seed } = planDecode(args);
        const model = args.checkpoint ? loadModel(args.checkpoint) : new GPTNeoX(config, initParams(config, seed));
        try {
          const c = model.config;
          const params = model.specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);
          const modelInfo = {
            source,
            params,
            num_hidden_layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            sink_mode: c.sink_mode,
          };
          const loadStart = machine().loadavg;
          const { rows, ratios } = caches.length
            ? await benchDecode(model, { caches, policies, sinks: args.sinks, tokens: args.tokens, recomputeTokens: args['recompute-tokens'], warmup: args.warmup, log })
            : { rows: [], ratios: [] };
          // Ctrl-C (or SIGTERM) on a long stream stops it and still prints what was measured.
          const stop = new AbortController();
          const onSignal = () => stop.abort();
          process.on('SIGINT', onSignal);
          process.on('SIGTERM', onSignal);
          let longRows: Awaited<ReturnType<typeof benchLong>> = [];
          try {
            if (long.length) {
              longRows = await benchLong(model, { cache: args['long-cache'], sinks: args.sinks, milestones: long, window: args['long-window'], progress: args.json ? false : undefined, signal: stop.signal, log });
            }
          } finally {
            process.off('SIGINT', onSignal);
            process.off('SIGTERM', onSignal);
          }
          const m = machine();
          const note = busyNote(m.loadavg, m.threads);
          const drift = longDrift(longRows);
          const settings = { tokens: args.tokens, recompute_tokens: args['recompute-tokens'], warmup: args.warmup, sinks: args.sinks, long_cache: long.length ? args['long-cache'] : undefined, long_window: long.length ? args['long-window'] : undefined };
          if (args.json) {
            return printJson({ backend: m.backend, threads: m.threads, host_threads: m.host_threads, model: modelInfo, settings, rows, ratios, long: longRows, ...(drift ? { long_drift: drift } : {}), loadavg: m.loadavg, loadavg_start: loadStart, ...(note ? { note } : {}) });
          }
          const out = [`sinklm bench decode  [backend ${m.backend}, ${m.threads} threads, host step on ${m.host_threads}, load average ${m.loadavg.toFixed(2)}]  model: ${source}, ${(params / 1e6).toFixed(2)}M params`];
          if (rows.length) {
            out.push(`policy     cache  step    ms/token  median  backend kernels/token  kv   rss MB  tensor MB  read bound  x bound   (timed tokens: ${args.tokens}, recompute ${args['recompute-tokens']}, after ${args.warmup} warmup)`);
            for (const r of rows) {
              out.push(`${r.policy.padEnd(9)} ${String(r.cache).padStart(6)}  ${r.decode.padEnd(6)} ${r.ms_per_token.toFixed(2).padStart(9)} ${r.ms_median.toFixed(2).padStart(7)} ${String(r.ops_per_token).padStart(22)} ${String(r.kv_tokens).padStart(5)} ${r.rss_mb.toFixed(0).padStart(7)} ${r.tensor_mb.toFixed(1).padStart(9)} ${r.read_bound_ms.toFixed(3).padStart(8)} ms ${r.over_bound.toFixed(1).padStart(7)}x`);
            }
            out.push(`read bound: the time to read once the bytes a token must touch (weights + every layer's keys and values at that cache), measured here; x bound: the median over it`);
            out.push(`step: where the cached one-token step ran (host: typed arrays + SIMD WebAssembly, no backend kernels, its larger matrices and attention split between SINKLM_HOST_THREADS threads; tensor: backend kernels; SINKLM_DECODE=host|tensor)`);
            for (const q of ratios) out.push(`recompute / sinks at ${q.cache}: ${q.recompute_over_sinks.toFixed(1)}x (medians; means ${q.recompute_over_sinks_mean.toFixed(1)}x); the paper: 22.2x at 4096 for Llama-2-13B`);
          }
          if (longRows.length) {
            out.push(`long stream through sinks at ${args['long-cache']} keys (ms/token: mean and median of the last ${args['long-window']} tokens)`);
            out.push(`   tokens  ms/token  median  rss MB  tensors  host MB  step`);
            for (const l of longRows) {
              out.push(`${String(l.tokens).padStart(9)} ${l.ms_per_token.toFixed(2).padStart(9)} ${l.ms_median.toFixed(2).padStart(7)} ${l.rss_mb.toFixed(0).padStart(7)} ${String(l.num_tensors).padStart(8)} ${l.host_mb.toFixed(1).padStart(8)}  ${l.decode}${l.interrupted ? '  (interrupted here)' : ''}`);
            }
            if (drift) {
              const pc = (x: number) => `${(100 * x).toFixed(1)}%`;
              out.push(`drift ${drift.from_tokens} -> ${drift.to_tokens} tokens ((max - min) / min): median ms/token ${pc(drift.ms_median)}, mean ${pc(drift.ms_mean)}, RSS ${pc(drift.rss)}; tensors ${drift.tensors_flat ? 'flat' : 'CHANGED'}, host memory ${drift.host_flat ? 'flat' : 'CHANGED'}`);
            }
          }
          if (note) out.push(note);
          process.stdout.write(out.join('\n') + '\n');
        } finally {
          model.dispose();
        }
      },
      { check: () => void planDecode(args) },
    ),
};

/**
 * Every input of `bench decode`, checked before TensorFlow starts: the numbers and lists, the
 * checkpoint folder or config, and each cache against the model's positions.
 */
function planDecode(args: DecodeArgs): { policies: PolicyName[]; caches: number[]; long: number[]; source: string; config: NeoXConfig; seed: number } {
  for (const k of ['tokens', 'recompute-tokens', 'long-cache', 'long-window'] as const) positiveInt(args[k], `--${k}`);
  positiveInt(args.warmup, '--warmup', 0);
  positiveInt(args.sinks, '--sinks', 0);
  const policies = policyList(args.policies);
  const caches = args.caches !== undefined ? intList(args.caches, '--caches') : args.long ? [] : [256, 1024, 4096];
  const long = args.long ? intList(args.long, '--long') : [];
  const needed = Math.max(...caches, long.length ? args['long-cache'] : 1);
  let config: NeoXConfig;
  let source: string;
  let seed = 0; // random weights' seed (a checkpoint has its own weights)
  if (args.checkpoint) {
    checkCheckpointDir(args.checkpoint, '--checkpoint');
    config = readCheckpointConfig(args.checkpoint);
    source = args.checkpoint;
  } else {
    const cfg = loadRunConfig(args.config ?? defaultConfig());
    const base = benchModelConfig(cfg);
    // One more position than the largest cache, so dense can reach it with a token to spare.
    config = benchModelConfig(cfg, { max_position_embeddings: Math.max(base.max_position_embeddings, needed + 1) });
    source = `random weights, ${path.relative(process.cwd(), cfg.source)}`;
    seed = cfg.train.seed;
  }
  const maxPos = config.max_position_embeddings;
  for (const C of caches) {
    for (const p of policies) checkCache(cacheSpecFor(p, C, args.sinks), p, maxPos, '--caches');
    if (policies.includes('dense') && C < args.warmup + 1 + args.tokens) {
      throw new UserError(`dense at ${C} keys cannot time ${args.tokens} tokens after ${args.warmup} warmup; lower --tokens`, { field: '--caches' });
    }
  }
  if (long.length) checkCache(cacheSpecFor('sinks', args['long-cache'], args.sinks), 'sinks', maxPos, '--long-cache');
  return { policies, caches, long, source, config, seed };
}

interface PythiaArgs extends GlobalArgs {
  cache: string;
  tokens: number;
  paths: string;
  grid: string;
  out?: string;
  json: boolean;
}

const pythiaSub: CommandModule<GlobalArgs, PythiaArgs> = {
  command: 'pythia',
  describe: 'a random float16 Pythia-160M-shaped checkpoint (12 x 768) written as HF ships Pythia: load time, memory, ms/token of the host and tensor steps at a full cache, and which step each Pythia size streams on',
  builder: (y) =>
    withJson(
      y
        .option('cache', { type: 'string', default: '4+1020', describe: 'S+W of the timed sinks cache (filled before timing)' })
        .option('tokens', { type: 'number', default: 16, describe: 'timed tokens per step' })
        .option('paths', { type: 'string', default: 'host,tensor', describe: 'comma-separated decode paths to time: host, tensor' })
        .option('grid', { type: 'string', default: 'host', describe: "decode paths to time validate's grid on (its 4 caches of one capacity as one batch); '' for none" })
        .option('out', { type: 'string', describe: 'keep the checkpoint in this folder (default: a temporary one, removed)' }),
    ),
  handler: (args) =>
    runCommand(args, async () => {
      positiveInt(args.tokens, '--tokens');
      const spec = parseCache(args.cache, '--cache');
      checkCache(spec, 'sinks', 2048, '--cache');
      const pathList = (text: string, field: string) =>
        text
          .split(',')
          .filter((p) => p.trim() !== '')
          .map((p) => {
            const d = p.trim() as DecodePath;
            if (!DECODE_PATHS.includes(d)) throw new UserError(`"${p}" is not a decode path; choose from ${DECODE_PATHS.join(', ')}`, { field });
            return d;
          });
      const paths = pathList(args.paths, '--paths');
      const grid = pathList(args.grid, '--grid');
      if (args.out) checkOutputPath(args.out, 'folder', '--out');
      const r = await benchPythia({ dir: args.out, sinks: spec.sinks, window: spec.window, tokens: args.tokens, paths, grid, log });
      if (args.json) return printJson(r);
      process.stdout.write(formatPythiaBench(r) + '\n');
    }),
};

/** What `sinklm bench` measures; cli/main.ts names anything else as an unknown command. */
export const BENCH_SUBCOMMANDS = [trainSub, decodeSub, pythiaSub].map((c) => String(c.command));

export const benchCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'bench',
  describe: 'throughput and latency figures: bench train | bench decode | bench pythia',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .command(trainSub)
      .command(decodeSub)
      .command(pythiaSub)
      .demandCommand(1, 'name what to measure: train, decode or pythia') as unknown as Argv<GlobalArgs>,
  handler: () => {},
};
