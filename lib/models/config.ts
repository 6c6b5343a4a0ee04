/**
 * Hugging Face `config.json` of a target model, parsed and validated into a typed {@link TargetConfig}, plus
 * the safetensors weight names of each architecture and the choice of auxiliary layers for EAGLE-3
 * (SpecForge `specforge/modeling/target/eagle3_target_model.py` `set_aux_hidden_states_layers`).
 *
 * Supported: LlamaForCausalLM (Llama 2/3.x, with `rope_scaling` llama3, linear, dynamic or yarn),
 * Qwen2ForCausalLM (q/k/v biases), Qwen3ForCausalLM (per-head RMSNorm on q and k, explicit head_dim) and
 * MistralForCausalLM (sliding window recorded), Phi3ForCausalLM (fused projections, partial RoPE, LongRoPE)
 * Gemma3ForCausalLM (its conventions in {@link GemmaConventions}), and the mixtures of experts
 * Qwen3MoeForCausalLM, Qwen2MoeForCausalLM, GptOssForCausalLM, Llama4ForCausalLM and DeepseekV3ForCausalLM
 * (DeepSeek-V3/R1, Kimi-K2: {@link MoeConfig}, {@link Llama4Conventions}, {@link MlaConfig}). Missing optional fields take the defaults of the matching
 * transformers config class; missing required ones, or values that cannot work, throw a
 * {@link ConfigError} naming the file and the field.
 */
import type { RopeScaling } from "../ops/rope.ts";
import type { MoeShape } from "../ops/moe.ts";
import { textModelOf } from "./multimodal.ts";

/** RoPE frequency scaling; the type lives with the rotary op (lib/ops/rope.ts), which consumes it. */
export type { RopeScaling } from "../ops/rope.ts";

/** The architectures Eaglet can run as a target. */
export const SUPPORTED_ARCHITECTURES = [
  "LlamaForCausalLM",
  "Qwen2ForCausalLM",
  "Qwen3ForCausalLM",
  "MistralForCausalLM",
  "Phi3ForCausalLM",
  "Gemma3ForCausalLM",
  "Qwen3MoeForCausalLM",
  "Qwen2MoeForCausalLM",
  "GptOssForCausalLM",
  "Llama4ForCausalLM",
  "DeepseekV3ForCausalLM",
] as const;

/** One of {@link SUPPORTED_ARCHITECTURES}. */
export type TargetArchitecture = typeof SUPPORTED_ARCHITECTURES[number];

/** A validated target config. */
export interface TargetConfig {
  /** The first supported entry of config.json's `architectures`. */
  architecture: TargetArchitecture;
  /** `model_type` as written (llama, qwen2, qwen3, mistral). */
  modelType: string;
  /**
   * Prepended to every weight name: "" for a text model, `language_model.` for the text model of a multimodal
   * wrapper (Llama4ForConditionalGeneration, lib/models/multimodal.ts).
   */
  weightPrefix: string;
  /** Residual stream width H (`hidden_size`). */
  hiddenSize: number;
  /** SwiGLU inner width (gate/up output size). */
  intermediateSize: number;
  /** Number of decoder layers (`num_hidden_layers`). */
  numLayers: number;
  /** Query heads nh (`num_attention_heads`). */
  numHeads: number;
  /** Key/value heads nkv (`num_key_value_heads`, default numHeads); numHeads is a multiple of it (GQA). */
  numKvHeads: number;
  /** Per-head width; explicit in Qwen3 and newer Llama/Mistral configs, else hiddenSize / numHeads. */
  headDim: number;
  /**
   * Columns of each head that RoPE rotates: headDim, or `int(headDim · partial_rotary_factor)` (Phi-4-mini's
   * 0.75), the others passing through.
   */
  rotaryDim: number;
  /** Vocabulary size V (`vocab_size`): rows of the embedding and of lm_head. */
  vocabSize: number;
  /** Epsilon added to the mean square in every RMSNorm (`rms_norm_eps`). */
  rmsNormEps: number;
  /** RoPE base frequency (`rope_theta`). */
  ropeTheta: number;
  /** RoPE frequency scaling (`rope_scaling`), `{ type: "default" }` when absent. */
  ropeScaling: RopeScaling;
  /** Context length the model was trained for (`max_position_embeddings`). */
  maxPositionEmbeddings: number;
  /** lm_head shares the embedding matrix. */
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases (Qwen2 always; Llama/Qwen3 when `attention_bias`). */
  qkvBias: boolean;
  /** o_proj has a bias (Llama/Qwen3 `attention_bias`). */
  oBias: boolean;
  /** gate/up/down have biases (Llama `mlp_bias`). */
  mlpBias: boolean;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  /**
   * q, k, v stored as one `qkv_proj` and gate, up as one `gate_up_proj` (Phi-3, Phi-4): the loader reads each
   * as rows of the fused matrix ({@link fusedRows}).
   */
  fusedProjections: boolean;
  /**
   * Attention window in tokens when sliding-window attention is on (Mistral `sliding_window`; Qwen2/3 only
   * when `use_sliding_window`), else null. Sequences no longer than it are unaffected.
   */
  slidingWindow: number | null;
  /**
   * Which layers the window applies to: Qwen2/3's layers from `max_window_layers` on (or its `layer_types`),
   * Gemma 3's sliding layers; null: every layer (Mistral, Phi-3), or no window.
   */
  windowLayers: boolean[] | null;
  /** Beginning-of-sequence token id, null when the config has none. */
  bosTokenId: number | null;
  /** All end-of-sequence ids (config.json may list several). */
  eosTokenIds: number[];
  /** Padding token id, null when the config has none. */
  padTokenId: number | null;
  /** Stored weight dtype (`torch_dtype`, or `dtype` in Transformers 5), null when absent. */
  torchDtype: string | null;
  /** The gated MLP's activation: SiLU (Llama) or GELU with the tanh approximation (Gemma 3). */
  mlpActivation: "silu" | "gelu_tanh";
  /** Gemma 3's layer and model conventions, null for the others. */
  gemma: GemmaConventions | null;
  /** The sparse MoE MLPs (Qwen3-MoE, Qwen2-MoE, GPT-OSS, Llama 4), null for dense targets. */
  moe: MoeConfig | null;
  /** A learned attention-sink logit per head in every layer (GPT-OSS `self_attn.sinks`). */
  attentionSinks: boolean;
  /** Llama 4's attention conventions, null for the others. */
  llama4: Llama4Conventions | null;
  /**
   * DeepSeek-V3's multi-head latent attention, null for the others. Then headDim is the q/k head width
   * (nope + rope), numKvHeads = numHeads (kv_b_proj expands the latent into every head's key and value) and
   * rotaryDim the rope part.
   */
  mla: MlaConfig | null;
}

/**
 * Multi-head latent attention (DeepSeek-V2 paper §2.1; transformers `DeepseekV3Attention`):
 *   q = q_b_proj(rmsnorm(q_a_proj(n)))  (or q_proj(n) when q_lora_rank is null),  per head [nope | rope]
 *   [c, k_pe] = kv_a_proj_with_mqa(n),  c = kv_a_layernorm(c)  [kv_lora_rank],  k_pe [rope] shared by the heads
 *   [k_nope | v] = kv_b_proj(c) per head,  k = [k_nope | rope(k_pe)],  q = [q_nope | rope(q_pe)]
 */
export interface MlaConfig {
  /** `q_lora_rank`; null: a plain `q_proj`. */
  qLoraRank: number | null;
  /** `kv_lora_rank`: the width of the compressed latent c. */
  kvLoraRank: number;
  /** `qk_nope_head_dim`: the columns of q and k without RoPE. */
  nopeDim: number;
  /** `qk_rope_head_dim`: the rotated columns (k's shared by every head). */
  ropeDim: number;
  /** `v_head_dim` (at most nope + rope). */
  vHeadDim: number;
  /**
   * `rope_interleave` (transformers' default true): RoPE over pairs (2i, 2i + 1)
   * (`apply_rotary_pos_emb_interleave`), else rotate-half.
   */
  interleave: boolean;
  /** The softmax scale: (nope + rope)^−½ · mscale², mscale = 0.1·mscale_all_dim·ln(factor) + 1 (`yarn_apply_mscale`). */
  scale: number;
}

/** Llama 4's attention (transformers `Llama4TextAttention`). */
export interface Llama4Conventions {
  /** Per layer: RoPE (`no_rope_layers[i]` = 1), else a NoPE layer. */
  ropeLayers: boolean[];
  /** The RoPE layers attend within chunks of this many positions (`attention_chunk_size`); null: no chunks. */
  chunkSize: number | null;
  /** NoPE layers scale q by log1p(⌊(pos + 1)/floorScale⌋)·attnScale + 1 (`attn_temperature_tuning`); null: off. */
  temperature: { floorScale: number; attnScale: number } | null;
  /** The RoPE layers' weightless RMS norm of q and k (`use_qk_norm`, Llama4TextL2Norm). */
  l2QkNorm: boolean;
}

