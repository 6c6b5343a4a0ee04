/**
 * Reads a draft directory for evaluation: Eaglet's exports (lib/models/export.ts), SpecForge checkpoints and
 * SGLang draft directories alike (as SGLang `python/sglang/srt/models/llama_eagle3.py` `load_weights` reads
 * them): `config.json` (architectures
 * ["LlamaForCausalLMEagle3"] or none) and `model.safetensors` (or a sharded index) with SpecForge's key
 * names in bf16, f16 or f32 (widened to f32). As SGLang does, `d2t` maps draft index i to target id
 * i + d2t[i] and `t2d` is not needed; an embedding in the file is ignored (the target's is used). Without
 * d2t the draft vocabulary must be the target's (identity map).
 */
import type { Gpu } from "../gpu/device.ts";
import { ConfigError } from "../models/config.ts";
import { type DraftConfig, parseDraftConfig } from "../models/draft_config.ts";
import { Eagle3Draft, eagle3ParamShapes, type Eagle3Weights } from "../models/eagle3.ts";
import { SafetensorsCheckpoint, toFloat32, toNumbers } from "../io/safetensors.ts";
import { checkFiniteWeights } from "../models/finite_weights.ts";
import { shapeString } from "../tensor.ts";

/** A draft loaded on the GPU with its vocabulary map. */
export interface LoadedDraft {
  /** The draft's weights on the GPU (f32), ready for {@link SpeculativeDecoder}. */
  draft: Eagle3Draft;
  /** The directory's config.json, parsed. */
  config: DraftConfig;
  /** int32 [Vd]: target id of each draft index. */
  draftToTarget: Int32Array;
  /** The float dtype the weights were stored in (F32, F16, BF16). */
  storedDtype: string;
}

/** The config.json of draft directory `dir`, checked (no weight is read). */
export async function readDraftConfig(dir: string): Promise<DraftConfig> {
  const cfgPath = `${dir}/config.json`;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(cfgPath));
  } catch (e) {
    throw new ConfigError(`${cfgPath}: ${(e as Error).message}`);
  }
  const archs = json.architectures;
  if (archs !== undefined && !(Array.isArray(archs) && archs.includes("LlamaForCausalLMEagle3"))) {
    throw new ConfigError(
      `${cfgPath}: architectures ${JSON.stringify(archs)} is not ["LlamaForCausalLMEagle3"]`,
    );
  }
  return parseDraftConfig(json, cfgPath);
}

/** Loads the draft of directory `dir` (see the module comment); errors name the file and the tensor. */
export async function loadDraftDirectory(gpu: Gpu, dir: string): Promise<LoadedDraft> {
  const config = await readDraftConfig(dir);
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    const weights: Eagle3Weights = new Map();
    const dtypes = new Set<string>();
    for (const [name, shape] of Object.entries(eagle3ParamShapes(config))) {
      if (!ckpt.has(name)) throw new ConfigError(`${dir}: draft tensor ${name} is missing`);
      const info = ckpt.info(name);
      if (shapeString(info.shape) !== shapeString(shape)) {
        throw new ConfigError(
          `${dir}: ${name} has shape ${shapeString(info.shape)}, config.json needs ${shapeString(shape)}`,
        );
      }
      dtypes.add(info.dtype);
      weights.set(name, toFloat32(await ckpt.read(name), name));
    }
    let draftToTarget: Int32Array;
    if (ckpt.has("d2t")) {
      const d2t = toNumbers(await ckpt.read("d2t"), "d2t");
      if (d2t.length !== config.draftVocabSize) {
        throw new ConfigError(
          `${dir}: d2t has ${d2t.length} entries, draft_vocab_size is ${config.draftVocabSize}`,
        );
      }
      draftToTarget = Int32Array.from(d2t, (off, i) => i + off);
      const bad = draftToTarget.findIndex((t) => t < 0 || t >= config.vocabSize);
      if (bad >= 0) {
        throw new ConfigError(
          `${dir}: d2t maps draft index ${bad} to ${draftToTarget[bad]}, outside the vocabulary`,
        );
      }
    } else if (config.draftVocabSize === config.vocabSize) {
      draftToTarget = Int32Array.from({ length: config.vocabSize }, (_, i) => i);
    } else {
      throw new ConfigError(
        `${dir}: no d2t tensor, and draft_vocab_size ${config.draftVocabSize} ≠ vocab_size`,
      );
    }
    const draft = Eagle3Draft.create(gpu, config, { weights });
    const loaded = draft.names.map((name) => ({
      name,
      tensor: draft.params[name]!,
      file: ckpt.info(name).file,
    }));
    await checkFiniteWeights(gpu, loaded, "draft").catch((e) => {
      draft.destroy();
      throw e;
    });
    return {
      draft,
      config,
      draftToTarget,
      storedDtype: [...dtypes].join("/"),
    };
  } finally {
    ckpt.close();
  }
}
