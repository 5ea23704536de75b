/**
 * Opening a prepared folder: the manifest checked against every file it names, and the
 * splits read back as the token streams the trainer and evaluators consume.
 */
import * as path from 'node:path';
import { UserError } from '../core/errors.js';
import { MANIFEST_FILE, findMismatch, readManifest, type Manifest, type SplitInfo } from './manifest.js';
import { readShard } from './shards.js';
import type { SplitName } from './split.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';

export interface PreparedData {
  /** Absolute path of the prepared folder. */
  dir: string;
  manifest: Manifest;
  /** sha256 of manifest.json: names this exact data in checkpoints and reports. */
  manifestHash: string;
  tokenizer: TextTokenizer;
  /** True when an existing preparation was found intact and reused. */
  reused: boolean;
}

/** Stream length of a split once documents are joined with the separator. */
export function streamTokens(split: SplitInfo, eos: number | null): number {
  return split.tokens + (eos === null ? 0 : Math.max(0, split.documents - 1));
}

/** Opens a prepared folder, checking every file against manifest.json. */
export async function loadPrepared(dir: string): Promise<PreparedData> {
  const abs = path.resolve(dir);
  const { manifest, hash } = readManifest(abs);
  const bad = findMismatch(abs, manifest);
  if (bad) throw new UserError(bad.why, { file: bad.file });
  const tokenizer = await loadTokenizer(path.join(abs, manifest.tokenizer.file));
  if (tokenizer.vocabSize !== manifest.tokenizer.vocab_size || tokenizer.sinkTokenId !== manifest.tokenizer.sink_token_id) {
    throw new UserError('tokenizer does not match manifest.json (vocab size or sink id)', { file: tokenizer.path });
  }
  return { dir: abs, manifest, manifestHash: hash, tokenizer, reused: true };
}

/** A split as one token stream, `<|endoftext|>` between documents, and where each starts. */
export async function readSplitTokens(prep: PreparedData, split: SplitName): Promise<{ tokens: Int32Array; docStarts: Int32Array }> {
  const info = prep.manifest.splits[split];
  const eos = prep.manifest.tokenizer.eos_token_id;
  const tokens = new Int32Array(streamTokens(info, eos));
  const docStarts = new Int32Array(info.documents);
  let at = 0;
  let doc = 0;
  for (const s of info.shards) {
    const shard = readShard(path.join(prep.dir, s.file));
    for (let i = 0; i < shard.docIds.length; i++) {
      if (doc > 0 && eos !== null) tokens[at++] = eos;
      docStarts[doc++] = at;
      const part = shard.tokens.subarray(shard.offsets[i]!, shard.offsets[i + 1]!);
      tokens.set(part, at);
      at += part.length;
    }
  }
  if (doc !== info.documents || at !== tokens.length) {
    throw new UserError(`${split} shards hold ${doc} documents / ${at} stream tokens, manifest.json says ${info.documents} / ${tokens.length}`, {
      file: path.join(prep.dir, MANIFEST_FILE),
    });
  }
  return { tokens, docStarts };
}
