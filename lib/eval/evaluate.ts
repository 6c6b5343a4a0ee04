/**
 * Evaluation of a draft by speculative decoding with its target on WebGPU (no serving engine): the prompts of
 * a jsonl file, the draft loaded from a directory (or random), the acceptance statistics and speeds, and the
 * report (eval.json, accept_length_histogram.svg, samples.html). The settings are `eval`'s flags
 * (./settings.ts).
 */
import { claimOutputDir } from "../io/lock.ts";
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { type HubOptions, resolveModelPath } from "../io/hub.ts";
import { type ChatTokenizer, loadTokenizer } from "../data/tokenizer.ts";
import { ConfigError, defaultAuxLayers, loadTargetConfig, type TargetConfig } from "../models/config.ts";
import { checkDraftFitsTarget, deriveDraftConfig, type DraftConfig } from "../models/draft_config.ts";
import {
  checkPlanFits,
  type MemoryPlan,
  type PlanLimits,
  planLimitsOf,
  withTargetPlanInput,
} from "../models/memory_plan.ts";
import { formatBytes, parseByteSize } from "../gpu/device_memory.ts";
import { planEval } from "./eval_plan.ts";
import { Eagle3Draft } from "../models/eagle3.ts";
import { TargetModel } from "../models/target.ts";
import { loadDraftDirectory, readDraftConfig } from "./draft_dir.ts";
import { type EvalReportFiles, evalSummary, writeEvalReport } from "./report.ts";
import type { EvalSettings } from "./settings.ts";
import {
  resolveSpeculativeConfig,
  runDecoderEval,
  runSpeculativeEval,
  type SpeculativeEvalResult,
  summarizeSpeculativeEval,
} from "./speculative.ts";
import { loadDflashExport } from "../models/dflash_export.ts";
import { DflashDraft } from "../models/dflash.ts";
import { DflashDecoder } from "./dflash_speculative.ts";
import { SINGLE_PROCESS, type World } from "../dist/world.ts";
import { gatherJson } from "../dist/gather.ts";

/**
 * Prompt token ids from the lines of a jsonl file: `{"input_ids": [...]}` (with a `loss_mask`, the ids before
 * the first supervised token), `{"prompt": "..."}`, `{"text": "..."}` or `{"conversations": [...]}` (rendered
 * with the tokenizer's chat template up to the first assistant turn); at most `limit`, each cut to its last
 * `maxLen` tokens.
 */
