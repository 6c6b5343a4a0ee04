/**
 * Tensor: a shape and dtype over a byte range of a GPU buffer, with host <-> device copies.
 *
 * Dtypes: f32; f16 (needs `shader-f16` to be used in kernels); bf16, stored as packed pairs in u32 words
 * (element 2i in the low half), for read-only weights; i32 and u32.
 */
import type { Gpu } from "./gpu/device.ts";
import { LimitError, ShapeError } from "./gpu/errors.ts";

/** Element types a tensor can hold. */
export type DType = "f32" | "f16" | "bf16" | "i32" | "u32";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4 };

/** Host arrays accepted by {@link Tensor.fromArray}. */
export type HostArray =
  | Float32Array<ArrayBuffer>
  | Int32Array<ArrayBuffer>
  | Uint32Array<ArrayBuffer>
  | Uint16Array<ArrayBuffer>
  | number[];

/** Host arrays returned by {@link Tensor.read}: f32, f16 and bf16 read back as Float32Array. */
export type ReadArray = Float32Array<ArrayBuffer> | Int32Array<ArrayBuffer> | Uint32Array<ArrayBuffer>;

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Bytes {@link Tensor.empty} asks the buffer pool for: the elements' bytes rounded up to 4, at least 4. */
export function allocationBytes(shape: readonly number[], dtype: DType): number {
  return Math.max(4, Math.ceil(numel(shape) * DTYPE_BYTES[dtype] / 4) * 4);
}

/** "[2, 3, 4]". */
export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** A view of a GPU buffer as an n-dimensional array (row-major, contiguous). */
export class Tensor {
  #owned: boolean;

  /** Use {@link Tensor.empty}, {@link Tensor.fromArray} or {@link Tensor.view} rather than this. */
  constructor(
    readonly gpu: Gpu,
    readonly buffer: GPUBuffer,
    readonly shape: readonly number[],
    readonly dtype: DType,
    readonly label: string,
    /** Byte offset of element 0 in the buffer. */
    readonly byteOffset = 0,
    owned = false,
  ) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) {
        throw new ShapeError(`tensor ${label}: bad shape ${shapeString(shape)}`);
      }
    }
    this.#owned = owned;
  }

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  /** Bytes the elements occupy, rounded up to a multiple of 4 (bindings and copies need it). */
  get byteLength(): number {
    return Math.ceil(this.size * DTYPE_BYTES[this.dtype] / 4) * 4;
  }

  /** A new uninitialised (zero-filled on first allocation, not after reuse) tensor from the buffer pool. */
  static empty(gpu: Gpu, shape: readonly number[], dtype: DType, label: string): Tensor {
    const buffer = gpu.pool.acquire(allocationBytes(shape, dtype), label);
    return new Tensor(gpu, buffer, [...shape], dtype, label, 0, true);
  }

  /** A zero-filled tensor. */
  static zeros(gpu: Gpu, shape: readonly number[], dtype: DType, label: string): Tensor {
    const t = Tensor.empty(gpu, shape, dtype, label);
    const encoder = gpu.device.createCommandEncoder({ label: `zero ${label}` });
    encoder.clearBuffer(t.buffer, 0, t.byteLength);
    gpu.submit([encoder.finish()]);
    return t;
  }

  /**
   * A tensor holding `data`. For f32/i32/u32 the array is copied as is; for f16 and bf16, a Float32Array
   * or number[] is rounded to nearest even, and a Uint16Array is taken as raw bits.
   */
  static fromArray(gpu: Gpu, data: HostArray, shape: readonly number[], dtype: DType, label: string): Tensor {
    const n = numel(shape);
    if (data.length !== n) {
      throw new ShapeError(
        `tensor ${label}: ${data.length} values given for shape ${shapeString(shape)} (${n})`,
      );
    }
    const t = Tensor.empty(gpu, shape, dtype, label);
    t.write(data);
    return t;
  }

  /** Copies host data into the tensor (same conversions as {@link Tensor.fromArray}). */
  write(data: HostArray): void {
    if (data.length !== this.size) {
      throw new ShapeError(
        `tensor ${this.label}: ${data.length} values written to ${shapeString(this.shape)}`,
      );
    }
    this.gpu.write(this.buffer, this.byteOffset, encodeHost(data, this.dtype));
  }

  /** Copies the tensor to the host (one GPU sync). f16 and bf16 come back widened to f32. */
  async read(): Promise<ReadArray> {
    const bytes = await this.gpu.read(this.buffer, this.byteOffset, this.byteLength);
    return decodeHost(bytes, this.dtype, this.size);
  }

  /** Reads an f32/f16/bf16 tensor as a Float32Array (a shape error for integer tensors). */
  async readFloat(): Promise<Float32Array<ArrayBuffer>> {
    if (this.dtype === "i32" || this.dtype === "u32") {
      throw new ShapeError(`tensor ${this.label}: readFloat on a ${this.dtype} tensor`);
    }
    return await this.read() as Float32Array<ArrayBuffer>;
  }

  /**
   * A view of `shape` starting `elementOffset` elements in. The byte offset must meet the device's
   * storage-binding alignment (usually 32 or 256 bytes) so that the view can be bound by itself.
   */
  view(elementOffset: number, shape: readonly number[], label = `${this.label}[view]`): Tensor {
    const bytes = DTYPE_BYTES[this.dtype];
    if (elementOffset < 0 || elementOffset + numel(shape) > this.size) {
      throw new ShapeError(
        `tensor ${this.label}: view ${shapeString(shape)} at ${elementOffset} lies outside ${
          shapeString(this.shape)
        }`,
      );
    }
    const byteOffset = this.byteOffset + elementOffset * bytes;
    const alignTo = this.gpu.limits.minStorageBufferOffsetAlignment;
    if (byteOffset % alignTo !== 0) {
      throw new LimitError(
        `tensor ${this.label}: view at byte ${byteOffset} is not a multiple of the device's ` +
          `minStorageBufferOffsetAlignment (${alignTo})`,
      );
    }
    return new Tensor(this.gpu, this.buffer, [...shape], this.dtype, label, byteOffset, false);
  }

  /** The same elements with another shape of equal size. */
  reshape(shape: readonly number[]): Tensor {
    if (numel(shape) !== this.size) {
      throw new ShapeError(
        `tensor ${this.label}: cannot reshape ${shapeString(this.shape)} to ${shapeString(shape)}`,
      );
    }
    return new Tensor(this.gpu, this.buffer, [...shape], this.dtype, this.label, this.byteOffset, false);
  }

  /** The buffer range to bind; an error naming the tensor if it exceeds the binding limit. */
  binding(): GPUBufferBinding {
    const max = this.gpu.limits.maxStorageBufferBindingSize;
    if (this.byteLength > max) {
      throw new LimitError(
        `tensor ${this.label} ${
          shapeString(this.shape)
        } ${this.dtype}: ${this.byteLength} bytes exceed the ` +
          `device's maxStorageBufferBindingSize of ${max} bytes; split it into slices`,
      );
    }
    return { buffer: this.buffer, offset: this.byteOffset, size: this.byteLength };
  }

  /** Returns the tensor's buffer to the pool (views do nothing). The tensor must not be used afterwards. */
  destroy(): void {
    if (this.#owned) {
      this.gpu.pool.release(this.buffer);
      this.#owned = false;
    }
  }
}

