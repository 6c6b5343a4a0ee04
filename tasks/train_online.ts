/**
 * `deno task train-online`: trains an EAGLE-3 draft against a frozen target whose features are computed on
 * the fly (SpecForge's `scripts/train_eagle3_online.py`, with its argparse flags, or a YAML file with
 * --config; the flags are declared in lib/train/config.ts). Writes checkpoints (each one an SGLang
 * directory), metrics.jsonl and training_curves.svg into --output-dir. `--help` lists every flag and its
 * default.
 */
import { runTask } from "../lib/cli/run.ts";
import { trainTask } from "../lib/train/task.ts";

/** Runs `train-online` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("train-online", args, (argv) => trainTask("train-online", argv));
}

if (import.meta.main) Deno.exit(await main(Deno.args));
