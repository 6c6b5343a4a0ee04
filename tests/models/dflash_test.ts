import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { Tensor } from "../../lib/tensor.ts";
import { cpuKernels, Gpu } from "../../lib/gpu/device.ts";
import { type DflashBlocks, dflashRanges } from "../../lib/ops/dflash_attention.ts";
import type { DflashLossType } from "../../lib/ops/dflash_loss.ts";
import type { MlpSavedDtype } from "../../lib/ops/gated_mlp.ts";
import { dflashTargetLayerIds, parseDflashConfig } from "../../lib/models/dflash_config.ts";
import { DflashDraft, type DflashWeights } from "../../lib/models/dflash.ts";
import {
  type DflashBlockInputs,
  dflashBlockInputs,
  dflashDecayedWeights,
  sampleDflashAnchors,
} from "../../lib/models/dflash_blocks.ts";
import { DflashStep } from "../../lib/models/dflash_step.ts";

// tests/golden/make_dflash.py's draft (SpecForge's recipe §4.3.4): a sliding (W 3) then a full layer.
const CONFIG = {
  architectures: ["DFlashDraftModel"],
  hidden_size: 16,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  head_dim: 8,
  intermediate_size: 32,
  num_hidden_layers: 2,
  layer_types: ["sliding_attention", "full_attention"],
  sliding_window: 3,
  use_sliding_window: true,
  num_target_layers: 4,
  block_size: 3,
  vocab_size: 32,
  dflash_config: { target_layer_ids: [1, 2], mask_token_id: 31 },
  rms_norm_eps: 1e-6,
  rope_theta: 1e4,
};

Deno.test("dflash: SpecForge's target layer choice and anchor sampler", () => {
  assert.deepEqual(dflashTargetLayerIds(36, 5), [1, 9, 17, 25, 33]);
  assert.deepEqual(dflashTargetLayerIds(64, 5), [1, 16, 31, 46, 61]);
  assert.deepEqual(dflashTargetLayerIds(36, 1), [18]);
  assert.deepEqual(dflashTargetLayerIds(2, 2), [0, 1]); // shallower than SpecForge's rule allows
  assert.deepEqual(dflashTargetLayerIds(4, 3), [0, 2, 3]);
  const g = Golden.load("dflash");
  const blocks = sampleDflashAnchors(g.f32("sampler.rand"), g.f32("sampler.loss_mask"), 2, 8, 4, 3)!;
  assert.deepEqual([...blocks.anchors], g.ints("sampler.anchors"));
  assert.deepEqual([...blocks.keep], g.ints("sampler.keep"));
});

/** Writes a step's inputs for the golden's blocks (sliding layers: window 3). */
function writeInputs(
  step: DflashStep,
  host: DflashBlockInputs,
  blocks: DflashBlocks,
  features: Float32Array<ArrayBuffer>,
  omega: Float32Array<ArrayBuffer>,
  gradScale: number,
): void {
  const inp = step.inputs, R0 = step.dims.blockRow0, S = step.dims.seq;
  inp.features.write(features);
  inp.noiseIds.write(host.noiseIds);
  inp.labels.write(host.labels);
  inp.weights.write(host.weights);
  inp.omega.write(omega);
  inp.gradScale.write(Float32Array.of(gradScale));
  inp.cos.write(host.cos);
  inp.sin.write(host.sin);
  inp.fullRanges.write(dflashRanges(blocks, S, null, R0).table);
  inp.slidingRanges.write(dflashRanges(blocks, S, 3, R0).table);
}

const LOSSES: Array<[string, DflashLossType, number | null]> = [
  ["dflash", "dflash", null],
  ["dflash_gamma7", "dflash", 7],
  ["dpace", "dpace", null],
  ["dpace-cumulative-confidence-only", "dpace-cumulative-confidence-only", null],
  ["dpace-continuation-value-only", "dpace-continuation-value-only", null],
];

/**
 * The devices of the golden test: the test process's, and when that is a CPU adapter, one with the GPU kernel
 * families (lib/gpu/device.ts `kernels: "gpu"`), so that the paths a GPU takes are checked against PyTorch too.
 */
const devices: Array<[string, () => Promise<Gpu>]> = [["", () => Promise.resolve(gpu!)]];
if (gpu && cpuKernels(gpu)) devices.push([", GPU kernels", () => Gpu.create({ kernels: "gpu" })]);

for (const [what, device] of devices) {
  Deno.test(
    { name: `dflash: a training step equals the PyTorch golden (every loss type${what})`, ...needsGpu },
    async () => dflashGolden(await device()),
  );
  Deno.test(
    {
      name: `dflash: a training step with f16 gate and up is within its tolerance of PyTorch${what}`,
      ...needsGpu,
    },
    async () => dflashGolden(await device(), "f16"),
  );
}

