/**
 * `eaglet <task> [flags]`: every task of Eaglet behind one entry point, the one `deno task bundle` turns into
 * a single JavaScript file (dist/eaglet.js, run with `deno run -A dist/eaglet.js <task> ...`) and
 * `deno task compile` into a single executable (dist/eaglet). `eaglet --help` lists the tasks;
 * `eaglet <task> --help` lists a task's flags.
 *
 * `deno task test` is not here: it runs `deno test` on the source tree, which a bundle does not carry.
 */
import type { FlagTable } from "../lib/flags.ts";
import { TRAIN_FLAGS } from "../lib/train/config.ts";
import { PREPARE_HIDDEN_STATES_FLAGS } from "../lib/offline/settings.ts";
import { BENCH_FLAGS, main as bench } from "./bench.ts";
import { CONVERT_LLAMA2C_FLAGS, main as convertLlama2c } from "./convert_llama2c.ts";
import { DEMO_FLAGS, main as demo } from "./demo.ts";
import { EVAL_FLAGS } from "../lib/eval/settings.ts";
import { main as evalTask } from "./eval.ts";
import { EXPORT_FLAGS, main as exportTask } from "./export.ts";
import { GENERATE_FLAGS, main as generate } from "./generate.ts";
import { INSPECT_DATA_FLAGS, main as inspectData } from "./inspect_data.ts";
import { PREPARE_DATA_FLAGS } from "../lib/data/prepare.ts";
import { main as prepareData } from "./prepare_data.ts";
import { main as prepareHiddenStates } from "./prepare_hidden_states.ts";
import { main as trainOffline } from "./train_offline.ts";
import { main as trainOnline } from "./train_online.ts";

/** A task: its entry point, a one-line description and its flags (for the README's tables). */
export interface TaskEntry {
  /** Runs the task with its command-line arguments; returns the exit code. */
  main: (args: string[]) => Promise<number>;
  /** One line saying what it does. */
  about: string;
  /** Its flags (besides --help and --debug). */
  flags: FlagTable;
}

/** The tasks by name (the names of `deno task`), in the order `--help` lists them. */
export const TASKS: Record<string, TaskEntry> = {
  demo: {
    main: demo,
    about: "end to end on tinystories-656K: data, training, SGLang export, evaluation",
    flags: DEMO_FLAGS,
  },
  "prepare-data": {
    main: prepareData,
    about: "convert a dataset to conversations; tokenize; draft vocabulary",
    flags: PREPARE_DATA_FLAGS,
  },
  "inspect-data": {
    main: inspectData,
    about: "show one tokenized sample with its supervised tokens",
    flags: INSPECT_DATA_FLAGS,
  },
  "train-online": {
    main: trainOnline,
    about: "train an EAGLE-3 draft against a frozen target (SpecForge's flags)",
    flags: TRAIN_FLAGS,
  },
  "prepare-hidden-states": {
    main: prepareHiddenStates,
    about: "run the target once and store compact features for offline training",
    flags: PREPARE_HIDDEN_STATES_FLAGS,
  },
  "train-offline": {
    main: trainOffline,
    about: "train an EAGLE-3 draft from prepare-hidden-states' files (no target forward)",
    flags: TRAIN_FLAGS,
  },
  export: {
    main: exportTask,
    about: "write or check the SGLang directory of a checkpoint",
    flags: EXPORT_FLAGS,
  },
  eval: {
    main: evalTask,
    about: "speculative decoding with a target and a draft: acceptance length, speedup",
    flags: EVAL_FLAGS,
  },
  generate: { main: generate, about: "continue a prompt with a target model", flags: GENERATE_FLAGS },
  "convert-llama2c": {
    main: convertLlama2c,
    about: "convert a llama2.c checkpoint to a Hugging Face directory",
    flags: CONVERT_LLAMA2C_FLAGS,
  },
  bench: {
    main: bench,
    about: "speed figures of the kernels, the target, the draft and training",
    flags: BENCH_FLAGS,
  },
};

/** The `--help` text: usage and the task list. */
export function eagletUsage(): string {
  const width = Math.max(...Object.keys(TASKS).map((n) => n.length));
  const rows = Object.entries(TASKS).map(([name, t]) => `  ${name.padEnd(width)}  ${t.about}`);
  return `usage: eaglet <task> [flags]      (eaglet <task> --help lists the task's flags)

Eaglet trains EAGLE-3 speculative-decoding drafts with WebGPU. Tasks:
${rows.join("\n")}

Run from the source tree: deno task <task> [flags]; from the bundle: deno run -A dist/eaglet.js <task> [flags].`;
}

/** Runs `eaglet` with command-line arguments `args` (the task name first); returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(eagletUsage());
    return name === undefined ? 2 : 0;
  }
  // Underscores are accepted too (the file names: train_online, prepare_data, ...).
  const task = TASKS[name.replace(/_/g, "-")];
  if (!task) {
    console.error(`eaglet: unknown task '${name}'; tasks: ${Object.keys(TASKS).join(", ")}`);
    return 2;
  }
  return await task.main(rest);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