/** Host data as the bytes a tensor of `dtype` stores. */
export function encodeHost(data: HostArray, dtype: DType): ArrayBufferView<ArrayBuffer> {
  switch (dtype) {
    case "f32":
      return data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    case "i32":
      return data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
    case "u32":
      return data instanceof Uint32Array ? data : Uint32Array.from(data as ArrayLike<number>);
    case "f16": {
      if (data instanceof Uint16Array) return data;
      const out = new Uint16Array(data.length);
      const f16 = new Float16Array(out.buffer);
      for (let i = 0; i < data.length; i++) f16[i] = data[i];
      return out;
    }
    case "bf16": {
      if (data instanceof Uint16Array) return data;
      const out = new Uint16Array(data.length);
      for (let i = 0; i < data.length; i++) out[i] = f32ToBf16Bits(data[i]);
      return out;
    }
  }
}

/** Bytes of a tensor of `dtype` as a host array (f16/bf16 widened to f32). */
export function decodeHost(bytes: ArrayBuffer, dtype: DType, n: number): ReadArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(bytes, 0, n);
    case "i32":
      return new Int32Array(bytes, 0, n);
    case "u32":
      return new Uint32Array(bytes, 0, n);
    case "f16":
      return Float32Array.from(new Float16Array(bytes, 0, n));
    case "bf16": {
      const bits = new Uint16Array(bytes, 0, n);
      const out = new Float32Array(n);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = bits[i] << 16;
      return out;
    }
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** bf16 bits of an f32, rounded to nearest even (NaN stays NaN). */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** An f32 rounded to the nearest bf16 value. */
export function roundBf16(x: number): number {
  u32[0] = f32ToBf16Bits(x) << 16;
  return f32[0];
}
