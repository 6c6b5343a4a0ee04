/**
 * The memory plan (lib/train/memory_plan.ts) against the buffer pool's measured peak: online and offline runs
 * of the train fixture on a fresh device (the plan replays every allocation through the pool's size classes,
 * so it meets the peak to the split-K partials it leaves out; the bound is 10 %), the simulated pool
 * against the real one, `--dry-run` (prints the plan, loads and writes nothing) and a run that does not fit
 * (one line naming the largest part and its flags, before any weight is loaded). The realistic-vocabulary
 * runs on a capped binding check the plan too (./realistic_shapes_test.ts).
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { needsGpu } from "../gpu.ts";
import { runMain } from "../reliability/run_main.ts";
import { prepareOptions, trainFixture, trainSettings } from "./fixtures.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { BufferPool, SimulatedPool } from "../../lib/gpu/buffers.ts";
import { formatBytes, parseByteSize } from "../../lib/gpu/device_memory.ts";
import { planTrainingRun, trainOffline, trainOnline, type TrainResult } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";
import { planPrepare, prepareHiddenStates } from "../../lib/offline/prepare.ts";
import type { FeatureStorage } from "../../lib/offline/format.ts";
import { main as trainOnlineMain } from "../../tasks/train_online.ts";

const quiet = () => new ProgressPrinter(() => {}, false);

/** Trains on a device of its own, so that the pool's peak is this run's alone. */
async function measured(
  root: string,
  out: string,
  extra: Partial<TrainSettingsInput>,
  offline = false,
): Promise<TrainResult> {
  const device = await Gpu.create();
  try {
    const o = {
      settings: await trainSettings(root, join(root, out), extra),
      hub: { cacheDir: join(root, "hub"), offline: true },
      progress: quiet(),
    };
    return await (offline ? trainOffline : trainOnline)(device, o);
  } finally {
    device.destroy();
  }
}

function assertClose(r: TrainResult, what: string): void {
  const gap = Math.abs(r.plannedPeakBytes - r.peakBytes);
  assert.ok(gap <= 0.1 * r.peakBytes, `${what}: planned ${r.plannedPeakBytes}, measured peak ${r.peakBytes}`);
}

