/**
 * DFlash end to end on the train tests' tiny random Llama target: train-online --draft-type dflash trains
 * (the loss falls), writes DFlash directories in SGLang's and vLLM's layout, and `eval` decodes with the draft
 * exactly as the target alone (greedy) and completes a sampled run; a resumed run equals the straight one bit
 * for bit and a changed setting is refused; what DFlash does not support yet is refused by name.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainDflashOnline } from "../../lib/train/dflash_trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { loadDflashExport } from "../../lib/models/dflash_export.ts";
import { evaluateDraft } from "../../lib/eval/evaluate.ts";
import { evalSettings } from "../../lib/eval/settings.ts";
import { CHECKPOINT_FILES } from "../../lib/train/checkpoint.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";

const quiet = () => new ProgressPrinter(() => {}, false);

Deno.test(
  { name: "train-online --draft-type dflash: trains, exports, evaluates losslessly", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const settings = await trainSettings(root, "dflash", {
        draftType: "dflash",
        blockSize: 4,
        numDraftLayers: 2,
        slidingWindow: 3,
        numAnchors: 6,
        lossDecayGamma: 7,
        numEpochs: 6,
        learningRate: 3e-3,
      });
      const r = await trainDflashOnline(gpu!, { settings, hub, progress: quiet() });
      assert.equal(r.updates, 24); // 8 samples in batches of 2, 6 epochs
      const records = (await Deno.readTextFile(join(root, "dflash", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l));
      const losses = records.filter((l) => l.split === "train").map((l) => l.loss as number);
      assert.ok(losses.every(Number.isFinite) && losses.at(-1)! < losses[0], `the loss falls: ${losses}`);
      const lastEval = records.filter((l) => l.split === "eval").at(-1); // accuracy per block slot 1..3
      assert.ok("acc_2" in lastEval && !("acc_3" in lastEval), JSON.stringify(lastEval));
      // The checkpoint: SGLang's and vLLM's DFlash layout.
      const json = JSON.parse(await Deno.readTextFile(join(r.checkpoint!, "config.json")));
      assert.deepEqual(json.architectures, ["DFlashDraftModel"]);
      assert.equal(json.block_size, 4);
      assert.deepEqual(json.dflash_config, { target_layer_ids: [1, 5], mask_token_id: 0 });
      assert.deepEqual(json.layer_types, ["sliding_attention", "full_attention"]);
      assert.equal(json.sliding_window, 3);
      const loaded = await loadDflashExport(r.checkpoint!);
      assert.ok(
        !loaded.weights.has("lm_head.weight") && loaded.weights.has("layers.1.self_attn.q_norm.weight"),
      );
      // Speculative decoding with the draft: the target's own greedy output; a sampled run completes.
      for (const temperature of [0, 1]) {
        const { summary } = await evaluateDraft(
          gpu!,
          evalSettings({
            targetModelPath: join(root, "target"),
            draftModelPath: r.checkpoint!,
            dataPath: join(root, "eval.jsonl"),
            numSamples: 3,
            maxNewTokens: 12,
            noSpeed: true,
            temperature,
            outputDir: join(root, `eval${temperature}`),
          }),
          { hub },
        );
        if (temperature === 0) assert.equal(summary.matches_target_greedy, true);
        assert.equal(summary.new_tokens, 36);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test({
  name: "train-online --draft-type dflash: what is not supported yet is refused by name",
  ...needsGpu,
}, async () => {
  const root = await trainFixture();
  try {
    const hub = { cacheDir: join(root, "hub"), offline: true };
    for (
      const [extra, re] of [
        [{ trainHiddenStatesPath: join(root, "x") }, /--train-hidden-states-path is for train-offline/],
      ] as const
    ) {
      const settings = await trainSettings(root, "refused", { draftType: "dflash", ...extra });
      await assert.rejects(() => trainDflashOnline(gpu!, { settings, hub, progress: quiet() }), re);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "train-online --draft-type dflash: --resume continues bit for bit", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const run = async (out: string, extra: Partial<TrainSettingsInput>) =>
        await trainDflashOnline(gpu!, {
          settings: await trainSettings(root, out, {
            draftType: "dflash",
            blockSize: 4,
            numAnchors: 5,
            numEpochs: 4,
            optimizer: "muon",
            ...extra,
          }),
          hub,
          progress: quiet(),
        });
      const straight = await run("straight", {});
      await run("resumed", { maxNumSteps: 6 });
      const resumed = await run("resumed", { resume: true });
      assert.equal(resumed.updates, straight.updates);
      assert.equal(resumed.checkpoint!.split("/").at(-1), straight.checkpoint!.split("/").at(-1));
      for (const f of [CHECKPOINT_FILES.weights, CHECKPOINT_FILES.optimizer, CHECKPOINT_FILES.model]) {
        const x = await Deno.readFile(join(straight.checkpoint!, f));
        const y = await Deno.readFile(join(resumed.checkpoint!, f));
        assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${f} identical`);
      }
      await assert.rejects(() => run("resumed", { resume: true, numAnchors: 3 }), /num_anchors \(5 → 3\)/);
      await assert.rejects(() => run("resumed", { resume: true, blockSize: 5 }), /config differs/);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  { name: "train-online --draft-type dflash: a diverging run stops before saving", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const settings = await trainSettings(root, "diverged", {
        draftType: "dflash",
        blockSize: 4,
        numAnchors: 6,
        learningRate: 1e30,
        optimizer: "adamw",
      });
      await assert.rejects(
        () =>
          trainDflashOnline(gpu!, {
            settings,
            hub: { cacheDir: join(root, "hub"), offline: true },
            progress: quiet(),
          }),
        /TrainingDivergedError|NaN.*No checkpoint was written/,
      );
      const saved = [...Deno.readDirSync(join(root, "diverged"))].filter((e) => e.name.startsWith("epoch_"));
      assert.deepEqual(saved, []);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
