/**
 * Reductions: argmax and sum of each row, whole-tensor sum and mean, and the global squared norm of a list of
 * gradient tensors (for clipping), with plain-TS CPU references.
 *
 * Every reduction is deterministic: no atomics, and each sum is taken in a fixed order (invocation strides,
 * then a fixed tree; large arrays in two stages, chunks of `REDUCE_CHUNK` elements → partials → one
 * workgroup), so the same inputs give bit-identical results on every run. The per-row ops have two kernel
 * families (`RowKernel` in ./variant.ts): one workgroup per row (GPUs) or one invocation per row (CPU
 * adapters), whose row sums differ only in f32 rounding.
 */
import * as K from "../../kernels/reduce.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { shapeString, type Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";
import { expectDisjoint, rowsAndCols } from "./check.ts";
import { rowsWorkgroups } from "./softmax.ts";
import { rowKernelFor, type RowKernelOptions } from "./variant.ts";
import { blockElements, flatBlocks } from "./blocks.ts";

/** Throws unless `out` holds one value per row of `x` (shape x.shape[:-1], or [rows]). */
function expectPerRow(op: string, x: Tensor, out: Tensor, rows: number): void {
  const lead = x.shape.slice(0, -1);
  const ok = out.shape.length === lead.length && out.shape.every((d, i) => d === lead[i]);
  if (!ok && !(out.shape.length === 1 && out.shape[0] === rows)) {
    throw new ShapeError(
      `${op}: out (${out.label}) has shape ${shapeString(out.shape)}, expected ${shapeString(lead)} ` +
        `(one value per row of x ${shapeString(x.shape)})`,
    );
  }
}

/**
 * Records a per-row kernel `name` over x [rows, cols] into out: the one-workgroup-per-row `workgroupCode`, or
 * `rowsCode` of {@link K.reduceRowsKernels} (one invocation per row, vec4 loads when cols % 4 = 0).
 */
async function addRowKernel(
  p: Program,
  op: string,
  name: string,
  workgroupCode: string,
  rowsCode: "argmax" | "rowSum",
  x: Tensor,
  out: Tensor,
  { kernel }: RowKernelOptions,
): Promise<void> {
  const [rows, cols] = rowsAndCols(op, "x", x);
  const bindings = [params(["u32", rows], ["u32", cols]), x, out];
  if (rowKernelFor(p.gpu, op, kernel) === "workgroup") {
    await p.add({ name, code: workgroupCode, entryPoint: "main" }, bindings, rows);
    return;
  }
  const vec4 = cols % 4 === 0;
  await p.add(
    {
      name: `${name}_rows${vec4 ? ".vec4" : ""}`,
      code: K.reduceRowsKernels(vec4)[rowsCode],
      entryPoint: "main",
    },
    bindings,
    rowsWorkgroups(rows),
  );
}

/**
 * out[r] = the index of the largest x[r, :] over the last dimension, as i32. Ties go to the lowest index; NaN
 * counts as larger than every number (the first NaN wins, as in torch.argmax). x: f32 [..., cols], cols ≥ 1;
 * out: i32 [...] (or [rows]). `kernel`: see {@link RowKernelOptions}.
 */
export async function argmax(
  p: Program,
  x: Tensor,
  out: Tensor,
  options: RowKernelOptions = {},
): Promise<void> {
  expectDtype("argmax", "x", x, "f32");
  expectDtype("argmax", "out", out, "i32");
  const [rows] = rowsAndCols("argmax", "x", x);
  expectPerRow("argmax", x, out, rows);
  await addRowKernel(p, "argmax", "reduce.argmax", K.argmax, "argmax", x, out, options);
}

/**
 * out[r] = Σ_c x[r, c] over the last dimension. x: f32 [..., cols]; out: f32 [...] (or [rows]). `kernel`: see
 * {@link RowKernelOptions}.
 */
export async function rowSum(
  p: Program,
  x: Tensor,
  out: Tensor,
  options: RowKernelOptions = {},
): Promise<void> {
  expectDtype("rowSum", "x", x, "f32");
  expectDtype("rowSum", "out", out, "f32");
  expectDisjoint("rowSum", "x", x, "out", out);
  const [rows] = rowsAndCols("rowSum", "x", x);
  expectPerRow("rowSum", x, out, rows);
  await addRowKernel(p, "rowSum", "reduce.row_sum", K.rowSum, "rowSum", x, out, options);
}

/** Number of partial sums (f32 elements of a `partials` tensor) a two-stage sum of `n` elements needs. */
export function sumPartialsSize(n: number): number {
  return Math.max(1, Math.ceil(n / K.REDUCE_CHUNK));
}

/** Number of partial sums {@link globalNormSquared} needs for `tensors`. */
export function globalNormPartialsSize(tensors: readonly { readonly size: number }[]): number {
  return tensors.reduce((total, t) => total + Math.ceil(t.size / K.REDUCE_CHUNK), 0);
}

/** Options of {@link sum}. */
export interface SumOptions {
  /**
   * f32 scratch of at least {@link sumPartialsSize}(x.size) elements: the sum then runs in two stages, one
   * workgroup per chunk of `REDUCE_CHUNK` elements and one for the partials. Without it a single workgroup
   * reads all of x, which is right for small tensors (per-row losses of a batch: thousands of elements).
   */
  partials?: Tensor;
  /** Multiplies the sum (default 1). */
  scale?: number;
  /** Adds to out[0] instead of overwriting it (for accumulators kept on the GPU across steps). */
  accumulate?: boolean;
}

