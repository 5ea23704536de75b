import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { crc32c } from '@aws-crypto/crc32c';
import { afterAll, describe, expect, it } from 'vitest';
import { dropEventsAfter, maskedCrc32c, readRecords, TensorBoardWriter, tfRecord } from '../train/tensorboard.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sinklm-tb-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('TFRecord framing', () => {
  it('matches the CRC32C check value and TensorFlow masking', () => {
    const digits = Buffer.from('123456789');
    expect(crc32c(digits) >>> 0).toBe(0xe3069283);
    // Expected values computed by tensorboard's own masked_crc32c.
    expect(maskedCrc32c(digits)).toBe(0xc78ab0e5);

    const rec = tfRecord(digits);
    expect(rec.length).toBe(8 + 4 + 9 + 4);
    expect(rec.readBigUInt64LE(0)).toBe(9n);
    expect(rec.readUInt32LE(8)).toBe(0x3971f937);
    expect(rec.subarray(12, 21).toString()).toBe('123456789');
    expect(rec.readUInt32LE(21)).toBe(0xc78ab0e5);
  });

  it('writes only whole records, and only on flush', () => {
    const dir = path.join(tmp, 'framing');
    const w = new TensorBoardWriter(dir);
    const header = fs.statSync(w.path).size;
    expect(path.basename(w.path)).toMatch(/^events\.out\.tfevents\.\d+\..+\.\d+\.sinklm\d*$/);
    w.scalar('train/loss', 1.5, 1);
    expect(fs.statSync(w.path).size).toBe(header);
    w.flush();
    const buf = fs.readFileSync(w.path);
    // Walk the records: every length must land exactly on the end of the file.
    let off = 0;
    let records = 0;
    while (off < buf.length) {
      const len = Number(buf.readBigUInt64LE(off));
      expect(buf.readUInt32LE(off + 8)).toBe(maskedCrc32c(buf.subarray(off, off + 8)));
      expect(buf.readUInt32LE(off + 12 + len)).toBe(maskedCrc32c(buf.subarray(off + 12, off + 12 + len)));
      off += 16 + len;
      records++;
    }
    expect(off).toBe(buf.length);
    expect(records).toBe(2);
    w.close();
    expect(() => w.scalar('x', 1, 2)).toThrow(/closed/);
  });
});

/** Every summary point in a log dir as [file index, step], files in TensorBoard's (name) order. */
function points(dir: string): [number, number][] {
  const files = fs.readdirSync(dir).filter((f) => f.includes('tfevents')).sort();
  return files.flatMap((f, i) => readRecords(path.join(dir, f)).filter((r) => r.summary).map((r): [number, number] => [i, r.step]));
}

/** A run cut short after logging steps 0-7 with its checkpoint at 4, resumed from 4. */
function resumedRun(dir: string, drop: boolean): void {
  const first = new TensorBoardWriter(dir);
  for (let s = 0; s < 8; s++) first.scalar('train/loss', 5 - s, s, 1_700_000_000 + s);
  first.close();
  if (drop) dropEventsAfter(dir, 4);
  const second = new TensorBoardWriter(dir);
  second.sessionStart(5);
  for (let s = 5; s < 10; s++) second.scalar('train/loss', 5 - s / 2, s, 1_700_000_100 + s);
  second.close();
}

