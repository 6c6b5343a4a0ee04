/**
 * `deno task convert-llama2c`: converts a llama2.c checkpoint (+ its tokenizer.bin) into a Hugging Face Llama
 * directory that the rest of Eaglet (and transformers) loads: config.json, model.safetensors (wq/wk permuted
 * to half-rotation RoPE), tokenizer.json, tokenizer_config.json.
 */
import { convertLlama2c } from "../lib/models/llama2c.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand } from "../lib/flags.ts";

/** The flags of `convert-llama2c`. */
export const CONVERT_LLAMA2C_FLAGS = {
  checkpoint: {
    kind: "string",
    required: true,
    arg: "file",
    help: "llama2.c weights, e.g. ../shared/models/stories260K/stories260K.bin",
  },
  tokenizer: {
    kind: "string",
    required: true,
    arg: "file",
    help: "llama2.c tokenizer, e.g. ../shared/models/stories260K/tok512.bin",
  },
  "output-dir": {
    kind: "string",
    required: true,
    arg: "dir",
    help: "directory to create (written to a temporary name, then renamed)",
  },
  overwrite: { kind: "bool", help: "replace <dir> if it exists" },
} as const satisfies FlagTable;

const USAGE =
  "deno task convert-llama2c --checkpoint <model.bin> --tokenizer <tokenizer.bin> --output-dir <dir>";
const ABOUT =
  "Converts a llama2.c checkpoint (legacy or version-1 float32 export) and its tokenizer to an HF Llama directory.";

/** Runs `convert-llama2c` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("convert-llama2c", args, convertTask);
}

async function convertTask(args: string[]): Promise<void> {
  const cmd = parseCommand(CONVERT_LLAMA2C_FLAGS, args);
  if (cmd.help) return console.log(flagHelp(CONVERT_LLAMA2C_FLAGS, USAGE, ABOUT));
  const r = await convertLlama2c(cmd.settings);
  const c = r.config;
  console.log(
    `wrote ${r.outputDir} (${
      r.files.join(", ")
    }): LlamaForCausalLM, ${r.parameters} parameters, dim ${c.dim}, ` +
      `${c.numLayers} layers, ${c.numHeads}/${c.numKvHeads} heads, vocab ${c.vocabSize}`,
  );
}

if (import.meta.main) Deno.exit(await main(Deno.args));
