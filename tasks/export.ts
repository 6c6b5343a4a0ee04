/**
 * `deno task export`: writes the SGLang serving directory of a training checkpoint (config.json +
 * model.safetensors with midlayer.*, fc, norm, lm_head, d2t, t2d; no embedding: what SGLang's
 * `python/sglang/srt/models/llama_eagle3.py` `LlamaForCausalLMEagle3.load_weights` reads), in bf16
 * by default or f16/f32, checked after writing. Every checkpoint train-online saves already is such a
 * directory in the run's --export-dtype; this task re-exports it (another dtype, another place, another
 * vocab mapping) from the f32 master weights, or just checks a directory with --check.
 */
import { checkDraftExport } from "../lib/models/export.ts";
import { pathExists } from "../lib/io/atomic.ts";
import { join } from "node:path";
import {
  checkSpeculatorsExport,
  isSpeculatorsDir,
  type SpeculatorsVerifier,
} from "../lib/models/export_speculators.ts";
import { checkpointTarget, exportCheckpoint, findLatestCheckpoint } from "../lib/train/checkpoint.ts";
import { loadVocabMapping } from "../lib/data/vocab.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand } from "../lib/flags.ts";

/** The flags of `export`. */
export const EXPORT_FLAGS = {
  checkpoint: {
    kind: "string",
    arg: "dir",
    help:
      "a checkpoint (epoch_E_step_S) or a run's --output-dir (its latest checkpoint); required unless --check",
  },
  "output-dir": {
    kind: "string",
    arg: "dir",
    help: "the SGLang directory to write (atomically); required unless --check",
  },
  format: {
    kind: "choice",
    choices: ["sglang", "vllm", "speculators"],
    default: "sglang",
    help:
      "serving format: vllm moves the aux layer ids to vLLM's top-level key and convention; speculators " +
      "writes vLLM's speculators config (verifier and proposal inside: `vllm serve <dir>`); each checked",
  },
  verifier: {
    kind: "string",
    arg: "path|id",
    help:
      "speculators format: the target vLLM serves the draft with (default: the checkpoint's target_model_path)",
  },
  "speculative-tokens": {
    kind: "int",
    default: 3,
    min: 1,
    help: "speculators format: draft tokens per round of its greedy proposal (vLLM's num_speculative_tokens)",
  },
  dtype: {
    kind: "choice",
    choices: ["bf16", "f16", "f32"],
    default: "bf16",
    help: "dtype of the exported weights",
  },
  "vocab-mapping": {
    kind: "string",
    arg: "file",
    help: "replace d2t/t2d with this mapping (.safetensors or .json)",
  },
  overwrite: { kind: "bool", help: "replace --output-dir if it exists" },
  check: {
    kind: "string",
    arg: "dir",
    help:
      "only check a draft directory (SGLang's, or a speculators one: keys, shapes, dtypes, config) and describe it",
  },
} as const satisfies FlagTable;

const USAGE = `deno task export --checkpoint <dir> --output-dir <dir> [options]
deno task export --check <dir>`;

/** Runs `export` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("export", args, exportTask);
}

async function exportTask(args: string[]): Promise<void> {
  const cmd = parseCommand(EXPORT_FLAGS, args);
  if (cmd.help) return console.log(flagHelp(EXPORT_FLAGS, USAGE));
  const v = cmd.settings;
  if (v.check && await isSpeculatorsDir(v.check)) {
    const c = await checkSpeculatorsExport(v.check);
    console.log(
      `${v.check}: OK — speculators EAGLE-3, ${c.speculativeTokens} tokens per round, ${c.names.length} tensors`,
    );
    return;
  }
  if (v.check) {
    const c = await checkDraftExport(v.check);
    const cfg = c.config;
    console.log(
      `${v.check}: OK — ${c.dtype}, hidden ${cfg.hiddenSize}, intermediate ${cfg.intermediateSize}, heads ` +
        `${cfg.numHeads}/${cfg.numKvHeads}, draft vocab ${cfg.draftVocabSize} of ${cfg.vocabSize}, aux layers ` +
        `${cfg.auxLayerIds ? `[${cfg.auxLayerIds}]` : "default"}, ${c.names.length} tensors`,
    );
    return;
  }
  if (!v.checkpoint || !v.outputDir) {
    throw new Error("--checkpoint and --output-dir are required (see --help)");
  }
  const dtype = v.dtype;
  const dir = (await findLatestCheckpoint(v.checkpoint)) ?? v.checkpoint;
  const vocabMapping = v.vocabMapping ? await loadVocabMapping(v.vocabMapping) : undefined;
  const speculators = v.format === "speculators"
    ? { verifier: await speculatorsVerifier(v.verifier, dir), speculativeTokens: v.speculativeTokens }
    : undefined;
  await exportCheckpoint(dir, v.outputDir, {
    dtype,
    overwrite: v.overwrite,
    vocabMapping,
    format: v.format,
    speculators,
  });
  console.log(`exported ${dir} → ${v.outputDir} (${v.format}, ${dtype}, checked)`);
}

/**
 * The verifier a speculators export names: --verifier, else the checkpoint's target_model_path; its
 * architectures from its config.json when that is a local directory (a hub id is named as it is).
 */
async function speculatorsVerifier(given: string | null, checkpoint: string): Promise<SpeculatorsVerifier> {
  const nameOrPath = given ?? await checkpointTarget(checkpoint);
  if (!nameOrPath) {
    throw new Error(
      `--verifier: ${checkpoint} records no target_model_path; name the target (path or hub id)`,
    );
  }
  const config = join(nameOrPath, "config.json");
  if (!(await pathExists(config))) return { nameOrPath };
  const archs = JSON.parse(await Deno.readTextFile(config)).architectures;
  return { nameOrPath, architectures: Array.isArray(archs) ? archs : undefined };
}

if (import.meta.main) Deno.exit(await main(Deno.args));
