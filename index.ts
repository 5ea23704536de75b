// The typed library: everything the CLI does is importable from here.
export { UserError, isUserError, describeFailure } from './core/errors.js';
export { loadRunConfig, parseRunConfig, RunConfigSchema, SINK_MODES, type RunConfig, type SinkMode } from './core/config.js';
export { initBackend, ensureBackend, backendInfo, BACKENDS, type BackendInfo, type BackendName } from './core/backend.js';
export { lineChart, barChart, heatmap, heatmapGrid } from './core/plot.js';

// data/: text -> tokens -> shards -> batches
export { prepareData, loadPrepared, readSplitTokens, type PreparedData } from './data/prepare.js';
export { loadTokenizer, trainTokenizer, type TextTokenizer } from './data/tokenizer.js';
export { loadCorpus } from './data/corpus.js';
export { BatchSampler, evalBatches, type Batch } from './data/sampler.js';

// model/: the one transformer
export { GPTNeoX, type AttentionProbe } from './model/neox.js';
export { type NeoXConfig, fromHFConfig, toHFConfig, validateNeoXConfig } from './model/config.js';
export { type KVCache, type CacheLayout } from './model/cache.js';
export { loadModel, saveModel, readCheckpointConfig, readCheckpointWeights } from './model/checkpoint.js';
export { readSafetensors, writeSafetensors, type TensorMap } from './model/safetensors.js';
export { initParams, paramSpecs } from './model/params.js';

// train/: shards -> checkpoint
export { train, evaluate, type TrainOptions, type TrainResult } from './train/trainer.js';
export { AdamW } from './train/optimizer.js';
export { learningRate } from './train/schedule.js';
export { TensorBoardWriter } from './train/tensorboard.js';

// infer/: checkpoint + stream -> tokens, perplexity, attention
export { DenseCache } from './infer/cache/dense.js';
export { SinkCache } from './infer/cache/sinks.js';
export { makePolicy, parseCache, checkCache, POLICIES, type PolicyName, type StreamPolicy, type CacheSpec } from './infer/policy.js';
export { streamEval, type StreamRow } from './infer/stream.js';
export { score, type ScoreResult } from './infer/score.js';
export { loadCheckpoint, readText, textStream, type LoadedCheckpoint } from './infer/text.js';
export { generate } from './infer/generate.js';
export { makeSampler } from './infer/sampling.js';
export { attentionStats, attentionTokens, attentionPlot, type AttentionStats } from './infer/attention.js';

// experiments/: the ablation and its validation
export { ablate, shipAblation } from './experiments/ablate.js';
export { validate, shippedDir } from './experiments/validate.js';
export { evaluateGrid } from './experiments/grid.js';
export { verdicts, formatVerdict, MARGIN, type Verdict } from './experiments/verdicts.js';
export { pairedBootstrap, type PairedDiff } from './experiments/stats.js';

// bench/: throughput and latency
export { benchTrain } from './bench/train.js';
export { benchDecode, benchLong } from './bench/decode.js';
