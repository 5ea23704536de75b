/**
 * Scalar logging in TensorBoard's own file format, so `tensorboard --logdir runs/` shows a
 * training run without any Python in the training process.
 *
 * An event file is a TFRecord stream of `Event` protos: the first says which format version
 * follows, the rest carry `Summary` values. Each run (and each resume of a run) writes a
 * fresh file; TensorBoard merges every event file it finds in the directory.
 *
 * A resumed run redoes the steps after its checkpoint, which the killed session may have
 * logged already. Two things keep TensorBoard from showing those points twice: the older
 * files are rewritten without them (dropEventsAfter: every reader, TensorBoard's loaders of
 * any version included, then sees one point per step), and the new file opens with
 * TensorBoard's own restart marker, a SessionLog START at the first redone step, which
 * makes a TensorBoard that already loaded the old points purge those at later steps.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import protobuf from 'protobufjs';
import { crc32c } from '@aws-crypto/crc32c';
import { makeDirs, writeFileAtomic } from '../core/fsutil.js';

// The subset of tensorflow/core/util/event.proto and summary.proto that scalars need; field
// numbers are TensorFlow's, so any TensorBoard reader decodes these records.
const EVENT_PROTO = `
syntax = "proto3";
package tensorboard;
message Event {
  double wall_time = 1;
  int64 step = 2;
  oneof what {
    string file_version = 3;
    Summary summary = 5;
    // 6 is the deprecated LogMessage: TensorBoard would read a START marker there as a log line.
    SessionLog session_log = 7;
  }
}
message SessionLog {
  enum SessionStatus {
    STATUS_UNSPECIFIED = 0;
    START = 1;
    STOP = 2;
    CHECKPOINT = 3;
  }
  SessionStatus status = 1;
  string checkpoint_path = 2;
  string msg = 3;
}
message Summary {
  message Value {
    string tag = 1;
    // A oneof, as in TensorFlow, so that a value of exactly 0 is still written.
    oneof value { float simple_value = 2; }
  }
  repeated Value value = 1;
}
`;

const Event = protobuf.parse(EVENT_PROTO, { keepCase: true }).root.lookupType('tensorboard.Event');

interface EventFields {
  wall_time: number;
  step: number;
  file_version?: string;
  summary?: { value: { tag: string; simple_value: number }[] };
  session_log?: { status: 'START' };
}

/** How often buffered records reach the disk even if nobody calls flush(). */
const FLUSH_EVERY_MS = 5_000;

/** TFRecord's checksum: CRC32C rotated and offset, so a CRC of data holding CRCs stays strong. */
export function maskedCrc32c(data: Uint8Array): number {
  const crc = crc32c(data);
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: uint64 length, masked CRC of the length, the data, masked CRC of the data. */
export function tfRecord(data: Uint8Array): Buffer {
  const out = Buffer.alloc(8 + 4 + data.length + 4);
  out.writeBigUInt64LE(BigInt(data.length), 0);
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8);
  out.set(data, 12);
  out.writeUInt32LE(maskedCrc32c(data), 12 + data.length);
  return out;
}

function encodeEvent(fields: EventFields): Uint8Array {
  return Event.encode(Event.fromObject(fields)).finish();
}

export interface EventRecord {
  /** The framed bytes, as they were in the file. */
  record: Buffer;
  step: number;
  /** Whether it carries summary values (a point of a curve), and their tags. */
  summary: boolean;
  tags: string[];
}

/** The whole records of an event file, in order, with each one's step (a torn last record is left out). */
export function readRecords(file: string): EventRecord[] {
  const buf = fs.readFileSync(file);
  const out: EventRecord[] = [];
  for (let off = 0; off + 12 <= buf.length; ) {
    const len = Number(buf.readBigUInt64LE(off));
    const end = off + 16 + len;
    if (end > buf.length || buf.readUInt32LE(off + 8) !== maskedCrc32c(buf.subarray(off, off + 8))) break;
    const data = buf.subarray(off + 12, off + 12 + len);
    if (buf.readUInt32LE(off + 12 + len) !== maskedCrc32c(data)) break;
    const e = Event.toObject(Event.decode(data), { longs: Number }) as EventFields;
    out.push({ record: buf.subarray(off, end), step: e.step ?? 0, summary: e.summary !== undefined, tags: e.summary?.value.map((v) => v.tag) ?? [] });
    off = end;
  }
  return out;
}

/**
 * Rewrites the event files in `logDir` without the summaries of steps after `step` (each
 * file atomically): what a resumed run is about to log again.
 */
export function dropEventsAfter(logDir: string, step: number): void {
  if (!fs.existsSync(logDir)) return;
  for (const name of fs.readdirSync(logDir)) {
    if (!name.startsWith('events.out.tfevents.')) continue;
    const file = path.join(logDir, name);
    const records = readRecords(file);
    const kept = records.filter((r) => !r.summary || r.step <= step);
    const whole = records.reduce((a, r) => a + r.record.length, 0) === fs.statSync(file).size;
    if (kept.length < records.length || !whole) writeFileAtomic(file, Buffer.concat(kept.map((r) => r.record)));
  }
}

export class TensorBoardWriter {
  /** The event file this writer appends to. */
  readonly path: string;
  private pending: Buffer[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly flushOnExit = () => this.flush();

  constructor(logDir: string) {
    makeDirs(logDir);
    const secs = Math.floor(Date.now() / 1000);
    const base = `events.out.tfevents.${secs}.${os.hostname()}.${process.pid}.sinklm`;
    // A second writer in the same second and process (a quick resume, a test) must not
    // interleave its records with the first file's, so it gets a numbered suffix.
    let file = path.join(logDir, base);
    for (let n = 2; ; n++) {
      try {
        fs.writeFileSync(file, tfRecord(encodeEvent({ wall_time: Date.now() / 1000, step: 0, file_version: 'brain.Event:2' })), {
          flag: 'wx',
        });
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        file = path.join(logDir, `${base}${n}`);
      }
    }
    this.path = file;
    this.timer = setInterval(() => this.flush(), FLUSH_EVERY_MS);
    this.timer.unref();
    process.on('exit', this.flushOnExit);
  }

  /** Queues one point of the curve `tag`; `wallTime` is in seconds since the epoch. */
  scalar(tag: string, value: number, step: number, wallTime: number = Date.now() / 1000): void {
    if (this.closed) throw new Error(`TensorBoardWriter for ${this.path} is closed`);
    if (!Number.isSafeInteger(step) || step < 0) throw new Error(`step must be a non-negative integer (got ${step})`);
    const data = encodeEvent({ wall_time: wallTime, step, summary: { value: [{ tag, simple_value: value }] } });
    this.pending.push(tfRecord(data));
  }

  /**
   * TensorBoard's restart marker: a reader that already holds points at `step` or later
   * drops them (they belong to a session that was cut short and is being redone).
   */
  sessionStart(step: number): void {
    this.pending.push(tfRecord(encodeEvent({ wall_time: Date.now() / 1000, step, session_log: { status: 'START' } })));
  }

  /** Writes every queued record in one append, so the file only ever grows by whole records. */
  flush(): void {
    if (this.pending.length === 0) return;
    const chunk = Buffer.concat(this.pending);
    this.pending = [];
    fs.appendFileSync(this.path, chunk);
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    process.off('exit', this.flushOnExit);
  }
}
