/**
 * Drafts for the golden tiny targets whose layers differ most from Llama's train online end to end: Gemma 3
 * (local and global layers, (1 + w) norms, √H-scaled embedding) and the mixtures of experts (Qwen3-MoE,
 * Qwen2-MoE, GPT-OSS with MXFP4 experts, Llama 4, also as the multimodal Llama4ForConditionalGeneration whose
 * draft embedding is its `language_model.` one, DeepSeek-V3 with its multi-head latent attention): the derived
 * dense draft, aux states from their forward, a
 * finite loss at every update, a checkpoint, and the buffer pool's peak within 10 % of the memory plan, which
 * counts the experts' weights and the sparse MLP's scratch (the forwards themselves are checked against
 * transformers in tests/models/target_test.ts).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";

for (
  const arch of [
    "gemma3",
    "qwen3_moe",
    "qwen2_moe",
    "gpt_oss_mxfp4",
    "llama4",
    "llama4_multimodal",
    "deepseek_v3",
  ]
) {
  Deno.test({
    name: `train-online with a ${arch} target: draft derived and trained; plan = peak`,
    ...needsGpu,
  }, async () => {
    const root = await trainFixture();
    const device = await Gpu.create(); // its own buffer pool: the peak is this run's alone
    try {
      const golden = new URL(`../golden/targets/${arch}/`, import.meta.url).pathname;
      for (const f of ["config.json", "model.safetensors"]) {
        await Deno.copyFile(join(golden, f), join(root, "target", f));
      }
      const r = await trainOnline(device, {
        settings: await trainSettings(root, "out", { numEpochs: 2, logInterval: 1 }),
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: new ProgressPrinter(() => {}, false),
      });
      assert.equal(r.draftConfig.hiddenSize, 32);
      const losses = (await Deno.readTextFile(join(root, "out", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((x) => x.split === "train").map((x) => x.loss as number);
      assert.ok(losses.length === r.updates && losses.every(Number.isFinite), `${losses}`);
      assert.ok((await Deno.stat(join(r.checkpoint!, "model.safetensors"))).isFile);
      const { peakBytes: peak, plannedPeakBytes: plan } = r;
      assert.ok(Math.abs(plan - peak) <= 0.1 * peak, `planned ${plan}, peak ${peak}`);
      // DeepSeek-V3: the MLA weights, its compressed-latent scratch and the per-pass key expansion are counted
      // to the byte (measured equal).
      if (arch === "deepseek_v3") assert.equal(plan, peak);
    } finally {
      device.destroy();
      await Deno.remove(root, { recursive: true });
    }
  });
}
