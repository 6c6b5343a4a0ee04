/**
 * Whole training steps with each LK loss (lib/ops/lk_loss.ts) against PyTorch autograd
 * (tests/golden/make_eagle3_lk.py). The kernels against their CPU reference: tests/ops/lk_loss_test.ts.
 */
import { assertClose, gpu, needsGpu } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Tensor } from "../../lib/tensor.ts";
import { parseDraftConfig } from "../../lib/models/draft_config.ts";
import { buildEagle3Step, EAGLE3_PARAM_NAMES, Eagle3Draft } from "../../lib/models/eagle3.ts";
import type { LkLossOptions } from "../../lib/ops/lk_loss.ts";
import { assertScaled, goldenVocab, TINY_DRAFT_JSON, writeGoldenInputs } from "./draft_fixtures.ts";

const CFG = parseDraftConfig(TINY_DRAFT_JSON, "lk draft config");
const B = 2, T = 16, K = 3;
const VARIANTS: Array<[string, LkLossOptions]> = [
  ["alpha", { type: "alpha", klScale: 1, klDecay: 1 }],
  ["lambda", { type: "lambda", klScale: 1, klDecay: 3 }],
];

// Tolerances as tests/models/eagle3_test.ts: losses 2e-5 relative, gradients 1e-5 of each tensor's scale.
for (const [variant, lk] of VARIANTS) {
  Deno.test(
    { name: `eagle3 training step with the ${variant} LK loss matches PyTorch`, ...needsGpu },
    async () => {
      const g = gpu!, gold = Golden.load("eagle3_lk");
      const weights = new Map(EAGLE3_PARAM_NAMES.map((n) => [n, gold.f32(`weight.${n}`)]));
      const draft = Eagle3Draft.create(g, CFG, { weights });
      const embedding = Tensor.fromArray(
        g,
        gold.f32("embed"),
        [CFG.vocabSize, CFG.hiddenSize],
        "f32",
        "embed",
      );
      const vocab = goldenVocab(gold);
      const step = await buildEagle3Step(draft, { batch: B, seqLen: T, tttLength: K, embedding, vocab, lk });
      try {
        writeGoldenInputs(step, gold, true);
        step.run();
        const m = await step.readMetrics();
        assertClose(m.ploss, gold.f32(`${variant}.ploss`), "ploss_k (KL)", { atol: 1e-6, rtol: 2e-5 });
        const acc = gold.f32(`${variant}.acceptance`);
        assertClose(m.acceptance!, [0, 1, 2].map((k) => acc[2 * k] / acc[2 * k + 1]), "acceptance α_k", {
          atol: 1e-6,
          rtol: 2e-5,
        });
        const grads = await draft.getGrads();
        let worst = 0;
        for (const name of EAGLE3_PARAM_NAMES) {
          const want = gold.f32(`${variant}.grad.${name}`);
          worst = Math.max(worst, assertScaled(grads.get(name)!, want, `grad ${name}`, 1e-5));
        }
        console.log(
          `${variant}: acceptance ${m.acceptance!.map((a) => a.toFixed(4))}, worst gradient error ${
            worst.toExponential(2)
          } of scale`,
        );
      } finally {
        step.destroy();
        draft.destroy();
        embedding.destroy();
      }
    },
  );
}
