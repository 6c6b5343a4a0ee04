/**
 * The SGLang serving directory of a trained EAGLE-3 draft (what SGLang
 * `python/sglang/srt/models/llama_eagle3.py` `LlamaForCausalLMEagle3.load_weights` reads; SpecForge
 * `specforge/export/to_sglang.py`): `config.json` (lib/models/draft_config.ts `draftConfigJson`) and
 * `model.safetensors` with exactly these tensors:
 *
 *   fc.weight                                   [H, 3·H_t]
 *   fc_norm.{0,1,2}.weight                      [H_t] each (EAGLE-3.1's fc_norm only)
 *   midlayer.hidden_norm.weight                 [H]
 *   midlayer.input_layernorm.weight             [H]
 *   midlayer.post_attention_layernorm.weight    [H]
 *   midlayer.self_attn.{q,k,v,o}_proj.weight    [nh·hd, 2H], [nkv·hd, 2H] ×2, [H, nh·hd]
 *   midlayer.mlp.{gate,up,down}_proj.weight     [I, H] ×2, [H, I]
 *   norm.weight                                 [H]
 *   lm_head.weight                              [Vd, H]
 *   d2t                                         int64 [Vd]   (target id of draft i = i + d2t[i])
 *   t2d                                         bool  [V]
 *
 * in bf16 by default (f16 or f32 on request), and no embedding (SGLang takes the target's). SGLang silently
 * skips unknown keys, so the export checks before writing that the weights are exactly these names with
 * these shapes, and after writing reads the directory back and checks it again (keys, dtypes, shapes, the
 * config's fields, d2t/t2d consistency). The directory is written atomically.
 */
import { join } from "node:path";
import { writeDirAtomic, writeJsonAtomic } from "../io/atomic.ts";
import {
  fromFloat32As,
  type RawTensor,
  SAFETENSORS_SINGLE,
  SafetensorsFile,
  toNumbers,
  writeSafetensors,
} from "../io/safetensors.ts";
import { type DraftConfig, draftConfigJson, parseDraftConfig } from "./draft_config.ts";
import { eagle3ParamNames, eagle3ParamShapes } from "./eagle3.ts";
import { type VocabMapping, vocabMappingTensors } from "../data/vocab.ts";
import { shapeString } from "../tensor.ts";
import { ExportError } from "./export_error.ts";
import { checkFiniteFile } from "./finite_weights.ts";
import { sglangToSpeculators, type SpeculatorsOptions } from "./export_speculators.ts";

/** Dtypes an export can store its float weights in. */
export type ExportDtype = "bf16" | "f16" | "f32";

/** The safetensors dtype of each export dtype. */
export const SAFETENSORS_DTYPE = { bf16: "BF16", f16: "F16", f32: "F32" } as const;
/** The config.json `torch_dtype` of each export dtype. */
export const TORCH_DTYPE = { bf16: "bfloat16", f16: "float16", f32: "float32" } as const;

export { ExportError } from "./export_error.ts";

/** The float weights of an export (the module comment's keys but d2t and t2d) with their shapes for `cfg`. */
export function draftWeightShapes(cfg: DraftConfig): Map<string, number[]> {
  const shapes = eagle3ParamShapes(cfg);
  return new Map(eagle3ParamNames(cfg).map((name) => [name, shapes[name]!]));
}

/** One weight: f32 values and the shape they have. */
export interface NamedWeight {
  /** Row-major f32 values, exactly the product of `shape` of them. */
  values: Float32Array;
  /** Dimensions, outermost first (as in {@link draftWeightShapes}). */
  shape: number[];
}

/** What an export writes. */
export interface DraftExport {
  /** The draft config, written as config.json (with torch_dtype set to the saved dtype). */
  config: DraftConfig;
  /** Every tensor of {@link draftWeightShapes}, f32 (rounded to `dtype` on write). */
  weights: Map<string, NamedWeight>;
  /** The draft vocabulary (d2t, t2d). */
  mapping: VocabMapping;
  /**
   * SpecForge's default aux layers of the target, [1, N/2−1, N−4]: config.json gets eagle_config only when
   * the draft's ids differ (as SGLang then needs them). Absent: written whenever the config has ids.
   */
  defaultAuxLayers?: number[];
}

