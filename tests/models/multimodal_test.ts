/**
 * Multimodal wrappers loaded as text targets (lib/models/multimodal.ts): Llama4ForConditionalGeneration's
 * text_config and `language_model.`-prefixed weights, the vision tower left unread, other wrappers refused.
 * The wrapper's forward and greedy decoding against transformers are in tests/models/target_test.ts
 * (llama4_multimodal).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu } from "../gpu.ts";
import { expectedWeightShapes, parseTargetConfig, targetWeightNames } from "../../lib/models/config.ts";
import { type RawTensor, SafetensorsCheckpoint, writeSafetensors } from "../../lib/io/safetensors.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { embeddingOverride, type RunSetup } from "../../lib/train/setup.ts";
import { DEFAULT_EMBEDDING_KEY } from "../../lib/train/config.ts";

const GOLDEN = new URL("../golden/targets/", import.meta.url).pathname;
const WRAPPED = join(GOLDEN, "llama4_multimodal");

/** Llama 4 Scout's config.json as published (the keys the parser reads; the vision config abridged). */
const SCOUT = {
  architectures: ["Llama4ForConditionalGeneration"],
  model_type: "llama4",
  boi_token_index: 200080,
  eoi_token_index: 200081,
  image_token_index: 200092,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  text_config: {
    model_type: "llama4_text",
    hidden_size: 5120,
    intermediate_size: 8192,
    intermediate_size_mlp: 16384,
    num_hidden_layers: 48,
    num_attention_heads: 40,
    num_key_value_heads: 8,
    head_dim: 128,
    num_local_experts: 16,
    num_experts_per_tok: 1,
    interleave_moe_layer_step: 1,
    attention_chunk_size: 8192,
    use_qk_norm: true,
    rope_theta: 500000,
    max_position_embeddings: 10485760,
    vocab_size: 202048,
    bos_token_id: 200000,
    eos_token_id: [200001, 200007, 200008],
    pad_token_id: 200018,
  },
  vision_config: { model_type: "llama4_vision_model", hidden_size: 1408, num_hidden_layers: 34 },
};

Deno.test("multimodal: Llama4ForConditionalGeneration parses its text_config, weights under language_model.", () => {
  const c = parseTargetConfig(SCOUT);
  assert.equal(c.architecture, "Llama4ForCausalLM");
  assert.equal(c.weightPrefix, "language_model.");
  assert.deepEqual([c.hiddenSize, c.numLayers, c.vocabSize, c.moe!.experts], [5120, 48, 202048, 16]);
  assert.deepEqual([c.bosTokenId, c.eosTokenIds, c.padTokenId], [200000, [200001, 200007, 200008], 200018]);
  assert.equal(c.torchDtype, "bfloat16"); // from the wrapper: this text_config has none
  const names = targetWeightNames(c);
  assert.equal(names.embed, "language_model.model.embed_tokens.weight");
  assert.equal(names.lmHead, "language_model.lm_head.weight");
  assert.equal(names.finalNorm, "language_model.model.norm.weight");
  assert.equal(names.layers[0].moe!.router, "language_model.model.layers.0.feed_forward.router.weight");
  const shapes = expectedWeightShapes(c, names);
  assert.deepEqual(shapes.get("language_model.model.layers.47.feed_forward.experts.down_proj"), [
    16,
    8192,
    5120,
  ]);
  assert.ok([...shapes.keys()].every((n) => n.startsWith("language_model.")));
  // The unwrapped text model names its weights as before.
  const text = parseTargetConfig({ ...SCOUT.text_config, architectures: ["Llama4ForCausalLM"] });
  assert.equal(text.weightPrefix, "");
  assert.equal(targetWeightNames(text).embed, "model.embed_tokens.weight");
  // text_config's errors name it.
  assert.throws(
    () => parseTargetConfig({ ...SCOUT, text_config: { ...SCOUT.text_config, hidden_size: undefined } }),
    /^ConfigError: config\.json: text_config\.hidden_size is missing$/,
  );
});

