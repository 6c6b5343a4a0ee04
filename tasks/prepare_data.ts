/**
 * `deno task prepare-data`: converts a dataset to conversations JSONL (SpecForge's prepare_data.py) and,
 * with --tokenizer, also tokenizes it into the preprocessing cache and, with --draft-vocab-size or
 * --vocab-mapping, writes the draft vocabulary mapping (d2t/t2d safetensors).
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { buildTokenizedDataset } from "../lib/data/build.ts";
import { convertDataset, DATASET_NAMES, type DatasetDownloader, isHubId } from "../lib/data/datasets.ts";
import { DataError } from "../lib/data/errors.ts";
import { flagUsage, runTask } from "../lib/cli/run.ts";
import { templates } from "../lib/data/templates.ts";
import { loadTokenizer } from "../lib/data/tokenizer.ts";
import { hubOptionsFromEnv, listHubFiles, resolveHubFile } from "../lib/io/hub.ts";
import {
  countSupervisedTokens,
  loadVocabMapping,
  saveVocabMapping,
  selectDraftVocab,
} from "../lib/data/vocab.ts";

const FLAGS = {
  "dataset": { type: "string", help: `preset: ${DATASET_NAMES.join(", ")} (required)` },
  "input": {
    type: "string",
    multiple: true,
    help: "local .jsonl/.json/.parquet file(s) or a HF dataset id; default: the preset's HF dataset",
  },
  "split": { type: "string", default: "train", help: "split of a HF dataset id given with --input" },
  "output-path": { type: "string", default: "cache/dataset", help: "output directory" },
  "sample-size": { type: "string", help: "convert only the first N rows" },
  "split-eval": {
    type: "boolean",
    default: false,
    help: "also write a 5 % eval split (<dataset>_test.jsonl)",
  },
  "seed": { type: "string", default: "42", help: "seed of the eval split" },
  "opc-subset": { type: "string", default: "largescale_diverse_instruct", help: "opc subset or 'all'" },
  "overwrite": { type: "boolean", default: false, help: "redo the conversion when the output exists" },
  "tokenizer": {
    type: "string",
    help: "tokenizer directory (tokenizer.json [+ tokenizer_config.json]); enables tokenization",
  },
  "chat-template": {
    type: "string",
    default: "llama3",
    help: `template name: ${templates.names().join(", ")}`,
  },
  "chat-template-file": { type: "string", help: "Jinja file replacing the tokenizer's own chat template" },
  "max-length": { type: "string", default: "2048", help: "tokens kept per sample (right truncation)" },
  "is-preformatted": { type: "boolean", default: false, help: 'records are {"text": ...} already rendered' },
  "train-only-last-turn": { type: "boolean", default: false, help: "supervise only the last assistant turn" },
  "min-loss-tokens": { type: "string", default: "1", help: "drop samples with fewer supervised tokens" },
  "cache-dir": { type: "string", default: "cache/processed", help: "preprocessing cache directory" },
  "cache-name": { type: "string", help: "name the cache entry instead of using its content key" },
  "draft-vocab-size": {
    type: "string",
    help: "write <output-path>/vocab_mapping.safetensors with this many draft tokens",
  },
  "target-vocab-size": { type: "string", help: "target vocab_size (default: the tokenizer's)" },
  "vocab-mapping": {
    type: "string",
    help: "use this mapping file (.safetensors or .json) instead of computing one",
  },
  "debug": { type: "boolean", default: false, help: "print stack traces" },
  "help": { type: "boolean", default: false, help: "show this help" },
} as const;

function usage(): string {
  return flagUsage("usage: deno task prepare-data --dataset <name> [--input <file|hf-id>] [options]", FLAGS);
}

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new DataError(`--${name} must be a positive integer, got '${v}'`);
  return n;
}

async function prepareData(args: ReturnType<typeof parse>): Promise<void> {
  const v = args.values;
  if (!v.dataset) throw new DataError("--dataset is required (see --help)");
  const inputs = v.input ?? [];
  const hubIds = inputs.filter((i) => !existsSync(i) && isHubId(i));
  if (hubIds.length > 1 || (hubIds.length === 1 && inputs.length > 1)) {
    throw new DataError("give either local files or one HF dataset id with --input");
  }
  // Resolve the template and tokenizer first, so a typo fails before any conversion work.
  const template = v.tokenizer ? templates.get(v["chat-template"]) : null;
  const chatTemplate = v["chat-template-file"] ? await Deno.readTextFile(v["chat-template-file"]) : undefined;
  const tokenizer = v.tokenizer ? await loadTokenizer(v.tokenizer, { chatTemplate }) : null;
  const log = (l: string) => console.log(l);
  const report = await convertDataset({
    dataset: v.dataset,
    inputs: hubIds.length ? undefined : inputs,
    hubId: hubIds[0],
    split: v.split,
    outputDir: v["output-path"],
    sampleSize: int("sample-size", v["sample-size"]),
    splitEval: v["split-eval"],
    seed: Number(v.seed),
    overwrite: v.overwrite,
    preset: { opcSubset: v["opc-subset"] },
    downloader: hubDownloader(),
    log,
  });
  if (!tokenizer || !template) return;
  console.log(
    `tokenizer ${tokenizer.source.tokenizerJsonPath} (vocab ${tokenizer.vocabSize}, chat template: ${
      tokenizer.source.chatTemplateOrigin ?? "none, fallback renderer"
    })`,
  );
  const built = await buildTokenizedDataset({
    dataPath: report.trainPath,
    tokenizer,
    templateName: v["chat-template"],
    template,
    maxLength: int("max-length", v["max-length"]),
    isPreformatted: v["is-preformatted"],
    trainOnlyLastTurn: v["train-only-last-turn"],
    minLossTokens: Number(v["min-loss-tokens"]),
    cacheDir: v["cache-dir"],
    cacheName: v["cache-name"],
    log,
  });
  const s = built.stats;
  console.log(
    `${s.samples} samples, ${s.tokens} tokens, ${s.supervisedTokens} supervised; ${s.truncated} truncated at max_length, ` +
      `${s.droppedUnsupervised} dropped without supervised tokens`,
  );

  const targetVocab = int("target-vocab-size", v["target-vocab-size"]) ?? tokenizer.vocabSize;
  const out = join(v["output-path"], "vocab_mapping.safetensors");
  if (v["vocab-mapping"]) {
    const m = await loadVocabMapping(v["vocab-mapping"], { targetVocabSize: targetVocab });
    await saveVocabMapping(out, m);
    console.log(
      `vocab mapping ${v["vocab-mapping"]} (${m.draftVocabSize} draft tokens) checked and written to ${out}`,
    );
  } else if (v["draft-vocab-size"]) {
    const draft = int("draft-vocab-size", v["draft-vocab-size"])!;
    const counter = countSupervisedTokens(
      Array.from({ length: built.dataset.length }, (_, i) => built.dataset.sample(i)),
    );
    const m = selectDraftVocab(counter, draft, targetVocab);
    await saveVocabMapping(out, m);
    console.log(
      `draft vocab: ${draft} of ${targetVocab} tokens (${counter.distinct} distinct supervised) → ${out}`,
    );
  }
}

/** Dataset downloads through lib/io/hub.ts (HF_ENDPOINT, HF_TOKEN, caches and offline mode from the env). */
function hubDownloader(): DatasetDownloader {
  const opts = hubOptionsFromEnv(Deno.env.toObject());
  return {
    listFiles: (repo) => listHubFiles(repo, { ...opts, repoType: "dataset" }),
    download: async (repo, path) => (await resolveHubFile(repo, path, { ...opts, repoType: "dataset" }))!,
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

function parse(argv: string[]) {
  return parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false });
}

/** Runs `prepare-data` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("prepare-data", args, async (argv) => {
    const parsed = parse(argv);
    if (parsed.values.help) console.log(usage());
    else await prepareData(parsed);
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