/**
 * A target's mixture-of-experts MLPs (transformers `Qwen3MoeConfig`, `Qwen2MoeConfig`, `GptOssConfig`,
 * `Llama4TextConfig`): which layers are sparse and how tokens are routed (lib/ops/moe.ts).
 */
export interface MoeConfig {
  /** Routed experts (`num_experts`). */
  experts: number;
  /** Experts per token (`num_experts_per_tok`). */
  topK: number;
  /** Each expert's intermediate size (`moe_intermediate_size`). */
  expertIntermediate: number;
  /** Renormalise the k routing weights (`norm_topk_prob`). */
  normTopk: boolean;
  /** Qwen2-MoE's shared expert's intermediate size (`shared_expert_intermediate_size`); null without one. */
  sharedIntermediate: number | null;
  /**
   * "softmax" over every expert then the k picked (Qwen), the softmax of the k picked logits (GPT-OSS), the
   * sigmoid of each picked logit (Llama 4), or DeepSeek-V3's group-limited sigmoid routing ({@link grouped}).
   */
  routing: "softmax" | "picked" | "sigmoid" | "grouped";
  /**
   * DeepSeek-V3 (`DeepseekV3TopkRouter`, noaux_tc): sigmoid scores plus the correction bias choose `topkGroup`
   * of `groups` expert groups (by the sum of each group's two best), then k experts in them; the weights are
   * the unbiased scores (renormalised when normTopk) times `scale` (`routed_scaling_factor`). Null otherwise.
   */
  grouped: { groups: number; topkGroup: number; scale: number } | null;
  /**
   * GPT-OSS: the clamped SwiGLU's limit (`swiglu_limit`) on the interleaved gate/up projection, the experts
   * stored fused per layer (with biases, and the router's bias), in MXFP4 when `mxfp4`; null for Qwen.
   */
  gptOss: { gluLimit: number; mxfp4: boolean } | null;
  /** Llama 4: the routing weight scales the expert's input, gate/up fused in halves, an ungated shared expert. */
  inputScaled: boolean;
  /**
   * Per layer: true for a sparse MLP (not in `mlp_only_layers`, and (i + 1) a multiple of
   * `decoder_sparse_step`); the other layers have a dense MLP of `intermediate_size`.
   */
  sparseLayers: boolean[];
}

/** Refuses more experts per token than `experts` (named by `key` in the file). */
function checkTopK(f: Fields, topK: number, experts: number, key: string): void {
  if (topK > experts) {
    throw new ConfigError(`${f.file}: num_experts_per_tok ${topK} exceeds ${key} ${experts}`);
  }
}

/**
 * Llama 4's MoE (transformers `Llama4TextConfig`, `Llama4TextMoe`): `moe_layers`, else every
 * `interleave_moe_layer_step`-th layer; `num_local_experts` experts of width `intermediate_size` and a shared
 * expert as wide, top-k by logit, the sigmoid of the picked logit scaling the expert's input.
 */
function parseLlama4Moe(f: Fields, numLayers: number): MoeConfig {
  const experts = f.int("num_local_experts", 16), topK = f.int("num_experts_per_tok", 1);
  checkTopK(f, topK, experts, "num_local_experts");
  const step = f.int("interleave_moe_layer_step", 1);
  const listed = f.obj.moe_layers;
  if (
    listed !== undefined && listed !== null &&
    (!Array.isArray(listed) || listed.some((i) => !Number.isInteger(i)))
  ) {
    throw new ConfigError(`${f.file}: moe_layers must be a list of layer indices`);
  }
  const moeLayers = Array.isArray(listed) ? listed as number[] : null;
  return {
    experts,
    topK,
    expertIntermediate: f.int("intermediate_size", 8192),
    normTopk: false,
    sharedIntermediate: f.int("intermediate_size", 8192),
    routing: "sigmoid",
    grouped: null,
    gptOss: null,
    inputScaled: true,
    sparseLayers: Array.from(
      { length: numLayers },
      (_, i) => moeLayers ? moeLayers.includes(i) : (i + 1) % step === 0,
    ),
  };
}

/** Llama 4's attention conventions (defaults as `Llama4TextConfig`). */
function llama4Conventions(f: Fields, numLayers: number): Llama4Conventions {
  if (f.bool("attention_bias", false)) {
    // q_proj's and k_proj's rows are reordered on load (Llama4Conventions); their biases are not.
    throw new ConfigError(
      `${f.file}: attention_bias is not supported for Llama4ForCausalLM (no published model has it)`,
    );
  }
  const listed = f.obj.no_rope_layers;
  const interval = f.int("no_rope_layer_interval", 4);
  const ropeLayers = Array.isArray(listed) && listed.length > 0
    ? listed.map((v) => Number(v) !== 0)
    : Array.from({ length: numLayers }, (_, i) => (i + 1) % interval !== 0);
  if (ropeLayers.length !== numLayers) {
    throw new ConfigError(`${f.file}: no_rope_layers must list num_hidden_layers ${numLayers} entries`);
  }
  const chunk = f.obj.attention_chunk_size;
  return {
    ropeLayers,
    chunkSize: chunk === null || chunk === undefined
      ? (f.has("attention_chunk_size") ? null : 8192)
      : f.int("attention_chunk_size"),
    temperature: f.bool("attn_temperature_tuning", true)
      ? { floorScale: f.num("floor_scale", 8192), attnScale: f.num("attn_scale", 0.1) }
      : null,
    l2QkNorm: f.bool("use_qk_norm", true),
  };
}

/**
 * GPT-OSS's MoE (transformers `GptOssConfig`; the published config.json also says `experts_per_token`): every
 * layer sparse, `num_local_experts` experts of width `intermediate_size`, the router's top-k then the softmax of
 * the picked, the clamped SwiGLU (`swiglu_limit`), experts in MXFP4 when `quantization_config` says mxfp4.
 */
function parseGptOssMoe(f: Fields, numLayers: number): MoeConfig {
  const experts = f.int("num_local_experts", 128);
  const topK = f.has("num_experts_per_tok") ? f.int("num_experts_per_tok") : f.int("experts_per_token", 4);
  checkTopK(f, topK, experts, "num_local_experts");
  const q = f.obj.quantization_config as Record<string, unknown> | undefined | null;
  const method = q && typeof q === "object" ? q.quant_method : undefined;
  if (method !== undefined && method !== "mxfp4") {
    throw new ConfigError(
      `${f.file}: quantization_config.quant_method ${method} is not supported (mxfp4 is)`,
    );
  }
  return {
    experts,
    topK,
    expertIntermediate: f.int("intermediate_size", 2880),
    normTopk: false,
    sharedIntermediate: null,
    routing: "picked",
    grouped: null,
    gptOss: { gluLimit: f.num("swiglu_limit", 7), mxfp4: method === "mxfp4" },
    inputScaled: false,
    sparseLayers: new Array(numLayers).fill(true),
  };
}

/**
 * DeepSeek-V3's MoE (transformers `DeepseekV3Config`, `DeepseekV3MoE`, `DeepseekV3TopkRouter`): every layer from
 * `first_k_dense_replace` on is sparse, `n_routed_experts` experts of `moe_intermediate_size` in `n_group`
 * groups, `topk_group` groups kept, `num_experts_per_tok` experts picked by sigmoid score + correction bias,
 * and `n_shared_experts` shared experts run as one ungated MLP of n_shared_experts · moe_intermediate_size.
 * transformers 5.18 always routes so (noaux_tc, sigmoid): another `topk_method` or `scoring_func` is refused.
 */
function parseDeepseekMoe(f: Fields, numLayers: number): MoeConfig {
  const experts = f.int("n_routed_experts", 256), topK = f.int("num_experts_per_tok", 8);
  const groups = f.int("n_group", 8), topkGroup = f.int("topk_group", 4);
  checkTopK(f, topK, experts, "n_routed_experts");
  for (const [key, want] of [["topk_method", "noaux_tc"], ["scoring_func", "sigmoid"]]) {
    const v = f.str(key);
    if (v !== null && v !== want) {
      throw new ConfigError(
        `${f.file}: ${key} ${JSON.stringify(v)} is not supported (${want}, as transformers)`,
      );
    }
  }
  if (experts % groups !== 0 || experts / groups < 2) {
    throw new ConfigError(
      `${f.file}: n_group ${groups} must divide n_routed_experts ${experts} into groups of at least 2`,
    );
  }
  if (topkGroup > groups) {
    throw new ConfigError(`${f.file}: topk_group ${topkGroup} exceeds n_group ${groups}`);
  }
  if (topK > topkGroup * (experts / groups)) {
    throw new ConfigError(
      `${f.file}: num_experts_per_tok ${topK} exceeds the ${topkGroup * experts / groups} experts of the ` +
        `topk_group ${topkGroup} groups kept`,
    );
  }
  const I = f.int("moe_intermediate_size", 2048), dense = f.int("first_k_dense_replace", 3, 0);
  return {
    experts,
    topK,
    expertIntermediate: I,
    normTopk: f.bool("norm_topk_prob", true),
    sharedIntermediate: I * f.int("n_shared_experts", 1),
    routing: "grouped",
    grouped: { groups, topkGroup, scale: f.num("routed_scaling_factor", 2.5) },
    gptOss: null,
    inputScaled: false,
    sparseLayers: Array.from({ length: numLayers }, (_, i) => i >= dense),
  };
}

