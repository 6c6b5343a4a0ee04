/**
 * The EAGLE-3 draft and its training step: the teacher kernels against their CPU references, one whole training
 * step (K = 3 and 7) and one AdamW step against PyTorch (tests/golden/make_eagle3.py), finite differences on
 * the GPU step, evaluation = training metrics, gradient accumulation, and the draft config.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray, rng } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { runOnce } from "../../lib/gpu/program.ts";
import { Tensor } from "../../lib/tensor.ts";
import { cpuKernels, Gpu } from "../../lib/gpu/device.ts";
import type { VocabMapping } from "../../lib/data/vocab.ts";
import { ConfigError, parseTargetConfig } from "../../lib/models/config.ts";
import {
  checkDraftFitsTarget,
  deriveDraftConfig,
  type DraftConfig,
  draftConfigJson,
  parseDraftConfig,
} from "../../lib/models/draft_config.ts";
import {
  buildEagle3Step,
  EAGLE3_PARAM_NAMES,
  Eagle3Draft,
  type Eagle3Step,
  type Eagle3Weights,
  initEagle3Weights,
} from "../../lib/models/eagle3.ts";
import { targetToDraftMap, teacherRows, teacherRowsCpu } from "../../lib/ops/eagle3_teacher.ts";
import { ADAMW_STATE_SIZE, adamwState, adamwStep } from "../../lib/ops/adamw.ts";
import { globalNormPartialsSize, globalNormSquared } from "../../lib/ops/reduce.ts";

const CFG: DraftConfig = parseDraftConfig({
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
}, "golden draft config");
const B = 2, T = 16;

function mappingFrom(d2t: number[], t2d: number[]): VocabMapping {
  const draftToTarget = Int32Array.from(d2t, (o, i) => i + o);
  return {
    draftVocabSize: d2t.length,
    targetVocabSize: t2d.length,
    d2t: BigInt64Array.from(d2t, (x) => BigInt(x)),
    t2d: Uint8Array.from(t2d),
    draftToTarget,
  };
}

/** The golden inputs on the GPU, and the draft weights the script used. */
function goldenSetup(gold: Golden, g: Gpu = gpu!) {
  const weights = initEagle3Weights(CFG, 7);
  for (const name of EAGLE3_PARAM_NAMES) {
    if (!name.endsWith("proj.weight") && name !== "fc.weight" && name !== "lm_head.weight") {
      weights.set(name, gold.f32(`weight.${name}`));
    }
  }
  return {
    weights,
    embedding: Tensor.fromArray(g, gold.f32("embed"), [CFG.vocabSize, CFG.hiddenSize], "f32", "embed"),
    vocab: mappingFrom(gold.ints("d2t"), gold.ints("t2d")),
    inputs: {
      aux: gold.f32("aux"),
      ids: Int32Array.from(gold.ints("ids")),
      lengths: Int32Array.from(gold.ints("lengths")),
      lossMask: gold.f32("loss_mask"),
      teacherLogits: gold.f32("teacher_logits"),
      teacherArgmax: Int32Array.from(gold.ints("teacher_argmax")),
    },
  };
}

type HostInputs = ReturnType<typeof goldenSetup>["inputs"];

function writeInputs(step: Eagle3Step, x: HostInputs): void {
  step.aux.write(x.aux);
  step.ids.write(x.ids);
  step.lengths.write(x.lengths);
  step.lossMask.write(x.lossMask);
  step.teacherLogits.write(x.teacherLogits);
  step.teacherArgmax.write(x.teacherArgmax);
}

/** |a − e| ≤ tol·max|e| elementwise (a relative tolerance on the tensor's scale); returns the worst ratio. */
function assertScaled(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  label: string,
  tol: number,
): number {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  assertClose(actual, expected, label, { atol: tol * scale, rtol: 0 });
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / scale);
  }
  return worst;
}

