/**
 * Dataset conversion (`deno task prepare-data`; SpecForge `scripts/prepare_data.py`): raw rows of a known
 * dataset → the conversations JSONL every later step reads, `{"id", "conversations": [{"role":
 * "user"|"assistant", "content"}]}`, written to `<out>/<dataset>_train.jsonl` (and `<dataset>_test.jsonl`
 * with a 5 % eval split).
 *
 * Each preset names its Hugging Face dataset (repo, config, split) and converts one row. The `custom`
 * preset takes a local file of already-converted records: conversations (validated), preformatted
 * `{"text"}` or pre-tokenized `{"input_ids","loss_mask"}` samples, which are passed through unchanged.
 *
 * Hugging Face downloads go through the injected `DatasetDownloader` (wired to lib/io/hub.ts by the task),
 * so this module never touches the network itself.
 *
 * SpecForge's classic scripts are [C], its current runtime (`specforge train`) [H].
 */

import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { pathExists, writeFileAtomic } from "../io/atomic.ts";
import { DataError } from "./errors.ts";
import type { Message } from "./preprocess.ts";
import { type DataRecord, parseRecord, type RawRecord, readRecords, recordToJson } from "./records.ts";
import { permutation } from "./random.ts";

/** SpecForge's ShareGPT role mapping; any other `from` (notably "system") is dropped and counted. */
export const SHAREGPT_ROLES: Record<string, "user" | "assistant"> = {
  human: "user",
  gpt: "assistant",
  chatgpt: "assistant",
  bing: "assistant",
  bard: "assistant",
};

/** A dataset split on the Hugging Face hub. */
export interface HubSource {
  /** Dataset repository, e.g. "HuggingFaceH4/ultrachat_200k". */
  repo: string;
  /** Dataset config (subset) name, when the repo has several. */
  config?: string;
  /** Split name, e.g. "train" or "train_sft". */
  split: string;
  /** Exact files to download, when the repo layout is not the standard `<config>/<split>-*.parquet`. */
  files?: string[];
}

/** The result of converting one raw row. */
export interface Converted {
  /** The record, or null when the row is dropped (reason in `dropReason`). */
  record: DataRecord | null;
  /** Messages dropped from the row (unknown ShareGPT speakers such as "system"). */
  skippedMessages: number;
  dropReason?: string;
}

/** A dataset preset: where it lives and how a row converts. */
export interface DatasetPreset {
  /** The `--dataset` name (SpecForge's). */
  name: string;
  /** Hub splits concatenated in order; empty for local-only presets. */
  hub: HubSource[];
  /** Converts the `index`-th raw row (0-based over the concatenated splits). */
  convert(row: Record<string, unknown>, index: number, source: string): Converted;
}

function md5(s: string): string {
  return createHash("md5").update(s).digest("hex");
}

function field(row: Record<string, unknown>, key: string, source: string): string {
  const v = row[key];
  if (typeof v !== "string") throw new DataError(`${source}: expected a string field "${key}"`);
  return v;
}

/** A conversation record that is dropped (not an error) when it has no user or no assistant message. */
function conversation(id: string, conversations: Message[], skippedMessages = 0): Converted {
  if (conversations.length === 0) return { record: null, skippedMessages, dropReason: "empty conversation" };
  if (!conversations.some((m) => m.role === "user")) {
    return { record: null, skippedMessages, dropReason: "no user message" };
  }
  if (!conversations.some((m) => m.role === "assistant")) {
    return { record: null, skippedMessages, dropReason: "no assistant message" };
  }
  return { record: { kind: "conversation", id, conversations }, skippedMessages };
}

function sharegptRow(row: Record<string, unknown>, id: string, source: string): Converted {
  const conv = row.conversations;
  if (!Array.isArray(conv)) throw new DataError(`${source}: expected a "conversations" list`);
  let skipped = 0;
  const out: Message[] = [];
  conv.forEach((m: Record<string, unknown>, i) => {
    const role = SHAREGPT_ROLES[m?.from as string];
    if (!role) {
      skipped++;
      return;
    }
    if (typeof m.value !== "string") throw new DataError(`${source}: message ${i} has no string "value"`);
    out.push({ role, content: m.value });
  });
  return conversation(id, out, skipped);
}

