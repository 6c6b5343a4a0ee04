/**
 * DFlash offline training on the tiny random Llama target of the train tests (8 layers, hidden 32, vocab 256):
 * prepare-hidden-states --draft-type dflash stores the draft's target layers (any count, no teacher) and
 * train-offline --draft-type dflash on f32 features equals train-online bit for bit (weights, optimizer state,
 * losses: the stored features are the forward's own f32 values and the step's dispatches are the same);
 * stored layers that are not the draft's, and EAGLE-3 training on teacherless features, are refused by name;
 * a streamed target (--target-memory-budget) writes the resident run's files, and prepare's plan of the DFlash
 * features meets the measured peak within the prepare plan's 10 % bound (tests/train/memory_plan_test.ts).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { prepareOptions, trainFixture, trainSettings } from "../train/fixtures.ts";
import { trainDflashOffline, trainDflashOnline } from "../../lib/train/dflash_trainer.ts";
import { trainOffline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { prepareHiddenStates } from "../../lib/offline/prepare.ts";
import { prepareHiddenStatesOptions } from "../../lib/offline/settings.ts";
import { bytesPerToken, type FeatureStorage, readManifest } from "../../lib/offline/format.ts";
import { CHECKPOINT_FILES } from "../../lib/train/checkpoint.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { planPrepare } from "../../lib/offline/prepare.ts";
import { SafetensorsCheckpoint } from "../../lib/io/safetensors.ts";
import { loadTargetConfig, resolveWeightNames } from "../../lib/models/config.ts";
import { layerBytes } from "../../lib/models/target_memory.ts";

const quiet = () => new ProgressPrinter(() => {}, false);
const F32_NONE: FeatureStorage = { auxFormat: "f32", groupSize: 32, teacherFormat: "none", topk: 16 };
const DFLASH: Partial<TrainSettingsInput> = {
  draftType: "dflash",
  blockSize: 4,
  numDraftLayers: 2,
  numAnchors: 5,
  numEpochs: 2,
  learningRate: 3e-3,
};

/** prepare-hidden-states --draft-type dflash of the fixture's `split` into `root/out`. */
async function prepare(root: string, split: string, out: string, extra = {}): Promise<void> {
  await prepareHiddenStates(
    gpu!,
    prepareOptions(root, out, F32_NONE, split, { draftType: "dflash", numDraftLayers: 2, ...extra }),
  );
}

