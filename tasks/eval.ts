/**
 * `deno task eval`: measures an EAGLE-3 draft by speculative decoding with its target on WebGPU (no
 * serving engine): mean acceptance length tau, acceptance per draft position, tokens/s with and without
 * speculation. Prints the summary and writes eval.json, accept_length_histogram.svg and samples.html.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv } from "../lib/io/hub.ts";
import { evaluateDraft, planEvaluation } from "../lib/eval/evaluate.ts";
import { checkPlanFits, formatPlan } from "../lib/models/memory_plan.ts";
import { EVAL_FLAGS, type EvalSettings } from "../lib/eval/settings.ts";
import { type World, worldFromEnv } from "../lib/dist/world.ts";
import { runTask } from "../lib/cli/run.ts";
import { enableMatmulAutotune } from "../lib/ops/matmul_autotune.ts";
import { flagHelp, parseCommand } from "../lib/flags.ts";

const USAGE =
  "deno task eval --target-model-path <dir|id> --draft-model-path <dir|random> --data-path <jsonl> [options]";
const ABOUT =
  "Speculative decoding (EAGLE-3, as SGLang runs it) of the prompts of a jsonl file with a target and a draft.";

/** Runs `eval` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("eval", args, evalTask);
}

async function evalTask(args: string[]): Promise<void> {
  const cmd = parseCommand(EVAL_FLAGS, args);
  if (cmd.help) return console.log(flagHelp(EVAL_FLAGS, USAGE, ABOUT));
  // Under Open MPI's mpirun each rank decodes a share of the prompts; rank 0 prints and writes the report.
  const world = worldFromEnv();
  try {
    await evalOnRank(cmd.settings, world);
  } catch (e) {
    if (world.size === 1) throw e;
    console.error(`eval (rank ${world.rank} of ${world.size}): ${(e as Error).message}`);
    world.abort(1);
  }
  world.finalize();
}

async function evalOnRank(settings: EvalSettings, world: World): Promise<void> {
  const gpu = await Gpu.create();
  try {
    const ctx = {
      hub: hubOptionsFromEnv(Deno.env.toObject()),
      log: world.rank === 0 ? (line: string) => console.error(line) : undefined,
      world,
    };
    if (settings.dryRun) {
      const { plan, limits } = await planEvaluation(gpu, settings, ctx);
      if (world.rank === 0) { for (const line of formatPlan(plan, limits)) console.log(line); }
      checkPlanFits(plan, limits);
      if (world.rank === 0) console.log("the evaluation fits (--dry-run: nothing was loaded or written)");
      return;
    }
    if (settings.matmulAutotune) await enableMatmulAutotune(gpu, { log: ctx.log ?? (() => {}) });
    const r = await evaluateDraft(gpu, settings, ctx);
    if (!r.files) return;
    console.log(JSON.stringify(r.summary, null, 2));
    console.error(`wrote ${r.files.json}, ${r.files.svg}, ${r.files.html}`);
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
