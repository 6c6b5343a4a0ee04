/**
 * A pool of storage buffers reused by size class, so that tensors made and dropped every step do not create
 * and destroy GPU buffers (wgpu leaks some of those) and a step's memory stays flat.
 */
import type { Gpu } from "./device.ts";
import { LimitError } from "./errors.ts";

/** Usage of every pooled buffer: bindable as storage, copyable both ways. */
export const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** Size classes: 256 bytes, then powers of two split in four (at most 25 % wasted). */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const pow = 2 ** Math.floor(Math.log2(bytes));
  const step = Math.max(256, pow / 4);
  return Math.ceil(bytes / step) * step;
}

/** The size of the buffer the pool makes for `bytes`: its size class, or the bytes when the class exceeds `maxBufferSize`. */
export function pooledSize(bytes: number, maxBufferSize: number): number {
  return sizeClass(bytes) <= maxBufferSize ? sizeClass(bytes) : Math.ceil(bytes / 4) * 4;
}

/**
 * A {@link BufferPool} without a device: the same size classes and reuse, so that a run's allocations replayed
 * into it give the bytes the real pool would hold at its peak (the memory plan, lib/train/memory_plan.ts).
 */
export class SimulatedPool {
  #free = new Map<number, number>();
  /** Bytes of live (acquired) buffers. */
  liveBytes = 0;
  /** Bytes of parked buffers. */
  freeBytes = 0;
  /** The most bytes held at once (live + parked). */
  peakBytes = 0;

  /** A pool of a device whose largest buffer is `maxBufferSize` bytes. */
  constructor(readonly maxBufferSize: number) {}

  /** Takes a buffer for `bytes` (a parked one of its size when there is one); returns its size. */
  acquire(bytes: number): number {
    const size = pooledSize(bytes, this.maxBufferSize);
    const parked = this.#free.get(size) ?? 0;
    if (parked > 0) {
      this.#free.set(size, parked - 1);
      this.freeBytes -= size;
    }
    this.liveBytes += size;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes + this.freeBytes);
    return size;
  }

  /** Parks a buffer of `size` (a value {@link acquire} returned). */
  release(size: number): void {
    this.#free.set(size, (this.#free.get(size) ?? 0) + 1);
    this.liveBytes -= size;
    this.freeBytes += size;
  }
}

/** Storage buffers by size class. */
export class BufferPool {
  #free = new Map<number, GPUBuffer[]>();
  /** Bytes currently held by live (acquired) buffers. */
  liveBytes = 0;
  /** Bytes parked in the pool, ready for reuse. */
  freeBytes = 0;
  /** The most bytes the pool has held at once (live + parked) since it was made or {@link resetPeak}. */
  peakBytes = 0;

  /** An empty pool for `gpu`'s device; {@link Gpu} makes one, reach it as `gpu.pool`. */
  constructor(private gpu: Gpu) {}

  /** A storage buffer of at least `bytes` bytes. `label` names the tensor in limit errors. */
  acquire(bytes: number, label: string): GPUBuffer {
    const max = this.gpu.limits.maxBufferSize;
    if (bytes > max) {
      throw new LimitError(
        `tensor ${label}: ${bytes} bytes exceed the device's maxBufferSize of ${max} bytes`,
      );
    }
    const size = pooledSize(bytes, max);
    const reused = this.#free.get(size)?.pop();
    if (reused) this.freeBytes -= size;
    const buffer = reused ?? this.gpu.createBuffer(size, STORAGE_USAGE, label);
    this.liveBytes += size;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes + this.freeBytes);
    return buffer;
  }

  /** Returns a buffer to the pool. The caller must not use it afterwards. */
  release(buffer: GPUBuffer): void {
    const size = buffer.size;
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    list.push(buffer);
    this.liveBytes -= size;
    this.freeBytes += size;
  }

  /** Starts a new peak measurement from what the pool holds now. */
  resetPeak(): void {
    this.peakBytes = this.liveBytes + this.freeBytes;
  }

  /** Destroys every parked buffer. */
  clear(): void {
    for (const list of this.#free.values()) for (const b of list) b.destroy();
    this.#free.clear();
    this.freeBytes = 0;
  }
}
