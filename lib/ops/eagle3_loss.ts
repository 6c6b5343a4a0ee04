/**
 * The EAGLE-3 loss of one TTT position in one kernel (formulas in kernels/eagle3_loss.ts): the teacher p^k
 * from the unshifted target logits, the soft cross-entropy with its gradient, and the acc_k agreement per row,
 * without a [rows, Vd] tensor of teacher probabilities. It gives the bits of ./softmax.ts `softmaxForward` over
 * the teacher rows, ./loss.ts `argmaxAgreement` (`totals: false`) and ./loss.ts `softCrossEntropy` recorded one
 * after the other (tests/ops/eagle3_loss_test.ts), and so has their CPU references, with
 * ./eagle3_teacher.ts `teacherProbsCpu` for p^k.
 */
import * as K from "../../kernels/eagle3_loss.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDisjoint, expectDtype, expectShape } from "./check.ts";
import { checkRowWindow } from "./eagle3_teacher.ts";
import { rowsWorkgroups } from "./softmax.ts";
import { rowKernelFor, type RowKernelOptions } from "./variant.ts";

/** Tensors of {@link eagle3Loss}; rows = the logits' rows (a window of the batch from `row0`). */
export interface Eagle3LossTensors {
  /** Draft logits z, f32 [rows, Vd]; the gradient overwrites them unless `grad` is given. */
  logits: Tensor;
  /** The target's draft-vocabulary logits L from batch row row0 on, f32 [≥ rows, Vd] (unshifted). */
  teacherLogits: Tensor;
  /** f32 [rows]: rows with 0 get no loss and a zero gradient (SpecForge's position mask). */
  posMask: Tensor;
  /** f32 [rows]: rows with mask ≠ 0 are counted by the agreement, and only they can count as correct. */
  lossMask: Tensor;
  /** The target token of each row as a draft index, i32 [rows] (−1 never matches). */
  targetIds: Tensor;
  /** Out, f32 [rows]: each row's share of loss_k. */
  rowLoss: Tensor;
  /** Out, f32 [rows, 2]: (correct, counted) per row, for ./loss.ts `agreementTotals`. */
  perRow: Tensor;
  /** Out, f32 [rows, Vd]: the gradient, when it must not replace the logits. */
  grad?: Tensor;
}

/** Scalars of {@link eagle3Loss}, and its kernel family (see {@link RowKernelOptions}). */
export interface Eagle3LossOptions extends RowKernelOptions {
  /** Sequence length T of the batch's rows. */
  seqLen: number;
  /** TTT position k. */
  position: number;
  /** The batch row of the logits' first row (a head window); default 0. */
  row0?: number;
  /** Divides every row's loss: B·T in SpecForge (all rows, including padding). */
  denominator: number;
  /** Multiplies the gradient (not rowLoss), e.g. 0.8^k / accumulation steps. */
  gradScale: number;
}

/** Records the loss, gradient and per-row agreement of TTT position `position` (see the module doc). */
export async function eagle3Loss(p: Program, t: Eagle3LossTensors, o: Eagle3LossOptions): Promise<void> {
  const op = "eagle3Loss";
  const { logits, teacherLogits, posMask, lossMask, targetIds, rowLoss, perRow, grad } = t;
  for (const [name, x] of Object.entries(t)) {
    if (x) expectDtype(op, name, x, name === "targetIds" ? "i32" : "f32");
  }
  expectShape(op, "logits", logits, [-1, -1]);
  const [rows, cols] = logits.shape;
  expectShape(op, "teacherLogits", teacherLogits, [-1, cols]);
  for (const [name, x] of [["posMask", posMask], ["lossMask", lossMask], ["targetIds", targetIds]] as const) {
    expectShape(op, name, x, [rows]);
  }
  expectShape(op, "rowLoss", rowLoss, [rows]);
  expectShape(op, "perRow", perRow, [rows, 2]);
  if (grad) expectShape(op, "grad", grad, [rows, cols]);
  const { seqLen, position, row0 = 0, denominator, gradScale } = o;
  checkRowWindow(op, { rows, teacherRows: teacherLogits.shape[0], row0, seq: seqLen, k: position });
  if (!(denominator > 0 && Number.isFinite(denominator)) || !Number.isFinite(gradScale)) {
    throw new RangeError(
      `${op}: denominator must be positive and gradScale finite (${denominator}, ${gradScale})`,
    );
  }
  const inputs = { logits, teacherLogits, posMask, lossMask, targetIds };
  const outputs = grad ? { rowLoss, perRow, grad } : { rowLoss, perRow };
  for (const [out, x] of Object.entries(outputs)) {
    for (const [name, y] of Object.entries(inputs)) expectDisjoint(op, out, x, name, y);
  }
  expectDisjoint(op, "rowLoss", rowLoss, "perRow", perRow);
  if (grad) {
    expectDisjoint(op, "grad", grad, "rowLoss", rowLoss);
    expectDisjoint(op, "grad", grad, "perRow", perRow);
  }
  const rowKernel = rowKernelFor(p.gpu, op, o.kernel), vec4 = cols % 4 === 0, inPlace = !grad;
  const name = `eagle3.loss${inPlace ? "_in_place" : ""}`;
  await p.add(
    rowKernel === "rows"
      ? {
        name: `${name}_rows${vec4 ? ".vec4" : ""}`,
        code: K.eagle3LossRows(inPlace, vec4),
        entryPoint: "main",
      }
      : { name, code: K.eagle3Loss(inPlace), entryPoint: "main" },
    [
      params(
        ["u32", rows],
        ["u32", cols],
        ["u32", seqLen],
        ["u32", position],
        ["u32", row0],
        ["f32", denominator],
        ["f32", gradScale / denominator],
      ),
      logits,
      teacherLogits,
      posMask,
      lossMask,
      targetIds,
      rowLoss,
      perRow,
      grad ?? null,
    ],
    rowKernel === "rows" ? rowsWorkgroups(rows) : rows,
  );
}
