/**
 * safetensors: an 8-byte little-endian header length, a JSON header mapping tensor names to
 * `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end of the header, in bytes), then the
 * tensor bytes, little-endian, row-major.
 *
 * Three ways in:
 * - {@link parseSafetensors} / {@link serializeSafetensors}: whole files held in memory (small files, tests).
 * - {@link SafetensorsFile}: opens a file, parses only its header, and reads single tensors (or row ranges of
 *   them) by seeking, so a multi-gigabyte checkpoint is never loaded whole.
 * - {@link SafetensorsCheckpoint}: a model directory, either one `model.safetensors` or shards listed by
 *   `model.safetensors.index.json`.
 *
 * Every check (header length, JSON, dtype, shape, offsets inside the data, size = numel·itemsize, no two
 * tensors overlapping, index entries pointing at existing shards and tensors) throws a
 * {@link SafetensorsError} naming the file and the tensor. {@link writeSafetensors} and
 * {@link writeShardedSafetensors} write atomically (temporary name, then rename).
 */
import { basename, join } from "node:path";
import { AtomicFile, writeJsonAtomic } from "./atomic.ts";
import { f32ToBf16Bits } from "../tensor.ts";
import { oneLine, printable } from "./printable.ts";

/** safetensors dtypes Eaglet reads and writes, with their element sizes in bytes. */
export const SAFETENSORS_DTYPES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** A safetensors dtype name. */
export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPES;

/** One tensor: its dtype, shape and raw little-endian bytes. */
export interface RawTensor {
  /** Element type as named in the safetensors header, e.g. "F32" or "BF16". */
  dtype: SafetensorsDtype;
  /** Dimensions, outermost first ([] for a scalar). */
  shape: number[];
  /** The tensor's data, row-major little-endian, exactly numel × element size bytes. */
  bytes: Uint8Array<ArrayBuffer>;
}

/** Where one tensor lies in a safetensors file. */
export interface TensorInfo {
  /** Tensor name. */
  name: string;
  /** Element type as named in the file's header. */
  dtype: SafetensorsDtype;
  /** Dimensions, outermost first ([] for a scalar). */
  shape: number[];
  /** Byte range [begin, end) relative to the start of the data section. */
  begin: number;
  /** End of the byte range (exclusive), relative to the start of the data section. */
  end: number;
  /** The file holding it. */
  file: string;
}

/** A malformed or truncated safetensors file or index; the message names the file (and tensor). */
export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

/** Headers larger than this are taken as corruption (the reference implementation uses the same bound). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Name of the index file of a sharded checkpoint. */
export const SAFETENSORS_INDEX = "model.safetensors.index.json";
/** Name of the single file of an unsharded checkpoint. */
export const SAFETENSORS_SINGLE = "model.safetensors";

/** A JSON value from a header, for a one-line message. */
function shownJson(value: unknown): string {
  return oneLine(String(JSON.stringify(value)));
}

function numelOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isCount(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

/**
 * Validates a decoded JSON header against a data section of `dataBytes` bytes. Returns the tensors in header
 * order and the `__metadata__` map.
 */
function checkHeader(header: unknown, file: string, dataBytes: number): {
  infos: TensorInfo[];
  metadata: Record<string, string>;
} {
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new SafetensorsError(`${file}: header is not a JSON object`);
  }
  const infos: TensorInfo[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
        throw new SafetensorsError(`${file}: __metadata__ is not a JSON object`);
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") {
          throw new SafetensorsError(`${file}: __metadata__.${printable(k)} is not a string`);
        }
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets } = (entry ?? {}) as Record<string, unknown>;
    if (typeof dtype !== "string" || !Object.hasOwn(SAFETENSORS_DTYPES, dtype)) {
      throw new SafetensorsError(
        `${file}: tensor ${printable(name)} has unknown dtype ${shownJson(dtype)} (known: ${
          Object.keys(SAFETENSORS_DTYPES).join(", ")
        })`,
      );
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      throw new SafetensorsError(
        `${file}: tensor ${printable(name)} has a malformed shape ${shownJson(shape)}`,
      );
    }
    if (!Array.isArray(data_offsets) || data_offsets.length !== 2 || !data_offsets.every(isCount)) {
      throw new SafetensorsError(
        `${file}: tensor ${printable(name)} has malformed data_offsets ${shownJson(data_offsets)}`,
      );
    }
    const [begin, end] = data_offsets as number[];
    if (end < begin || end > dataBytes) {
      throw new SafetensorsError(
        `${file}: tensor ${
          printable(name)
        } offsets [${begin}, ${end}] lie outside the ${dataBytes} data bytes`,
      );
    }
    const d = dtype as SafetensorsDtype;
    const expected = numelOf(shape) * SAFETENSORS_DTYPES[d];
    if (end - begin !== expected) {
      throw new SafetensorsError(
        `${file}: tensor ${printable(name)} holds ${
          end - begin
        } bytes but ${dtype} [${shape}] needs ${expected}`,
      );
    }
    // JSON's -0 is a valid 0 (as serde_json reads it into a usize); n + 0 makes it +0 (IEEE 754: -0 + 0 = +0).
    infos.push({
      name,
      dtype: d,
      shape: shape.map((n: number) => n + 0),
      begin: begin + 0,
      end: end + 0,
      file,
    });
  }
  const spans = infos.filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i].begin < spans[i - 1].end) {
      throw new SafetensorsError(
        `${file}: tensors ${printable(spans[i - 1].name)} and ${printable(spans[i].name)} overlap`,
      );
    }
  }
  return { infos, metadata };
}

function decodeHeaderJson(bytes: Uint8Array, file: string): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new SafetensorsError(`${file}: header is not valid JSON (${oneLine((e as Error).message)})`);
  }
}

/**
 * The header length a file's 8-byte prefix gives, checked against the file's size; returned as a number once
 * known to be small (errors write the u64 as the file holds it, not rounded to a double).
 */
function checkHeaderLength(prefix: bigint, fileBytes: number, file: string): number {
  if (prefix > BigInt(fileBytes - 8)) {
    throw new SafetensorsError(
      `${file}: header length ${prefix} runs past the end of the file (${fileBytes} bytes)`,
    );
  }
  if (prefix > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(`${file}: header length ${prefix} exceeds ${MAX_HEADER_BYTES} bytes`);
  }
  return Number(prefix);
}

/** Parses a whole safetensors file held in memory. `file` names it in errors. */
export function parseSafetensors(data: Uint8Array<ArrayBuffer>, file: string): {
  tensors: Map<string, RawTensor>;
  metadata: Record<string, string>;
} {
  if (data.byteLength < 8) {
    throw new SafetensorsError(`${file}: ${data.byteLength} bytes, too short for a header`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const headerLen = checkHeaderLength(view.getBigUint64(0, true), data.byteLength, file);
  const body = 8 + headerLen;
  const header = decodeHeaderJson(data.subarray(8, body), file);
  const { infos, metadata } = checkHeader(header, file, data.byteLength - body);
  const tensors = new Map<string, RawTensor>();
  for (const t of infos) {
    tensors.set(t.name, {
      dtype: t.dtype,
      shape: t.shape,
      bytes: data.slice(body + t.begin, body + t.end),
    });
  }
  return { tensors, metadata };
}

/** Checks that each tensor's byte count matches its dtype and shape and that names are unique. */
function checkTensorsToWrite(entries: Array<[string, RawTensor]>, file: string): void {
  const seen = new Set<string>();
  for (const [name, t] of entries) {
    if (name === "__metadata__") throw new SafetensorsError(`${file}: "__metadata__" is not a tensor name`);
    if (seen.has(name)) throw new SafetensorsError(`${file}: tensor ${printable(name)} is given twice`);
    seen.add(name);
    if (!Object.hasOwn(SAFETENSORS_DTYPES, t.dtype)) {
      throw new SafetensorsError(`${file}: tensor ${printable(name)} has unknown dtype ${t.dtype}`);
    }
    if (!t.shape.every(isCount)) {
      throw new SafetensorsError(`${file}: tensor ${printable(name)} has a malformed shape [${t.shape}]`);
    }
    const expected = numelOf(t.shape) * SAFETENSORS_DTYPES[t.dtype];
    if (t.bytes.byteLength !== expected) {
      throw new SafetensorsError(
        `${file}: tensor ${
          printable(name)
        } has ${t.bytes.byteLength} bytes but ${t.dtype} [${t.shape}] needs ${expected}`,
      );
    }
  }
}

/** The 8-byte length prefix and the JSON header (space-padded to a multiple of 8 bytes) for `entries`. */
function encodeHeader(
  entries: Array<[string, RawTensor]>,
  metadata: Record<string, string> | undefined,
): { prefix: Uint8Array<ArrayBuffer>; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of entries) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    offset += t.bytes.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = json.byteLength + (8 - (json.byteLength + 8) % 8) % 8;
  const prefix = new Uint8Array(8 + padded).fill(0x20);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(padded), true);
  prefix.set(json, 8);
  return { prefix, dataBytes: offset };
}