/**
 * DeepSeek-V3's attention fields ({@link MlaConfig}; defaults as `DeepseekV3Config`). Checkpoints with
 * `quantization_config` (the published FP8 ones) or `attention_bias` are refused by name, and v_head_dim above
 * the q/k head width (no published model) too: the attention pads v to the q/k width (lib/models/mla.ts).
 */
function parseMla(f: Fields, ropeRaw: unknown): MlaConfig {
  if (f.has("quantization_config")) {
    const q = f.obj.quantization_config as Json;
    throw new ConfigError(
      `${f.file}: quantization_config.quant_method ${
        JSON.stringify(q?.quant_method)
      } is not supported for DeepseekV3ForCausalLM (convert the checkpoint to bf16)`,
    );
  }
  if (f.bool("attention_bias", false)) {
    throw new ConfigError(
      `${f.file}: attention_bias is not supported for DeepseekV3ForCausalLM (no published model has it)`,
    );
  }
  const qLoraRank = f.obj.q_lora_rank === null ? null : f.int("q_lora_rank", 1536);
  const nopeDim = f.int("qk_nope_head_dim", 128), ropeDim = f.int("qk_rope_head_dim", 64);
  const vHeadDim = f.int("v_head_dim", 128);
  if (ropeDim % 2 !== 0) {
    throw new ConfigError(`${f.file}: qk_rope_head_dim ${ropeDim} must be even for RoPE`);
  }
  if (vHeadDim > nopeDim + ropeDim) {
    throw new ConfigError(
      `${f.file}: v_head_dim ${vHeadDim} above qk_nope_head_dim + qk_rope_head_dim ${
        nopeDim + ropeDim
      } is not supported`,
    );
  }
  return {
    qLoraRank,
    kvLoraRank: f.int("kv_lora_rank", 512),
    nopeDim,
    ropeDim,
    vHeadDim,
    interleave: f.bool("rope_interleave", true),
    scale: (nopeDim + ropeDim) ** -0.5 * mlaMscale(ropeRaw) ** 2,
  };
}

/**
 * transformers' `yarn_apply_mscale`: with a rope type other than default and a non-zero `mscale_all_dim`,
 * m = 0.1·mscale_all_dim·ln(factor) + 1 (1 when factor ≤ 1), else 1.
 */
function mlaMscale(raw: unknown): number {
  if (!raw || typeof raw !== "object") return 1;
  const r = raw as Json, type = r.rope_type ?? r.type ?? "default", all = r.mscale_all_dim, factor = r.factor;
  if (type === "default" || typeof all !== "number" || all === 0 || typeof factor !== "number") return 1;
  return factor <= 1 ? 1 : 0.1 * all * Math.log(factor) + 1;
}

/** The MoE op's view of a target's MoE config (lib/ops/moe.ts). */
export function moeShapeOf(moe: MoeConfig): MoeShape {
  return { ...moe, gluLimit: moe.gptOss?.gluLimit };
}

/**
 * The MoE config of a Qwen3-MoE, Qwen2-MoE, GPT-OSS or Llama 4 config.json (defaults as transformers' config
 * classes); null for a dense architecture.
 */
function parseMoe(f: Fields, architecture: TargetArchitecture, numLayers: number): MoeConfig | null {
  if (architecture === "GptOssForCausalLM") return parseGptOssMoe(f, numLayers);
  if (architecture === "Llama4ForCausalLM") return parseLlama4Moe(f, numLayers);
  if (architecture === "DeepseekV3ForCausalLM") return parseDeepseekMoe(f, numLayers);
  const qwen2 = architecture === "Qwen2MoeForCausalLM";
  if (!qwen2 && architecture !== "Qwen3MoeForCausalLM") return null;
  // The published configs say `num_experts`; Transformers 5's Qwen3MoeConfig writes `num_local_experts`.
  const experts = f.has("num_experts") ? f.int("num_experts") : f.int("num_local_experts", qwen2 ? 60 : 128);
  const topK = f.int("num_experts_per_tok", qwen2 ? 4 : 8);
  checkTopK(f, topK, experts, "num_experts");
  const step = f.int("decoder_sparse_step", 1);
  const only = f.obj.mlp_only_layers ?? [];
  if (!Array.isArray(only) || only.some((i) => !Number.isInteger(i))) {
    throw new ConfigError(`${f.file}: mlp_only_layers must be a list of layer indices`);
  }
  return {
    experts,
    topK,
    expertIntermediate: f.int("moe_intermediate_size", qwen2 ? 1408 : 768),
    normTopk: f.bool("norm_topk_prob", false),
    sharedIntermediate: qwen2 ? f.int("shared_expert_intermediate_size", 5632) : null,
    routing: "softmax",
    grouped: null,
    gptOss: null,
    inputScaled: false,
    sparseLayers: Array.from(
      { length: numLayers },
      (_, i) => !only.includes(i) && experts > 0 && (i + 1) % step === 0,
    ),
  };
}

/**
 * What Gemma 3 (transformers `modeling_gemma3.py`) does beyond a Llama layer: RMSNorms scale by (1 + w); the
 * attention output and the MLP output are normed before their residual adds (`post_attention_layernorm`,
 * `post_feedforward_layernorm`) and the MLP input by `pre_feedforward_layernorm`; the embedding is scaled by
 * √H; scores are scaled by `query_pre_attn_scalar`^−½; sliding-window layers use their
 * own RoPE (`rope_local_base_freq`, no scaling).
 */
export interface GemmaConventions {
  /** The embedding scale √H in f32 (transformers casts it to the compute dtype; Eaglet computes in f32). */
  embedScale: number;
  /** `query_pre_attn_scalar`^−½. */
  attentionScale: number;
  /** Per layer: true for sliding-window ("sliding_attention") layers. */
  slidingLayers: boolean[];
  /** The RoPE of the sliding-window layers. */
  localRope: { theta: number; scaling: RopeScaling };
}

/** An invalid or unsupported config; the message names the file and the field. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

type Json = Record<string, unknown>;

/** Field readers of a config.json object that name `file` and the field in their errors. */
export class Fields {
  constructor(readonly file: string, readonly obj: Json, readonly prefix = "") {}

  #fail(field: string, msg: string): never {
    throw new ConfigError(`${this.file}: ${this.prefix}${field} ${msg}`);
  }

  has(field: string): boolean {
    return this.obj[field] !== undefined && this.obj[field] !== null;
  }

  int(field: string, fallback?: number, min = 1): number {
    const v = this.obj[field] ?? fallback;
    if (v === undefined || v === null) this.#fail(field, "is missing");
    if (typeof v !== "number" || !Number.isSafeInteger(v)) {
      this.#fail(field, `must be an integer, got ${JSON.stringify(v)}`);
    }
    if (v < min) this.#fail(field, `must be at least ${min}, got ${v}`);
    return v;
  }

  num(field: string, fallback?: number, positive = true): number {
    const v = this.obj[field] ?? fallback;
    if (v === undefined || v === null) this.#fail(field, "is missing");
    if (typeof v !== "number" || !Number.isFinite(v)) {
      this.#fail(field, `must be a number, got ${JSON.stringify(v)}`);
    }
    if (positive && !(v > 0)) this.#fail(field, `must be positive, got ${v}`);
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    const v = this.obj[field] ?? fallback;
    if (typeof v !== "boolean") this.#fail(field, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  optId(field: string): number | null {
    const v = this.obj[field];
    if (v === undefined || v === null) return null;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      this.#fail(field, `must be a token id, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  ids(field: string): number[] {
    const v = this.obj[field];
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) {
      this.#fail(field, `must be a token id or a list of them, got ${JSON.stringify(v)}`);
    }
    return list as number[];
  }

  str(field: string): string | null {
    const v = this.obj[field];
    if (v === undefined || v === null) return null;
    if (typeof v !== "string") this.#fail(field, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }
}

