/**
 * `deno task train-online`: trains an EAGLE-3 draft against a frozen target whose features are computed on
 * the fly (SpecForge's `train_eagle3_online.py`; flags of reference/specforge-spec.md §7.1, or a YAML file
 * with --config). Writes checkpoints (each one an SGLang directory), metrics.jsonl and training_curves.svg
 * into --output-dir. `--help` lists every flag and its default.
 */
import { runTask } from "../lib/cli/run.ts";
import { trainTask } from "../lib/train/task.ts";

/** Runs `train-online` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("train-online", args, (argv) => trainTask("train-online", argv));
}

if (import.meta.main) Deno.exit(await main(Deno.args));
