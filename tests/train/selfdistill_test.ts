/**
 * Self-distilled data (lib/train/selfdistill.ts): the split the demo's step 1 and
 * examples/tinystories_selfdistill.ts write, checked on the embedded stories260K target.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gpu, needsGpu } from "../gpu.ts";
import { writeSelfDistilledSplit } from "../../lib/train/selfdistill.ts";

const TARGET = fileURLToPath(new URL("../../models/stories260K", import.meta.url));
const lines = async (path: string) =>
  (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));

Deno.test({
  name: "self-distilled split: train / held-out files, prompts are the held-out openings, seeded",
  ...needsGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const opts = { trainSamples: 3, evalSamples: 2, openingTokens: 4, continuationTokens: 5, batch: 2 };
    const split = await writeSelfDistilledSplit(gpu!, TARGET, { ...opts, outputDir: join(dir, "a") });
    const train = await lines(split.trainJsonl), held = await lines(split.evalJsonl);
    const prompts = await lines(split.evalPromptsJsonl);
    assert.deepEqual(train.map((s) => s.id), ["selfdistill-0", "selfdistill-1", "selfdistill-2"]);
    assert.deepEqual(held.map((s) => s.id), ["selfdistill-3", "selfdistill-4"]);
    for (const s of [...train, ...held]) {
      assert.equal(s.input_ids.length, 9);
      assert.deepEqual(s.loss_mask, [0, 0, 0, 0, 1, 1, 1, 1, 1]);
    }
    assert.deepEqual(prompts, held.map((s) => ({ id: s.id, input_ids: s.input_ids.slice(0, 4) })));
    assert.deepEqual(split.samples, [...train, ...held]);
    const again = await writeSelfDistilledSplit(gpu!, TARGET, { ...opts, outputDir: join(dir, "b") });
    assert.deepEqual(again.samples, split.samples, "the same seed makes the same samples");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "examples/tinystories_selfdistill.ts: --help, then a tiny run writes the three files",
  ...needsGpu,
}, async () => {
  const script = fileURLToPath(new URL("../../examples/tinystories_selfdistill.ts", import.meta.url));
  const run = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
  const help = await run(["--help"]);
  assert.equal(help.code, 0);
  assert.match(new TextDecoder().decode(help.stdout), /--continuation-tokens <value>/);
  const dir = await Deno.makeTempDir();
  try {
    const out = await run([
      "--target-model-path",
      TARGET,
      "--output-dir",
      dir,
      "--train-samples",
      "2",
      "--eval-samples",
      "1",
      "--continuation-tokens",
      "3",
    ]);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "eval.jsonl",
      "eval_prompts.jsonl",
      "train.jsonl",
    ]);
    assert.equal((await lines(join(dir, "train.jsonl"))).length, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
