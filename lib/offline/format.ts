/**
 * Eaglet's offline feature format: what `prepare-hidden-states` writes and `train-offline` reads.
 *
 * Layout (SpecForge's grouping, `scripts/prepare_hidden_states.py`, with Eaglet's own files):
 *
 *   <dir>/eaglet_features.json                      the manifest ({@link FeaturesManifest})
 *   <dir>/rows_0-2000/data_0.safetensors            one file per sample; data_<i> holds dataset row i
 *   <dir>/rows_2000-4000/data_2000.safetensors ...
 *
 * Every file is written atomically (temporary name, then rename), so a file that exists is complete. One file
 * holds one sample of S tokens, no padding:
 *
 *   input_ids      U16 [S] (I32 when the vocabulary exceeds 65536)
 *   loss_mask      U8  [S]
 *   aux            the captured hidden states of the DISTINCT aux layers (manifest.stored_layers), [S, U·H_t]:
 *                    aux_format f32 → F32; bf16 → BF16; int8 → I8 codes; int4 → U8, two codes per byte
 *   aux_scale      BF16 [S, U·H_t / group_size], int8 and int4 only (lib/offline/quantize.ts)
 *   the teacher, by teacher_format:
 *     hidden-f32 / hidden-bf16: hidden  F32/BF16 [S, H_t]  the target's final post-norm hidden state (SpecForge's
 *                               teacher; training re-applies the target's lm_head)
 *     topk:          topk_ids       U16/I32 [S, k]  the k most likely next tokens over the FULL target vocabulary,
 *                                                   most likely first, ties by lower id (topk_ids[t, 0] is the argmax)
 *                    topk_logprobs  F16 [S, k]      their log-probabilities (logit − log-sum-exp over the vocabulary)
 *     none:          nothing (a DFlash draft learns from the tokens; its loss reads the target's lm_head only)
 *
 * The top-k teacher does not depend on the draft vocabulary, which is chosen at training time from the files'
 * tokens: the draft target p over the draft vocabulary is rebuilt from the stored top-k plus the remaining
 * mass 1 − Σ p_topk spread evenly over the other V − k tokens, then renormalized over the draft vocabulary
 * (exact for the stored tokens' relative probabilities).
 */

import { join } from "node:path";
import {
  fromFloat32As,
  fromNumbers,
  parseSafetensors,
  type RawTensor,
  SafetensorsError,
  toFloat32,
} from "../io/safetensors.ts";
import { sha256Hex } from "../data/tokenizer.ts";
import { checkQuantShape, type QuantBits, quantizeGroups } from "./quantize.ts";

/** The manifest's file name in a features directory. */
export const FEATURES_MANIFEST = "eaglet_features.json";
/** The format name in the manifest and in each file's metadata. */
export const FEATURES_FORMAT = "eaglet-features";
/** The version this code writes and reads. */
export const FEATURES_VERSION = 1;
/** Files per rows_{g}-{g+n} folder (SpecForge's default). */
export const DEFAULT_FILE_GROUP_SIZE = 2000;

/** How the aux hidden states are stored. */
export type AuxFormat = "f32" | "bf16" | "int8" | "int4";
/** How the teacher is stored. */
export type TeacherFormat = "hidden-f32" | "hidden-bf16" | "topk" | "none";

/** Every aux format, smallest last. */
export const AUX_FORMATS: readonly AuxFormat[] = ["f32", "bf16", "int8", "int4"];
/** Every teacher format. */
export const TEACHER_FORMATS: readonly TeacherFormat[] = ["hidden-f32", "hidden-bf16", "topk", "none"];

/** The storage options of a features directory. */
export interface FeatureStorage {
  /** Aux hidden states: f32 (lossless), bf16 (SpecForge's), int8 or int4 (grouped, ./quantize.ts). */
  auxFormat: AuxFormat;
  /** Values per scale for int8/int4. */
  groupSize: number;
  /** The teacher: the final hidden state (f32 lossless, bf16 SpecForge's), the top-k next tokens, or none (DFlash). */
  teacherFormat: TeacherFormat;
  /** k of the top-k teacher. */
  topk: number;
}

