/**
 * `deno task prepare-hidden-states`: runs the frozen target once over a dataset and writes the features
 * offline training reads (lib/offline/format.ts), compact by default; resumable and shardable
 * (lib/offline/prepare.ts).
 */
import { parseArgs } from "node:util";
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv } from "../lib/io/hub.ts";
import { flagUsage, numberFlag, runTask } from "../lib/cli/run.ts";
import { templates } from "../lib/data/templates.ts";
import { AUX_FORMATS, type AuxFormat, TEACHER_FORMATS, type TeacherFormat } from "../lib/offline/format.ts";
import { DEFAULT_FILE_GROUP_SIZE, DEFAULT_STORAGE, prepareHiddenStates } from "../lib/offline/prepare.ts";

const FLAGS = {
  "target-model-path": { type: "string", help: "target: HF model dir or hub id (required)" },
  "data-path": {
    type: "string",
    help: "prepared data (.jsonl/.json/.parquet: conversations, text or pre-tokenized) (required)",
  },
  "output-path": { type: "string", help: "features directory to write or complete (required)" },
  "chat-template": { type: "string", default: "llama3", help: `one of ${templates.names().join(", ")}` },
  "max-length": { type: "string", default: "2048", help: "tokens kept per sample" },
  "num-samples": { type: "string", help: "only the first N processed samples (default: all)" },
  "batch-size": { type: "string", default: "8", help: "samples per target forward" },
  "shard": { type: "string", default: "0/1", help: "i/N: this process writes rows r with r % N == i" },
  "aux-layers": {
    type: "string",
    help: "three target layer ids, e.g. 1,15,28 (default: the draft config's, else [1, N/2-1, N-4])",
  },
  "draft-model-config": { type: "string", help: "draft config.json whose eagle_config names the aux layers" },
  "aux-format": {
    type: "string",
    default: DEFAULT_STORAGE.auxFormat,
    help: `aux hidden states: ${AUX_FORMATS.join(", ")} (int8/int4: grouped, one bf16 scale per group)`,
  },
  "group-size": {
    type: "string",
    default: String(DEFAULT_STORAGE.groupSize),
    help: "values per int8/int4 scale",
  },
  "teacher-format": {
    type: "string",
    default: DEFAULT_STORAGE.teacherFormat,
    help: `${
      TEACHER_FORMATS.join(", ")
    }: the final hidden state (SpecForge's) or the top-k next-token log-probs`,
  },
  "topk": { type: "string", default: String(DEFAULT_STORAGE.topk), help: "k of the topk teacher (1..64)" },
  "cache-dir": { type: "string", default: "./cache", help: "preprocessing cache ('' disables it)" },
  "is-preformatted": { type: "boolean", default: false, help: 'records are {"text": ...} already rendered' },
  "file-group-size": {
    type: "string",
    default: String(DEFAULT_FILE_GROUP_SIZE),
    help: "files per rows_* folder",
  },
  "debug": { type: "boolean", default: false, help: "print stack traces" },
  "help": { type: "boolean", default: false, help: "this text" },
} as const;

/** Runs `prepare-hidden-states` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("prepare-hidden-states", args, prepareTask);
}

async function prepareTask(args: string[]): Promise<void> {
  const { values: v } = parseArgs({ args, options: FLAGS, strict: true });
  if (v.help) {
    return console.log(flagUsage(
      "usage: deno task prepare-hidden-states --target-model-path <dir> --data-path <file> --output-path <dir> [options]",
      FLAGS,
    ));
  }
  for (const f of ["target-model-path", "data-path", "output-path"] as const) {
    if (!v[f]) throw new Error(`--${f} is required (see --help)`);
  }
  const shard = /^(\d+)\/(\d+)$/.exec(v.shard);
  if (!shard) throw new Error(`--shard must be i/N, got "${v.shard}"`);
  const auxFormat = v["aux-format"] as AuxFormat, teacherFormat = v["teacher-format"] as TeacherFormat;
  if (!AUX_FORMATS.includes(auxFormat)) {
    throw new Error(`--aux-format must be one of ${AUX_FORMATS.join(", ")}`);
  }
  if (!TEACHER_FORMATS.includes(teacherFormat)) {
    throw new Error(`--teacher-format must be one of ${TEACHER_FORMATS.join(", ")}`);
  }
  const auxLayers = v["aux-layers"]?.split(",").map((x) => numberFlag("aux-layers", x, 0, true)) ?? null;
  templates.get(v["chat-template"]); // unknown template: an error before anything runs
  const gpu = await Gpu.create();
  console.log(`prepare-hidden-states on ${gpu.describe()}`);
  try {
    const r = await prepareHiddenStates(gpu, {
      targetModelPath: v["target-model-path"]!,
      dataPath: v["data-path"]!,
      outputPath: v["output-path"]!,
      chatTemplate: v["chat-template"],
      maxLength: numberFlag("max-length", v["max-length"], 2048, true),
      storage: {
        auxFormat,
        groupSize: numberFlag("group-size", v["group-size"], 32, true),
        teacherFormat,
        topk: numberFlag("topk", v.topk, 16, true),
      },
      numSamples: v["num-samples"] === undefined
        ? null
        : numberFlag("num-samples", v["num-samples"], 0, true),
      batchSize: numberFlag("batch-size", v["batch-size"], 8, true),
      shard: { index: Number(shard[1]), count: Number(shard[2]) },
      auxLayers,
      draftModelConfig: v["draft-model-config"] ?? null,
      cacheDir: v["cache-dir"] || null,
      isPreformatted: v["is-preformatted"],
      fileGroupSize: numberFlag("file-group-size", v["file-group-size"], DEFAULT_FILE_GROUP_SIZE, true),
      hub: hubOptionsFromEnv(Deno.env.toObject()),
      log: (line) => console.log(line),
    });
    const perToken = r.tokens > 0 ? r.bytes / r.tokens : 0;
    console.log(
      `done: ${r.written} files written, ${r.skipped} already there` +
        (r.nonFinite.length
          ? `, ${r.nonFinite.length} skipped for NaN/Inf (rows ${r.nonFinite.slice(0, 10)})`
          : "") +
        (r.tokens
          ? `; ${r.tokens} tokens, ${perToken.toFixed(1)} bytes per token on disk (headers included)`
          : ""),
    );
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
