/**
 * safetensors: an 8-byte little-endian header length, a JSON header mapping tensor names to
 * `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end of the header), then the bytes.
 * This module parses and writes whole files held in memory, checking every offset, size and dtype and naming
 * the file and tensor in each error.
 */

/** safetensors dtypes Eaglet reads and writes, with their element sizes. */
export const SAFETENSORS_DTYPES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** A safetensors dtype name. */
export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPES;

/** One tensor: its dtype, shape and raw little-endian bytes. */
export interface RawTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  bytes: Uint8Array<ArrayBuffer>;
}

/** A malformed or truncated safetensors file; the message names the file (and tensor). */
export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

/** Parses a whole safetensors file. `file` names it in errors. */
export function parseSafetensors(data: Uint8Array<ArrayBuffer>, file: string): {
  tensors: Map<string, RawTensor>;
  metadata: Record<string, string>;
} {
  if (data.byteLength < 8) {
    throw new SafetensorsError(`${file}: ${data.byteLength} bytes, too short for a header`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > data.byteLength - 8) {
    throw new SafetensorsError(
      `${file}: header length ${headerLen} runs past the end of the file (${data.byteLength} bytes)`,
    );
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(data.subarray(8, 8 + headerLen)));
  } catch (e) {
    throw new SafetensorsError(`${file}: header is not valid JSON (${(e as Error).message})`);
  }
  const body = 8 + headerLen;
  const tensors = new Map<string, RawTensor>();
  const spans: Array<[number, number, string]> = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets } = entry as {
      dtype: string;
      shape: number[];
      data_offsets: number[];
    };
    if (!(dtype in SAFETENSORS_DTYPES)) {
      throw new SafetensorsError(`${file}: tensor ${name} has unknown dtype ${dtype}`);
    }
    if (!Array.isArray(shape) || !Array.isArray(data_offsets) || data_offsets.length !== 2) {
      throw new SafetensorsError(`${file}: tensor ${name} has a malformed header entry`);
    }
    const [begin, end] = data_offsets;
    const expected = shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPES[dtype as SafetensorsDtype];
    if (!(begin >= 0 && end >= begin && body + end <= data.byteLength)) {
      throw new SafetensorsError(
        `${file}: tensor ${name} offsets [${begin}, ${end}] lie outside the ${
          data.byteLength - body
        } data bytes`,
      );
    }
    if (end - begin !== expected) {
      throw new SafetensorsError(
        `${file}: tensor ${name} holds ${end - begin} bytes but ${dtype} [${shape}] needs ${expected}`,
      );
    }
    spans.push([begin, end, name]);
    tensors.set(name, {
      dtype: dtype as SafetensorsDtype,
      shape,
      bytes: data.slice(body + begin, body + end),
    });
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) {
      throw new SafetensorsError(`${file}: tensors ${spans[i - 1][2]} and ${spans[i][2]} overlap`);
    }
  }
  return { tensors, metadata };
}

/** Serialises tensors (in the given order) to safetensors bytes. */
export function serializeSafetensors(
  tensors: Map<string, RawTensor> | Array<[string, RawTensor]>,
  metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const entries = [...tensors];
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of entries) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    offset += t.bytes.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length + 8) % 8) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.byteLength;
  for (const [, t] of entries) {
    out.set(t.bytes, at);
    at += t.bytes.byteLength;
  }
  return out;
}

/** The values of an F32/F16/BF16 tensor as a Float32Array. */
export function toFloat32(t: RawTensor, name = "tensor"): Float32Array<ArrayBuffer> {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const copy = t.bytes.slice().buffer;
  switch (t.dtype) {
    case "F32":
      return new Float32Array(copy, 0, n);
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

/** The values of an integer or BOOL tensor as numbers (I64 must fit in a double). */
export function toNumbers(t: RawTensor, name = "tensor"): number[] {
  const copy = t.bytes.slice().buffer;
  switch (t.dtype) {
    case "I64":
      return Array.from(new BigInt64Array(copy), Number);
    case "I32":
      return Array.from(new Int32Array(copy));
    case "I16":
      return Array.from(new Int16Array(copy));
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
