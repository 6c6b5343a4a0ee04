/**
 * Builds self-distilled data with tinystories-656K: samples the target wrote itself (a 16-token sampled
 * opening, then greedy tokens, loss on the greedy part), as pre-tokenized jsonl that `deno task train-online`
 * reads as it is, plus the held-out openings alone as prompts for `deno task eval`.
 *
 *   deno run -A examples/tinystories_selfdistill.ts [target] [output dir] [train] [eval] [continuation]
 *
 * Defaults: ../shared/models/tinystories-656K, cache/tinystories-selfdistill, 400 training and 50 held-out
 * samples of 112 greedy tokens (the data of the [train] issue's learning check, the paths
 * configs/tinystories-656K-eagle3.yaml uses; about 9 minutes on a 2-core machine with lavapipe). Writes
 * train.jsonl, eval.jsonl and eval_prompts.jsonl.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { TargetModel } from "../lib/models/target.ts";
import { selfDistilledSamples, writeJsonl } from "../lib/train/selfdistill.ts";

const [
  target = "../shared/models/tinystories-656K",
  outDir = "cache/tinystories-selfdistill",
  trainArg = "400",
  evalArg = "50",
  contArg = "112",
] = Deno.args;
const [train, held, continuation] = [trainArg, evalArg, contArg].map((a) => {
  const n = Number(a);
  if (!Number.isInteger(n) || n < 1) throw new Error(`expected a positive integer, got "${a}"`);
  return n;
});
const openingTokens = 16;
const modelDir = await resolveModelPath(target, hubOptionsFromEnv(Deno.env.toObject()));
const gpu = await Gpu.create();
const model = await TargetModel.load(gpu, modelDir);
const t0 = performance.now();
const samples = await selfDistilledSamples(model, {
  count: train + held,
  openingTokens,
  continuationTokens: continuation,
  seed: 0,
  batch: 50,
  onProgress: (n) => console.log(`${n} samples, ${((performance.now() - t0) / 1000).toFixed(0)} s`),
});
await Deno.mkdir(outDir, { recursive: true });
await writeJsonl(`${outDir}/train.jsonl`, samples.slice(0, train));
await writeJsonl(`${outDir}/eval.jsonl`, samples.slice(train));
await writeJsonl(
  `${outDir}/eval_prompts.jsonl`,
  samples.slice(train).map((s) => ({ id: s.id, input_ids: s.input_ids.slice(0, openingTokens) })),
);
console.log(
  `wrote ${outDir}/train.jsonl (${train} samples), ${outDir}/eval.jsonl (${held} samples) and ` +
    `${outDir}/eval_prompts.jsonl (their openings)`,
);
model.destroy();
gpu.destroy();
