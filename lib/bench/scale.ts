/**
 * Real-size runs: the whole `train-online` trainer (memory plan, target forward, the default preset's draft
 * step, AdamW, metrics) on a random bf16 target of Llama-3.1-8B's shapes cut to 2 of its 32 layers (hidden
 * 4,096, intermediate 14,336, 32/8 heads, vocabulary 128,256, untied lm_head) and the draft derived from it
 * (EAGLE-3.1, draft vocabulary 32,000), batch 1, TTT 7, at T 256 and 2,048: ms per update (the mean over the
 * updates after the first, from the run's own metrics), tokens/s, the buffer pool's peak beside the plan's
 * estimate; then `prepare-hidden-states` over the same target, resident and streamed through one layer slot
 * (--target-memory-budget of one layer).
 *
 * A T 2,048 update of an 8B-shaped draft takes many minutes on a CPU adapter, so the group runs on GPUs, and on
 * CPU adapters only when `--only scale` names it.
 */
import { join } from "node:path";
import { type Gpu, isCpuAdapter } from "../gpu/device.ts";
import { formatBytes } from "../gpu/device_memory.ts";
import { type RawTensor, writeSafetensors } from "../io/safetensors.ts";
import { wordLevelTokenizerJson } from "../data/tokenizer.ts";
import { trainSettings } from "../train/config.ts";
import { trainOnline } from "../train/trainer.ts";
import { ProgressPrinter } from "../train/metrics.ts";
import { DEFAULT_FILE_GROUP_SIZE, DEFAULT_STORAGE, prepareHiddenStates } from "../offline/prepare.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

/** Llama-3.1-8B's config.json values, 2 of its 32 layers. */
export const LLAMA_8B_2_LAYERS = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 2,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  vocab_size: 128256,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  rope_scaling: {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  },
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  bos_token_id: 1,
  eos_token_id: 2,
};

/** A target config of {@link LLAMA_8B_2_LAYERS}'s form. */
export type ScaleTarget = typeof LLAMA_8B_2_LAYERS;

/** What the rows run: the target, the training rows' lengths, the prepare row's shape. */
export interface ScaleShapes {
  /** The random target's config.json. */
  target: ScaleTarget;
  /** Sequence lengths of the training rows. */
  trainLengths: number[];
  /** Updates timed at each length (after one untimed update). */
  timedUpdates: number;
  /** The prepare rows' tokens per sample, samples and batch. */
  prepare: { seqLen: number; samples: number; batch: number };
  /** The draft vocabulary. */
  draftVocabSize: number;
}

/** The rows `deno task bench --only scale` prints. */
export const SCALE_SHAPES: ScaleShapes = {
  target: LLAMA_8B_2_LAYERS,
  trainLengths: [256, 2048],
  timedUpdates: 4,
  prepare: { seqLen: 2048, samples: 16, batch: 4 },
  draftVocabSize: 32000,
};

