/**
 * The DFlash objective over the frozen target head's logits (kernels/dflash_loss.ts), with plain-TS CPU
 * references. SpecForge `specforge/algorithms/common/dflash_family_model.py` (`OnlineDFlashModel.forward`,
 * `_dpace_weight`): per row (block n, slot k) a label y and a weight w; CE = −log softmax(z)_y; the loss
 * numerator Σ ω·CE with ω = w·d_k for `dflash` (d_k = exp(−max(k−1, 0)/γ), or 1) or the D-PACE weights
 * (detached) for the `dpace*` types; the denominator Σ ω (`dflash`) or the number of samples (D-PACE).
 */
import * as K from "../../kernels/dflash_loss.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/** The objectives SpecForge's `training.loss_type` names. */
export const DFLASH_LOSS_TYPES = [
  "dflash",
  "dpace",
  "dpace-cumulative-confidence-only",
  "dpace-continuation-value-only",
] as const;

/** One of {@link DFLASH_LOSS_TYPES}. */
export type DflashLossType = typeof DFLASH_LOSS_TYPES[number];

/** Whether `type` is one of the D-PACE family (weights from the draft's own confidence). */
export function isDpace(type: DflashLossType): boolean {
  return type !== "dflash";
}

/** Records stats [rows, 3] = (lse, ce, [argmax = y]) of logits [rows, V] against labels [rows] (i32). */
export async function dflashRowStats(
  p: Program,
  logits: Tensor,
  labels: Tensor,
  stats: Tensor,
): Promise<void> {
  const [rows, vocab] = logits.shape;
  expectDtype("dflashRowStats", "labels", labels, "i32");
  expectShape("dflashRowStats", "labels", labels, [rows]);
  expectShape("dflashRowStats", "stats", stats, [rows, 3]);
  await p.add(
    { name: "dflash_loss.row_stats", code: K.rowStats, entryPoint: "main" },
    [params(["u32", rows], ["u32", vocab], ["u32", 0], ["u32", 0]), logits, labels, stats],
    Math.ceil(rows / K.DFLASH_LOSS_WG),
  );
}

/** Records the detached D-PACE weights ω [rows] from the row stats and w [rows], blocks of `blockSize` rows. */
export async function dpaceWeights(
  p: Program,
  t: { stats: Tensor; w: Tensor; omega: Tensor },
  opts: { type: DflashLossType; blockSize: number; alpha: number },
): Promise<void> {
  const rows = t.w.shape[0], blocks = rows / opts.blockSize;
  if (!isDpace(opts.type)) throw new RangeError(`dpaceWeights: ${opts.type} is not a D-PACE loss`);
  const kind = DFLASH_LOSS_TYPES.indexOf(opts.type) - 1;
  expectShape("dpaceWeights", "omega", t.omega, [rows]);
  await p.add(
    { name: "dflash_loss.dpace_weights", code: K.dpaceWeights, entryPoint: "main" },
    [
      params(["u32", blocks], ["u32", opts.blockSize], ["f32", opts.alpha], ["u32", kind]),
      t.stats,
      t.w,
      t.omega,
    ],
    Math.ceil(blocks / K.DFLASH_LOSS_WG),
  );
}

/**
 * Records logits ← s·ω_r·(softmax(z_r) − onehot(y_r)), the gradient of s·Σ ω·CE, in place; s is `scale[0]`,
 * a one-element f32 tensor read when the program runs.
 */
export async function dflashLossGradient(
  p: Program,
  t: { logits: Tensor; labels: Tensor; stats: Tensor; omega: Tensor; scale: Tensor },
): Promise<void> {
  const [rows, vocab] = t.logits.shape;
  expectShape("dflashLossGradient", "scale", t.scale, [1]);
  await p.add(
    { name: "dflash_loss.gradient", code: K.gradient, entryPoint: "main" },
    [
      params(["u32", rows], ["u32", vocab], ["u32", 0], ["u32", 0]),
      t.logits,
      t.labels,
      t.stats,
      t.omega,
      t.scale,
    ],
    Math.ceil((rows * vocab) / K.DFLASH_LOSS_WG),
  );
}

/** Columns of {@link dflashSlotSums}' sums per block slot: Σ w·ce, Σ w, Σ correct·[w > 0.5], Σ ω·ce. */
export const SLOT_SUM_COLS = 4;

/** Records sums [B, 4] += the per-slot sums of the row stats (see kernels/dflash_loss.ts `slotSums`). */
export async function dflashSlotSums(
  p: Program,
  t: { stats: Tensor; w: Tensor; omega: Tensor; sums: Tensor },
  blockSize: number,
): Promise<void> {
  expectShape("dflashSlotSums", "sums", t.sums, [blockSize, SLOT_SUM_COLS]);
  await p.add(
    { name: "dflash_loss.slot_sums", code: K.slotSums, entryPoint: "main" },
    [
      params(["u32", t.w.shape[0]], ["u32", blockSize], ["u32", 0], ["u32", 0]),
      t.stats,
      t.w,
      t.omega,
      t.sums,
    ],
    Math.ceil(blockSize / K.DFLASH_LOSS_WG),
  );
}

// ---------------------------------------------------------------------------------------------------------
// CPU references (f64).

/** CPU reference of {@link dflashRowStats}: lse, ce, correct per row. */
export function dflashRowStatsCpu(
  logits: ArrayLike<number>,
  labels: ArrayLike<number>,
  vocab: number,
): { lse: Float64Array; ce: Float64Array; correct: Float64Array } {
  const rows = labels.length;
  const lse = new Float64Array(rows), ce = new Float64Array(rows), correct = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity, best = 0;
    for (let v = 0; v < vocab; v++) if (logits[r * vocab + v] > m) [m, best] = [logits[r * vocab + v], v];
    let s = 0;
    for (let v = 0; v < vocab; v++) s += Math.exp(logits[r * vocab + v] - m);
    lse[r] = m + Math.log(s);
    ce[r] = lse[r] - logits[r * vocab + labels[r]];
    correct[r] = best === labels[r] ? 1 : 0;
  }
  return { lse, ce, correct };
}

/** CPU reference of {@link dpaceWeights} (suffix sums taken directly). */
export function dpaceWeightsCpu(
  ce: ArrayLike<number>,
  w: ArrayLike<number>,
  type: DflashLossType,
  blockSize: number,
  alpha: number,
): Float64Array {
  const omega = new Float64Array(w.length);
  for (let r0 = 0; r0 < w.length; r0 += blockSize) {
    const P = new Float64Array(blockSize);
    let prefix = 1;
    for (let k = 0; k < blockSize; k++) {
      prefix *= w[r0 + k] > 0 ? (1 - alpha) * Math.exp(-ce[r0 + k]) + alpha : 1;
      P[k] = prefix;
    }
    let suffix = 0;
    for (let k = blockSize - 1; k >= 0; k--) {
      suffix += P[k] * w[r0 + k];
      const weight = type === "dpace"
        ? suffix
        : type === "dpace-cumulative-confidence-only"
        ? P[k]
        : suffix / Math.max(P[k], 1.17549435e-38);
      omega[r0 + k] = w[r0 + k] * weight;
    }
  }
  return omega;
}