function pair(id: string, user: string, assistant: string): Converted {
  return conversation(id, [{ role: "user", content: user }, { role: "assistant", content: assistant }]);
}

function identity(row: Record<string, unknown>, id: string, source: string): Converted {
  const rec = parseRecord({ value: { ...row, id }, source, index: 0 });
  if (rec.kind !== "conversation") return { record: rec, skippedMessages: 0 };
  return conversation(rec.id, rec.conversations);
}

/** sciq: answer options in a seeded order (SpecForge shuffles them with Python's unseeded `random`). */
function sciqRow(row: Record<string, unknown>, index: number, source: string): Converted {
  const correct = field(row, "correct_answer", source);
  const answers = [
    field(row, "distractor3", source),
    field(row, "distractor1", source),
    field(row, "distractor2", source),
    correct,
  ];
  const order = permutation(4, 0x5c1 + index);
  const labels = ["a", "b", "c", "d"];
  const options = Array.from(order, (k, i) => [labels[i], answers[k]] as const);
  const correctLabel = options.find(([, a]) => a === correct)![0];
  const user = `${field(row, "question", source)}\n${options.map(([l, a]) => `${l}) ${a}`).join("\n")}`;
  const assistant = `${field(row, "support", source)}\nanswer: ${correctLabel}) ${correct}`;
  return pair(md5(user + assistant), user, assistant);
}

const perfectblendRegenerated = (name: string, repo: string): DatasetPreset => ({
  name,
  hub: [{ repo, split: "train" }],
  convert: (row, index, source) => identity(row, String(index), source),
});

const mdPair = (a: string, b: string) => (row: Record<string, unknown>, _i: number, source: string) => {
  const u = field(row, a, source);
  const r = field(row, b, source);
  return pair(md5(u + r), u, r);
};

const OPC_SUBSETS = ["largescale_diverse_instruct", "filtered_infinity_instruct", "realuser_instruct"];
const MATH_SUBJECTS = [
  "algebra",
  "counting_and_probability",
  "geometry",
  "intermediate_algebra",
  "number_theory",
  "prealgebra",
  "precalculus",
];

/** Options that select a preset's hub source. */
export interface PresetOptions {
  /** opc subset: one of OPC_SUBSETS or "all" (default largescale_diverse_instruct). */
  opcSubset?: string;
}

