/**
 * The DFlash draft's configuration (SpecForge `specforge/modeling/draft/dflash.py` `DFlashDraftModel`, a
 * Hugging Face `Qwen3Config` with `architectures: ["DFlashDraftModel"]`), as SGLang
 * (`python/sglang/srt/models/dflash.py`, `parse_dflash_draft_config`) and vLLM (`method: "dflash"`) load it:
 * Qwen3 decoder layers (q/k norms, no biases) whose keys and values also cover the projected target features,
 * `block_size` tokens drafted per forward, the captured target layers `dflash_config.target_layer_ids`, the
 * mask token `dflash_config.mask_token_id`, full or sliding-window layers (`layer_types`, `sliding_window`).
 * The draft has no embedding or lm_head: it borrows the target's, so `hidden_size` is the target's.
 */
import type { RopeConfig, RopeScaling } from "../ops/rope.ts";
import { ConfigError, Fields, parseRopeScaling, type TargetConfig } from "./config.ts";
import { ropeScalingJson } from "./draft_config.ts";

/** A layer's attention: every context key before the anchor, or a window of them. */
export type DflashLayerType = "full_attention" | "sliding_attention";

/** A parsed, validated DFlash draft config. */
export interface DflashConfig extends RopeConfig {
  /** H: hidden size, equal to the target's (its embedding and lm_head are borrowed). */
  hiddenSize: number;
  /** I: SwiGLU inner width. */
  intermediateSize: number;
  /** Decoder layers. */
  numLayers: number;
  /** nh: query heads. */
  numHeads: number;
  /** nkv: key/value heads (divides nh). */
  numKvHeads: number;
  /** hd: per-head width. */
  headDim: number;
  /** V: the target's vocabulary. */
  vocabSize: number;
  /** Epsilon of every RMSNorm. */
  rmsNormEps: number;
  /** B: tokens per block (the anchor and B − 1 drafted tokens). */
  blockSize: number;
  /** L: the target's depth. */
  numTargetLayers: number;
  /** The K captured target layers (0-based; the residual stream after each). */
  targetLayerIds: number[];
  /** The token that fills a block's slots after the anchor. */
  maskTokenId: number;
  /** One per layer. */
  layerTypes: DflashLayerType[];
  /** W of the sliding layers, null when every layer is full. */
  slidingWindow: number | null;
}

/**
 * SpecForge's default captured layers (`build_target_layer_ids`): n = 1 → [⌊L/2⌋]; otherwise
 * round(1 + i·(L − 4)/(n − 1)) for i < n (Python's round: halves to even). For targets too shallow for that
 * rule (L < n + 3, where it repeats layers or goes below 0) Eaglet spreads n distinct layers evenly:
 * round(i·(L − 1)/(n − 1)); n must not exceed L.
 */
export function dflashTargetLayerIds(numTargetLayers: number, n: number): number[] {
  if (n === 1) return [Math.floor(numTargetLayers / 2)];
  if (n > numTargetLayers) {
    throw new ConfigError(`${n} target layers cannot be chosen from a ${numTargetLayers}-layer target`);
  }
  const roundHalfEven = (x: number) => {
    const f = Math.floor(x), d = x - f;
    return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
  };
  if (numTargetLayers < n + 3) {
    return Array.from({ length: n }, (_, i) => roundHalfEven(i * (numTargetLayers - 1) / (n - 1)));
  }
  return Array.from({ length: n }, (_, i) => roundHalfEven(1 + i * (numTargetLayers - 4) / (n - 1)));
}

/** Parses a DFlash config.json (`file` names it in errors). */
export function parseDflashConfig(json: unknown, file = "config.json"): DflashConfig {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new ConfigError(`${file}: not a JSON object`);
  }
  const o = json as Record<string, unknown>, f = new Fields(file, o);
  const archs = o.architectures;
  if (archs !== undefined && !(Array.isArray(archs) && archs.includes("DFlashDraftModel"))) {
    throw new ConfigError(
      `${file}: architectures must be ["DFlashDraftModel"], got ${JSON.stringify(archs)}`,
    );
  }
  const dflash = (o.dflash_config ?? {}) as Record<string, unknown>;
  const d = new Fields(file, dflash, "dflash_config.");
  const hiddenSize = f.int("hidden_size"), numHeads = f.int("num_attention_heads");
  const numLayers = f.int("num_hidden_layers"), numTargetLayers = f.int("num_target_layers");
  const layerTypes = parseLayerTypes(file, o.layer_types, numLayers);
  const sliding = layerTypes.includes("sliding_attention");
  const targetLayerIds = d.has("target_layer_ids")
    ? d.ids("target_layer_ids")
    : f.has("target_layer_ids")
    ? f.ids("target_layer_ids")
    : dflashTargetLayerIds(numTargetLayers, 1);
  const cfg: DflashConfig = {
    hiddenSize,
    intermediateSize: f.int("intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads: f.int("num_key_value_heads", numHeads),
    headDim: f.int("head_dim", hiddenSize / numHeads),
    vocabSize: f.int("vocab_size"),
    rmsNormEps: f.num("rms_norm_eps", 1e-6),
    ropeTheta: f.num("rope_theta", 1e6),
    maxPositionEmbeddings: f.int("max_position_embeddings", 40960),
    ropeScaling: { type: "default" },
    blockSize: d.has("block_size") ? d.int("block_size", undefined, 2) : f.int("block_size", undefined, 2),
    numTargetLayers,
    targetLayerIds,
    maskTokenId: d.has("mask_token_id")
      ? d.int("mask_token_id", undefined, 0)
      : f.int("mask_token_id", undefined, 0),
    layerTypes,
    slidingWindow: sliding ? f.int("sliding_window") : null,
  };
  cfg.ropeScaling = parseRopeScaling(o.rope_scaling ?? null, cfg.maxPositionEmbeddings, file);
  checkDflashConfig(cfg, file);
  return cfg;
}

