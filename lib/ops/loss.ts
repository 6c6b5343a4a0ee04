/**
 * The EAGLE-3 draft loss (SpecForge `specforge/core/loss.py` `LogSoftmaxLoss`) and its accuracy metric (the
 * `acces` of `specforge/core/eagle3.py` `OnlineEagle3Model.forward`), with plain-TS CPU references. For
 * logits z [rows, V] of one TTT position against target probabilities p [rows, V] over the draft
 * vocabulary, with mask[rows] (the position mask; 0 = no loss) and denominator B·T (all rows, padding too):
 *
 *   rowLoss[r] = [mask_r ≠ 0] · (− Σ_v p_rv · log_softmax(z_r)_v) / denominator
 *   grad[r]    = gradScale · [mask_r ≠ 0] · (softmax(z_r) · Σ_v p_rv − p_r) / denominator
 *
 * loss_k = Σ_r rowLoss[r] (see `sum` in ./reduce.ts); grad is ∂(gradScale · loss_k)/∂z, e.g. gradScale =
 * 0.8^k / accumulated micro-batches for the weighted sum over TTT positions.
 *
 * SpecForge's classic scripts are [C], its current runtime (`specforge train`) [H].
 */
import * as K from "../../kernels/loss.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { shapeString, type Tensor } from "../tensor.ts";
import { expectDtype, expectSameShape, expectShape } from "./check.ts";
import { argmaxCpu } from "./reduce.ts";
import { logSumExpCpu, rowsWorkgroups } from "./softmax.ts";
import { rowKernelFor, type RowKernelOptions } from "./variant.ts";
import { expectDisjoint, rowsAndCols } from "./check.ts";

/** Throws unless `t` holds one value per row (shape = the logits' leading dims, or [rows]). */
function expectPerRow(op: string, name: string, t: Tensor, logits: Tensor, rows: number): void {
  const lead = logits.shape.slice(0, -1);
  const ok = t.shape.length === lead.length && t.shape.every((d, i) => d === lead[i]);
  if (!ok && !(t.shape.length === 1 && t.shape[0] === rows)) {
    throw new ShapeError(
      `${op}: ${name} (${t.label}) has shape ${shapeString(t.shape)}, expected ${shapeString(lead)} ` +
        `(one value per row of logits ${shapeString(logits.shape)})`,
    );
  }
}

/** Tensors of {@link softCrossEntropy}. */
export interface SoftCrossEntropyTensors {
  /** Draft logits z, f32 [..., V]. */
  logits: Tensor;
  /** Target probabilities p, f32 [..., V] (rows normally sum to 1; Σp enters the gradient as written). */
  target: Tensor;
  /** f32 [...] (one per row): rows with 0 get no loss and a zero gradient. */
  mask: Tensor;
  /** Output, f32 [...]: each row's share of loss_k (0 on masked rows). */
  rowLoss: Tensor;
  /** Output, f32 [..., V]: the gradient; may be `logits` itself (in place, as SpecForge does). */
  grad: Tensor;
}

/** Scalars of {@link softCrossEntropy}, and its kernel family (see {@link RowKernelOptions}). */
export interface SoftCrossEntropyOptions extends RowKernelOptions {
  /** Divides every row's loss: B·T in SpecForge (all rows, including padding). */
  denominator: number;
  /** Multiplies the gradient (not rowLoss), e.g. 0.8^k / accumulation steps. Default 1. */
  gradScale?: number;
}

/**
 * Records the fused soft cross-entropy: rowLoss and grad (formulas in the module doc), one workgroup or (CPU
 * adapters, see `RowKernel` in ./variant.ts) one invocation per row, without materialising probabilities.
 * When `grad` is `logits` the gradient overwrites the logits: run {@link argmaxAgreement} on them first.
 */
