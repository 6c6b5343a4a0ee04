/**
 * The DFlash memory plan (lib/train/dflash_plan.ts) against the buffer pool's measured peak on the train
 * fixture's tiny target, online and with the head in windows; --dry-run's plan; a run that does not fit stops
 * before loading, naming the largest part.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { planDflashRun, trainDflashOnline } from "../../lib/train/dflash_trainer.ts";
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

Deno.test({ name: "dflash memory plan: an online run meets the measured peak", ...needsGpu }, async () => {
  const root = await trainFixture();
  try {
    const hub = { cacheDir: join(root, "hub"), offline: true };
    for (
      const [out, extra] of [["a", {}], ["m", { optimizer: "muon" as const, headChunkRows: 64 }]] as const
    ) {
      const device = await Gpu.create();
      try {
        const settings = await trainSettings(root, out, { ...BASE, ...extra });
        const dry = await planDflashRun(device, { settings, hub, progress: quiet() });
        const r = await trainDflashOnline(device, { settings, hub, progress: quiet() });
        assert.equal(r.plannedPeakBytes, dry.plan.peakBytes);
        console.log(`${out}: planned ${r.plannedPeakBytes}, measured ${r.peakBytes}`);
        assert.equal(
          r.plannedPeakBytes,
          r.peakBytes,
          `${out}: planned ${r.plannedPeakBytes}, peak ${r.peakBytes}`,
        );
      } finally {
        device.destroy();
      }
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
