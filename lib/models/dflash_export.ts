/**
 * A DFlash draft as SGLang (`--speculative-algorithm DFLASH`, `python/sglang/srt/models/dflash.py`) and vLLM
 * (`method: "dflash"`) load it, the layout SpecForge's `specforge export --to hf` writes: config.json
 * ({@link dflashConfigJson}: `DFlashDraftModel`, `block_size`, `dflash_config.target_layer_ids`,
 * `dflash_config.mask_token_id`, `layer_types`, `sliding_window`) and model.safetensors with `fc`,
 * `hidden_norm`, `norm` and `layers.*` (no embedding, no lm_head). Written atomically and read back.
 */
import { join } from "node:path";
import { writeDirAtomic, writeJsonAtomic } from "../io/atomic.ts";
import {
  fromFloat32As,
  type RawTensor,
  SAFETENSORS_SINGLE,
  SafetensorsFile,
  toFloat32,
  writeSafetensors,
} from "../io/safetensors.ts";
import { type ExportDtype, ExportError, SAFETENSORS_DTYPE, TORCH_DTYPE } from "./export.ts";
import { type DflashConfig, dflashConfigJson, parseDflashConfig } from "./dflash_config.ts";
import { dflashParamShapes, type DflashWeights } from "./dflash.ts";

/** Writes `weights` of `cfg` as the directory `dir` (replaced atomically when `overwrite`), then checks it. */
export async function writeDflashExport(
  dir: string,
  cfg: DflashConfig,
  weights: DflashWeights,
  opts: { dtype?: ExportDtype; overwrite?: boolean } = {},
): Promise<void> {
  await writeDirAtomic(dir, (temp) => writeDflashExportFiles(temp, cfg, weights, opts.dtype), {
    overwrite: opts.overwrite,
  });
}

/**
 * Writes config.json and model.safetensors of `weights` into the existing directory `dir` (inside an atomic
 * directory write: a checkpoint adds its training state beside them), then reads them back.
 */
export async function writeDflashExportFiles(
  dir: string,
  cfg: DflashConfig,
  weights: DflashWeights,
  dtype: ExportDtype = "bf16",
): Promise<void> {
  const tensors: Array<[string, RawTensor]> = [];
  for (const [name, shape] of dflashParamShapes(cfg)) {
    const w = weights.get(name);
    if (!w || w.length !== shape.reduce((a, b) => a * b, 1)) {
      throw new ExportError(`${dir}: weight ${name} is missing or not of shape [${shape}]`);
    }
    tensors.push([name, fromFloat32As(w, shape, SAFETENSORS_DTYPE[dtype])]);
  }
  await writeSafetensors(join(dir, SAFETENSORS_SINGLE), tensors, { format: "pt" });
  await writeJsonAtomic(join(dir, "config.json"), {
    ...dflashConfigJson(cfg),
    torch_dtype: TORCH_DTYPE[dtype],
  });
  await loadDflashExport(dir);
}

/**
 * Reads a DFlash directory back: its config (parsed and checked), and every weight as f32, each of the shape
 * the config implies, with nothing missing and nothing else (SGLang also accepts names under `model.`). An
 * {@link ExportError} names the file and the tensor.
 */
export async function loadDflashExport(
  dir: string,
): Promise<{ config: DflashConfig; weights: DflashWeights }> {
  const cfgPath = join(dir, "config.json");
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(cfgPath));
  } catch (e) {
    throw new ExportError(`${cfgPath}: ${(e as Error).message}`);
  }
  const config = parseDflashConfig(json, cfgPath);
  const file = await SafetensorsFile.open(join(dir, SAFETENSORS_SINGLE));
  try {
    const shapes = dflashParamShapes(config), weights: DflashWeights = new Map();
    const stored = new Map(file.names.map((n) => [n.replace(/^model\./, ""), n]));
    for (const name of stored.keys()) {
      if (!shapes.has(name)) {
        throw new ExportError(`${dir}: model.safetensors holds ${name}, not a DFlash weight`);
      }
    }
    for (const [name, shape] of shapes) {
      const at = stored.get(name);
      if (!at) throw new ExportError(`${dir}: model.safetensors has no ${name}`);
      const got = file.info(at).shape;
      if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
        throw new ExportError(`${dir}: ${at} has shape [${got}], the config implies [${shape}]`);
      }
      weights.set(name, toFloat32(await file.read(at), `${dir}: ${at}`));
    }
    return { config, weights };
  } finally {
    file.close();
  }
}
