/**
 * Sizing: what training an EAGLE-3 draft for a published target needs on one device, from the memory planner
 * (lib/models/memory_plan.ts, lib/train/training_plan.ts) alone: no weight is downloaded or read. For
 * Llama-3.1-8B, Qwen3-8B, Qwen3-30B-A3B, gpt-oss-20b and DeepSeek-V3 (mixtures of experts, gpt-oss's in MXFP4,
 * DeepSeek-V3's converted to bf16; not streamed) and Llama-3.3-70B (their config.json
 * values, bf16 weights) and the draft derived
 * from each (draft vocabulary 32,000; train-online's default EAGLE-3.1 draft, LK loss and Muon, or with
 * --draft-preset eagle3 SpecForge's EAGLE-3, KL loss and AdamW; --head-chunk-rows and --mlp-saved-dtype as
 * train-online's), it prints the plan of an online run, an offline
 * run (features stored in Eaglet's default form) and prepare-hidden-states, the online run and
 * prepare-hidden-states also with the target streamed through 8 GiB of layer slots (--target-memory-budget),
 * at batch 1 and each sample of the given lengths, then the longest sample that fits a 24, 80 and 141 GB
 * device. The device's per-tensor limits are those of the adapter this runs on (they decide only how large
 * tensors are split).
 *
 *   deno run -A examples/sizing.ts [--lengths 2048,8192]      (--help lists the defaults)
 */
import { runTask } from "../lib/cli/run.ts";
import { flagHelp, type FlagTable, parseCommand } from "../lib/flags.ts";
import { Gpu } from "../lib/gpu/device.ts";
import { formatBytes } from "../lib/gpu/device_memory.ts";
import {
  defaultAuxLayers,
  expectedWeightShapes,
  parseTargetConfig,
  targetWeightNames,
} from "../lib/models/config.ts";
import { deriveDraftConfig } from "../lib/models/draft_config.ts";
import { type MemoryPlan, planTargetForwards, type TargetPlanInput } from "../lib/models/memory_plan.ts";
import { layerBytes, streamSlotCount } from "../lib/models/target_memory.ts";
import { TokenizedDataset } from "../lib/data/tokenized.ts";
import { DataLoader } from "../lib/data/loader.ts";
import { FEATURES_VERSION, type FeaturesManifest, storedLayersOf } from "../lib/offline/format.ts";
import { DEFAULT_STORAGE } from "../lib/offline/prepare.ts";
import { planTraining } from "../lib/train/training_plan.ts";
import type { MlpSavedDtype } from "../lib/ops/gated_mlp.ts";

/** config.json values of the published checkpoints (the keys the planner reads). */
const LLAMA3_ROPE = {
  rope_type: "llama3",
  factor: 8,
  low_freq_factor: 1,
  high_freq_factor: 4,
  original_max_position_embeddings: 8192,
};
const TARGETS: Record<string, Record<string, unknown>> = {
  "Llama-3.1-8B": {
    architectures: ["LlamaForCausalLM"],
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rope_theta: 500000,
    rope_scaling: LLAMA3_ROPE,
    rms_norm_eps: 1e-5,
  },
  "Qwen3-8B": {
    architectures: ["Qwen3ForCausalLM"],
    hidden_size: 4096,
    intermediate_size: 12288,
    num_hidden_layers: 36,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 128,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rope_theta: 1000000,
    rms_norm_eps: 1e-6,
  },
  "Qwen3-30B-A3B": {
    architectures: ["Qwen3MoeForCausalLM"],
    hidden_size: 2048,
    intermediate_size: 6144,
    moe_intermediate_size: 768,
    num_experts: 128,
    num_experts_per_tok: 8,
    norm_topk_prob: true,
    num_hidden_layers: 48,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    head_dim: 128,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rope_theta: 1000000,
    rms_norm_eps: 1e-6,
  },
  "gpt-oss-20b": {
    architectures: ["GptOssForCausalLM"],
    hidden_size: 2880,
    intermediate_size: 2880,
    num_hidden_layers: 24,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    head_dim: 64,
    num_local_experts: 32,
    experts_per_token: 4,
    sliding_window: 128,
    vocab_size: 201088,
    max_position_embeddings: 131072,
    rope_theta: 150000,
    rope_scaling: { rope_type: "yarn", factor: 32, beta_fast: 32, beta_slow: 1, truncate: false },
    rms_norm_eps: 1e-5,
    quantization_config: { quant_method: "mxfp4" },
  },
  "DeepSeek-V3": {
    architectures: ["DeepseekV3ForCausalLM"],
    hidden_size: 7168,
    intermediate_size: 18432,
    moe_intermediate_size: 2048,
    num_hidden_layers: 61,
    num_attention_heads: 128,
    num_key_value_heads: 128,
    q_lora_rank: 1536,
    kv_lora_rank: 512,
    qk_nope_head_dim: 128,
    qk_rope_head_dim: 64,
    v_head_dim: 128,
    n_routed_experts: 256,
    n_shared_experts: 1,
    num_experts_per_tok: 8,
    n_group: 8,
    topk_group: 4,
    routed_scaling_factor: 2.5,
    first_k_dense_replace: 3,
    vocab_size: 129280,
    max_position_embeddings: 163840,
    rope_theta: 10000,
    rope_scaling: {
      type: "yarn",
      factor: 40,
      beta_fast: 32,
      beta_slow: 1,
      mscale: 1,
      mscale_all_dim: 1,
      original_max_position_embeddings: 4096,
    },
    rms_norm_eps: 1e-6,
  },
  "Llama-3.3-70B": {
    architectures: ["LlamaForCausalLM"],
    hidden_size: 8192,
    intermediate_size: 28672,
    num_hidden_layers: 80,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rope_theta: 500000,
    rope_scaling: LLAMA3_ROPE,
    rms_norm_eps: 1e-5,
  },
};
const DEVICES_GB = [24, 80, 141];
type Mode = "online" | "online, streamed" | "offline" | "prepare-hidden-states" | "prepare, streamed";

