/**
 * The target bench's measurement of one checkpoint: the prefill forward (one sequence of T tokens, aux states
 * and full logits, what online training and generation's prefill run) and cached decoding (one token per
 * sequence per step, the one logits read-back per step that sampling needs included, the prefill excluded).
 */
import type { Gpu } from "../gpu/device.ts";
import { TargetModel } from "../models/target.ts";
import { Generator } from "../models/generate.ts";
import { type BenchRow, timeProgram } from "./types.ts";

/** How much {@link measureTarget} runs. */
export interface TargetBenchSizes {
  /** Prefill tokens. */
  seqLen: number;
  /** Timed prefill runs. */
  reps: number;
  /** Decoding: the prompt's tokens, the tokens generated, the batch sizes. */
  promptLen: number;
  newTokens: number;
  batches: number[];
}

/** Prefill tokens/s and decode tokens/s (per batch size) of the target in `dir`, rows labelled `label`. */
export async function measureTarget(
  gpu: Gpu,
  label: string,
  dir: string,
  s: TargetBenchSizes,
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const model = await TargetModel.load(gpu, dir, { onMessage: () => {} });
  const c = model.config;
  const dims = `H${c.hiddenSize} L${c.numLayers} V${c.vocabSize}`;
  const token = (i: number) => 3 + i % (c.vocabSize - 3);
  try {
    const f = await model.forward(1, s.seqLen, { aux: true, logits: true });
    try {
      f.run(Int32Array.from({ length: s.seqLen }, (_, i) => token(i * 7)), [s.seqLen]);
      const ms = await timeProgram(gpu, f.program, s.reps);
      rows.push({
        group: "target",
        name: `${label} prefill forward`,
        shape: `B1 T${s.seqLen} ${dims}`,
        ms,
        tokensPerSec: s.seqLen / ms * 1000,
        note: "aux states + full logits",
      });
    } finally {
      f.destroy();
    }
    const g = new Generator(model);
    try {
      for (const batch of s.batches) {
        const prompts = Array.from(
          { length: batch },
          (_, b) => Array.from({ length: s.promptLen }, (_, i) => token(b * 31 + i * 7)),
        );
        const run = async (n: number) => {
          const t0 = performance.now();
          await g.generate(prompts, { maxNewTokens: n, eosTokenIds: [] });
          return performance.now() - t0;
        };
        await run(s.newTokens); // builds and caches every program
        // The prefill and first token cost the same in both runs: the difference is newTokens − 1 steps.
        const stepMs = ((await run(s.newTokens)) - (await run(1))) / (s.newTokens - 1);
        rows.push({
          group: "target",
          name: `${label} decode (KV cache)`,
          shape: `B${batch} prompt ${s.promptLen} +${s.newTokens} ${dims}`,
          ms: stepMs,
          tokensPerSec: batch / stepMs * 1000,
          note: "ms per decode step (all sequences), one logits read-back per step included",
        });
      }
    } finally {
      g.destroy();
    }
  } finally {
    model.destroy();
  }
  return rows;
}