async function finish(
  p: Program,
  op: string,
  x: Tensor,
  n: number,
  out: Tensor,
  scale: number,
  acc: boolean,
) {
  await p.add(
    { name: `reduce.${op}`, code: K.sumFinish, entryPoint: "main" },
    [params(["u32", n], ["f32", scale], ["u32", acc ? 1 : 0]), x, out],
    1,
  );
}

/** out[0] = (accumulate ? out[0] : 0) + scale · Σ x over every element of x (f32, any shape). */
export async function sum(p: Program, x: Tensor, out: Tensor, options: SumOptions = {}): Promise<void> {
  const { partials, scale = 1, accumulate = false } = options;
  expectDtype("sum", "x", x, "f32");
  expectDtype("sum", "out", out, "f32");
  expectShape("sum", "out", out, [1]);
  expectDisjoint("sum", "x", x, "out", out);
  if (!partials) return await finish(p, "sum", x, x.size, out, scale, accumulate);
  const chunks = sumPartialsSize(x.size);
  expectDtype("sum", "partials", partials, "f32");
  expectScratch("sum", partials, chunks);
  expectDisjoint("sum", "partials", partials, "x", x);
  expectDisjoint("sum", "partials", partials, "out", out);
  await p.add(
    { name: "reduce.sum_chunks", code: K.sumChunks, entryPoint: "sum_chunks" },
    [params(["u32", x.size], ["u32", 0]), x, partials],
    chunks,
  );
  await finish(p, "sum", partials, chunks, out, scale, accumulate);
}

/** out[0] = (accumulate ? out[0] : 0) + mean of x (see {@link sum} for `partials`). */
export function mean(
  p: Program,
  x: Tensor,
  out: Tensor,
  options: Omit<SumOptions, "scale"> = {},
): Promise<void> {
  if (x.size === 0) throw new ShapeError(`mean: x (${x.label}) is empty`);
  return sum(p, x, out, { ...options, scale: 1 / x.size });
}

function expectScratch(op: string, partials: Tensor, needed: number): void {
  if (partials.size < needed) {
    throw new ShapeError(
      `${op}: partials (${partials.label}) ${shapeString(partials.shape)} holds ${partials.size} values, ` +
        `${needed} needed`,
    );
  }
}

/**
 * out[0] = Σ_t Σ_i tensors[t][i]², the squared global L2 norm of a list of f32 tensors of any sizes (the
 * gradients, for clipping). Two stages: one dispatch per tensor writes the sums of squares of its chunks of
 * `REDUCE_CHUNK` elements into `partials` (tensor after tensor, chunk after chunk), then one workgroup sums
 * the partials. partials: f32 scratch of at least {@link globalNormPartialsSize}(tensors) elements.
 */
export async function globalNormSquared(
  p: Program,
  tensors: readonly Tensor[],
  partials: Tensor,
  out: Tensor,
): Promise<void> {
  const op = "globalNormSquared";
  tensors.forEach((t, i) => expectDtype(op, `tensors[${i}]`, t, "f32"));
  expectDtype(op, "partials", partials, "f32");
  expectDtype(op, "out", out, "f32");
  expectShape(op, "out", out, [1]);
  const total = globalNormPartialsSize(tensors);
  expectScratch(op, partials, total);
  tensors.forEach((t, i) => expectDisjoint(op, "partials", partials, `tensors[${i}]`, t));
  expectDisjoint(op, "partials", partials, "out", out);
  let base = 0;
  for (const [i, whole] of tensors.entries()) {
    // Blocks of whole REDUCE_CHUNKs: the same chunks, in the same partial slots, as the unsplit tensor.
    for (const t of flatBlocks(whole, blockElements(whole, K.REDUCE_CHUNK))) {
      const chunks = Math.ceil(t.size / K.REDUCE_CHUNK);
      if (chunks === 0) continue;
      await p.add(
        { name: "reduce.sum_squares_chunks", code: K.sumChunks, entryPoint: "sum_squares_chunks" },
        [params(["u32", t.size], ["u32", base]), t, partials],
        chunks,
        `reduce.sum_squares_chunks (tensors[${i}] ${t.label})`,
      );
      base += chunks;
    }
  }
  await finish(p, "global_norm_squared", partials, total, out, 1, false);
}

/** CPU reference of {@link argmax} (same tie and NaN rules). */
export function argmaxCpu(x: ArrayLike<number>, cols: number): Int32Array {
  const rows = x.length / cols;
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let c = 1; c < cols; c++) {
      const v = x[r * cols + c], b = x[r * cols + best];
      if (!Number.isNaN(b) && (Number.isNaN(v) || v > b)) best = c;
    }
    out[r] = best;
  }
  return out;
}

/** CPU reference of {@link rowSum} (f64). */
export function rowSumCpu(x: ArrayLike<number>, cols: number): Float64Array {
  const out = new Float64Array(x.length / cols);
  for (let i = 0; i < x.length; i++) out[Math.floor(i / cols)] += x[i];
  return out;
}

/** CPU reference of {@link sum} (f64, no scale). */
export function sumCpu(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s;
}

/** CPU reference of {@link globalNormSquared} (f64). */
export function globalNormSquaredCpu(arrays: readonly ArrayLike<number>[]): number {
  let s = 0;
  for (const a of arrays) for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return s;
}
