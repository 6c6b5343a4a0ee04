/**
 * Softmax and log-softmax over the last dimension (f32, max-subtracted), forward and backward, with plain-TS
 * CPU references. A tensor of shape [..., cols] is treated as rows × cols, row-major.
 *
 *   softmax:      y = exp(x − m) / Σ exp(x − m),  m = max x          dx = y ⊙ (dy − Σ dy·y)
 *   log-softmax:  y = x − m − log Σ exp(x − m)                        dx = dy − exp(y) · Σ dy
 *
 * Every op takes an optional kernel family ({@link RowKernel}): one workgroup per row on GPUs, one invocation
 * per row on CPU adapters (chosen by ./variant.ts, like every op's kernel variant).
 */
import * as K from "../../kernels/softmax.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDisjoint, expectDtype, expectSameShape, rowsAndCols } from "./check.ts";
import { type RowKernel, rowKernelFor, type RowKernelOptions } from "./variant.ts";

export type { RowKernel, RowKernelOptions } from "./variant.ts";

/** Workgroups of a rows kernel over `rows` rows (one invocation per row). */
export function rowsWorkgroups(rows: number): number {
  return Math.ceil(rows / K.ROWS_WG);
}

/**
 * The kernel `entryPoint` of `code` (workgroup family) or of the rows variant chosen by `rowsCode(vec4)`, with
 * its name and workgroup count for `rows` rows of `cols` columns.
 */
function rowKernelSpec(
  p: Program,
  op: string,
  kernel: RowKernel | undefined,
  workgroupCode: string,
  rowsCode: (vec4: boolean) => string,
  rows: number,
  cols: number,
) {
  if (rowKernelFor(p.gpu, op, kernel) === "workgroup") {
    return { spec: { name: `softmax.${op}`, code: workgroupCode, entryPoint: op }, workgroups: rows };
  }
  const vec4 = cols % 4 === 0;
  return {
    spec: { name: `softmax.${op}_rows${vec4 ? ".vec4" : ""}`, code: rowsCode(vec4), entryPoint: op },
    workgroups: rowsWorkgroups(rows),
  };
}

async function forward(
  p: Program,
  op: "softmax" | "log_softmax",
  x: Tensor,
  y: Tensor,
  kernel: RowKernel | undefined,
): Promise<void> {
  expectDtype(op, "x", x, "f32");
  expectDtype(op, "y", y, "f32");
  expectSameShape(op, "x", x, "y", y);
  expectDisjoint(op, "x", x, "y", y);
  const [rows, cols] = rowsAndCols(op, "x", x);
  const rowsCode = (vec4: boolean) => K.softmaxRowsKernels(vec4).forward;
  const { spec, workgroups } = rowKernelSpec(p, op, kernel, K.softmaxForward, rowsCode, rows, cols);
  await p.add(spec, [params(["u32", rows], ["u32", cols]), x, y], workgroups);
}

async function backward(
  p: Program,
  op: "softmax_backward" | "log_softmax_backward",
  dy: Tensor,
  y: Tensor,
  dx: Tensor,
  kernel: RowKernel | undefined,
): Promise<void> {
  for (const [name, t] of [["dy", dy], ["y", y], ["dx", dx]] as const) expectDtype(op, name, t, "f32");
  expectSameShape(op, "dy", dy, "y", y);
  expectSameShape(op, "dy", dy, "dx", dx);
  expectDisjoint(op, "dx", dx, "dy", dy);
  expectDisjoint(op, "dx", dx, "y", y);
  const [rows, cols] = rowsAndCols(op, "dy", dy);
  const rowsCode = (vec4: boolean) => K.softmaxRowsKernels(vec4).backward;
  const { spec, workgroups } = rowKernelSpec(p, op, kernel, K.softmaxBackward, rowsCode, rows, cols);
  await p.add(spec, [params(["u32", rows], ["u32", cols]), dy, y, dx], workgroups);
}

/** y = softmax(x) over the last dimension. x, y: f32 [..., cols], distinct. */
export function softmaxForward(
  p: Program,
  x: Tensor,
  y: Tensor,
  { kernel }: RowKernelOptions = {},
): Promise<void> {
  return forward(p, "softmax", x, y, kernel);
}

/** dx = y ⊙ (dy − Σ_row dy·y), the backward of y = softmax(x). dx must alias neither dy nor y. */
export function softmaxBackward(
  p: Program,
  dy: Tensor,
  y: Tensor,
  dx: Tensor,
  { kernel }: RowKernelOptions = {},
): Promise<void> {
  return backward(p, "softmax_backward", dy, y, dx, kernel);
}

/** y = log_softmax(x) = x − logsumexp(x) over the last dimension. x, y: f32 [..., cols], distinct. */
export function logSoftmaxForward(
  p: Program,
  x: Tensor,
  y: Tensor,
  { kernel }: RowKernelOptions = {},
): Promise<void> {
  return forward(p, "log_softmax", x, y, kernel);
}

/** dx = dy − exp(y) · Σ_row dy, the backward of y = log_softmax(x). dx must alias neither dy nor y. */
export function logSoftmaxBackward(
  p: Program,
  dy: Tensor,
  y: Tensor,
  dx: Tensor,
  { kernel }: RowKernelOptions = {},
): Promise<void> {
  return backward(p, "log_softmax_backward", dy, y, dx, kernel);
}

/** CPU reference: log-sum-exp of each row of x [rows, cols] (f64). */
export function logSumExpCpu(x: ArrayLike<number>, cols: number): Float64Array {
  const rows = x.length / cols;
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, x[r * cols + c]);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(x[r * cols + c] - m);
    out[r] = m + Math.log(s);
  }
  return out;
}

/** CPU reference: softmax over rows of length `cols` (f64). */
export function softmaxCpu(x: ArrayLike<number>, cols: number): Float64Array {
  const lse = logSumExpCpu(x, cols);
  return Float64Array.from(x, (v, i) => Math.exp(v - lse[Math.floor(i / cols)]));
}

/** CPU reference: log-softmax over rows of length `cols` (f64). */
export function logSoftmaxCpu(x: ArrayLike<number>, cols: number): Float64Array {
  const lse = logSumExpCpu(x, cols);
  return Float64Array.from(x, (v, i) => v - lse[Math.floor(i / cols)]);
}

/** CPU reference of the softmax backward (f64): dx = y ⊙ (dy − Σ_row dy·y). */
export function softmaxBackwardCpu(dy: ArrayLike<number>, y: ArrayLike<number>, cols: number): Float64Array {
  const dx = new Float64Array(dy.length);
  for (let r = 0; r < dy.length / cols; r++) {
    let dot = 0;
    for (let c = 0; c < cols; c++) dot += dy[r * cols + c] * y[r * cols + c];
    for (let c = 0; c < cols; c++) dx[r * cols + c] = y[r * cols + c] * (dy[r * cols + c] - dot);
  }
  return dx;
}

/** CPU reference of the log-softmax backward (f64): dx = dy − exp(y) · Σ_row dy. */
export function logSoftmaxBackwardCpu(
  dy: ArrayLike<number>,
  y: ArrayLike<number>,
  cols: number,
): Float64Array {
  const dx = new Float64Array(dy.length);
  for (let r = 0; r < dy.length / cols; r++) {
    let total = 0;
    for (let c = 0; c < cols; c++) total += dy[r * cols + c];
    for (let c = 0; c < cols; c++) dx[r * cols + c] = dy[r * cols + c] - Math.exp(y[r * cols + c]) * total;
  }
  return dx;
}
