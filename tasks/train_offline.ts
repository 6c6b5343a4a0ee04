/**
 * `deno task train-offline`: EAGLE-3 draft training from features written by `prepare-hidden-states`
 * (SpecForge's train_eagle3_offline.py): the same settings as train-online (flags or --config YAML) plus
 * --train-hidden-states-path and --eval-hidden-states-path; the target's layers are not loaded.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv } from "../lib/io/hub.ts";
import { parseTrainArgs, trainUsage } from "../lib/train/config.ts";
import { trainOffline } from "../lib/train/trainer.ts";
import { simulatedAcceptanceLength } from "../lib/train/metrics.ts";
import { runTask } from "../lib/cli/run.ts";

/** Runs `train-offline` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("train-offline", args, trainOfflineTask);
}

async function trainOfflineTask(argv: string[]): Promise<void> {
  const args = await parseTrainArgs(argv);
  if (args.help) {
    console.log(trainUsage("train-offline"));
    return;
  }
  const gpu = await Gpu.create();
  console.log(
    `train-offline on ${gpu.describe()}${args.configFile ? ` (settings from ${args.configFile})` : ""}`,
  );
  try {
    const r = await trainOffline(gpu, {
      settings: args.settings,
      hub: hubOptionsFromEnv(Deno.env.toObject()),
    });
    const last = r.lastEval ?? r.lastTrain;
    const summary = last
      ? ` ${last.split} acc ${last.acc.map((a) => a.toFixed(3)).join(" ")}, simulated acc len ${
        simulatedAcceptanceLength(last.acc).toFixed(3)
      }`
      : "";
    console.log(`done: ${r.globalStep} updates;${summary}`);
    if (r.checkpoint) console.log(`SGLang draft: ${r.checkpoint}`);
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
