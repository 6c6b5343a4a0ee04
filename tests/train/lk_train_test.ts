/**
 * LK losses end to end: train-online with --lk-loss-type lambda logs the expected acceptance per TTT position
 * (acceptance_rate_k), every run logs it, and a resume with another LK setting is refused.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";

const quiet = () => new ProgressPrinter(() => {}, false);

Deno.test({
  name: "train-online with the lambda LK loss logs acceptance_rate_k and keeps it on resume",
  ...needsGpu,
}, async () => {
  const root = await trainFixture();
  try {
    const hub = { cacheDir: join(root, "hub"), offline: true };
    const lk = { lkLossType: "lambda", klScale: 1, klDecay: 3 } as const;
    const run = await trainOnline(gpu!, {
      settings: await trainSettings(root, "lk", { ...lk, maxNumSteps: 4 }),
      hub,
      progress: quiet(),
    });
    const lines = (await Deno.readTextFile(join(root, "lk", "metrics.jsonl"))).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.ok(lines.length >= 4);
    for (const l of lines) {
      for (let k = 0; k < 3; k++) {
        const a = l[`acceptance_rate_${k}`];
        assert.ok(
          typeof a === "number" && a > 0 && a <= 1,
          `${l.split} ${l.step}: acceptance_rate_${k} = ${a}`,
        );
      }
    }
    assert.ok(run.lastTrain!.acceptance!.length === 3);
    await assert.rejects(
      async () =>
        await trainOnline(gpu!, {
          settings: await trainSettings(root, "lk", { ...lk, klDecay: 1, resume: true }),
          hub,
          progress: quiet(),
        }),
      /kl_decay/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
