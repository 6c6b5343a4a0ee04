/**
 * Evaluation during training: a pass of the draft step (forward and metrics only) over the evaluation set,
 * logged as an `eval` record (SpecForge's trainer evaluates the same per-position ploss_k and acc_k), and,
 * when asked and a target is loaded, tau: the acceptance length of real greedy chain speculative decoding
 * with the live draft (lib/eval/speculative.ts), next to the simulated one from acc_k. In a data-parallel run
 * every rank evaluates the whole set (same weights, same records); rank 0 alone measures tau and keeps the
 * best draft.
 */
import { type Batch, collate } from "../data/loader.ts";
import type { TokenizedDataset } from "../data/tokenized.ts";
import type { TargetModel } from "../models/target.ts";
import { evaluateAcceptance, promptsFromSamples } from "../eval/speculative.ts";
import { metricsRecord } from "./metrics.ts";
import { keepIfBest } from "./best.ts";
import type { Run } from "./run.ts";

/** Runs an evaluation pass at the current update (nothing without evaluation data) and logs its record. */
export async function evaluate(run: Run): Promise<void> {
  const { settings: s, setup, state, programs } = run;
  state.evaluatedAt = state.update;
  if (!setup.eval) return;
  for await (const b of run.source.read(evalBatches(setup.eval, s.batchSize, s.evalBatches), "eval")) {
    await programs.run(b, "eval");
  }
  await programs.collect("eval");
  const m = programs.sums.eval.take();
  const record = metricsRecord("eval", m, state.update, state.epoch, state.elapsed());
  if (s.evalSpecSamples > 0 && run.target && run.world.rank === 0) {
    record.tau = await measureTau(run, run.target, setup.eval);
    await keepIfBest(run, record.tau);
  }
  state.lastEval = record;
  await run.log.append(record);
  run.note(
    `eval @ update ${state.update}: loss ${record.loss.toFixed(4)} ` +
      `acc ${m.acc.map((a) => a.toFixed(3)).join(" ")} simulated acc len ${
        m.simulatedAcceptLength.toFixed(3)
      }` +
      (record.tau === undefined ? "" : ` tau ${record.tau.toFixed(3)}`),
  );
}

/** The evaluation set in order, in batches of `batchSize` (the last one may be smaller), at most `max`. */
function* evalBatches(set: TokenizedDataset, batchSize: number, max: number | null): Generator<Batch> {
  for (const indices of evalBatchIndices(set.length, batchSize, max)) yield collate(set, indices);
}

/** The sample indices of each evaluation batch of a set of `n` samples (see {@link evalBatches}). */
export function* evalBatchIndices(n: number, batchSize: number, max: number | null): Generator<Int32Array> {
  for (let i = 0, k = 0; i < n && (max === null || k < max); i += batchSize, k++) {
    yield Int32Array.from({ length: Math.min(batchSize, n - i) }, (_, j) => i + j);
  }
}

/**
 * Real (greedy, chain) speculative decoding with the live draft on the first evaluation prompts: the mean
 * accepted length per target forward a server would see.
 */
async function measureTau(run: Run, target: TargetModel, evalSet: TokenizedDataset): Promise<number> {
  const s = run.settings;
  const samples = Array.from(
    { length: Math.min(s.evalSpecSamples, evalSet.length) },
    (_, i) => evalSet.sample(i),
  );
  const prompts = promptsFromSamples(samples, Math.max(1, s.maxLength - s.evalSpecNewTokens));
  const stats = await evaluateAcceptance(target, run.draft, prompts, {
    numSteps: s.evalSpecSteps,
    topk: 1,
    maxNewTokens: s.evalSpecNewTokens,
    draftToTarget: run.setup.mapping.draftToTarget,
    seed: s.seed,
  });
  return stats.tau;
}
