import assert from "node:assert/strict";
import { join } from "node:path";
import {
  checkAuxLayers,
  ConfigError,
  defaultAuxLayers,
  expectedWeightShapes,
  loadTargetConfig,
  parseRopeScaling,
  parseTargetConfig,
  resolveWeightNames,
  type TargetConfig,
  targetWeightNames,
} from "../../lib/models/config.ts";
import { SafetensorsCheckpoint } from "../../lib/io/safetensors.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";

const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;
const haveTinystories = (() => {
  try {
    Deno.statSync(TINYSTORIES);
    return true;
  } catch {
    console.log(`skipping tinystories-656K tests: ${TINYSTORIES} not found`);
    return false;
  }
})();

// Abridged copies of the published config.json files (the fields that matter).
const LLAMA31_8B = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  vocab_size: 128256,
};

const QWEN25_7B = {
  architectures: ["Qwen2ForCausalLM"],
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: "silu",
  hidden_size: 3584,
  intermediate_size: 18944,
  max_position_embeddings: 32768,
  max_window_layers: 28,
  model_type: "qwen2",
  num_attention_heads: 28,
  num_hidden_layers: 28,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 131072,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  use_sliding_window: false,
  vocab_size: 152064,
};

const QWEN3_06B = {
  architectures: ["Qwen3ForCausalLM"],
  attention_bias: false,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: "silu",
  hidden_size: 1024,
  intermediate_size: 3072,
  max_position_embeddings: 40960,
  model_type: "qwen3",
  num_attention_heads: 16,
  num_hidden_layers: 28,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  use_sliding_window: false,
  vocab_size: 151936,
};

const MISTRAL_7B = {
  architectures: ["MistralForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: "mistral",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  vocab_size: 32000,
};

/** A config with some fields replaced (undefined deletes). */
function edit(base: Record<string, unknown>, changes: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base, ...changes };
  for (const [k, v] of Object.entries(changes)) if (v === undefined) delete out[k];
  return out;
}

Deno.test("config: Llama 3.1 with llama3 rope scaling and several EOS ids", () => {
  const c = parseTargetConfig(LLAMA31_8B);
  assert.equal(c.architecture, "LlamaForCausalLM");
  assert.equal(c.headDim, 128);
  assert.equal(c.numKvHeads, 8);
  assert.equal(c.ropeTheta, 500000);
  assert.deepEqual(c.ropeScaling, {
    type: "llama3",
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  });
  assert.deepEqual(c.eosTokenIds, [128001, 128008, 128009]);
  assert.equal(c.bosTokenId, 128000);
  assert.equal(c.padTokenId, null);
  assert.equal(c.torchDtype, "bfloat16");
  assert.deepEqual([c.qkvBias, c.oBias, c.mlpBias, c.qkNorm, c.tieWordEmbeddings], [
    false,
    false,
    false,
    false,
    false,
  ]);
  assert.equal(c.slidingWindow, null);
  // attention_bias on Llama puts biases on q, k, v and o.
  const b = parseTargetConfig(edit(LLAMA31_8B, { attention_bias: true, mlp_bias: true }));
  assert.deepEqual([b.qkvBias, b.oBias, b.mlpBias], [true, true, true]);
});

Deno.test("config: Qwen2 has qkv biases; its sliding window is off unless use_sliding_window", () => {
  const c = parseTargetConfig(QWEN25_7B);
  assert.deepEqual([c.qkvBias, c.oBias, c.qkNorm], [true, false, false]);
  assert.equal(c.headDim, 128);
  assert.equal(c.slidingWindow, null);
  assert.deepEqual(c.eosTokenIds, [151645]);
  const windowed = parseTargetConfig(edit(QWEN25_7B, { use_sliding_window: true }));
  assert.equal(windowed.slidingWindow, 131072);
  // Qwen2Config: the window applies from max_window_layers (28 = every layer of this 28-layer model) on.
  assert.ok(windowed.windowLayers!.every((w) => !w));
  const later = parseTargetConfig(edit(QWEN25_7B, { use_sliding_window: true, max_window_layers: 20 }));
  assert.deepEqual(later.windowLayers!.map((w, i) => w ? i : -1).filter((i) => i >= 0)[0], 20);
});

Deno.test("config: Qwen3 has q/k norms and an explicit head_dim that need not divide hidden", () => {
  const c = parseTargetConfig(QWEN3_06B);
  assert.deepEqual([c.qkNorm, c.qkvBias, c.tieWordEmbeddings], [true, false, true]);
  assert.equal(c.headDim, 128);
  assert.equal(c.hiddenSize, 1024);
  assert.equal(c.maxPositionEmbeddings, 40960);
  // Qwen3Config's default head_dim is 128, not hidden / heads.
  assert.equal(parseTargetConfig(edit(QWEN3_06B, { head_dim: undefined })).headDim, 128);
});

Deno.test("config: Mistral's sliding window (default 4096 when absent, null turns it off)", () => {
  assert.equal(parseTargetConfig(MISTRAL_7B).slidingWindow, 4096);
  assert.equal(parseTargetConfig(edit(MISTRAL_7B, { sliding_window: undefined })).slidingWindow, 4096);
  assert.equal(parseTargetConfig(edit(MISTRAL_7B, { sliding_window: null })).slidingWindow, null);
  assert.equal(parseTargetConfig(MISTRAL_7B).qkvBias, false);
});

