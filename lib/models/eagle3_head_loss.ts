/**
 * The head of one TTT position and everything that reads its logits: final norm, lm_head, the teacher p^k,
 * the loss (KL, or an LK loss built on it), the metrics, and the head's backward (SpecForge
 * `specforge/core/eagle3.py` `OnlineEagle3Model.forward` computes them over all B·T rows at once).
 *
 * The teacher p^k, the KL loss and gradient and the agreement are one kernel over a window's logits
 * (lib/ops/eagle3_loss.ts), which makes p^k from the teacher logits as it reads it, so p^k is never stored.
 * The rows run in windows of `headRows` rows (one window when it covers B·T), so that the [rows, Vd] logits
 * and the LK loss's KL gradient exist for one window at a time: the head's memory stops growing with
 * B·T ([scale] long samples). Every per-row quantity is the same as over the whole batch; what sums over rows
 * (the agreement counts, the LK acceptance sums, the loss) is summed once over the whole batch after the
 * windows. The LK gradient needs the position's acceptance over every row (its λ and mean), so with several
 * windows an LK training step computes the logits twice: a first pass for the acceptance, a second for the
 * loss and the gradient. lm_head's weight gradient is the sum of the windows' (accumulated).
 *
 * The teacher logits [B·T, Vd] are an input of the step, or (a `TeacherSource`, ./teacher_source.ts: the
 * target's final hidden states and its lm_head rows of the draft vocabulary, or stored top-k rows) made for
 * each window as it is needed, its rows and the K rows past it, so that they too exist for one window at a
 * time; they are then made once per window and TTT position (K times the work of making them once, twice
 * that with an LK loss over several windows).
 */
import type { Tensor } from "../tensor.ts";
import { agreementTotals, argmaxAgreement } from "../ops/loss.ts";
import { eagle3Loss } from "../ops/eagle3_loss.ts";
import { lkGradient, lkReduce, lkRows, type LkTensors } from "../ops/lk_loss.ts";
import { metricsAdd } from "../ops/eagle3_teacher.ts";
import { linearBackward } from "../ops/matmul.ts";
import type { Eagle3Step } from "./eagle3.ts";
import {
  eagle3FinalNorm,
  eagle3FinalNormBackward,
  type Eagle3HeadActivations,
  eagle3LmHead,
} from "./eagle3_layer.ts";

/** Head windows start at multiples of this many rows, so that every view meets the 256-byte offset alignment. */
export const HEAD_WINDOW_ALIGN = 64;

/** The [row0, rows] windows of `total` rows at most `headRows` (a multiple of {@link HEAD_WINDOW_ALIGN}) each. */
export function headWindows(total: number, headRows: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let row0 = 0; row0 < total; row0 += headRows) out.push([row0, Math.min(headRows, total - row0)]);
  return out;
}

/** The backward's tensors of the head: ∂/∂y out, and the scratch of the final norm's backward. */
export interface HeadGrads {
  /** Out: ∂/∂y^k of the head's share [B·T, H]. */
  dY: Tensor;
  /** Scratch: ∂/∂RMSNorm_final(y) [B·T, H]. */
  dNormed: Tensor;
  /** Scratch of the final norm's backward. */
  normScratch: Tensor;
}

/** One window's views of the step's tensors. */
interface Window {
  row0: number;
  rows: number;
  /** The head's input rows (normed y, or y) and, training, their gradient rows. */
  x: Tensor;
  dX: Tensor | null;
  logits: Tensor;
  /** The target's draft-vocabulary logits from row0 on, as far as the window's rows are taught from. */
  teacherLogits: Tensor;
  klGrad: Tensor | null;
  rowLoss: Tensor;
  perRow: Tensor;
  targetIds: Tensor;
  lossMask: Tensor;
  posMask: Tensor;
  /** The LK tensors of the window (null when the step does not measure the acceptance). */
  lk: LkTensors | null;
}

/** What every window of one position shares. */
interface Position {
  step: Eagle3Step;
  k: number;
  /** γ^k / accumulationSteps, the scale of ∂loss/∂z. */
  scale: number;
  /** Whether the LK loss's gradient is recorded (training with an LK loss). */
  lkTrain: boolean;
}

