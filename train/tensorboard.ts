/**
 * Scalar logging in TensorBoard's own file format, so `tensorboard --logdir runs/` shows a
 * training run without any Python in the training process.
 *
 * An event file is a TFRecord stream of `Event` protos: the first says which format version
 * follows, the rest carry `Summary` values. Each run (and each resume of a run) writes a
 * fresh file; TensorBoard merges every event file it finds in the directory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import protobuf from 'protobufjs';
import { crc32c } from '@aws-crypto/crc32c';

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
  }
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

export class TensorBoardWriter {
  /** The event file this writer appends to. */
  readonly path: string;
  private pending: Buffer[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly flushOnExit = () => this.flush();

  constructor(logDir: string) {
    fs.mkdirSync(logDir, { recursive: true });
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