/** Serialises tensors (in the given order) to safetensors bytes. */
export function serializeSafetensors(
  tensors: Map<string, RawTensor> | Array<[string, RawTensor]>,
  metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const entries = [...tensors];
  checkTensorsToWrite(entries, "safetensors");
  const { prefix, dataBytes } = encodeHeader(entries, metadata);
  const out = new Uint8Array(prefix.byteLength + dataBytes);
  out.set(prefix, 0);
  let at = prefix.byteLength;
  for (const [, t] of entries) {
    out.set(t.bytes, at);
    at += t.bytes.byteLength;
  }
  return out;
}

/**
 * Writes tensors (in the given order) to the safetensors file `path`, atomically: the bytes go to a temporary
 * sibling, renamed to `path` when complete. Tensors are streamed one by one, never concatenated in memory.
 */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, RawTensor> | Array<[string, RawTensor]>,
  metadata?: Record<string, string>,
): Promise<void> {
  const entries = [...tensors];
  checkTensorsToWrite(entries, path);
  const { prefix } = encodeHeader(entries, metadata);
  const out = await AtomicFile.create(path);
  await out.write(prefix);
  for (const [, t] of entries) await out.write(t.bytes);
  await out.commit();
}

/**
 * Writes a checkpoint directory the way Hugging Face `save_pretrained` does: tensors (in order) are packed into
 * shards of at most `maxShardBytes` data bytes (a tensor larger than that gets a shard of its own), named
 * `model-00001-of-0000N.safetensors`, plus `model.safetensors.index.json` (`metadata.total_size`,
 * `weight_map`). A single shard is written as `model.safetensors` with no index. Each file is written
 * atomically, the index last. Returns the file names written.
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: Map<string, RawTensor> | Array<[string, RawTensor]>,
  opts: { maxShardBytes: number; metadata?: Record<string, string> },
): Promise<string[]> {
  const entries = [...tensors];
  checkTensorsToWrite(entries, join(dir, SAFETENSORS_INDEX));
  const shards: Array<Array<[string, RawTensor]>> = [];
  let size = Infinity;
  for (const e of entries) {
    if (size + e[1].bytes.byteLength > opts.maxShardBytes) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(e);
    size += e[1].bytes.byteLength;
  }
  if (shards.length <= 1) {
    await writeSafetensors(join(dir, SAFETENSORS_SINGLE), shards[0] ?? [], opts.metadata);
    return [SAFETENSORS_SINGLE];
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < shards.length; i++) {
    await writeSafetensors(join(dir, names[i]), shards[i], opts.metadata);
    for (const [name, t] of shards[i]) {
      weightMap[name] = names[i];
      total += t.bytes.byteLength;
    }
  }
  await writeJsonAtomic(join(dir, SAFETENSORS_INDEX), {
    metadata: { total_size: total },
    weight_map: weightMap,
  });
  return [...names, SAFETENSORS_INDEX];
}

/** Reads exactly `n` bytes at `position` of `f`, or throws naming `what`. */
async function readExactly(
  f: Deno.FsFile,
  position: number,
  n: number,
  what: string,
): Promise<Uint8Array<ArrayBuffer>> {
  const out = new Uint8Array(n);
  await f.seek(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < n) {
    const got = await f.read(out.subarray(done));
    if (got === null) {
      throw new SafetensorsError(`${what}: file ends after ${done} of ${n} bytes (truncated?)`);
    }
    done += got;
  }
  return out;
}

/**
 * One safetensors file opened for reading: only the header is parsed at open; tensors are read on demand by
 * seeking to them. Reads are serialised internally (one file position), so concurrent calls are safe. Call
 * `close()` when done.
 */
