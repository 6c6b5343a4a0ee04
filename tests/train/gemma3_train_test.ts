/**
 * A draft for a Gemma 3 target (the golden tiny Gemma3ForCausalLM: local and global layers, (1 + w) norms,
 * √H-scaled embedding) trains online end to end: the derived draft, its aux states from the Gemma forward, a
 * checkpoint and an SGLang export, with a finite loss at every update (the forward itself is checked against
 * transformers in tests/models/target_test.ts).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";

const GEMMA3 = new URL("../golden/targets/gemma3/", import.meta.url).pathname;

Deno.test(
  { name: "train-online with a Gemma 3 target: draft derived, trained, exported", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      for (const f of ["config.json", "model.safetensors"]) {
        await Deno.copyFile(
          join(GEMMA3, f),
          join(root, "target", f),
        );
      }
      const r = await trainOnline(gpu!, {
        settings: await trainSettings(root, "out", { numEpochs: 2, logInterval: 1 }),
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: new ProgressPrinter(() => {}, false),
      });
      assert.equal(r.draftConfig.hiddenSize, 32);
      const losses = (await Deno.readTextFile(join(root, "out", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((x) => x.split === "train").map((x) => x.loss as number);
      assert.ok(losses.every(Number.isFinite), `${losses}`);
      assert.equal(losses.length, r.updates);
      assert.ok((await Deno.stat(join(r.checkpoint!, "model.safetensors"))).isFile);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