/** Throws an {@link ExportError} unless `weights` are exactly the tensors of the config, with its shapes. */
export function checkDraftWeights(cfg: DraftConfig, weights: Map<string, NamedWeight>, where: string): void {
  const expected = draftWeightShapes(cfg);
  for (const name of expected.keys()) {
    if (!weights.has(name)) throw new ExportError(`${where}: required tensor ${name} is missing`);
  }
  for (const [name, w] of weights) {
    const shape = expected.get(name);
    if (!shape) {
      const why = name.includes("embed")
        ? " (the embedding is never exported: SGLang uses the target's)"
        : "";
      throw new ExportError(`${where}: unexpected tensor ${name}${why}`);
    }
    if (shapeString(w.shape) !== shapeString(shape)) {
      throw new ExportError(
        `${where}: ${name} has shape ${shapeString(w.shape)}, the config needs ${shapeString(shape)}`,
      );
    }
    const n = shape.reduce((a, b) => a * b, 1);
    if (w.values.length !== n) {
      throw new ExportError(
        `${where}: ${name} has ${w.values.length} values for shape ${shapeString(shape)}`,
      );
    }
  }
}

/**
 * Writes config.json and model.safetensors into an existing directory `dir` (used inside an atomic
 * directory write), then reads them back with {@link checkDraftExport}.
 */
export async function writeDraftExportFiles(
  dir: string,
  exp: DraftExport,
  dtype: ExportDtype = "bf16",
): Promise<void> {
  const cfg = exp.config;
  checkDraftWeights(cfg, exp.weights, dir);
  if (exp.mapping.draftVocabSize !== cfg.draftVocabSize || exp.mapping.targetVocabSize !== cfg.vocabSize) {
    throw new ExportError(
      `${dir}: vocab mapping is ${exp.mapping.draftVocabSize} → ${exp.mapping.targetVocabSize}, the config has ` +
        `draft_vocab_size ${cfg.draftVocabSize} and vocab_size ${cfg.vocabSize}`,
    );
  }
  const tensors: Array<[string, RawTensor]> = [];
  for (const name of draftWeightShapes(cfg).keys()) {
    const w = exp.weights.get(name)!;
    tensors.push([name, fromFloat32As(w.values, w.shape, SAFETENSORS_DTYPE[dtype])]);
  }
  for (const [name, t] of vocabMappingTensors(exp.mapping)) tensors.push([name, t]);
  const json = draftConfigJson(cfg, { dtype: TORCH_DTYPE[dtype], defaultAuxLayers: exp.defaultAuxLayers });
  await writeSafetensors(join(dir, SAFETENSORS_SINGLE), tensors, { format: "pt" });
  await writeJsonAtomic(join(dir, "config.json"), json);
  await checkDraftExport(dir);
}

/** Serving formats an export targets: SGLang's, vLLM's EAGLE-3 config, speculators' (vLLM's own library). */
export type ExportFormat = "sglang" | "vllm" | "speculators";

/** Options of {@link exportDraft}. */
export interface ExportOptions {
  /** Dtype of the float weights (default bf16). */
  dtype?: ExportDtype;
  /** Replace `dir` if it exists. */
  overwrite?: boolean;
  /** Serving format (default sglang). */
  format?: ExportFormat;
  /** The speculators format's verifier and proposal length (required with format "speculators"). */
  speculators?: SpeculatorsOptions;
}

/**
 * Writes the SGLang (or vLLM, or speculators: `format`) directory `dir` atomically (replacing it when
 * `overwrite`), checked after writing.
 */
export async function exportDraft(dir: string, exp: DraftExport, opts: ExportOptions = {}): Promise<void> {
  if (opts.format === "speculators" && !opts.speculators) {
    throw new ExportError(`${dir}: the speculators format needs the verifier (target) to name`);
  }
  await writeDirAtomic(dir, async (tmp) => {
    await writeDraftExportFiles(tmp, exp, opts.dtype ?? "bf16");
    if (opts.format === "vllm") await sglangToVllm(tmp);
    if (opts.format === "speculators") {
      await sglangToSpeculators(tmp, await checkDraftExport(tmp), opts.speculators!);
    }
  }, { overwrite: opts.overwrite });
}

/**
 * The tensor names vLLM's EAGLE-3 loader maps to a parameter (vLLM
 * `vllm/model_executor/models/llama_eagle3.py`: `Eagle3LlamaForCausalLM.load_weights` renames d2t to
 * `draft_id_to_target_id`, skips t2d and prefixes the rest with `model.` except lm_head;
 * `LlamaModel.load_weights` renames `midlayer.` to `layers.0.` and stacks q/k/v and gate/up; any other name
 * is a KeyError there, e.g. EAGLE-3.1's fc_norm, which that model does not have).
 */
