/**
 * EAGLE-3.1 end to end: train-online with a draft config that has fc_norm and norm_output: true, the
 * checkpoint is an SGLang directory with the fc_norm weights and SGLang's keys, it loads back for evaluation,
 * and resuming keeps the semantics setting (a changed --norm-output-semantics is refused).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { checkDraftExport } from "../../lib/models/export.ts";
import { deriveDraftConfig, draftConfigJson } from "../../lib/models/draft_config.ts";
import { loadTargetConfig } from "../../lib/models/config.ts";
import { SafetensorsFile } from "../../lib/io/safetensors.ts";
import { loadDraftDirectory } from "../../lib/eval/draft_dir.ts";

const quiet = () => new ProgressPrinter(() => {}, false);

Deno.test(
  { name: "train-online trains and exports an EAGLE-3.1 draft (fc_norm, norm_output)", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const target = await loadTargetConfig(join(root, "target", "config.json"));
      const config = join(root, "eagle3.1.json");
      const json = { ...draftConfigJson(deriveDraftConfig(target)), fc_norm: true, norm_output: true };
      await Deno.writeTextFile(config, JSON.stringify(json));
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const run = await trainOnline(gpu!, {
        settings: await trainSettings(root, "out", { draftModelConfig: config, maxNumSteps: 4 }),
        hub,
        progress: quiet(),
      });
      assert.ok(run.checkpoint && run.draftConfig.fcNorm && run.draftConfig.feedNormedHidden);
      assert.ok(Number.isFinite(run.lastTrain!.loss));
      await checkDraftExport(run.checkpoint);
      const written = JSON.parse(await Deno.readTextFile(join(run.checkpoint, "config.json")));
      assert.equal(written.fc_norm, true);
      assert.equal(written.norm_output, true);
      const st = await SafetensorsFile.open(join(run.checkpoint, "model.safetensors"));
      try {
        for (const i of [0, 1, 2]) {
          assert.deepEqual(st.info(`fc_norm.${i}.weight`).shape, [
            target.hiddenSize,
          ]);
        }
      } finally {
        st.close();
      }
      const loaded = await loadDraftDirectory(gpu!, run.checkpoint);
      try {
        assert.ok(loaded.config.fcNorm && loaded.config.feedNormedHidden);
        const w = await loaded.draft.getWeights();
        assert.ok(w.get("fc_norm.1.weight")!.some((x) => x !== 1), "fc_norm weights were trained");
      } finally {
        loaded.draft.destroy();
      }
      await assert.rejects(
        async () =>
          await trainOnline(gpu!, {
            settings: await trainSettings(root, "out", {
              draftModelConfig: config,
              resume: true,
              normOutputSemantics: "specforge",
            }),
            hub,
            progress: quiet(),
          }),
        /norm_output_semantics/,
      );
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
