/**
 * The EAGLE-3 draft model's `config.json` (SpecForge's `LlamaForCausalLMEagle3`, a LlamaConfig with
 * `draft_vocab_size`; `specforge/modeling/draft/llama3_eagle.py`, the example `configs/llama3-8B-eagle3.json`
 * and SGLang's `python/sglang/srt/models/llama_eagle3.py`): parsed and validated into a typed
 * {@link DraftConfig}, derived from a target when no draft config is given, checked against the target, and
 * written back as the config.json of an SGLang export. SpecForge's classic scripts are [C], its current
 * runtime (`specforge train`) [H].
 */
import {
  checkAuxLayers,
  ConfigError,
  parseRopeScaling,
  type RopeScaling,
  type TargetConfig,
} from "./config.ts";

/** A validated draft config (one decoder layer, the "midlayer"). */
export interface DraftConfig {
  /** H: the draft's hidden size. */
  hiddenSize: number;
  /** I: SwiGLU inner width. */
  intermediateSize: number;
  /** nh: query heads. */
  numHeads: number;
  /** nkv: key/value heads (divides nh). */
  numKvHeads: number;
  /** hd: per-head width (`head_dim`, default H / nh). */
  headDim: number;
  /** V: the target's vocabulary size (incl. padding), the size of t2d and of the frozen embedding. */
  vocabSize: number;
  /** Vd: the draft vocabulary (rows of lm_head, length of d2t); `vocab_size` when absent. */
  draftVocabSize: number;
  /** H_t: the target's hidden size; fc maps 3·H_t to H (`target_hidden_size`, default H). */
  targetHiddenSize: number;
  /** Epsilon of every RMSNorm (`rms_norm_eps`, default 1e-6). */
  rmsNormEps: number;
  /** `rope_theta` (default 10000, as SpecForge's draft when the field is absent). */
  ropeTheta: number;
  /**
   * RoPE frequency scaling (`rope_scaling`, or `rope_parameters` in Transformers 5), `{ type: "default" }`
   * when absent.
   */
  ropeScaling: RopeScaling;
  /**
   * Context length (`max_position_embeddings`, default 2048); also the default of the RoPE scaling's original
   * length.
   */
  maxPositionEmbeddings: number;
  /** Always "silu" (the only activation SpecForge's configs use). */
  hiddenAct: "silu";
  /** `eagle_config.eagle_aux_hidden_state_layer_ids` (3 target layer ids), null when absent (the default). */
  auxLayerIds: number[] | null;
  /** `pad_token_id`, null when absent. */
  padTokenId: number | null;
  /** `bos_token_id`, null when absent. */
  bosTokenId: number | null;
  /** `eos_token_id` as written (an id, a list of ids, or null). */
  eosTokenId: number | number[] | null;
  /** `torch_dtype` as written (export rewrites it to the saved dtype), null when absent. */
  torchDtype: string | null;
  /** `initializer_range` (kept for the export; Eaglet initialises as SpecForge [C], see lib/models/eagle3.ts). */
  initializerRange: number;
  /**
   * EAGLE-3.1's `fc_norm`: one RMSNorm (weight `fc_norm.i.weight` [H_t]) on each of the 3 captured target
   * states before fc (SGLang's `llama_eagle3.py`, SpecForge's `project_hidden_states`).
   */
  fcNorm: boolean;
  /**
   * The state the next TTT position (or draft step) consumes is the final-normed one, RMSNorm_final(y), not y:
   * EAGLE-3.1's `norm_output: true` as SGLang and vLLM serve it (see {@link NormOutputMeaning}).
   */
  feedNormedHidden: boolean;
  /**
   * The logits are lm_head(RMSNorm_final(y)) (true everywhere but SpecForge's `norm_output: false`, whose logits
   * are lm_head(y)).
   */
  headNorm: boolean;
}

/**
 * What a config's `norm_output` means. "upstream" (the default): SGLang's and vLLM's EAGLE-3.1, where the
 * logits always come from the final norm and `norm_output: true` feeds the normed state to the next step
 * (default false; arXiv 2605.09992, SGLang `llama_eagle3.py`). "specforge": SpecForge's
 * `LlamaForCausalLMEagle3.compute_logits` (`specforge/modeling/draft/llama3_eagle.py` at a6b6b023), where
 * `norm_output` only says whether the logits come from the final norm (default true) and the raw state is
 * always fed back; for parity with drafts trained there.
 */
