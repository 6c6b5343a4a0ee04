/**
 * Builds the self-distilled data of the tinystories learning check: 400 training and 50 held-out samples that
 * tinystories-656K wrote itself (a 16-token sampled opening, then 112 greedy tokens, loss on those 112), as
 * pre-tokenized jsonl that `deno task train-online` reads as it is.
 *
 *   deno run -A examples/tinystories_selfdistill.ts [target dir] [output dir]
 *
 * Defaults: ../shared/models/tinystories-656K and cache/tinystories-selfdistill (the paths
 * configs/tinystories-656K-eagle3.yaml uses). About 9 minutes on a 2-core machine with lavapipe.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { TargetModel } from "../lib/models/target.ts";
import { selfDistilledSamples, writeJsonl } from "../lib/train/selfdistill.ts";

const [modelDir = "../shared/models/tinystories-656K", outDir = "cache/tinystories-selfdistill"] = Deno.args;
const gpu = await Gpu.create();
const model = await TargetModel.load(gpu, modelDir);
const t0 = performance.now();
const samples = await selfDistilledSamples(model, {
  count: 450,
  seed: 0,
  batch: 50,
  onProgress: (n) => console.log(`${n} samples, ${((performance.now() - t0) / 1000).toFixed(0)} s`),
});
await Deno.mkdir(outDir, { recursive: true });
await writeJsonl(`${outDir}/train.jsonl`, samples.slice(0, 400));
await writeJsonl(`${outDir}/eval.jsonl`, samples.slice(400));
console.log(`wrote ${outDir}/train.jsonl (400 samples) and ${outDir}/eval.jsonl (50 samples)`);
model.destroy();
gpu.destroy();