/**
 * Records the head, loss, metrics and (with `grads`) the head's backward of TTT position k from the layer's
 * output y [B·T, H]; ∂loss/∂z is scaled by `scale` = γ^k / accumulationSteps.
 */
export async function eagle3HeadLoss(
  step: Eagle3Step,
  k: number,
  y: Tensor,
  head: Eagle3HeadActivations,
  grads: HeadGrads | null,
  scale: number,
): Promise<void> {
  const p = step.program, draft = step.draft, act = step.activations, headNorm = draft.config.headNorm;
  const N = step.shape.batch * step.shape.seqLen;
  if (headNorm) await eagle3FinalNorm(p, draft, y, head);
  const x = headNorm ? head.normed : y, dX = grads && (headNorm ? grads.dNormed : grads.dY);
  const windows = headWindows(N, head.logits.shape[0]).map(([row0, rows]) =>
    windowOf(step, k, { row0, rows }, x, dX, head.logits)
  );
  const pos: Position = { step, k, scale, lkTrain: step.shape.lk != null && grads !== null };
  if (windows.length === 1 || !pos.lkTrain) {
    // One pass: the whole position in one window, or a loss whose gradient needs no sum over the rows.
    for (const w of windows) {
      await produceTeacher(step, w);
      await eagle3LmHead(p, draft, w.x, w.logits);
      if (w.lk) await lkRows(p, w.lk, { seqLen: step.shape.seqLen, position: k, row0: w.row0 });
      await lossAndAgreement(pos, w);
      if (windows.length === 1) await measureTotals(pos);
      await backward(pos, w);
    }
    if (windows.length > 1) await measureTotals(pos);
  } else {
    // The LK gradient reads the acceptance over every row: measure all windows, then the loss and gradient.
    for (const w of windows) {
      await produceTeacher(step, w);
      await eagle3LmHead(p, draft, w.x, w.logits);
      await measureWindow(pos, w);
    }
    await measureTotals(pos);
    for (const w of windows) {
      await produceTeacher(step, w);
      await eagle3LmHead(p, draft, w.x, w.logits);
      await lossAndAgreement(pos, w);
      await backward(pos, w);
    }
  }
  if (grads && headNorm) {
    await eagle3FinalNormBackward(p, draft, y, head, grads.dNormed, grads.dY, grads.normScratch);
  }
  await metricsAdd(p, act.rowLoss, act.accCounts, act.metrics, {
    position: k,
    tokens: N,
    acceptance: act.acceptance?.stats,
  });
}

/**
 * With a teacher source (lib/models/eagle3.ts `TeacherSource`), window w's teacher logits: its rows and the K
 * rows past it, into the step's one window of teacher logits.
 */
async function produceTeacher(step: Eagle3Step, w: Window): Promise<void> {
  await step.teacherSource?.record(step.program, w.row0, w.teacherLogits);
}

/**
 * The per-row halves of the metrics over window w, the agreement and the LK acceptance, where the logits are
 * measured before the loss (an LK gradient over several windows).
 */
async function measureWindow({ step, k }: Position, w: Window): Promise<void> {
  const p = step.program, act = step.activations;
  await argmaxAgreement(p, {
    logits: w.logits,
    targetIds: w.targetIds,
    mask: w.lossMask,
    counts: act.accCounts,
    perRow: w.perRow,
  }, { totals: false });
  if (w.lk) await lkRows(p, w.lk, { seqLen: step.shape.seqLen, position: k, row0: w.row0 });
}

/** The metrics' sums over every row of the position (after {@link measureWindow} over all windows). */
async function measureTotals({ step, k }: Position): Promise<void> {
  const p = step.program, act = step.activations;
  await agreementTotals(p, act.accPerRow, act.accCounts, false);
  if (act.acceptance) await lkReduce(p, act.acceptance.rows, act.teacher[k].posMask, act.acceptance.stats);
}