/** The manifest of a features directory: what every file in it holds and where it came from. */
export interface FeaturesManifest {
  /** Always {@link FEATURES_FORMAT}. */
  format: "eaglet-features";
  /** {@link FEATURES_VERSION} when written. */
  version: number;
  /** How every file stores its tensors. */
  storage: FeatureStorage;
  /** The target the features were captured from. */
  target: {
    /** As given to prepare-hidden-states. */
    path: string;
    /** hidden_size (H_t). */
    hiddenSize: number;
    /** vocab_size. */
    vocabSize: number;
    /** num_hidden_layers. */
    numLayers: number;
    /** SHA-256 of the target's config.json, to catch a features/target mismatch at training time. */
    configSha256: string;
  };
  /**
   * The captured layers, in the order the draft's fc reads them: an EAGLE-3 draft's three aux layers, or a DFlash
   * draft's `target_layer_ids` (any count).
   */
  auxLayers: number[];
  /** The distinct layers stored in `aux`, ascending (repeats in auxLayers are stored once). */
  storedLayers: number[];
  /** The data the features were computed from. */
  data: {
    /** --data-path as given. */
    path: string;
    /** --chat-template. */
    chatTemplate: string;
    /** --max-length. */
    maxLength: number;
    /** Rows of the processed dataset the run covers (files are data_0 … data_{numSamples−1}). */
    numSamples: number;
  };
  /** Files per rows_{g}-{g+n} folder. */
  fileGroupSize: number;
}

/** A feature file or directory is missing, truncated, corrupt or does not match its manifest. */
export class FeatureFileError extends Error {
  /** Error name shown in messages. */
  override name = "FeatureFileError";
}

/** The path of sample `index`'s file under `dir`. */
export function sampleFilePath(dir: string, index: number, fileGroupSize: number): string {
  const g = Math.floor(index / fileGroupSize) * fileGroupSize;
  return join(dir, `rows_${g}-${g + fileGroupSize}`, `data_${index}.safetensors`);
}

/** The distinct layers of `auxLayers`, ascending. */
export function storedLayersOf(auxLayers: number[]): number[] {
  return [...new Set(auxLayers)].sort((a, b) => a - b);
}

/** The dtype of token ids for a vocabulary of `vocabSize`. */
export function idDtype(vocabSize: number): "U16" | "I32" {
  return vocabSize <= 65536 ? "U16" : "I32";
}

/** Bits per stored aux code of a quantized format, null for float formats. */
export function quantBitsOf(f: AuxFormat): QuantBits | null {
  return f === "int8" ? 8 : f === "int4" ? 4 : null;
}

/** Throws a one-line error unless the storage options are consistent with a target of hidden size `hidden`. */
export function checkStorage(s: FeatureStorage, hidden: number, vocabSize: number): void {
  if (!AUX_FORMATS.includes(s.auxFormat)) {
    throw new RangeError(`unknown aux format ${s.auxFormat} (one of ${AUX_FORMATS.join(", ")})`);
  }
  if (!TEACHER_FORMATS.includes(s.teacherFormat)) {
    throw new RangeError(`unknown teacher format ${s.teacherFormat} (one of ${TEACHER_FORMATS.join(", ")})`);
  }
  const bits = quantBitsOf(s.auxFormat);
  if (bits) checkQuantShape(hidden, { bits, groupSize: s.groupSize }, `aux format ${s.auxFormat}`);
  if (
    s.teacherFormat === "topk" &&
    !(Number.isInteger(s.topk) && s.topk >= 1 && s.topk <= Math.min(64, vocabSize))
  ) {
    throw new RangeError(`top-k teacher: k must be 1..${Math.min(64, vocabSize)}, got ${s.topk}`);
  }
}

