/**
 * `deno task eval`: measures an EAGLE-3 draft by speculative decoding with its target on WebGPU (no
 * serving engine): mean acceptance length tau, acceptance per draft position, tokens/s with and without
 * speculation. Prints the summary and writes eval.json, accept_length_histogram.svg and samples.html.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { type ChatTokenizer, loadTokenizer } from "../lib/data/tokenizer.ts";
import { Gpu } from "../lib/gpu/device.ts";
import { hubOptionsFromEnv, resolveModelPath } from "../lib/io/hub.ts";
import { TargetModel } from "../lib/models/target.ts";
import { checkDraftFitsTarget, deriveDraftConfig } from "../lib/models/draft_config.ts";
import { defaultAuxLayers } from "../lib/models/config.ts";
import { Eagle3Draft } from "../lib/models/eagle3.ts";
import { loadDraftDirectory, type LoadedDraft } from "../lib/eval/draft_dir.ts";
import { runSpeculativeEval } from "../lib/eval/speculative.ts";
import { evalSummary, writeEvalReport } from "../lib/eval/report.ts";
import { numberFlag, runTask } from "../lib/cli/run.ts";

const HELP =
  `deno task eval --target-model-path <dir|id> --draft-model-path <dir|random> --data-path <jsonl> [options]

Speculative decoding (EAGLE-3, as SGLang runs it) of the prompts of a jsonl file with a target and a draft.
  --target-model-path <dir|id>  HF checkpoint directory or Hugging Face repo id
  --draft-model-path <dir>      an Eaglet export, SpecForge checkpoint or SGLang draft directory
                                (config.json + model.safetensors, bf16/f16/f32); "random" for a
                                randomly initialised draft (a baseline: tau ≈ 1)
  --data-path <jsonl>           one prompt per line: {"input_ids": [...]} (with a "loss_mask", the ids before
                                the first supervised token), {"prompt": "..."}, {"text": "..."}
                                or {"conversations": [{"role", "content"}, ...]} (rendered with the
                                tokenizer's chat template up to the first assistant turn)
  --num-steps <n>               draft tree depth (default 3)
  --topk <k>                    branches per level (default 1: a chain)
  --num-draft-tokens <n>        verified tree nodes incl. the root (default num-steps + 1 for a chain)
  --temperature <t>             0 = greedy verification (default); > 0 lossless speculative sampling
  --top-p <p>                   nucleus mass (default 1)
  --max-new-tokens <n>          per prompt (default 64)
  --num-samples <n>             prompts used (default 16)
  --max-prompt-len <n>          keep the last n prompt tokens (default 256)
  --seed <n>                    sampling seed (default 0)
  --no-speed                    skip the tokens/s measurement (and the target-only runs)
  --output-dir <dir>            where the report goes (default out/eval)
  --debug                       print stack traces on errors
  --help                        this text`;

/** Prompt token ids from the lines of a jsonl file (see HELP). */
async function readPrompts(
  path: string,
  tokenizer: ChatTokenizer | null,
  limit: number,
  maxLen: number,
): Promise<number[][]> {
  const lines = (await Deno.readTextFile(path)).split("\n");
  const prompts: number[][] = [];
  for (const [i, line] of lines.entries()) {
    if (prompts.length >= limit) break;
    if (line.trim() === "") continue;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new Error(`${path}:${i + 1}: not JSON (${(e as Error).message})`);
    }
    let ids: number[];
    if (Array.isArray(o.input_ids)) {
      ids = (o.input_ids as unknown[]).map(Number);
      // A pre-tokenized training sample: its prompt is what precedes the first supervised token.
      if (Array.isArray(o.loss_mask)) {
        const first = (o.loss_mask as unknown[]).findIndex((m) => Number(m) !== 0);
        if (first > 0) ids = ids.slice(0, first);
      }
    } else {
      if (!tokenizer) throw new Error(`${path}:${i + 1}: text prompts need the target's tokenizer.json`);
      const text = typeof o.prompt === "string" ? o.prompt : typeof o.text === "string" ? o.text : null;
      if (text !== null) {
        ids = tokenizer.encode(text, { addSpecialTokens: true });
      } else if (Array.isArray(o.conversations)) {
        // OpenAI-style {role, content} or ShareGPT-style {from, value} turns.
        const msgs = (o.conversations as Array<Record<string, unknown>>).map((m) => {
          const role = String(m.role ?? m.from);
          return {
            role: role === "human"
              ? "user"
              : ["gpt", "chatgpt", "bing", "bard"].includes(role)
              ? "assistant"
              : role,
            content: String(m.content ?? m.value),
          };
        });
        const cut = msgs.findIndex((m) => m.role === "assistant");
        const turns = cut < 0 ? msgs : msgs.slice(0, cut);
        ids = tokenizer.chatTemplate
          ? tokenizer.encode(tokenizer.renderChat(turns, { addGenerationPrompt: true }))
          : tokenizer.encode(turns.map((m) => m.content).join("\n"), { addSpecialTokens: true });
      } else {
        throw new Error(`${path}:${i + 1}: expected input_ids, prompt, text or conversations`);
      }
    }
    if (ids.length === 0) continue;
    prompts.push(ids.slice(-maxLen));
  }
  if (prompts.length === 0) throw new Error(`${path}: no prompts`);
  return prompts;
}

