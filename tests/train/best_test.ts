/** The best draft by measured τ: exported as `<output-dir>/best/` whenever an evaluation beats the best. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "./fixtures.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { BEST_DIR, readBest } from "../../lib/train/best.ts";
import { checkDraftExport } from "../../lib/models/export.ts";

Deno.test(
  { name: "trainer: the draft with the best measured tau is exported as best/", ...needsGpu },
  async () => {
    const root = await trainFixture();
    try {
      await trainOnline(gpu!, {
        settings: await trainSettings(root, "run", {
          maxNumSteps: 6,
          evalInterval: 2,
          evalSpecSamples: 2,
          evalSpecSteps: 2,
          evalSpecNewTokens: 5,
        }),
        hub: { cacheDir: join(root, "hub"), offline: true },
        progress: new ProgressPrinter(() => {}, false),
      });
      const evals = (await Deno.readTextFile(join(root, "run", "metrics.jsonl"))).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((l) => l.split === "eval");
      assert.ok(evals.length >= 3 && evals.every((l) => typeof l.tau === "number"));
      const top = Math.max(...evals.map((l) => l.tau));
      const first = evals.find((l) => l.tau === top)!; // the first evaluation that reached it
      const best = await readBest(join(root, "run"));
      assert.deepEqual(best, { update: first.step, tau: top, numSteps: 2 });
      await checkDraftExport(join(root, "run", BEST_DIR));
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
