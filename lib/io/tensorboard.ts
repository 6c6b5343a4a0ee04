/**
 * TensorBoard event files, written without TensorBoard: `events.out.tfevents.{time}.{host}.{pid}.eaglet`, a
 * sequence of TFRecord records (TensorFlow `tensorflow/core/lib/io/record_writer.cc`: uint64 length, uint32
 * masked CRC-32C of the length, the data, uint32 masked CRC-32C of the data, little-endian), each holding a
 * serialized `tensorflow.Event` proto (`tensorboard/compat/proto/event.proto`): first the file-version event
 * `brain.Event:2`, then one event per logged step whose `Summary` (`summary.proto`) holds scalar values
 * (`Summary.Value.simple_value`), which TensorBoard's scalar dashboard reads. No npm package for Deno writes
 * these without TensorFlow or native code, so this is a small writer of the documented format;
 * tests/io/tensorboard_test.ts compares its bytes with a file written by TensorBoard's own EventFileWriter.
 */
import { join } from "node:path";
import { hostname } from "node:os";

/** The Castagnoli CRC table (reflected polynomial 0x82F63B78), as in TFRecord's crc32c. */
const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32C (Castagnoli) of `data`. */
export function crc32c(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) c = CRC32C_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC (`crc32c::Mask`): rotate right by 15, add 0xa282ead8, mod 2^32. */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord record around `data`. */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + data.length + 4);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(data.length), true);
  v.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  v.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

/** A minimal protobuf encoder: the wire types the Event and Summary protos need. */
class Proto {
  #bytes: number[] = [];
  #varint(n: bigint): void {
    let x = BigInt.asUintN(64, n);
    while (x >= 0x80n) {
      this.#bytes.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.#bytes.push(Number(x));
  }
  #key(field: number, wire: number): void {
    this.#varint(BigInt((field << 3) | wire));
  }
  double(field: number, x: number): this {
    this.#key(field, 1);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, x, true);
    this.#bytes.push(...b);
    return this;
  }
  float(field: number, x: number): this {
    this.#key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, x, true);
    this.#bytes.push(...b);
    return this;
  }
  int64(field: number, x: number): this {
    this.#key(field, 0);
    this.#varint(BigInt(x));
    return this;
  }
  bytes(field: number, b: Uint8Array): this {
    this.#key(field, 2);
    this.#varint(BigInt(b.length));
    this.#bytes.push(...b);
    return this;
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  done(): Uint8Array {
    return new Uint8Array(this.#bytes);
  }
}

/**
 * The file-version Event: wall_time (field 1), file_version "brain.Event:2" (3) and, when `writer` is given,
 * source_metadata.writer (10.1), as TensorBoard's EventFileWriter writes it.
 */
export function fileVersionEvent(wallTime: number, writer?: string): Uint8Array {
  const p = new Proto().double(1, wallTime).string(3, "brain.Event:2");
  if (writer !== undefined) p.bytes(10, new Proto().string(1, writer).done());
  return p.done();
}

/**
 * A scalar Event: wall_time (1), step (2; omitted at 0, proto3), summary (5) with one Summary.Value per
 * entry (tag 1, simple_value 2), in the given order.
 */
export function scalarEvent(wallTime: number, step: number, scalars: [string, number][]): Uint8Array {
  const summary = new Proto();
  for (const [tag, value] of scalars) summary.bytes(1, new Proto().string(1, tag).float(2, value).done());
  const p = new Proto().double(1, wallTime);
  if (step !== 0) p.int64(2, step);
  return p.bytes(5, summary.done()).done();
}

/** Options of {@link TensorBoardWriter.create}. */
export interface TensorBoardOptions {
  /** Seconds since the epoch (tests fix it); default the clock. */
  now?: () => number;
  /** source_metadata.writer of the version event; default "eaglet". */
  writer?: string;
}

/** Appends scalar events to one event file in a log directory. */
export class TensorBoardWriter {
  /** The event file's path. */
  readonly path: string;
  #file: Deno.FsFile;
  #now: () => number;

  private constructor(path: string, file: Deno.FsFile, now: () => number) {
    this.path = path;
    this.#file = file;
    this.#now = now;
  }

  /** Creates `logDir` and a new event file in it (TensorBoard's name pattern), with its version event. */
  static async create(logDir: string, opts: TensorBoardOptions = {}): Promise<TensorBoardWriter> {
    const now = opts.now ?? (() => Date.now() / 1000);
    await Deno.mkdir(logDir, { recursive: true });
    const t = now();
    const name = `events.out.tfevents.${Math.floor(t)}.${hostname()}.${Deno.pid}.eaglet`;
    const path = join(logDir, name);
    const file = await Deno.open(path, { write: true, createNew: true });
    const w = new TensorBoardWriter(path, file, now);
    await w.#write(fileVersionEvent(t, opts.writer ?? "eaglet"));
    return w;
  }

  async #write(event: Uint8Array): Promise<void> {
    const rec = tfRecord(event);
    let off = 0;
    while (off < rec.length) off += await this.#file.write(rec.subarray(off));
  }

  /** Writes the finite scalars of `values` at `step` (non-finite ones are skipped: TensorBoard plots gaps). */
  async scalars(step: number, values: Record<string, number | null | undefined>): Promise<void> {
    const entries = Object.entries(values).filter((e): e is [string, number] =>
      typeof e[1] === "number" && Number.isFinite(e[1])
    );
    if (entries.length > 0) await this.#write(scalarEvent(this.#now(), step, entries));
  }

  /** Closes the file. */
  close(): void {
    this.#file.close();
  }
}
