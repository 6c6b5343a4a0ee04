/**
 * The speculators format of an EAGLE-3 draft (vLLM's `speculators` library, `Eagle3SpeculatorConfig` and
 * `Eagle3Speculator` in `speculators/models/eagle3.py`; read by vLLM's
 * `vllm/transformers_utils/configs/speculators/base.py` `SpeculatorsConfig` and `algos.py` `update_eagle3`).
 * A speculators directory names its verifier and its proposal method, so `vllm serve <dir>` serves the
 * verifier with the draft attached and no `--speculative-config` at all.
 *
 * config.json:
 *   architectures ["Eagle3Speculator"], speculators_model_type "eagle3",
 *   transformer_layer_config   the draft layer's Llama config (hidden, intermediate, heads, rope, eps, vocab)
 *   draft_vocab_size, target_hidden_size,
 *   norm_before_residual false  SpecForge's midlayer keeps the un-normed fc output as the residual (speculators'
 *                               own default is true, so it is written out)
 *   eagle_aux_hidden_state_layer_ids   in vLLM's convention (the input of layer j = SGLang's id + 1)
 *   speculators_config  {algorithm, proposal_methods [{proposal_type "greedy", speculative_tokens, ...}],
 *                        default_proposal_method, verifier {name_or_path, architectures}}
 * model.safetensors: the SGLang export's tensors with `midlayer.` renamed `layers.0.` (Eagle3Speculator's
 * module names; vLLM's `llama_eagle3.py` loader accepts both).
 *
 * EAGLE-3.1's fc_norm has no field in `Eagle3SpeculatorConfig` and no parameter in vLLM's model, so such a
 * draft is refused rather than written into a directory that would drop its norms.
 */
import { join } from "node:path";
import { writeJsonAtomic } from "../io/atomic.ts";
import { type RawTensor, SAFETENSORS_SINGLE, SafetensorsFile, writeSafetensors } from "../io/safetensors.ts";
import { shapeString } from "../tensor.ts";
import type { DraftConfig } from "./draft_config.ts";
import { ExportError } from "./export_error.ts";
import { checkFiniteFile } from "./finite_weights.ts";

/** The target model a speculators directory names as its verifier. */
export interface SpeculatorsVerifier {
  /** A hub id or a local path of the target, as `vllm serve` will open it. */
  nameOrPath: string;
  /** The target's architectures (from its config.json), when known. */
  architectures?: string[];
}

/** Options of {@link sglangToSpeculators}. */
export interface SpeculatorsOptions {
  /** The verifier (target) the draft was trained against. */
  verifier: SpeculatorsVerifier;
  /** Draft tokens per round of the greedy proposal method (vLLM's num_speculative_tokens; default 3). */
  speculativeTokens?: number;
}

/** Keys of the SGLang config.json that form the Llama config of the draft layer. */
const LAYER_KEYS = [
  "hidden_size",
  "intermediate_size",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "hidden_act",
  "max_position_embeddings",
  "rms_norm_eps",
  "rope_theta",
  "rope_scaling",
  "vocab_size",
  "pad_token_id",
  "bos_token_id",
  "eos_token_id",
];

/** The tensor names of an Eagle3Speculator (and of vLLM's loader for it). */
const SPECULATORS_TENSOR = new RegExp(
  "^(fc\\.weight|norm\\.weight|lm_head\\.weight|d2t|t2d|" +
    "layers\\.0\\.(hidden_norm|input_layernorm|post_attention_layernorm)\\.weight|" +
    "layers\\.0\\.self_attn\\.[qkvo]_proj\\.weight|layers\\.0\\.mlp\\.(gate|up|down)_proj\\.weight)$",
);

/** Whether `dir`'s config.json is a speculators one (has speculators_model_type). */
export async function isSpeculatorsDir(dir: string): Promise<boolean> {
  try {
    return "speculators_model_type" in JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  } catch {
    return false;
  }
}

/** The speculators config.json of a checked SGLang config `json` (see the module comment). */
export function speculatorsConfigJson(
  json: Record<string, unknown>,
  o: SpeculatorsOptions,
): Record<string, unknown> {
  const layer: Record<string, unknown> = {
    model_type: "llama",
    num_hidden_layers: 1,
    tie_word_embeddings: false,
  };
  for (const key of LAYER_KEYS) if (json[key] !== undefined) layer[key] = json[key];
  const eagle = json.eagle_config as Record<string, unknown> | undefined;
  const ids = eagle?.eagle_aux_hidden_state_layer_ids as number[] | undefined;
  const verifier: Record<string, unknown> = { name_or_path: o.verifier.nameOrPath };
  if (o.verifier.architectures) verifier.architectures = o.verifier.architectures;
  return {
    architectures: ["Eagle3Speculator"],
    speculators_model_type: "eagle3",
    transformer_layer_config: layer,
    draft_vocab_size: json.draft_vocab_size,
    target_hidden_size: json.target_hidden_size ?? json.hidden_size,
    norm_before_residual: false,
    ...(ids ? { eagle_aux_hidden_state_layer_ids: ids.map((l) => l + 1) } : {}),
    torch_dtype: json.torch_dtype,
    speculators_config: {
      algorithm: "eagle3",
      proposal_methods: [{
        proposal_type: "greedy",
        speculative_tokens: o.speculativeTokens ?? 3,
        verifier_accept_k: 1,
        accept_tolerance: 0,
      }],
      default_proposal_method: "greedy",
      verifier,
    },
  };
}

