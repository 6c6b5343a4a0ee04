/**
 * `eaglet <task> [flags]`: every task of Eaglet behind one entry point, the one `deno task bundle` turns into
 * a single JavaScript file (dist/eaglet.js, run with `deno run -A dist/eaglet.js <task> ...`) and
 * `deno task compile` into a single executable (dist/eaglet). `eaglet --help` lists the tasks;
 * `eaglet <task> --help` lists a task's flags.
 *
 * `deno task test` is not here: it runs `deno test` on the source tree, which a bundle does not carry.
 */
import { main as bench } from "./bench.ts";
import { main as convertLlama2c } from "./convert_llama2c.ts";
import { main as demo } from "./demo.ts";
import { main as evalTask } from "./eval.ts";
import { main as exportTask } from "./export.ts";
import { main as generate } from "./generate.ts";
import { main as inspectData } from "./inspect_data.ts";
import { main as prepareData } from "./prepare_data.ts";
import { main as prepareHiddenStates } from "./prepare_hidden_states.ts";
import { main as trainOffline } from "./train_offline.ts";
import { main as trainOnline } from "./train_online.ts";

/** A task: its entry point and a one-line description. */
interface TaskEntry {
  main: (args: string[]) => Promise<number>;
  about: string;
}

/** The tasks by name (the names of `deno task`), in the order `--help` lists them. */
export const TASKS: Record<string, TaskEntry> = {
  demo: { main: demo, about: "end to end on tinystories-656K: data, training, SGLang export, evaluation" },
  "prepare-data": {
    main: prepareData,
    about: "convert a dataset to conversations; tokenize; draft vocabulary",
  },
  "inspect-data": { main: inspectData, about: "show one tokenized sample with its supervised tokens" },
  "train-online": {
    main: trainOnline,
    about: "train an EAGLE-3 draft against a frozen target (SpecForge's flags)",
  },
  "prepare-hidden-states": {
    main: prepareHiddenStates,
    about: "run the target once and store compact features for offline training",
  },
  "train-offline": {
    main: trainOffline,
    about: "train an EAGLE-3 draft from prepare-hidden-states' files (no target forward)",
  },
  export: { main: exportTask, about: "write or check the SGLang directory of a checkpoint" },
  eval: {
    main: evalTask,
    about: "speculative decoding with a target and a draft: acceptance length, speedup",
  },
  generate: { main: generate, about: "continue a prompt with a target model" },
  "convert-llama2c": {
    main: convertLlama2c,
    about: "convert a llama2.c checkpoint to a Hugging Face directory",
  },
  bench: { main: bench, about: "speed figures of the kernels, the target, the draft and training" },
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