Deno.test({ name: "eagle3 teacher rows kernel matches its CPU reference", ...needsGpu }, async () => {
  const g = gpu!;
  const seq = 7, rows = 3 * seq, V = 50, Vd = 13;
  const r = rng(5);
  const used = Array.from({ length: V }, (_, i) => i).filter((i) => i === 0 || r() < 0.3).slice(0, Vd);
  while (used.length < Vd) used.push(V - 1 - (Vd - used.length));
  used.sort((a, b) => a - b);
  const toDraftHost = targetToDraftMap(used, V);
  const ids = Int32Array.from({ length: rows }, () => Math.floor(r() * V));
  const argmax = Int32Array.from({ length: rows }, () => Math.floor(r() * V));
  const lossMask = Float32Array.from({ length: rows }, () => r() < 0.6 ? 1 : 0);
  const tIds = Tensor.fromArray(g, ids, [rows], "i32", "ids");
  const tArg = Tensor.fromArray(g, argmax, [rows], "i32", "argmax");
  const tMask = Tensor.fromArray(g, lossMask, [rows], "f32", "mask");
  const tMap = Tensor.fromArray(g, toDraftHost, [V], "i32", "map");
  for (const step of [0, 2, 6, 9]) {
    const outs = {
      idsK: Tensor.empty(g, [rows], "i32", "idsK"),
      posMaskK: Tensor.empty(g, [rows], "f32", "posMaskK"),
      lossMaskK: Tensor.empty(g, [rows], "f32", "lossMaskK"),
      targetK: Tensor.empty(g, [rows], "i32", "targetK"),
    };
    await runOnce(g, "teacher", async (p) => {
      await teacherRows(p, { ids: tIds, argmax: tArg, lossMask: tMask, toDraft: tMap, ...outs }, {
        seqLen: seq,
        position: step,
      });
    });
    const want = teacherRowsCpu(ids, argmax, lossMask, toDraftHost, seq, step);
    assert.deepEqual(await outs.idsK.read(), want.idsK, `ids_k step ${step}`);
    assert.deepEqual(await outs.targetK.read(), want.targetK, `target_k step ${step}`);
    assert.deepEqual(await outs.posMaskK.read(), want.posMaskK, `pos_mask_k step ${step}`);
    assert.deepEqual(await outs.lossMaskK.read(), want.lossMaskK, `loss_mask_k step ${step}`);
    for (const t of Object.values(outs)) t.destroy();
  }
  for (const t of [tIds, tArg, tMask, tMap]) t.destroy();
});

/**
 * The device of the GPU kernel families (lib/gpu/device.ts `kernels: "gpu"`: workgroup-tiled matmuls, row
 * kernels with workgroup memory, the unfused gated MLP), made once, when the test process's device is a CPU
 * adapter (on a GPU the shared device runs them already).
 */
let gpuKernelDevice: Promise<Gpu> | null = null;
const devices: Array<[string, () => Promise<Gpu>]> = [["", () => Promise.resolve(gpu!)]];
if (gpu && cpuKernels(gpu)) {
  devices.push([", GPU kernels", () => gpuKernelDevice ??= Gpu.create({ kernels: "gpu" })]);
}

/**
 * Tolerances against PyTorch f64, by the dtype the step keeps the MLP's gate and up in. f32: loss and ploss_k
 * 2e-5 relative; each gradient within 1e-5 of its tensor's largest |value| (f32 rounding through 7 chained
 * steps; measured ≤ 6e-7). f16 (--mlp-saved-dtype f16: gate and up rounded to f16, 2^-11 relative, and act
 * computed from them): loss 1e-5 relative, gradients 1e-3 of scale (measured on lavapipe, both kernel families:
 * 7.6e-7 and 2.9e-4). acc counts exact in both.
 */
const LOSS_F16 = 1e-5, GRAD_F16 = 1e-3;
const TOLERANCES = { f32: { loss: 2e-5, grad: 1e-5 }, f16: { loss: LOSS_F16, grad: GRAD_F16 } } as const;

