/**
 * `prepare-data` (SpecForge's `scripts/prepare_data.py`, plus tokenization and the draft vocabulary): converts
 * a dataset to conversations JSONL and, with a tokenizer, tokenizes it into the preprocessing cache and, with
 * a draft vocabulary size or a mapping file, writes the draft vocabulary mapping (d2t/t2d safetensors). The
 * settings are the task's flags, declared once (lib/flags.ts); a library caller writes
 * `prepareData(prepareDataSettings({ dataset: "sharegpt", input: ["data.jsonl"] }), { hub })`.
 */
import { join } from "node:path";
import { type FlagTable, type Settings, type SettingsInput, settingsOf, type StringFlag } from "../flags.ts";
import { type HubOptions, listHubFiles, resolveHubFile } from "../io/hub.ts";
import { pathExists, writeJsonAtomic } from "../io/atomic.ts";
import { claimOutputDir, removeStaleTemps } from "../io/lock.ts";
import { canonicalJson, hashFile } from "./cache.ts";
import { type BuildResult, buildTokenizedDataset } from "./build.ts";
import {
  convertDataset,
  convertedTrainPath,
  DATASET_NAMES,
  type DatasetDownloader,
  isHubId,
} from "./datasets.ts";
import { DataError } from "./errors.ts";
import { templates } from "./templates.ts";
import { type ChatTokenizer, loadTokenizer } from "./tokenizer.ts";
import {
  countSupervisedTokens,
  loadVocabMapping,
  saveVocabMapping,
  selectDraftVocab,
  type VocabMapping,
} from "./vocab.ts";

/** The chat template flag of the data tasks: a name of lib/data/templates.ts's registry. */
export const CHAT_TEMPLATE_FLAG: StringFlag & { readonly default: string } = {
  kind: "string",
  default: "llama3",
  help: `template name: ${templates.names().join(", ")}`,
  check: (name: string): string | null =>
    templates.has(name) ? null : `a known chat template (${templates.names().join(", ")})`,
};

/** Every flag of `prepare-data`. */
export const PREPARE_DATA_FLAGS = {
  "dataset": { kind: "choice", choices: DATASET_NAMES, required: true, help: "dataset preset" },
  "input": {
    kind: "strings",
    help: "local .jsonl/.json/.parquet file(s) or a HF dataset id; default: the preset's HF dataset",
  },
  "split": { kind: "string", default: "train", help: "split of a HF dataset id given with --input" },
  "output-path": { kind: "string", default: "cache/dataset", help: "output directory" },
  "sample-size": { kind: "int", min: 1, help: "convert only the first N rows" },
  "split-eval": { kind: "bool", help: "also write a 5 % eval split (<dataset>_test.jsonl)" },
  "seed": { kind: "int", default: 42, help: "seed of the eval split" },
  "opc-subset": { kind: "string", default: "largescale_diverse_instruct", help: "opc subset or 'all'" },
  "overwrite": { kind: "bool", help: "redo the conversion when the output exists" },
  "tokenizer": {
    kind: "string",
    help: "tokenizer directory (tokenizer.json [+ tokenizer_config.json]); enables tokenization",
  },
  "chat-template": CHAT_TEMPLATE_FLAG,
  "chat-template-file": { kind: "string", help: "Jinja file replacing the tokenizer's own chat template" },
  "max-length": { kind: "int", default: 2048, min: 1, help: "tokens kept per sample (right truncation)" },
  "is-preformatted": { kind: "bool", help: 'records are {"text": ...} already rendered' },
  "train-only-last-turn": { kind: "bool", help: "supervise only the last assistant turn" },
  "min-loss-tokens": { kind: "int", default: 1, min: 0, help: "drop samples with fewer supervised tokens" },
  "cache-dir": { kind: "string", default: "cache/processed", help: "preprocessing cache directory" },
  "cache-name": { kind: "string", help: "name the cache entry instead of using its content key" },
  "draft-vocab-size": {
    kind: "int",
    min: 1,
    help: "write <output-path>/vocab_mapping.safetensors with this many draft tokens",
  },
  "target-vocab-size": { kind: "int", min: 1, help: "target vocab_size (default: the tokenizer's)" },
  "vocab-mapping": {
    kind: "string",
    help: "use this mapping file (.safetensors or .json) instead of computing one",
  },
} as const satisfies FlagTable;