export class SafetensorsFile {
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    /** Path of the file. */
    readonly path: string,
    private f: Deno.FsFile,
    /** Absolute byte offset of the data section (8 + header length). */
    readonly dataOffset: number,
    private infos: Map<string, TensorInfo>,
    /** The header's `__metadata__` (empty when absent). */
    readonly metadata: Record<string, string>,
  ) {}

  /** Opens `path` and validates its header against the file's size. */
  static async open(path: string): Promise<SafetensorsFile> {
    let f: Deno.FsFile;
    try {
      f = await Deno.open(path, { read: true });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new SafetensorsError(`${path}: no such file`);
      throw e;
    }
    try {
      const size = (await f.stat()).size;
      if (size < 8) throw new SafetensorsError(`${path}: ${size} bytes, too short for a header`);
      const lenBytes = await readExactly(f, 0, 8, path);
      const headerLen = checkHeaderLength(new DataView(lenBytes.buffer).getBigUint64(0, true), size, path);
      const header = decodeHeaderJson(await readExactly(f, 8, headerLen, path), path);
      const { infos, metadata } = checkHeader(header, path, size - 8 - headerLen);
      return new SafetensorsFile(path, f, 8 + headerLen, new Map(infos.map((t) => [t.name, t])), metadata);
    } catch (e) {
      f.close();
      throw e;
    }
  }

  /** Tensor names, in header order. */
  get names(): string[] {
    return [...this.infos.keys()];
  }

  /** Whether the file holds tensor `name`. */
  has(name: string): boolean {
    return this.infos.has(name);
  }

  /** dtype, shape and byte range of tensor `name`. */
  info(name: string): TensorInfo {
    const t = this.infos.get(name);
    if (!t) throw new SafetensorsError(`${this.path}: no tensor ${name}`);
    return t;
  }

  /** Reads tensor `name` (only its bytes). */
  read(name: string): Promise<RawTensor> {
    const t = this.info(name);
    return this.#readSpan(t.begin, t.end - t.begin, name).then((bytes) => ({
      dtype: t.dtype,
      shape: t.shape.slice(),
      bytes,
    }));
  }

  /** Reads tensor `name` as Float32Array (F32, F16 or BF16). */
  async readFloat32(name: string): Promise<Float32Array<ArrayBuffer>> {
    return toFloat32(await this.read(name), `${this.path}: tensor ${name}`);
  }

  /**
   * Reads rows [start, end) along the first dimension of tensor `name`: the shape returned is
   * `[end - start, ...shape.slice(1)]`. Used to split tensors larger than one GPU binding.
   */
  readRows(name: string, start: number, end: number): Promise<RawTensor> {
    const t = this.info(name);
    if (t.shape.length === 0 || !(isCount(start) && isCount(end) && start <= end && end <= t.shape[0])) {
      throw new SafetensorsError(
        `${this.path}: tensor ${name} [${t.shape}] has no rows [${start}, ${end})`,
      );
    }
    const rowBytes = numelOf(t.shape.slice(1)) * SAFETENSORS_DTYPES[t.dtype];
    return this.#readSpan(t.begin + start * rowBytes, (end - start) * rowBytes, name).then((bytes) => ({
      dtype: t.dtype,
      shape: [end - start, ...t.shape.slice(1)],
      bytes,
    }));
  }

  /** Closes the file. */
  close(): void {
    this.f.close();
  }

  #readSpan(begin: number, n: number, name: string): Promise<Uint8Array<ArrayBuffer>> {
    const run = this.#queue.then(() =>
      readExactly(this.f, this.dataOffset + begin, n, `${this.path}: tensor ${name}`)
    );
    this.#queue = run.catch(() => {});
    return run;
  }
}

/**
 * The safetensors weights of a model directory: `model.safetensors.index.json` plus the shards it lists, or a
 * single `model.safetensors`. Opening checks every shard's header and that each tensor of the index exists in
 * the shard it points at; tensors are then read on demand. Call `close()` when done.
 */
export class SafetensorsCheckpoint {
  private constructor(
    /** The model directory. */
    readonly dir: string,
    /** The open files (one, or one per shard). */
    readonly files: SafetensorsFile[],
    private where: Map<string, SafetensorsFile>,
    /** The index's `metadata` (empty for an unsharded checkpoint). */
    readonly indexMetadata: Record<string, unknown>,
  ) {}

