/** The draft's head initialised from the target's: lm_head rows of the draft vocabulary and the final norm. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadTargetConfig, resolveWeightNames } from "../../lib/models/config.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";
import { initEagle3Weights } from "../../lib/models/eagle3.ts";
import { initEagle3WeightsFromTargetHead } from "../../lib/models/eagle3_init.ts";
import { SafetensorsCheckpoint } from "../../lib/io/safetensors.ts";

const TARGET = new URL("../golden/targets/llama/", import.meta.url).pathname;

/** Asserts that `w` holds the target's lm_head rows `draftToTarget` and its final norm plus `normOffset`. */
async function assertHeadFromTarget(
  dir: string,
  w: Map<string, Float32Array>,
  draftToTarget: Int32Array,
  normOffset: number,
): Promise<void> {
  const target = await loadTargetConfig(join(dir, "config.json"));
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    const names = resolveWeightNames(target, (n) => ckpt.has(n), (n) => ckpt.info(n).shape);
    const lmHead = await ckpt.readFloat32(names.lmHead), H = target.hiddenSize;
    const head = w.get("lm_head.weight")!;
    draftToTarget.forEach((t, i) => {
      assert.deepEqual(head.subarray(i * H, (i + 1) * H), lmHead.subarray(t * H, (t + 1) * H), `row ${i}`);
    });
    const norm = await ckpt.readFloat32(names.finalNorm);
    assert.deepEqual(w.get("norm.weight"), norm.map((x) => x + normOffset));
  } finally {
    ckpt.close();
  }
}

Deno.test("draft init from the target's head: lm_head rows of the draft vocabulary, the final norm", async () => {
  const target = await loadTargetConfig(join(TARGET, "config.json"));
  const cfg = deriveDraftConfig(target, { draftVocabSize: 5 });
  const draftToTarget = Int32Array.from([0, 3, 17, 100, target.vocabSize - 1]);
  const w = await initEagle3WeightsFromTargetHead(cfg, 4, TARGET, draftToTarget);
  await assertHeadFromTarget(TARGET, w, draftToTarget, 0);
  // Rows in any order, read a few at a time, give the same head.
  const shuffled = Int32Array.from([100, 0, target.vocabSize - 1, 17, 3, 1, 2, 99, 101]);
  const small = deriveDraftConfig(target, { draftVocabSize: shuffled.length });
  for (const rowsPerRead of [1, 2, 7]) {
    const blocks = await initEagle3WeightsFromTargetHead(small, 4, TARGET, shuffled, rowsPerRead);
    await assertHeadFromTarget(TARGET, blocks, shuffled, 0);
  }
  const plain = initEagle3Weights(cfg, 4);
  assert.deepEqual(w.get("fc.weight"), plain.get("fc.weight"), "the rest is the seeded default");
  await assert.rejects(
    () =>
      initEagle3WeightsFromTargetHead({ ...cfg, hiddenSize: cfg.hiddenSize * 2 }, 4, TARGET, draftToTarget),
    /target's hidden_size is 32, the draft's 64/,
  );
});

Deno.test("draft init from a Gemma 3 target's head: its final norm as the forward applies it, 1 + w", async () => {
  const dir = new URL("../golden/targets/gemma3/", import.meta.url).pathname;
  const target = await loadTargetConfig(join(dir, "config.json"));
  const draftToTarget = Int32Array.from([5, 2, 40]);
  const cfg = deriveDraftConfig(target, { draftVocabSize: draftToTarget.length, eagle31: true });
  const w = await initEagle3WeightsFromTargetHead(cfg, 0, dir, draftToTarget);
  await assertHeadFromTarget(dir, w, draftToTarget, 1);
});
