/**
 * The command-line body shared by `deno task train-online` and `deno task train-offline`: parse the flags
 * and the --config YAML (lib/train/config.ts), open the GPU, train, and print the last metrics and the SGLang
 * directory of the last checkpoint.
 */
import { Gpu } from "../gpu/device.ts";
import { enableMatmulAutotune } from "../ops/matmul_autotune.ts";
import { hubOptionsFromEnv } from "../io/hub.ts";
import { type World, worldFromEnv } from "../dist/world.ts";
import { parseTrainArgs, type TrainSettings, trainUsage } from "./config.ts";
import { planTrainingRun, trainOffline, trainOnline } from "./trainer.ts";
import { checkPlanFits, formatPlan } from "../models/memory_plan.ts";
import { ProgressPrinter, simulatedAcceptanceLength } from "./metrics.ts";
import { planDflashRun, trainDflashOffline, trainDflashOnline } from "./dflash_trainer.ts";

/**
 * Runs `task` with command-line arguments `argv` (errors are thrown, for lib/cli/run.ts to print). Under
 * Open MPI's `mpirun` each rank runs this (lib/dist/world.ts); rank 0 alone prints, and an error on any rank
 * is printed with the rank's number and stops every rank (MPI_Abort).
 */
export async function trainTask(task: "train-online" | "train-offline", argv: string[]): Promise<void> {
  const args = await parseTrainArgs(argv);
  if (args.help) {
    console.log(trainUsage(task));
    return;
  }
  const world = worldFromEnv();
  try {
    await trainOnRank(task, args.settings, args.configFile, world);
  } catch (e) {
    if (world.size === 1) throw e;
    console.error(
      `${task} (rank ${world.rank} of ${world.size}): ${String((e as Error)?.message ?? e).split("\n")[0]}`,
    );
    world.abort(1);
  }
  world.finalize();
}

async function trainOnRank(
  task: "train-online" | "train-offline",
  settings: TrainSettings,
  configFile: string | null,
  world: World,
): Promise<void> {
  const say = world.rank === 0 ? (line: string) => console.log(line) : () => {};
  const gpu = await Gpu.create();
  const ranks = world.size > 1 ? `, rank ${world.rank} of ${world.size}` : "";
  say(`${task} on ${gpu.describe()}${ranks}${configFile ? ` (settings from ${configFile})` : ""}`);
  try {
    if (settings.matmulAutotune && !settings.dryRun) await autotune(gpu, say);
    if (settings.draftType === "dflash") return await trainDflash(task, gpu, settings, say);
    if (settings.dryRun) {
      const { plan, limits } = await planTrainingRun(gpu, {
        settings,
        hub: hubOptionsFromEnv(Deno.env.toObject()),
        world,
      });
      for (const line of formatPlan(plan, limits)) say(line);
      checkPlanFits(plan, limits);
      say("the run fits (--dry-run: nothing was loaded or trained)");
      return;
    }
    const train = task === "train-online" ? trainOnline : trainOffline;
    const r = await train(gpu, {
      settings,
      hub: hubOptionsFromEnv(Deno.env.toObject()),
      world,
      progress: world.rank === 0 ? undefined : new ProgressPrinter(() => {}, false),
    });
    const last = r.lastEval ?? r.lastTrain;
    const summary = last
      ? ` ${last.split} acc ${last.acc.map((a) => a.toFixed(3)).join(" ")}, simulated acc len ${
        simulatedAcceptanceLength(last.acc).toFixed(3)
      }`
      : "";
    say(`done: ${r.updates} updates;${summary}`);
    if (r.checkpoint) say(`SGLang draft: ${r.checkpoint}`);
  } finally {
    gpu.destroy();
  }
}

/** `--matmul-autotune`: the tuned matmul tiles (CPU adapters), with a line saying where they are cached. */
async function autotune(gpu: Gpu, say: (line: string) => void): Promise<void> {
  const tuner = await enableMatmulAutotune(gpu, { log: say });
  if (!tuner) return;
  say(
    `matmul autotune: ${tuner.choices.size} shape classes cached in ${tuner.cachePath ?? "memory"} ` +
      `(a new one is timed once, when first met; --no-matmul-autotune skips this)`,
  );
}

/** `--draft-type dflash`: online or offline DFlash training (lib/train/dflash_trainer.ts), one rank. */
async function trainDflash(
  task: "train-online" | "train-offline",
  gpu: Gpu,
  settings: TrainSettings,
  say: (line: string) => void,
): Promise<void> {
  const hub = hubOptionsFromEnv(Deno.env.toObject());
  if (settings.dryRun) {
    const { plan, limits } = await planDflashRun(gpu, { settings, hub });
    for (const line of formatPlan(plan, limits)) say(line);
    checkPlanFits(plan, limits);
    say("the run fits (--dry-run: nothing was loaded or trained)");
    return;
  }
  const train = task === "train-online" ? trainDflashOnline : trainDflashOffline;
  const r = await train(gpu, { settings, hub });
  const last = r.lastEval ?? r.lastTrain;
  const summary = last
    ? ` ${last.split} acc per block slot ${last.acc.map((a) => a.toFixed(3)).join(" ")}`
    : "";
  say(`done: ${r.updates} updates;${summary}`);
  if (r.checkpoint) say(`DFlash draft (SGLang, vLLM): ${r.checkpoint}`);
}
