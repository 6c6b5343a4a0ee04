/**
 * The teacher rows of one EAGLE-3 TTT position, read from the UNshifted target outputs (SpecForge
 * `specforge/core/eagle3.py` `_compute_target_p` and `OnlineEagle3Model.forward`; `specforge/utils.py`
 * `padding`), the check of a head window's teacher rows, and the per-position metric accumulation, with
 * plain-TS CPU references (p^k's among them; the GPU makes p^k inside the loss, ./eagle3_loss.ts). Formulas in
 * kernels/eagle3.ts. Rows r = b·T + t of a right-padded batch [B, T]; k is the TTT position.
 *
 * SpecForge's classic scripts are [C], its current runtime (`specforge train`) [H].
 */
import * as K from "../../kernels/eagle3.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

function checkPosition(op: string, rows: number, seq: number, k: number): void {
  if (!(seq > 0 && rows % seq === 0) || !Number.isInteger(k) || k < 0) {
    throw new ShapeError(
      `${op}: ${rows} rows are not whole sequences of ${seq}, or TTT position ${k} is not ≥ 0`,
    );
  }
}

/**
 * Checks a window of `rows` rows starting at batch row `row0` (a whole batch: row0 0, rows whole sequences)
 * whose teacher tensor holds `teacherRows` rows from row0: every row taught by a row of its sequence
 * (t + k + 1 < T) must find it in the teacher window, which either ends at a sequence's end or reaches k + 1
 * rows past the window.
 */
export function checkRowWindow(
  op: string,
  { rows, teacherRows, row0, seq, k }: {
    rows: number;
    teacherRows: number;
    row0: number;
    seq: number;
    k: number;
  },
): void {
  if (row0 === 0 && teacherRows === rows) return checkPosition(op, rows, seq, k);
  const ends = (row0 + teacherRows) % seq === 0 || teacherRows >= rows + k + 1;
  if (
    !(Number.isInteger(row0) && row0 >= 0 && seq > 0 && Number.isInteger(k) && k >= 0) ||
    teacherRows < rows || !ends
  ) {
    throw new ShapeError(
      `${op}: a window of ${rows} rows from row ${row0} (sequences of ${seq}, TTT position ${k}) needs its teacher ` +
        `rows to end a sequence or reach ${k + 1} rows past it; it has ${teacherRows}`,
    );
  }
}

/** Tensors of {@link teacherRows}; rows = B·T. */
export interface TeacherRowsTensors {
  /** Token ids x, i32 [rows] (unshifted). */
  ids: Tensor;
  /** Full-vocabulary argmax of the target logits L, i32 [rows] (unshifted). */
  argmax: Tensor;
  /** Loss mask M, f32 [rows] (0/1). */
  lossMask: Tensor;
  /** Target id → draft index, −1 outside the draft vocab, i32 [V] (see {@link targetToDraftMap}). */
  toDraft: Tensor;
  /** Out: the tokens fed at TTT position k, i32 [rows]. */
  idsK: Tensor;
  /** Out: the loss mask of TTT position k (pos_mask shifted k times), f32 [rows]. */
  posMaskK: Tensor;
  /** Out: the accuracy mask of TTT position k (loss_mask shifted k times), f32 [rows]. */
  lossMaskK: Tensor;
  /** Out: the target's argmax at TTT position k as a draft index (−1 outside the draft vocab), i32 [rows]. */
  targetK: Tensor;
}

/** Records the per-row inputs of TTT position `position` (formulas in kernels/eagle3.ts `teacherRows`). */
export async function teacherRows(
  p: Program,
  t: TeacherRowsTensors,
  { seqLen, position }: { seqLen: number; position: number },
): Promise<void> {
  const op = "teacherRows";
  for (const name of ["ids", "argmax", "toDraft", "idsK", "targetK"] as const) {
    expectDtype(op, name, t[name], "i32");
  }
  for (const name of ["lossMask", "posMaskK", "lossMaskK"] as const) expectDtype(op, name, t[name], "f32");
  const rows = t.ids.size;
  for (const name of ["ids", "argmax", "lossMask", "idsK", "posMaskK", "lossMaskK", "targetK"] as const) {
    expectShape(op, name, t[name], [rows]);
  }
  expectShape(op, "toDraft", t.toDraft, [-1]);
  checkPosition(op, rows, seqLen, position);
  await p.add(
    { name: "eagle3.teacher_rows", code: K.teacherRows, entryPoint: "main" },
    [
      params(["u32", rows], ["u32", seqLen], ["u32", t.toDraft.size], ["u32", position]),
      t.ids,
      t.argmax,
      t.lossMask,
      t.toDraft,
      t.idsK,
      t.posMaskK,
      t.lossMaskK,
      t.targetK,
    ],
    Math.ceil(rows / K.TEACHER_ROWS_WG),
  );
}

