/**
 * The learning-rate schedule SpecForge trains with (`specforge/lr_scheduler.py`
 * `CosineAnnealingWarmupLR`): linear warmup over `W = int(warmup_ratio · total_steps)` updates, then a cosine
 * from the base rate down to 0 at `total_steps`.
 *
 * With `n` the 1-based index of an optimizer update (the rate used BY update n), `Tc = total − W`:
 *
 *   lr(n) = base · n / W                               1 ≤ n ≤ W      (the first update uses base/W, not 0)
 *   lr(n) = base · ½ · (1 + cos(π · (n − 1 − W) / Tc))  n > W          (update W+1 uses exactly base)
 *
 * With W = 0 the second line applies from n = 1. Past `total` the cosine would rise again; callers stop at
 * `total`, and {@link lrAt} refuses later steps.
 */

/** A schedule: base rate, warmup updates and total updates. */
export interface LrSchedule {
  /** The peak (base) learning rate. */
  base: number;
  /** Updates of linear warmup, W. */
  warmupSteps: number;
  /** Optimizer updates in the whole run. */
  totalSteps: number;
}

/** Warmup updates for a run: `int(warmupRatio · totalSteps)` (Python's int() truncates toward 0). */
export function warmupStepsFor(totalSteps: number, warmupRatio: number): number {
  if (!(warmupRatio >= 0 && warmupRatio <= 1)) {
    throw new RangeError(`warmup ratio must be within [0, 1], got ${warmupRatio}`);
  }
  return Math.trunc(warmupRatio * totalSteps);
}

/** The learning rate used by update `n` (1-based) of schedule `s`. */
export function lrAt(n: number, s: LrSchedule): number {
  const { base, warmupSteps: W, totalSteps: total } = s;
  if (!(Number.isInteger(total) && total >= 1)) {
    throw new RangeError(`total steps must be a positive integer, got ${total}`);
  }
  if (!(Number.isInteger(W) && W >= 0 && W < total)) {
    throw new RangeError(`warmup steps ${W} must be an integer in [0, ${total - 1}] (total steps ${total})`);
  }
  if (!(Number.isInteger(n) && n >= 1 && n <= total)) {
    throw new RangeError(`update ${n} is outside the schedule's updates 1..${total}`);
  }
  if (n <= W) return base * n / W;
  const tc = total - W;
  return base * 0.5 * (1 + Math.cos(Math.PI * (n - 1 - W) / tc));
}