for (const [what, device] of devices) {
  for (const [K, mlpSaved] of [[3, "f32"], [7, "f32"], [7, "f16"]] as const) {
    const tol = TOLERANCES[mlpSaved];
    Deno.test({
      name: `eagle3 training step (K=${K}${what}${mlpSaved === "f16" ? ", f16 gate and up" : ""}) matches ` +
        `PyTorch: loss, ploss_k, acc_k, gradients`,
      ...needsGpu,
    }, async () => {
      const gold = Golden.load("eagle3");
      const g = await device();
      const s = goldenSetup(gold, g);
      const draft = Eagle3Draft.create(g, CFG, { weights: s.weights });
      const step = await buildEagle3Step(draft, {
        batch: B,
        seqLen: T,
        tttLength: K,
        embedding: s.embedding,
        vocab: s.vocab,
        mlpSaved,
      });
      try {
        assert.equal(step.activations.layer[0].gate.dtype, mlpSaved);
        writeInputs(step, s.inputs);
        step.run();
        const m = await step.readMetrics();
        assert.equal(m.microBatches, 1);
        assertClose([m.weightedLoss], gold.f32(`k${K}.loss`), "loss", { atol: 0, rtol: tol.loss });
        assertClose(m.ploss, gold.f32(`k${K}.ploss`), "ploss_k", { atol: 1e-6, rtol: tol.loss });
        assert.deepEqual(m.correct, Array.from(gold.f32(`k${K}.correct`)), "acc_k numerators");
        assert.deepEqual(m.total, Array.from(gold.f32(`k${K}.total`)), "acc_k denominators");
        const grads = await draft.getGrads();
        let worst = 0;
        for (const name of EAGLE3_PARAM_NAMES) {
          worst = Math.max(
            worst,
            assertScaled(grads.get(name)!, gold.f32(`k${K}.grad.${name}`), `grad ${name}`, tol.grad),
          );
        }
        const lossError = Math.abs(m.weightedLoss / gold.f32(`k${K}.loss`)[0] - 1);
        console.log(
          `K=${K} ${mlpSaved}: loss ${m.weightedLoss.toFixed(6)} (relative error ${
            lossError.toExponential(2)
          }), ` +
            `worst gradient error ${worst.toExponential(2)} of scale`,
        );
      } finally {
        step.destroy();
        draft.destroy();
        s.embedding.destroy();
      }
    });
  }
}

Deno.test(
  { name: "eagle3 training step + AdamW (lr 1e-3, clip 0.5) matches PyTorch's weights", ...needsGpu },
  async () => {
    const g = gpu!;
    const gold = Golden.load("eagle3");
    const s = goldenSetup(gold);
    const draft = Eagle3Draft.create(g, CFG, { weights: s.weights });
    const step = await buildEagle3Step(draft, {
      batch: B,
      seqLen: T,
      tttLength: 7,
      embedding: s.embedding,
      vocab: s.vocab,
    });
    const grads = EAGLE3_PARAM_NAMES.map((n) => draft.grads[n]);
    const partials = Tensor.empty(g, [globalNormPartialsSize(grads)], "f32", "norm partials");
    const normSq = Tensor.empty(g, [1], "f32", "normSq");
    const state = Tensor.fromArray(g, adamwState(1, 1e-3, 0.5), [ADAMW_STATE_SIZE], "f32", "adamw state");
    const moments = EAGLE3_PARAM_NAMES.map((n) => [
      Tensor.zeros(g, draft.params[n].shape, "f32", `m ${n}`),
      Tensor.zeros(g, draft.params[n].shape, "f32", `v ${n}`),
    ]);
    try {
      writeInputs(step, s.inputs);
      step.run();
      await runOnce(g, "adamw", async (p) => {
        await globalNormSquared(p, grads, partials, normSq);
        for (const [i, name] of EAGLE3_PARAM_NAMES.entries()) {
          const [m, v] = moments[i];
          await adamwStep(p, { param: draft.params[name], grad: draft.grads[name], m, v, normSq, state });
        }
      });
      const norm = Math.sqrt((await normSq.readFloat())[0]);
      assertClose([norm], gold.f32("k7.grad_norm"), "global grad norm", { atol: 0, rtol: 1e-4 });
      // An update is ≈ −lr·sign(g) (Adam's first step): 2e-6 (0.2 % of lr) except where |g| is so small (below
      // 1e-6 after clipping, next to Adam's eps 1e-8) that f32 rounding of g moves the update: there ±lr.
      const coef = Math.min(1, 0.5 / (norm + 1e-6));
      const after = await draft.getWeights();
      for (const name of EAGLE3_PARAM_NAMES) {
        const want = gold.f32(`k7.adamw.${name}`), got = after.get(name)!, g0 = gold.f32(`k7.grad.${name}`);
        for (let i = 0; i < want.length; i++) {
          const tol = Math.abs(g0[i]) * coef < 1e-6 ? 1e-3 : 2e-6;
          if (!(Math.abs(got[i] - want[i]) <= tol)) {
            throw new Error(
              `weights after AdamW ${name}[${i}]: got ${got[i]}, expected ${want[i]} (tol ${tol})`,
            );
          }
        }
      }
    } finally {
      for (const t of [partials, normSq, state, ...moments.flat()]) t.destroy();
      step.destroy();
      draft.destroy();
      s.embedding.destroy();
    }
  },
);