/** The --target-memory-budget of the streamed rows. */
const STREAM_BUDGET = 8 * 2 ** 30;

/** The plan input of a target stored in bf16 (shapes from its config, as a checkpoint's headers would give). */
function targetInput(name: string, gpu: Gpu): TargetPlanInput {
  const cfg = parseTargetConfig(
    { ...TARGETS[name], tie_word_embeddings: false, torch_dtype: "bfloat16" },
    name,
  );
  const names = targetWeightNames(cfg);
  const shapes = expectedWeightShapes(cfg, names);
  return {
    target: cfg,
    // bf16, but for MXFP4 experts' code and scale bytes (gpt-oss)
    weights: {
      names,
      stored: (n) => ({ dtype: /_(blocks|scales)$/.test(n) ? "U8" : "BF16", shape: shapes.get(n)! }),
    },
    device: {
      shaderF16: gpu.features.shaderF16,
      maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
      maxBufferSize: gpu.limits.maxBufferSize,
      minStorageBufferOffsetAlignment: gpu.limits.minStorageBufferOffsetAlignment,
    },
  };
}

/** The draft settings the plans are made for (--draft-preset, --head-chunk-rows, --mlp-saved-dtype). */
interface DraftChoice {
  /** The default preset's EAGLE-3.1 draft, LK lambda loss and Muon, or SpecForge's EAGLE-3, KL loss and AdamW. */
  preset: "eagle3.1-lk" | "eagle3";
  /** Rows of the draft head's windows (null: a batch's rows at once). */
  headRows: number | null;
  /** The dtype the draft step keeps the MLP's gate and up in. */
  mlpSaved: MlpSavedDtype;
}

/** The plan of `mode` for 8 samples of `T` tokens at batch 1 (one batch shape), TTT 7, no evaluation. */
function plan(t: TargetPlanInput, mode: Mode, T: number, d: DraftChoice): MemoryPlan {
  const samples = 8;
  const offsets = Uint32Array.from({ length: samples + 1 }, (_, i) => i * T);
  const data = new TokenizedDataset(
    Array.from({ length: samples }, (_, i) => `s${i}`),
    offsets,
    new Int32Array(samples * T),
    new Uint8Array(samples * T).fill(1),
  );
  const eagle31 = d.preset === "eagle3.1-lk";
  const draft = deriveDraftConfig(t.target, { draftVocabSize: 32000, eagle31 });
  const aux = draft.auxLayerIds ?? defaultAuxLayers(t.target.numLayers).layers;
  const perLayer = layerBytes(t.weights.stored, t.weights.names.layers[0], t.device.shaderF16);
  const slots = mode.endsWith("streamed")
    ? streamSlotCount(STREAM_BUDGET, perLayer, t.target.numLayers)
    : null;
  if (mode === "prepare-hidden-states" || mode === "prepare, streamed") {
    const shapes = Array.from({ length: samples }, (): [number, number] => [1, T]);
    const outputs = { aux: true, vocabStats: true, topk: DEFAULT_STORAGE.topk };
    return planTargetForwards(t, outputs, shapes, slots ?? undefined);
  }
  return planTraining({
    ...t,
    draft,
    features: mode === "offline" ? manifest(t, aux) : null,
    embeddingOverride: false,
    streamSlots: slots,
    loader: new DataLoader(data, { batchSize: 1, seed: 0 }),
    evalSet: null,
    updates: samples,
    tttLength: 7,
    accumulationSteps: 1,
    evalInterval: 0,
    evalBatches: null,
    lk: eagle31 ? { type: "lambda", klScale: 1, klDecay: 1 } : null,
    muon: eagle31,
    headRows: d.headRows,
    mlpSaved: d.mlpSaved,
  });
}

