/**
 * The learning-check recipe's online training step on a random-weight target, for the benches and the profile:
 * a target of tinystories-656K's shape (hidden 128, 2 layers, GQA 8/4, vocab 2048; the same cost as the real
 * one, no download needed), its EAGLE-3 draft (draft vocabulary 2048) with clipped AdamW, and the step the
 * trainer runs (target forward with aux capture, draft-vocab logits and full-vocab argmax → draft TTT forward
 * and backward → optimizer update) at batch B × T tokens, TTT K.
 */
import { join } from "node:path";
import type { Gpu } from "../gpu/device.ts";
import { fromFloat32, writeSafetensors } from "../io/safetensors.ts";
import { type TargetForward, TargetModel } from "../models/target.ts";
import { type DraftConfig, parseDraftConfig } from "../models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft, type Eagle3Step } from "../models/eagle3.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import { identityVocabMapping, type VocabMapping } from "../data/vocab.ts";
import { DraftOptimizer, type NamedParameter } from "../train/optimizer.ts";

/** tinystories-656K's shape. */
export const RECIPE_TARGET = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 128,
  intermediate_size: 384,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 2048,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: true,
  bos_token_id: 1,
  eos_token_id: 2,
};

/** Writes a random-weight Llama checkpoint of `cfg` into `dir` (seeded sines; the values do not matter). */
export async function writeRandomTarget(dir: string, cfg: typeof RECIPE_TARGET): Promise<void> {
  const H = cfg.hidden_size, I = cfg.intermediate_size, hd = H / cfg.num_attention_heads;
  const kv = cfg.num_key_value_heads * hd;
  const t = (shape: number[], scale: number, seed: number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return fromFloat32(Float32Array.from({ length: n }, (_, i) => scale * Math.sin(seed + i * 0.7)), shape);
  };
  const tensors = new Map([["lm_head.weight", t([cfg.vocab_size, H], 0.05, 1)], [
    "model.norm.weight",
    t([H], 0.1, 2),
  ]]);
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    tensors.set(`${p}input_layernorm.weight`, t([H], 0.1, 3 + l));
    tensors.set(`${p}post_attention_layernorm.weight`, t([H], 0.1, 4 + l));
    tensors.set(`${p}self_attn.q_proj.weight`, t([H, H], 0.05, 5 + l));
    tensors.set(`${p}self_attn.k_proj.weight`, t([kv, H], 0.05, 6 + l));
    tensors.set(`${p}self_attn.v_proj.weight`, t([kv, H], 0.05, 7 + l));
    tensors.set(`${p}self_attn.o_proj.weight`, t([H, H], 0.05, 8 + l));
    tensors.set(`${p}mlp.gate_proj.weight`, t([I, H], 0.05, 9 + l));
    tensors.set(`${p}mlp.up_proj.weight`, t([I, H], 0.05, 10 + l));
    tensors.set(`${p}mlp.down_proj.weight`, t([H, I], 0.05, 11 + l));
  }
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(cfg));
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
}

/** The draft's tensors as the optimizer takes them. */
export function draftParameters(draft: Eagle3Draft): NamedParameter[] {
  return draft.entries().map(([name, param, grad]) => ({ name, param, grad }));
}

/** The recipe's target, draft, optimizer and vocabulary mapping, loaded from a random target in a folder. */
export interface RecipeModels {
  target: TargetModel;
  draftConfig: DraftConfig;
  draft: Eagle3Draft;
  optimizer: DraftOptimizer;
  vocab: VocabMapping;
  /** Frees all of them. */
  destroy(): void;
}

/** Writes a random target of {@link RECIPE_TARGET} into `dir` and loads the recipe's models on `gpu`. */
export async function loadRecipeModels(gpu: Gpu, dir: string): Promise<RecipeModels> {
  await writeRandomTarget(dir, RECIPE_TARGET);
  const target = await TargetModel.load(gpu, dir);
  const draftConfig = parseDraftConfig({
    ...RECIPE_TARGET,
    architectures: ["LlamaForCausalLMEagle3"],
    num_hidden_layers: 1,
    draft_vocab_size: 2048,
  }, "recipe draft");
  const draft = Eagle3Draft.create(gpu, draftConfig, { seed: 0 });
  const optimizer = await DraftOptimizer.create(gpu, draftParameters(draft), { maxGradNorm: 0.5 });
  return {
    target,
    draftConfig,
    draft,
    optimizer,
    vocab: identityVocabMapping(draftConfig.vocabSize),
    destroy() {
      optimizer.destroy();
      draft.destroy();
      target.destroy();
    },
  };
}

/** The online step's programs for one batch shape, with fixed token ids (every sample full length). */
export interface RecipeStep {
  forward: TargetForward;
  step: Eagle3Step;
  /** Runs the target forward on the step's ids (writes the inputs, submits; no sync). */
  runForward(): void;
  /** One whole step: target forward, draft step, optimizer update (no sync). */
  runAll(): void;
  /** Frees the programs (not the models). */
  destroy(): void;
}

/**
 * Builds the online step of `m` at batch `batch`, `seqLen` tokens, TTT `tttLength`, keeping the MLP's gate
 * and up in `mlpSaved` (train-online's --mlp-saved-dtype).
 */
export async function recipeStep(
  m: RecipeModels,
  batch: number,
  seqLen: number,
  tttLength: number,
  mlpSaved: MlpSavedDtype = "f32",
): Promise<RecipeStep> {
  const forward = await m.target.forward(batch, seqLen, {
    aux: true,
    subsetIds: m.vocab.draftToTarget,
    vocabStats: true,
  });
  const step = await buildEagle3Step(m.draft, {
    batch,
    seqLen,
    tttLength,
    embedding: m.target.embed,
    vocab: m.vocab,
    train: true,
    mlpSaved,
    inputs: {
      aux: forward.aux!,
      ids: forward.ids,
      lengths: forward.lengths,
      teacherLogits: forward.subsetLogits!,
      teacherArgmax: forward.vocabArgmax!,
    },
  });
  step.lossMask.write(new Float32Array(batch * seqLen).fill(1));
  const ids = Int32Array.from({ length: batch * seqLen }, (_, i) => 3 + (i * 37) % 2000);
  const lengths = new Array(batch).fill(seqLen);
  const runForward = () => forward.run(ids, lengths);
  return {
    forward,
    step,
    runForward,
    runAll() {
      runForward();
      step.run();
      m.optimizer.update(1e-4);
    },
    destroy() {
      step.destroy();
      forward.destroy();
    },
  };
}