export async function softCrossEntropy(
  p: Program,
  t: SoftCrossEntropyTensors,
  options: SoftCrossEntropyOptions,
): Promise<void> {
  const op = "softCrossEntropy";
  const { logits, target, mask, rowLoss, grad } = t;
  for (const [name, x] of Object.entries(t)) expectDtype(op, name, x, "f32");
  expectSameShape(op, "logits", logits, "target", target);
  expectSameShape(op, "logits", logits, "grad", grad);
  const [rows, cols] = rowsAndCols(op, "logits", logits);
  expectPerRow(op, "mask", mask, logits, rows);
  expectPerRow(op, "rowLoss", rowLoss, logits, rows);
  const { denominator, gradScale = 1, kernel } = options;
  if (!(denominator > 0 && Number.isFinite(denominator)) || !Number.isFinite(gradScale)) {
    throw new RangeError(
      `${op}: denominator must be positive and gradScale finite (${denominator}, ${gradScale})`,
    );
  }
  // In place when grad is exactly the logits; any other overlap between an output and a tensor is refused.
  const inPlace = grad.buffer === logits.buffer && grad.byteOffset === logits.byteOffset;
  for (const [name, x] of [["logits", logits], ["target", target], ["mask", mask], ["grad", grad]] as const) {
    expectDisjoint(op, "rowLoss", rowLoss, name, x);
  }
  if (!inPlace) expectDisjoint(op, "grad", grad, "logits", logits);
  expectDisjoint(op, "grad", grad, "target", target);
  expectDisjoint(op, "grad", grad, "mask", mask);
  const name = inPlace ? "loss.soft_cross_entropy_in_place" : "loss.soft_cross_entropy";
  const rowKernel = rowKernelFor(p.gpu, op, kernel);
  const vec4 = cols % 4 === 0;
  await p.add(
    rowKernel === "rows"
      ? {
        name: `${name}_rows${vec4 ? ".vec4" : ""}`,
        code: K.softCrossEntropyRows(inPlace, vec4),
        entryPoint: "main",
      }
      : { name, code: inPlace ? K.softCrossEntropyInPlace : K.softCrossEntropy, entryPoint: "main" },
    [
      params(["u32", rows], ["u32", cols], ["f32", denominator], ["f32", gradScale / denominator]),
      logits,
      target,
      mask,
      rowLoss,
      inPlace ? null : grad,
    ],
    rowKernel === "rows" ? rowsWorkgroups(rows) : rows,
  );
}

/** Tensors of {@link argmaxAgreement}: give exactly one of `targetIds` and `targetProbs`. */
export interface ArgmaxAgreementTensors {
  /** Draft logits, f32 [..., V]. */
  logits: Tensor;
  /** Target token per row, i32 [...] (draft-vocab index; −1 for a target outside the draft vocab). */
  targetIds?: Tensor;
  /** Target probabilities, f32 [..., V]: the target is their argmax (lowest index on ties). */
  targetProbs?: Tensor;
  /** f32 [...]: rows with mask ≠ 0 are counted in the total (SpecForge's loss_mask). */
  mask: Tensor;
  /**
   * f32 [...]: only rows with correctMask ≠ 0 can count as correct (SpecForge [C]'s pos_mask, which also drops
   * rows whose target argmax lies outside the draft vocab). Default: `mask`.
   */
  correctMask?: Tensor;
  /** Output f32 [2]: (correct, total). */
  counts: Tensor;
  /** Scratch f32 [rows, 2] (per-row correct, counted); a program-owned scratch (`p.scratch`) when absent. */
  perRow?: Tensor;
}

/**
 * Records the acc_k metric's numerator and denominator (SpecForge's `acces`):
 * counts = (Σ_r [correctMask_r ≠ 0]·[argmax z_r = target_r], Σ_r [mask_r ≠ 0]), added to counts when
 * `accumulate` (to sum over TTT positions, micro-batches and logging intervals on the GPU; acc = counts[0] /
 * max(counts[1], 1e-6) on the host). Argmax ties go to the lowest index. Two dispatches: one workgroup (or,
 * with the "rows" kernel family, one invocation) per row, then one workgroup for the totals (no atomics;
 * skipped with `totals: false`, see {@link agreementTotals}).
 */