Deno.test({
  name: "eagle3 evaluation step gives the training step's metrics; metrics accumulate and reset",
  ...needsGpu,
}, async () => {
  const gold = Golden.load("eagle3");
  const s = goldenSetup(gold);
  const draft = Eagle3Draft.create(gpu!, CFG, { weights: s.weights });
  const opts = { batch: B, seqLen: T, tttLength: 7, embedding: s.embedding, vocab: s.vocab };
  const trainStep = await buildEagle3Step(draft, opts);
  const evalStep = await buildEagle3Step(draft, { ...opts, train: false });
  try {
    writeInputs(evalStep, s.inputs);
    evalStep.run();
    const before = await evalStep.readMetrics();
    const zero = await draft.getGrads();
    for (const name of EAGLE3_PARAM_NAMES) {
      assert.ok(zero.get(name)!.every((x) => x === 0), `eval leaves ${name} grad 0`);
    }
    writeInputs(trainStep, s.inputs);
    trainStep.run();
    const trained = await trainStep.readMetrics();
    assert.deepEqual(before, trained);
    evalStep.run();
    const twice = await evalStep.readMetrics();
    assert.equal(twice.microBatches, 2);
    assert.deepEqual(twice.total, before.total.map((x) => 2 * x));
    assertClose(twice.ploss, before.ploss, "ploss is a mean over micro-batches", { atol: 1e-7, rtol: 1e-6 });
    evalStep.resetMetrics();
    const reset = await evalStep.readMetrics();
    assert.equal(reset.microBatches, 0);
    assert.ok(reset.total.every((x) => x === 0) && reset.ploss.every((x) => x === 0));
    let accLen = 0, prod = 1;
    for (const a of before.acc) accLen += prod *= a;
    assertClose([before.simulatedAcceptLength], [accLen], "simulated acceptance length");
  } finally {
    trainStep.destroy();
    evalStep.destroy();
    draft.destroy();
    s.embedding.destroy();
  }
});

Deno.test({
  name: "eagle3 gradients accumulate over micro-batches and scale by 1/accumulationSteps",
  ...needsGpu,
}, async () => {
  const gold = Golden.load("eagle3");
  const s = goldenSetup(gold);
  const draft = Eagle3Draft.create(gpu!, CFG, { weights: s.weights });
  const opts = { batch: B, seqLen: T, tttLength: 3, embedding: s.embedding, vocab: s.vocab };
  const step = await buildEagle3Step(draft, opts);
  const halfStep = await buildEagle3Step(draft, { ...opts, accumulationSteps: 2 });
  const second: HostInputs = { ...s.inputs, aux: randomArray(s.inputs.aux.length, 3, 1.5) };
  second.ids = s.inputs.ids.map((x, i) => (x * 7 + i) % CFG.vocabSize);
  try {
    const run = async (st: Eagle3Step, batches: HostInputs[]): Promise<Eagle3Weights> => {
      await draft.zeroGrads();
      for (const x of batches) {
        writeInputs(st, x);
        st.run();
      }
      return await draft.getGrads();
    };
    const gA = await run(step, [s.inputs]);
    const gB = await run(step, [second]);
    const gAB = await run(step, [s.inputs, second]);
    const gHalf = await run(halfStep, [s.inputs, second]);
    for (const name of EAGLE3_PARAM_NAMES) {
      const sum = gA.get(name)!.map((x, i) => x + gB.get(name)![i]);
      assertScaled(gAB.get(name)!, sum, `accumulated ${name}`, 1e-6);
      assertScaled(gHalf.get(name)!, sum.map((x) => x / 2), `accumulated / 2 ${name}`, 1e-6);
    }
  } finally {
    step.destroy();
    halfStep.destroy();
    draft.destroy();
    s.embedding.destroy();
  }
});

Deno.test({
  name: "eagle3 step decay γ weighs TTT position k by γ^k: γ 0 over 3 positions trains position 0 alone",
  ...needsGpu,
}, async () => {
  const gold = Golden.load("eagle3");
  const s = goldenSetup(gold);
  const draft = Eagle3Draft.create(gpu!, CFG, { weights: s.weights });
  const opts = { batch: B, seqLen: T, embedding: s.embedding, vocab: s.vocab };
  const one = await buildEagle3Step(draft, { ...opts, tttLength: 1 });
  const firstOnly = await buildEagle3Step(draft, { ...opts, tttLength: 3, stepDecay: 0 });
  try {
    const grads = async (st: Eagle3Step): Promise<Eagle3Weights> => {
      await draft.zeroGrads();
      writeInputs(st, s.inputs);
      st.run();
      return await draft.getGrads();
    };
    const g1 = await grads(one), g0 = await grads(firstOnly);
    for (const name of EAGLE3_PARAM_NAMES) assertScaled(g0.get(name)!, g1.get(name)!, name, 1e-6);
    await assert.rejects(
      () => buildEagle3Step(draft, { ...opts, tttLength: 2, stepDecay: -1 }),
      /stepDecay must be a finite number ≥ 0, got -1/,
    );
  } finally {
    one.destroy();
    firstOnly.destroy();
    draft.destroy();
    s.embedding.destroy();
  }
});

