/**
 * `deno task generate`: continues a prompt with a target model on WebGPU (greedy or sampled, KV cache) and
 * prints the text, or with --json the prompt ids, the generated ids and the text.
 */
import { join } from "node:path";
import { type ChatTokenizer, loadTokenizer } from "../lib/data/tokenizer.ts";
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { TargetModel } from "../lib/models/target.ts";
import { generate } from "../lib/models/generate.ts";
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand, type Settings } from "../lib/flags.ts";

/** The flags of `generate`. */
export const GENERATE_FLAGS = {
  "model-path": {
    kind: "string",
    required: true,
    arg: "dir|id",
    help: "HF checkpoint directory, or a Hugging Face repo id (owner/name[@revision]), downloaded into the " +
      "cache (EAGLET_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE)",
  },
  prompt: {
    kind: "string",
    arg: "text",
    help: "text, tokenized with the model's tokenizer.json, special tokens added as its post-processor " +
      "does (e.g. a BOS token)",
  },
  "prompt-ids": {
    kind: "string",
    arg: "ids",
    help: "comma-separated token ids instead of text (e.g. 1 for a lone BOS)",
  },
  "max-new-tokens": {
    kind: "int",
    default: 64,
    min: 1,
    arg: "n",
    help: "new tokens at most; generation stops after an EOS token",
  },
  temperature: {
    kind: "float",
    default: 0,
    min: 0,
    arg: "t",
    help: "0 = greedy; > 0 samples from softmax(logits / t)",
  },
  "top-p": { kind: "float", default: 1, above: 0, max: 1, arg: "p", help: "nucleus sampling mass in (0, 1]" },
  seed: { kind: "int", default: 0, arg: "n", help: "sampling seed" },
  "no-cache": {
    kind: "bool",
    help: "recompute the full sequence every step (slow; the reference for the KV cache)",
  },
  json: { kind: "bool", help: 'print {"prompt_ids", "generated_ids", "text"} instead of the text' },
} as const satisfies FlagTable;

const USAGE = "deno task generate --model-path <dir|hf id> (--prompt <text> | --prompt-ids <ids>) [options]";
const ABOUT =
  "Generates a continuation of one prompt with a Llama / Qwen2 / Qwen3 / Mistral / Phi-3 checkpoint.";

function parseIds(text: string): number[] {
  const ids = text.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new Error(`--prompt-ids must be comma-separated non-negative integers, got "${text}"`);
  }
  return ids;
}

/** The checkpoint's tokenizer, or null when the directory has no tokenizer.json. */
async function loadPromptTokenizer(dir: string): Promise<ChatTokenizer | null> {
  try {
    await Deno.stat(join(dir, "tokenizer.json"));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  return await loadTokenizer(dir);
}

/** Runs `generate` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("generate", args, generateTask);
}

async function generateTask(args: string[]): Promise<void> {
  const cmd = parseCommand(GENERATE_FLAGS, args);
  if (cmd.help) return console.log(flagHelp(GENERATE_FLAGS, USAGE, ABOUT));
  await runGenerate(cmd.settings);
}

/** Loads the model, generates and prints the continuation. */
async function runGenerate(s: Settings<typeof GENERATE_FLAGS>): Promise<void> {
  if ((s.prompt === null) === (s.promptIds === null)) {
    throw new Error("give exactly one of --prompt and --prompt-ids (see --help)");
  }
  const { maxNewTokens, temperature, topP, seed } = s;
  const promptIds = s.promptIds !== null ? parseIds(s.promptIds) : null;

  const hub = hubOptionsFromEnv(Deno.env.toObject());
  const dir = await resolveModelPath(s.modelPath, {
    ...hub,
    onProgress: (p) => {
      if (p.total !== null && p.received === p.total) console.error(`downloaded ${p.repo}/${p.file}`);
    },
  });
  const tokenizer = await loadPromptTokenizer(dir);
  let ids: number[];
  if (promptIds) {
    ids = promptIds;
  } else {
    if (!tokenizer) throw new Error(`${dir} has no tokenizer.json; give --prompt-ids instead of --prompt`);
    ids = tokenizer.encode(s.prompt ?? "", { addSpecialTokens: true });
    if (ids.length === 0) throw new Error("the prompt encodes to no tokens; give --prompt-ids");
  }

  const gpu = await Gpu.create();
  const model = await TargetModel.load(gpu, dir, { onMessage: () => {} });
  try {
    const t0 = performance.now();
    const [generated] = await generate(model, [ids], {
      maxNewTokens,
      temperature,
      topP,
      seed,
      useCache: !s.noCache,
    });
    const seconds = (performance.now() - t0) / 1000;
    const text = tokenizer ? tokenizer.decode([...ids, ...generated], { skipSpecialTokens: true }) : null;
    if (s.json) {
      console.log(JSON.stringify({ prompt_ids: ids, generated_ids: generated, text }));
    } else {
      console.log(text ?? generated.join(" "));
      console.error(
        `${generated.length} tokens in ${seconds.toFixed(2)} s (${
          (generated.length / seconds).toFixed(1)
        } tokens/s, prompt ${ids.length} tokens, ${s.noCache ? "no cache" : "KV cache"}, ${
          gpu.info.description || gpu.info.vendor || "WebGPU"
        })`,
      );
    }
  } finally {
    model.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
