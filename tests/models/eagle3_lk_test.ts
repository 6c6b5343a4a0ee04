/**
 * Whole training steps with each LK loss (lib/ops/lk_loss.ts) against PyTorch autograd
 * (tests/golden/make_eagle3_lk.py). The kernels against their CPU reference: tests/ops/lk_loss_test.ts.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Tensor } from "../../lib/tensor.ts";
import type { VocabMapping } from "../../lib/data/vocab.ts";
import { parseDraftConfig } from "../../lib/models/draft_config.ts";
import { buildEagle3Step, EAGLE3_PARAM_NAMES, Eagle3Draft } from "../../lib/models/eagle3.ts";
import type { LkLossOptions } from "../../lib/ops/lk_loss.ts";

const CFG = parseDraftConfig({
  architectures: ["LlamaForCausalLMEagle3"],
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 8,
  vocab_size: 64,
  draft_vocab_size: 40,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 64,
}, "lk draft config");
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
      const d2t = gold.ints("d2t"), t2d = gold.ints("t2d");
      const vocab: VocabMapping = {
        draftVocabSize: d2t.length,
        targetVocabSize: t2d.length,
        d2t: BigInt64Array.from(d2t, (x) => BigInt(x)),
        t2d: Uint8Array.from(t2d),
        draftToTarget: Int32Array.from(d2t, (o, i) => i + o),
      };
      const step = await buildEagle3Step(draft, { batch: B, seqLen: T, tttLength: K, embedding, vocab, lk });
      try {
        step.aux.write(gold.f32("aux"));
        step.ids.write(Int32Array.from(gold.ints("ids")));
        step.lengths.write(Int32Array.from(gold.ints("lengths")));
        step.lossMask.write(gold.f32("loss_mask"));
        step.teacherLogits.write(gold.f32("teacher_logits"));
        step.teacherArgmax.write(Int32Array.from(gold.ints("teacher_argmax")));
        step.teacherMaxSum.write(gold.f32("teacher_max_sum"));
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
          const want = gold.f32(`${variant}.grad.${name}`), got = grads.get(name)!;
          let scale = 0;
          for (const x of want) scale = Math.max(scale, Math.abs(x));
          assertClose(got, want, `grad ${name}`, { atol: 1e-5 * scale, rtol: 0 });
          for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / scale);
        }
        assert.ok(worst < 1e-5);
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
