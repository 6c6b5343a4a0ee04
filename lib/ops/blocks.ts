/**
 * A flat tensor as consecutive blocks that each fit one storage binding: how element-wise ops and chunked
 * reductions work on tensors over the device's maxStorageBufferBindingSize (an 8B draft's fc.weight
 * [4096, 12288] f32 is 192 MiB, over lavapipe's 128 MiB and WebGPU's default limit). Blocks start at
 * offsets the device can bind (minStorageBufferOffsetAlignment) and hold a multiple of a caller's element
 * count, so a reduction chunked by that count sees exactly the chunks of the unsplit tensor and gives the
 * same result bit for bit.
 */
import type { Tensor } from "../tensor.ts";
import { LimitError } from "../gpu/errors.ts";
import { DTYPE_BYTES } from "../tensor.ts";

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * Elements per block of `t`: the most that fit one binding, a multiple of `multipleOf` and of the offset
 * alignment (in elements). `t.size` itself when the whole tensor binds.
 */
export function blockElements(t: Tensor, multipleOf = 1): number {
  const bytes = DTYPE_BYTES[t.dtype];
  const limits = t.gpu.limits;
  if (t.byteLength <= limits.maxStorageBufferBindingSize) return t.size;
  const align = Math.max(1, limits.minStorageBufferOffsetAlignment / bytes);
  const unit = (multipleOf * align) / gcd(multipleOf, align);
  const fit = Math.floor(limits.maxStorageBufferBindingSize / bytes / unit) * unit;
  if (fit === 0) {
    throw new LimitError(
      `tensor ${t.label}: a block of ${unit} elements does not fit the device's maxStorageBufferBindingSize ` +
        `(${limits.maxStorageBufferBindingSize} bytes)`,
    );
  }
  return fit;
}

/** `t` flattened into blocks of `per` elements (the last one shorter): views that each bind. */
export function flatBlocks(t: Tensor, per: number): Tensor[] {
  if (per >= t.size) return [t];
  const out: Tensor[] = [];
  for (let start = 0; start < t.size; start += per) {
    const n = Math.min(per, t.size - start);
    out.push(t.view(start, [n], `${t.label}[${start}:${start + n}]`));
  }
  return out;
}
