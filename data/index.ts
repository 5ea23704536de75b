// data/: text -> tokens -> shards -> batches. The public surface of the folder.
export { loadCorpus, type Corpus, type CorpusOptions } from './corpus.js';
export { splitDocuments, SPLITS, type SplitName, type DocumentSplit } from './split.js';
export { loadTokenizer, trainTokenizer, EOS_TOKEN, SINK_TOKEN, type TextTokenizer } from './tokenizer.js';
export { readShard, type ShardContents } from './shards.js';
export { ManifestSchema, readManifest, type Manifest, type ShardInfo, type SplitInfo } from './manifest.js';
export { prepareData, defaultDataDir, type PrepareOptions } from './prepare.js';
export { loadPrepared, readSplitTokens, type PreparedData } from './prepared.js';
export { BatchSampler, evalBatches, type Batch, type SamplerOptions, type SamplerState } from './sampler.js';