/** Defaults of each transformers config class that differ between architectures. */
const DEFAULTS: Record<TargetArchitecture, { rmsNormEps: number; maxPos: number; ropeTheta: number }> = {
  LlamaForCausalLM: { rmsNormEps: 1e-6, maxPos: 2048, ropeTheta: 10000 },
  Qwen2ForCausalLM: { rmsNormEps: 1e-6, maxPos: 32768, ropeTheta: 10000 },
  Qwen3ForCausalLM: { rmsNormEps: 1e-6, maxPos: 32768, ropeTheta: 10000 },
  Qwen3MoeForCausalLM: { rmsNormEps: 1e-6, maxPos: 32768, ropeTheta: 10000 },
  Qwen2MoeForCausalLM: { rmsNormEps: 1e-6, maxPos: 32768, ropeTheta: 10000 },
  GptOssForCausalLM: { rmsNormEps: 1e-5, maxPos: 131072, ropeTheta: 150000 },
  Llama4ForCausalLM: { rmsNormEps: 1e-5, maxPos: 131072, ropeTheta: 500000 },
  MistralForCausalLM: { rmsNormEps: 1e-6, maxPos: 4096 * 32, ropeTheta: 10000 },
  Phi3ForCausalLM: { rmsNormEps: 1e-5, maxPos: 4096, ropeTheta: 10000 },
  Gemma3ForCausalLM: { rmsNormEps: 1e-6, maxPos: 131072, ropeTheta: 1000000 },
  DeepseekV3ForCausalLM: { rmsNormEps: 1e-6, maxPos: 4096, ropeTheta: 10000 },
};

/**
 * Reads the rope scaling from `rope_scaling` (Transformers 4: `type` or `rope_type`), or from Transformers 5's
 * `rope_parameters` (which also carries `rope_theta`).
 */
function parseRope(
  f: Fields,
  maxPos: number,
  defaultTheta: number,
): { theta: number; scaling: RopeScaling; partialRotaryFactor: number } {
  let theta = f.has("rope_theta") ? f.num("rope_theta") : defaultTheta;
  const field = f.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  let raw = f.obj[field];
  // The partial rotary factor sits at the top level (Phi-3/4) or, in Transformers 5, in rope_parameters.
  let partialRotaryFactor = f.has("partial_rotary_factor") ? f.num("partial_rotary_factor") : 1;
  if (raw && typeof raw === "object" && !Array.isArray(raw) && "partial_rotary_factor" in raw) {
    const { partial_rotary_factor, ...rest } = raw as Json;
    partialRotaryFactor = new Fields(f.file, { partial_rotary_factor }, `${field}.`).num(
      "partial_rotary_factor",
    );
    raw = rest;
  }
  // Phi-3 keeps the pretrained context at the top level; transformers then takes factor = max / original.
  const type = raw && typeof raw === "object" ? (raw as Json).rope_type ?? (raw as Json).type : null;
  if ((type === "longrope" || type === "su") && f.has("original_max_position_embeddings")) {
    const orig = f.int("original_max_position_embeddings");
    raw = { ...(raw as Json), original_max_position_embeddings: orig, factor: maxPos / orig };
  }
  const scaling = parseRopeScaling(raw, maxPos, f.file, field);
  if (field === "rope_parameters") {
    const r = new Fields(f.file, raw as Json, `${field}.`);
    if (r.has("rope_theta")) theta = r.num("rope_theta");
  }
  return { theta, scaling, partialRotaryFactor };
}

/**
 * Parses one `rope_scaling` object of a config.json (or Transformers 5's `rope_parameters`; its `rope_theta`
 * is left to the caller) into a {@link RopeScaling}, with the transformers defaults for absent optional fields
 * (yarn: beta_fast 32, beta_slow 1, truncate true; dynamic and yarn: original_max_position_embeddings =
 * `maxPositionEmbeddings`, the model's `max_position_embeddings`). Null or undefined means plain RoPE.
 * Invalid or unsupported values throw a {@link ConfigError} naming `file` and `field`.
 */
export function parseRopeScaling(
  raw: unknown,
  maxPositionEmbeddings: number,
  file = "config.json",
  field = "rope_scaling",
): RopeScaling {
  if (raw === undefined || raw === null) return { type: "default" };
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError(`${file}: ${field} must be an object, got ${JSON.stringify(raw)}`);
  }
  const r = new Fields(file, raw as Json, `${field}.`);
  if (r.has("partial_rotary_factor") && r.num("partial_rotary_factor") !== 1) {
    throw new ConfigError(`${file}: ${field}.partial_rotary_factor must be 1 for these architectures`);
  }
  const type = r.str("rope_type") ?? r.str("type") ?? "default";
  const origMax = (fallback?: number) => r.int("original_max_position_embeddings", fallback);
  switch (type) {
    case "default":
      return { type: "default" };
    case "linear":
      return { type, factor: r.num("factor") };
    case "dynamic":
      return { type, factor: r.num("factor"), originalMaxPositionEmbeddings: origMax(maxPositionEmbeddings) };
    case "llama3": {
      const scaling: RopeScaling = {
        type,
        factor: r.num("factor"),
        lowFreqFactor: r.num("low_freq_factor"),
        highFreqFactor: r.num("high_freq_factor"),
        originalMaxPositionEmbeddings: origMax(),
      };
      if (scaling.highFreqFactor < scaling.lowFreqFactor) {
        throw new ConfigError(`${file}: ${field}.high_freq_factor must not be below low_freq_factor`);
      }
      return scaling;
    }
    case "yarn":
      return {
        type,
        factor: r.num("factor"),
        originalMaxPositionEmbeddings: origMax(maxPositionEmbeddings),
        betaFast: r.num("beta_fast", 32),
        betaSlow: r.num("beta_slow", 1),
        mscale: r.has("mscale") ? r.num("mscale") : null,
        mscaleAllDim: r.has("mscale_all_dim") ? r.num("mscale_all_dim") : null,
        attentionFactor: r.has("attention_factor") ? r.num("attention_factor") : null,
        truncate: r.bool("truncate", true),
      };
    case "su": // the name of longrope in Phi-3's first configs
    case "longrope": {
      const factors = (name: string) => {
        const v = (raw as Json)[name];
        if (!Array.isArray(v) || !v.every((x) => typeof x === "number" && x > 0)) {
          throw new ConfigError(`${file}: ${field}.${name} must be a list of positive numbers`);
        }
        return v as number[];
      };
      const orig = origMax(maxPositionEmbeddings);
      return {
        type: "longrope",
        shortFactor: factors("short_factor"),
        longFactor: factors("long_factor"),
        originalMaxPositionEmbeddings: orig,
        factor: r.has("factor") ? r.num("factor") : maxPositionEmbeddings / orig,
        attentionFactor: r.has("attention_factor") ? r.num("attention_factor") : null,
      };
    }
    default:
      throw new ConfigError(
        `${file}: ${field} type ${
          JSON.stringify(type)
        } is not supported (default, linear, dynamic, llama3, yarn, longrope/su)`,
      );
  }
}

/**
 * Validates a parsed config.json. `file` names it in errors (default "config.json"). The architecture must be
 * one of {@link SUPPORTED_ARCHITECTURES}, or a multimodal wrapper of one (lib/models/multimodal.ts), whose
 * `text_config` is parsed.
 */
