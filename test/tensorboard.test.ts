import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { crc32c } from '@aws-crypto/crc32c';
import { afterAll, describe, expect, it } from 'vitest';
import { TensorBoardWriter, maskedCrc32c, tfRecord } from '../train/tensorboard.js';

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

  it('merges a resumed run written to a second file in the same dir', () => {
    const dir = path.join(tmp, 'resumed');
    const first = new TensorBoardWriter(dir);
    for (let s = 0; s < 5; s++) first.scalar('train/loss', 5 - s, s, 1_700_000_000 + s);
    first.close();
    const second = new TensorBoardWriter(dir);
    expect(second.path).not.toBe(first.path);
    for (let s = 5; s < 10; s++) second.scalar('train/loss', 5 - s / 2, s, 1_700_000_000 + s);
    second.close();

    expect(fs.readdirSync(dir).filter((f) => f.includes('tfevents'))).toHaveLength(2);
    const got = readWithTensorBoard(dir);
    expect(got['train/loss']!.map((e) => e[0])).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });
});
