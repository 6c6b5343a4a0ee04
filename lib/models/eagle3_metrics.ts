/**
 * The EAGLE-3 training metrics per TTT position k, as SpecForge logs them (`specforge/core/eagle3.py`
 * `OnlineEagle3Model.forward` returns plosses and acces; the trainer's logging and SpecForge's evaluator
 * `_simulated_acc_len` aggregate them): the unweighted loss ploss_k, the accuracy acc_k, and the simulated
 * acceptance length Σ_k Π_{j≤k} acc_j.
 *
 * The GPU accumulates, per TTT position, six sums ({@link METRIC_COLS} columns of the metrics tensor
 * [K, 6]): Σ loss_k·B·T, the correct rows, the supervised rows, Σ B·T, and, when the step measures it, Σ m·α
 * and Σ m of the expected acceptance α (SpecForge's `acceptance_rate_k`, lib/ops/lk_loss.ts). Numerators and
 * denominators are summed separately across micro-batches before dividing, as SpecForge's current trainer
 * aggregates them.
 */
import { METRIC_COLS } from "../../kernels/eagle3.ts";

export { METRIC_COLS };

/** The default loss weight of TTT position k is STEP_DECAY^k (SpecForge's fixed ploss decay 0.8). */
export const STEP_DECAY = 0.8;

/** Metrics accumulated since the last reset, per TTT position k. */
export interface Eagle3Metrics {
  /** Micro-batches accumulated. */
  microBatches: number;
  /** ploss_k = Σ loss_k·B·T / Σ B·T (unweighted, not divided by the accumulation steps). */
  ploss: number[];
  /** acc_k = correct_k / max(total_k, 1e-6). */
  acc: number[];
  /** The numerator of acc_k. */
  correct: number[];
  /** The denominator of acc_k (supervised rows of TTT position k). */
  total: number[];
  /**
   * The training objective Σ_k γ^k · ploss_k (γ the step decay, SpecForge's 0.8), before the 1/accumulationSteps scaling (what the backward
   * differentiates). Not the logged `loss`, which is the mean of ploss_k (SpecForge's progress bar).
   */
  weightedLoss: number;
  /** Simulated acceptance length Σ_k Π_{j≤k} acc_j ({@link simulatedAcceptanceLength}). */
  simulatedAcceptLength: number;
  /**
   * The expected acceptance α_k = Σ m·α / Σ m of the draft's distribution against the target's (SpecForge's
   * `acceptance_rate_k`), or null when the step did not measure it.
   */
  acceptance: number[] | null;
}

/**
 * Σ_k Π_{j≤k} acc_j: the expected accepted length of a greedy chain if position j were accepted
 * independently with probability acc_j (SpecForge's evaluator `_simulated_acc_len`).
 */
export function simulatedAcceptanceLength(acc: readonly number[]): number {
  let total = 0, prod = 1;
  for (const a of acc) {
    prod *= a;
    total += prod;
  }
  return total;
}

/**
 * Metrics of raw metric sums [K, {@link METRIC_COLS}] (columns as the module comment says); `stepDecay` weighs
 * the training objective as the step did.
 */
export function eagle3MetricsFrom(
  raw: ArrayLike<number>,
  tttLength: number,
  microBatches: number,
  stepDecay = STEP_DECAY,
): Eagle3Metrics {
  const ploss: number[] = [], acc: number[] = [], correct: number[] = [], total: number[] = [];
  let weightedLoss = 0;
  const acceptance: number[] = [];
  let measured = false;
  for (let k = 0; k < tttLength; k++) {
    const o = k * METRIC_COLS;
    const tokens = raw[o + 3];
    ploss.push(tokens > 0 ? raw[o] / tokens : 0);
    correct.push(raw[o + 1]);
    total.push(raw[o + 2]);
    acc.push(raw[o + 1] / Math.max(raw[o + 2], 1e-6));
    weightedLoss += stepDecay ** k * ploss[k];
    acceptance.push(raw[o + 4] / Math.max(raw[o + 5], 1e-8));
    measured ||= raw[o + 5] > 0;
  }
  return {
    microBatches,
    ploss,
    acc,
    correct,
    total,
    weightedLoss,
    simulatedAcceptLength: simulatedAcceptanceLength(acc),
    acceptance: measured ? acceptance : null,
  };
}