export function parseTargetConfig(json: unknown, file = "config.json"): TargetConfig {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new ConfigError(`${file}: not a JSON object`);
  }
  const text = textModelOf(json as Json, file, SUPPORTED_ARCHITECTURES, (m) => new ConfigError(m));
  const f = new Fields(file, text.json, text.json === json ? "" : "text_config.");
  const archs = f.obj.architectures;
  if (!Array.isArray(archs) || archs.length === 0) {
    throw new ConfigError(
      `${file}: architectures is missing; expected one of ${SUPPORTED_ARCHITECTURES.join(", ")}`,
    );
  }
  const architecture = archs.find((a) => (SUPPORTED_ARCHITECTURES as readonly unknown[]).includes(a)) as
    | TargetArchitecture
    | undefined;
  if (!architecture) {
    throw new ConfigError(
      `${file}: architecture ${archs.join(", ")} is not supported; supported: ${
        SUPPORTED_ARCHITECTURES.join(", ")
      }`,
    );
  }
  const d = DEFAULTS[architecture];
  const hiddenSize = f.int("hidden_size");
  const numHeads = f.int("num_attention_heads");
  const numKvHeads = f.int("num_key_value_heads", numHeads);
  const mla = architecture === "DeepseekV3ForCausalLM"
    ? parseMla(f, f.has("rope_parameters") ? f.obj.rope_parameters : f.obj.rope_scaling)
    : null;
  const headDim = headDimOf(f, architecture, mla, hiddenSize, numHeads, numKvHeads);
  if (headDim % 2 !== 0) throw new ConfigError(`${file}: head_dim ${headDim} must be even for RoPE`);
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      `${file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
    );
  }
  const gemma3 = architecture === "Gemma3ForCausalLM";
  const mlpActivation = parseActivation(f, gemma3);
  const maxPositionEmbeddings = f.int("max_position_embeddings", d.maxPos);
  const gemmaRope = gemma3 ? parseGemmaRope(f, maxPositionEmbeddings) : null;
  const { theta, scaling, partialRotaryFactor } = gemmaRope
    ? { ...gemmaRope.global, partialRotaryFactor: 1 }
    : parseRope(f, maxPositionEmbeddings, d.ropeTheta);
  const rotaryDim = mla ? mla.ropeDim : rotaryDimOf(partialRotaryFactor, headDim, architecture, file);
  // GptOssConfig's attention_bias defaults to true; the others' to false.
  const attentionBias = f.bool("attention_bias", architecture === "GptOssForCausalLM");
  const qwen2 = architecture === "Qwen2ForCausalLM";
  const qwen2Moe = architecture === "Qwen2MoeForCausalLM";
  const gptOss = architecture === "GptOssForCausalLM";
  const llama4 = architecture === "Llama4ForCausalLM"
    ? llama4Conventions(f, f.int("num_hidden_layers"))
    : null;
  const qwen3 = architecture === "Qwen3ForCausalLM" || architecture === "Qwen3MoeForCausalLM";
  const mistral = architecture === "MistralForCausalLM";
  const phi3 = architecture === "Phi3ForCausalLM";
  let slidingWindow: number | null = null;
  if (phi3) {
    // Phi3Config's attention uses `sliding_window` whenever it is set (Phi-3-mini-4k: 2047).
    if (f.has("sliding_window")) slidingWindow = f.int("sliding_window");
  } else if (mistral) {
    // MistralConfig defaults to a 4096-token window when the key is absent; an explicit null turns it off.
    if (f.obj.sliding_window !== null) slidingWindow = f.int("sliding_window", 4096);
  } else if (gemma3) {
    // Gemma3TextConfig: 4096 unless given; only the sliding-window layers use it.
    slidingWindow = f.int("sliding_window", 4096);
  } else if (architecture === "Llama4ForCausalLM") {
    // Llama 4's chunked attention is not a sliding window (Llama4Conventions.chunkSize).
  } else if (gptOss) {
    // GptOssConfig: `layer_types` alternate sliding (128 tokens by default) and full layers.
    slidingWindow = f.int("sliding_window", 128);
  } else if (f.bool("use_sliding_window", false) && f.has("sliding_window")) {
    slidingWindow = f.int("sliding_window");
  }
  const numLayers = f.int("num_hidden_layers");
  const gemma = gemmaRope ? gemmaConventions(f, hiddenSize, numLayers, gemmaRope.local) : null;
  let windowLayers: boolean[] | null = gemma?.slidingLayers ?? null;
  if (
    slidingWindow !== null && gptOss
  ) {
    windowLayers = layerTypesOf(f, numLayers) ?? Array.from({ length: numLayers }, (_, i) => i % 2 === 0);
  } else if (
    slidingWindow !== null && (qwen2 || qwen2Moe || qwen3)
  ) {
    // Qwen2Config/Qwen3Config: layer_types, else sliding from max_window_layers (default 28) on.
    windowLayers = layerTypesOf(f, numLayers) ??
      Array.from({ length: numLayers }, (_, i) => i >= f.int("max_window_layers", 28, 0));
  }
  return {
    architecture,
    modelType: f.str("model_type") ?? "",
    weightPrefix: text.weightPrefix,
    hiddenSize,
    // Llama 4's dense layers are intermediate_size_mlp wide (its intermediate_size is the experts').
    intermediateSize: llama4 ? f.int("intermediate_size_mlp", 16384) : f.int("intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rotaryDim,
    vocabSize: f.int("vocab_size"),
    rmsNormEps: f.num("rms_norm_eps", d.rmsNormEps),
    ropeTheta: theta,
    ropeScaling: scaling,
    maxPositionEmbeddings,
    tieWordEmbeddings: f.bool("tie_word_embeddings", gemma3), // Gemma3TextConfig ties by default
    // Qwen2MoeConfig: `qkv_bias` (Transformers 5), true in the published checkpoints.
    qkvBias: qwen2 ||
      (qwen2Moe ? f.bool("qkv_bias", true) : !mistral && !phi3 && attentionBias),
    oBias: !qwen2 && !qwen2Moe && !mistral && !phi3 && attentionBias,
    mlpBias: architecture === "LlamaForCausalLM" && f.bool("mlp_bias", false),
    qkNorm: qwen3 || gemma3 || llama4?.l2QkNorm === true,
    fusedProjections: phi3,
    slidingWindow,
    windowLayers,
    bosTokenId: f.optId("bos_token_id"),
    eosTokenIds: f.ids("eos_token_id"),
    padTokenId: f.optId("pad_token_id"),
    torchDtype: f.str("torch_dtype") ?? f.str("dtype"),
    mlpActivation,
    gemma,
    moe: parseMoe(f, architecture, numLayers),
    attentionSinks: gptOss,
    llama4,
    mla,
  };
}

/**
 * The q/k head width: MLA's nope + rope, else `head_dim`, Qwen3's default 128, or hidden_size / heads.
 */
function headDimOf(
  f: Fields,
  architecture: TargetArchitecture,
  mla: MlaConfig | null,
  hiddenSize: number,
  numHeads: number,
  numKvHeads: number,
): number {
  if (mla) {
    // kv_b_proj expands the latent into every head (eager_attention_forward's repeat_kv needs nkv = nh).
    if (numKvHeads !== numHeads) {
      throw new ConfigError(
        `${f.file}: num_key_value_heads ${numKvHeads} must equal num_attention_heads ${numHeads} (DeepseekV3ForCausalLM)`,
      );
    }
    return mla.nopeDim + mla.ropeDim; // Transformers 5's head_dim is the rope part: RoPE's width
  } else if (f.has("head_dim")) {
    return f.int("head_dim");
  } else if (architecture === "Qwen3ForCausalLM" || architecture === "Qwen3MoeForCausalLM") {
    return 128; // Qwen3Config's and Qwen3MoeConfig's default
  } else {
    if (hiddenSize % numHeads !== 0) {
      throw new ConfigError(
        `${f.file}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads} (and no head_dim)`,
      );
    }
    return hiddenSize / numHeads;
  }
}

/** The MLP activation: `hidden_act` (Llama family: silu) or Gemma 3's `hidden_activation` (gelu_pytorch_tanh). */
function parseActivation(f: Fields, gemma3: boolean): "silu" | "gelu_tanh" {
  if (!gemma3) {
    const act = f.str("hidden_act") ?? "silu";
    if (act !== "silu") {
      throw new ConfigError(`${f.file}: hidden_act ${JSON.stringify(act)} is not supported (silu)`);
    }
    return "silu";
  }
  const act = f.str("hidden_activation") ?? f.str("hidden_act") ?? "gelu_pytorch_tanh";
  if (act !== "gelu_pytorch_tanh") {
    throw new ConfigError(
      `${f.file}: hidden_activation ${JSON.stringify(act)} is not supported (gelu_pytorch_tanh)`,
    );
  }
  return "gelu_tanh";
}

/**
 * Gemma 3's two RoPEs: Transformers 5's `rope_parameters` per layer type (`full_attention`,
 * `sliding_attention`), or Transformers 4's `rope_theta` and `rope_scaling` (full layers) with
 * `rope_local_base_freq` (sliding layers, unscaled).
 */
function parseGemmaRope(
  f: Fields,
  maxPos: number,
): Record<"global" | "local", { theta: number; scaling: RopeScaling }> {
  const params = f.obj.rope_parameters as Json | undefined;
  if (params && typeof params === "object" && ("full_attention" in params || "sliding_attention" in params)) {
    const of = (type: string, theta: number) => {
      const raw = params[type] as Json | undefined;
      if (!raw) return { theta, scaling: { type: "default" } as RopeScaling };
      const r = new Fields(f.file, raw, `rope_parameters.${type}.`);
      return {
        theta: r.has("rope_theta") ? r.num("rope_theta") : theta,
        scaling: parseRopeScaling(raw, maxPos, f.file, `rope_parameters.${type}`),
      };
    };
    return { global: of("full_attention", 1000000), local: of("sliding_attention", 10000) };
  }
  return {
    global: {
      theta: f.has("rope_theta") ? f.num("rope_theta") : 1000000,
      scaling: parseRopeScaling(f.obj.rope_scaling, maxPos, f.file),
    },
    local: {
      theta: f.has("rope_local_base_freq") ? f.num("rope_local_base_freq") : 10000,
      scaling: { type: "default" },
    },
  };
}

/** `layer_types` as sliding (true) or full (false) per layer, or null when the config has none. */
function layerTypesOf(f: Fields, numLayers: number): boolean[] | null {
  const types = f.obj.layer_types;
  if (types === undefined || types === null) return null;
  if (
    !Array.isArray(types) || types.length !== numLayers ||
    types.some((t) => t !== "sliding_attention" && t !== "full_attention")
  ) {
    throw new ConfigError(
      `${f.file}: layer_types must list num_hidden_layers ${numLayers} of sliding_attention / full_attention`,
    );
  }
  return types.map((t) => t === "sliding_attention");
}

/** Gemma 3's conventions (see {@link GemmaConventions}) from its config fields. */
function gemmaConventions(
  f: Fields,
  hiddenSize: number,
  numLayers: number,
  localRope: { theta: number; scaling: RopeScaling },
): GemmaConventions {
  for (const field of ["attn_logit_softcapping", "final_logit_softcapping"]) {
    if (f.has(field)) throw new ConfigError(`${f.file}: ${field} is not supported (Gemma 3 sets it to null)`);
  }
  if (f.bool("use_bidirectional_attention", false)) {
    throw new ConfigError(`${f.file}: use_bidirectional_attention is not supported (a causal target is)`);
  }
  const slidingLayers = layerTypesOf(f, numLayers) ??
    Array.from({ length: numLayers }, (_, i) => (i + 1) % f.int("sliding_window_pattern", 6) !== 0);
  return {
    embedScale: Math.fround(Math.sqrt(hiddenSize)),
    attentionScale: f.num("query_pre_attn_scalar", 256) ** -0.5,
    slidingLayers,
    localRope,
  };
}

/**
 * The rotary width of a head, as transformers computes it (`int(head_dim * partial_rotary_factor)`): even, at
 * least 2; a factor other than 1 only for Phi-3's family, the one architecture here whose attention splits
 * q/k into rotated and passed columns.
 */
function rotaryDimOf(factor: number, headDim: number, arch: TargetArchitecture, file: string): number {
  if (factor === 1) return headDim;
  if (arch !== "Phi3ForCausalLM" || !(factor > 0 && factor < 1)) {
    throw new ConfigError(`${file}: partial_rotary_factor ${factor} is not supported for ${arch}`);
  }
  const dim = Math.floor(headDim * factor);
  if (dim < 2 || dim % 2 !== 0) {
    throw new ConfigError(
      `${file}: partial_rotary_factor ${factor} gives an odd or empty rotary width ${dim} of head_dim ${headDim}`,
    );
  }
  return dim;
}

/** Reads and validates `path` (a config.json file). */
export async function loadTargetConfig(path: string): Promise<TargetConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ConfigError(`${path}: no such file`);
    throw e;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseTargetConfig(json, path);
}

/** Weight names of one decoder layer. Optional entries are null when the architecture has no such tensor. */
export interface LayerWeightNames {
  inputNorm: string;
  /** q_proj; with MLA q_b_proj (or q_proj when q_lora_rank is null), its rows reordered ({@link mlaRows}). */
  q: string;
  /** k_proj and v_proj; null with MLA (its keys and values come from the latent, {@link kvB}). */
  k: string | null;
  v: string | null;
  o: string;
  /** MLA: `q_a_proj` [q_lora_rank, H] and `q_a_layernorm` [q_lora_rank]; null without a q LoRA or MLA. */
  qA: string | null;
  qANorm: string | null;
  /** MLA: `kv_a_proj_with_mqa`'s latent rows [0, kv_lora_rank) and its rope rows (k_pe, reordered), as row ranges. */
  kvA: string | null;
  kPe: string | null;
  /** MLA: `kv_a_layernorm` [kv_lora_rank] and `kv_b_proj` [nh·(nope + v), kv_lora_rank]. */
  kvANorm: string | null;
  kvB: string | null;
  /**
   * MLA: q's rows are reordered on load to [rope | nope] per head, and the rope rows (of q and of k_pe) even
   * first when `interleave` (DeepSeek's RoPE pairs (2i, 2i + 1) become rotate-half pairs, as Llama 4's), so that
   * the partial rotate-half RoPE of the first columns applies; q·k is unchanged. Null for the others.
   */
  mlaRows: { heads: number; nope: number; rope: number; interleave: boolean } | null;
  qBias: string | null;
  kBias: string | null;
  vBias: string | null;
  oBias: string | null;
  /** Qwen3 per-head norms ([headDim]). */
  qNorm: string | null;
  /** GPT-OSS's attention sinks `self_attn.sinks` [nh]; null for the others. */
  sinks: string | null;
  /**
   * Llama 4: it rotates interleaved pairs (2i, 2i + 1) (`view_as_complex`), so q_proj's and k_proj's rows are
   * permuted within each head of `headDim` on load (even dims first), which the rotate-half RoPE then turns into
   * the same scores; `l2QkNorm`: the layer normalises q and k with a weightless RMS norm (no stored weight).
   * Null for the others.
   */
  llama4: { headDim: number; l2QkNorm: boolean } | null;
  kNorm: string | null;
  /** RMSNorm after attention: of the MLP input (Llama), or of the attention output (Gemma 3). */
  postAttentionNorm: string;
  /** Gemma 3's RMSNorms of the MLP input and output; null for the others. */
  preFeedforwardNorm: string | null;
  postFeedforwardNorm: string | null;
  /** The dense MLP's projections; null in a sparse MoE layer. */
  gate: string | null;
  up: string | null;
  down: string | null;
  gateBias: string | null;
  upBias: string | null;
  downBias: string | null;
  /** A sparse MoE layer's weights; null in a dense layer. */
  moe: MoeLayerNames | null;
}

/** The weights of a sparse MoE MLP, as the published checkpoints store them. */
export interface MoeLayerNames {
  /** `mlp.gate.weight` [E, H] (Qwen), `mlp.router.weight` (GPT-OSS), `feed_forward.router.weight` (Llama 4). */
  router: string;
  /** GPT-OSS's `mlp.router.bias` [E]; null for Qwen. */
  routerBias: string | null;
  /** DeepSeek-V3's `mlp.gate.e_score_correction_bias` [E] (it biases the choice only); null for the others. */
  correctionBias: string | null;
  /** Qwen: expert e's `mlp.experts.{e}.gate_proj.weight` [I, H], `up_proj` [I, H], `down_proj` [H, I]. */
  gate: string[];
  up: string[];
  down: string[];
  /**
   * GPT-OSS and Llama 4: every expert in one tensor per projection, `experts.gate_up_proj` [E, H, 2I] (GPT-OSS:
   * gate and up interleaved along 2I; Llama 4: gate then up) and `down_proj` [E, I, H] in bf16, or (GPT-OSS) in
   * MXFP4 `<name>_blocks` [E, 2I, H/32, 16] and `<name>_scales` [E, 2I, H/32] (down: [E, H, I/32, …]); with
   * `bias` (GPT-OSS) their biases `<name>_bias` [E, 2I], [E, H].
   */
  fused: { gateUp: string; down: string; mxfp4: boolean; bias: boolean } | null;
  /**
   * Qwen2-MoE's `mlp.shared_expert.{gate,up,down}_proj.weight` and `mlp.shared_expert_gate.weight` [1, H];
   * Llama 4's `feed_forward.shared_expert.*` and DeepSeek-V3's `mlp.shared_experts.*`, ungated (gateProj null).
   */
  shared: { gate: string; up: string; down: string; gateProj: string | null } | null;
}

/** Weight names of a whole target, resolved against the tensors a checkpoint actually stores. */
export interface TargetWeightNames {
  /** The embedding matrix [vocab, hidden]; `lm_head.weight` when a tied checkpoint stores only that. */
  embed: string;
  layers: LayerWeightNames[];
  finalNorm: string;
  /** The output projection [vocab, hidden]; the embedding when tied. */
  lmHead: string;
}

const EMBED = "model.embed_tokens.weight";

/** Marks a weight name as rows of a fused matrix: `…qkv_proj.weight#rows=0:3072`. */
const ROWS = "#rows=";