/**
 * Rewrites the SGLang export in `dir`, already checked as `checked` (lib/models/export.ts
 * `checkDraftExport`), into the speculators format (config.json and the tensor names), then
 * {@link checkSpeculatorsExport}. An EAGLE-3.1 draft (fc_norm) is an {@link ExportError}.
 */
export async function sglangToSpeculators(
  dir: string,
  checked: { json: Record<string, unknown>; config: DraftConfig },
  o: SpeculatorsOptions,
): Promise<void> {
  if (checked.config.fcNorm) {
    throw new ExportError(
      `${dir}: an EAGLE-3.1 draft (fc_norm) has no speculators form (Eagle3SpeculatorConfig has no fc_norm); ` +
        `export it with --format sglang`,
    );
  }
  const stPath = join(dir, SAFETENSORS_SINGLE);
  const f = await SafetensorsFile.open(stPath);
  const tensors: Array<[string, RawTensor]> = [];
  try {
    for (const name of f.names) tensors.push([name.replace(/^midlayer\./, "layers.0."), await f.read(name)]);
  } finally {
    f.close();
  }
  await writeSafetensors(stPath, tensors, { format: "pt" });
  await writeJsonAtomic(join(dir, "config.json"), speculatorsConfigJson(checked.json, o));
  await checkSpeculatorsExport(dir);
}

/**
 * Checks a speculators EAGLE-3 directory as vLLM's `SpeculatorsConfig.validate_speculators_config` and its
 * EAGLE-3 loader would: the structure (speculators_model_type, a first proposal method with
 * speculative_tokens, verifier.name_or_path, a transformer_layer_config object), draft_vocab_size, aux ids
 * ≥ 1, tensor names of an Eagle3Speculator, and fc's input width 3·target_hidden_size. Throws an
 * {@link ExportError} naming the file and the field or tensor.
 */
export async function checkSpeculatorsExport(
  dir: string,
): Promise<{ names: string[]; speculativeTokens: number }> {
  const cfgPath = join(dir, "config.json");
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(cfgPath));
  } catch (e) {
    throw new ExportError(`${cfgPath}: ${(e as Error).message}`);
  }
  const fail = (why: string): never => {
    throw new ExportError(`${cfgPath}: ${why}`);
  };
  if (json.speculators_model_type !== "eagle3") fail(`speculators_model_type must be "eagle3"`);
  const spec = json.speculators_config as Record<string, unknown> | undefined;
  const methods = spec?.proposal_methods as Array<Record<string, unknown>> | undefined;
  const tokens = methods?.[0]?.speculative_tokens;
  if (!Number.isInteger(tokens) || (tokens as number) < 1) {
    fail("speculators_config.proposal_methods[0].speculative_tokens must be an integer ≥ 1");
  }
  const verifier = spec?.verifier as Record<string, unknown> | undefined;
  if (typeof verifier?.name_or_path !== "string" || verifier.name_or_path === "") {
    fail("speculators_config.verifier.name_or_path is missing");
  }
  const layer = json.transformer_layer_config as Record<string, unknown> | undefined;
  if (!layer || typeof layer !== "object" || Array.isArray(layer)) {
    fail("transformer_layer_config must be an object");
  }
  if (typeof json.draft_vocab_size !== "number") fail("draft_vocab_size is missing");
  const ids = json.eagle_aux_hidden_state_layer_ids;
  if (ids !== undefined && (!Array.isArray(ids) || !ids.every((l) => Number.isInteger(l) && l >= 1))) {
    fail(`eagle_aux_hidden_state_layer_ids must be integers ≥ 1, got ${JSON.stringify(ids)}`);
  }
  const names = await checkSpeculatorsTensors(join(dir, SAFETENSORS_SINGLE), layer!, json);
  return { names, speculativeTokens: tokens as number };
}

/** The tensor half of {@link checkSpeculatorsExport}: names, and fc's shape against the config. */
async function checkSpeculatorsTensors(
  stPath: string,
  layer: Record<string, unknown>,
  json: Record<string, unknown>,
): Promise<string[]> {
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(stPath);
  } catch (e) {
    throw new ExportError(`${stPath}: ${(e as Error).message}`);
  }
  try {
    for (const name of f.names) {
      if (!SPECULATORS_TENSOR.test(name)) {
        throw new ExportError(`${stPath}: ${name} has no parameter in speculators' Eagle3Speculator`);
      }
    }
    const hidden = layer.hidden_size as number;
    const th = typeof json.target_hidden_size === "number" ? json.target_hidden_size : hidden;
    const fc = f.has("fc.weight") ? f.info("fc.weight").shape : null;
    if (!fc || fc[0] !== hidden || fc[1] !== 3 * th) {
      throw new ExportError(
        `${stPath}: fc.weight must be [${hidden}, ${3 * th}], got ${fc ? shapeString(fc) : "none"}`,
      );
    }
    await checkFiniteFile(f, "draft");
    return f.names;
  } finally {
    f.close();
  }
}
