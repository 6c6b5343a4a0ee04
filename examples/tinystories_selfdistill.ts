/**
 * Builds self-distilled data with tinystories-656K: samples the target wrote itself (a 16-token sampled
 * opening, then greedy tokens, loss on the greedy part), as pre-tokenized jsonl that `deno task train-online`
 * reads as it is, plus the held-out openings alone as prompts for `deno task eval`.
 *
 *   deno run -A examples/tinystories_selfdistill.ts [--target-model-path <dir|id>] [--output-dir <dir>]
 *     [--train-samples N] [--eval-samples N] [--continuation-tokens N]      (--help lists the defaults)
 *
 * Defaults: ../shared/models/tinystories-656K, cache/tinystories-selfdistill, 400 training and 50 held-out
 * samples of 112 greedy tokens (the data of the [train] issue's learning check, the paths
 * configs/tinystories-656K-eagle3.yaml uses; about 9 minutes on a 2-core machine with lavapipe). Writes
 * train.jsonl, eval.jsonl and eval_prompts.jsonl.
 */
import { Gpu } from "../lib/gpu/device.ts";
import { flagHelp, type FlagTable, parseCommand, type Settings } from "../lib/flags.ts";
import { runTask } from "../lib/cli/run.ts";
import { hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { writeSelfDistilledSplit } from "../lib/train/selfdistill.ts";

/** The flags of this script. */
const FLAGS = {
  "target-model-path": {
    kind: "string",
    default: "../shared/models/tinystories-656K",
    help: "target: HF model dir or hub id",
  },
  "output-dir": {
    kind: "string",
    default: "cache/tinystories-selfdistill",
    help: "where the jsonl files go",
  },
  "train-samples": { kind: "int", default: 400, min: 1, help: "training samples" },
  "eval-samples": { kind: "int", default: 50, min: 1, help: "held-out samples" },
  "continuation-tokens": {
    kind: "int",
    default: 112,
    min: 1,
    help: "greedy target tokens after each opening",
  },
} as const satisfies FlagTable;

const USAGE = "usage: deno run -A examples/tinystories_selfdistill.ts [options]";

/** Writes the split that `v` asks for. */
async function selfDistill(v: Settings<typeof FLAGS>): Promise<void> {
  const { targetModelPath: target, outputDir: outDir, trainSamples: train, evalSamples: held } = v;
  const modelDir = await resolveModelPath(target, hubOptionsFromEnv(Deno.env.toObject()));
  const gpu = await Gpu.create();
  try {
    const t0 = performance.now();
    const split = await writeSelfDistilledSplit(gpu, modelDir, {
      trainSamples: train,
      evalSamples: held,
      outputDir: outDir,
      openingTokens: 16,
      continuationTokens: v.continuationTokens,
      seed: 0,
      batch: 50,
      onProgress: (n) => console.log(`${n} samples, ${((performance.now() - t0) / 1000).toFixed(0)} s`),
    });
    console.log(
      `wrote ${split.trainJsonl} (${train} samples), ${split.evalJsonl} (${held} samples) and ` +
        `${split.evalPromptsJsonl} (their openings)`,
    );
  } finally {
    gpu.destroy();
  }
}

// As tasks/*.ts do: --help prints the flags and their defaults; a bad flag is one line and exit code 1.
Deno.exit(
  await runTask("tinystories_selfdistill", Deno.args, async (argv) => {
    const cmd = parseCommand(FLAGS, argv);
    if (cmd.help) console.log(flagHelp(FLAGS, USAGE));
    else await selfDistill(cmd.settings);
  }),
);
