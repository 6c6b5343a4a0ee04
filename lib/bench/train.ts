/**
 * Training speed: the optimizer update (global grad norm, clipped AdamW over every draft tensor, gradient
 * zeroing; one submission) and the whole online training step of the tinystories recipe (target forward with
 * aux capture, draft-vocab logits and full-vocab argmax → draft TTT forward/backward → optimizer update),
 * batch 4 × 128 tokens, TTT 7, draft vocabulary 2048, on a random-weight target shaped like tinystories-656K
 * (./recipe_step.ts), and the same
 * step fed offline from feature files in the default storage. Without
 * --quick, also the optimizer update of a draft shaped like Llama-3-8B's (H 4096, I 14336, Vd 32000:
 * 0.5 G parameters, about 7 GB of weights, gradients and moments).
 */
import { join } from "node:path";
import { wordLevelTokenizerJson } from "../data/tokenizer.ts";
import type { Gpu } from "../gpu/device.ts";
import type { TargetModel } from "../models/target.ts";
import { parseDraftConfig } from "../models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft } from "../models/eagle3.ts";
import type { VocabMapping } from "../data/vocab.ts";
import { DraftOptimizer } from "../train/optimizer.ts";
import type { BenchOptions, BenchRow } from "./types.ts";
import { DEFAULT_FILE_GROUP_SIZE, DEFAULT_STORAGE, prepareHiddenStates } from "../offline/prepare.ts";
import { openFeatureSet, readFeatures } from "../offline/dataset.ts";
import { FeatureFeeder } from "../offline/feeder.ts";
import { draftParameters, loadRecipeModels, RECIPE_TARGET, recipeStep } from "./recipe_step.ts";

/**
 * Bytes an update moves per parameter: the norm reads g; AdamW reads w, g, m, v and writes w, m, v; zeroing
 * writes g (9 f32 accesses).
 */
const BYTES_PER_PARAM = 36;

/** Mean ms of `reps` optimizer updates (after one warm-up), all queued then one sync. */
async function timeUpdates(gpu: Gpu, opt: DraftOptimizer, reps: number): Promise<number> {
  opt.update(1e-4);
  await gpu.sync();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) opt.update(1e-4);
  await gpu.sync();
  return (performance.now() - t0) / reps;
}

/**
 * The offline counterpart of the full step: B samples written by prepare-hidden-states in the default storage
 * (lib/offline/prepare.ts), then per step: read the B files, assemble and upload them, decode on the GPU
 * (dequantize, rebuild the teacher), the draft step and the optimizer update.
 */
async function benchOfflineStep(
  gpu: Gpu,
  dir: string,
  o: {
    draft: Eagle3Draft;
    opt: DraftOptimizer;
    target: TargetModel;
    vocab: VocabMapping;
    B: number;
    T: number;
    K: number;
    reps: number;
  },
): Promise<BenchRow[]> {
  const { B, T, K, reps } = o;
  const rows = Array.from({ length: B }, (_, b) => {
    const ids = Array.from({ length: T }, (_, i) => 3 + (i * 37 + b * 11) % 2000);
    return JSON.stringify({ id: `s${b}`, input_ids: ids, loss_mask: ids.map(() => 1) });
  });
  await Deno.writeTextFile(join(dir, "data.jsonl"), rows.join("\n") + "\n");
  // The data is pre-tokenized; the data builder still needs a tokenizer of the target's vocabulary.
  await Deno.writeTextFile(join(dir, "tokenizer.json"), wordLevelTokenizerJson(RECIPE_TARGET.vocab_size));

  const features = join(dir, "features");
  await prepareHiddenStates(gpu, {
    targetModelPath: dir,
    dataPath: join(dir, "data.jsonl"),
    outputPath: features,
    chatTemplate: "llama3",
    maxLength: T,
    storage: DEFAULT_STORAGE,
    numSamples: null,
    batchSize: B,
    shard: { index: 0, count: 1 },
    auxLayers: null,
    draftModelConfig: null,
    cacheDir: null,
    isPreformatted: false,
    fileGroupSize: DEFAULT_FILE_GROUP_SIZE,
    hub: { cacheDir: join(dir, "hub"), offline: true },
    log: () => {},
  });
  const set = await openFeatureSet(features);
  const feeder = await FeatureFeeder.create(gpu, set.manifest, B, T, o.vocab.draftToTarget, null);
  const step = await buildEagle3Step(o.draft, {
    batch: B,
    seqLen: T,
    tttLength: K,
    embedding: o.target.embed,
    vocab: o.vocab,
    inputs: feeder.inputs,
  });
  step.lossMask.write(new Float32Array(B * T).fill(1));
  const idx = Array.from({ length: B }, (_, i) => i);
  const once = async () => {
    feeder.feed(await readFeatures(set, idx));
    step.run();
    o.opt.update(1e-4);
  };
  await once();
  await gpu.sync();
  let t0 = performance.now();
  for (let i = 0; i < reps; i++) await readFeatures(set, idx);
  const readMs = (performance.now() - t0) / reps;
  const samples = await readFeatures(set, idx);
  t0 = performance.now();
  for (let i = 0; i < reps; i++) feeder.feed(samples);
  await gpu.sync();
  const feedMs = (performance.now() - t0) / reps;
  t0 = performance.now();
  for (let i = 0; i < reps; i++) await once();
  await gpu.sync();
  const fullMs = (performance.now() - t0) / reps;
  step.destroy();
  feeder.destroy();
  const s = DEFAULT_STORAGE;
  const shape = `B${B} T${T} ttt${K}, ${s.auxFormat}/${s.teacherFormat}`;
  return [
    {
      group: "train",
      name: "offline: read B feature files",
      shape,
      ms: readMs,
      tokensPerSec: B * T / readMs * 1000,
    },
    {
      group: "train",
      name: "offline: upload + GPU decode",
      shape,
      ms: feedMs,
      tokensPerSec: B * T / feedMs * 1000,
    },
    {
      group: "train",
      name: "full offline training step",
      shape,
      ms: fullMs,
      tokensPerSec: B * T / fullMs * 1000,
    },
  ];
}

