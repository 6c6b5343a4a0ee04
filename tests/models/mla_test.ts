/**
 * Multi-head latent attention (lib/models/mla.ts) beyond the transformers goldens (tests/models/target_test.ts,
 * whose heads are 12 wide): the row orders that put each q head's rope part first (interleaved pairs even
 * first), and a random-weight DeepSeek-V3 at the published head widths (q LoRA 1,536, kv LoRA 512, nope 128,
 * rope 64, v 128: q/k heads of 192, v padded from 128), whose greedy decoding with the compressed cache equals
 * the uncached forward's and whose tree verification equals its plain greedy decoding.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { fromFloat32, type RawTensor, writeSafetensors } from "../../lib/io/safetensors.ts";
import { expectedWeightShapes, parseTargetConfig, targetWeightNames } from "../../lib/models/config.ts";
import { mlaQRowOrder, mlaRopeRowOrder } from "../../lib/models/mla.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { generate } from "../../lib/models/generate.ts";
import { TargetSession } from "../../lib/eval/target_infer.ts";

Deno.test("mla: q's rows per head as [rope (even first when interleaved) | nope]; k_pe's rope rows", () => {
  assert.deepEqual(mlaRopeRowOrder(6, true), [0, 2, 4, 1, 3, 5]);
  assert.deepEqual(mlaRopeRowOrder(6, false), [0, 1, 2, 3, 4, 5]);
  // 2 heads of nope 2 + rope 4, stored [n0 n1 r0 r1 r2 r3] per head.
  assert.deepEqual(mlaQRowOrder({ heads: 2, nope: 2, rope: 4, interleave: true }), [
    ...[2, 4, 3, 5, 0, 1],
    ...[8, 10, 9, 11, 6, 7],
  ]);
  assert.deepEqual(mlaQRowOrder({ heads: 1, nope: 3, rope: 2, interleave: false }), [3, 4, 0, 1, 2]);
});

/** DeepSeek-V3's attention widths on a 2-layer, 2-head target of hidden 64 (the first layer dense). */
const CONFIG = {
  architectures: ["DeepseekV3ForCausalLM"],
  model_type: "deepseek_v3",
  hidden_size: 64,
  intermediate_size: 96,
  moe_intermediate_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 2,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  n_routed_experts: 8,
  n_shared_experts: 1,
  num_experts_per_tok: 2,
  n_group: 4,
  topk_group: 2,
  first_k_dense_replace: 1,
  vocab_size: 200,
  max_position_embeddings: 256,
  rope_theta: 10000,
  rope_scaling: {
    type: "yarn",
    factor: 40,
    mscale: 1,
    mscale_all_dim: 1,
    original_max_position_embeddings: 4,
  },
  rms_norm_eps: 1e-6,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
};

/** Writes CONFIG and random weights of every tensor it implies (norms near 1) into `dir`. */
async function writeTarget(dir: string): Promise<void> {
  const cfg = parseTargetConfig(CONFIG);
  let seed = 11;
  const tensors = new Map<string, RawTensor>();
  for (const [name, shape] of expectedWeightShapes(cfg, targetWeightNames(cfg))) {
    const r = rng(seed++), n = shape.reduce((a, b) => a * b, 1);
    const norm = name.endsWith("norm.weight"), bias = name.endsWith("correction_bias");
    const scale = norm ? 0.2 : bias ? 0.05 : 1.5 / Math.sqrt(shape[shape.length - 1]);
    tensors.set(
      name,
      fromFloat32(Float32Array.from({ length: n }, () => (norm ? 1 : 0) + scale * (2 * r() - 1)), shape),
    );
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(CONFIG));
}

Deno.test({
  name: "mla: DeepSeek-V3's head widths: greedy with the compressed cache = uncached = tree verification",
  ...needsGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTarget(dir);
    const model = await TargetModel.load(gpu!, dir, { auxLayers: [0, 1, 1] });
    const prompt = [1, 17, 93, 5, 140, 66];
    try {
      assert.equal(model.config.headDim, 192);
      const [cached] = await generate(model, [prompt], { maxNewTokens: 10, eosTokenIds: [] });
      const [uncached] = await generate(model, [prompt], {
        maxNewTokens: 10,
        eosTokenIds: [],
        useCache: false,
      });
      assert.deepEqual(cached, uncached);
      assert.ok(new Set(cached).size > 2, `a varied continuation: ${cached}`);
      // Tree verification of the true continuation as a chain: each node's argmax is the next token.
      const session = new TargetSession(model, 32, 16);
      try {
        const first = await session.prefill(prompt);
        assert.equal(first.indexOf(Math.max(...first)), cached[0]);
        const chain = cached.slice(0, 5), N = chain.length, V = model.config.vocabSize;
        const mask = new Uint32Array(N * N).map((_, i) => Number(i % N <= Math.floor(i / N)));
        const tree = {
          tokens: chain,
          parents: chain.map((_, i) => i - 1),
          depths: chain.map((_, i) => i),
          mask,
          children: chain.map((_, i) => (i + 1 < N ? [i + 1] : [])),
        };
        const logits = await session.verify(tree, prompt.length);
        for (let n = 0; n < N; n++) {
          const row = logits.subarray(n * V, (n + 1) * V);
          assert.equal(row.indexOf(Math.max(...row)), cached[n + 1], `node ${n}`);
        }
      } finally {
        session.destroy();
      }
    } finally {
      model.destroy();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