/** The presets, by name. `custom` reads local files of records in Eaglet's own schemas. */
export function datasetPreset(name: string, options: PresetOptions = {}): DatasetPreset {
  switch (name) {
    case "ultrachat":
      return {
        name,
        hub: [{ repo: "HuggingFaceH4/ultrachat_200k", split: "train_sft" }],
        convert(row, _i, source) {
          const msgs = row.messages;
          if (!Array.isArray(msgs)) throw new DataError(`${source}: expected a "messages" list`);
          const out = msgs.map((m: Record<string, unknown>, i) => {
            if (m?.role !== "user" && m?.role !== "assistant") {
              throw new DataError(
                `${source}: message ${i} has role '${m?.role}'; ultrachat allows user and assistant`,
              );
            }
            return { role: m.role, content: field(m, "content", `${source} message ${i}`) };
          });
          return conversation(field(row, "prompt_id", source), out);
        },
      };
    case "sharegpt":
      return {
        name,
        hub: [{
          repo: "Aeala/ShareGPT_Vicuna_unfiltered",
          split: "train",
          files: ["ShareGPT_V4.3_unfiltered_cleaned_split.json"],
        }],
        convert: (row, index, source) => sharegptRow(row, String(row.id ?? index), source),
      };
    case "eaglechat":
      return {
        name,
        hub: [{ repo: "zhaode/EagleChat", split: "train" }],
        convert: (row, index, source) => identity(row, String(row.id ?? index), source),
      };
    case "perfectblend":
      return {
        name,
        hub: [{ repo: "mlabonne/open-perfectblend", split: "train" }],
        convert: (row, index, source) => sharegptRow(row, String(index), source),
      };
    case "perfectblend-llama3.1-8b-instruct":
      return perfectblendRegenerated(name, "frankleeeee/PerfectBlend-Regenerated-Llama-3.1-8B-Instruct");
    case "perfectblend-llama3.3-70b-instruct":
      return perfectblendRegenerated(name, "frankleeeee/PerfectBlend-Regenerated-Llama-3.3-70B-Instruct");
    case "perfectblend-llama4-scout-instruct":
      return perfectblendRegenerated(
        name,
        "frankleeeee/PerfectBlend-Regenerated-Llama-4-Scout-17B-16E-Instruct",
      );
    case "perfectblend-llama4-maverick-instruct":
      return perfectblendRegenerated(
        name,
        "frankleeeee/PerfectBlend-Regenerated-Llama-4-Maverick-17B-128E-Instruct",
      );
    case "magpie-qwen2.5-pro-1m-v0.1":
      return {
        name,
        hub: [{ repo: "Magpie-Align/Magpie-Qwen2.5-Pro-1M-v0.1", split: "train" }],
        convert: (row, index, source) => sharegptRow(row, String(row.uuid ?? index), source),
      };
    case "opc": {
      const subset = options.opcSubset ?? "largescale_diverse_instruct";
      if (subset !== "all" && !OPC_SUBSETS.includes(subset)) {
        throw new DataError(`unknown opc subset '${subset}'; known: ${[...OPC_SUBSETS, "all"].join(", ")}`);
      }
      const subsets = subset === "all" ? OPC_SUBSETS : [subset];
      return {
        name,
        hub: subsets.map((config) => ({ repo: "OpenCoder-LLM/opc-sft-stage1", config, split: "train" })),
        convert: mdPair("instruction", "output"),
      };
    }
    case "gsm8k":
      return {
        name,
        hub: [{ repo: "openai/gsm8k", config: "main", split: "train" }],
        convert: mdPair("question", "answer"),
      };
    case "hendrycks_math":
      return {
        name,
        hub: MATH_SUBJECTS.map((config) => ({ repo: "EleutherAI/hendrycks_math", config, split: "train" })),
        convert: mdPair("problem", "solution"),
      };
    case "math_qa":
      return {
        name,
        hub: [{ repo: "allenai/math_qa", split: "train" }],
        convert(row, _i, source) {
          const user = `${field(row, "Problem", source)}\n${field(row, "options", source)}`;
          const rationale = field(row, "Rationale", source);
          return pair(md5(user + rationale), user, rationale);
        },
      };
    case "codealpaca-20k":
      return {
        name,
        hub: [{ repo: "sahil2801/CodeAlpaca-20k", split: "train" }],
        convert: mdPair("instruction", "output"),
      };
    case "opencodeinstruct":
      return {
        name,
        hub: [{ repo: "nvidia/OpenCodeInstruct", split: "train" }],
        convert(row, _i, source) {
          const u = field(row, "input", source);
          const r = field(row, "output", source);
          return pair(row.id != null ? String(row.id) : md5(u + r), u, r);
        },
      };
    case "magicoder-evol-instruct":
      return {
        name,
        hub: [{ repo: "ise-uiuc/Magicoder-Evol-Instruct-110K", split: "train" }],
        convert: mdPair("instruction", "response"),
      };
    case "sciq":
      return { name, hub: [{ repo: "allenai/sciq", split: "train" }], convert: sciqRow };
    case "camel":
      return {
        name,
        hub: ["biology", "chemistry", "physics"].map((s) => ({ repo: `camel-ai/${s}`, split: "train" })),
        convert: mdPair("message_1", "message_2"),
      };
    case "custom":
      return {
        name,
        hub: [],
        convert: (row, index, source) => {
          const rec = parseRecord({ value: row, source, index }, { harmonyRoles: true });
          return { record: rec, skippedMessages: 0 };
        },
      };
    case "sharegpt4v":
    case "allava4v":
      throw new DataError(`dataset '${name}' is a vision-language dataset; Eaglet trains text-only drafts`);
    default:
      throw new DataError(`unknown dataset '${name}'; known: ${DATASET_NAMES.join(", ")}`);
  }
}

/** Every `--dataset` name. */
export const DATASET_NAMES: readonly string[] = [
  "ultrachat",
  "sharegpt",
  "eaglechat",
  "perfectblend",
  "perfectblend-llama3.1-8b-instruct",
  "perfectblend-llama3.3-70b-instruct",
  "perfectblend-llama4-scout-instruct",
  "perfectblend-llama4-maverick-instruct",
  "magpie-qwen2.5-pro-1m-v0.1",
  "opc",
  "gsm8k",
  "hendrycks_math",
  "math_qa",
  "codealpaca-20k",
  "opencodeinstruct",
  "magicoder-evol-instruct",
  "sciq",
  "camel",
  "custom",
];

