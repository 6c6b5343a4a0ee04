import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu } from "../gpu.ts";
import { Golden } from "../golden.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { Generator } from "../../lib/models/generate.ts";
import { vocabStatsCpu } from "../../lib/ops/vocab_stats.ts";
import { TargetSession } from "../../lib/eval/target_infer.ts";
import { kvRowShapes } from "../../lib/models/target_memory.ts";

const GOLDEN_DIR = new URL("../golden/targets/", import.meta.url).pathname;

function goldenOf(arch: string): Golden {
  return Golden.load(`targets/${arch}/golden`);
}

/** Rows of a [B, T, ...] golden restricted to the valid positions of each sequence. */
function validRows(data: Float32Array, lengths: number[], T: number, width: number): number[] {
  const out: number[] = [];
  lengths.forEach((len, b) => {
    for (let t = 0; t < len; t++) out.push(...data.subarray((b * T + t) * width, (b * T + t + 1) * width));
  });
  return out;
}

// The last three have sliding windows (6, 5, 5 tokens) shorter than the golden batch's 11 tokens.
const ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "phi3_partial", "phi3_longrope", "gemma3"];
// Mixture-of-experts targets: Qwen3-MoE with and without renormalised routing and dense layers among the
// sparse ones, Qwen2-MoE with its gated shared expert, GPT-OSS (attention sinks, alternating windows of 4, YaRN,
// biased router and experts, clamped SwiGLU) with bf16 experts and with MXFP4 experts, Llama 4 (NoPE layers
// with temperature tuning, chunked attention of 4 tokens, L2 q/k norm, interleaved RoPE, input-scaled experts),
// DeepSeek-V3 (multi-head latent attention with q LoRA, interleaved RoPE on its rope part, YaRN's mscale² in the
// softmax scale; a dense first layer, then grouped sigmoid routing with the correction bias and shared expert)
// and its plain variant (q_proj without LoRA, rotate-half RoPE, v as wide as q/k, YaRN attention factor ≠ 1,
// unnormalised routing, two shared experts), and Llama 4 as published (Llama4ForConditionalGeneration).
const MOE = [
  "qwen3_moe",
  "qwen3_moe_unnormed",
  "qwen2_moe",
  "gpt_oss",
  "gpt_oss_mxfp4",
  "llama4",
  "deepseek_v3",
  "deepseek_v3_plain",
  "llama4_multimodal",
];
for (const arch of [...ARCHS, "gemma3_window", "mistral_window", "qwen2_window", ...MOE]) {
  Deno.test({
    name: `target ${arch}: forward matches transformers (aux states, final hidden, logits)`,
    ...needsGpu,
  }, async () => {
    const g = gpu!;
    const golden = goldenOf(arch);
    const [B, T] = golden.shape("input_ids");
    const ids = Int32Array.from(golden.ints("input_ids"));
    const mask = golden.ints("attention_mask");
    const lengths = Array.from(
      { length: B },
      (_, b) => mask.slice(b * T, (b + 1) * T).reduce((a, x) => a + x, 0),
    );
    const model = await TargetModel.load(g, `${GOLDEN_DIR}${arch}`, { auxLayers: [1, 3, 4] });
    const cfg = model.config;
    const H = cfg.hiddenSize, V = cfg.vocabSize;
    const subset = Int32Array.from({ length: 40 }, (_, i) => i * 5 + 3);
    const f = await model.forward(B, T, {
      aux: true,
      finalHidden: true,
      logits: true,
      subsetIds: subset,
      vocabStats: true,
      vocabChunk: 100,
    });
    f.run(ids, lengths);
    const layerOut = golden.f32("layer_outputs"); // [L, B, T, H]
    const aux = await f.aux!.readFloat();
    const tol = { atol: 2e-4, rtol: 2e-3 };
    model.auxLayers.forEach((layer, slot) => {
      const want = layerOut.subarray(layer * B * T * H, (layer + 1) * B * T * H);
      const got = new Float32Array(B * T * H);
      for (let r = 0; r < B * T; r++) {
        got.set(aux.subarray(r * 3 * H + slot * H, r * 3 * H + (slot + 1) * H), r * H);
      }
      assertClose(
        validRows(got, lengths, T, H),
        validRows(want, lengths, T, H),
        `${arch} aux layer ${layer}`,
        tol,
      );
    });
    assertClose(
      validRows(await f.finalHidden!.readFloat(), lengths, T, H),
      validRows(golden.f32("final_hidden"), lengths, T, H),
      `${arch} final hidden`,
      tol,
    );
    const logits = golden.f32("logits");
    assertClose(
      validRows(await f.logits!.readFloat(), lengths, T, V),
      validRows(logits, lengths, T, V),
      `${arch} logits`,
      tol,
    );
    const sub = await f.subsetLogits!.readFloat();
    const wantSub = Array.from(
      { length: B * T * subset.length },
      (_, i) => logits[Math.floor(i / subset.length) * V + subset[i % subset.length]],
    );
    assertClose(
      validRows(sub, lengths, T, subset.length),
      validRows(Float32Array.from(wantSub), lengths, T, subset.length),
      `${arch} subset logits`,
      tol,
    );
    const stats = vocabStatsCpu(logits, B * T, V);
    const ms = await f.vocabMaxSum!.readFloat();
    const argmax = await f.vocabArgmax!.read();
    const lse = Array.from({ length: B * T }, (_, r) => ms[2 * r] + Math.log(ms[2 * r + 1]));
    assertClose(
      validRows(Float32Array.from(lse), lengths, T, 1),
      validRows(Float32Array.from(stats.logSumExp), lengths, T, 1),
      `${arch} log-sum-exp`,
      tol,
    );
    assert.deepEqual(
      validRows(Float32Array.from(argmax), lengths, T, 1),
      validRows(Float32Array.from(stats.argmax), lengths, T, 1),
    );
    f.destroy();
    model.destroy();
  });
}