export async function readPrompts(
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

/** Where hub ids are resolved and where progress lines go (not flags). */
export interface EvalContext {
  /** How hub ids are resolved (e.g. `hubOptionsFromEnv(Deno.env.toObject())`). */
  hub: HubOptions;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /**
   * The data-parallel ranks (lib/dist/world.ts; default one process): rank r decodes prompts r, r+N, …, the
   * per-prompt results are gathered, and rank 0 writes the report of all of them.
   */
  world?: World;
}

/** What {@link evaluateDraft} measured and wrote. */
export interface EvaluatedDraft {
  /** eval.json's object. */
  summary: Record<string, unknown>;
  /** The report's files (null on ranks other than 0, which write nothing). */
  files: EvalReportFiles | null;
}

/**
 * The result of every rank's prompts from each rank's `local` result of prompts `mine` (their indices in the
 * whole set): the per-prompt results gathered (lib/dist/gather.ts), put back in prompt order and summarised
 * as one process would have.
 */
function gatherResults(
  world: World,
  mine: number[],
  local: SpeculativeEvalResult,
  measured: boolean,
): SpeculativeEvalResult {
  const parts = gatherJson(world, mine.map((index, i) => ({ index, sample: local.samples[i] })));
  const samples = parts.flat().sort((a, b) => a.index - b.index).map((p) => p.sample);
  return summarizeSpeculativeEval(samples, local.config, local.temperature, measured);
}

/** The config of a random draft for a target of config `target`: over its whole vocabulary. */
function randomDraftConfig(target: TargetConfig): DraftConfig {
  return deriveDraftConfig(target, {
    draftVocabSize: target.vocabSize,
    auxLayers: defaultAuxLayers(target.numLayers).layers,
  });
}

/** A randomly initialised draft for `target` over its whole vocabulary (a baseline: tau ≈ 1). */
function randomDraft(gpu: Gpu, target: TargetModel, seed: number): { draft: Eagle3Draft; map: Int32Array } {
  const cfg = randomDraftConfig(target.config);
  const draft = Eagle3Draft.create(gpu, cfg, { seed });
  return { draft, map: Int32Array.from({ length: cfg.draftVocabSize }, (_, i) => i) };
}

/**
 * Loads the target and the draft (or a random one for `draftModelPath: "random"`), runs speculative decoding
 * of the prompts of `s.dataPath` and writes the report into `s.outputDir` (lib/eval/report.ts).
 */
export async function evaluateDraft(gpu: Gpu, s: EvalSettings, ctx: EvalContext): Promise<EvaluatedDraft> {
  if ((ctx.world?.rank ?? 0) !== 0) return await evaluateLocked(gpu, s, ctx); // rank 0 holds the lock
  // The output directory first (lib/io/lock.ts): a bad or busy --output-dir fails before the evaluation runs.
  const lock = await claimOutputDir(s.outputDir, "eval", { note: ctx.log });
  try {
    return await evaluateLocked(gpu, s, ctx);
  } finally {
    await lock.release();
  }
}

/** What an evaluation reads before it allocates anything: the target, the prompts, the draft's config. */
interface EvalInputs {
  targetDir: string;
  targetConfig: TargetConfig;
  tokenizer: ChatTokenizer | null;
  prompts: number[][];
  /** The indices of the prompts this rank decodes. */
  mine: number[];
  /** The draft directory's config; null for a random draft or a DFlash draft. */
  draftConfig: DraftConfig | null;
  /** The draft directory holds a DFlash draft (./dflash_speculative.ts). */
  dflash: boolean;
}

async function readInputs(s: EvalSettings, ctx: EvalContext): Promise<EvalInputs> {
  const targetDir = await resolveModelPath(s.targetModelPath, ctx.hub);
  const tokenizer = await Deno.stat(join(targetDir, "tokenizer.json")).then(
    () => loadTokenizer(targetDir),
    () => null,
  );
  const prompts = await readPrompts(s.dataPath, tokenizer, s.numSamples, s.maxPromptLen);
  const world = ctx.world ?? SINGLE_PROCESS;
  const mine = [...prompts.keys()].filter((i) => i % world.size === world.rank);
  const targetConfig = await loadTargetConfig(join(targetDir, "config.json"));
  if (s.draftModelPath !== "random" && await isDflashDirectory(s.draftModelPath)) {
    return { targetDir, targetConfig, tokenizer, prompts, mine, draftConfig: null, dflash: true };
  }
  let draftConfig: DraftConfig | null = null;
  if (s.draftModelPath !== "random") {
    draftConfig = await readDraftConfig(s.draftModelPath);
    // Before the target's own checks, so that a draft of another target is named as such.
    try {
      checkDraftFitsTarget(draftConfig, targetConfig);
    } catch (e) {
      throw new ConfigError(`${s.draftModelPath}: ${(e as Error).message} (target ${targetDir})`);
    }
  }
  return { targetDir, targetConfig, tokenizer, prompts, mine, draftConfig, dflash: false };
}

/**
 * The memory plan of the evaluation `s` (./eval_plan.ts) and the device limits it is checked against, made
 * from the prompts, the configs and the checkpoint's headers: no weight is loaded and nothing is written
 * (`--dry-run`).
 */
export async function planEvaluation(
  gpu: Gpu,
  s: EvalSettings,
  ctx: EvalContext,
): Promise<{ plan: MemoryPlan; limits: PlanLimits }> {
  const inputs = await readInputs(s, ctx);
  if (inputs.dflash) {
    throw new ConfigError(
      `${s.draftModelPath}: --dry-run: the memory plan of a DFlash draft's evaluation is not made yet`,
    );
  }
  return planOf(gpu, s, inputs);
}

function planOf(
  gpu: Gpu,
  s: EvalSettings,
  inp: EvalInputs,
): Promise<{ plan: MemoryPlan; limits: PlanLimits }> {
  const limits = planLimitsOf(gpu, s.deviceMemory === null ? null : parseByteSize(s.deviceMemory));
  const spec = resolveSpeculativeConfig({
    numSteps: s.numSteps,
    topk: s.topk,
    numDraftTokens: s.numDraftTokens ?? undefined,
  });
  return withTargetPlanInput(gpu, inp.targetDir, inp.targetConfig, (target) => ({
    plan: planEval({
      ...target,
      draft: inp.draftConfig ?? randomDraftConfig(inp.targetConfig),
      randomDraft: inp.draftConfig === null,
      promptLengths: inp.mine.map((i) => inp.prompts[i].length),
      spec,
      maxNewTokens: s.maxNewTokens,
      measureSpeed: !s.noSpeed,
      temperature: s.temperature,
    }),
    limits,
  }));
}

async function evaluateLocked(gpu: Gpu, s: EvalSettings, ctx: EvalContext): Promise<EvaluatedDraft> {
  const log = ctx.log ?? (() => {});
  const { numSteps, topk, temperature, topP, maxNewTokens, seed } = s;
  const numDraftTokens = s.numDraftTokens ?? undefined;
  const inputs = await readInputs(s, ctx);
  const { targetDir, tokenizer, prompts } = inputs;
  if (inputs.dflash) return await evaluateDflash(gpu, s, { ...ctx, log }, { targetDir, tokenizer, prompts });
  const { plan, limits } = await planOf(gpu, s, inputs);
  checkPlanFits(plan, limits);
  const top = [...plan.categories].sort((a, b) => b.bytes - a.bytes)[0];
  log(
    `memory plan: ${formatBytes(plan.peakBytes)} of GPU buffers at most; the largest part: ${top.name}, ` +
      `${formatBytes(top.bytes)} (--dry-run lists every part)`,
  );
  const draftPath = s.draftModelPath;
  const loaded = draftPath === "random" ? null : await loadDraftDirectory(gpu, draftPath);
  const target = await TargetModel.load(gpu, targetDir, {
    auxLayers: loaded?.config.auxLayerIds ?? undefined,
    onMessage: log,
  }).catch((e) => {
    loaded?.draft.destroy();
    throw e;
  });
  try {
    const { draft, map } = loaded
      ? { draft: loaded.draft, map: loaded.draftToTarget }
      : randomDraft(gpu, target, seed);
    log(
      `target ${targetDir}, draft ${draftPath}${
        loaded ? ` (${loaded.storedDtype})` : ""
      }; ${prompts.length} prompts, ` +
        `num_steps ${numSteps}, topk ${topk}, temperature ${temperature} on ${
          gpu.info.description || "WebGPU"
        }`,
    );
    const world = ctx.world ?? SINGLE_PROCESS, mine = inputs.mine;
    const local = await runSpeculativeEval(target, draft, mine.map((i) => prompts[i]), {
      numSteps,
      topk,
      numDraftTokens,
      temperature,
      topP,
      maxNewTokens,
      seed,
      draftToTarget: map,
      measureSpeed: !s.noSpeed,
      promptIndices: mine,
      onSample: (i, s) => {
        const rounds = s.output.rounds.length;
        log(
          `sample ${i + 1}/${prompts.length}: ${s.output.tokens.length} tokens in ${rounds} rounds`,
        );
      },
    });
    const result = world.size === 1 ? local : gatherResults(world, mine, local, !s.noSpeed);
    draft.destroy();
    return await report(gpu, s, { result, targetDir, tokenizer, write: world.rank === 0 });
  } finally {
    target.destroy();
  }
}

/** Whether `dir`'s config.json names a DFlash draft (`architectures: ["DFlashDraftModel"]`). */
async function isDflashDirectory(dir: string): Promise<boolean> {
  try {
    const json = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    return Array.isArray(json.architectures) && json.architectures.includes("DFlashDraftModel");
  } catch {
    return false; // the EAGLE-3 loader reports a missing or broken config.json
  }
}

/**
 * A DFlash draft's evaluation (lib/eval/dflash_speculative.ts): the target captures the draft's
 * `target_layer_ids`, each round drafts one block; the same report as EAGLE-3's, with the block's B − 1
 * drafted tokens as the draft positions (--num-steps and --topk do not apply).
 */
async function evaluateDflash(
  gpu: Gpu,
  s: EvalSettings,
  ctx: EvalContext & { log: (line: string) => void },
  d: { targetDir: string; tokenizer: ChatTokenizer | null; prompts: number[][] },
): Promise<EvaluatedDraft> {
  const { config, weights } = await loadDflashExport(s.draftModelPath);
  const targetConfig = await loadTargetConfig(join(d.targetDir, "config.json"));
  if (config.hiddenSize !== targetConfig.hiddenSize || config.vocabSize !== targetConfig.vocabSize) {
    throw new ConfigError(
      `${s.draftModelPath}: a DFlash draft of hidden_size ${config.hiddenSize}, vocab_size ${config.vocabSize} ` +
        `cannot run with target ${d.targetDir} (${targetConfig.hiddenSize}, ${targetConfig.vocabSize})`,
    );
  }
  const target = await TargetModel.load(gpu, d.targetDir, {
    auxLayers: config.targetLayerIds,
    anyAuxCount: true,
  });
  const draft = DflashDraft.create(gpu, config, { weights });
  try {
    ctx.log(
      `target ${d.targetDir}, DFlash draft ${s.draftModelPath} (block ${config.blockSize}); ` +
        `${d.prompts.length} prompts, temperature ${s.temperature} on ${gpu.info.description || "WebGPU"}`,
    );
    const result = await runDecoderEval(target, new DflashDecoder(target, draft), d.prompts, {
      temperature: s.temperature,
      topP: s.topP,
      maxNewTokens: s.maxNewTokens,
      seed: s.seed,
      measureSpeed: !s.noSpeed,
      onSample: (i, r) =>
        ctx.log(
          `sample ${
            i + 1
          }/${d.prompts.length}: ${r.output.tokens.length} tokens in ${r.output.rounds.length} rounds`,
        ),
    });
    const write = (ctx.world?.rank ?? 0) === 0; // every rank decodes every prompt; rank 0 alone writes
    return await report(gpu, s, { result, targetDir: d.targetDir, tokenizer: d.tokenizer, write });
  } finally {
    draft.destroy();
    target.destroy();
  }
}

/** eval.json's summary of `result`, and (when `write`: rank 0) the report files in --output-dir. */
async function report(
  gpu: Gpu,
  s: EvalSettings,
  r: { result: SpeculativeEvalResult; targetDir: string; tokenizer: ChatTokenizer | null; write: boolean },
): Promise<EvaluatedDraft> {
  const summary = evalSummary(r.result, {
    target_model_path: r.targetDir,
    draft_model_path: s.draftModelPath,
    data_path: s.dataPath,
    device: gpu.info.description || gpu.info.vendor || "WebGPU",
  });
  if (!r.write) return { summary, files: null };
  const tok = r.tokenizer;
  const files = await writeEvalReport(
    s.outputDir,
    r.result,
    summary,
    tok ? (ids) => tok.decode(ids) : undefined,
  );
  return { summary, files };
}