/** Phi-3-mini-4k-instruct's config.json (the fields Eaglet reads). */
const PHI3_MINI = {
  architectures: ["Phi3ForCausalLM"],
  model_type: "phi3",
  hidden_size: 3072,
  intermediate_size: 8192,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  vocab_size: 32064,
  max_position_embeddings: 4096,
  original_max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  rope_scaling: null,
  sliding_window: 2047,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 32000,
};

Deno.test("config: Phi-3 reads fused qkv_proj / gate_up_proj rows, a partial RoPE width and LongRoPE", () => {
  const cfg = parseTargetConfig(PHI3_MINI);
  assert.equal(cfg.fusedProjections, true);
  assert.equal(cfg.slidingWindow, 2047);
  assert.equal(cfg.qkvBias, false);
  const shapes = expectedWeightShapes(cfg, targetWeightNames(cfg));
  assert.deepEqual(shapes.get("model.layers.0.self_attn.qkv_proj.weight"), [3 * 3072, 3072]);
  assert.deepEqual(shapes.get("model.layers.0.mlp.gate_up_proj.weight"), [2 * 8192, 3072]);
  const l0 = targetWeightNames(cfg).layers[0];
  assert.deepEqual([l0.k, l0.up], [
    "model.layers.0.self_attn.qkv_proj.weight#rows=3072:6144",
    "model.layers.0.mlp.gate_up_proj.weight#rows=8192:16384",
  ]);
  assert.equal(cfg.rotaryDim, 96);
  // Phi-4-mini: RoPE over the first 0.75 of each 128-wide head (top level, or Transformers 5's rope_parameters).
  const phi4mini = {
    ...PHI3_MINI,
    num_attention_heads: 24,
    num_key_value_heads: 8,
    partial_rotary_factor: 0.75,
  };
  assert.equal(parseTargetConfig(phi4mini).rotaryDim, 96);
  assert.equal(
    parseTargetConfig(edit(phi4mini, {
      partial_rotary_factor: undefined,
      rope_parameters: { rope_type: "default", rope_theta: 10000, partial_rotary_factor: 0.75 },
    })).rotaryDim,
    96,
  );
  assert.throws(
    () => parseTargetConfig(edit(LLAMA31_8B, { partial_rotary_factor: 0.5 }), "llama/config.json"),
    /llama\/config\.json: partial_rotary_factor 0\.5 is not supported for LlamaForCausalLM/,
  );
  // Phi-3-mini-128k: LongRoPE ("su" in older configs), factor = max / original = 32 for the attention factor.
  const long = parseTargetConfig(edit(PHI3_MINI, {
    max_position_embeddings: 131072,
    rope_scaling: { type: "su", short_factor: [1, 1.5], long_factor: [4, 8] },
  }));
  assert.deepEqual(long.ropeScaling, {
    type: "longrope",
    shortFactor: [1, 1.5],
    longFactor: [4, 8],
    originalMaxPositionEmbeddings: 4096,
    factor: 32,
    attentionFactor: null,
  });
  assert.throws(
    () =>
      parseTargetConfig(
        edit(PHI3_MINI, { rope_scaling: { type: "longrope", short_factor: "x", long_factor: [] } }),
      ),
    /rope_scaling\.short_factor must be a list of positive numbers/,
  );
});

Deno.test("config: rope scaling forms (legacy type, linear, dynamic, yarn, Transformers-5 rope_parameters)", () => {
  const base = edit(LLAMA31_8B, { rope_scaling: undefined });
  assert.deepEqual(parseTargetConfig(base).ropeScaling, { type: "default" });
  assert.deepEqual(
    parseTargetConfig(edit(base, { rope_scaling: { type: "linear", factor: 2 } })).ropeScaling,
    {
      type: "linear",
      factor: 2,
    },
  );
  assert.deepEqual(
    parseTargetConfig(edit(base, { rope_scaling: { rope_type: "dynamic", factor: 4 } })).ropeScaling,
    { type: "dynamic", factor: 4, originalMaxPositionEmbeddings: 131072 },
  );
  assert.deepEqual(
    parseTargetConfig(edit(QWEN3_06B, {
      rope_scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 32768 },
    })).ropeScaling,
    {
      type: "yarn",
      factor: 4,
      originalMaxPositionEmbeddings: 32768,
      betaFast: 32,
      betaSlow: 1,
      mscale: null,
      mscaleAllDim: null,
      attentionFactor: null,
      truncate: true,
    },
  );
  const t5 = parseTargetConfig(edit(base, {
    rope_theta: undefined,
    rope_parameters: {
      rope_type: "llama3",
      rope_theta: 500000,
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
  }));
  assert.equal(t5.ropeTheta, 500000);
  assert.equal(t5.ropeScaling.type, "llama3");
  const t5default = parseTargetConfig(
    edit(base, { rope_theta: undefined, rope_parameters: { rope_type: "default", rope_theta: 1e6 } }),
  );
  assert.equal(t5default.ropeTheta, 1e6);
  assert.deepEqual(t5default.ropeScaling, { type: "default" });
  assert.equal(parseTargetConfig(edit(base, { rope_theta: undefined })).ropeTheta, 10000);
});