Deno.test({ name: "memory plan: online runs meet the measured peak", ...needsGpu }, async () => {
  const root = await trainFixture();
  try {
    // Two padded lengths, evaluation between epochs, the KL and LK losses (the LK loss's extra KL gradient
    // rows), accumulation, Muon's momentum and scratch.
    assertClose(
      await measured(root, "a", { numEpochs: 2, evalInterval: 2, draftPreset: "eagle3" }),
      "KL loss",
    );
    assertClose(await measured(root, "b", { lkLossType: "lambda", draftAccumulationSteps: 2 }), "LK loss");
    // --eval-spec-samples: speculative decoding at each evaluation, planned at its largest (every accept length).
    const tau = await measured(root, "t", { evalSpecSamples: 3, numEpochs: 2, evalInterval: 2 });
    assertClose(tau, "--eval-spec-samples");
    assert.ok(
      tau.plannedPeakBytes >= tau.peakBytes,
      `tau: planned ${tau.plannedPeakBytes}, peak ${tau.peakBytes}`,
    );
    const muon = await measured(root, "c", { optimizer: "muon", maxNumSteps: 2 });
    assertClose(muon, "Muon");
    assert.equal(muon.plannedPeakBytes, muon.peakBytes, "Muon's state and scratch, planned exactly");
    // --mlp-saved-dtype f16: the saved gate and up at 2 bytes, planned exactly, and less than f32's.
    const half = await measured(root, "h", { optimizer: "muon", maxNumSteps: 2, mlpSavedDtype: "f16" });
    assert.equal(half.plannedPeakBytes, half.peakBytes, "f16 gate and up, planned exactly");
    assert.ok(half.peakBytes < muon.peakBytes, `f16 ${half.peakBytes} < f32 ${muon.peakBytes}`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test(
  { name: "memory plan: offline runs meet the measured peak, every feature storage", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      const storages: FeatureStorage[] = [
        { auxFormat: "bf16", groupSize: 32, teacherFormat: "hidden-bf16", topk: 16 },
        { auxFormat: "int8", groupSize: 32, teacherFormat: "topk", topk: 16 },
      ];
      for (const [n, storage] of storages.entries()) {
        const device = await Gpu.create();
        for (const split of ["train", "eval"]) {
          await prepareHiddenStates(device, prepareOptions(root, join(`f${n}`, split), storage, split));
        }
        device.destroy();
        const r = await measured(root, `out${n}`, {
          trainHiddenStatesPath: join(root, `f${n}`, "train"),
          evalHiddenStatesPath: join(root, `f${n}`, "eval"),
        }, true);
        assertClose(r, `${storage.auxFormat} aux, ${storage.teacherFormat} teacher`);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test({ name: "memory plan: prepare-hidden-states meets the measured peak", ...needsGpu }, async () => {
  const root = await trainFixture();
  try {
    const storages: FeatureStorage[] = [
      { auxFormat: "bf16", groupSize: 32, teacherFormat: "hidden-bf16", topk: 16 },
      { auxFormat: "int4", groupSize: 32, teacherFormat: "topk", topk: 8 },
    ];
    for (const [n, storage] of storages.entries()) {
      const device = await Gpu.create();
      try {
        const o = prepareOptions(root, `p${n}`, storage);
        const { plan } = await planPrepare(device, o);
        await prepareHiddenStates(device, o);
        const peak = device.pool.peakBytes;
        assert.ok(
          Math.abs(plan.peakBytes - peak) <= 0.1 * peak,
          `${storage.teacherFormat}: planned ${plan.peakBytes}, measured peak ${peak}`,
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
  { name: "memory plan: the simulated pool holds what the real one holds", ...needsGpu },
  async () => {
    const device = await Gpu.create();
    try {
      const real = new BufferPool(device), simulated = new SimulatedPool(device.limits.maxBufferSize);
      const sizes = [4, 300, 1000, 1000, 70_000, 257, 4096, 5000];
      const held: Array<[GPUBuffer, number]> = [];
      for (const [step, bytes] of sizes.entries()) {
        held.push([real.acquire(bytes, `t${step}`), simulated.acquire(bytes)]);
        if (step % 3 === 2) {
          const [buffer, size] = held.splice(1, 1)[0];
          real.release(buffer);
          simulated.release(size);
        }
        assert.equal(simulated.peakBytes, real.peakBytes, `after step ${step}`);
        assert.equal(simulated.liveBytes, real.liveBytes);
      }
      for (const [buffer] of held) real.release(buffer);
      real.clear();
    } finally {
      device.destroy();
    }
  },
);

Deno.test("memory plan: byte sizes read and written", () => {
  assert.equal(parseByteSize("24GiB"), 24 * 2 ** 30);
  assert.equal(parseByteSize("80GB"), 80e9);
  assert.equal(parseByteSize("1.5 MiB"), 1.5 * 2 ** 20);
  assert.equal(parseByteSize("4096"), 4096);
  assert.equal(parseByteSize("512k"), 512e3);
  for (const bad of ["", "GiB", "-1GiB", "12 parsecs", "1e3GB"]) assert.equal(parseByteSize(bad), null, bad);
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(1.5 * 2 ** 30), "1.5 GiB");
});

Deno.test({ name: "memory plan: --dry-run prints the plan and writes no output", ...needsGpu }, async () => {
  const root = await trainFixture();
  try {
    const out = join(root, "out");
    const args = [
      "--target-model-path",
      join(root, "target"),
      "--train-data-path",
      join(root, "train.jsonl"),
      "--eval-data-path",
      join(root, "eval.jsonl"),
      "--output-dir",
      out,
      "--cache-dir",
      join(root, "cache"),
      "--batch-size",
      "2",
      "--ttt-length",
      "3",
    ];
    const plan = await runMain(trainOnlineMain, [...args, "--dry-run"]);
    assert.equal(plan.code, 0, plan.errors.join("\n"));
    const text = plan.output.join("\n");
    for (
      const part of ["target weights", "draft weights", "optimizer state", "draft step activations", "peak"]
    ) {
      assert.ok(text.includes(part), `the plan lists ${part}:\n${text}`);
    }
    assert.ok(text.includes("the run fits"), text);
    assert.equal(await exists(out), false, "--dry-run made no output directory");

    const tight = await runMain(trainOnlineMain, [...args, "--device-memory", "1MiB"]);
    assert.equal(tight.code, 1);
    assert.equal(tight.errors.length, 1, tight.errors.join("\n"));
    assert.match(
      tight.errors[0],
      /memory plan: the run needs .* the device has 1\.0 MiB \(--device-memory\); the largest part is .* \(shrink it with /,
    );
    assert.equal(await exists(join(out, "epoch_0_step_1")), false, "nothing trained");

    const bad = await runMain(trainOnlineMain, [...args, "--device-memory", "lots"]);
    assert.equal(bad.code, 1);
    assert.match(bad.errors[0], /--device-memory/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test(
  { name: "memory plan: a device short of memory runs the draft head in windows", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      // Batches of 8 × 16 = 128 rows: the whole head holds 128-row logits, windows of 64 half of them.
      const base = { batchSize: 8, evalInterval: 0 };
      const planOf = async (extra: Partial<TrainSettingsInput>) => {
        const device = await Gpu.create();
        try {
          const settings = await trainSettings(root, join(root, "plan"), { ...base, ...extra });
          return (await planTrainingRun(device, {
            settings,
            hub: { cacheDir: join(root, "hub"), offline: true },
            progress: quiet(),
          })).plan;
        } finally {
          device.destroy();
        }
      };
      const whole = await planOf({}), forced = await planOf({ headChunkRows: 64 });
      assert.equal(whole.headRows, null);
      assert.equal(forced.headRows, 64);
      assert.ok(forced.peakBytes < whole.peakBytes, `${forced.peakBytes} < ${whole.peakBytes}`);
      const deviceMemory = String(Math.floor((forced.peakBytes + whole.peakBytes) / 2));
      assert.equal(
        (await planOf({ deviceMemory })).headRows,
        64,
        "the plan chooses windows when memory is short",
      );
      const a = await measured(root, "whole", base),
        b = await measured(root, "windows", { ...base, deviceMemory });
      assert.equal(b.plannedPeakBytes, forced.peakBytes);
      assert.ok(b.peakBytes <= Number(deviceMemory), `measured ${b.peakBytes} within ${deviceMemory}`);
      // The teacher logits made per window too (no [B·T, Vd] tensor in the target forward), planned exactly.
      assert.equal(b.plannedPeakBytes, b.peakBytes, "windows and the teacher's window, planned exactly");
      const losses = async (r: TrainResult) =>
        (await Deno.readTextFile(join(dirname(r.checkpoint!), "metrics.jsonl"))).trim().split("\n").map((l) =>
          JSON.parse(l)
        )
          .filter((l) => l.split === "train").map((l) => l.loss as number);
      const [la, lb] = [await losses(a), await losses(b)];
      assert.equal(la.length, lb.length);
      la.forEach((l, i) =>
        assert.ok(Math.abs(l - lb[i]) <= 1e-5 * Math.abs(l), `update ${i + 1}: ${l} vs ${lb[i]}`)
      );
      // Offline, from stored hidden states or a stored top-k: the feeder leaves the teacher logits to the windows.
      const storages = [
        { auxFormat: "bf16", groupSize: 32, teacherFormat: "hidden-bf16", topk: 16 },
        { auxFormat: "int4", groupSize: 32, teacherFormat: "topk", topk: 8 },
      ] as const;
      for (const [n, storage] of storages.entries()) {
        const device = await Gpu.create();
        for (const split of ["train", "eval"]) {
          await prepareHiddenStates(device, prepareOptions(root, join(`f${n}`, split), storage, split));
        }
        device.destroy();
        const features = {
          trainHiddenStatesPath: join(root, `f${n}`, "train"),
          evalHiddenStatesPath: join(root, `f${n}`, "eval"),
        };
        const what = storage.teacherFormat;
        const c = await measured(root, `offline-whole-${n}`, { ...base, ...features }, true);
        const d = await measured(
          root,
          `offline-windows-${n}`,
          { ...base, ...features, headChunkRows: 64 },
          true,
        );
        assert.equal(d.plannedPeakBytes, d.peakBytes, `${what}: windows, planned exactly`);
        assert.ok(d.peakBytes < c.peakBytes, `${what}: windows ${d.peakBytes} < whole ${c.peakBytes}`);
        const [lc, ld] = [await losses(c), await losses(d)];
        lc.forEach((l, i) =>
          assert.ok(Math.abs(l - ld[i]) <= 1e-5 * Math.abs(l), `${what}, update ${i + 1}: ${l} vs ${ld[i]}`)
        );
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