Deno.test({ name: "eagle3 gradients match finite differences of the GPU loss", ...needsGpu }, async () => {
  const gold = Golden.load("eagle3");
  const s = goldenSetup(gold);
  const draft = Eagle3Draft.create(gpu!, CFG, { weights: s.weights });
  const opts = { batch: B, seqLen: T, tttLength: 3, embedding: s.embedding, vocab: s.vocab };
  const trainStep = await buildEagle3Step(draft, opts);
  const evalStep = await buildEagle3Step(draft, { ...opts, train: false });
  try {
    writeInputs(trainStep, s.inputs);
    trainStep.run();
    const grads = await draft.getGrads();
    writeInputs(evalStep, s.inputs);
    const lossAt = async (): Promise<number> => {
      evalStep.resetMetrics();
      evalStep.run();
      return (await evalStep.readMetrics()).weightedLoss;
    };
    const eps = 1e-2;
    for (
      const name of [
        "fc.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.self_attn.k_proj.weight",
        "midlayer.self_attn.v_proj.weight",
        "midlayer.mlp.up_proj.weight",
        "lm_head.weight",
      ] as const
    ) {
      // The entry with the largest gradient (a meaningful difference quotient in f32).
      const gr = grads.get(name)!;
      let idx = 0;
      for (let i = 1; i < gr.length; i++) if (Math.abs(gr[i]) > Math.abs(gr[idx])) idx = i;
      const w = s.weights.get(name)!;
      const probe = (delta: number) => {
        const copy = new Map(s.weights);
        const v = w.slice();
        v[idx] += delta;
        copy.set(name, v);
        draft.setWeights(copy);
      };
      probe(eps);
      const plus = await lossAt();
      probe(-eps);
      const minus = await lossAt();
      draft.setWeights(s.weights);
      const fd = (plus - minus) / (2 * eps);
      assertClose([fd], [gr[idx]], `finite difference ${name}[${idx}]`, { atol: 2e-3, rtol: 2e-2 });
    }
  } finally {
    trainStep.destroy();
    evalStep.destroy();
    draft.destroy();
    s.embedding.destroy();
  }
});

Deno.test({ name: "eagle3 step refuses inputs and embeddings of the wrong shape", ...needsGpu }, async () => {
  const g = gpu!;
  const draft = Eagle3Draft.create(g, CFG, { seed: 1 });
  const vocab = mappingFrom(
    Array.from({ length: 40 }, () => 0),
    Array.from({ length: 64 }, (_, i) => i < 40 ? 1 : 0),
  );
  const badEmbed = Tensor.zeros(g, [63, 32], "f32", "embed");
  const embed = Tensor.zeros(g, [64, 32], "f32", "embed");
  const badAux = Tensor.zeros(g, [B * T, 95], "f32", "aux");
  try {
    await assert.rejects(
      () => buildEagle3Step(draft, { batch: B, seqLen: T, tttLength: 2, embedding: badEmbed, vocab }),
      /embedding .*\[63, 32\].*vocab_size 64/,
    );
    await assert.rejects(
      () =>
        buildEagle3Step(draft, {
          batch: B,
          seqLen: T,
          tttLength: 2,
          embedding: embed,
          vocab,
          inputs: { aux: badAux },
        }),
      /input aux .*\[32, 95\], expected f32 \[32, 96\]/,
    );
  } finally {
    for (const t of [badEmbed, embed, badAux]) t.destroy();
    draft.destroy();
  }
});

