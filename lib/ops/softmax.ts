/**
 * Softmax and log-softmax over the last dimension (f32, max-subtracted), forward and backward, with plain-TS
 * CPU references. A tensor of shape [..., cols] is treated as rows × cols, row-major.
 *
 *   softmax:      y = exp(x − m) / Σ exp(x − m),  m = max x          dx = y ⊙ (dy − Σ dy·y)
 *   log-softmax:  y = x − m − log Σ exp(x − m)                        dx = dy − exp(y) · Σ dy
 */
import * as K from "../../kernels/softmax.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDisjoint, expectDtype, expectSameShape, rowsAndCols } from "./check.ts";

async function forward(p: Program, op: "softmax" | "log_softmax", x: Tensor, y: Tensor): Promise<void> {
  expectDtype(op, "x", x, "f32");
  expectDtype(op, "y", y, "f32");
  expectSameShape(op, "x", x, "y", y);
  expectDisjoint(op, "x", x, "y", y);
  const [rows, cols] = rowsAndCols(op, "x", x);
  await p.add(
    { name: `softmax.${op}`, code: K.softmaxForward, entryPoint: op },
    [params(["u32", rows], ["u32", cols]), x, y],
    rows,
  );
}

async function backward(
  p: Program,
  op: "softmax_backward" | "log_softmax_backward",
  dy: Tensor,
  y: Tensor,
  dx: Tensor,
): Promise<void> {
  for (const [name, t] of [["dy", dy], ["y", y], ["dx", dx]] as const) expectDtype(op, name, t, "f32");
  expectSameShape(op, "dy", dy, "y", y);
  expectSameShape(op, "dy", dy, "dx", dx);
  expectDisjoint(op, "dx", dx, "dy", dy);
  expectDisjoint(op, "dx", dx, "y", y);
  const [rows, cols] = rowsAndCols(op, "dy", dy);
  await p.add(
    { name: `softmax.${op}`, code: K.softmaxBackward, entryPoint: op },
    [params(["u32", rows], ["u32", cols]), dy, y, dx],
    rows,
  );
}

/** y = softmax(x) over the last dimension. x, y: f32 [..., cols], distinct. */
export function softmaxForward(p: Program, x: Tensor, y: Tensor): Promise<void> {
  return forward(p, "softmax", x, y);
}

/** dx = y ⊙ (dy − Σ_row dy·y), the backward of y = softmax(x). dx must alias neither dy nor y. */
export function softmaxBackward(p: Program, dy: Tensor, y: Tensor, dx: Tensor): Promise<void> {
  return backward(p, "softmax_backward", dy, y, dx);
}

/** y = log_softmax(x) = x − logsumexp(x) over the last dimension. x, y: f32 [..., cols], distinct. */
export function logSoftmaxForward(p: Program, x: Tensor, y: Tensor): Promise<void> {
  return forward(p, "log_softmax", x, y);
}

/** dx = dy − exp(y) · Σ_row dy, the backward of y = log_softmax(x). dx must alias neither dy nor y. */
export function logSoftmaxBackward(p: Program, dy: Tensor, y: Tensor, dx: Tensor): Promise<void> {
  return backward(p, "log_softmax_backward", dy, y, dx);
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
