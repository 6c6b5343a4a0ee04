/**
 * `deno task prepare-data`: converts a dataset to conversations JSONL (SpecForge's prepare_data.py) and,
 * with --tokenizer, also tokenizes it into the preprocessing cache and, with --draft-vocab-size or
 * --vocab-mapping, writes the draft vocabulary mapping (d2t/t2d safetensors) (lib/data/prepare.ts).
 */
import { PREPARE_DATA_FLAGS, prepareData } from "../lib/data/prepare.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, parseCommand } from "../lib/flags.ts";
import { hubOptionsFromEnv } from "../lib/io/hub.ts";

const USAGE = "usage: deno task prepare-data --dataset <name> [--input <file|hf-id>] [options]";

/** Runs `prepare-data` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("prepare-data", args, async (argv) => {
    const cmd = parseCommand(PREPARE_DATA_FLAGS, argv);
    if (cmd.help) return console.log(flagHelp(PREPARE_DATA_FLAGS, USAGE));
    await prepareData(cmd.settings, {
      hub: hubOptionsFromEnv(Deno.env.toObject()),
      log: (line) => console.log(line),
    });
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