/** Bytes one token takes in a file (tensor data only; the ~300-byte header per file comes on top). */
export function bytesPerToken(m: Pick<FeaturesManifest, "storage" | "target" | "storedLayers">): number {
  const { storage: s, target: t } = m;
  const idBytes = idDtype(t.vocabSize) === "U16" ? 2 : 4;
  const auxCols = m.storedLayers.length * t.hiddenSize;
  const bits = quantBitsOf(s.auxFormat);
  const aux = bits
    ? auxCols * bits / 8 + (auxCols / s.groupSize) * 2
    : auxCols * (s.auxFormat === "f32" ? 4 : 2);
  const teacher = s.teacherFormat === "none"
    ? 0
    : s.teacherFormat === "topk"
    ? s.topk * (idBytes + 2)
    : t.hiddenSize * (s.teacherFormat === "hidden-f32" ? 4 : 2);
  return idBytes + 1 + aux + teacher;
}

/**
 * SpecForge's bytes per token for the same target (`scripts/prepare_hidden_states.py`): bf16 aux (3·H_t) and
 * final hidden (H_t), int64 ids and mask.
 */
export function specForgeBytesPerToken(hiddenSize: number): number {
  return (3 * hiddenSize + hiddenSize) * 2 + 16;
}

/** One sample as stored: tokens plus the raw feature tensors, checked against the manifest. */
export interface FeatureSample {
  /** The file it came from. */
  path: string;
  /** Token ids [S]. */
  inputIds: Int32Array;
  /** 1 on supervised tokens [S]. */
  lossMask: Uint8Array;
  /** `aux` as stored ([S, U·H_t] in the manifest's aux format). */
  aux: RawTensor;
  /** `aux_scale` as stored, for int8/int4. */
  auxScale: RawTensor | null;
  /** `hidden`, for hidden-* teachers. */
  hidden: RawTensor | null;
  /** `topk_ids` widened to i32 [S, k], for the top-k teacher. */
  topkIds: Int32Array | null;
  /** `topk_logprobs` widened to f32 [S, k], for the top-k teacher. */
  topkLogprobs: Float32Array | null;
}

/** The tensor names and the [dtype, shape] each must have in a file of `tokens` tokens. */
export function expectedTensors(m: FeaturesManifest, tokens: number): Map<string, [string, number[]]> {
  const { storage: s, target: t } = m;
  const ids = idDtype(t.vocabSize);
  const cols = m.storedLayers.length * t.hiddenSize;
  const out = new Map<string, [string, number[]]>([
    ["input_ids", [ids, [tokens]]],
    ["loss_mask", ["U8", [tokens]]],
  ]);
  const auxDtype = { f32: "F32", bf16: "BF16", int8: "I8", int4: "U8" }[s.auxFormat];
  out.set("aux", [auxDtype, [tokens, s.auxFormat === "int4" ? cols / 2 : cols]]);
  if (quantBitsOf(s.auxFormat)) out.set("aux_scale", ["BF16", [tokens, cols / s.groupSize]]);
  if (s.teacherFormat === "topk") {
    out.set("topk_ids", [ids, [tokens, s.topk]]);
    out.set("topk_logprobs", ["F16", [tokens, s.topk]]);
  } else if (s.teacherFormat !== "none") {
    out.set("hidden", [s.teacherFormat === "hidden-f32" ? "F32" : "BF16", [tokens, t.hiddenSize]]);
  }
  return out;
}

/**
 * Checks a file's tensor names, dtypes and shapes (from its header) against the manifest; returns S, the
 * sample's tokens. Errors name the file and the tensor.
 */
