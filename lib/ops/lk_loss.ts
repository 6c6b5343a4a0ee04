/**
 * The acceptance-targeted LK losses of one TTT position (formulas in kernels/lk_loss.ts; SpecForge
 * `specforge/core/lk_loss.py` `compute_lk_loss`, arXiv 2602.23881), with a plain-TS CPU reference of the
 * loss and its gradient. Recorded in two parts around the KL loss (lib/ops/loss.ts `softCrossEntropy`, whose
 * gradient the lambda variant mixes in): {@link lkAcceptance} reads the logits before anything overwrites
 * them, {@link lkGradient} then writes the position's gradient over them.
 */
import * as K from "../../kernels/lk_loss.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";
import { checkRowWindow } from "./eagle3_teacher.ts";

/** The LK loss variants (SpecForge's `lk_loss_type`). */
export type LkLossType = "alpha" | "lambda";

/** The settings of an LK loss: its type, and λ's `kl_scale` and `kl_decay` (lambda only). */
export interface LkLossOptions {
  /** alpha or lambda. */
  type: LkLossType;
  /** lambda = kl_scale · exp(−kl_decay · mean acceptance). */
  klScale: number;
  /** See `klScale`. */
  klDecay: number;
}

/** Tensors of one position's LK loss; rows r = b·T + t. */
export interface LkTensors {
  /** The draft's logits z [rows, Vd]; {@link lkGradient} overwrites them with the gradient. */
  logits: Tensor;
  /** The target's logits over the draft vocabulary, unshifted [rows, Vd] (a window: see {@link LkRows}). */
  teacherLogits: Tensor;
  /** The target's full-vocabulary running (max, Σexp) per row, unshifted, as many rows as teacherLogits. */
  teacherMaxSum: Tensor;
  /** The position mask m (pos_mask^k) [rows]. */
  mask: Tensor;
  /** Out: (α, S) of each row [rows, 2]. */
  alphaS: Tensor;
  /** Out: (Σ m α, Σ m, Σ m ℓ, 0) [4]. */
  stats: Tensor;
}

/** Where a position's LK tensors sit in the batch: TTT position k, sequences of seqLen, rows from row0. */
export interface LkRows {
  seqLen: number;
  position: number;
  /**
   * The batch row of the tensors' row 0 (default 0): with it, logits, mask and alphaS are a window of rows
   * and the teacher tensors hold the rows from row0 on that the window is taught by (eagle3_teacher.ts
   * `checkRowWindow`).
   */
  row0?: number;
}

function check(op: string, t: LkTensors, { seqLen, position, row0 = 0 }: LkRows): [number, number] {
  for (const name of ["logits", "teacherLogits", "teacherMaxSum", "mask", "alphaS", "stats"] as const) {
    expectDtype(op, name, t[name], "f32");
  }
  expectShape(op, "logits", t.logits, [-1, -1]);
  const [rows, cols] = t.logits.shape, teacherRows = t.teacherLogits.shape[0];
  expectShape(op, "teacherLogits", t.teacherLogits, [-1, cols]);
  expectShape(op, "teacherMaxSum", t.teacherMaxSum, [teacherRows, 2]);
  expectShape(op, "mask", t.mask, [rows]);
  expectShape(op, "alphaS", t.alphaS, [rows, 2]);
  expectShape(op, "stats", t.stats, [4]);
  checkRowWindow(op, { rows, teacherRows, row0, seq: seqLen, k: position });
  return [rows, cols];
}

/**
 * Records each row's expected acceptance α (and S) and their masked sums (reads the logits only):
 * {@link lkRows} then {@link lkReduce}.
 */
export async function lkAcceptance(p: Program, t: LkTensors, where: LkRows): Promise<void> {
  await lkRows(p, t, where);
  await lkReduce(p, t.alphaS, t.mask, t.stats);
}

/** Records each row's (α, S) into `t.alphaS` (the logits are read, not written). */
export async function lkRows(p: Program, t: LkTensors, where: LkRows): Promise<void> {
  const [rows, cols] = check("lkRows", t, where);
  await p.add(
    { name: "lk.rows", code: K.lkRows, entryPoint: "main" },
    [
      params(["u32", rows], ["u32", where.seqLen], ["u32", cols], ["u32", where.position], [
        "u32",
        where.row0 ?? 0,
      ]),
      t.logits,
      t.teacherLogits,
      t.teacherMaxSum,
      t.alphaS,
    ],
    Math.ceil(rows / K.LK_ROWS_WG),
  );
}

/** Records stats = (Σ m α, Σ m, Σ m ℓ, 0) over the rows of alphaS [rows, 2] and mask [rows]. */
export async function lkReduce(p: Program, alphaS: Tensor, mask: Tensor, stats: Tensor): Promise<void> {
  const op = "lkReduce", rows = mask.shape[0];
  expectShape(op, "alphaS", alphaS, [rows, 2]);
  expectShape(op, "stats", stats, [4]);
  await p.add(
    { name: "lk.reduce", code: K.lkReduce, entryPoint: "main" },
    [params(["u32", rows], ["u32", 0], ["u32", 0], ["u32", 0]), alphaS, mask, stats],
    1,
  );
}