/** Downloads dataset files from the Hugging Face hub (implemented over lib/io/hub.ts by the CLI). */
export interface DatasetDownloader {
  /** Every file path of dataset repository `repo`. */
  listFiles(repo: string): Promise<string[]>;
  /** Downloads `path` of dataset repository `repo` (cached) and returns the local file path. */
  download(repo: string, path: string): Promise<string>;
}

const DATA_EXT = /\.(parquet|jsonl|json)$/i;

/**
 * The data files of one split, by Hugging Face's layouts: `[<config>/]…/<split>-*.ext`,
 * `[<config>/]…/<split>/*.ext` or `<split>.ext`, sorted. Throws listing what exists when nothing matches.
 */
export function selectSplitFiles(files: string[], source: HubSource): string[] {
  if (source.files) return source.files;
  const picked = files.filter((f) => {
    if (!DATA_EXT.test(f)) return false;
    const parts = f.split("/");
    const name = parts[parts.length - 1];
    const dirs = parts.slice(0, -1);
    if (source.config && !dirs.includes(source.config)) return false;
    const stem = name.replace(DATA_EXT, "");
    return stem === source.split || name.startsWith(`${source.split}-`) || dirs.includes(source.split);
  }).sort();
  if (picked.length === 0) {
    const shown = files.filter((f) => DATA_EXT.test(f)).slice(0, 20).join(", ") || "(no data files)";
    throw new DataError(
      `${source.repo}: no files for ${
        source.config ? `config '${source.config}', ` : ""
      }split '${source.split}' (files: ${shown})`,
    );
  }
  return picked;
}

/** Whether `input` looks like a hub dataset id ("owner/name") rather than a local path. */
export function isHubId(input: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/.test(input) && !DATA_EXT.test(input);
}

/** Options of `convertDataset`. */
export interface ConvertOptions {
  /** Preset name (`--dataset`). */
  dataset: string;
  /** Local data files; when absent the preset's hub dataset is downloaded. */
  inputs?: string[];
  /** A hub dataset id to read instead of the preset's own (split "train" unless `split`). */
  hubId?: string;
  /** Split of `hubId`. */
  split?: string;
  /** Output directory (created). */
  outputDir: string;
  /** Take the first N raw rows before conversion and splitting. */
  sampleSize?: number;
  /** Write a 5 % eval split to `<dataset>_test.jsonl`. */
  splitEval?: boolean;
  /** Seed of the eval split (SpecForge [H]: 42). */
  seed?: number;
  /** Replace existing output files (SpecForge skips when the train file exists). */
  overwrite?: boolean;
  /** Preset options (opc subset). */
  preset?: PresetOptions;
  /** Needed when reading from the hub. */
  downloader?: DatasetDownloader;
  /** Progress and notices. */
  log?: (line: string) => void;
}

/** What `convertDataset` did. */
export interface ConvertReport {
  /** The train JSONL written (`<dataset>_train.jsonl` in the output directory). */
  trainPath: string;
  /** The test JSONL written when a test split was asked for, else null. */
  testPath: string | null;
  /** Raw rows read (after --sample-size). */
  rows: number;
  /** Samples written to the train file. */
  train: number;
  /** Samples written to the test file (0 without a split). */
  test: number;
  /** Messages dropped for an unknown speaker (ShareGPT "system", ...). */
  skippedMessages: number;
  /** Rows dropped, by reason. */
  dropped: Record<string, number>;
  /** Records written, by kind. */
  kinds: Record<DataRecord["kind"], number>;
  /** True when the train file existed and nothing was done. */
  skippedExisting: boolean;
}

async function* concatRecords(paths: string[]): AsyncGenerator<RawRecord> {
  for (const p of paths) yield* readRecords(p);
}