export function checkTensorInfos(
  m: FeaturesManifest,
  infos: Map<string, { dtype: string; shape: number[] }>,
  path: string,
): number {
  const ids = infos.get("input_ids");
  if (!ids || ids.shape.length !== 1) throw new FeatureFileError(`${path}: no 1-D tensor input_ids`);
  const S = ids.shape[0];
  if (S < 1) throw new FeatureFileError(`${path}: input_ids is empty`);
  const want = expectedTensors(m, S);
  for (const [name, [dtype, shape]] of want) {
    const t = infos.get(name);
    if (!t) {
      throw new FeatureFileError(
        `${path}: tensor ${name} is missing (${m.storage.auxFormat}/${m.storage.teacherFormat} features)`,
      );
    }
    if (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new FeatureFileError(
        `${path}: tensor ${name} is ${t.dtype} [${t.shape}], the manifest says ${dtype} [${shape}]`,
      );
    }
  }
  for (const name of infos.keys()) {
    if (!want.has(name)) throw new FeatureFileError(`${path}: unexpected tensor ${name}`);
  }
  return S;
}

/** input_ids (widened to i32, checked against the vocabulary) and loss_mask (checked 0/1) of a file. */
export function decodeTokens(
  m: FeaturesManifest,
  ids: RawTensor,
  mask: RawTensor,
  path: string,
): { inputIds: Int32Array; lossMask: Uint8Array } {
  const inputIds = widenIds(ids);
  const V = m.target.vocabSize;
  for (let i = 0; i < inputIds.length; i++) {
    if (inputIds[i] < 0 || inputIds[i] >= V) {
      throw new FeatureFileError(
        `${path}: tensor input_ids has token ${inputIds[i]} outside the vocabulary of ${V}`,
      );
    }
  }
  const lossMask = new Uint8Array(mask.bytes.buffer, mask.bytes.byteOffset, inputIds.length);
  if (lossMask.some((v) => v > 1)) {
    throw new FeatureFileError(`${path}: tensor loss_mask holds values other than 0/1`);
  }
  return { inputIds, lossMask };
}

/** Checks the tensors of a parsed file against the manifest and returns the sample (errors name file and tensor). */
export function sampleFromTensors(
  m: FeaturesManifest,
  tensors: Map<string, RawTensor>,
  path: string,
): FeatureSample {
  checkTensorInfos(m, tensors, path);
  const { inputIds, lossMask } = decodeTokens(m, tensors.get("input_ids")!, tensors.get("loss_mask")!, path);
  let topkIds: Int32Array | null = null, topkLogprobs: Float32Array | null = null;
  if (m.storage.teacherFormat === "topk") {
    topkIds = widenIds(tensors.get("topk_ids")!);
    const V = m.target.vocabSize;
    for (let i = 0; i < topkIds.length; i++) {
      if (topkIds[i] < 0 || topkIds[i] >= V) {
        throw new FeatureFileError(
          `${path}: tensor topk_ids has token ${topkIds[i]} outside the vocabulary of ${V}`,
        );
      }
    }
    topkLogprobs = toFloat32(tensors.get("topk_logprobs")!, `${path}: tensor topk_logprobs`);
  }
  return {
    path,
    inputIds,
    lossMask,
    aux: tensors.get("aux")!,
    auxScale: tensors.get("aux_scale") ?? null,
    hidden: tensors.get("hidden") ?? null,
    topkIds,
    topkLogprobs,
  };
}

function widenIds(t: RawTensor): Int32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.dtype === "U16") return Int32Array.from(new Uint16Array(t.bytes.buffer, t.bytes.byteOffset, n));
  return new Int32Array(t.bytes.buffer.slice(t.bytes.byteOffset, t.bytes.byteOffset + n * 4));
}

/** SHA-256 of a file, hex (the manifest's fingerprint of the target's config.json). */
export async function fileSha256(path: string): Promise<string> {
  return sha256Hex(await Deno.readFile(path));
}

/** Reads and parses a manifest; errors name the file. */
export async function readManifest(dir: string): Promise<FeaturesManifest> {
  const path = join(dir, FEATURES_MANIFEST);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new FeatureFileError(
        `${dir}: not a features directory (no ${FEATURES_MANIFEST}; write one with prepare-hidden-states)`,
      );
    }
    throw e;
  }
  let m: FeaturesManifest;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new FeatureFileError(`${path}: not JSON (${(e as Error).message})`);
  }
  if (m?.format !== FEATURES_FORMAT) {
    throw new FeatureFileError(`${path}: format is ${m?.format}, expected ${FEATURES_FORMAT}`);
  }
  if (m.version !== FEATURES_VERSION) {
    throw new FeatureFileError(
      `${path}: version ${m.version}; this Eaglet reads version ${FEATURES_VERSION}`,
    );
  }
  try {
    checkStorage(m.storage, m.target.hiddenSize, m.target.vocabSize);
  } catch (e) {
    throw new FeatureFileError(`${path}: ${(e as Error).message}`);
  }
  return m;
}