export type NormOutputMeaning = "upstream" | "specforge";

/** The values of {@link NormOutputMeaning}. */
export const NORM_OUTPUT_MEANINGS = ["upstream", "specforge"] as const;

/** A parsed JSON object. */
export type Json = Record<string, unknown>;

function fail(file: string, field: string, msg: string): never {
  throw new ConfigError(`${file}: ${field} ${msg}`);
}

function int(file: string, o: Json, field: string, fallback?: number, min = 1): number {
  const v = o[field] ?? fallback;
  if (v === undefined || v === null) fail(file, field, "is missing");
  if (typeof v !== "number" || !Number.isSafeInteger(v)) {
    fail(file, field, `must be an integer, got ${JSON.stringify(v)}`);
  }
  if (v < min) fail(file, field, `must be at least ${min}, got ${v}`);
  return v;
}

function num(file: string, o: Json, field: string, fallback?: number): number {
  const v = o[field] ?? fallback;
  if (v === undefined || v === null) fail(file, field, "is missing");
  if (typeof v !== "number" || !Number.isFinite(v) || !(v > 0)) {
    fail(file, field, `must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function optId(file: string, o: Json, field: string): number | null {
  const v = o[field];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    fail(file, field, `must be a token id, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Validates a parsed draft config.json (`file` names it in errors). Accepts `architectures`
 * ["LlamaForCausalLMEagle3"] (or none: SpecForge's AutoDraftModelConfig needs it, but hand-written configs
 * often omit it), `num_hidden_layers` 1, `hidden_act` silu; `rope_scaling` or Transformers 5's
 * `rope_parameters`; `eagle_config.eagle_aux_hidden_state_layer_ids` (3 ascending non-negative ids);
 * EAGLE-3.1's `fc_norm` and `norm_output`, the latter read with `normOutput`'s meaning (default "upstream",
 * as SGLang and vLLM read it).
 */
export function parseDraftConfig(
  json: unknown,
  file = "config.json",
  normOutput: NormOutputMeaning = "upstream",
): DraftConfig {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new ConfigError(`${file}: not a JSON object`);
  }
  const o = json as Json;
  const archs = o.architectures;
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || !archs.includes("LlamaForCausalLMEagle3")) {
      fail(file, "architectures", `must be ["LlamaForCausalLMEagle3"], got ${JSON.stringify(archs)}`);
    }
  }
  const layers = int(file, o, "num_hidden_layers", 1);
  if (layers !== 1) fail(file, "num_hidden_layers", `must be 1 for an EAGLE-3 draft, got ${layers}`);
  const act = o.hidden_act ?? "silu";
  if (act !== "silu") fail(file, "hidden_act", `${JSON.stringify(act)} is not supported (silu)`);
  const fcNorm = bool(file, o, "fc_norm", false);
  const normOut = bool(file, o, "norm_output", normOutput === "specforge");
  const hiddenSize = int(file, o, "hidden_size");
  const numHeads = int(file, o, "num_attention_heads");
  const numKvHeads = int(file, o, "num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    fail(file, "num_attention_heads", `${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  }
  let headDim: number;
  if (o.head_dim !== undefined && o.head_dim !== null) {
    headDim = int(file, o, "head_dim");
  } else {
    if (hiddenSize % numHeads !== 0) {
      fail(
        file,
        "hidden_size",
        `${hiddenSize} is not divisible by num_attention_heads ${numHeads} (and no head_dim)`,
      );
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) fail(file, "head_dim", `${headDim} must be even for RoPE`);
  const vocabSize = int(file, o, "vocab_size");
  const draftVocabSize = int(file, o, "draft_vocab_size", vocabSize);
  if (draftVocabSize > vocabSize) {
    fail(file, "draft_vocab_size", `${draftVocabSize} exceeds vocab_size ${vocabSize}`);
  }
  const maxPositionEmbeddings = int(file, o, "max_position_embeddings", 2048);
  let ropeTheta = num(file, o, "rope_theta", 10000);
  const ropeField = o.rope_parameters !== undefined && o.rope_parameters !== null
    ? "rope_parameters"
    : "rope_scaling";
  const ropeScaling = parseRopeScaling(o[ropeField], maxPositionEmbeddings, file, ropeField);
  if (ropeField === "rope_parameters") {
    const rp = o.rope_parameters as Json;
    if (rp.rope_theta !== undefined) ropeTheta = num(file, rp, "rope_theta");
  }
  let auxLayerIds: number[] | null = null;
  const eagle = o.eagle_config;
  if (eagle !== undefined && eagle !== null) {
    if (typeof eagle !== "object" || Array.isArray(eagle)) fail(file, "eagle_config", "must be an object");
    const ids = (eagle as Json).eagle_aux_hidden_state_layer_ids;
    if (ids !== undefined && ids !== null) {
      const ok = Array.isArray(ids) && ids.length === 3 &&
        ids.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0);
      if (!ok) {
        fail(
          file,
          "eagle_config.eagle_aux_hidden_state_layer_ids",
          `must be 3 layer ids, got ${JSON.stringify(ids)}`,
        );
      }
      auxLayerIds = [...ids as number[]];
    }
  }
  const eos = o.eos_token_id;
  let eosTokenId: number | number[] | null = null;
  if (eos !== undefined && eos !== null) {
    const list = Array.isArray(eos) ? eos : [eos];
    if (!list.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) {
      fail(file, "eos_token_id", `must be a token id or a list of them, got ${JSON.stringify(eos)}`);
    }
    eosTokenId = Array.isArray(eos) ? [...eos as number[]] : eos as number;
  }
  const dtype = o.torch_dtype ?? o.dtype;
  return {
    hiddenSize,
    intermediateSize: int(file, o, "intermediate_size"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    draftVocabSize,
    targetHiddenSize: int(file, o, "target_hidden_size", hiddenSize),
    rmsNormEps: num(file, o, "rms_norm_eps", 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings,
    hiddenAct: "silu",
    auxLayerIds,
    padTokenId: optId(file, o, "pad_token_id"),
    bosTokenId: optId(file, o, "bos_token_id"),
    eosTokenId,
    torchDtype: typeof dtype === "string" ? dtype : null,
    initializerRange: num(file, o, "initializer_range", 0.02),
    fcNorm,
    feedNormedHidden: normOutput === "upstream" && normOut,
    headNorm: normOutput === "upstream" || normOut,
  };
}

function bool(file: string, o: Json, field: string, fallback: boolean): boolean {
  const v = o[field] ?? fallback;
  if (typeof v !== "boolean") fail(file, field, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Reads and validates a draft config.json at `path` (`norm_output` read with `normOutput`'s meaning); a
 * missing or malformed file is named.
 */
export async function loadDraftConfig(
  path: string,
  normOutput: NormOutputMeaning = "upstream",
): Promise<DraftConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ConfigError(`${path}: no such file`);
    throw new ConfigError(`${path}: cannot be read (${(e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseDraftConfig(json, path, normOutput);
}

/** Options of {@link deriveDraftConfig}. */
export interface DeriveDraftOptions {
  /** Vd (SpecForge's default 32000, capped here at the target vocabulary). */
  draftVocabSize?: number;
  /** Target layers captured for fc; written to eagle_config only when given (null = the default ids). */
  auxLayers?: number[] | null;
  /**
   * An EAGLE-3.1 draft (`fc_norm`, and `norm_output` in SGLang's meaning: the normed state feeds the next
   * step) instead of EAGLE-3's (default false).
   */
  eagle31?: boolean;
}

/**
 * The derived draft's head_dim: the target's, but for multi-head latent attention (DeepSeek-V3, Kimi-K2), whose
 * q/k head width (nope + rope) is no Llama head's and whose published config.json has no head_dim: there the
 * draft SpecForge generates takes hidden_size / num_attention_heads (56 for DeepSeek-V3).
 */
function draftHeadDim(target: TargetConfig): number {
  const hd = target.hiddenSize / target.numHeads;
  return target.mla && Number.isInteger(hd) && hd % 2 === 0 ? hd : target.headDim;
}

/**
 * The draft config SpecForge generates when none is given: the template `llama3-8B-eagle3.json` with
 * the target's vocab_size, hidden_size, num_attention_heads, num_key_value_heads, intermediate_size,
 * max_position_embeddings, rms_norm_eps, hidden_act, bos/eos/pad ids and dtype, plus — as [H] does, unlike
 * [C] (issue #231) — its head_dim, rope_theta and rope_scaling. draft_vocab_size defaults to
 * min(32000, vocab_size). With `eagle31`, the same draft with EAGLE-3.1's `fc_norm` and `norm_output`.
 */
export function deriveDraftConfig(target: TargetConfig, opts: DeriveDraftOptions = {}): DraftConfig {
  const draftVocabSize = opts.draftVocabSize ?? Math.min(32000, target.vocabSize);
  if (!Number.isSafeInteger(draftVocabSize) || draftVocabSize < 1 || draftVocabSize > target.vocabSize) {
    throw new ConfigError(
      `draft_vocab_size ${draftVocabSize} must be an integer in [1, ${target.vocabSize}] (the target's vocab_size)`,
    );
  }
  const eos = target.eosTokenIds;
  return {
    hiddenSize: target.hiddenSize,
    intermediateSize: target.intermediateSize,
    numHeads: target.numHeads,
    numKvHeads: target.numKvHeads,
    headDim: draftHeadDim(target),
    vocabSize: target.vocabSize,
    draftVocabSize,
    targetHiddenSize: target.hiddenSize,
    rmsNormEps: target.rmsNormEps,
    ropeTheta: target.ropeTheta,
    ropeScaling: target.ropeScaling,
    maxPositionEmbeddings: target.maxPositionEmbeddings,
    hiddenAct: "silu",
    auxLayerIds: opts.auxLayers ? [...opts.auxLayers] : null,
    padTokenId: target.padTokenId ?? 0,
    bosTokenId: target.bosTokenId,
    eosTokenId: eos.length === 0 ? null : eos.length === 1 ? eos[0] : [...eos],
    torchDtype: target.torchDtype,
    initializerRange: 0.02,
    fcNorm: opts.eagle31 ?? false,
    feedNormedHidden: opts.eagle31 ?? false,
    headNorm: true,
  };
}

/**
 * Throws a {@link ConfigError} unless the draft fits the target: fc's input width 3·target_hidden_size must
 * be 3·the target's hidden_size, vocab_size must equal the target's (t2d and the frozen embedding have that
 * many rows), the embedding width (target hidden) must equal the draft's hidden_size, and aux layer ids must
 * be layers of the target. The message names both values.
 */
export function checkDraftFitsTarget(draft: DraftConfig, target: TargetConfig): void {
  if (draft.targetHiddenSize !== target.hiddenSize) {
    throw new ConfigError(
      `draft config target_hidden_size ${draft.targetHiddenSize} does not match the target's hidden_size ` +
        `${target.hiddenSize} (fc takes 3 target hidden states)`,
    );
  }
  if (draft.hiddenSize !== target.hiddenSize) {
    throw new ConfigError(
      `draft config hidden_size ${draft.hiddenSize} does not match the target's hidden_size ${target.hiddenSize} ` +
        `(the draft reuses the target's embedding, of width ${target.hiddenSize})`,
    );
  }
  if (draft.vocabSize !== target.vocabSize) {
    throw new ConfigError(
      `draft config vocab_size ${draft.vocabSize} does not match the target's vocab_size ${target.vocabSize}`,
    );
  }
  if (draft.auxLayerIds) {
    for (const l of draft.auxLayerIds) {
      if (l >= target.numLayers) {
        throw new ConfigError(
          `draft config eagle_aux_hidden_state_layer_ids [${draft.auxLayerIds}] names layer ${l}, but the target ` +
            `has ${target.numLayers} layers (0..${
              target.numLayers - 1
            }): a draft trained for another target?`,
        );
      }
    }
    try {
      checkAuxLayers(draft.auxLayerIds, target.numLayers);
    } catch (e) {
      throw new ConfigError(
        `draft config eagle_aux_hidden_state_layer_ids: ${
          (e as Error).message
        } for this ${target.numLayers}-layer ` +
          "target: a draft trained for another target?",
      );
    }
  }
}

/** The config.json form of a {@link RopeScaling} (null for plain RoPE). */
export function ropeScalingJson(s: RopeScaling): Json | null {
  switch (s.type) {
    case "default":
      return null;
    case "linear":
      return { rope_type: "linear", factor: s.factor };
    case "dynamic":
      return {
        rope_type: "dynamic",
        factor: s.factor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      };
    case "llama3":
      return {
        rope_type: "llama3",
        factor: s.factor,
        low_freq_factor: s.lowFreqFactor,
        high_freq_factor: s.highFreqFactor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      };
    case "yarn": {
      const out: Json = {
        rope_type: "yarn",
        factor: s.factor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
        beta_fast: s.betaFast,
        beta_slow: s.betaSlow,
      };
      if (s.mscale !== null) out.mscale = s.mscale;
      if (s.mscaleAllDim !== null) out.mscale_all_dim = s.mscaleAllDim;
      if (s.attentionFactor !== null) out.attention_factor = s.attentionFactor;
      if (!s.truncate) out.truncate = false;
      return out;
    }
    case "longrope": {
      const out: Json = {
        rope_type: "longrope",
        short_factor: s.shortFactor,
        long_factor: s.longFactor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
        factor: s.factor,
      };
      if (s.attentionFactor !== null) out.attention_factor = s.attentionFactor;
      return out;
    }
  }
}

/** Options of {@link draftConfigJson}. */
export interface DraftConfigJsonOptions {
  /** `torch_dtype` to write: the dtype the weights are saved in (default "bfloat16", SpecForge's). */
  dtype?: "bfloat16" | "float16" | "float32";
  /**
   * The target's default aux layers: eagle_config is written only when the draft's ids differ from them
   * (SGLang then configures the target's capture from it). Without it, eagle_config is written whenever
   * the config has ids.
   */
  defaultAuxLayers?: number[];
}

/**
 * The config.json of an SGLang export (as SGLang's `LlamaForCausalLMEagle3` loads it): architectures
 * ["LlamaForCausalLMEagle3"], model_type llama, num_hidden_layers 1, tie_word_embeddings false,
 * draft_vocab_size, rope fields, eagle_config when the aux layers are not the default, torch_dtype = the
 * saved dtype, and EAGLE-3.1's `fc_norm` / `norm_output` (in SGLang's meaning) when they are not EAGLE-3's.
 * Parsing the result gives back `cfg`. A draft whose logits skip the final norm (SpecForge's `norm_output:
 * false`) has no SGLang form and is refused.
 */
export function draftConfigJson(cfg: DraftConfig, opts: DraftConfigJsonOptions = {}): Json {
  if (!cfg.headNorm) {
    throw new ConfigError(
      "this draft's logits skip the final norm (SpecForge's norm_output: false), which SGLang and vLLM " +
        "cannot serve (their logits always come from the final norm)",
    );
  }
  const out: Json = {
    architectures: ["LlamaForCausalLMEagle3"],
    model_type: "llama",
    hidden_act: cfg.hiddenAct,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    num_hidden_layers: 1,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    rope_scaling: ropeScalingJson(cfg.ropeScaling),
    vocab_size: cfg.vocabSize,
    draft_vocab_size: cfg.draftVocabSize,
    initializer_range: cfg.initializerRange,
    tie_word_embeddings: false,
    use_cache: true,
    torch_dtype: opts.dtype ?? "bfloat16",
  };
  if (cfg.targetHiddenSize !== cfg.hiddenSize) out.target_hidden_size = cfg.targetHiddenSize;
  if (cfg.padTokenId !== null) out.pad_token_id = cfg.padTokenId;
  if (cfg.bosTokenId !== null) out.bos_token_id = cfg.bosTokenId;
  if (cfg.eosTokenId !== null) out.eos_token_id = cfg.eosTokenId;
  if (cfg.fcNorm) out.fc_norm = true;
  if (cfg.fcNorm || cfg.feedNormedHidden) out.norm_output = cfg.feedNormedHidden;
  const ids = cfg.auxLayerIds;
  const dflt = opts.defaultAuxLayers;
  if (ids && !(dflt && dflt.length === ids.length && dflt.every((x, i) => x === ids[i]))) {
    out.eagle_config = { eagle_aux_hidden_state_layer_ids: [...ids], use_aux_hidden_state: true };
  }
  return out;
}