export async function argmaxAgreement(
  p: Program,
  t: ArgmaxAgreementTensors,
  options: { accumulate?: boolean; totals?: boolean } & RowKernelOptions = {},
): Promise<void> {
  const op = "argmaxAgreement";
  const { logits, targetIds, targetProbs, mask, counts } = t;
  const correctMask = t.correctMask ?? mask;
  if ((targetIds === undefined) === (targetProbs === undefined)) {
    throw new ShapeError(`${op}: give exactly one of targetIds and targetProbs`);
  }
  expectDtype(op, "logits", logits, "f32");
  const [rows, cols] = rowsAndCols(op, "logits", logits);
  if (targetIds) {
    expectDtype(op, "targetIds", targetIds, "i32");
    expectPerRow(op, "targetIds", targetIds, logits, rows);
  } else {
    expectDtype(op, "targetProbs", targetProbs!, "f32");
    expectSameShape(op, "logits", logits, "targetProbs", targetProbs!);
  }
  for (const [name, m] of [["mask", mask], ["correctMask", correctMask]] as const) {
    expectDtype(op, name, m, "f32");
    expectPerRow(op, name, m, logits, rows);
  }
  expectDtype(op, "counts", counts, "f32");
  expectShape(op, "counts", counts, [2]);
  if (t.perRow) {
    expectDtype(op, "perRow", t.perRow, "f32");
    expectShape(op, "perRow", t.perRow, [rows, 2]);
  }
  const inputs = { logits, target: (targetIds ?? targetProbs)!, mask, correctMask };
  for (const [name, x] of Object.entries(inputs)) {
    expectDisjoint(op, "counts", counts, name, x);
    if (t.perRow) expectDisjoint(op, "perRow", t.perRow, name, x);
  }
  if (t.perRow) expectDisjoint(op, "perRow", t.perRow, "counts", counts);
  const rowKernel = rowKernelFor(p.gpu, op, options.kernel); // before allocating: it may throw
  const perRow = t.perRow ?? p.scratch([rows, 2], "f32", "argmaxAgreement per-row");
  const name = targetIds ? "loss.agreement_ids" : "loss.agreement_probs";
  const vec4 = cols % 4 === 0;
  await p.add(
    rowKernel === "rows"
      ? {
        name: `${name}_rows${vec4 ? ".vec4" : ""}`,
        code: K.agreementRows(!!targetIds, vec4),
        entryPoint: "main",
      }
      : { name, code: targetIds ? K.agreementIds : K.agreementProbs, entryPoint: "main" },
    [params(["u32", rows], ["u32", cols]), logits, inputs.target, mask, correctMask, perRow],
    rowKernel === "rows" ? rowsWorkgroups(rows) : rows,
  );
  if (options.totals ?? true) await agreementTotals(p, perRow, counts, options.accumulate ?? false);
}

/**
 * Records counts = (Σ correct, Σ counted) over per-row pairs [rows, 2] (added to counts when `accumulate`):
 * the second half of {@link argmaxAgreement}, for rows whose per-row pass ran in windows
 * (`totals: false`, perRow a window of these rows each time).
 */
export async function agreementTotals(
  p: Program,
  perRow: Tensor,
  counts: Tensor,
  accumulate: boolean,
): Promise<void> {
  expectShape("agreementTotals", "perRow", perRow, [-1, 2]);
  expectShape("agreementTotals", "counts", counts, [2]);
  await p.add(
    { name: "loss.agreement_total", code: K.agreementTotal, entryPoint: "main" },
    [params(["u32", perRow.shape[0]], ["u32", accumulate ? 1 : 0]), perRow, counts],
    1,
  );
}

/** CPU reference of {@link softCrossEntropy}'s rowLoss (f64). */
export function softCrossEntropyCpu(
  logits: ArrayLike<number>,
  target: ArrayLike<number>,
  mask: ArrayLike<number>,
  cols: number,
  denominator: number,
): Float64Array {
  const lse = logSumExpCpu(logits, cols);
  const rowLoss = new Float64Array(mask.length);
  for (let r = 0; r < mask.length; r++) {
    if (mask[r] === 0) continue;
    let loss = 0;
    for (let c = 0; c < cols; c++) loss -= target[r * cols + c] * (logits[r * cols + c] - lse[r]);
    rowLoss[r] = loss / denominator;
  }
  return rowLoss;
}

/** CPU reference of {@link softCrossEntropy}'s grad = ∂(gradScale · Σ rowLoss)/∂logits (f64). */
export function softCrossEntropyBackwardCpu(
  logits: ArrayLike<number>,
  target: ArrayLike<number>,
  mask: ArrayLike<number>,
  cols: number,
  denominator: number,
  gradScale = 1,
): Float64Array {
  const lse = logSumExpCpu(logits, cols);
  const grad = new Float64Array(logits.length);
  for (let r = 0; r < mask.length; r++) {
    if (mask[r] === 0) continue;
    let total = 0;
    for (let c = 0; c < cols; c++) total += target[r * cols + c];
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      grad[i] = gradScale * (Math.exp(logits[i] - lse[r]) * total - target[i]) / denominator;
    }
  }
  return grad;
}

/**
 * CPU reference of {@link argmaxAgreement}: [correct, total]. `target` is either one id per row (Int32Array)
 * or probabilities (Float32Array/Float64Array of the logits' length).
 */
export function argmaxAgreementCpu(
  logits: ArrayLike<number>,
  target: Int32Array | ArrayLike<number>,
  mask: ArrayLike<number>,
  cols: number,
  correctMask: ArrayLike<number> = mask,
): [number, number] {
  const best = argmaxCpu(logits, cols);
  const targetIds = target instanceof Int32Array ? target : argmaxCpu(target, cols);
  let correct = 0, total = 0;
  for (let r = 0; r < mask.length; r++) {
    if (mask[r] !== 0) total++;
    if (correctMask[r] !== 0 && best[r] === targetIds[r]) correct++;
  }
  return [correct, total];
}