/** Parses a sample file held in memory (see {@link sampleFromTensors}). */
export function parseSampleFile(
  m: FeaturesManifest,
  bytes: Uint8Array<ArrayBuffer>,
  path: string,
): FeatureSample {
  let tensors: Map<string, RawTensor>;
  try {
    ({ tensors } = parseSafetensors(bytes, path));
  } catch (e) {
    if (e instanceof SafetensorsError) throw new FeatureFileError(e.message);
    throw e;
  }
  return sampleFromTensors(m, tensors, path);
}

/** Reads and checks sample file `path`. */
export async function readSampleFile(m: FeaturesManifest, path: string): Promise<FeatureSample> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await Deno.readFile(path) as Uint8Array<ArrayBuffer>;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new FeatureFileError(`${path}: feature file missing`);
    throw new FeatureFileError(`${path}: cannot read (${(e as Error).message})`);
  }
  return parseSampleFile(m, bytes, path);
}

/** What prepare-hidden-states captured for one sample of S tokens (f32 on the host). */
export interface CapturedSample {
  /** Token ids [S]. */
  inputIds: ArrayLike<number>;
  /** 1 on supervised tokens [S]. */
  lossMask: ArrayLike<number>;
  /** The distinct aux layers' hidden states, [S, U·H_t] (manifest.storedLayers order). */
  aux: Float32Array;
  /** The final post-norm hidden state [S, H_t], for hidden-* teachers. */
  hidden?: Float32Array;
  /** Top-k target ids [S, k] and their log-probabilities, for the top-k teacher. */
  topkIds?: Int32Array;
  /** The log-probabilities of topkIds [S, k]. */
  topkLogprobs?: Float32Array;
}

/** The tensors of a sample file in the manifest's storage format (see the module comment). */
export function encodeSample(m: FeaturesManifest, c: CapturedSample): Map<string, RawTensor> {
  const S = c.inputIds.length;
  const { storage: s, target: t } = m;
  const cols = m.storedLayers.length * t.hiddenSize;
  const ids = idDtype(t.vocabSize);
  const out = new Map<string, RawTensor>([
    ["input_ids", fromNumbers(c.inputIds, [S], ids)],
    ["loss_mask", fromNumbers(c.lossMask, [S], "U8")],
  ]);
  const bits = quantBitsOf(s.auxFormat);
  if (bits) {
    const q = quantizeGroups(c.aux, S, cols, { bits, groupSize: s.groupSize });
    out.set("aux", {
      dtype: bits === 8 ? "I8" : "U8",
      shape: [S, bits === 8 ? cols : cols / 2],
      bytes: q.codes,
    });
    out.set("aux_scale", {
      dtype: "BF16",
      shape: [S, cols / s.groupSize],
      bytes: new Uint8Array(q.scaleBits.buffer),
    });
  } else {
    out.set("aux", fromFloat32As(c.aux, [S, cols], s.auxFormat === "f32" ? "F32" : "BF16"));
  }
  if (s.teacherFormat === "topk") {
    out.set("topk_ids", fromNumbers(c.topkIds!, [S, s.topk], ids));
    out.set("topk_logprobs", fromFloat32As(c.topkLogprobs!, [S, s.topk], "F16"));
  } else if (s.teacherFormat !== "none") {
    out.set(
      "hidden",
      fromFloat32As(c.hidden!, [S, t.hiddenSize], s.teacherFormat === "hidden-f32" ? "F32" : "BF16"),
    );
  }
  return out;
}
