/**
 * Token shards: Arrow IPC files (the "file" format, readable by pyarrow's `ipc.open_file`
 * and `feather.read_table`), one row per document, so document boundaries survive:
 *
 *   doc_id: int32          the document's index in the corpus
 *   tokens: list<int32>    its token ids, no separators
 */
import * as fs from 'node:fs';
import { Field, Int32, List, makeData, makeVector, Table, tableFromIPC, tableToIPC } from 'apache-arrow';
import { UserError } from '../core/errors.js';

/** A run of documents as one flat buffer: document i is tokens[offsets[i] .. offsets[i+1]). */
export interface ShardContents {
  docIds: Int32Array;
  offsets: Int32Array;
  tokens: Int32Array;
}

/** Packs documents into the flat layout. */
export function packDocuments(docIds: number[], docs: Int32Array[]): ShardContents {
  const offsets = new Int32Array(docs.length + 1);
  docs.forEach((d, i) => (offsets[i + 1] = offsets[i]! + d.length));
  const tokens = new Int32Array(offsets[docs.length]!);
  docs.forEach((d, i) => tokens.set(d, offsets[i]!));
  return { docIds: Int32Array.from(docIds), offsets, tokens };
}

/** The bytes of one shard file. */
export function encodeShard(shard: ShardContents): Uint8Array {
  const n = shard.docIds.length;
  const values = makeData({ type: new Int32(), length: shard.tokens.length, nullCount: 0, data: shard.tokens });
  const type = new List(new Field('item', new Int32(), false));
  const lists = makeData({ type, length: n, nullCount: 0, valueOffsets: shard.offsets, child: values });
  const table = new Table({ doc_id: makeVector(shard.docIds), tokens: makeVector(lists) });
  return tableToIPC(table, 'file');
}

/** Reads a shard file back into the flat layout. */
export function readShard(file: string): ShardContents {
  let table;
  try {
    table = tableFromIPC(fs.readFileSync(file));
  } catch (e) {
    throw new UserError(`not a readable shard (${(e as Error).message})`, { file });
  }
  const ids = table.getChild('doc_id');
  const col = table.getChild('tokens');
  if (!ids || !col) throw new UserError('shard lacks the doc_id/tokens columns', { file });
  const docIds = Int32Array.from(ids.toArray() as Int32Array);
  const offsets = new Int32Array(docIds.length + 1);
  const parts: Int32Array[] = [];
  let row = 0;
  let total = 0;
  for (const chunk of col.data) {
    const vo = chunk.valueOffsets as Int32Array;
    const child = chunk.children[0]!;
    const vals = child.values as Int32Array;
    const lo = vo[chunk.offset]!;
    const hi = vo[chunk.offset + chunk.length]!;
    parts.push(vals.subarray(child.offset + lo, child.offset + hi));
    for (let i = 0; i < chunk.length; i++) offsets[++row] = total + vo[chunk.offset + i + 1]! - lo;
    total += hi - lo;
  }
  const tokens = new Int32Array(total);
  let at = 0;
  for (const p of parts) {
    tokens.set(p, at);
    at += p.length;
  }
  return { docIds, offsets, tokens };
}
