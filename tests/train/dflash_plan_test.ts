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
      const [out, extra] of [
        ["a", {}],
        ["m", { optimizer: "muon" as const, headChunkRows: 64 }],
        ["h", { mlpSavedDtype: "f16" as const }],
      ] as const
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
  { name: "dflash memory plan: a device planned short of memory runs the head in windows", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const hub = { cacheDir: join(root, "hub"), offline: true };
      const run = async (out: string, extra: Partial<TrainSettingsInput>, dryOnly = false) => {
        const device = await Gpu.create(), notes: string[] = [];
        try {
          const settings = await trainSettings(root, out, { ...BASE, ...LARGE, ...extra });
          const dry = await planDflashRun(device, { settings, hub, progress: quiet() });
          if (dryOnly) return { dry, r: null, notes };
          const progress = new ProgressPrinter((t) => notes.push(t), false);
          return { dry, r: await trainDflashOnline(device, { settings, hub, progress }), notes };
        } finally {
          device.destroy();
        }
      };
      // The largest batch: 4 × 15 blocks × 4 = 240 rows; 64-row windows hold a quarter of its logits.
      const whole = await run("whole", {}), forced = await run("forced", { headChunkRows: 64 }, true);
      assert.equal(whole.dry.plan.headRows, null);
      assert.equal(forced.dry.plan.headRows, 64);
      const [wp, fp] = [whole.dry.plan.peakBytes, forced.dry.plan.peakBytes];
      assert.ok(fp < wp, `${fp} < ${wp}`);
      const deviceMemory = String(Math.floor((fp + wp) / 2));
      const short = await run("short", { deviceMemory });
      const rows = short.dry.plan.headRows!;
      assert.ok(rows !== null && rows % 64 === 0 && rows < 240, `the plan chooses windows: ${rows}`);
      assert.equal(short.dry.headChunkRows, rows);
      assert.ok(
        short.r!.peakBytes <= Number(deviceMemory),
        `measured ${short.r!.peakBytes} within ${deviceMemory}`,
      );
      assert.equal(short.r!.plannedPeakBytes, short.r!.peakBytes);
      const line = `windows of ${rows} rows (a batch's logits at once would not fit the device)`;
      assert.ok(short.notes.some((n) => n.includes(line)), short.notes.join(""));
      assert.ok(whole.notes.some((n) => n.includes("draft head (lm_head, loss, their backward): every row")));
      const losses = async (out: string) =>
        (await Deno.readTextFile(join(root, out, "metrics.jsonl"))).trim().split("\n").map((l) =>
          JSON.parse(l)
        )
          .map((r) => [r.split, r.step, r.loss]);
      const want = await losses("whole");
      assert.ok(want.some((r) => r[0] === "train"), JSON.stringify(want));
      // The windowed head equals the whole one bit for bit (tests/models/dflash_head_test.ts).
      assert.deepEqual(await losses("short"), want);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

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