Deno.test(
  { name: "train-offline --draft-type dflash on f32 features == train-online, bit for bit", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      await prepare(root, "train", "features/train");
      await prepare(root, "eval", "features/eval");
      const m = await readManifest(join(root, "features/train"));
      assert.deepEqual(m.auxLayers, [1, 5]); // SpecForge's build_target_layer_ids(8, 2)
      assert.equal(bytesPerToken(m), 2 + 1 + 2 * 32 * 4); // ids, mask, two f32 layers; no teacher
      const online = await trainDflashOnline(gpu!, {
        settings: await trainSettings(root, "online", DFLASH),
        hub,
        progress: quiet(),
      });
      const offline = await trainDflashOffline(gpu!, {
        settings: await trainSettings(root, "offline", {
          ...DFLASH,
          trainHiddenStatesPath: join(root, "features/train"),
          evalHiddenStatesPath: join(root, "features/eval"),
        }),
        hub,
        progress: quiet(),
      });
      assert.equal(offline.updates, online.updates);
      assert.deepEqual(offline.config, online.config);
      for (const f of [CHECKPOINT_FILES.weights, CHECKPOINT_FILES.optimizer, CHECKPOINT_FILES.model]) {
        const x = await Deno.readFile(join(online.checkpoint!, f));
        const y = await Deno.readFile(join(offline.checkpoint!, f));
        assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${f} identical`);
      }
      const losses = async (dir: string) =>
        (await Deno.readTextFile(join(root, dir, "metrics.jsonl"))).trim().split("\n")
          .map((l) => JSON.parse(l)).map((r) => [r.split, r.step, r.loss, r.acc_1]);
      const [on, off] = [await losses("online"), await losses("offline")];
      assert.ok(on.some((r) => r[0] === "eval"), "evaluations ran");
      assert.deepEqual(off, on);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test(
  {
    name: "train-offline --draft-type dflash: stored layers that are not the draft's are refused",
    ...needsGpu,
  },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const dir = join(root, "features");
      await prepare(root, "train", "features", { targetLayerIds: [2, 4, 6] });
      assert.deepEqual((await readManifest(dir)).auxLayers, [2, 4, 6]);
      const run = async (extra: Partial<TrainSettingsInput>) =>
        await trainDflashOffline(gpu!, {
          settings: await trainSettings(root, "out", {
            ...DFLASH,
            trainHiddenStatesPath: dir,
            evalDataPath: null,
            maxNumSteps: 1,
            ...extra,
          }),
          hub,
          progress: quiet(),
        });
      await assert.rejects(
        () => run({ targetLayerIds: [1, 5] }),
        (e: Error) =>
          !e.message.includes("\n") &&
          e.message.includes(`${dir}: features hold aux layers [2,4,6], the run trains with [1,5]`) &&
          e.message.includes("--target-layer-ids"),
      );
      // Without --target-layer-ids the draft reads the stored layers.
      const r = await run({});
      assert.deepEqual(r.config.targetLayerIds, [2, 4, 6]);
      // EAGLE-3 training on DFlash (teacherless) features; prepare's flags of the other draft type.
      await assert.rejects(
        async () =>
          await trainOffline(gpu!, {
            settings: await trainSettings(root, "eagle", {
              trainHiddenStatesPath: dir,
              auxLayers: [2, 4, 6],
            }),
            hub,
            progress: quiet(),
          }),
        /features stored without a teacher/,
      );
      await assert.rejects(
        () => prepare(root, "train", "x", { auxLayers: [1, 2, 3] }),
        /--aux-layers is for/,
      );
      await assert.rejects(
        () =>
          prepareHiddenStates(gpu!, prepareOptions(root, "y", F32_NONE, "train", { targetLayerIds: [1] })),
        /--target-layer-ids is for --draft-type dflash/,
      );
      const o = prepareHiddenStatesOptions(
        { targetModelPath: "t", dataPath: "d", outputPath: "o", draftType: "dflash" },
        { hub },
      );
      assert.equal(o.storage.teacherFormat, "none"); // no teacher by default for DFlash
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

/** The bytes of the fixture target's first decoder layer on `device` (one stream slot). */
async function oneLayerBytes(dir: string, device: Gpu): Promise<number> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    const cfg = await loadTargetConfig(join(dir, "config.json"));
    const names = resolveWeightNames(cfg, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, dir);
    return layerBytes((n) => ckpt.info(n), names.layers[0], device.features.shaderF16);
  } finally {
    ckpt.close();
  }
}

Deno.test(
  {
    name:
      "prepare-hidden-states --draft-type dflash: a streamed target writes the resident files; plan ≈ peak",
    ...needsGpu,
  },
  async () => {
    const root = await trainFixture();
    try {
      const layers = { targetLayerIds: [0, 3, 6, 7] };
      await prepare(root, "train", "resident", layers);
      const device = await Gpu.create(), logs: string[] = [];
      try {
        const budget = 2 * await oneLayerBytes(join(root, "target"), device);
        const o = prepareOptions(root, "streamed", F32_NONE, "train", {
          draftType: "dflash",
          targetMemoryBudget: budget,
          log: (line) => logs.push(line),
          ...layers,
        });
        const { plan } = await planPrepare(device, o);
        await prepareHiddenStates(device, o);
        assert.ok(logs.some((l) => l.includes("stream through 2 slots")), logs.join("\n"));
        const peak = device.pool.peakBytes;
        assert.ok(Math.abs(plan.peakBytes - peak) <= 0.1 * peak, `planned ${plan.peakBytes}, peak ${peak}`);
      } finally {
        device.destroy();
      }
      const m = await readManifest(join(root, "resident"));
      for (let row = 0; row < m.data.numSamples; row++) {
        const f = join(
          `rows_${Math.floor(row / 5) * 5}-${Math.floor(row / 5) * 5 + 5}`,
          `data_${row}.safetensors`,
        );
        const [a, b] = [
          await Deno.readFile(join(root, "resident", f)),
          await Deno.readFile(join(root, "streamed", f)),
        ];
        assert.ok(a.length === b.length && a.every((x, i) => x === b[i]), `${f} identical`);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
