/**
 * A features directory opened for training: the manifest, and the tokens and loss masks of every sample
 * (read once from the files' small input_ids / loss_mask tensors, so the loader can batch and the draft
 * vocabulary can be counted, as SpecForge's current runtime does in `specforge/data/preprocessing.py`
 * `OfflineEagle3Dataset`), with each sample's file path for reading its features per batch.
 */

import { SafetensorsError, SafetensorsFile } from "../io/safetensors.ts";
import { type TokenizedDataset, TokenizedDatasetBuilder } from "../data/tokenized.ts";
import {
  checkTensorInfos,
  decodeTokens,
  FeatureFileError,
  type FeatureSample,
  type FeaturesManifest,
  readManifest,
  readSampleFile,
  sampleFilePath,
} from "./format.ts";

/** The samples of a features directory. */
export interface FeatureSet {
  /** The features directory. */
  dir: string;
  /** Its manifest. */
  manifest: FeaturesManifest;
  /** Tokens and loss masks (sample i = the i-th existing file in row order). */
  dataset: TokenizedDataset;
  /** The file of each sample. */
  paths: string[];
  /** Rows of the manifest with no file (not prepared yet, or skipped for NaN). */
  missing: number;
}

const PARALLEL_READS = 16;

/**
 * Opens a features directory; every file's tokens are read and checked (errors name the file). Samples are
 * cut to `maxLength` tokens (right truncation, as SpecForge's `[:max_len]`).
 */
export async function openFeatureSet(dir: string, opts: { maxLength?: number } = {}): Promise<FeatureSet> {
  const maxLength = opts.maxLength ?? Infinity;
  const manifest = await readManifest(dir);
  const n = manifest.data.numSamples;
  const tokens: Array<{ inputIds: Int32Array; lossMask: Uint8Array } | null> = new Array(n).fill(null);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const row = next++;
      tokens[row] = await readTokens(manifest, sampleFilePath(dir, row, manifest.fileGroupSize));
    }
  };
  await Promise.all(Array.from({ length: PARALLEL_READS }, worker));
  const builder = new TokenizedDatasetBuilder();
  const paths: string[] = [];
  tokens.forEach((t, row) => {
    if (!t) return;
    builder.add(`row-${row}`, t.inputIds.subarray(0, maxLength), t.lossMask.subarray(0, maxLength));
    paths.push(sampleFilePath(dir, row, manifest.fileGroupSize));
  });
  if (paths.length === 0) {
    throw new FeatureFileError(`${dir}: none of the ${n} feature files exist (run prepare-hidden-states)`);
  }
  return { dir, manifest, dataset: builder.finish(), paths, missing: n - paths.length };
}

/** input_ids and loss_mask of one file (every tensor's header entry checked), null when it does not exist. */
async function readTokens(
  m: FeaturesManifest,
  path: string,
): Promise<{ inputIds: Int32Array; lossMask: Uint8Array } | null> {
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(path);
  } catch (e) {
    if (e instanceof SafetensorsError && e.message.endsWith("no such file")) return null;
    if (e instanceof SafetensorsError) throw new FeatureFileError(e.message);
    throw e;
  }
  try {
    checkTensorInfos(m, new Map(f.names.map((n) => [n, f.info(n)])), path);
    return decodeTokens(m, await f.read("input_ids"), await f.read("loss_mask"), path);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new FeatureFileError(e.message);
    throw e;
  } finally {
    f.close();
  }
}

/** Reads the features of samples `indices` of `set` (in parallel). */
export function readFeatures(set: FeatureSet, indices: ArrayLike<number>): Promise<FeatureSample[]> {
  return Promise.all(Array.from(indices, (i) => readSampleFile(set.manifest, set.paths[i])));
}
