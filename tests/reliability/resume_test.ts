/**
 * Reliability of --resume: the run fingerprint (lib/train/fingerprint.ts) refuses a resume whose data or
 * math changed, naming what changed, unless --resume-allow-changed names it; a corrupt latest checkpoint is
 * an error naming the newest intact one, which `--resume-from latest-good` takes; a NaN master weight in a
 * checkpoint is refused by name.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { trainFixture, trainSettings } from "../train/fixtures.ts";
import type { TrainSettingsInput } from "../../lib/train/config.ts";
import { parseTrainArgs } from "../../lib/train/config.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { CHECKPOINT_FILES, listCheckpoints, loadCheckpoint } from "../../lib/train/checkpoint.ts";
import { FINGERPRINT_ITEMS } from "../../lib/train/fingerprint.ts";
import { poisonTensor } from "./poison.ts";

/** Copies directory `from` to `to` (cp -r). */
async function copy(from: string, to: string): Promise<void> {
  const r = await new Deno.Command("cp", { args: ["-r", from, to] }).output();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
}

Deno.test({
  name: "resume: changed data or settings are refused by name unless allowed; latest-good",
  ...needsGpu,
}, async () => {
  const root = await trainFixture();
  const notes: string[] = [];
  const run = async (out: string, extra: Partial<TrainSettingsInput>) =>
    trainOnline(gpu!, {
      settings: await trainSettings(root, out, { saveInterval: 2, ...extra }),
      hub: { cacheDir: join(root, "hub"), offline: true },
      progress: new ProgressPrinter((t) => notes.push(t), false),
    });
  try {
    const first = await run("out", { maxNumSteps: 4 });
    assert.equal(first.updates, 4);
    const saved = (await loadCheckpoint(first.checkpoint!)).state.fingerprint!;
    assert.deepEqual(Object.keys(saved).sort(), Object.keys(FINGERPRINT_ITEMS).sort());
    const listing = async () => (await listCheckpoints(join(root, "out"))).join(",");
    const before = await listing();

    // The same path with other contents: refused, naming the item; nothing is written.
    const train = join(root, "train.jsonl");
    const original = await Deno.readTextFile(train);
    await Deno.writeTextFile(
      train,
      original.replace(/"input_ids":\[(\d+)/, (_, d) => `"input_ids":[${Number(d) + 1}`),
    );
    await assert.rejects(
      run("out", { resume: true }),
      /epoch_0_step_4: the resumed run differs from the saved one in train_data \(sha256 [0-9a-f]{12} → [0-9a-f]{12}\); .*--resume-allow-changed train_data/,
    );
    await Deno.writeTextFile(train, original);
    // More epochs: refused, then allowed by name.
    await assert.rejects(run("out", { resume: true, numEpochs: 3 }), /num_epochs \(2 → 3\)/);
    assert.equal(await listing(), before);
    await assert.rejects(
      parseTrainArgs([
        "--target-model-path",
        root,
        "--train-data-path",
        train,
        "--output-dir",
        join(root, "x"),
        "--resume-allow-changed",
        "num_epochs,bogus",
      ]),
      /--resume-allow-changed: unknown name "bogus"/,
    );

    // A corrupt latest checkpoint: the error names it and the newest intact one; latest-good takes that one.
    await copy(join(root, "out"), join(root, "corrupt"));
    const latest = join(root, "corrupt", "epoch_0_step_4");
    await Deno.truncate(join(latest, CHECKPOINT_FILES.optimizer), 100);
    await assert.rejects(
      run("corrupt", { resume: true }),
      new RegExp(
        `${latest}.*optimizer\\.safetensors.*; the newest intact checkpoint is .*epoch_0_step_2 .*--resume-from latest-good`,
      ),
    );
    const good = await run("corrupt", { resumeFrom: "latest-good", maxNumSteps: 3 });
    assert.equal(good.updates, 3);
    assert.ok(notes.some((n) => n.includes(`skipping ${latest}:`)));

    // A NaN master weight: refused, naming the file and the tensor.
    await copy(join(root, "out"), join(root, "nan"));
    const weights = join(root, "nan", "epoch_0_step_4", CHECKPOINT_FILES.weights);
    await poisonTensor(weights, "fc.weight", "nan", 11);
    await assert.rejects(
      run("nan", { resume: true }),
      new RegExp(`${weights}: draft tensor fc\\.weight has 1 NaN`),
    );

    // Allowed: the run continues to the new total, noting the change.
    const more = await run("out", {
      resume: true,
      numEpochs: 3,
      resumeAllowChanged: ["num_epochs"],
      maxNumSteps: 5,
    });
    assert.equal(more.updates, 5);
    assert.ok(notes.some((n) => n.includes("resuming with a changed num_epochs (2 → 3)")));
    assert.equal((await loadCheckpoint(more.checkpoint!)).state.totalSteps, 12);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