/**
 * The stored tensor and row range of a weight name: rows [from, to) of a fused matrix (Phi-3's `qkv_proj`,
 * `gate_up_proj`, in transformers' order q, k, v and gate, up), or null for a whole tensor.
 */
export function fusedRows(name: string): { tensor: string; from: number; to: number } | null {
  const at = name.indexOf(ROWS);
  if (at < 0) return null;
  const [from, to] = name.slice(at + ROWS.length).split(":").map(Number);
  return { tensor: name.slice(0, at), from, to };
}
const LM_HEAD = "lm_head.weight";

/**
 * Per-layer names as stored by transformers (`model.layers.{i}.…` after `cfg.weightPrefix`; Phi-3's fused
 * matrices as row ranges).
 */
function layerNames(cfg: TargetConfig, i: number): LayerWeightNames {
  const p = `${cfg.weightPrefix}model.layers.${i}`;
  const a = `${p}.self_attn`;
  const m = cfg.llama4 ? `${p}.feed_forward` : `${p}.mlp`;
  const bias = (on: boolean, name: string) => (on ? `${name}.bias` : null);
  const qOut = cfg.numHeads * cfg.headDim, kvOut = cfg.numKvHeads * cfg.headDim, f = cfg.intermediateSize;
  const fused = cfg.fusedProjections;
  const qkv = (name: string, from: number, to: number) =>
    fused ? `${a}.qkv_proj.weight${ROWS}${from}:${to}` : `${a}.${name}.weight`;
  const gateUp = (name: string, from: number, to: number) =>
    fused ? `${m}.gate_up_proj.weight${ROWS}${from}:${to}` : `${m}.${name}.weight`;
  const sparse = cfg.moe?.sparseLayers[i] ?? false;
  const mla = cfg.mla;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    q: mla?.qLoraRank ? `${a}.q_b_proj.weight` : qkv("q_proj", 0, qOut),
    k: mla ? null : qkv("k_proj", qOut, qOut + kvOut),
    v: mla ? null : qkv("v_proj", qOut + kvOut, qOut + 2 * kvOut),
    ...mlaNames(cfg, a),
    o: `${a}.o_proj.weight`,
    qBias: bias(cfg.qkvBias, `${a}.q_proj`),
    kBias: bias(cfg.qkvBias, `${a}.k_proj`),
    vBias: bias(cfg.qkvBias, `${a}.v_proj`),
    oBias: bias(cfg.oBias, `${a}.o_proj`),
    qNorm: cfg.qkNorm && !cfg.llama4 ? `${a}.q_norm.weight` : null,
    sinks: cfg.attentionSinks ? `${a}.sinks` : null,
    llama4: cfg.llama4
      ? { headDim: cfg.headDim, l2QkNorm: cfg.llama4.l2QkNorm && cfg.llama4.ropeLayers[i] }
      : null,
    kNorm: cfg.qkNorm && !cfg.llama4 ? `${a}.k_norm.weight` : null,
    postAttentionNorm: `${p}.post_attention_layernorm.weight`,
    preFeedforwardNorm: cfg.gemma ? `${p}.pre_feedforward_layernorm.weight` : null,
    postFeedforwardNorm: cfg.gemma ? `${p}.post_feedforward_layernorm.weight` : null,
    gate: sparse ? null : gateUp("gate_proj", 0, f),
    up: sparse ? null : gateUp("up_proj", f, 2 * f),
    down: sparse ? null : `${m}.down_proj.weight`,
    gateBias: bias(cfg.mlpBias, `${m}.gate_proj`),
    upBias: bias(cfg.mlpBias, `${m}.up_proj`),
    downBias: bias(cfg.mlpBias, `${m}.down_proj`),
    moe: sparse ? moeLayerNames(cfg.moe!, m) : null,
  };
}

