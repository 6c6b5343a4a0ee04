/**
 * Multimodal checkpoints whose language model loads as a text target: the wrapper's config.json is unwrapped to
 * its `text_config`, and the language model's weights are read under the wrapper's prefix; the vision tower and
 * the projector are neither checked nor read.
 *
 * Llama 4 Scout and Maverick are published as `Llama4ForConditionalGeneration` (transformers
 * `models/llama4/modeling_llama4.py`): `vision_model`, `multi_modal_projector` and `language_model`, a whole
 * `Llama4ForCausalLM` over `text_config` (a `Llama4TextConfig`). Its tensors are therefore
 * `language_model.model.layers.{i}.…`, `language_model.model.embed_tokens.weight`,
 * `language_model.model.norm.weight` and `language_model.lm_head.weight`, both in the published checkpoints'
 * index and in what transformers 5.18's `save_pretrained` writes (it keeps that module tree; it does not move
 * the language model to `model.language_model.` as it does for some other vision-language models). Whether
 * lm_head is tied is `text_config.tie_word_embeddings`, as transformers ties it inside the language model.
 */

/** A multimodal wrapper whose text model Eaglet loads: the text architecture and the weights' name prefix. */
export interface MultimodalWrapper {
  /** The architecture `text_config` describes. */
  text: string;
  /** Prepended to the text model's weight names (`model.layers.0.…` → `language_model.model.layers.0.…`). */
  weightPrefix: string;
}

/** The multimodal wrappers whose language model loads as a target. */
export const MULTIMODAL_WRAPPERS: Readonly<Record<string, MultimodalWrapper>> = {
  Llama4ForConditionalGeneration: { text: "Llama4ForCausalLM", weightPrefix: "language_model." },
};

/** Top-level fields that a `text_config` without them takes from its wrapper (token ids, stored dtype). */
const INHERITED = ["bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype"];

/** A config.json's text model: the object to parse and the prefix of its weight names ("" when not wrapped). */
export interface TextModelConfig {
  json: Record<string, unknown>;
  weightPrefix: string;
}

/**
 * The text model of config.json `json`: itself when it is no multimodal wrapper, or the `text_config` of one
 * in {@link MULTIMODAL_WRAPPERS} (its `architectures` set to the text architecture). Another
 * `*ForConditionalGeneration` is refused by `fail` with a message naming `supported` and the wrappers; so is a
 * quantized wrapper, whose `quantization_config` the text model's parser would not see.
 */
export function textModelOf(
  json: Record<string, unknown>,
  file: string,
  supported: readonly string[],
  fail: (message: string) => Error,
): TextModelConfig {
  const archs = Array.isArray(json.architectures) ? json.architectures : [];
  const name = archs.find((a) => typeof a === "string" && Object.hasOwn(MULTIMODAL_WRAPPERS, a));
  if (name === undefined) {
    const other = archs.find((a) => typeof a === "string" && a.endsWith("ForConditionalGeneration"));
    if (other !== undefined && !archs.some((a) => supported.includes(a))) {
      throw fail(
        `${file}: the multimodal architecture ${other} is not supported; supported: ${
          supported.join(", ")
        }, ` +
          `and the text model of ${Object.keys(MULTIMODAL_WRAPPERS).join(", ")}`,
      );
    }
    return { json, weightPrefix: "" };
  }
  const wrapper = MULTIMODAL_WRAPPERS[name];
  const text = json.text_config;
  if (text === null || typeof text !== "object" || Array.isArray(text)) {
    throw fail(
      `${file}: ${name} has no text_config object (the ${wrapper.text} config of its language model)`,
    );
  }
  const quant = json.quantization_config as { quant_method?: unknown } | null | undefined;
  if (quant) {
    throw fail(
      `${file}: quantization_config.quant_method ${
        JSON.stringify(quant.quant_method)
      } is not supported for ${name} (its bf16 checkpoints are)`,
    );
  }
  const out: Record<string, unknown> = { ...text, architectures: [wrapper.text] };
  for (const key of INHERITED) if (out[key] === undefined && json[key] !== undefined) out[key] = json[key];
  return { json: out, weightPrefix: wrapper.weightPrefix };
}
