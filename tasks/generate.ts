/**
 * `deno task generate`: continues a prompt with a target model on WebGPU (greedy or sampled, KV cache) and
 * prints the text, or with --json the prompt ids, the generated ids and the text.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { type ChatTokenizer, loadTokenizer } from "../lib/data/tokenizer.ts";
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { TargetModel } from "../lib/models/target.ts";
import { generate } from "../lib/models/generate.ts";
import { numberFlag, runTask } from "../lib/cli/run.ts";

const HELP = `deno task generate --model-path <dir|hf id> (--prompt <text> | --prompt-ids <ids>) [options]

Generates a continuation of one prompt with a Llama / Qwen2 / Qwen3 / Mistral checkpoint.
  --model-path <dir|id>   HF checkpoint directory, or a Hugging Face repo id (owner/name[@revision]),
                          downloaded into the cache (EAGLET_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE)
  --prompt <text>         text, tokenized with the model's tokenizer.json, special tokens added as its
                          post-processor does (e.g. a BOS token)
  --prompt-ids <ids>      comma-separated token ids instead of text (e.g. 1 for a lone BOS)
  --max-new-tokens <n>    new tokens at most (default 64); generation stops after an EOS token
  --temperature <t>       0 = greedy (default); > 0 samples from softmax(logits / t)
  --top-p <p>             nucleus sampling mass in (0, 1] (default 1)
  --seed <n>              sampling seed (default 0)
  --no-cache              recompute the full sequence every step (slow; the reference for the KV cache)
  --json                  print {"prompt_ids", "generated_ids", "text"} instead of the text
  --debug                 print stack traces on errors
  --help                  this text`;

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
  const { values } = parseArgs({
    args,
    options: {
      "model-path": { type: "string" },
      prompt: { type: "string" },
      "prompt-ids": { type: "string" },
      "max-new-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      seed: { type: "string" },
      "no-cache": { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      debug: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (!values["model-path"]) throw new Error("missing --model-path (see --help)");
  if ((values.prompt === undefined) === (values["prompt-ids"] === undefined)) {
    throw new Error("give exactly one of --prompt and --prompt-ids (see --help)");
  }
  const maxNewTokens = numberFlag("max-new-tokens", values["max-new-tokens"], 64, true);
  const temperature = numberFlag("temperature", values.temperature, 0);
  const topP = numberFlag("top-p", values["top-p"], 1);
  const seed = numberFlag("seed", values.seed, 0, true);
  const promptIds = values["prompt-ids"] !== undefined ? parseIds(values["prompt-ids"]) : null;

  const hub = hubOptionsFromEnv(Deno.env.toObject());
  const dir = await resolveModelPath(values["model-path"], {
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
    ids = tokenizer.encode(values.prompt!, { addSpecialTokens: true });
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
      useCache: !values["no-cache"],
    });
    const seconds = (performance.now() - t0) / 1000;
    const text = tokenizer ? tokenizer.decode([...ids, ...generated], { skipSpecialTokens: true }) : null;
    if (values.json) {
      console.log(JSON.stringify({ prompt_ids: ids, generated_ids: generated, text }));
    } else {
      console.log(text ?? generated.join(" "));
      console.error(
        `${generated.length} tokens in ${seconds.toFixed(2)} s (${
          (generated.length / seconds).toFixed(1)
        } tokens/s, prompt ${ids.length} tokens, ${values["no-cache"] ? "no cache" : "KV cache"}, ${
          gpu.info.description || gpu.info.vendor || "WebGPU"
        })`,
      );
    }
  } finally {
    model.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