/** The manifest of features in Eaglet's default storage (what the offline feeder decodes). */
function manifest(t: TargetPlanInput, auxLayers: number[]): FeaturesManifest {
  const { hiddenSize, vocabSize, numLayers } = t.target;
  return {
    format: "eaglet-features",
    version: FEATURES_VERSION,
    storage: DEFAULT_STORAGE,
    target: { path: "", hiddenSize, vocabSize, numLayers, configSha256: "" },
    auxLayers,
    storedLayers: storedLayersOf(auxLayers),
    data: { path: "", chatTemplate: "", maxLength: 0, numSamples: 0 },
    fileGroupSize: 1,
  };
}

/** The longest sample (of 1,024 × 2^k tokens, up to 32,768) whose plan fits `gb` GB, or "no". */
function longestFitting(t: TargetPlanInput, mode: Mode, gb: number, d: DraftChoice): string {
  let best = "no";
  for (let T = 1024; T <= 32768; T *= 2) {
    if (plan(t, mode, T, d).peakBytes > gb * 1e9) break;
    best = String(T);
  }
  return best;
}

const FLAGS = {
  lengths: {
    kind: "ints",
    default: [2048, 8192],
    min: 1,
    help: "sample lengths (tokens) of the first table",
  },
  "draft-preset": {
    kind: "choice",
    choices: ["eagle3.1-lk", "eagle3"],
    default: "eagle3.1-lk",
    help:
      "the draft, loss and optimizer planned: train-online's default (EAGLE-3.1, LK lambda, Muon) or SpecForge's EAGLE-3 (KL, AdamW)",
  },
  "head-chunk-rows": {
    kind: "int",
    min: 64,
    help: "rows of the draft head's windows, as train-online's flag (default: a batch's rows at once)",
  },
  "mlp-saved-dtype": {
    kind: "choice",
    choices: ["f32", "f16"],
    default: "f32",
    help: "dtype of the draft MLP's saved gate and up, as train-online's flag",
  },
} as const satisfies FlagTable;

const USAGE =
  "usage: deno run -A examples/sizing.ts [--lengths 2048,8192] [--draft-preset eagle3] [--head-chunk-rows 1024] " +
  "[--mlp-saved-dtype f16]";

/** The modes planned for `t`: a mixture-of-experts target is not streamed (every layer resident). */
function modesOf(t: TargetPlanInput, modes: Mode[]): Mode[] {
  return t.target.moe ? modes.filter((m) => !m.endsWith("streamed")) : modes;
}

/** Prints both tables for samples of `lengths` tokens. */
async function sizing(lengths: readonly number[], d: DraftChoice): Promise<void> {
  const gpu = await Gpu.create();
  try {
    const modes: Mode[] = [
      "online",
      "online, streamed",
      "offline",
      "prepare-hidden-states",
      "prepare, streamed",
    ];
    console.log(`per-tensor limits of ${gpu.describe()}; batch 1, TTT 7, draft vocabulary 32,000\n`);
    console.log("| target | task | T | plan by category | peak |");
    console.log("|---|---|---|---|---|");
    for (const name of Object.keys(TARGETS)) {
      const t = targetInput(name, gpu);
      for (const mode of modesOf(t, modes)) {
        for (const T of lengths) {
          const p = plan(t, mode, T, d);
          const parts = p.categories.filter((c) => c.bytes >= 2 ** 30 / 10)
            .map((c) => `${c.name.replace(/ \(.*\)$/, "")} ${formatBytes(c.bytes)}`).join("; ");
          console.log(`| ${name} | ${mode} | ${T} | ${parts} | **${formatBytes(p.peakBytes)}** |`);
        }
      }
    }
    console.log(`\n| target | task | ${DEVICES_GB.map((g) => `longest sample on ${g} GB`).join(" | ")} |`);
    console.log(`|---|---|${DEVICES_GB.map(() => "---").join("|")}|`);
    for (const name of Object.keys(TARGETS)) {
      const t = targetInput(name, gpu);
      for (const mode of modesOf(t, modes)) {
        console.log(
          `| ${name} | ${mode} | ${DEVICES_GB.map((g) => longestFitting(t, mode, g, d)).join(" | ")} |`,
        );
      }
    }
  } finally {
    gpu.destroy();
  }
}

// As tasks/*.ts do: --help prints the flags and their defaults; a bad flag is one line and exit code 1.
Deno.exit(
  await runTask("sizing", Deno.args, async (argv) => {
    const cmd = parseCommand(FLAGS, argv);
    if (cmd.help) console.log(flagHelp(FLAGS, USAGE));
    else {
      const { lengths, draftPreset, headChunkRows, mlpSavedDtype } = cmd.settings;
      const preset = draftPreset as DraftChoice["preset"];
      await sizing(lengths!, { preset, headRows: headChunkRows, mlpSaved: mlpSavedDtype as MlpSavedDtype });
    }
  }),
);