Deno.test("eagle3 weight init: U(±1/√fan_in) linear layers, unit norms, seeded", () => {
  const a = initEagle3Weights(CFG, 3), b = initEagle3Weights(CFG, 3), c = initEagle3Weights(CFG, 4);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.get("fc.weight"), c.get("fc.weight"));
  assert.ok(a.get("norm.weight")!.every((x) => x === 1));
  const q = a.get("midlayer.self_attn.q_proj.weight")!;
  const bound = 1 / Math.sqrt(2 * CFG.hiddenSize);
  assert.ok(q.every((x) => Math.abs(x) <= bound));
  assert.ok(Math.max(...q.map(Math.abs)) > 0.9 * bound);
});

Deno.test("draft config: parse, defaults, errors naming file and field, export round trip", () => {
  const cfg = parseDraftConfig({
    architectures: ["LlamaForCausalLMEagle3"],
    hidden_size: 4096,
    intermediate_size: 14336,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    draft_vocab_size: 32000,
    rms_norm_eps: 1e-5,
    max_position_embeddings: 2048,
    num_hidden_layers: 1,
  }, "llama3-8B-eagle3.json");
  assert.equal(cfg.headDim, 128);
  assert.equal(cfg.targetHiddenSize, 4096);
  assert.equal(cfg.ropeTheta, 10000);
  assert.deepEqual(cfg.ropeScaling, { type: "default" });
  assert.throws(
    () => parseDraftConfig({ ...draftConfigJson(cfg), num_hidden_layers: 2 }, "d.json"),
    /d\.json: num_hidden_layers must be 1/,
  );
  assert.throws(
    () => parseDraftConfig({ ...draftConfigJson(cfg), hidden_act: "gelu" }, "d.json"),
    /d\.json: hidden_act/,
  );
  assert.throws(
    () => parseDraftConfig({ ...draftConfigJson(cfg), draft_vocab_size: 200000 }, "d.json"),
    /draft_vocab_size 200000 exceeds vocab_size 128256/,
  );
  assert.throws(() => parseDraftConfig({ hidden_size: 8 }, "d.json"), ConfigError);
  const withAux = { ...cfg, auxLayerIds: [0, 1, 1], ropeScaling: { type: "linear" as const, factor: 2 } };
  const json = draftConfigJson(withAux);
  assert.deepEqual(json.architectures, ["LlamaForCausalLMEagle3"]);
  assert.equal(json.tie_word_embeddings, false);
  assert.equal(json.torch_dtype, "bfloat16");
  assert.deepEqual(json.eagle_config, {
    eagle_aux_hidden_state_layer_ids: [0, 1, 1],
    use_aux_hidden_state: true,
  });
  assert.deepEqual(parseDraftConfig(JSON.parse(JSON.stringify(json))), {
    ...withAux,
    torchDtype: "bfloat16",
  });
  assert.equal(draftConfigJson(withAux, { defaultAuxLayers: [0, 1, 1] }).eagle_config, undefined);
});

Deno.test("draft config derived from a target copies head_dim and RoPE; mismatches name both values", () => {
  const target = parseTargetConfig({
    architectures: ["LlamaForCausalLM"],
    hidden_size: 128,
    intermediate_size: 384,
    num_hidden_layers: 2,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 16,
    vocab_size: 2048,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
    max_position_embeddings: 512,
  });
  const d = deriveDraftConfig(target, { draftVocabSize: 2048, auxLayers: [0, 1, 1] });
  assert.equal(d.headDim, 16);
  assert.equal(d.ropeTheta, 500000);
  assert.equal(d.ropeScaling.type, "llama3");
  assert.equal(d.draftVocabSize, 2048);
  assert.deepEqual(d.auxLayerIds, [0, 1, 1]);
  checkDraftFitsTarget(d, target);
  assert.equal(deriveDraftConfig(target).draftVocabSize, 2048);
  assert.throws(
    () => checkDraftFitsTarget({ ...d, hiddenSize: 256, targetHiddenSize: 128 }, target),
    /hidden_size 256 .* hidden_size 128/,
  );
  assert.throws(
    () => checkDraftFitsTarget({ ...d, vocabSize: 4096 }, target),
    /vocab_size 4096 .* vocab_size 2048/,
  );
  assert.throws(
    () => checkDraftFitsTarget({ ...d, targetHiddenSize: 64 }, target),
    /target_hidden_size 64 .* hidden_size 128/,
  );
  assert.throws(() => checkDraftFitsTarget({ ...d, auxLayerIds: [0, 1, 5] }, target), /layer 5.*2 layers/);
  assert.throws(() => deriveDraftConfig(target, { draftVocabSize: 4096 }), /draft_vocab_size 4096/);
});