const VLLM_TENSOR = new RegExp(
  "^(fc\\.weight|norm\\.weight|lm_head\\.weight|d2t|t2d|" +
    "midlayer\\.(hidden_norm|input_layernorm|post_attention_layernorm)\\.weight|" +
    "midlayer\\.self_attn\\.[qkvo]_proj\\.weight|midlayer\\.mlp\\.(gate|up|down)_proj\\.weight)$",
);

/**
 * Rewrites the config.json of a checked SGLang export in `dir` for vLLM. Weights and architecture stay:
 * vLLM's model registry maps "LlamaForCausalLMEagle3" to its Eagle3LlamaForCausalLM. The aux layer ids move
 * to the top-level `eagle_aux_hidden_state_layer_ids` that vLLM's GPU model runner reads, in vLLM's
 * convention: vLLM's `LlamaModel.forward` captures the input of layer j (`hidden_states + residual` before
 * layer j), SGLang's the output of layer j (its `set_eagle3_layers_to_capture` adds 1), so each id is
 * SGLang's + 1. Default ids are left out: both engines default to capturing the inputs of layers
 * (2, N/2, N−3). Then {@link checkVllmExport}.
 */
export async function sglangToVllm(dir: string): Promise<void> {
  const checked = await checkDraftExport(dir);
  const json = { ...checked.json };
  const eagle = json.eagle_config as Record<string, unknown> | undefined;
  if (eagle && Array.isArray(eagle.eagle_aux_hidden_state_layer_ids)) {
    json.eagle_aux_hidden_state_layer_ids = (eagle.eagle_aux_hidden_state_layer_ids as number[]).map((l) =>
      l + 1
    );
    const rest = { ...eagle };
    delete rest.eagle_aux_hidden_state_layer_ids;
    json.eagle_config = { ...rest, use_aux_hidden_state: true };
  }
  await writeJsonAtomic(join(dir, "config.json"), json);
  await checkVllmExport(dir);
}

/**
 * Checks a vLLM EAGLE-3 directory: config.json names an architecture vLLM maps to Eagle3LlamaForCausalLM,
 * sets draft_vocab_size, has no aux ids inside eagle_config (ids go top-level, ≥ 1, in vLLM's convention);
 * model.safetensors holds only names vLLM's loader maps ({@link VLLM_TENSOR}) and fc's input width is
 * 3·target_hidden_size (vLLM sizes fc from `target_hidden_size`, else hidden_size). Throws an
 * {@link ExportError} naming the file and the field or tensor.
 */
export async function checkVllmExport(
  dir: string,
): Promise<{ names: string[]; auxLayerIds: number[] | null }> {
  const cfgPath = join(dir, "config.json");
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(cfgPath));
  } catch (e) {
    throw new ExportError(`${cfgPath}: ${(e as Error).message}`);
  }
  const archs = json.architectures;
  if (!Array.isArray(archs) || !["LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM"].includes(archs[0])) {
    throw new ExportError(
      `${cfgPath}: architectures ${JSON.stringify(archs)} is not an EAGLE-3 Llama of vLLM's`,
    );
  }
  if (typeof json.draft_vocab_size !== "number") {
    throw new ExportError(`${cfgPath}: draft_vocab_size is missing`);
  }
  const eagle = json.eagle_config as Record<string, unknown> | undefined;
  if (eagle && "eagle_aux_hidden_state_layer_ids" in eagle) {
    throw new ExportError(
      `${cfgPath}: eagle_config.eagle_aux_hidden_state_layer_ids is SGLang's; vLLM reads the top level`,
    );
  }
  const ids = json.eagle_aux_hidden_state_layer_ids;
  if (ids !== undefined && (!Array.isArray(ids) || !ids.every((l) => Number.isInteger(l) && l >= 1))) {
    throw new ExportError(
      `${cfgPath}: eagle_aux_hidden_state_layer_ids must be integers ≥ 1, got ${JSON.stringify(ids)}`,
    );
  }
  const stPath = join(dir, SAFETENSORS_SINGLE);
  const f = await openExportWeights(stPath);
  try {
    for (const name of f.names) {
      if (!VLLM_TENSOR.test(name)) {
        throw new ExportError(`${stPath}: ${name} has no parameter in vLLM's Eagle3LlamaForCausalLM`);
      }
    }
    const hidden = json.hidden_size as number;
    const th = typeof json.target_hidden_size === "number" ? json.target_hidden_size : hidden;
    const fc = f.has("fc.weight") ? f.info("fc.weight").shape : null;
    if (!fc || fc[0] !== hidden || fc[1] !== 3 * th) {
      throw new ExportError(
        `${stPath}: fc.weight must be [${hidden}, ${3 * th}], got ${fc ? shapeString(fc) : "none"}`,
      );
    }
    await checkFiniteFile(f, "draft");
    return { names: f.names, auxLayerIds: ids === undefined ? null : ids as number[] };
  } finally {
    f.close();
  }
}