/** The settings of `prepare-data`, each flag under its camelCase name. */
export type PrepareDataSettings = Settings<typeof PREPARE_DATA_FLAGS>;

/** What a library caller gives {@link prepareDataSettings}: the required settings and any others. */
export type PrepareDataInput = SettingsInput<typeof PREPARE_DATA_FLAGS>;

/** The settings of a `prepare-data` run from a library caller's object: defaults filled, values checked. */
export function prepareDataSettings(input: PrepareDataInput): PrepareDataSettings {
  return settingsOf(PREPARE_DATA_FLAGS, input);
}

/** Where hub ids are resolved and where progress lines go (not flags). */
export interface PrepareDataContext {
  /** How dataset ids are resolved (e.g. `hubOptionsFromEnv(Deno.env.toObject())`). */
  hub: HubOptions;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/**
 * Converts, then (with a tokenizer) tokenizes and writes the draft vocabulary, as the settings say; holds
 * the lock of --output-path throughout (a second writer fails at once) and first removes the temporary files
 * of killed runs there and in --cache-dir.
 */
export async function prepareData(v: PrepareDataSettings, ctx: PrepareDataContext): Promise<void> {
  const log = ctx.log ?? (() => {});
  const lock = await claimOutputDir(v.outputPath, "prepare-data", { flag: "--output-path", note: log });
  try {
    const { count, bytes } = await removeStaleTemps(v.cacheDir, 1);
    if (count > 0) {
      log(`${v.cacheDir}: removed ${count} stale temporary file(s) of killed runs, ${bytes} bytes freed`);
    }
    await prepareLocked(v, ctx.hub, log);
  } finally {
    await lock.release();
  }
}

async function prepareLocked(
  v: PrepareDataSettings,
  hub: HubOptions,
  log: (line: string) => void,
): Promise<void> {
  const inputs = v.input;
  const hubIds = inputs.filter((i) => !existsSync(i) && isHubId(i));
  if (hubIds.length > 1 || (hubIds.length === 1 && inputs.length > 1)) {
    throw new DataError("give either local files or one HF dataset id with --input");
  }
  // Resolve the template and tokenizer first, so a typo fails before any conversion work.
  const template = v.tokenizer ? templates.get(v.chatTemplate) : null;
  const chatTemplate = v.chatTemplateFile ? await Deno.readTextFile(v.chatTemplateFile) : undefined;
  const tokenizer = v.tokenizer ? await loadTokenizer(v.tokenizer, { chatTemplate }) : null;
  // A given mapping is read now, so that a bad one fails before anything is written.
  const mapping = v.vocabMapping && tokenizer
    ? await loadVocabMapping(v.vocabMapping, { targetVocabSize: v.targetVocabSize ?? tokenizer.vocabSize })
    : null;
  const source = await conversionSource(v, hubIds[0] ?? null);
  const converted = convertedTrainPath(v.outputPath, v.dataset);
  if (!v.overwrite && await pathExists(converted)) await checkSameSource(converted, source);
  const report = await convertDataset({
    dataset: v.dataset,
    inputs: hubIds.length ? undefined : inputs,
    hubId: hubIds[0],
    split: v.split,
    outputDir: v.outputPath,
    sampleSize: v.sampleSize ?? undefined,
    splitEval: v.splitEval,
    seed: v.seed,
    overwrite: v.overwrite,
    preset: { opcSubset: v.opcSubset },
    downloader: hubDownloader(hub),
    log,
  });
  if (!report.skippedExisting) await writeJsonAtomic(sourcePath(report.trainPath), source);
  if (!tokenizer || !template) return;
  log(
    `tokenizer ${tokenizer.source.tokenizerJsonPath} (vocab ${tokenizer.vocabSize}, chat template: ${
      tokenizer.source.chatTemplateOrigin ?? "none, fallback renderer"
    })`,
  );
  const built = await buildTokenizedDataset({
    dataPath: report.trainPath,
    tokenizer,
    templateName: v.chatTemplate,
    template,
    maxLength: v.maxLength,
    isPreformatted: v.isPreformatted,
    trainOnlyLastTurn: v.trainOnlyLastTurn,
    minLossTokens: v.minLossTokens,
    cacheDir: v.cacheDir,
    cacheName: v.cacheName ?? undefined,
    log,
  });
  const s = built.stats;
  log(
    `${s.samples} samples, ${s.tokens} tokens, ${s.supervisedTokens} supervised; ${s.truncated} truncated at max_length, ` +
      `${s.droppedUnsupervised} dropped without supervised tokens`,
  );
  await writeDraftVocab(v, tokenizer, built, mapping, log);
}

/** The record beside a converted file of what it was converted from: `<file>.source.json`. */
function sourcePath(converted: string): string {
  return `${converted}.source.json`;
}

/**
 * What a conversion reads, to tell whether an existing output came from it: the preset, each local input's
 * sha256 (its contents, wherever it lies; or the hub id and split), and the settings that change the rows.
 */
async function conversionSource(
  v: PrepareDataSettings,
  hubId: string | null,
): Promise<Record<string, unknown>> {
  const hash = async (path: string) => {
    try {
      return (await hashFile(path)).sha256;
    } catch (e) {
      const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
      throw new DataError(`--input ${path}: ${why}`);
    }
  };
  return {
    dataset: v.dataset,
    inputSha256: hubId ? [] : await Promise.all(v.input.map(hash)),
    hubId: hubId ?? (v.input.length ? null : "preset default"),
    split: v.split,
    sampleSize: v.sampleSize,
    splitEval: v.splitEval,
    seed: v.seed,
    opcSubset: v.opcSubset,
  };
}

/**
 * An existing conversion is reused only when it came from the same source; otherwise (or when it has no
 * record of its source) the error names the file and asks for --overwrite or another --output-path.
 */
async function checkSameSource(converted: string, source: Record<string, unknown>): Promise<void> {
  const path = sourcePath(converted);
  let saved: unknown = null;
  try {
    saved = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound || e instanceof SyntaxError)) throw e;
  }
  if (canonicalJson(saved) === canonicalJson(source)) return;
  const why = saved === null
    ? `has no readable record of its source (${path})`
    : `was converted from other inputs (${path})`;
  throw new DataError(
    `${converted} exists but ${why}; pass --overwrite to convert again, or choose another --output-path`,
  );
}