Deno.test({ name: "target: row-split embedding and lm_head give the same logits", ...needsGpu }, async () => {
  const g = gpu!;
  const golden = goldenOf("llama");
  const [B, T] = golden.shape("input_ids");
  const ids = Int32Array.from(golden.ints("input_ids"));
  const lengths = [T, 7];
  // 256 rows of 32 bf16 values = 16 KiB per block: the 256-row vocabulary fits one block, so force 2 with
  // a smaller vocabulary block size.
  const model = await TargetModel.load(g, `${GOLDEN_DIR}llama`, {
    auxLayers: [1, 3, 4],
    maxBlockBytes: 8192,
  });
  assert.ok(model.embed.blocks.length >= 1);
  const f = await model.forward(B, T, { logits: true });
  f.run(ids, lengths);
  const V = model.config.vocabSize;
  assertClose(
    validRows(await f.logits!.readFloat(), lengths, T, V),
    validRows(golden.f32("logits"), lengths, T, V),
    "split logits",
    { atol: 2e-4, rtol: 2e-3 },
  );
  f.destroy();
  model.destroy();
});

Deno.test({
  name: "target: LongRoPE tables cover the original context; beyond it is refused by name",
  ...needsGpu,
}, async () => {
  const model = await TargetModel.load(gpu!, `${GOLDEN_DIR}phi3_longrope`);
  try {
    assert.equal(model.maxPositions, 16);
    await assert.rejects(
      model.forward(1, 17, { logits: true }),
      /positions up to 17 exceed the 16 the RoPE table was built for \(the original context of its longrope/,
    );
  } finally {
    model.destroy();
  }
});

// Targets whose sliding window (6, 5, 5) is shorter than the 7 + 8 tokens (the KV-cache decode applies it),
// and the MoE targets (routing decided per decoded token).
for (const arch of ["gemma3", "gemma3_window", "mistral_window", "qwen2_window", ...MOE]) {
  Deno.test({
    name:
      `target ${arch}: greedy continuation equals transformers' generate(), with and without the KV cache`,
    ...needsGpu,
  }, async () => {
    const golden = goldenOf(arch);
    const prompt = Array.from(golden.ints("input_ids").slice(0, 7));
    const model = await TargetModel.load(gpu!, `${GOLDEN_DIR}${arch}`, { auxLayers: [1, 3, 4] });
    const g = new Generator(model);
    try {
      const want = Array.from(golden.ints("greedy_ids"));
      for (const useCache of [true, false]) {
        const [got] = await g.generate([prompt], { maxNewTokens: want.length, eosTokenIds: [], useCache });
        assert.deepEqual(got, want, `useCache ${useCache}`);
      }
    } finally {
      g.destroy();
      model.destroy();
    }
  });
}

// Bindings under which every projection's experts come in several blocks (MXFP4 experts are 4 times smaller).
for (
  const [arch, binding] of [
    ["qwen2_moe", 4096],
    ["gpt_oss", 4096],
    ["gpt_oss_mxfp4", 1024],
    ["llama4", 4096],
    ["deepseek_v3", 4096],
  ] as const
) {
  Deno.test({
    name:
      `target ${arch}: experts in blocks of a small binding give the unsplit forward's logits bit for bit`,
    ...needsGpu,
  }, async () => {
    const golden = goldenOf(arch);
    const ids = golden.ints("input_ids"), mask = golden.ints("attention_mask");
    const [B, T] = golden.shape("input_ids");
    const lengths = Array.from(
      { length: B },
      (_, b) => mask.slice(b * T, (b + 1) * T).reduce((a, m) => a + m, 0),
    );
    const logits = async (maxBlockBytes?: number) => {
      const model = await TargetModel.load(gpu!, `${GOLDEN_DIR}${arch}`, {
        auxLayers: [1, 3, 4],
        maxBlockBytes,
      });
      try {
        const moe = model.layers.find((l) => l.moe)!.moe!;
        if (maxBlockBytes) assert.ok((moe.gateUp ?? moe.gate).length > 1 && moe.down.length > 1);
        const f = await model.forward(B, T, { logits: true });
        f.run(Int32Array.from(ids), lengths);
        const out = await f.logits!.read();
        f.destroy();
        return out;
      } finally {
        model.destroy();
      }
    };
    assert.deepEqual(await logits(binding), await logits());
  });
}

Deno.test({
  name: "target deepseek_v3: its KV caches hold the compressed latent and k_pe of each position",
  ...needsGpu,
}, async () => {
  const model = await TargetModel.load(gpu!, `${GOLDEN_DIR}deepseek_v3`, { auxLayers: [1, 3, 4] });
  const session = new TargetSession(model, 32, 16);
  try {
    const m = model.config.mla!;
    // Per position and layer: kv_lora_rank + qk_rope_head_dim values (12 + 4), not nh·(nope + rope + v).
    assert.deepEqual(kvRowShapes(model.config), { k: [1, m.ropeDim], v: [1, m.kvLoraRank] });
    assert.deepEqual([session.k[0].shape, session.v[7].shape], [[32, 1, 4], [32, 1, 12]]);
    // The cache the prefill wrote is the normed latent of each prompt position (kv_a_layernorm's output).
    const prompt = Array.from(goldenOf("deepseek_v3").ints("input_ids").slice(0, 7));
    await session.prefill(prompt);
    const latent = (await session.v[0].readFloat()).subarray(0, 7 * m.kvLoraRank);
    const norm = await model.layers[0].kvANorm!.readFloat();
    for (let t = 0; t < 7; t++) {
      const row = latent.subarray(t * m.kvLoraRank, (t + 1) * m.kvLoraRank);
      const ms = row.reduce((a, x, i) => a + (x / norm[i]) ** 2, 0) / m.kvLoraRank;
      assert.ok(Math.abs(ms - 1) < 1e-3, `position ${t}: mean square of latent / weight ${ms}`);
    }
  } finally {
    session.destroy();
    model.destroy();
  }
});