/** An export's model.safetensors at `path`, opened; an unreadable file is an {@link ExportError} naming it. */
async function openExportWeights(path: string): Promise<SafetensorsFile> {
  try {
    return await SafetensorsFile.open(path);
  } catch (e) {
    throw new ExportError(`${path}: ${(e as Error).message}`);
  }
}

/** What {@link checkDraftExport} found. */
export interface CheckedExport {
  /** config.json parsed as a draft config. */
  config: DraftConfig;
  /** The raw config.json object. */
  json: Record<string, unknown>;
  /** The one float dtype of the stored weights, matching the config's torch_dtype. */
  dtype: ExportDtype;
  /** Tensor names in file order. */
  names: string[];
}

/**
 * Reads an SGLang draft directory and checks it: config.json parses as a draft config with architectures
 * ["LlamaForCausalLMEagle3"], tie_word_embeddings false and draft_vocab_size set; model.safetensors holds
 * exactly the keys listed in the module comment with the config's shapes, one float dtype matching torch_dtype, d2t I64 and t2d
 * BOOL, and d2t and t2d agree. Throws an {@link ExportError} naming the file and the tensor or field.
 */
export async function checkDraftExport(dir: string): Promise<CheckedExport> {
  const cfgPath = join(dir, "config.json");
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(cfgPath));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ExportError(`${cfgPath}: missing`);
    throw new ExportError(`${cfgPath}: not valid JSON (${(e as Error).message})`);
  }
  const config = parseDraftConfig(json, cfgPath);
  const archs = json.architectures;
  if (!Array.isArray(archs) || archs.length !== 1 || archs[0] !== "LlamaForCausalLMEagle3") {
    throw new ExportError(
      `${cfgPath}: architectures must be ["LlamaForCausalLMEagle3"], got ${JSON.stringify(archs)}`,
    );
  }
  if (json.tie_word_embeddings !== false) {
    throw new ExportError(`${cfgPath}: tie_word_embeddings must be false`);
  }
  if (typeof json.draft_vocab_size !== "number") {
    throw new ExportError(`${cfgPath}: draft_vocab_size is missing`);
  }
  const dtypeName = Object.entries(TORCH_DTYPE).find(([, t]) => t === json.torch_dtype)?.[0] as
    | ExportDtype
    | undefined;
  if (!dtypeName) {
    throw new ExportError(
      `${cfgPath}: torch_dtype ${JSON.stringify(json.torch_dtype)} is not bfloat16, float16 or float32`,
    );
  }
  const stPath = join(dir, SAFETENSORS_SINGLE);
  const f = await openExportWeights(stPath);
  try {
    const expected = draftWeightShapes(config);
    expected.set("d2t", [config.draftVocabSize]);
    expected.set("t2d", [config.vocabSize]);
    for (const name of expected.keys()) {
      if (!f.has(name)) throw new ExportError(`${stPath}: required tensor ${name} is missing`);
    }
    for (const name of f.names) {
      const shape = expected.get(name);
      if (!shape) {
        throw new ExportError(`${stPath}: unexpected tensor ${name} (SGLang would skip it silently)`);
      }
      const info = f.info(name);
      if (shapeString(info.shape) !== shapeString(shape)) {
        throw new ExportError(
          `${stPath}: ${name} has shape ${shapeString(info.shape)}, config.json needs ${shapeString(shape)}`,
        );
      }
      const want = name === "d2t" ? "I64" : name === "t2d" ? "BOOL" : SAFETENSORS_DTYPE[dtypeName];
      if (info.dtype !== want) throw new ExportError(`${stPath}: ${name} is ${info.dtype}, expected ${want}`);
    }
    const d2t = toNumbers(await f.read("d2t"), "d2t");
    const t2d = toNumbers(await f.read("t2d"), "t2d");
    let k = 0;
    for (let v = 0; v < t2d.length; v++) {
      if (!t2d[v]) continue;
      if (k >= d2t.length || k + d2t[k] !== v) {
        throw new ExportError(`${stPath}: d2t and t2d disagree at draft index ${k} (target token ${v})`);
      }
      k++;
    }
    if (k !== d2t.length) throw new ExportError(`${stPath}: t2d marks ${k} tokens, d2t has ${d2t.length}`);
    await checkFiniteFile(f, "draft");
    return { config, json, dtype: dtypeName, names: f.names };
  } finally {
    f.close();
  }
}
