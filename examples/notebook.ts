/**
 * Eaglet from a notebook or a script of your own: import the public API (mod.ts) by URL, make a little
 * self-distilled data with tinystories-656K, train an EAGLE-3 draft for a few updates, export it for SGLang and
 * measure its acceptance length by speculative decoding. About a minute on 2 CPU cores with lavapipe.
 *
 *   deno run -A examples/notebook.ts [target dir or hub id] [output dir]
 *
 * From anywhere else (a script in another directory, a Jupyter notebook with the Deno kernel: see
 * examples/eaglet.ipynb), import a checkout served by `deno task serve`, or a published copy:
 *
 *   import * as eaglet from "http://127.0.0.1:8000/mod.ts";
 *   import * as eaglet from "https://raw.githubusercontent.com/OWNER/eaglet/COMMIT/mod.ts";
 *
 * No import map is needed: lib/npm.ts names the npm packages with their versions, and Deno fetches them.
 */

// mod.ts by URL: here a file:// URL built from this file's own URL, which works offline.
const MOD_URL = new URL("../mod.ts", import.meta.url).href;
const eaglet: typeof import("../mod.ts") = await import(MOD_URL);

if (Deno.args.some((a) => a === "--help" || a === "-h")) {
  console.log(
    "usage: deno run -A examples/notebook.ts [target] [output dir]\n\n" +
      "Makes self-distilled data with the target, trains an EAGLE-3 draft for a few updates, exports it for\n" +
      "SGLang and measures its acceptance length, through mod.ts imported by URL.\n\n" +
      "  target      HF model dir or hub id (default: ../shared/models/tinystories-656K)\n" +
      "  output dir  where the draft and its report go (default: out/notebook)",
  );
  Deno.exit(0);
}
const flag = Deno.args.find((a) => a.startsWith("-"));
if (flag !== undefined) {
  // Only positionals: a flag would otherwise be taken for the target's path.
  console.error(`notebook: unknown option '${flag}' (see --help)`);
  Deno.exit(1);
}
const [target = "../shared/models/tinystories-656K", outDir = "out/notebook"] = Deno.args;
// Hub downloads honour HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and EAGLET_CACHE, as the tasks do.
const hub = eaglet.hubOptionsFromEnv(Deno.env.toObject());
const targetDir = await eaglet.resolveModelPath(target, hub);
const gpu = await eaglet.Gpu.create();
console.log(`WebGPU: ${gpu.describe()}`);

// 1. Data the target wrote itself: 24 training and 4 held-out samples (16-token opening + 32 greedy tokens).
const model = await eaglet.TargetModel.load(gpu, targetDir);
const samples = await eaglet.selfDistilledSamples(model, { count: 28, continuationTokens: 32, batch: 14 });
model.destroy();
await Deno.mkdir(`${outDir}/data`, { recursive: true });
await eaglet.writeJsonl(`${outDir}/data/train.jsonl`, samples.slice(0, 24));
await eaglet.writeJsonl(`${outDir}/data/eval.jsonl`, samples.slice(24));

// 2. A few updates. The settings are train-online's flags in camelCase (SpecForge's names: --max-num-steps is
//    maxNumSteps), checked as the CLI checks them; every setting not given keeps its default
//    (eaglet.trainUsage() lists them).
const settings = eaglet.trainSettings({
  targetModelPath: targetDir,
  outputDir: `${outDir}/train`,
  cacheDir: `${outDir}/cache`,
  trainDataPath: `${outDir}/data/train.jsonl`,
  evalDataPath: `${outDir}/data/eval.jsonl`,
  maxLength: 48,
  batchSize: 4,
  maxNumSteps: 12,
  learningRate: 5e-3,
  tttLength: 3,
  draftVocabSize: 512,
  logInterval: 4,
});
const run = await eaglet.trainOnline(gpu, { settings, hub });
console.log(`trained ${run.updates} updates; checkpoint (an SGLang directory): ${run.checkpoint}`);

// 3. Export (bf16) and check the SGLang directory.
await eaglet.exportCheckpoint(run.checkpoint!, `${outDir}/sglang-draft`, { dtype: "bf16", overwrite: true });
const checked = await eaglet.checkDraftExport(`${outDir}/sglang-draft`);
console.log(`exported ${checked.names.length} tensors (${checked.dtype}) to ${outDir}/sglang-draft`);

// 4. Acceptance length of the exported draft on the held-out openings.
const draft = await eaglet.loadDraftDirectory(gpu, `${outDir}/sglang-draft`);
const evalTarget = await eaglet.TargetModel.load(gpu, targetDir, {
  auxLayers: draft.config.auxLayerIds ?? undefined,
});
const prompts = eaglet.promptsFromSamples(
  samples.slice(24).map((s) => ({ inputIds: s.input_ids, lossMask: s.loss_mask })),
  16,
);
const stats = await eaglet.evaluateAcceptance(evalTarget, draft.draft, prompts, {
  numSteps: 3,
  topk: 1,
  maxNewTokens: 24,
  draftToTarget: draft.draftToTarget,
});
console.log(
  `acceptance length ${stats.tau.toFixed(2)} over ${stats.rounds} rounds (a few steps of training)`,
);
draft.draft.destroy();
evalTarget.destroy();
gpu.destroy();
