/**
 * `deno task convert-llama2c`: converts a llama2.c checkpoint (+ its tokenizer.bin) into a Hugging Face Llama
 * directory that the rest of Eaglet (and transformers) loads: config.json, model.safetensors (wq/wk permuted
 * to half-rotation RoPE), tokenizer.json, tokenizer_config.json.
 */
import { parseArgs } from "node:util";
import { convertLlama2c } from "../lib/models/llama2c.ts";
import { runTask } from "../lib/cli/run.ts";

const HELP =
  `deno task convert-llama2c --checkpoint <model.bin> --tokenizer <tokenizer.bin> --output-dir <dir>

Converts a llama2.c checkpoint (legacy or version-1 float32 export) and its tokenizer to an HF Llama directory.
  --checkpoint <file>   llama2.c weights, e.g. ../shared/models/stories260K/stories260K.bin
  --tokenizer <file>    llama2.c tokenizer, e.g. ../shared/models/stories260K/tok512.bin
  --output-dir <dir>    directory to create (written to a temporary name, then renamed)
  --overwrite           replace <dir> if it exists
  --debug               print stack traces on errors
  --help                this text`;

/** Runs `convert-llama2c` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("convert-llama2c", args, convertTask);
}

async function convertTask(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      checkpoint: { type: "string" },
      tokenizer: { type: "string" },
      "output-dir": { type: "string" },
      overwrite: { type: "boolean", default: false },
      debug: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const missing = ["checkpoint", "tokenizer", "output-dir"].filter((k) => !values[k as keyof typeof values]);
  if (missing.length) throw new Error(`missing ${missing.map((m) => `--${m}`).join(", ")} (see --help)`);
  const r = await convertLlama2c({
    checkpoint: values.checkpoint!,
    tokenizer: values.tokenizer!,
    outputDir: values["output-dir"]!,
    overwrite: values.overwrite,
  });
  const c = r.config;
  console.log(
    `wrote ${r.outputDir} (${
      r.files.join(", ")
    }): LlamaForCausalLM, ${r.parameters} parameters, dim ${c.dim}, ` +
      `${c.numLayers} layers, ${c.numHeads}/${c.numKvHeads} heads, vocab ${c.vocabSize}`,
  );
}

if (import.meta.main) Deno.exit(await main(Deno.args));
