/**
 * The command-line body shared by `deno task train-online` and `deno task train-offline`: parse the flags
 * and the --config YAML (lib/train/config.ts), open the GPU, train, and print the last metrics and the SGLang
 * directory of the last checkpoint.
 */
import { Gpu } from "../gpu/device.ts";
import { hubOptionsFromEnv } from "../io/hub.ts";
import { parseTrainArgs, trainUsage } from "./config.ts";
import { trainOffline, trainOnline } from "./trainer.ts";
import { simulatedAcceptanceLength } from "./metrics.ts";

/** Runs `task` with command-line arguments `argv` (errors are thrown, for lib/cli/run.ts to print). */
export async function trainTask(task: "train-online" | "train-offline", argv: string[]): Promise<void> {
  const args = await parseTrainArgs(argv);
  if (args.help) {
    console.log(trainUsage(task));
    return;
  }
  const gpu = await Gpu.create();
  console.log(`${task} on ${gpu.describe()}${args.configFile ? ` (settings from ${args.configFile})` : ""}`);
  try {
    const train = task === "train-online" ? trainOnline : trainOffline;
    const r = await train(gpu, { settings: args.settings, hub: hubOptionsFromEnv(Deno.env.toObject()) });
    const last = r.lastEval ?? r.lastTrain;
    const summary = last
      ? ` ${last.split} acc ${last.acc.map((a) => a.toFixed(3)).join(" ")}, simulated acc len ${
        simulatedAcceptanceLength(last.acc).toFixed(3)
      }`
      : "";
    console.log(`done: ${r.updates} updates;${summary}`);
    if (r.checkpoint) console.log(`SGLang draft: ${r.checkpoint}`);
  } finally {
    gpu.destroy();
  }
}
