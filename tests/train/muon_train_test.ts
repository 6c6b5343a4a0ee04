/**
 * --optimizer muon end to end: train-online with Muon for the hidden matrices trains, a resumed run equals the
 * straight one bit for bit (the momentum buffers are saved), and a resume that switches optimizer is refused.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { CHECKPOINT_FILES } from "../../lib/train/checkpoint.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";

const quiet = () => new ProgressPrinter(() => {}, false);

Deno.test({
  name: "train-online --optimizer muon: trains, resumes bit for bit, refuses a switch",
  ...needsGpu,
}, async () => {
  const root = await trainFixture();
  try {
    const hub = { cacheDir: join(root, "hub"), offline: true };
    const run = async (out: string, extra: Partial<TrainSettingsInput>) =>
      await trainOnline(gpu!, {
        settings: await trainSettings(root, out, { optimizer: "muon", muonLr: 0.02, ...extra }),
        hub,
        progress: quiet(),
      });
    const straight = await run("straight", {});
    await run("resumed", { maxNumSteps: 4 });
    const resumed = await run("resumed", { resume: true });
    assert.equal(resumed.updates, straight.updates);
    const state = await Deno.readFile(join(resumed.checkpoint!, CHECKPOINT_FILES.optimizer));
    for (const f of [CHECKPOINT_FILES.weights, CHECKPOINT_FILES.optimizer, CHECKPOINT_FILES.model]) {
      const x = await Deno.readFile(join(straight.checkpoint!, f));
      const y = await Deno.readFile(join(resumed.checkpoint!, f));
      assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${f} identical`);
    }
    assert.ok(new TextDecoder().decode(state.subarray(0, 4096)).includes("momentum_buffer"));
    const losses = (await Deno.readTextFile(join(root, "straight", "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((l) => l.split === "train").map((l) => l.loss as number);
    assert.ok(losses.at(-1)! < losses[0], `the loss falls: ${losses[0]} → ${losses.at(-1)}`);
    await assert.rejects(
      () => run("resumed", { optimizer: "adamw", resume: true, numEpochs: 3 }),
      /optimizer \("muon" → "adamw"\)/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
