/**
 * manifest.json: what a prepared data folder holds and how to check it is intact — every
 * file with its sha256, documents and tokens per split, the tokenizer's special ids, and the
 * data config (plus a fingerprint of the corpus files) that produced it.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { DataSection } from '../core/config.js';
import { UserError } from '../core/errors.js';
import { readJsonFile } from '../core/fsutil.js';

export const MANIFEST_FILE = 'manifest.json';
export const TOKENIZER_FILE = 'tokenizer.json';
export const TEST_STREAM_FILE = 'test_stream.txt';
export const MANIFEST_FORMAT = 'sinklm-data';
export const MANIFEST_VERSION = 1;

const count = z.number().int().min(0);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/);

const ShardSchema = z.object({ file: z.string(), sha256, documents: count, tokens: count });
const SplitSchema = z.object({ documents: count, tokens: count, shards: z.array(ShardSchema) });

export const ManifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  version: z.literal(MANIFEST_VERSION),
  created: z.string(),
  corpus: z.object({
    name: z.string(),
    /** Absolute path of the corpus, or null for the embedded one. */
    path: z.string().nullable(),
    documents: count,
    /** sha256 over the corpus files' names, sizes and mtimes (or the package version). */
    fingerprint: z.string(),
  }),
  splits: z.object({ train: SplitSchema, validation: SplitSchema, test: SplitSchema }),
  tokenizer: z.object({
    file: z.string(),
    sha256,
    vocab_size: count,
    sink_token_id: count,
    eos_token_id: count.nullable(),
    /** True when trained here, false when copied from data.tokenizer.path. */
    trained: z.boolean(),
  }),
  test_stream: z.object({ file: z.string(), sha256, chars: count }),
  /** The data section that made this folder (corpus/tokenizer paths as given). */
  source_config: DataSection,
});

export type Manifest = z.infer<typeof ManifestSchema>;
export type ShardInfo = z.infer<typeof ShardSchema>;
export type SplitInfo = z.infer<typeof SplitSchema>;

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function sha256File(file: string): string {
  return sha256Hex(fs.readFileSync(file));
}

/** Reads and validates DIR/manifest.json; a missing or malformed one is a UserError naming it. */
export function readManifest(dir: string): { manifest: Manifest; hash: string } {
  const file = path.join(dir, MANIFEST_FILE);
  const raw = readJsonFile(file);
  const res = ManifestSchema.safeParse(raw);
  if (!res.success) {
    const issue = res.error.issues[0]!;
    throw new UserError(`not a sinklm data manifest (${issue.message})`, { file, field: issue.path.map(String).join('.') || undefined });
  }
  return { manifest: res.data, hash: sha256File(file) };
}

/** Every file the manifest names, with the hash it should have. */
export function manifestFiles(m: Manifest): { file: string; sha256: string }[] {
  return [
    { file: m.tokenizer.file, sha256: m.tokenizer.sha256 },
    { file: m.test_stream.file, sha256: m.test_stream.sha256 },
    ...Object.values(m.splits).flatMap((s) => s.shards.map(({ file, sha256 }) => ({ file, sha256 }))),
  ];
}

/** The first file whose content does not match the manifest, with why; null when all do. */
export function findMismatch(dir: string, m: Manifest): { file: string; why: string } | null {
  for (const f of manifestFiles(m)) {
    const abs = path.join(dir, f.file);
    if (path.basename(f.file) !== f.file) return { file: abs, why: 'manifest names a file outside the folder' };
    if (!fs.existsSync(abs)) return { file: abs, why: 'missing (named in manifest.json)' };
    if (sha256File(abs) !== f.sha256) return { file: abs, why: 'sha256 does not match manifest.json (changed after prepare)' };
  }
  return null;
}