describe('resumed runs', () => {
  it('the redone steps appear once: the first file loses its points past the checkpoint', () => {
    const dir = path.join(tmp, 'overlap');
    resumedRun(dir, true);
    expect(fs.readdirSync(dir).filter((f) => f.includes('tfevents'))).toHaveLength(2);
    const got = points(dir);
    expect(got.map(([, s]) => s)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Steps 5-7 come from the resumed session's file, not the first.
    expect(got.filter(([f]) => f === 0).map(([, s]) => s)).toEqual([0, 1, 2, 3, 4]);
  });

  it("the restart marker is event.proto's session_log (field 7) with status START, not the deprecated log_message (6)", () => {
    const dir = path.join(tmp, 'marker');
    resumedRun(dir, false);
    const second = fs.readdirSync(dir).filter((f) => f.includes('tfevents')).sort()[1]!;
    const bytes = fs.readFileSync(path.join(dir, second));
    // Event field 7, length-delimited (7 << 3 | 2 = 0x3a), 2 bytes: SessionLog field 1 = START (1).
    expect(bytes.includes(Buffer.from([0x3a, 0x02, 0x08, 0x01]))).toBe(true);
    expect(bytes.includes(Buffer.from([0x32, 0x02, 0x08, 0x01]))).toBe(false);
  });

  it('without dropping, the files overlap (what the check above guards against)', () => {
    const dir = path.join(tmp, 'overlap-kept');
    resumedRun(dir, false);
    expect(points(dir).map(([, s]) => s)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9]);
  });

  it('drops a torn record at the end of a file (a kill during an append)', () => {
    const dir = path.join(tmp, 'torn');
    const w = new TensorBoardWriter(dir);
    w.scalar('train/loss', 1, 1);
    w.scalar('train/loss', 2, 2);
    w.close();
    fs.truncateSync(w.path, fs.statSync(w.path).size - 3);
    dropEventsAfter(dir, 10);
    expect(points(dir).map(([, s]) => s)).toEqual([1]);
  });
});

const probe = spawnSync('python3', ['-c', 'import tensorboard'], { encoding: 'utf8' });
const noTensorBoard =
  probe.status === 0 ? '' : `python3 cannot import tensorboard (${(probe.stderr || String(probe.error)).trim().split('\n').pop()})`;
if (noTensorBoard) console.warn(`skipping TensorBoard read-back: ${noTensorBoard}`);

// Reads a log dir with TensorBoard's own loader and prints {tag: [[step, value, wall_time]]}.
const READER = `
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value, e.wall_time] for e in acc.Scalars(t)] for t in acc.Tags()['scalars']}))
`;

function readWithTensorBoard(dir: string): Record<string, [number, number, number][]> {
  const r = spawnSync('python3', ['-c', READER, dir], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`tensorboard reader failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, [number, number, number][]>;
}

describe.skipIf(noTensorBoard !== '')('read back by TensorBoard', () => {
  it('returns every scalar with its step, value and wall time', () => {
    const dir = path.join(tmp, 'run');
    const w = new TensorBoardWriter(dir);
    const losses = Array.from({ length: 50 }, (_, i) => 10 / (i + 1));
    losses.forEach((loss, i) => w.scalar('train/loss', loss, i * 10, 1_700_000_000 + i));
    w.scalar('train/lr', 3e-4, 0, 1_700_000_000.25);
    w.scalar('eval/zero', 0, 7, 1_700_000_001);
    w.close();

    const got = readWithTensorBoard(dir);
    expect(Object.keys(got).sort()).toEqual(['eval/zero', 'train/loss', 'train/lr']);
    expect(got['train/loss']!.map((e) => e[0])).toEqual(losses.map((_, i) => i * 10));
    got['train/loss']!.forEach(([, v], i) => expect(v).toBeCloseTo(losses[i]!, 5));
    expect(got['train/loss']![3]![2]).toBe(1_700_000_003);
    expect(got['train/lr']![0]![1]).toBeCloseTo(3e-4, 9);
    expect(got['train/lr']![0]![2]).toBe(1_700_000_000.25);
    expect(got['eval/zero']).toEqual([[7, 0, 1_700_000_001]]);
  });

  it('shows a resumed run once per step, from the dropped files or from the restart marker alone', () => {
    for (const drop of [true, false]) {
      const dir = path.join(tmp, `resumed-${drop}`);
      resumedRun(dir, drop);
      const got = readWithTensorBoard(dir);
      // The marker alone (drop = false) is TensorBoard's own purge of steps >= 5 seen before it.
      expect(got['train/loss']!.map((e) => e[0])).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(got['train/loss']![6]![1]).toBeCloseTo(5 - 6 / 2, 6);
    }
  });
});
