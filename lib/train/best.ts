/**
 * The best draft of a run by measured acceptance length: whenever an evaluation's real speculative decoding
 * (--eval-spec-samples > 0, ./evaluate.ts) measures a τ above the best so far, the draft is exported as the
 * SGLang directory `<output-dir>/best/`, with `eaglet_best.json` (the update and τ; a name no serving loader
 * reads) beside its config. SpecForge's current trainer keeps its best checkpoint by the simulated acceptance
 * length from acc_k (`eval/simulated_acc_len`); the measured τ is what a server sees.
 */
import { join } from "node:path";
import { writeDirAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { writeDraftExportFiles } from "../models/export.ts";
import { draftExportOf } from "./run_checkpoint.ts";
import type { Run } from "./run.ts";

/** The directory of the best draft in the output directory. */
export const BEST_DIR = "best";

/** The file beside the best draft's config that says when and how well it was measured. */
export const BEST_FILE = "eaglet_best.json";

/** What {@link BEST_FILE} holds. */
export interface BestRecord {
  /** The optimizer update the draft is from. */
  update: number;
  /** The measured acceptance length (greedy chain, `eval_spec_steps` draft steps). */
  tau: number;
  /** Draft steps of the measurement. */
  numSteps: number;
}

/** The record of the best draft in `outputDir`, null when there is none (or it cannot be read). */
export async function readBest(outputDir: string): Promise<BestRecord | null> {
  try {
    const r = JSON.parse(await Deno.readTextFile(join(outputDir, BEST_DIR, BEST_FILE)));
    return typeof r?.tau === "number" && typeof r?.update === "number" ? r : null;
  } catch {
    return null;
  }
}

/** Exports the run's draft as `best/` when `tau` beats the best so far; returns whether it did. */
export async function keepIfBest(run: Run, tau: number): Promise<boolean> {
  const { settings: s, state } = run;
  if (state.best && !(tau > state.best.tau)) return false;
  const best: BestRecord = { update: state.update, tau, numSteps: s.evalSpecSteps };
  const exp = await draftExportOf(run);
  await writeDirAtomic(join(s.outputDir, BEST_DIR), async (tmp) => {
    await writeDraftExportFiles(tmp, exp, s.exportDtype);
    await writeJsonAtomic(join(tmp, BEST_FILE), best);
  }, { overwrite: true });
  state.best = best;
  run.note(
    `best draft so far (tau ${tau.toFixed(3)} at update ${state.update}): ${join(s.outputDir, BEST_DIR)}`,
  );
  return true;
}
