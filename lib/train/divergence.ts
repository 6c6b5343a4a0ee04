/**
 * The divergence guard: a non-finite loss or gradient norm stops the run with {@link TrainingDivergedError}
 * before anything is saved, so the last checkpoint on disk is the last good one. Checked at every log
 * interval and before every save.
 */
import type { Run } from "./run.ts";

/** The loss or the gradient norm became NaN or infinite; the message names the update. */
export class TrainingDivergedError extends Error {
  /** Error name shown in stack traces and messages. */
  override name = "TrainingDivergedError";
}

/**
 * Collects the training metrics and throws {@link TrainingDivergedError} when the loss since the last record,
 * or the last gradient norm, is not finite; `when` says where the check ran.
 */
export async function checkFinite(run: Run, when: string): Promise<void> {
  const { state } = run;
  await run.programs.collect("train");
  const norm = state.update > 0 ? await run.optimizer.lastGradNorm() : 0;
  const bad = !run.programs.sums.train.finite()
    ? "the loss is NaN or infinite"
    : !Number.isFinite(norm)
    ? `the gradient norm is ${norm}`
    : null;
  if (!bad) return;
  throw new TrainingDivergedError(
    `${bad} by update ${state.update} (${when}); stopping. ` +
      (state.lastCheckpoint
        ? `The last good checkpoint is ${state.lastCheckpoint}.`
        : "No checkpoint was written."),
  );
}