/** Runs `eval` with command-line arguments `args`; returns the exit code. */
export function main(args: string[]): Promise<number> {
  return runTask("eval", args, evalTask);
}

async function evalTask(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      "target-model-path": { type: "string" },
      "draft-model-path": { type: "string" },
      "data-path": { type: "string" },
      "num-steps": { type: "string" },
      topk: { type: "string" },
      "num-draft-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      "max-new-tokens": { type: "string" },
      "num-samples": { type: "string" },
      "max-prompt-len": { type: "string" },
      seed: { type: "string" },
      "no-speed": { type: "boolean", default: false },
      "output-dir": { type: "string" },
      debug: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  for (const f of ["target-model-path", "draft-model-path", "data-path"] as const) {
    if (!values[f]) throw new Error(`missing --${f} (see --help)`);
  }
  const numSteps = numberFlag("num-steps", values["num-steps"], 3, true);
  const topk = numberFlag("topk", values.topk, 1, true);
  const numDraftTokens = values["num-draft-tokens"] === undefined
    ? undefined
    : numberFlag("num-draft-tokens", values["num-draft-tokens"], 0, true);
  const temperature = numberFlag("temperature", values.temperature, 0);
  const topP = numberFlag("top-p", values["top-p"], 1);
  const maxNewTokens = numberFlag("max-new-tokens", values["max-new-tokens"], 64, true);
  const numSamples = numberFlag("num-samples", values["num-samples"], 16, true);
  const maxPromptLen = numberFlag("max-prompt-len", values["max-prompt-len"], 256, true);
  const seed = numberFlag("seed", values.seed, 0, true);
  const outDir = values["output-dir"] ?? "out/eval";

  const targetDir = await resolveModelPath(
    values["target-model-path"]!,
    hubOptionsFromEnv(Deno.env.toObject()),
  );
  const tokenizer = await Deno.stat(join(targetDir, "tokenizer.json")).then(
    () => loadTokenizer(targetDir),
    () => null,
  );
  const prompts = await readPrompts(values["data-path"]!, tokenizer, numSamples, maxPromptLen);
  const gpu = await Gpu.create();
  const draftPath = values["draft-model-path"]!;
  let loaded: LoadedDraft | null = null;
  if (draftPath !== "random") loaded = await loadDraftDirectory(gpu, draftPath);
  const target = await TargetModel.load(gpu, targetDir, {
    auxLayers: loaded?.config.auxLayerIds ?? undefined,
    onMessage: (m) => console.error(m),
  });
  try {
    let draft: Eagle3Draft, map: Int32Array;
    if (loaded) {
      checkDraftFitsTarget(loaded.config, target.config);
      draft = loaded.draft;
      map = loaded.draftToTarget;
    } else {
      const cfg = deriveDraftConfig(target.config, {
        draftVocabSize: target.config.vocabSize,
        auxLayers: defaultAuxLayers(target.config.numLayers).layers,
      });
      draft = Eagle3Draft.create(gpu, cfg, { seed });
      map = Int32Array.from({ length: cfg.draftVocabSize }, (_, i) => i);
    }
    console.error(
      `target ${targetDir}, draft ${draftPath}${
        loaded ? ` (${loaded.storedDtype})` : ""
      }; ${prompts.length} prompts, ` +
        `num_steps ${numSteps}, topk ${topk}, temperature ${temperature} on ${
          gpu.info.description || "WebGPU"
        }`,
    );
    const result = await runSpeculativeEval(target, draft, prompts, {
      numSteps,
      topk,
      numDraftTokens,
      temperature,
      topP,
      maxNewTokens,
      seed,
      draftToTarget: map,
      measureSpeed: !values["no-speed"],
      onSample: (i, s) => {
        const rounds = s.output.rounds.length;
        console.error(
          `sample ${i + 1}/${prompts.length}: ${s.output.tokens.length} tokens in ${rounds} rounds`,
        );
      },
    });
    const summary = evalSummary(result, {
      target_model_path: targetDir,
      draft_model_path: draftPath,
      data_path: values["data-path"],
      device: gpu.info.description || gpu.info.vendor || "WebGPU",
    });
    const files = await writeEvalReport(
      outDir,
      result,
      summary,
      tokenizer ? (ids) => tokenizer.decode(ids) : undefined,
    );
    console.log(JSON.stringify(summary, null, 2));
    console.error(`wrote ${files.json}, ${files.svg}, ${files.html}`);
    draft.destroy();
  } finally {
    target.destroy();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