  /** Opens the checkpoint in `dir` (sharded when the index exists, else `model.safetensors`). */
  static async open(dir: string): Promise<SafetensorsCheckpoint> {
    const indexPath = join(dir, SAFETENSORS_INDEX);
    let indexText: string | null = null;
    try {
      indexText = await Deno.readTextFile(indexPath);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    if (indexText === null) {
      const single = join(dir, SAFETENSORS_SINGLE);
      try {
        await Deno.stat(single);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        throw new SafetensorsError(`${dir}: neither ${SAFETENSORS_INDEX} nor ${SAFETENSORS_SINGLE} found`);
      }
      const f = await SafetensorsFile.open(single);
      return new SafetensorsCheckpoint(dir, [f], new Map(f.names.map((n) => [n, f])), {});
    }
    let index: { weight_map?: unknown; metadata?: unknown };
    try {
      index = JSON.parse(indexText);
    } catch (e) {
      throw new SafetensorsError(`${indexPath}: not valid JSON (${oneLine((e as Error).message)})`);
    }
    const map = index?.weight_map;
    if (map === null || typeof map !== "object" || Array.isArray(map)) {
      throw new SafetensorsError(`${indexPath}: no weight_map object`);
    }
    const entries = Object.entries(map as Record<string, unknown>);
    for (const [name, shard] of entries) {
      if (typeof shard !== "string" || shard !== basename(shard) || shard === ".." || shard === "") {
        throw new SafetensorsError(
          `${indexPath}: tensor ${printable(name)} maps to ${
            oneLine(String(JSON.stringify(shard)))
          }, not a file name in ${dir}`,
        );
      }
    }
    const shards = new Map<string, SafetensorsFile>();
    const where = new Map<string, SafetensorsFile>();
    try {
      for (const [name, shard] of entries as Array<[string, string]>) {
        let f = shards.get(shard);
        if (!f) {
          try {
            f = await SafetensorsFile.open(join(dir, shard));
          } catch (e) {
            if (e instanceof SafetensorsError && e.message.endsWith(": no such file")) {
              throw new SafetensorsError(
                `${indexPath}: tensor ${printable(name)} is in shard ${
                  printable(shard)
                }, which does not exist`,
              );
            }
            throw e;
          }
          shards.set(shard, f);
        }
        if (!f.has(name)) {
          throw new SafetensorsError(
            `${indexPath}: tensor ${printable(name)} is said to be in ${
              printable(shard)
            }, but that file has no such tensor`,
          );
        }
        where.set(name, f);
      }
    } catch (e) {
      for (const f of shards.values()) f.close();
      throw e;
    }
    const meta = index.metadata;
    return new SafetensorsCheckpoint(
      dir,
      [...shards.values()],
      where,
      meta && typeof meta === "object" && !Array.isArray(meta) ? meta as Record<string, unknown> : {},
    );
  }

  /** Tensor names (index order, or header order for a single file). */
  get names(): string[] {
    return [...this.where.keys()];
  }

  /** Whether the checkpoint holds tensor `name`. */
  has(name: string): boolean {
    return this.where.has(name);
  }

  /** dtype, shape, file and byte range of tensor `name`. */
  info(name: string): TensorInfo {
    return this.#file(name).info(name);
  }

  /** Reads tensor `name`. */
  read(name: string): Promise<RawTensor> {
    return this.#file(name).read(name);
  }

  /** Reads tensor `name` as Float32Array (F32, F16 or BF16). */
  readFloat32(name: string): Promise<Float32Array<ArrayBuffer>> {
    return this.#file(name).readFloat32(name);
  }

  /** Reads rows [start, end) along the first dimension of tensor `name`. */
  readRows(name: string, start: number, end: number): Promise<RawTensor> {
    return this.#file(name).readRows(name, start, end);
  }

  /** Closes every file. */
  close(): void {
    for (const f of this.files) f.close();
  }

  #file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new SafetensorsError(`${this.dir}: checkpoint has no tensor ${name}`);
    return f;
  }
}