/** The MLA weight names of layer attention `a` (`model.layers.{i}.self_attn`), all null without MLA. */
function mlaNames(
  cfg: TargetConfig,
  a: string,
): Pick<LayerWeightNames, "qA" | "qANorm" | "kvA" | "kPe" | "kvANorm" | "kvB" | "mlaRows"> {
  const m = cfg.mla;
  if (!m) return { qA: null, qANorm: null, kvA: null, kPe: null, kvANorm: null, kvB: null, mlaRows: null };
  const kvA = `${a}.kv_a_proj_with_mqa.weight${ROWS}`, r = m.kvLoraRank;
  return {
    qA: m.qLoraRank ? `${a}.q_a_proj.weight` : null,
    qANorm: m.qLoraRank ? `${a}.q_a_layernorm.weight` : null,
    kvA: `${kvA}0:${r}`,
    kPe: `${kvA}${r}:${r + m.ropeDim}`,
    kvANorm: `${a}.kv_a_layernorm.weight`,
    kvB: `${a}.kv_b_proj.weight`,
    mlaRows: { heads: cfg.numHeads, nope: m.nopeDim, rope: m.ropeDim, interleave: m.interleave },
  };
}

/**
 * The names of a sparse MLP whose experts are fused per projection (GPT-OSS: router bias, expert biases, maybe
 * MXFP4; Llama 4: an ungated shared expert).
 */
function fusedMoeNames(
  m: string,
  o: { routerBias: boolean; mxfp4: boolean; bias: boolean; shared: boolean },
): MoeLayerNames {
  const s = `${m}.shared_expert`;
  return {
    router: `${m}.router.weight`,
    routerBias: o.routerBias ? `${m}.router.bias` : null,
    correctionBias: null,
    gate: [],
    up: [],
    down: [],
    fused: {
      gateUp: `${m}.experts.gate_up_proj`,
      down: `${m}.experts.down_proj`,
      mxfp4: o.mxfp4,
      bias: o.bias,
    },
    shared: o.shared
      ? {
        gate: `${s}.gate_proj.weight`,
        up: `${s}.up_proj.weight`,
        down: `${s}.down_proj.weight`,
        gateProj: null,
      }
      : null,
  };
}

/** The sparse MLP's weight names under `m` (`model.layers.{i}.mlp`). */
function moeLayerNames(moe: MoeConfig, m: string): MoeLayerNames {
  if (moe.gptOss) {
    return fusedMoeNames(m, { routerBias: true, mxfp4: moe.gptOss.mxfp4, bias: true, shared: false });
  }
  if (moe.inputScaled) {
    return fusedMoeNames(m, { routerBias: false, mxfp4: false, bias: false, shared: true });
  }
  const experts = (proj: string) =>
    Array.from({ length: moe.experts }, (_, e) => `${m}.experts.${e}.${proj}.weight`);
  const grouped = moe.routing === "grouped";
  const s = grouped ? `${m}.shared_experts` : `${m}.shared_expert`;
  return {
    router: `${m}.gate.weight`,
    routerBias: null,
    correctionBias: grouped ? `${m}.gate.e_score_correction_bias` : null,
    fused: null,
    gate: experts("gate_proj"),
    up: experts("up_proj"),
    down: experts("down_proj"),
    shared: moe.sharedIntermediate === null ? null : {
      gate: `${s}.gate_proj.weight`,
      up: `${s}.up_proj.weight`,
      down: `${s}.down_proj.weight`,
      gateProj: grouped ? null : `${m}.shared_expert_gate.weight`,
    },
  };
}

/**
 * The shape every weight must have: projections are stored [out, in] (PyTorch `nn.Linear`), norms and biases
 * are vectors.
 */
export function expectedWeightShapes(cfg: TargetConfig, names: TargetWeightNames): Map<string, number[]> {
  const { hiddenSize: h, intermediateSize: f, vocabSize: v, headDim: hd } = cfg;
  const qOut = cfg.numHeads * hd;
  const kvOut = cfg.numKvHeads * hd;
  const shapes = new Map<string, number[]>([[names.embed, [v, h]], [names.lmHead, [v, h]], [names.finalNorm, [
    h,
  ]]]);
  for (const l of names.layers) {
    const entries: Array<[string | null, number[]]> = [
      [l.inputNorm, [h]],
      ...mlaShapes(cfg, l),
      [l.q, [qOut, cfg.mla?.qLoraRank ?? h]],
      [l.k, [kvOut, h]],
      [l.v, [kvOut, h]],
      [l.o, [h, cfg.mla ? cfg.numHeads * cfg.mla.vHeadDim : qOut]],
      [l.qBias, [qOut]],
      [l.kBias, [kvOut]],
      [l.vBias, [kvOut]],
      [l.oBias, [h]],
      [l.qNorm, [hd]],
      [l.kNorm, [hd]],
      [l.sinks, [cfg.numHeads]],
      [l.postAttentionNorm, [h]],
      [l.preFeedforwardNorm, [h]],
      [l.postFeedforwardNorm, [h]],
      [l.gate, [f, h]],
      [l.up, [f, h]],
      [l.down, [h, f]],
      [l.gateBias, [f]],
      [l.upBias, [f]],
      [l.downBias, [h]],
      ...moeShapes(cfg, l.moe),
    ];
    for (const [name, shape] of entries) {
      if (!name) continue;
      // A fused matrix (Phi-3) is checked whole: its rows end with the last slice's.
      const fused = fusedRows(name);
      if (fused) shapes.set(fused.tensor, [Math.max(shapes.get(fused.tensor)?.[0] ?? 0, fused.to), shape[1]]);
      else shapes.set(name, shape);
    }
  }
  return shapes;
}

/** The shapes of a layer's MLA weights (`model.layers.{i}` names: {@link mlaNames}); none without MLA. */
function mlaShapes(cfg: TargetConfig, l: LayerWeightNames): Array<[string | null, number[]]> {
  const m = cfg.mla;
  if (!m) return [];
  const h = cfg.hiddenSize, q = m.qLoraRank ?? 0, r = m.kvLoraRank;
  return [
    [l.qA, [q, h]],
    [l.qANorm, [q]],
    [l.kvA, [r, h]],
    [l.kPe, [m.ropeDim, h]],
    [l.kvANorm, [r]],
    [l.kvB, [cfg.numHeads * (m.nopeDim + m.vHeadDim), r]],
  ];
}