/** The draft vocabulary mapping: the given file checked and copied, or the most frequent supervised tokens. */
async function writeDraftVocab(
  v: PrepareDataSettings,
  tokenizer: ChatTokenizer,
  built: BuildResult,
  given: VocabMapping | null,
  log: (line: string) => void,
): Promise<void> {
  const targetVocab = v.targetVocabSize ?? tokenizer.vocabSize;
  const out = join(v.outputPath, "vocab_mapping.safetensors");
  if (given) {
    await saveVocabMapping(out, given);
    log(
      `vocab mapping ${v.vocabMapping} (${given.draftVocabSize} draft tokens) checked and written to ${out}`,
    );
  } else if (v.draftVocabSize) {
    const draft = v.draftVocabSize;
    const counter = countSupervisedTokens(
      Array.from({ length: built.dataset.length }, (_, i) => built.dataset.sample(i)),
    );
    const m = selectDraftVocab(counter, draft, targetVocab);
    await saveVocabMapping(out, m);
    log(`draft vocab: ${draft} of ${targetVocab} tokens (${counter.distinct} distinct supervised) → ${out}`);
  }
}

/** Dataset downloads through lib/io/hub.ts. */
function hubDownloader(hub: HubOptions): DatasetDownloader {
  return {
    listFiles: (repo) => listHubFiles(repo, { ...hub, repoType: "dataset" }),
    download: async (repo, path) => (await resolveHubFile(repo, path, { ...hub, repoType: "dataset" }))!,
  };
}

function existsSync(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}