/**
 * Window w's loss rows, ∂KL/∂z (over its logits, or into the KL gradient an LK loss mixes in) and agreement
 * rows, in one kernel that makes the teacher p^k as it reads it (lib/ops/eagle3_loss.ts).
 */
async function lossAndAgreement({ step, k, scale }: Position, w: Window): Promise<void> {
  const { seqLen, batch } = step.shape;
  await eagle3Loss(step.program, {
    logits: w.logits,
    teacherLogits: w.teacherLogits,
    posMask: w.posMask,
    lossMask: w.lossMask,
    targetIds: w.targetIds,
    rowLoss: w.rowLoss,
    perRow: w.perRow,
    grad: w.klGrad ?? undefined,
  }, { seqLen, position: k, row0: w.row0, denominator: batch * seqLen, gradScale: scale });
}

/** Window w's LK gradient (an LK loss in training) and lm_head's backward. */
async function backward({ step, k, scale, lkTrain }: Position, w: Window): Promise<void> {
  const p = step.program, draft = step.draft, { seqLen, lk } = step.shape;
  const klGrad = w.klGrad ?? w.logits;
  if (lkTrain && w.lk) await lkGradient(p, w.lk, klGrad, lk!, { seqLen, position: k, row0: w.row0, scale });
  if (!w.dX) return;
  const acc = { accumulateDw: true };
  await linearBackward(
    p,
    w.logits,
    w.x,
    draft.params["lm_head.weight"],
    w.dX,
    draft.grads["lm_head.weight"],
    acc,
  );
}

/**
 * The teacher rows window w reads: from its first row to K rows past its last (the farthest any TTT position
 * looks ahead), or to the batch's end.
 */
function teacherWindow(
  step: Eagle3Step,
  w: { row0: number; rows: number },
): { logits: Tensor; maxSum: Tensor } {
  const N = step.shape.batch * step.shape.seqLen, Vd = step.draft.config.draftVocabSize;
  const rows = Math.min(w.rows + step.shape.tttLength, N - w.row0);
  const whole = w.row0 === 0 && rows === N;
  // With a teacher source, the step's teacher logits are one window's, filled by produceTeacher.
  const held = step.teacherLogits.shape[0];
  const logits = step.teacherSource
    ? (rows === held ? step.teacherLogits : step.teacherLogits.view(0, [rows, Vd]))
    : (whole ? step.teacherLogits : step.teacherLogits.view(w.row0 * Vd, [rows, Vd]));
  return { logits, maxSum: whole ? step.teacherMaxSum : step.teacherMaxSum.view(w.row0 * 2, [rows, 2]) };
}

/** Window w's views of the step's tensors (the tensors themselves when w is the whole batch). */
function windowOf(
  step: Eagle3Step,
  k: number,
  w: { row0: number; rows: number },
  x: Tensor,
  dX: Tensor | null,
  logits: Tensor,
): Window {
  const act = step.activations,
    teacher = act.teacher[k],
    H = x.shape[1],
    Vd = step.draft.config.draftVocabSize;
  const whole = w.row0 === 0 && w.rows === step.shape.batch * step.shape.seqLen;
  const rows = (t: Tensor, width = 1) =>
    whole ? t : t.view(w.row0 * width, width === 1 ? [w.rows] : [w.rows, width]);
  const head = (t: Tensor) => t.shape[0] === w.rows ? t : t.view(0, [w.rows, Vd]);
  const acc = act.acceptance, posMask = rows(teacher.posMask), logitsW = head(logits);
  const tw = teacherWindow(step, w);
  return {
    ...w,
    x: rows(x, H),
    dX: dX && rows(dX, H),
    logits: logitsW,
    teacherLogits: tw.logits,
    klGrad: act.klGrad && head(act.klGrad),
    rowLoss: rows(act.rowLoss),
    perRow: rows(act.accPerRow, 2),
    targetIds: rows(teacher.targetIds),
    lossMask: rows(teacher.lossMask),
    posMask,
    lk: acc && {
      logits: logitsW,
      teacherLogits: tw.logits,
      teacherMaxSum: tw.maxSum,
      mask: posMask,
      alphaS: rows(acc.rows, 2),
      stats: acc.stats,
    },
  };
}