/** GPT-OSS's fused expert tensors and their shapes (see {@link MoeLayerNames.fused}). */
export function fusedExpertShapes(
  n: NonNullable<MoeLayerNames["fused"]>,
  E: number,
  I: number,
  h: number,
): Array<[string, number[]]> {
  const out: Array<[string, number[]]> = n.bias
    ? [[`${n.gateUp}_bias`, [E, 2 * I]], [`${n.down}_bias`, [E, h]]]
    : [];
  if (n.mxfp4) {
    out.push(
      [`${n.gateUp}_blocks`, [E, 2 * I, h / 32, 16]],
      [`${n.gateUp}_scales`, [E, 2 * I, h / 32]],
      [`${n.down}_blocks`, [E, h, I / 32, 16]],
      [`${n.down}_scales`, [E, h, I / 32]],
    );
  } else {
    out.push([n.gateUp, [E, h, 2 * I]], [n.down, [E, I, h]]);
  }
  return out;
}

/** The shapes of a sparse MLP's weights (none for a dense layer). */
function moeShapes(cfg: TargetConfig, n: MoeLayerNames | null): Array<[string, number[]]> {
  if (!n) return [];
  const { experts: E, expertIntermediate: I, sharedIntermediate: S } = cfg.moe!, h = cfg.hiddenSize;
  const out: Array<[string, number[]]> = [[n.router, [E, h]]];
  if (n.routerBias) out.push([n.routerBias, [E]]);
  if (n.correctionBias) out.push([n.correctionBias, [E]]);
  if (n.fused) out.push(...fusedExpertShapes(n.fused, E, I, h));
  for (let e = 0; e < E; e++) out.push([n.gate[e], [I, h]], [n.up[e], [I, h]], [n.down[e], [h, I]]);
  if (n.shared) {
    out.push([n.shared.gate, [S!, h]], [n.shared.up, [S!, h]], [n.shared.down, [h, S!]]);
    if (n.shared.gateProj) out.push([n.shared.gateProj, [1, h]]);
  }
  return out;
}

/**
 * The weight names of `cfg` as transformers saves them: the embedding is `model.embed_tokens.weight`, and
 * lm_head is `lm_head.weight`, or the embedding when tied (each after `cfg.weightPrefix`). Use
 * {@link resolveWeightNames} to check them against a real checkpoint.
 */
export function targetWeightNames(cfg: TargetConfig): TargetWeightNames {
  const embed = cfg.weightPrefix + EMBED;
  return {
    embed,
    layers: Array.from({ length: cfg.numLayers }, (_, i) => layerNames(cfg, i)),
    finalNorm: `${cfg.weightPrefix}model.norm.weight`,
    lmHead: cfg.tieWordEmbeddings ? embed : cfg.weightPrefix + LM_HEAD,
  };
}

/**
 * Resolves the weight names of `cfg` against a checkpoint: `has(name)` says whether a tensor is stored and
 * `shapeOf(name)` gives its shape. Tied embeddings: lm_head reads the embedding; a tied checkpoint that
 * stores only `lm_head.weight` (as transformers does when the tied key is dropped the other way round, e.g.
 * tinystories-656K) has its embedding read from `lm_head.weight`. Every expected tensor must exist with the
 * expected shape, else a {@link ConfigError} names `where` and the tensor.
 */
export function resolveWeightNames(
  cfg: TargetConfig,
  has: (name: string) => boolean,
  shapeOf: (name: string) => number[],
  where = "checkpoint",
): TargetWeightNames {
  const stored = { embed: cfg.weightPrefix + EMBED, lmHead: cfg.weightPrefix + LM_HEAD };
  let { embed, lmHead } = stored;
  if (cfg.tieWordEmbeddings) {
    if (has(stored.embed)) lmHead = stored.embed;
    else if (has(stored.lmHead)) embed = stored.lmHead;
    else {
      throw new ConfigError(
        `${where}: neither ${stored.embed} nor ${stored.lmHead} is stored (tied embeddings)`,
      );
    }
  } else if (!has(lmHead)) {
    throw new ConfigError(
      `${where}: ${lmHead} is missing and config.json says tie_word_embeddings is false`,
    );
  }
  const names: TargetWeightNames = { ...targetWeightNames(cfg), embed, lmHead };
  for (const [name, shape] of expectedWeightShapes(cfg, names)) {
    if (!has(name)) throw new ConfigError(`${where}: tensor ${name} is missing (${cfg.architecture})`);
    const got = shapeOf(name);
    if (got.length !== shape.length || got.some((x, i) => x !== shape[i])) {
      throw new ConfigError(`${where}: tensor ${name} has shape [${got}], config.json implies [${shape}]`);
    }
  }
  return names;
}

/** The auxiliary layers whose outputs EAGLE-3 captures, and whether the spec's formula had to be replaced. */
export interface AuxLayerChoice {
  /** Three 0-based decoder-layer ids, ascending. */
  layers: number[];
  /** A sentence for the user when the formula was not used (too shallow a target), else null. */
  message: string | null;
}

/**
 * The default auxiliary layers: {@link specForgeDefaultAuxLayers} when N >= 7.
 *
 * The formula gives three distinct ascending layers only when N >= 7; below that some ids are negative or
 * repeat (N = 6 gives [1, 2, 2], N = 4 gives [1, 1, 0]), and SGLang captures a *set* of layers, so repeats
 * would silently drop one. For N < 7 the choice is instead three layers spread evenly over the depth:
 * `round(i·(N−1)/2)` for i = 0, 1, 2, i.e. the first layer, the middle one and the last one (N = 6 → [0, 3, 5],
 * N = 3 → [0, 1, 2]). With N = 2 or N = 1 there are not three distinct layers; ids then repeat (N = 2 →
 * [0, 1, 1]) and a draft trained on them must be exported with these ids written out.
 */
export function defaultAuxLayers(numLayers: number): AuxLayerChoice {
  if (!Number.isSafeInteger(numLayers) || numLayers < 1) {
    throw new ConfigError(`num_hidden_layers must be a positive integer, got ${numLayers}`);
  }
  const n = numLayers, formula = specForgeDefaultAuxLayers(n);
  if (n >= 7) return { layers: formula, message: null };
  const layers = [0, 1, 2].map((i) => Math.min(n - 1, Math.round((i * (n - 1)) / 2)));
  const repeats = n < 3 ? "; with fewer than 3 layers some repeat" : "";
  return {
    layers,
    message: `target has ${n} layers, too few for the default aux layers [1, N/2-1, N-4] = [${formula}]; ` +
      `using [${layers}] (first, middle, last${repeats})`,
  };
}

/**
 * SpecForge's and SGLang's default aux layers of an N-layer target, `[1, N/2 − 1, N − 4]` (integer division;
 * SpecForge `specforge/modeling/target/eagle3_target_model.py` `set_aux_hidden_states_layers`, SGLang's
 * default in `set_eagle3_layers_to_capture`), as the formula gives them even for N < 7. A server uses it when
 * a draft's config.json has no `eagle_config`, so the export compares a draft's layers with it.
 */
export function specForgeDefaultAuxLayers(numLayers: number): number[] {
  return [1, Math.floor(numLayers / 2) - 1, numLayers - 4];
}

/**
 * Checks user-given auxiliary layers: three integers in [0, N−1], strictly ascending (the order in which
 * the states are concatenated and in which SGLang captures them), or merely ascending for targets of fewer than
 * three layers, where a repeat is unavoidable. Returns them; throws naming the problem.
 */
export function checkAuxLayers(layers: number[], numLayers: number, count: number | null = 3): number[] {
  if (count !== null ? layers.length !== count : layers.length === 0) {
    throw new ConfigError(`aux layers must be ${count ?? "one or more"} layer ids, got [${layers}]`);
  }
  for (const l of layers) {
    if (!Number.isSafeInteger(l) || l < 0 || l >= numLayers) {
      throw new ConfigError(
        `aux layer ${l} is not a layer of this ${numLayers}-layer target (0..${numLayers - 1})`,
      );
    }
  }
  // Three distinct layers exist only when N >= 3; shallower targets may repeat one (e.g. [0, 1, 1]).
  const ascending = numLayers >= 3
    ? layers.every((l, i) => i === 0 || layers[i - 1] < l)
    : layers.every((l, i) => i === 0 || layers[i - 1] <= l);
  if (!ascending) {
    throw new ConfigError(
      `aux layers [${layers}] must be ${numLayers >= 3 ? "strictly ascending" : "ascending"}`,
    );
  }
  return layers;
}