/**
 * Tolerances against PyTorch f64 by the dtype the step keeps the MLP's gate and up in: the draft's output
 * (atol, rtol), the loss sums (relative), each gradient (of its tensor's largest |value|, plus rtol 1e-4). f16
 * rounds gate and up to 2^-11 relative through two layers and computes act from them (measured on lavapipe,
 * both kernel families, beyond the rtol: output 1.4e-3, loss sums 3.6e-5, gradients 1.2e-3 of scale; f32:
 * 1.4e-6, 1.2e-7, 2.2e-6).
 */
const DFLASH_TOLERANCES = {
  f32: { out: 2e-5, sums: 1e-5, grad: 2e-5 },
  f16: { out: 3e-3, sums: 1e-4, grad: 3e-3 },
} as const;

/**
 * The golden training step (every loss type; with f16 gate and up the `dflash` loss) and evaluation logits
 * (evaluation steps keep f32) on `dev`.
 */
async function dflashGolden(dev: Gpu, mlpSaved: MlpSavedDtype = "f32"): Promise<void> {
  const tol = DFLASH_TOLERANCES[mlpSaved];
  const g = Golden.load("dflash"), cfg = parseDflashConfig(CONFIG, "golden config");
  const weights: DflashWeights = new Map();
  for (const name of ["fc.weight", "hidden_norm.weight", "norm.weight"]) {
    weights.set(
      name,
      g.f32(`w.${name}`),
    );
  }
  for (let j = 0; j < 2; j++) {
    for (const n of ["input_layernorm", "post_attention_layernorm"]) {
      weights.set(`layers.${j}.${n}.weight`, g.f32(`w.layers.${j}.${n}.weight`));
    }
    for (const n of ["q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"]) {
      weights.set(`layers.${j}.self_attn.${n}.weight`, g.f32(`w.layers.${j}.self_attn.${n}.weight`));
    }
    for (const n of ["gate_proj", "up_proj", "down_proj"]) {
      weights.set(`layers.${j}.mlp.${n}.weight`, g.f32(`w.layers.${j}.mlp.${n}.weight`));
    }
  }
  const draft = DflashDraft.create(dev, cfg, { weights });
  const embedding = Tensor.fromArray(dev, g.f32("embed"), [32, 16], "f32", "embed");
  const lmHead = Tensor.fromArray(dev, g.f32("lm_head"), [32, 16], "f32", "lm_head");
  const S = 8, nb = 2;
  const blocks: DflashBlocks = {
    batches: nb,
    blocks: 3,
    blockSize: 3,
    anchors: Int32Array.from(g.ints("anchors")),
    keep: Uint8Array.from(g.ints("keep")),
  };
  const ids = g.ints("input_ids"), mask = g.f32("loss_mask");
  const host = dflashBlockInputs(cfg, blocks, ids, mask, S);
  for (const [name, lossType, gamma] of mlpSaved === "f32" ? LOSSES : LOSSES.slice(0, 1)) {
    const step = await DflashStep.build(draft, {
      batches: nb,
      seq: S,
      blocks: 3,
      lossType,
      dpaceAlpha: 0.5,
      embedding,
      lmHead,
      mlpSaved,
    });
    const omega = dflashDecayedWeights(host.weights, 3, gamma);
    // The loss's denominator, known before the step: Σ ω (`dflash`) or the samples (D-PACE).
    const den = lossType === "dflash" ? omega.reduce((a, x) => a + x, 0) : nb;
    writeInputs(step, host, blocks, g.f32("hidden"), omega, 1 / den);
    await draft.zeroGrads();
    step.run();
    assertClose(await step.hidden.readFloat(), g.f32("out"), `${name}: the draft's output`, {
      atol: tol.out,
      rtol: 1e-4,
    });
    // Σ over the block slots of the sums (Σ w·ce, Σ w, Σ correct·[w > 0.5], Σ ω·ce).
    const sums = await step.sums.readFloat(),
      total = [0, 1, 2, 3].map((i) => sums.reduce((a, x, j) => j % 4 === i ? a + x : a, 0));
    assertClose(
      [total[3], total[3] / den, total[2] / total[1]],
      [
        g.f32(`${name}.loss_num`)[0],
        g.f32(`${name}.loss`)[0],
        g.f32(`${name}.accuracy`)[0],
      ],
      `${name}: loss numerator, loss, accuracy`,
      { atol: 1e-5, rtol: tol.sums },
    );
    for (const [param, grad] of await draft.getGrads()) {
      const want = g.f32(`${name}.grad.${param}`), scale = Math.max(...want.map(Math.abs));
      assertClose(grad, want, `${name}: ∂loss/∂${param}`, { atol: tol.grad * scale, rtol: 1e-4 });
    }
    step.destroy();
  }
  const evalStep = await DflashStep.build(draft, {
    batches: nb,
    seq: S,
    blocks: 3,
    lossType: "dflash",
    dpaceAlpha: 0.5,
    embedding,
    lmHead,
  }, false);
  writeInputs(evalStep, host, blocks, g.f32("hidden"), host.weights, 1);
  evalStep.run();
  assertClose(await evalStep.logits.readFloat(), g.f32("logits"), "logits", { atol: 5e-5, rtol: 1e-4 });
  evalStep.destroy();
  draft.destroy();
  embedding.destroy();
  lmHead.destroy();
}