/** Resolves the local files to read: `inputs`, or downloads of `hubId` / the preset's hub splits. */
async function resolveInputs(preset: DatasetPreset, options: ConvertOptions): Promise<string[]> {
  if (options.inputs && options.inputs.length > 0) return options.inputs;
  const sources: HubSource[] = options.hubId
    ? [{ repo: options.hubId, split: options.split ?? "train" }]
    : preset.hub;
  if (sources.length === 0) throw new DataError(`dataset '${preset.name}' needs --input (a local file)`);
  const dl = options.downloader;
  if (!dl) {
    throw new DataError(
      `dataset '${
        sources[0].repo
      }' must be downloaded from the Hugging Face hub, but no hub downloader is available; ` +
        `download it yourself and pass the file with --input`,
    );
  }
  const paths: string[] = [];
  for (const src of sources) {
    const files = src.files ?? selectSplitFiles(await dl.listFiles(src.repo), src);
    for (const f of files) {
      options.log?.(`downloading ${src.repo}/${f}`);
      paths.push(await dl.download(src.repo, f));
    }
  }
  return paths;
}

/** The conversations file {@link convertDataset} writes for `dataset` in `outputDir`. */
export function convertedTrainPath(outputDir: string, dataset: string): string {
  return join(outputDir, `${dataset}_train.jsonl`);
}

/**
 * Converts a dataset to conversations JSONL (plus an eval split), atomically. Dropped messages and rows are
 * counted in the report; structural errors (a missing field, a malformed line) throw DataError naming the
 * file and line.
 */
export async function convertDataset(options: ConvertOptions): Promise<ConvertReport> {
  const preset = datasetPreset(options.dataset, options.preset);
  if (options.sampleSize !== undefined && !(Number.isInteger(options.sampleSize) && options.sampleSize > 0)) {
    throw new DataError(`--sample-size must be a positive integer, got ${options.sampleSize}`);
  }
  await Deno.mkdir(options.outputDir, { recursive: true });
  const trainPath = convertedTrainPath(options.outputDir, options.dataset);
  const testPath = options.splitEval ? join(options.outputDir, `${options.dataset}_test.jsonl`) : null;
  const report: ConvertReport = {
    trainPath,
    testPath,
    rows: 0,
    train: 0,
    test: 0,
    skippedMessages: 0,
    dropped: {},
    kinds: { conversation: 0, text: 0, tokens: 0 },
    skippedExisting: false,
  };
  if (!options.overwrite && await pathExists(trainPath)) {
    options.log?.(`${trainPath} exists; skipping (pass --overwrite to redo it)`);
    report.skippedExisting = true;
    return report;
  }
  const paths = await resolveInputs(preset, options);
  const lines: string[] = [];
  for await (const raw of concatRecords(paths)) {
    if (options.sampleSize !== undefined && report.rows >= options.sampleSize) break;
    if (!raw.value || typeof raw.value !== "object" || Array.isArray(raw.value)) {
      throw new DataError(`${raw.source}: expected a JSON object`);
    }
    const { record, skippedMessages, dropReason } = preset.convert(
      raw.value as Record<string, unknown>,
      report.rows,
      raw.source,
    );
    report.rows++;
    report.skippedMessages += skippedMessages;
    if (!record) {
      const why = dropReason ?? "dropped";
      report.dropped[why] = (report.dropped[why] ?? 0) + 1;
      continue;
    }
    report.kinds[record.kind]++;
    lines.push(JSON.stringify(recordToJson(record)));
  }
  // Eval split: a seeded permutation; the first ceil(5 %) go to test (as HF's train_test_split sizes it).
  let train = lines;
  let test: string[] = [];
  if (options.splitEval) {
    const perm = Array.from(permutation(lines.length, options.seed ?? 42));
    const nTest = Math.ceil(lines.length * 0.05);
    test = perm.slice(0, nTest).map((i) => lines[i]);
    train = perm.slice(nTest).map((i) => lines[i]);
  }
  await writeLines(trainPath, train);
  if (testPath) await writeLines(testPath, test);
  report.train = train.length;
  report.test = test.length;
  options.log?.(
    `${basename(trainPath)}: ${report.train} samples` +
      (testPath ? `, ${basename(testPath)}: ${report.test}` : "") +
      ` (from ${report.rows} rows)`,
  );
  if (report.skippedMessages > 0) {
    options.log?.(`skipped ${report.skippedMessages} messages with an unmapped speaker (e.g. system)`);
  }
  for (const [why, n] of Object.entries(report.dropped)) options.log?.(`dropped ${n} rows: ${why}`);
  return report;
}

async function writeLines(path: string, lines: string[]): Promise<void> {
  await writeFileAtomic(path, lines.length ? lines.join("\n") + "\n" : "");
}