/** One linear layer's and the whole target's tensor shapes (HF names). */
function targetShapes(t: ScaleTarget): Array<[string, number[]]> {
  const H = t.hidden_size, I = t.intermediate_size, V = t.vocab_size;
  const kv = t.num_key_value_heads * (H / t.num_attention_heads);
  const out: Array<[string, number[]]> = [
    ["model.embed_tokens.weight", [V, H]],
    ["lm_head.weight", [V, H]],
    ["model.norm.weight", [H]],
  ];
  for (let l = 0; l < t.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}input_layernorm.weight`, [H]],
      [`${p}post_attention_layernorm.weight`, [H]],
      [`${p}self_attn.q_proj.weight`, [H, H]],
      [`${p}self_attn.k_proj.weight`, [kv, H]],
      [`${p}self_attn.v_proj.weight`, [kv, H]],
      [`${p}self_attn.o_proj.weight`, [H, H]],
      [`${p}mlp.gate_proj.weight`, [I, H]],
      [`${p}mlp.up_proj.weight`, [I, H]],
      [`${p}mlp.down_proj.weight`, [H, I]],
    );
  }
  return out;
}

/**
 * Writes the random target into `dir`: every matrix a prefix of one buffer of bf16 values uniform in ±0.02
 * (a fixed linear congruential sequence; the values do not matter for speed), norms 1, a word-level tokenizer.
 */
async function writeTarget(dir: string, t: ScaleTarget): Promise<void> {
  const shapes = targetShapes(t);
  const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const largest = Math.max(...shapes.map(([, s]) => numel(s)));
  const values = new Uint16Array(largest);
  const f32 = new Float32Array(1), bits = new Uint32Array(f32.buffer);
  let state = 12345;
  for (let i = 0; i < largest; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    f32[0] = (state / 2 ** 32 - 0.5) * 0.04;
    values[i] = bits[0] >>> 16;
  }
  const ones = new Uint16Array(t.hidden_size).fill(0x3f80);
  const bytes = (src: Uint16Array<ArrayBuffer>, n: number) => new Uint8Array(src.buffer, 0, 2 * n);
  const tensors = new Map<string, RawTensor>(shapes.map(([name, shape]) => [name, {
    dtype: "BF16",
    shape,
    bytes: shape.length === 1 ? bytes(ones, shape[0]) : bytes(values, numel(shape)),
  }]));
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(t));
  await Deno.writeTextFile(join(dir, "tokenizer.json"), wordLevelTokenizerJson(t.vocab_size));
}

/** `n` pre-tokenized samples of `T` tokens below `vocab`, every token supervised. */
async function writeData(path: string, n: number, T: number, vocab: number): Promise<void> {
  const rows = Array.from({ length: n }, (_, s) => {
    const ids = Array.from({ length: T }, (_, i) => 3 + (i * 7919 + s * 104729) % (vocab - 3));
    return JSON.stringify({ id: `s${s}`, input_ids: ids, loss_mask: ids.map(() => 1) });
  });
  await Deno.writeTextFile(path, rows.join("\n") + "\n");
}

/** One train-online run of 1 + `s.timedUpdates` updates at T tokens; its row. */
async function trainRow(gpu: Gpu, dir: string, s: ScaleShapes, T: number): Promise<BenchRow> {
  const data = join(dir, `train_${T}.jsonl`);
  await writeData(data, 1 + s.timedUpdates, T, s.target.vocab_size);
  const out = join(dir, `run_${T}`);
  gpu.pool.clear(); // the peak counts parked buffers: start from none
  const r = await trainOnline(gpu, {
    settings: trainSettings({
      targetModelPath: dir,
      trainDataPath: data,
      outputDir: out,
      cacheDir: join(dir, "cache"),
      chatTemplate: "llama3",
      maxLength: T,
      draftVocabSize: s.draftVocabSize,
      batchSize: 1,
      numEpochs: 1,
      tttLength: 7,
      logInterval: 1,
      evalInterval: 0,
      saveInterval: 0,
    }),
    hub: { cacheDir: join(dir, "hub"), offline: true },
    progress: new ProgressPrinter(() => {}, false),
  });
  const elapsed = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => m.split === "train").map((m) => m.elapsed as number);
  const ms = (elapsed[elapsed.length - 1] - elapsed[0]) / (elapsed.length - 1) * 1000;
  await Deno.remove(out, { recursive: true });
  return {
    group: "scale",
    name: `train-online update, derived draft (EAGLE-3.1, Vd ${s.draftVocabSize})`,
    shape: `${targetLabel(s.target)}, B1 T${T} ttt7`,
    ms,
    tokensPerSec: T / ms * 1000,
    note: `peak ${formatBytes(r.peakBytes)}, plan ${formatBytes(r.plannedPeakBytes)}`,
    peakBytes: r.peakBytes,
    plannedPeakBytes: r.plannedPeakBytes,
  };
}

/** prepare-hidden-states of `s.prepare`'s samples, every layer resident or streamed through one slot. */
async function prepareRow(gpu: Gpu, dir: string, s: ScaleShapes, streamed: boolean): Promise<BenchRow> {
  const { seqLen: T, samples, batch } = s.prepare;
  const data = join(dir, "prepare.jsonl");
  await writeData(data, samples, T, s.target.vocab_size);
  const H = s.target.hidden_size, I = s.target.intermediate_size;
  const kv = s.target.num_key_value_heads * (H / s.target.num_attention_heads);
  const layerBytes = 2 * (2 * H * H + 2 * kv * H + 3 * H * I) + 4 * 2 * H;
  const out = join(dir, streamed ? "features_streamed" : "features");
  gpu.pool.clear();
  gpu.pool.resetPeak();
  const t0 = performance.now();
  await prepareHiddenStates(gpu, {
    targetModelPath: dir,
    dataPath: data,
    outputPath: out,
    chatTemplate: "llama3",
    maxLength: T,
    storage: DEFAULT_STORAGE,
    numSamples: null,
    batchSize: batch,
    shard: { index: 0, count: 1 },
    auxLayers: null,
    draftModelConfig: null,
    cacheDir: join(dir, "cache"),
    isPreformatted: false,
    fileGroupSize: DEFAULT_FILE_GROUP_SIZE,
    targetMemoryBudget: streamed ? layerBytes : null,
    hub: { cacheDir: join(dir, "hub"), offline: true },
    log: () => {},
  });
  const ms = (performance.now() - t0) / (samples / batch), peak = gpu.pool.peakBytes;
  await Deno.remove(out, { recursive: true });
  return {
    group: "scale",
    name: `prepare-hidden-states, ${streamed ? "layers streamed through 1 slot" : "every layer resident"}`,
    shape: `${targetLabel(s.target)}, B${batch} T${T}`,
    ms,
    tokensPerSec: batch * T / ms * 1000,
    note: `per batch, the run's wall time (weights loaded, programs built); peak ${formatBytes(peak)}`,
    peakBytes: peak,
  };
}

/** "2-layer Llama-3.1-8B-shaped bf16 target" for the bench's own target, else its dimensions. */
function targetLabel(t: ScaleTarget): string {
  return t === LLAMA_8B_2_LAYERS
    ? "2-layer Llama-3.1-8B-shaped bf16 target"
    : `bf16 target H${t.hidden_size} L${t.num_hidden_layers} V${t.vocab_size}`;
}

/** The rows of `shapes` (training at each length, then prepare resident and streamed) on `gpu`. */
export async function scaleRows(gpu: Gpu, shapes: ScaleShapes): Promise<BenchRow[]> {
  const dir = await Deno.makeTempDir({ prefix: "eaglet-bench-scale-" });
  try {
    await writeTarget(dir, shapes.target);
    const rows: BenchRow[] = [];
    for (const T of shapes.trainLengths) rows.push(await trainRow(gpu, dir, shapes, T));
    rows.push(await prepareRow(gpu, dir, shapes, false), await prepareRow(gpu, dir, shapes, true));
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The scale rows (see the module note); none on a CPU adapter unless `opts.explicit`. */
export function benchScale(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  if (isCpuAdapter(gpu) && !opts.explicit) {
    console.log(
      "scale: skipped on a CPU adapter (`--only scale` runs it; a T 2048 update takes many minutes)",
    );
    return Promise.resolve([]);
  }
  const lengths = SCALE_SHAPES.trainLengths;
  return scaleRows(gpu, { ...SCALE_SHAPES, trainLengths: opts.quick ? lengths.slice(0, 1) : lengths });
}
