/**
 * Full-vocabulary log-sum-exp and argmax of logits computed chunk by chunk (see kernels/vocab_stats.ts), so
 * that a target with a 128k vocabulary never materialises [rows, V] logits: each chunk of lm_head rows gives a
 * [rows, chunk] block of logits that is folded into a running (max, sum, argmax) per row.
 */
import * as K from "../../kernels/vocab_stats.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/**
 * Folds the chunk `logits` [rows, cols], whose column 0 is vocabulary id `colOffset`, into `maxSum`
 * [rows, 2] (running max, running Σ exp(x − max)) and `argmax` i32 [rows]. `first` starts the state over.
 * After the last chunk, log-sum-exp = max + log(sum).
 */
export async function vocabStatsMerge(
  p: Program,
  logits: Tensor,
  maxSum: Tensor,
  argmax: Tensor,
  { colOffset, first }: { colOffset: number; first: boolean },
): Promise<void> {
  const op = "vocabStatsMerge";
  expectDtype(op, "logits", logits, "f32");
  expectDtype(op, "maxSum", maxSum, "f32");
  expectDtype(op, "argmax", argmax, "i32");
  expectShape(op, "logits", logits, [-1, -1]);
  const [rows, cols] = logits.shape;
  expectShape(op, "maxSum", maxSum, [rows, 2]);
  expectShape(op, "argmax", argmax, [rows]);
  await p.add(
    { name: "vocabStats.merge", code: K.vocabStats, entryPoint: "merge" },
    [
      params(["u32", rows], ["u32", cols], ["u32", colOffset], ["u32", first ? 1 : 0]),
      logits,
      maxSum,
      argmax,
    ],
    rows,
  );
}

/** CPU reference: per row, log-sum-exp and the lowest index of the maximum over all columns. */
export function vocabStatsCpu(
  logits: ArrayLike<number>,
  rows: number,
  cols: number,
): { logSumExp: Float64Array; argmax: Int32Array } {
  const logSumExp = new Float64Array(rows);
  const argmax = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity, arg = 0;
    for (let c = 0; c < cols; c++) {
      const x = logits[r * cols + c];
      if (x > m) [m, arg] = [x, c];
    }
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(logits[r * cols + c] - m);
    logSumExp[r] = m + Math.log(s);
    argmax[r] = arg;
  }
  return { logSumExp, argmax };
}