Deno.test("multimodal: other wrappers, a wrapper without text_config and a quantized one are refused", () => {
  for (const arch of ["Gemma3ForConditionalGeneration", "LlavaForConditionalGeneration"]) {
    assert.throws(
      () => parseTargetConfig({ ...SCOUT, architectures: [arch] }, "m/config.json"),
      (e: Error) => {
        assert.match(
          e.message,
          new RegExp(
            `^m/config\\.json: the multimodal architecture ${arch} is not supported; supported: ` +
              `LlamaForCausalLM, .*Llama4ForCausalLM, .*and the text model of Llama4ForConditionalGeneration$`,
          ),
        );
        assert.equal(e.name, "ConfigError");
        assert.ok(!e.message.includes("\n"));
        return true;
      },
    );
  }
  assert.throws(
    () => parseTargetConfig({ ...SCOUT, text_config: undefined }),
    /config\.json: Llama4ForConditionalGeneration has no text_config object/,
  );
  assert.throws(
    () => parseTargetConfig({ ...SCOUT, quantization_config: { quant_method: "fbgemm_fp8" } }),
    /quantization_config\.quant_method "fbgemm_fp8" is not supported for Llama4ForConditionalGeneration/,
  );
});

Deno.test({
  name: "multimodal: the wrapped Llama 4 gives the text model's logits bit for bit, its vision tower unread",
  ...needsGpu,
}, async () => {
  // A copy of the wrapper whose vision and projector tensors are all NaN: reading (or checking) any of them
  // would fail the load's finiteness check.
  const dir = await Deno.makeTempDir({ prefix: "eaglet-llama4-mm-" });
  const ckpt = await SafetensorsCheckpoint.open(WRAPPED);
  try {
    const tensors: Array<[string, RawTensor]> = [];
    for (const name of ckpt.names) {
      const t = await ckpt.read(name);
      if (!name.startsWith("language_model.")) t.bytes.fill(0xff); // 0xffff: a NaN in bf16
      tensors.push([name, t]);
    }
    await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
    await Deno.copyFile(join(WRAPPED, "config.json"), join(dir, "config.json"));
    const ids = Int32Array.from({ length: 11 }, (_, i) => 3 + (i * 37) % 250);
    const logits = async (path: string) => {
      const model = await TargetModel.load(gpu!, path, { onMessage: () => {} });
      const f = await model.forward(1, ids.length, { aux: true, logits: true });
      try {
        f.run(ids, [ids.length]);
        return [await f.logits!.readFloat(), await f.aux!.readFloat()];
      } finally {
        f.destroy();
        model.destroy();
      }
    };
    const [want, wantAux] = await logits(join(GOLDEN, "llama4"));
    const [got, gotAux] = await logits(dir);
    assert.deepEqual(got, want);
    assert.deepEqual(gotAux, wantAux);
  } finally {
    ckpt.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "multimodal: --embedding-key on a wrapped target", ...needsGpu }, async () => {
  const targetConfig = parseTargetConfig(JSON.parse(await Deno.readTextFile(join(WRAPPED, "config.json"))));
  const setup = { targetDir: WRAPPED, targetConfig, draftConfig: { hiddenSize: 32 } } as unknown as RunSetup;
  const notes: string[] = [];
  // The default key and the prefixed one both share the target's own embedding (no tensor of the draft's own).
  assert.equal(await embeddingOverride(gpu!, setup, DEFAULT_EMBEDDING_KEY, (m) => notes.push(m)), null);
  assert.match(
    notes.join("\n"),
    /the draft embedding is the target's language_model\.model\.embed_tokens\.weight/,
  );
  assert.equal(
    await embeddingOverride(gpu!, setup, "language_model.model.embed_tokens.weight", () => {}),
    null,
  );
  // Another tensor of the language model of the right shape is read.
  const head = await embeddingOverride(gpu!, setup, "language_model.lm_head.weight", () => {});
  try {
    assert.deepEqual(head!.shape, [256, 32]);
  } finally {
    head?.destroy();
  }
  await assert.rejects(
    embeddingOverride(gpu!, setup, "model.embed_tokens.weight.nope", () => {}),
    /--embedding-key model\.embed_tokens\.weight\.nope: the target checkpoint .* has no such tensor/,
  );
});
