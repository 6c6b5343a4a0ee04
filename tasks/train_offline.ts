/**
 * `deno task train-offline`: EAGLE-3 draft training from features written by `prepare-hidden-states`
 * (SpecForge's train_eagle3_offline.py): the same settings as train-online (flags or --config YAML) plus
 * --train-hidden-states-path and --eval-hidden-states-path; the target's layers are not loaded.
 */
import { runTask } from "../lib/cli/run.ts";
import { trainTask } from "../lib/train/task.ts";

/** Runs `train-offline` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("train-offline", args, (argv) => trainTask("train-offline", argv));
}

if (import.meta.main) Deno.exit(await main(Deno.args));
