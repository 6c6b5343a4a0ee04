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

/** Rows [row0, row0 + rows) of a matrix, and its view. */
export interface RowBlock {
  /** First row. */
  row0: number;
  /** Rows in the block. */
  rows: number;
}

/**
 * Row blocks of a [rows, cols] matrix stored in each of `dtypes` (a weight and its f32 gradient, say) such
 * that every block binds in every dtype and starts at a bindable offset; one block when the matrix binds.
 */
export function rowBlocks(
  limits: { maxStorageBufferBindingSize: number; minStorageBufferOffsetAlignment: number },
  rows: number,
  cols: number,
  dtypeBytes: readonly number[],
): RowBlock[] {
  const widest = Math.max(...dtypeBytes);
  if (rows * cols * widest <= limits.maxStorageBufferBindingSize) return [{ row0: 0, rows }];
  const align = limits.minStorageBufferOffsetAlignment;
  // A block of `unit` rows starts at a multiple of `align` bytes in every dtype.
  const unit = dtypeBytes.reduce((u, b) => {
    const need = align / gcd(cols * b, align);
    return (u * need) / gcd(u, need);
  }, 1);
  const per = Math.floor(limits.maxStorageBufferBindingSize / (cols * widest) / unit) * unit;
  if (per === 0) {
    throw new LimitError(
      `a row block of ${unit} rows × ${cols} columns does not fit the device's maxStorageBufferBindingSize ` +
        `(${limits.maxStorageBufferBindingSize} bytes)`,
    );
  }
  const out: RowBlock[] = [];
  for (let row0 = 0; row0 < rows; row0 += per) out.push({ row0, rows: Math.min(per, rows - row0) });
  return out;
}
