/**
 * The settings of `eval` (speculative decoding of a jsonl file's prompts with a target and a draft, as SGLang's
 * `--speculative-num-steps`, `--speculative-eagle-topk`, `--speculative-num-draft-tokens` set it), declared
 * once as flags (lib/flags.ts). A library caller writes `evalSettings({ targetModelPath, draftModelPath,
 * dataPath })` and passes the result to `evaluateDraft` (./evaluate.ts); the CLI parses the same table.
 */
import { type FlagTable, type Settings, type SettingsInput, settingsOf } from "../flags.ts";
import { DEVICE_MEMORY_FLAG } from "../gpu/device_memory.ts";
import { MATMUL_AUTOTUNE_FLAG } from "../ops/matmul_autotune.ts";

/** Every flag of `eval`. */
export const EVAL_FLAGS = {
  "target-model-path": {
    kind: "string",
    required: true,
    arg: "dir|id",
    help: "HF checkpoint directory or Hugging Face repo id",
  },
  "draft-model-path": {
    kind: "string",
    required: true,
    arg: "dir",
    help:
      "an Eaglet export, SpecForge checkpoint or SGLang draft directory (config.json + model.safetensors, " +
      'bf16/f16/f32); "random" for a randomly initialised draft (a baseline: tau ≈ 1)',
  },
  "data-path": {
    kind: "string",
    required: true,
    arg: "jsonl",
    help:
      'one prompt per line: {"input_ids": [...]} (with a "loss_mask", the ids before the first supervised ' +
      'token), {"prompt": "..."}, {"text": "..."} or {"conversations": [{"role", "content"}, ...]} (rendered ' +
      "with the tokenizer's chat template up to the first assistant turn)",
  },
  "num-steps": { kind: "int", default: 3, min: 1, arg: "n", help: "draft tree depth" },
  topk: { kind: "int", default: 1, min: 1, arg: "k", help: "branches per level (1: a chain)" },
  "num-draft-tokens": {
    kind: "int",
    min: 2,
    arg: "n",
    help: "verified tree nodes incl. the root (default: num-steps + 1 for a chain)",
  },
  temperature: {
    kind: "float",
    default: 0,
    min: 0,
    arg: "t",
    help: "0 = greedy verification; > 0 lossless speculative sampling",
  },
  "top-p": { kind: "float", default: 1, above: 0, max: 1, arg: "p", help: "nucleus mass" },
  "max-new-tokens": { kind: "int", default: 64, min: 1, arg: "n", help: "new tokens per prompt" },
  "num-samples": { kind: "int", default: 16, min: 1, arg: "n", help: "prompts used" },
  "max-prompt-len": { kind: "int", default: 256, min: 1, arg: "n", help: "keep the last n prompt tokens" },
  seed: { kind: "int", default: 0, arg: "n", help: "sampling seed" },
  "no-speed": { kind: "bool", help: "skip the tokens/s measurement (and the target-only runs)" },
  "output-dir": { kind: "string", default: "out/eval", arg: "dir", help: "where the report goes" },
  "dry-run": {
    kind: "bool",
    help: "print the memory plan (bytes by category at the peak, against the device's limits) and exit, " +
      "loading no weight and writing nothing",
  },
  "device-memory": DEVICE_MEMORY_FLAG,
  "matmul-autotune": MATMUL_AUTOTUNE_FLAG,
} as const satisfies FlagTable;

/** The settings of `eval`, each flag under its camelCase name. */
export type EvalSettings = Settings<typeof EVAL_FLAGS>;

/** What a library caller gives {@link evalSettings}: the required settings and any others. */
export type EvalSettingsInput = SettingsInput<typeof EVAL_FLAGS>;

/** The settings of an evaluation from a library caller's object: defaults filled, values checked. */
export function evalSettings(input: EvalSettingsInput): EvalSettings {
  return settingsOf(EVAL_FLAGS, input);
}