/** The values of an F32/F16/BF16/F64 tensor as a Float32Array. */
export function toFloat32(t: RawTensor, name = "tensor"): Float32Array<ArrayBuffer> {
  const n = numelOf(t.shape);
  const copy = t.bytes.slice().buffer;
  switch (t.dtype) {
    case "F32":
      return new Float32Array(copy, 0, n);
    case "F64":
      return Float32Array.from(new Float64Array(copy, 0, n));
    case "F16":
      return Float32Array.from(new Float16Array(copy, 0, n));
    case "BF16": {
      const bits = new Uint16Array(copy, 0, n);
      const out = new Float32Array(n);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = bits[i] << 16;
      return out;
    }
    default:
      throw new SafetensorsError(`${name}: ${t.dtype} is not a float dtype`);
  }
}

/** The values of an integer or BOOL tensor as numbers (64-bit values must fit in a double). */
export function toNumbers(t: RawTensor, name = "tensor"): number[] {
  const copy = t.bytes.slice().buffer;
  switch (t.dtype) {
    case "I64":
      return Array.from(new BigInt64Array(copy), Number);
    case "U64":
      return Array.from(new BigUint64Array(copy), Number);
    case "I32":
      return Array.from(new Int32Array(copy));
    case "U32":
      return Array.from(new Uint32Array(copy));
    case "I16":
      return Array.from(new Int16Array(copy));
    case "U16":
      return Array.from(new Uint16Array(copy));
    case "I8":
      return Array.from(new Int8Array(copy));
    case "U8":
    case "BOOL":
      return Array.from(new Uint8Array(copy));
    default:
      throw new SafetensorsError(`${name}: ${t.dtype} is not an integer dtype`);
  }
}

/** An F32 tensor from values. */
export function fromFloat32(values: Float32Array, shape: number[]): RawTensor {
  return { dtype: "F32", shape, bytes: new Uint8Array(Float32Array.from(values).buffer) };
}

/**
 * A float tensor of `dtype` from values: F32 exactly, F16 and BF16 rounded to nearest (ties to even), F64
 * widened.
 */
export function fromFloat32As(
  values: ArrayLike<number>,
  shape: number[],
  dtype: "F32" | "F16" | "BF16" | "F64",
): RawTensor {
  const n = values.length;
  switch (dtype) {
    case "F32":
      return { dtype, shape, bytes: new Uint8Array(Float32Array.from(values).buffer) };
    case "F64":
      return { dtype, shape, bytes: new Uint8Array(Float64Array.from(values).buffer) };
    case "F16":
      return { dtype, shape, bytes: new Uint8Array(Float16Array.from(values).buffer) };
    case "BF16": {
      const bits = new Uint16Array(n);
      for (let i = 0; i < n; i++) bits[i] = f32ToBf16Bits(values[i]);
      return { dtype, shape, bytes: new Uint8Array(bits.buffer) };
    }
  }
}

/** An integer or BOOL tensor of `dtype` from values (which must be integers representable in `dtype`). */
export function fromNumbers(
  values: ArrayLike<number>,
  shape: number[],
  dtype: "I64" | "U64" | "I32" | "U32" | "I16" | "U16" | "I8" | "U8" | "BOOL",
): RawTensor {
  const v = Array.from(values);
  const bytes = (a: ArrayBufferView<ArrayBuffer>) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (dtype) {
    case "I64":
      return { dtype, shape, bytes: bytes(BigInt64Array.from(v, BigInt)) };
    case "U64":
      return { dtype, shape, bytes: bytes(BigUint64Array.from(v, BigInt)) };
    case "I32":
      return { dtype, shape, bytes: bytes(Int32Array.from(v)) };
    case "U32":
      return { dtype, shape, bytes: bytes(Uint32Array.from(v)) };
    case "I16":
      return { dtype, shape, bytes: bytes(Int16Array.from(v)) };
    case "U16":
      return { dtype, shape, bytes: bytes(Uint16Array.from(v)) };
    case "I8":
      return { dtype, shape, bytes: bytes(Int8Array.from(v)) };
    case "U8":
      return { dtype, shape, bytes: bytes(Uint8Array.from(v)) };
    case "BOOL":
      return { dtype, shape, bytes: bytes(Uint8Array.from(v, (x) => (x ? 1 : 0))) };
  }
}
