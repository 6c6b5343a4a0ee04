/**
 * EAGLE-3.1 drafts against PyTorch (tests/golden/make_eagle3_1.py): fc_norm with the normed state fed back as
 * SGLang serves `norm_output: true`, and SpecForge's `norm_output: false` (logits without the final norm);
 * and the config keys both ways.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Tensor } from "../../lib/tensor.ts";
import { type DraftConfig, draftConfigJson, parseDraftConfig } from "../../lib/models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft, eagle3ParamNames } from "../../lib/models/eagle3.ts";
import { assertScaled, goldenVocab, TINY_DRAFT_JSON, writeGoldenInputs } from "./draft_fixtures.ts";

const JSON_CFG = TINY_DRAFT_JSON;
const B = 2, T = 16, K = 3;

const VARIANTS: Array<[string, DraftConfig]> = [
  ["served", parseDraftConfig({ ...JSON_CFG, fc_norm: true, norm_output: true }, "served")],
  ["specforge_no_norm", parseDraftConfig({ ...JSON_CFG, norm_output: false }, "sf", "specforge")],
];

Deno.test("eagle3.1 config: fc_norm and norm_output in both meanings, written back as SGLang reads them", () => {
  const [served, sf] = [VARIANTS[0][1], VARIANTS[1][1]];
  assert.deepEqual([served.fcNorm, served.feedNormedHidden, served.headNorm], [true, true, true]);
  assert.deepEqual([sf.fcNorm, sf.feedNormedHidden, sf.headNorm], [false, false, false]);
  // SpecForge's norm_output: true is EAGLE-3's recurrence, written for SGLang as norm_output: false.
  const sfTrue = parseDraftConfig({ ...JSON_CFG, fc_norm: true, norm_output: true }, "x", "specforge");
  assert.deepEqual([sfTrue.fcNorm, sfTrue.feedNormedHidden, sfTrue.headNorm], [true, false, true]);
  const json = draftConfigJson(sfTrue);
  assert.equal(json.fc_norm, true);
  assert.equal(json.norm_output, false);
  const flags = (c: DraftConfig) => [c.fcNorm, c.feedNormedHidden, c.headNorm];
  assert.deepEqual(flags(parseDraftConfig(json)), flags(sfTrue));
  assert.deepEqual(flags(parseDraftConfig(draftConfigJson(served))), flags(served));
  const plain = parseDraftConfig(JSON_CFG);
  assert.ok(!("fc_norm" in draftConfigJson(plain)) && !("norm_output" in draftConfigJson(plain)));
  assert.throws(() => draftConfigJson(sf), /skip the final norm.*SGLang and vLLM/);
  assert.throws(
    () => parseDraftConfig({ ...JSON_CFG, fc_norm: "yes" }, "c.json"),
    /c\.json: fc_norm must be true or false/,
  );
  assert.deepEqual(eagle3ParamNames(served).slice(0, 4), [
    "fc.weight",
    "fc_norm.0.weight",
    "fc_norm.1.weight",
    "fc_norm.2.weight",
  ]);
});

// Tolerances as tests/models/eagle3_test.ts: loss 2e-5 relative, acc counts exact, gradients 1e-5 of scale.
for (const [variant, cfg] of VARIANTS) {
  Deno.test({
    name: `eagle3.1 training step (${variant}) matches PyTorch: loss, ploss_k, acc_k, gradients`,
    ...needsGpu,
  }, async () => {
    const g = gpu!, gold = Golden.load("eagle3_1");
    const weights = new Map(eagle3ParamNames(cfg).map((n) => [n, gold.f32(`weight.${n}`)]));
    const draft = Eagle3Draft.create(g, cfg, { weights });
    const embedding = Tensor.fromArray(g, gold.f32("embed"), [cfg.vocabSize, cfg.hiddenSize], "f32", "embed");
    const vocab = goldenVocab(gold);
    const step = await buildEagle3Step(draft, { batch: B, seqLen: T, tttLength: K, embedding, vocab });
    try {
      writeGoldenInputs(step, gold);
      step.run();
      const m = await step.readMetrics();
      assertClose([m.weightedLoss], gold.f32(`${variant}.loss`), "loss", { atol: 0, rtol: 2e-5 });
      assertClose(m.ploss, gold.f32(`${variant}.ploss`), "ploss_k", { atol: 1e-6, rtol: 2e-5 });
      assert.deepEqual(m.correct, Array.from(gold.f32(`${variant}.correct`)), "acc_k numerators");
      assert.deepEqual(m.total, Array.from(gold.f32(`${variant}.total`)), "acc_k denominators");
      const grads = await draft.getGrads();
      let worst = 0;
      for (const name of draft.names) {
        worst = Math.max(
          worst,
          assertScaled(grads.get(name)!, gold.f32(`${variant}.grad.${name}`), `grad ${name}`, 1e-5),
        );
      }
      console.log(
        `${variant}: loss ${m.weightedLoss.toFixed(6)}, worst gradient error ${
          worst.toExponential(2)
        } of scale`,
      );
    } finally {
      step.destroy();
      draft.destroy();
      embedding.destroy();
    }
  });
}