/**
 * Records metrics[position] += (tokens·Σ rowLoss, counts[0], counts[1], tokens, acceptance[0],
 * acceptance[1]) into metrics f32 [K, 6] (columns: Σ loss_k·B·T, acc correct, acc total, Σ B·T, Σ m·α, Σ m;
 * the last two stay as they are without `acceptance`, the LK stats of lib/ops/lk_loss.ts).
 */
export async function metricsAdd(
  p: Program,
  rowLoss: Tensor,
  counts: Tensor,
  metrics: Tensor,
  { position, tokens, acceptance = null }: { position: number; tokens: number; acceptance?: Tensor | null },
): Promise<void> {
  const op = "metricsAdd";
  if (acceptance) {
    expectDtype(op, "acceptance", acceptance, "f32");
    expectShape(op, "acceptance", acceptance, [4]);
  }
  for (const [name, x] of [["rowLoss", rowLoss], ["counts", counts], ["metrics", metrics]] as const) {
    expectDtype(op, name, x, "f32");
  }
  expectShape(op, "counts", counts, [2]);
  expectShape(op, "metrics", metrics, [-1, K.METRIC_COLS]);
  if (!(position >= 0 && position < metrics.shape[0])) {
    throw new ShapeError(`${op}: TTT position ${position} outside metrics [${metrics.shape}]`);
  }
  await p.add(
    { name: "eagle3.metrics_add", code: K.metricsAdd, entryPoint: "main" },
    [
      params(["u32", rowLoss.size], ["u32", position], ["f32", tokens], ["u32", acceptance ? 1 : 0]),
      rowLoss,
      counts,
      metrics,
      acceptance ?? counts,
    ],
    1,
  );
}

/**
 * The target id → draft index map of a vocabulary mapping, i32 [V]: draftToTarget[i] ↦ i, −1 elsewhere
 * (t2d as a lookup; the [H] accuracy test `argmax z + d2t[argmax z] == full argmax` becomes
 * `argmax z == map[full argmax]`, since d2t is injective).
 */
export function targetToDraftMap(
  draftToTarget: ArrayLike<number>,
  vocabSize: number,
): Int32Array<ArrayBuffer> {
  const map = new Int32Array(vocabSize).fill(-1);
  for (let i = 0; i < draftToTarget.length; i++) {
    const v = draftToTarget[i];
    if (!(v >= 0 && v < vocabSize)) {
      throw new ShapeError(`targetToDraftMap: draft ${i} maps to ${v} ∉ [0, ${vocabSize})`);
    }
    map[v] = i;
  }
  return map;
}

/**
 * CPU reference of the teacher p^k [B·T, Vd] (f64): row (b, t) = softmax over the draft vocabulary of the
 * target's draft-vocab logits at position t + k + 1 of the same sequence, or 1/Vd past the end (SpecForge's
 * TTT padding); made on the GPU inside the loss (./eagle3_loss.ts).
 */
export function teacherProbsCpu(
  logits: ArrayLike<number>,
  rows: number,
  cols: number,
  seqLen: number,
  position: number,
): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const t = r % seqLen;
    if (t + position + 1 >= seqLen) {
      out.fill(1 / cols, r * cols, (r + 1) * cols);
      continue;
    }
    const src = (r + position + 1) * cols;
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, logits[src + c]);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(logits[src + c] - m);
    for (let c = 0; c < cols; c++) out[r * cols + c] = Math.exp(logits[src + c] - m) / s;
  }
  return out;
}

/** CPU reference of {@link teacherRows}. */
export function teacherRowsCpu(
  ids: ArrayLike<number>,
  argmax: ArrayLike<number>,
  lossMask: ArrayLike<number>,
  toDraft: ArrayLike<number>,
  seqLen: number,
  position: number,
): { idsK: Int32Array; posMaskK: Float32Array; lossMaskK: Float32Array; targetK: Int32Array } {
  const rows = ids.length;
  const idsK = new Int32Array(rows), targetK = new Int32Array(rows);
  const posMaskK = new Float32Array(rows), lossMaskK = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const t = r % seqLen, j = t + position;
    const inNext = j + 1 < seqLen;
    idsK[r] = inNext ? ids[r + position + 1] : 0;
    const full = inNext ? argmax[r + position + 1] : 0;
    const m = j < seqLen ? lossMask[r + position] : 0;
    const d = full >= 0 && full < toDraft.length ? toDraft[full] : -1;
    lossMaskK[r] = m;
    targetK[r] = d;
    posMaskK[r] = d >= 0 ? m : 0;
  }
  return { idsK, posMaskK, lossMaskK, targetK };
}