function parseLayerTypes(file: string, raw: unknown, layers: number): DflashLayerType[] {
  if (raw === undefined || raw === null) return Array(layers).fill("full_attention");
  const ok = Array.isArray(raw) && raw.length === layers &&
    raw.every((t) => t === "full_attention" || t === "sliding_attention");
  if (!ok) {
    throw new ConfigError(
      `${file}: layer_types must list ${layers} of "full_attention" / "sliding_attention", got ${
        JSON.stringify(raw)
      }`,
    );
  }
  return raw as DflashLayerType[];
}

/** Throws a {@link ConfigError} naming `file` and the field unless `cfg` is consistent. */
export function checkDflashConfig(cfg: DflashConfig, file = "config.json"): void {
  const fail = (msg: string): never => {
    throw new ConfigError(`${file}: ${msg}`);
  };
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    fail(`num_attention_heads ${cfg.numHeads} is not a multiple of num_key_value_heads ${cfg.numKvHeads}`);
  }
  if (!Number.isInteger(cfg.headDim) || cfg.headDim % 2 !== 0) fail(`head_dim ${cfg.headDim} must be even`);
  const ids = cfg.targetLayerIds;
  const ascending = ids.every((l, i) => i === 0 || ids[i - 1] < l);
  if (ids.length === 0 || !ascending || ids.some((l) => l < 0 || l >= cfg.numTargetLayers)) {
    fail(
      `dflash_config.target_layer_ids ${
        JSON.stringify(ids)
      } must be ascending layers of the target's ${cfg.numTargetLayers}`,
    );
  }
  if (cfg.maskTokenId >= cfg.vocabSize) {
    fail(`dflash_config.mask_token_id ${cfg.maskTokenId} is outside the vocabulary (${cfg.vocabSize})`);
  }
}

/** Options of {@link deriveDflashConfig}. */
export interface DeriveDflashOptions {
  /** Draft layers (SpecForge's auto-generated default: 1). */
  layers?: number;
  /** B (default 16). */
  blockSize?: number;
  /** Captured target layers (default: {@link dflashTargetLayerIds} for `layers` of them, as SpecForge's recipes). */
  targetLayerIds?: number[];
  /** The mask token (SpecForge `resolve_mask_token_id`'s order is the caller's; required). */
  maskTokenId: number;
  /** W: the first layers sliding with this window, the last full (null: every layer full). */
  slidingWindow?: number | null;
}

/** A DFlash draft for `target`: Qwen3 layers of its widths, its vocabulary, its RoPE. */
export function deriveDflashConfig(target: TargetConfig, opts: DeriveDflashOptions): DflashConfig {
  const layers = opts.layers ?? 1, window = opts.slidingWindow ?? null;
  const cfg: DflashConfig = {
    hiddenSize: target.hiddenSize,
    intermediateSize: target.intermediateSize,
    numLayers: layers,
    numHeads: target.numHeads,
    numKvHeads: target.numKvHeads,
    headDim: target.headDim,
    vocabSize: target.vocabSize,
    rmsNormEps: target.rmsNormEps,
    ropeTheta: target.ropeTheta,
    ropeScaling: target.ropeScaling,
    maxPositionEmbeddings: target.maxPositionEmbeddings,
    blockSize: opts.blockSize ?? 16,
    numTargetLayers: target.numLayers,
    targetLayerIds: opts.targetLayerIds ??
      dflashTargetLayerIds(target.numLayers, Math.min(layers, target.numLayers)),
    maskTokenId: opts.maskTokenId,
    layerTypes: Array.from(
      { length: layers },
      (_, i) => window !== null && i < layers - 1 ? "sliding_attention" : "full_attention",
    ),
    slidingWindow: window,
  };
  checkDflashConfig(cfg, "the derived DFlash config");
  return cfg;
}

/** The config.json SGLang and vLLM load (SpecForge's export of a `DFlashDraftModel`). */
export function dflashConfigJson(cfg: DflashConfig): Record<string, unknown> {
  const sliding = cfg.slidingWindow !== null;
  return {
    architectures: ["DFlashDraftModel"],
    auto_map: { AutoModel: "dflash.DFlashDraftModel" },
    model_type: "qwen3",
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    vocab_size: cfg.vocabSize,
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    rope_scaling: ropeScalingJson(cfg.ropeScaling as RopeScaling),
    max_position_embeddings: cfg.maxPositionEmbeddings,
    hidden_act: "silu",
    attention_bias: false,
    tie_word_embeddings: false,
    block_size: cfg.blockSize,
    num_target_layers: cfg.numTargetLayers,
    dflash_config: { target_layer_ids: [...cfg.targetLayerIds], mask_token_id: cfg.maskTokenId },
    layer_types: [...cfg.layerTypes],
    use_sliding_window: sliding,
    sliding_window: sliding ? cfg.slidingWindow : null,
    torch_dtype: "bfloat16",
  };
}
