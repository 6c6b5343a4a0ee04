/**
 * What a program's operand textures hold while it is recorded, so that a tensor is packed into a texture
 * (lib/ops/texels.ts) once and read from it again for as long as nothing later in the program writes it. A
 * program's dispatches run in order, each seeing the writes of those before it; a texture packed from a buffer
 * range at dispatch i therefore equals a fresh packing of that range at dispatch j > i unless a dispatch in
 * between wrote the range or packed another tensor into the texture. Both are tracked here, so reuse gives
 * the same values bit for bit. Writes are read off the kernels' WGSL: the bindings declared
 * `var<storage, read_write>` (every kernel in kernels/ declares each storage binding on one line).
 *
 * Tensors declared read-only within a program (a training step's weights, read by every TTT position and by
 * the backward) get textures of their own and are packed once per run; a dispatch binding one of them
 * writable is an error.
 */
import type { DType } from "../tensor.ts";

/** A byte range of a buffer, as bound. */
export interface BufferRange {
  /** The buffer. */
  buffer: GPUBuffer;
  /** First byte of the range. */
  offset: number;
  /** Bytes in the range. */
  size: number;
}

/** What a texture holds: a packing of `range`, read as `dtype`. */
interface Packing {
  range: BufferRange;
  dtype: DType;
}

/** The byte range of a buffer binding (a missing size runs to the buffer's end). */
export function rangeOf(b: GPUBufferBinding): BufferRange {
  const offset = b.offset ?? 0;
  return { buffer: b.buffer, offset, size: b.size ?? b.buffer.size - offset };
}

/** Whether two buffer ranges share a byte. */
export function overlaps(a: BufferRange, b: BufferRange): boolean {
  return a.buffer === b.buffer && a.offset < b.offset + b.size && b.offset < a.offset + a.size;
}

function sameRange(a: BufferRange, b: BufferRange): boolean {
  return a.buffer === b.buffer && a.offset === b.offset && a.size === b.size;
}

const WRITABLE = /@group\(0\)\s*@binding\((\d+)\)\s*var<storage,\s*read_write>/g;
const writableCache = new Map<string, ReadonlySet<number>>();

/** The binding indices of group 0 that WGSL `code` declares `var<storage, read_write>` (memoised). */
export function writableBindings(code: string): ReadonlySet<number> {
  let set = writableCache.get(code);
  if (!set) {
    set = new Set([...code.matchAll(WRITABLE)].map((m) => Number(m[1])));
    writableCache.set(code, set);
  }
  return set;
}

/** The contents of one program's textures and its read-only ranges (see the module comment). */
export class TextureContents {
  #holds = new Map<GPUTexture, Packing>();
  #readOnly: Array<{ range: BufferRange; label: string }> = [];

  /** Declares `range` (named `label` in errors) not written by the dispatches recorded from now on. */
  declareReadOnly(range: BufferRange, label: string): void {
    this.#readOnly.push({ range, label });
  }

  /** Whether `range` lies inside a range declared read-only. */
  isReadOnly(range: BufferRange): boolean {
    return this.#readOnly.some(({ range: r }) =>
      r.buffer === range.buffer && r.offset <= range.offset && range.offset + range.size <= r.offset + r.size
    );
  }

  /**
   * A texture that holds a packing of `range` as `dtype` no later dispatch has overwritten, whichever role it
   * was packed for (the layout depends on the tensor only), or undefined.
   */
  holder(range: BufferRange, dtype: DType): GPUTexture | undefined {
    for (const [texture, h] of this.#holds) {
      if (h.dtype === dtype && sameRange(h.range, range)) return texture;
    }
    return undefined;
  }

  /** Records that the dispatch just recorded packed `range` as `dtype` into `texture`. */
  packed(texture: GPUTexture, range: BufferRange, dtype: DType): void {
    this.#holds.set(texture, { range, dtype });
  }

  /**
   * Records that dispatch `label` writes `ranges`: the textures holding a packing of any of them no longer
   * match it. Throws if one of them overlaps a range declared read-only.
   */
  written(ranges: readonly BufferRange[], label: string): void {
    for (const w of ranges) {
      const ro = this.#readOnly.find(({ range }) => overlaps(range, w));
      if (ro) throw new Error(`kernel ${label} writes ${ro.label}, declared read-only in this program`);
      for (const [texture, h] of this.#holds) if (overlaps(h.range, w)) this.#holds.delete(texture);
    }
  }

  /** Forgets every texture's contents (after dispatches whose writes are unknown). */
  forget(): void {
    this.#holds.clear();
  }
}