Deno.test("config: parseRopeScaling reads a bare rope_scaling object as parseTargetConfig does", () => {
  assert.deepEqual(parseRopeScaling(undefined, 4096), { type: "default" });
  assert.deepEqual(parseRopeScaling(null, 4096), { type: "default" });
  assert.deepEqual(parseRopeScaling({ rope_type: "default" }, 4096), { type: "default" });
  assert.deepEqual(
    parseRopeScaling(LLAMA31_8B.rope_scaling, LLAMA31_8B.max_position_embeddings),
    parseTargetConfig(LLAMA31_8B).ropeScaling,
  );
  // absent optional fields take transformers' defaults; original_max_position_embeddings defaults to the
  // max_position_embeddings given
  assert.deepEqual(parseRopeScaling({ type: "dynamic", factor: 2 }, 4096), {
    type: "dynamic",
    factor: 2,
    originalMaxPositionEmbeddings: 4096,
  });
  assert.deepEqual(parseRopeScaling({ rope_type: "yarn", factor: 4 }, 4096), {
    type: "yarn",
    factor: 4,
    originalMaxPositionEmbeddings: 4096,
    betaFast: 32,
    betaSlow: 1,
    mscale: null,
    mscaleAllDim: null,
    attentionFactor: null,
    truncate: true,
  });
  assert.deepEqual(
    parseRopeScaling({
      rope_type: "yarn",
      factor: 40,
      original_max_position_embeddings: 4096,
      beta_fast: 16,
      beta_slow: 2,
      mscale: 1,
      mscale_all_dim: 0.707,
      attention_factor: 1.3,
      truncate: false,
    }, 163840),
    {
      type: "yarn",
      factor: 40,
      originalMaxPositionEmbeddings: 4096,
      betaFast: 16,
      betaSlow: 2,
      mscale: 1,
      mscaleAllDim: 0.707,
      attentionFactor: 1.3,
      truncate: false,
    },
  );
  // errors name the file and the field given
  const cases: Array<[unknown, RegExp]> = [
    [{ type: "linear" }, /^m\/config\.json: rope_parameters\.factor is missing$/],
    [{ rope_type: "mrope", factor: 2 }, /^m\/config\.json: rope_parameters type "mrope" is not supported/],
    [[1, 2], /^m\/config\.json: rope_parameters must be an object, got \[1,2\]$/],
    [{ rope_type: "yarn", factor: 2, truncate: "no" }, /rope_parameters\.truncate must be true or false/],
    [{
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 4,
      high_freq_factor: 1,
      original_max_position_embeddings: 8,
    }, /rope_parameters\.high_freq_factor must not be below low_freq_factor/],
  ];
  for (const [raw, message] of cases) {
    assert.throws(
      () => parseRopeScaling(raw, 4096, "m/config.json", "rope_parameters"),
      (e) => e instanceof ConfigError && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("config: errors name config.json and the field", () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [
      edit(LLAMA31_8B, { architectures: ["GPT2LMHeadModel"] }),
      /config\.json: architecture GPT2LMHeadModel is not supported; supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM/,
    ],
    [edit(LLAMA31_8B, { architectures: undefined }), /config\.json: architectures is missing/],
    [edit(LLAMA31_8B, { hidden_size: undefined }), /config\.json: hidden_size is missing/],
    [edit(LLAMA31_8B, { num_hidden_layers: 0 }), /config\.json: num_hidden_layers must be at least 1, got 0/],
    [edit(LLAMA31_8B, { vocab_size: "big" }), /config\.json: vocab_size must be an integer, got "big"/],
    [
      edit(LLAMA31_8B, { num_attention_heads: 30 }),
      /config\.json: hidden_size 4096 is not divisible by num_attention_heads 30/,
    ],
    [
      edit(LLAMA31_8B, { num_key_value_heads: 5 }),
      /config\.json: num_attention_heads 32 is not a multiple of num_key_value_heads 5/,
    ],
    [edit(QWEN3_06B, { head_dim: 63 }), /config\.json: head_dim 63 must be even/],
    [edit(LLAMA31_8B, { hidden_act: "gelu" }), /config\.json: hidden_act "gelu" is not supported/],
    [edit(LLAMA31_8B, { rms_norm_eps: -1 }), /config\.json: rms_norm_eps must be positive/],
    [
      edit(LLAMA31_8B, { rope_scaling: { rope_type: "mrope", factor: 2 } }),
      /config\.json: rope_scaling type "mrope" is not supported/,
    ],
    [
      edit(LLAMA31_8B, {
        rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4 },
      }),
      /config\.json: rope_scaling\.original_max_position_embeddings is missing/,
    ],
    [edit(LLAMA31_8B, { rope_scaling: { type: "linear" } }), /config\.json: rope_scaling\.factor is missing/],
    [edit(LLAMA31_8B, { eos_token_id: [1, "x"] }), /config\.json: eos_token_id must be a token id or a list/],
  ];
  for (const [json, message] of cases) {
    assert.throws(
      () => parseTargetConfig(json),
      (e) => e instanceof ConfigError && message.test(e.message),
      String(message),
    );
  }
  assert.throws(() => parseTargetConfig([]), /config\.json: not a JSON object/);
});

Deno.test("config: weight names per architecture, with shapes checked", () => {
  const tiny = (json: Record<string, unknown>) =>
    parseTargetConfig(edit(json, {
      hidden_size: 16,
      intermediate_size: 24,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 32,
      head_dim: json === QWEN3_06B ? 8 : undefined,
    }));
  const store = (cfg: TargetConfig, drop: string[] = []) => {
    const names = targetWeightNames(cfg);
    const shapes = expectedWeightShapes(cfg, names);
    for (const d of drop) shapes.delete(d);
    return shapes;
  };
  for (
    const [json, extra] of [
      [LLAMA31_8B, []],
      [MISTRAL_7B, []],
      [QWEN25_7B, ["model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.v_proj.bias"]],
      [QWEN3_06B, ["model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"]],
    ] as const
  ) {
    const cfg = tiny(json);
    const shapes = store(cfg);
    const names = resolveWeightNames(cfg, (n) => shapes.has(n), (n) => shapes.get(n)!);
    assert.equal(names.layers.length, 2);
    assert.equal(names.layers[1].down, "model.layers.1.mlp.down_proj.weight");
    for (const e of extra) assert.ok(shapes.has(e), `${cfg.architecture}: ${e}`);
    assert.equal(shapes.get("model.layers.0.self_attn.k_proj.weight")!.join(), `${2 * cfg.headDim},16`);
    assert.equal(shapes.get("model.layers.0.self_attn.o_proj.weight")!.join(), `16,${4 * cfg.headDim}`);
    const biasCount = [...shapes.keys()].filter((k) => k.endsWith(".bias")).length;
    assert.equal(biasCount, cfg.qkvBias ? 6 : 0, cfg.architecture);
    if (cfg.tieWordEmbeddings) assert.equal(names.lmHead, "model.embed_tokens.weight");
    else assert.equal(names.lmHead, "lm_head.weight");
  }
  // Tied, but only lm_head.weight stored: the embedding is read from it.
  const tied = tiny(QWEN3_06B);
  const onlyHead = store(tied, ["model.embed_tokens.weight"]);
  onlyHead.set("lm_head.weight", [32, 16]);
  const tiedNames = resolveWeightNames(tied, (n) => onlyHead.has(n), (n) => onlyHead.get(n)!);
  assert.deepEqual([tiedNames.embed, tiedNames.lmHead], ["lm_head.weight", "lm_head.weight"]);
  onlyHead.delete("lm_head.weight");
  assert.throws(
    () => resolveWeightNames(tied, (n) => onlyHead.has(n), (n) => onlyHead.get(n)!),
    /checkpoint: neither model\.embed_tokens\.weight nor lm_head\.weight is stored/,
  );

  const cfg = tiny(LLAMA31_8B);
  const shapes = store(cfg);
  const has = (n: string) => shapes.has(n);
  shapes.delete("model.layers.1.mlp.up_proj.weight");
  assert.throws(
    () => resolveWeightNames(cfg, has, (n) => shapes.get(n)!, "/m"),
    /\/m: tensor model\.layers\.1\.mlp\.up_proj\.weight is missing \(LlamaForCausalLM\)/,
  );
  shapes.set("model.layers.1.mlp.up_proj.weight", [16, 24]);
  assert.throws(
    () => resolveWeightNames(cfg, has, (n) => shapes.get(n)!, "/m"),
    /\/m: tensor model\.layers\.1\.mlp\.up_proj\.weight has shape \[16,24\], config\.json implies \[24,16\]/,
  );
  shapes.set("model.layers.1.mlp.up_proj.weight", [24, 16]);
  shapes.delete("lm_head.weight");
  assert.throws(
    () => resolveWeightNames(cfg, has, (n) => shapes.get(n)!, "/m"),
    /lm_head\.weight is missing and .*tie_word_embeddings is false/,
  );
});

Deno.test(
  { name: "config: tinystories-656K (tied, only lm_head.weight stored)", ignore: !haveTinystories },
  async () => {
    const cfg = await loadTargetConfig(join(TINYSTORIES, "config.json"));
    assert.equal(cfg.architecture, "LlamaForCausalLM");
    assert.deepEqual(
      [
        cfg.hiddenSize,
        cfg.intermediateSize,
        cfg.numLayers,
        cfg.numHeads,
        cfg.numKvHeads,
        cfg.headDim,
        cfg.vocabSize,
      ],
      [128, 384, 2, 8, 4, 16, 2048],
    );
    assert.equal(cfg.rmsNormEps, 1e-6);
    assert.equal(cfg.tieWordEmbeddings, true);
    assert.deepEqual([cfg.bosTokenId, cfg.eosTokenIds, cfg.padTokenId], [1, [2], null]);
    const ckpt = await SafetensorsCheckpoint.open(TINYSTORIES);
    try {
      const names = resolveWeightNames(cfg, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, TINYSTORIES);
      assert.equal(names.embed, "lm_head.weight");
      assert.equal(names.lmHead, "lm_head.weight");
      assert.equal(names.layers[1].q, "model.layers.1.self_attn.q_proj.weight");
    } finally {
      ckpt.close();
    }
    const aux = defaultAuxLayers(cfg.numLayers);
    assert.deepEqual(aux.layers, [0, 1, 1]);
    assert.match(aux.message!, /target has 2 layers, too few .* using \[0,1,1\]/);
    await assert.rejects(() => loadTargetConfig(join(TINYSTORIES, "nope.json")), /nope\.json: no such file/);
  },
);

Deno.test("config: default aux layers [1, N/2-1, N-4], and the choice for shallow targets", () => {
  assert.deepEqual(defaultAuxLayers(32), { layers: [1, 15, 28], message: null }); // Llama-3.1-8B
  assert.deepEqual(defaultAuxLayers(36), { layers: [1, 17, 32], message: null }); // Qwen3-8B
  assert.deepEqual(defaultAuxLayers(28).layers, [1, 13, 24]);
  assert.deepEqual(defaultAuxLayers(7), { layers: [1, 2, 3], message: null });
  const expected: Record<number, number[]> = {
    6: [0, 3, 5],
    5: [0, 2, 4],
    4: [0, 2, 3],
    3: [0, 1, 2],
    2: [0, 1, 1],
    1: [0, 0, 0],
  };
  for (const [n, layers] of Object.entries(expected)) {
    const c = defaultAuxLayers(Number(n));
    assert.deepEqual(c.layers, layers, `N=${n}`);
    assert.match(c.message!, new RegExp(`target has ${n} layers`));
    for (const l of c.layers) assert.ok(l >= 0 && l < Number(n));
    assert.deepEqual(checkAuxLayers(c.layers, Number(n)), layers);
  }
  assert.throws(() => defaultAuxLayers(0), ConfigError);
  assert.deepEqual(checkAuxLayers([2, 5, 9], 10), [2, 5, 9]);
  assert.throws(() => checkAuxLayers([2, 5, 10], 10), /aux layer 10 is not a layer of this 10-layer target/);
  assert.throws(() => checkAuxLayers([5, 2, 9], 10), /strictly ascending/);
  assert.throws(() => checkAuxLayers([2, 2, 9], 10), /strictly ascending/);
  // A 2-layer target cannot have three distinct layers: repeats are allowed, descending ids are not.
  assert.deepEqual(checkAuxLayers([0, 1, 1], 2), [0, 1, 1]);
  assert.throws(() => checkAuxLayers([1, 0, 1], 2), /must be ascending/);
  assert.throws(() => checkAuxLayers([1, 2], 10), /must be 3 layer ids/);
});

/** google/gemma-3-1b-it's config.json (Transformers 4: rope_local_base_freq, sliding_window_pattern). */
const GEMMA3_1B = {
  architectures: ["Gemma3ForCausalLM"],
  attention_bias: false,
  attn_logit_softcapping: null,
  bos_token_id: 2,
  eos_token_id: [1, 106],
  final_logit_softcapping: null,
  head_dim: 256,
  hidden_activation: "gelu_pytorch_tanh",
  hidden_size: 1152,
  intermediate_size: 6912,
  max_position_embeddings: 32768,
  model_type: "gemma3_text",
  num_attention_heads: 4,
  num_hidden_layers: 26,
  num_key_value_heads: 1,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_local_base_freq: 10000,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: 512,
  sliding_window_pattern: 6,
  torch_dtype: "bfloat16",
  vocab_size: 262144,
};

Deno.test("config: Gemma 3 (Transformers 4 and 5 layouts): local/global layers, their RoPEs, its conventions", () => {
  const c = parseTargetConfig(GEMMA3_1B);
  assert.equal(c.architecture, "Gemma3ForCausalLM");
  assert.deepEqual([c.qkNorm, c.tieWordEmbeddings, c.mlpActivation, c.slidingWindow], [
    true,
    true,
    "gelu_tanh",
    512,
  ]);
  assert.deepEqual([c.ropeTheta, c.ropeScaling], [1000000, { type: "default" }]);
  const g = c.gemma!;
  assert.deepEqual(g.slidingLayers.map((s, i) => s ? -1 : i).filter((i) => i >= 0), [5, 11, 17, 23]);
  assert.deepEqual(g.localRope, { theta: 10000, scaling: { type: "default" } });
  assert.equal(g.attentionScale, 1 / 16);
  assert.equal(g.embedScale, Math.fround(Math.sqrt(1152)));
  // Transformers 5: layer_types and per-type rope_parameters (the 4B+ models' linear scaling on full layers).
  const v5 = parseTargetConfig(edit(GEMMA3_1B, {
    sliding_window_pattern: undefined,
    rope_theta: undefined,
    rope_local_base_freq: undefined,
    rope_scaling: undefined,
    layer_types: Array.from({ length: 26 }, (_, i) => i % 2 ? "full_attention" : "sliding_attention"),
    rope_parameters: {
      full_attention: { rope_type: "linear", factor: 8, rope_theta: 1000000 },
      sliding_attention: { rope_type: "default", rope_theta: 10000 },
    },
  }));
  assert.deepEqual(v5.gemma!.slidingLayers.slice(0, 4), [true, false, true, false]);
  assert.deepEqual([v5.ropeTheta, v5.ropeScaling], [1000000, { type: "linear", factor: 8 }]);
  for (
    const [changes, field] of [
      [{ final_logit_softcapping: 30 }, /final_logit_softcapping/],
      [{ use_bidirectional_attention: true }, /use_bidirectional_attention/],
      [{ hidden_activation: "gelu" }, /hidden_activation "gelu"/],
      [{ layer_types: ["full_attention"] }, /layer_types/],
    ] as const
  ) {
    assert.throws(() => parseTargetConfig(edit(GEMMA3_1B, changes)), field);
  }
});

/** Qwen3-30B-A3B's config.json (the keys the parser reads). */
const QWEN3_30B_A3B = {
  architectures: ["Qwen3MoeForCausalLM"],
  model_type: "qwen3_moe",
  hidden_size: 2048,
  intermediate_size: 6144,
  moe_intermediate_size: 768,
  num_hidden_layers: 48,
  num_attention_heads: 32,
  num_key_value_heads: 4,
  head_dim: 128,
  num_experts: 128,
  num_experts_per_tok: 8,
  norm_topk_prob: true,
  decoder_sparse_step: 1,
  mlp_only_layers: [],
  vocab_size: 151936,
  max_position_embeddings: 40960,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  tie_word_embeddings: false,
};

Deno.test("config: Qwen3-MoE and Qwen2-MoE routing, sparse layers, shared expert and weight names", () => {
  const c = parseTargetConfig(QWEN3_30B_A3B);
  assert.deepEqual([c.qkNorm, c.qkvBias], [true, false]);
  assert.deepEqual({ ...c.moe!, sparseLayers: c.moe!.sparseLayers.every((s) => s) }, {
    experts: 128,
    topK: 8,
    expertIntermediate: 768,
    normTopk: true,
    sharedIntermediate: null,
    routing: "softmax",
    grouped: null,
    gptOss: null,
    inputScaled: false,
    sparseLayers: true,
  });
  // Transformers 5 writes num_local_experts; mlp_only_layers and decoder_sparse_step leave dense layers.
  const mixed = parseTargetConfig(edit(QWEN3_30B_A3B, {
    num_experts: undefined,
    num_local_experts: 16,
    decoder_sparse_step: 2,
    mlp_only_layers: [3],
    num_hidden_layers: 6,
  })).moe!;
  assert.equal(mixed.experts, 16);
  assert.deepEqual(mixed.sparseLayers, [false, true, false, false, false, true]);
  const names = targetWeightNames(parseTargetConfig(edit(QWEN3_30B_A3B, { num_hidden_layers: 2 })));
  assert.equal(names.layers[0].gate, null);
  assert.equal(names.layers[0].moe!.router, "model.layers.0.mlp.gate.weight");
  assert.equal(names.layers[0].moe!.down[127], "model.layers.0.mlp.experts.127.down_proj.weight");
  assert.throws(
    () => parseTargetConfig(edit(QWEN3_30B_A3B, { num_experts_per_tok: 200 })),
    /config.json: num_experts_per_tok 200 exceeds num_experts 128/,
  );
  // Qwen1.5-MoE-A2.7B: q/k/v biases, 60 experts top-4, the shared expert behind its gate.
  const q2 = parseTargetConfig(edit(QWEN3_30B_A3B, {
    architectures: ["Qwen2MoeForCausalLM"],
    model_type: "qwen2_moe",
    num_experts: 60,
    num_experts_per_tok: 4,
    moe_intermediate_size: 1408,
    shared_expert_intermediate_size: 5632,
    norm_topk_prob: false,
    head_dim: undefined,
    hidden_size: 2048,
    num_attention_heads: 16,
    num_key_value_heads: 16,
  }));
  assert.deepEqual([q2.qkvBias, q2.qkNorm, q2.moe!.sharedIntermediate, q2.moe!.normTopk], [
    true,
    false,
    5632,
    false,
  ]);
  const shapes = expectedWeightShapes(q2, targetWeightNames(q2));
  assert.deepEqual(shapes.get("model.layers.0.mlp.shared_expert_gate.weight"), [1, 2048]);
  assert.deepEqual(shapes.get("model.layers.0.mlp.experts.59.gate_proj.weight"), [1408, 2048]);
});

/** DeepSeek-V3's config.json (the keys the parser reads; no head_dim or rope_interleave, as published). */
const DEEPSEEK_V3 = {
  architectures: ["DeepseekV3ForCausalLM"],
  model_type: "deepseek_v3",
  hidden_size: 7168,
  intermediate_size: 18432,
  moe_intermediate_size: 2048,
  num_hidden_layers: 61,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  n_routed_experts: 256,
  n_shared_experts: 1,
  num_experts_per_tok: 8,
  n_group: 8,
  topk_group: 4,
  topk_method: "noaux_tc",
  scoring_func: "sigmoid",
  norm_topk_prob: true,
  routed_scaling_factor: 2.5,
  first_k_dense_replace: 3,
  max_position_embeddings: 163840,
  rope_theta: 10000,
  rope_scaling: {
    beta_fast: 32,
    beta_slow: 1,
    factor: 40,
    mscale: 1.0,
    mscale_all_dim: 1.0,
    original_max_position_embeddings: 4096,
    type: "yarn",
  },
  rms_norm_eps: 1e-6,
  vocab_size: 129280,
  tie_word_embeddings: false,
};

Deno.test("config: DeepSeek-V3 (MLA with its mscale², grouped sigmoid routing, dense first layers)", () => {
  const c = parseTargetConfig(DEEPSEEK_V3);
  assert.deepEqual([c.headDim, c.rotaryDim, c.numKvHeads], [192, 64, 128]);
  const m = c.mla!, mscale = 0.1 * Math.log(40) + 1;
  assert.deepEqual([m.qLoraRank, m.kvLoraRank, m.nopeDim, m.ropeDim, m.vHeadDim, m.interleave], [
    1536,
    512,
    128,
    64,
    128,
    true,
  ]);
  assertClose1(m.scale, 192 ** -0.5 * mscale * mscale);
  assert.equal(c.ropeScaling.type, "yarn");
  const moe = c.moe!;
  assert.deepEqual(
    [moe.experts, moe.topK, moe.expertIntermediate, moe.sharedIntermediate, moe.routing, moe.normTopk],
    [256, 8, 2048, 2048, "grouped", true],
  );
  assert.deepEqual(moe.grouped, { groups: 8, topkGroup: 4, scale: 2.5 });
  assert.deepEqual(moe.sparseLayers.slice(0, 5), [false, false, false, true, true]);
  const names = targetWeightNames(c);
  const l3 = names.layers[3];
  assert.deepEqual([l3.q, l3.k, l3.v, l3.qA], [
    "model.layers.3.self_attn.q_b_proj.weight",
    null,
    null,
    "model.layers.3.self_attn.q_a_proj.weight",
  ]);
  assert.equal(l3.moe!.correctionBias, "model.layers.3.mlp.gate.e_score_correction_bias");
  assert.equal(l3.moe!.shared!.gate, "model.layers.3.mlp.shared_experts.gate_proj.weight");
  assert.equal(l3.moe!.shared!.gateProj, null);
  const shapes = expectedWeightShapes(c, names);
  for (
    const [name, shape] of [
      ["model.layers.0.self_attn.q_a_proj.weight", [1536, 7168]],
      ["model.layers.0.self_attn.q_b_proj.weight", [128 * 192, 1536]],
      ["model.layers.0.self_attn.kv_a_proj_with_mqa.weight", [576, 7168]],
      ["model.layers.0.self_attn.kv_a_layernorm.weight", [512]],
      ["model.layers.0.self_attn.kv_b_proj.weight", [128 * 256, 512]],
      ["model.layers.0.self_attn.o_proj.weight", [7168, 128 * 128]],
      ["model.layers.0.mlp.gate_proj.weight", [18432, 7168]],
      ["model.layers.3.mlp.experts.255.down_proj.weight", [7168, 2048]],
      ["model.layers.3.mlp.gate.e_score_correction_bias", [256]],
    ] as const
  ) assert.deepEqual(shapes.get(name), shape, name);
});

function assertClose1(got: number, want: number): void {
  assert.ok(Math.abs(got - want) <= 1e-12 * Math.abs(want), `${got} != ${want}`);
}

Deno.test("config: Kimi-K2 (DeepSeek-V3's architecture, one expert group) and a q_proj without q LoRA", () => {
  const kimi = parseTargetConfig(
    edit(DEEPSEEK_V3, {
      model_type: "kimi_k2",
      num_attention_heads: 64,
      num_key_value_heads: 64,
      n_routed_experts: 384,
      n_group: 1,
      topk_group: 1,
      first_k_dense_replace: 1,
      routed_scaling_factor: 2.827,
      rope_scaling: { ...DEEPSEEK_V3.rope_scaling, factor: 32 },
    }),
  );
  assert.equal(kimi.modelType, "kimi_k2");
  // The derived draft's head_dim is hidden / heads, as SpecForge's from these configs (no head_dim key).
  assert.deepEqual([
    deriveDraftConfig(kimi).headDim,
    deriveDraftConfig(parseTargetConfig(DEEPSEEK_V3)).headDim,
  ], [
    112,
    56,
  ]);
  assert.deepEqual(kimi.moe!.grouped, { groups: 1, topkGroup: 1, scale: 2.827 });
  assert.deepEqual(kimi.moe!.sparseLayers.slice(0, 2), [false, true]);
  const plain = parseTargetConfig(edit(DEEPSEEK_V3, { q_lora_rank: null, rope_interleave: false }));
  assert.deepEqual([plain.mla!.qLoraRank, plain.mla!.interleave], [null, false]);
  const names = targetWeightNames(plain);
  assert.deepEqual([names.layers[0].q, names.layers[0].qA], ["model.layers.0.self_attn.q_proj.weight", null]);
  assert.deepEqual(expectedWeightShapes(plain, names).get("model.layers.0.self_attn.q_proj.weight"), [
    128 * 192,
    7168,
  ]);
});

Deno.test("config: DeepSeek-V3's golden config parses as transformers 5 wrote it", async () => {
  const c = await loadTargetConfig(
    new URL("../golden/targets/deepseek_v3/config.json", import.meta.url).pathname,
  );
  assert.deepEqual([c.headDim, c.rotaryDim, c.mla!.interleave, c.moe!.sparseLayers[0]], [12, 4, true, false]);
  assert.equal(c.ropeScaling.type, "yarn");
  assertClose1(c.mla!.scale, 12 ** -0.5 * (0.1 * Math.log(4) + 1) ** 2);
});

Deno.test("config: bad or unsupported DeepSeek-V3 configs are one-line errors naming the file and key", () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ topk_method: "greedy" }, /^config\.json: topk_method "greedy" is not supported \(noaux_tc/],
    [{ scoring_func: "softmax" }, /^config\.json: scoring_func "softmax" is not supported \(sigmoid/],
    [{ n_group: 3 }, /^config\.json: n_group 3 must divide n_routed_experts 256/],
    [{ topk_group: 9 }, /^config\.json: topk_group 9 exceeds n_group 8/],
    [{ topk_group: 1, n_group: 64, num_experts_per_tok: 5 }, /num_experts_per_tok 5 exceeds the 4 experts/],
    [{ num_experts_per_tok: 300 }, /num_experts_per_tok 300 exceeds n_routed_experts 256/],
    [
      { quantization_config: { quant_method: "fp8" } },
      /quantization_config.quant_method "fp8" is not supported/,
    ],
    [{ attention_bias: true }, /attention_bias is not supported for DeepseekV3ForCausalLM/],
    [{ v_head_dim: 256 }, /v_head_dim 256 above qk_nope_head_dim \+ qk_rope_head_dim 192 is not supported/],
    [{ num_key_value_heads: 8 }, /num_key_value_heads 8 must equal num_attention_heads 128/],
    [{ kv_lora_rank: undefined, q_lora_rank: "x" }, /q_lora_rank must be an integer/],
    [{ qk_rope_head_dim: 63 }, /qk_rope_head_dim 63 must be even/],
  ];
  for (const [changes, want] of cases) {
    assert.throws(() => parseTargetConfig(edit(DEEPSEEK_V3, changes)), (e: Error) => {
      assert.ok(e instanceof ConfigError, e.message);
      assert.match(e.message, want);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
  }
});

/** gpt-oss-20b's config.json (the keys the parser reads). */
const GPT_OSS_20B = {
  architectures: ["GptOssForCausalLM"],
  model_type: "gpt_oss",
  hidden_size: 2880,
  intermediate_size: 2880,
  num_hidden_layers: 24,
  num_attention_heads: 64,
  num_key_value_heads: 8,
  head_dim: 64,
  num_local_experts: 32,
  experts_per_token: 4,
  swiglu_limit: 7.0,
  sliding_window: 128,
  layer_types: Array.from({ length: 24 }, (_, i) => i % 2 === 0 ? "sliding_attention" : "full_attention"),
  rope_theta: 150000,
  rope_scaling: {
    rope_type: "yarn",
    factor: 32.0,
    beta_fast: 32.0,
    beta_slow: 1.0,
    truncate: false,
    original_max_position_embeddings: 4096,
  },
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  vocab_size: 201088,
  tie_word_embeddings: false,
  quantization_config: { quant_method: "mxfp4", modules_to_not_convert: [] },
};

Deno.test("config: gpt-oss-20b's published config (MXFP4 experts, sinks, alternating windows, YaRN)", () => {
  const c = parseTargetConfig(GPT_OSS_20B);
  assert.deepEqual([c.attentionSinks, c.qkvBias, c.oBias, c.qkNorm], [true, true, true, false]);
  assert.equal(c.slidingWindow, 128);
  assert.deepEqual(c.windowLayers!.slice(0, 4), [true, false, true, false]);
  assert.deepEqual(c.moe!.gptOss, { gluLimit: 7, mxfp4: true });
  assert.deepEqual([c.moe!.experts, c.moe!.topK, c.moe!.expertIntermediate, c.moe!.routing], [
    32,
    4,
    2880,
    "picked",
  ]);
  assert.equal(c.ropeScaling.type, "yarn");
  const names = targetWeightNames(c);
  assert.equal(names.layers[3].sinks, "model.layers.3.self_attn.sinks");
  const shapes = expectedWeightShapes(c, names);
  assert.deepEqual(shapes.get("model.layers.0.mlp.experts.gate_up_proj_blocks"), [32, 5760, 90, 16]);
  assert.deepEqual(shapes.get("model.layers.0.mlp.experts.down_proj_scales"), [32, 2880, 90]);
  assert.deepEqual(shapes.get("model.layers.0.mlp.router.bias"), [32]);
  assert.throws(
    () => parseTargetConfig(edit(GPT_OSS_20B, { quantization_config: { quant_method: "awq" } })),
    /quantization_config.quant_method awq is not supported \(mxfp4 is\)/,
  );
});

/** Llama 4 Scout's text config (the keys the parser reads). */
const LLAMA4_SCOUT_TEXT = {
  architectures: ["Llama4ForCausalLM"],
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
  attn_temperature_tuning: true,
  floor_scale: 8192,
  attn_scale: 0.1,
  rope_theta: 500000,
  rope_scaling: {
    rope_type: "llama3",
    factor: 16,
    low_freq_factor: 1,
    high_freq_factor: 1,
    original_max_position_embeddings: 8192,
  },
  max_position_embeddings: 10485760,
  vocab_size: 202048,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
};

Deno.test("config: Llama 4 Scout's text config (NoPE every 4th layer, chunks, MoE every layer, L2 q/k norm)", () => {
  const c = parseTargetConfig(LLAMA4_SCOUT_TEXT);
  const l4 = c.llama4!;
  assert.deepEqual(l4.ropeLayers.slice(0, 8), [true, true, true, false, true, true, true, false]);
  assert.deepEqual([l4.chunkSize, l4.temperature, l4.l2QkNorm], [
    8192,
    { floorScale: 8192, attnScale: 0.1 },
    true,
  ]);
  assert.equal(c.intermediateSize, 16384);
  const moe = c.moe!;
  assert.deepEqual(
    [moe.experts, moe.topK, moe.expertIntermediate, moe.sharedIntermediate, moe.routing, moe.inputScaled],
    [16, 1, 8192, 8192, "sigmoid", true],
  );
  assert.ok(moe.sparseLayers.every((s) => s));
  const names = targetWeightNames(c);
  assert.equal(names.layers[0].moe!.router, "model.layers.0.feed_forward.router.weight");
  assert.deepEqual(names.layers[3].llama4, { headDim: 128, l2QkNorm: false }); // a NoPE layer
  const shapes = expectedWeightShapes(c, names);
  assert.deepEqual(shapes.get("model.layers.0.feed_forward.experts.gate_up_proj"), [16, 5120, 16384]);
  assert.deepEqual(shapes.get("model.layers.0.feed_forward.shared_expert.down_proj.weight"), [5120, 8192]);
  assert.throws(
    () => parseTargetConfig(edit(LLAMA4_SCOUT_TEXT, { attention_bias: true })),
    /config.json: attention_bias is not supported for Llama4ForCausalLM/,
  );
});
