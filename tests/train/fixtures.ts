/** Shared fixtures of the train tests. */
import { join } from "node:path";
import { wordLevelTokenizerJson } from "../../lib/data/tokenizer.ts";
import { randomArray, rng } from "../gpu.ts";
import {
  type TrainSettings,
  trainSettings as settingsOf,
  type TrainSettingsInput,
} from "../../lib/train/config.ts";
import { type DraftExport, draftWeightShapes, type NamedWeight } from "../../lib/models/export.ts";
import { parseDraftConfig } from "../../lib/models/draft_config.ts";
import { countSupervisedTokens, selectDraftVocab } from "../../lib/data/vocab.ts";
import type { PrepareOptions } from "../../lib/offline/prepare.ts";
import type { FeatureStorage } from "../../lib/offline/format.ts";

const CONFIG = {
  architectures: ["LlamaForCausalLMEagle3"],
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 50,
  draft_vocab_size: 12,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-6,
  eagle_config: { eagle_aux_hidden_state_layer_ids: [0, 1, 1], use_aux_hidden_state: true },
};

/** A tiny draft (hidden 32, vocab 50, draft vocab 12, aux [0, 1, 1]) with seeded random weights. */
export function tinyExport(seed = 1): DraftExport {
  const config = parseDraftConfig(CONFIG, "tiny");
  const weights = new Map<string, NamedWeight>();
  let i = 0;
  for (const [name, shape] of draftWeightShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    weights.set(name, { values: randomArray(n, seed + i++, 0.3), shape });
  }
  const ids = Array.from({ length: 40 }, (_, j) => (j * 7) % 50);
  const mapping = selectDraftVocab(
    countSupervisedTokens([{ inputIds: ids, lossMask: ids.map(() => 1) }]),
    12,
    50,
  );
  return { config, weights, mapping, defaultAuxLayers: [1, 0, -2] };
}

/** The tiny random Llama target of the train tests. */
export const TARGET = new URL("../golden/targets/llama/", import.meta.url).pathname;

/**
 * A temp dir with a tiny random Llama target (tests/golden/targets/llama: 8 layers, hidden 32, vocab 256; config
 * + weights), a word-level tokenizer.json and pre-tokenized data (train.jsonl 8 samples, eval.jsonl 3).
 */
export async function trainFixture(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "eaglet-train-" });
  const target = join(root, "target");
  await Deno.mkdir(target);
  for (const f of ["config.json", "model.safetensors"]) await Deno.copyFile(join(TARGET, f), join(target, f));
  await Deno.writeTextFile(join(target, "tokenizer.json"), wordLevelTokenizerJson(256));

  const r = rng(5);
  const rows = (n: number, offset: number) =>
    Array.from({ length: n }, (_, i) => {
      const len = (i + offset) % 3 === 0 ? 12 : 16; // two padded lengths: batches mix them
      const ids = Array.from({ length: len }, () => 3 + Math.floor(r() * 60));
      const mask = ids.map((_, t) => (t >= 4 && t !== 9 ? 1 : 0)); // a prompt, then a partial loss mask
      return JSON.stringify({ id: `s${offset + i}`, input_ids: ids, loss_mask: mask });
    }).join("\n") + "\n";
  await Deno.writeTextFile(join(root, "train.jsonl"), rows(8, 0));
  await Deno.writeTextFile(join(root, "eval.jsonl"), rows(3, 100));
  return root;
}

/**
 * train-online's command-line flags on a {@link trainFixture} into `root/out` (batch 2, 2 epochs, ttt 3, lr 1e-2,
 * seed 3, a log every update, no evaluation), each of `flags` added or replacing its default.
 */
export function trainCliArgs(
  root: string,
  out: string,
  flags: Record<string, string | number> = {},
): string[] {
  const all: Record<string, string | number> = {
    "target-model-path": join(root, "target"),
    "train-data-path": join(root, "train.jsonl"),
    "output-dir": join(root, out),
    "cache-dir": join(root, "cache"),
    "chat-template": "llama3",
    "batch-size": 2,
    "num-epochs": 2,
    "ttt-length": 3,
    "learning-rate": 0.01,
    "seed": 3,
    "log-interval": 1,
    "eval-interval": 0,
    ...flags,
  };
  return Object.entries(all).flatMap(([flag, value]) => [`--${flag}`, String(value)]);
}

/** train-online settings on a {@link trainFixture} (batch 2, 2 epochs, ttt 3, lr 1e-2, seed 3) plus `extra` settings. */
export function trainSettings(
  root: string,
  out: string,
  extra: Partial<TrainSettingsInput> = {},
): Promise<TrainSettings> {
  return Promise.resolve(settingsOf({
    targetModelPath: join(root, "target"),
    trainDataPath: join(root, "train.jsonl"),
    evalDataPath: join(root, "eval.jsonl"),
    outputDir: join(root, out),
    cacheDir: join(root, "cache"),
    chatTemplate: "llama3",
    batchSize: 2,
    numEpochs: 2,
    tttLength: 3,
    learningRate: 1e-2,
    logInterval: 1,
    evalInterval: 4,
    saveInterval: 4,
    seed: 3,
    ...extra,
  }));
}

/**
 * prepare-hidden-states of a {@link trainFixture}'s `split` data into `root/out` (batch 3, several rows_*
 * folders, no cache, offline hub) in `storage`, plus `extra` options.
 */
export function prepareOptions(
  root: string,
  out: string,
  storage: FeatureStorage,
  split = "train",
  extra: Partial<PrepareOptions> = {},
): PrepareOptions {
  return {
    targetModelPath: join(root, "target"),
    dataPath: join(root, `${split}.jsonl`),
    outputPath: join(root, out),
    chatTemplate: "llama3",
    maxLength: 2048,
    storage,
    numSamples: null,
    batchSize: 3,
    shard: { index: 0, count: 1 },
    auxLayers: null,
    draftModelConfig: null,
    cacheDir: null,
    isPreformatted: false,
    fileGroupSize: 5,
    hub: { cacheDir: join(root, "hub"), offline: true },
    log: () => {},
    ...extra,
  };
}
