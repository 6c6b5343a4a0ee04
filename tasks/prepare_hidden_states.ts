/**
 * `deno task prepare-hidden-states`: runs the frozen target once over a dataset and writes the features
 * offline training reads (lib/offline/format.ts), compact by default; resumable and shardable
 * (lib/offline/prepare.ts).
 */
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv } from "../lib/io/hub.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, parseCommand } from "../lib/flags.ts";
import { planPrepare, prepareHiddenStates } from "../lib/offline/prepare.ts";
import { checkPlanFits, formatPlan } from "../lib/models/memory_plan.ts";
import {
  PREPARE_HIDDEN_STATES_FLAGS,
  type PrepareHiddenStatesSettings,
  toPrepareOptions,
} from "../lib/offline/settings.ts";
import { type World, worldFromEnv } from "../lib/dist/world.ts";

const USAGE =
  "usage: deno task prepare-hidden-states --target-model-path <dir> --data-path <file> --output-path <dir> [options]";

/** Runs `prepare-hidden-states` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("prepare-hidden-states", args, prepareTask);
}

async function prepareTask(args: string[]): Promise<void> {
  const cmd = parseCommand(PREPARE_HIDDEN_STATES_FLAGS, args);
  if (cmd.help) return console.log(flagHelp(PREPARE_HIDDEN_STATES_FLAGS, USAGE));
  const world = worldFromEnv();
  try {
    await prepareOnRank(cmd.settings, world);
  } catch (e) {
    if (world.size === 1) throw e;
    console.error(`prepare-hidden-states (rank ${world.rank} of ${world.size}): ${(e as Error).message}`);
    world.abort(1);
  }
  world.finalize();
}

/** One process's shard: under `mpirun` without --shard, rank r of N writes rows r, r + N, … */
async function prepareOnRank(settings: PrepareHiddenStatesSettings, world: World): Promise<void> {
  const options = toPrepareOptions(settings, {
    hub: hubOptionsFromEnv(Deno.env.toObject()),
    log: (line) => console.log(world.size > 1 ? `[rank ${world.rank}] ${line}` : line),
  }, world);
  const gpu = await Gpu.create();
  console.log(
    `prepare-hidden-states on ${gpu.describe()}, shard ${options.shard.index}/${options.shard.count}`,
  );
  try {
    if (settings.dryRun) {
      const { plan, limits } = await planPrepare(gpu, options);
      for (const line of formatPlan(plan, limits)) console.log(line);
      checkPlanFits(plan, limits);
      console.log("the shard fits (--dry-run: nothing was loaded or written)");
      return;
    }
    const r = await prepareHiddenStates(gpu, options);
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
