/**
 * The DFlash memory plan (lib/train/dflash_plan.ts) against the buffer pool's measured peak on the train
 * fixture's tiny target, online (AdamW; Muon with the head in windows) and offline, on batches whose draft
 * steps are most of the peak; --dry-run's plan; a run that does not fit stops
 * before loading, naming the largest part.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { prepareOptions, trainFixture, trainSettings } from "./fixtures.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import {
  type DflashTrainResult,
  planDflashRun,
  trainDflashOffline,
  trainDflashOnline,
} from "../../lib/train/dflash_trainer.ts";
import { prepareHiddenStates } from "../../lib/offline/prepare.ts";
import type { MemoryPlan } from "../../lib/models/memory_plan.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";

const quiet = () => new ProgressPrinter(() => {}, false);
const BASE: Partial<TrainSettingsInput> = {
  draftType: "dflash",
  blockSize: 4,
  numDraftLayers: 2,
  slidingWindow: 3,
  numAnchors: 6,
  numEpochs: 2,
  evalInterval: 2,
};

/**
 * Batches of 4 and 15 anchors: R = 4·15·4 = 240 rows, so the draft steps' activations and logits (train and
 * eval) are most of the peak and a wrong tensor in lib/models/dflash_memory.ts moves it (the step's tensors
 * alone: tests/models/dflash_memory_test.ts).
 */
const LARGE: Partial<TrainSettingsInput> = { batchSize: 4, numAnchors: 15, maxNumSteps: 2 };

/** Asserts plan == measured peak, and that the steps' categories are most of it. */
function checkRun(what: string, r: DflashTrainResult, plan: MemoryPlan): void {
  assert.equal(r.plannedPeakBytes, plan.peakBytes);
  assert.equal(
    r.plannedPeakBytes,
    r.peakBytes,
    `${what}: planned ${r.plannedPeakBytes}, peak ${r.peakBytes}`,
  );
  const steps = plan.categories.filter((c) => ["trainStep", "evalStep", "logits"].includes(c.key))
    .reduce((a, c) => a + c.bytes, 0);
  assert.ok(steps > plan.peakBytes / 2, `${what}: the steps' ${steps} bytes of ${plan.peakBytes}`);
}

Deno.test({ name: "dflash memory plan: an online run meets the measured peak", ...needsGpu }, async () => {
  const root = await trainFixture();
  try {
    const hub = { cacheDir: join(root, "hub"), offline: true };
    for (
      const [out, extra] of [["a", {}], ["m", { optimizer: "muon" as const, headChunkRows: 64 }]] as const
    ) {
      const device = await Gpu.create();
      try {
        const settings = await trainSettings(root, out, { ...BASE, ...LARGE, ...extra });
        const dry = await planDflashRun(device, { settings, hub, progress: quiet() });
        const r = await trainDflashOnline(device, { settings, hub, progress: quiet() });
        checkRun(out, r, dry.plan);
      } finally {
        device.destroy();
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({ name: "dflash memory plan: an offline run meets the measured peak", ...needsGpu }, async () => {
  const root = await trainFixture();
  try {
    const hub = { cacheDir: join(root, "hub"), offline: true };
    const storage = { auxFormat: "f32", groupSize: 32, teacherFormat: "none", topk: 16 } as const;
    const extra = { draftType: "dflash" as const, numDraftLayers: 2 };
    for (const split of ["train", "eval"]) {
      await prepareHiddenStates(gpu!, prepareOptions(root, join("features", split), storage, split, extra));
    }
    const device = await Gpu.create();
    try {
      const settings = await trainSettings(root, "offline", {
        ...BASE,
        ...LARGE,
        headChunkRows: 64,
        trainHiddenStatesPath: join(root, "features/train"),
        evalHiddenStatesPath: join(root, "features/eval"),
      });
      const dry = await planDflashRun(device, { settings, hub, progress: quiet() });
      checkRun("offline", await trainDflashOffline(device, { settings, hub, progress: quiet() }), dry.plan);
    } finally {
      device.destroy();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "dflash memory plan: a run that does not fit stops before loading", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const settings = await trainSettings(root, "small", { ...BASE, deviceMemory: "65536" });
      const device = await Gpu.create();
      try {
        await assert.rejects(
          () => trainDflashOnline(device, { settings, hub, progress: quiet() }),
          /memory plan: the run needs .* the largest part is /,
        );
        assert.equal(device.pool.peakBytes, 0, "nothing was loaded");
      } finally {
        device.destroy();
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
