/**
 * `deno task train-online`: trains an EAGLE-3 draft against a frozen target whose features are computed on
 * the fly (SpecForge's `train_eagle3_online.py`; flags of reference/specforge-spec.md §7.1, or a YAML file
 * with --config). Writes checkpoints (each one an SGLang directory), metrics.jsonl and training_curves.svg
 * into --output-dir. `--help` lists every flag and its default.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv } from "../lib/io/hub.ts";
import { parseTrainArgs, trainUsage } from "../lib/train/config.ts";
import { trainOnline } from "../lib/train/trainer.ts";
import { simulatedAcceptanceLength } from "../lib/train/metrics.ts";
import { runTask } from "../lib/cli/run.ts";

/** Runs `train-online` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("train-online", args, trainOnlineTask);
}

async function trainOnlineTask(argv: string[]): Promise<void> {
  const args = await parseTrainArgs(argv);
  if (args.help) {
    console.log(trainUsage());
    return;
  }
  const gpu = await Gpu.create();
  console.log(
    `train-online on ${gpu.describe()}${args.configFile ? ` (settings from ${args.configFile})` : ""}`,
  );
  try {
    const r = await trainOnline(gpu, {
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