/** Optimizer update ms and full training step tokens/s (see the module note). */
export async function benchTrain(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const out: BenchRow[] = [];
  const B = 4, T = opts.quick ? 64 : 128, K = 7, reps = opts.quick ? 2 : 5;
  const dir = await Deno.makeTempDir({ prefix: "eaglet-bench-train-" });
  try {
    const models = await loadRecipeModels(gpu, dir);
    const { draft, optimizer: opt, target, vocab } = models;
    const params = draft.entries().reduce((n, [, p]) => n + p.size, 0);
    const optMs = await timeUpdates(gpu, opt, reps * 4);
    out.push({
      group: "train",
      name: "optimizer update (norm, clipped AdamW, zero grads)",
      shape: `tinystories draft, ${(params / 1e6).toFixed(2)} M params`,
      ms: optMs,
      note: `${(params * BYTES_PER_PARAM / optMs / 1e6).toFixed(1)} GB/s effective`,
    });

    const online = await recipeStep(models, B, T, K);
    online.runAll();
    await gpu.sync();
    const time = async (fn: () => void) => {
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) fn();
      await gpu.sync();
      return (performance.now() - t0) / reps;
    };
    const fwdMs = await time(online.runForward);
    const stepMs = await time(() => online.step.run());
    const fullMs = await time(online.runAll);
    const shape = `B${B} T${T} ttt${K} Vd2048`;
    out.push({
      group: "train",
      name: "target forward (aux, draft logits, argmax)",
      shape,
      ms: fwdMs,
      tokensPerSec: B * T / fwdMs * 1000,
    });
    out.push({
      group: "train",
      name: "draft TTT forward + backward",
      shape,
      ms: stepMs,
      tokensPerSec: B * T / stepMs * 1000,
    });
    out.push({
      group: "train",
      name: "full online training step",
      shape,
      ms: fullMs,
      tokensPerSec: B * T / fullMs * 1000,
    });
    online.destroy();
    const half = await recipeStep(models, B, T, K, "f16");
    half.runAll();
    await gpu.sync();
    const halfMs = await time(() => half.step.run());
    out.push({
      group: "train",
      name: "draft TTT forward + backward, f16 gate and up",
      shape,
      ms: halfMs,
      tokensPerSec: B * T / halfMs * 1000,
      note: "--mlp-saved-dtype f16",
    });
    half.destroy();
    out.push(...await benchOfflineStep(gpu, dir, { draft, opt, target, vocab, B, T, K, reps }));
    models.destroy();

    if (!opts.quick) {
      const big = parseDraftConfig({
        hidden_size: 4096,
        intermediate_size: 14336,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        vocab_size: 128256,
        draft_vocab_size: 32000,
      }, "llama3-8B-shaped draft");
      const bigDraft = Eagle3Draft.create(gpu, big, { seed: 0 });
      const bigOpt = await DraftOptimizer.create(gpu, draftParameters(bigDraft), { maxGradNorm: 0.5 });
      const n = bigDraft.entries().reduce((s, [, p]) => s + p.size, 0);
      const ms = await timeUpdates(gpu, bigOpt, 1);
      out.push({
        group: "train",
        name: "optimizer update (norm, clipped AdamW, zero grads)",
        shape: `Llama-3-8B-shaped draft, ${(n / 1e6).toFixed(0)} M params`,
        ms,
        note: `${(n * BYTES_PER_PARAM / ms / 1e6).toFixed(1)} GB/s effective`,
      });
      bigOpt.destroy();
      bigDraft.destroy();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return out;
}