/**
 * Records the position's gradient over `t.logits` (after {@link lkAcceptance} over every row of the
 * position, whose stats it reads): `klGrad` [rows, Vd] holds the KL gradient already multiplied by `scale`
 * (softCrossEntropy's gradScale), `scale` = γ^k / accumulation.
 */
export async function lkGradient(
  p: Program,
  t: LkTensors,
  klGrad: Tensor,
  lk: LkLossOptions,
  where: LkRows & { scale: number },
): Promise<void> {
  const [rows, cols] = check("lkGradient", t, where);
  expectShape("lkGradient", "klGrad", klGrad, [rows, cols]);
  await p.add(
    { name: "lk.grad", code: K.lkGrad, entryPoint: "main" },
    [
      params(
        ["u32", rows],
        ["u32", where.seqLen],
        ["u32", cols],
        ["u32", where.position],
        ["u32", K.LK_VARIANT[lk.type]],
        ["f32", where.scale],
        ["f32", lk.klScale],
        ["f32", lk.klDecay],
        ["u32", where.row0 ?? 0],
      ),
      t.logits,
      klGrad,
      t.teacherLogits,
      t.teacherMaxSum,
      t.alphaS,
      t.mask,
      t.stats,
    ],
    Math.ceil(rows / K.LK_ROWS_WG),
  );
}

/** What {@link lkLossCpu} computes for one position (f64). */
export interface LkCpuResult {
  /** α and S per row. */
  alpha: Float64Array;
  s: Float64Array;
  /** Ā = Σ m α / max(Σ m, 1e-8). */
  meanAlpha: number;
  /** The position's loss (the formulas of kernels/lk_loss.ts). */
  loss: number;
  /** ∂loss/∂z · scale [rows, Vd], the KL part included (lambda). */
  grad: Float64Array;
}

/**
 * CPU reference of one position's LK loss and gradient: z [rows, Vd], teacher logits and (max, Σexp)
 * unshifted, mask [rows], `klLoss` and `klGrad` the KL loss and its gradient (×scale) of the same position.
 */
export function lkLossCpu(
  z: ArrayLike<number>,
  teacher: ArrayLike<number>,
  maxSum: ArrayLike<number>,
  mask: ArrayLike<number>,
  cols: number,
  seqLen: number,
  position: number,
  lk: LkLossOptions,
  kl: { loss: number; grad: ArrayLike<number>; scale: number },
): LkCpuResult {
  const rows = mask.length;
  const alpha = new Float64Array(rows), s = new Float64Array(rows);
  const q = new Float64Array(rows * cols), pv = new Float64Array(rows * cols);
  let ma = 0, mm = 0, ml = 0;
  for (let r = 0; r < rows; r++) {
    const m = mask[r] !== 0 ? 1 : 0;
    mm += m;
    if ((r % seqLen) + position + 1 >= seqLen) continue; // taught by no target row: α = 0
    const src = r + position + 1, lse = maxSum[2 * src] + Math.log(maxSum[2 * src + 1]);
    let max = -Infinity, sum = 0;
    for (let v = 0; v < cols; v++) max = Math.max(max, z[r * cols + v]);
    for (let v = 0; v < cols; v++) sum += Math.exp(z[r * cols + v] - max);
    for (let v = 0; v < cols; v++) {
      const i = r * cols + v;
      q[i] = Math.exp(z[i] - max) / sum;
      pv[i] = Math.exp(teacher[src * cols + v] - lse);
      alpha[r] += Math.min(q[i], pv[i]);
      s[r] += (q[i] < pv[i] ? 1 : q[i] === pv[i] ? 0.5 : 0) * q[i];
    }
    ma += m * alpha[r];
    if (alpha[r] > 0) ml += m * Math.log(alpha[r]);
  }
  const total = Math.max(mm, 1e-8), meanAlpha = ma / total;
  const lambda = lk.klScale * Math.exp(-lk.klDecay * meanAlpha);
  const loss = lk.type === "alpha" ? -ml / total : lambda * kl.loss + (1 - lambda) * (1 - meanAlpha);
  const grad = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const m = mask[r] !== 0 ? 1 : 0;
    const c = lk.type === "lambda" ? -(1 - lambda) * m / total : alpha[r] > 0 ? -m / (total * alpha[r]) : 0;
    for (let v = 0; v < cols; v++) {
      const i = r * cols + v;
      const w = q[i] < pv[i] ? 1 : q[i] === pv[i] ? 0.5 : 0;
      grad[i] = (lk.type === "lambda" ? lambda * kl.grad[i] : 0) + kl.scale * c * q[i] * (w - s[r]);
    }
  }
  return { alpha, s, meanAlpha, loss, grad };
}
