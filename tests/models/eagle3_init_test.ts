/** The draft's head initialised from the target's: lm_head rows of the draft vocabulary and the final norm. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadTargetConfig, resolveWeightNames } from "../../lib/models/config.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";
import { initEagle3Weights } from "../../lib/models/eagle3.ts";
import { initEagle3WeightsFromTargetHead } from "../../lib/models/eagle3_init.ts";
import { SafetensorsCheckpoint } from "../../lib/io/safetensors.ts";

const TARGET = new URL("../golden/targets/llama/", import.meta.url).pathname;

Deno.test("draft init from the target's head: lm_head rows of the draft vocabulary, the final norm", async () => {
  const target = await loadTargetConfig(join(TARGET, "config.json"));
  const cfg = deriveDraftConfig(target, { draftVocabSize: 5 });
  const draftToTarget = Int32Array.from([0, 3, 17, 100, target.vocabSize - 1]);
  const w = await initEagle3WeightsFromTargetHead(cfg, 4, TARGET, draftToTarget);
  const ckpt = await SafetensorsCheckpoint.open(TARGET);
  try {
    const names = resolveWeightNames(target, (n) => ckpt.has(n), (n) => ckpt.info(n).shape);
    const lmHead = await ckpt.readFloat32(names.lmHead), H = cfg.hiddenSize;
    const head = w.get("lm_head.weight")!;
    draftToTarget.forEach((t, i) => {
      assert.deepEqual(head.subarray(i * H, (i + 1) * H), lmHead.subarray(t * H, (t + 1) * H), `row ${i}`);
    });
    assert.deepEqual(w.get("norm.weight"), await ckpt.readFloat32(names.finalNorm));
  } finally {
    ckpt.close();
  }
  const plain = initEagle3Weights(cfg, 4);
  assert.deepEqual(w.get("fc.weight"), plain.get("fc.weight"), "the rest is the seeded default");
  await assert.rejects(
    () =>
      initEagle3WeightsFromTargetHead({ ...cfg, hiddenSize: cfg.hiddenSize * 2 }, 4, TARGET, draftToTarget),
    /target's hidden_size is 32, the draft's 64/,
  );
});
