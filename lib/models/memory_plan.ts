/**
 * Memory plans: every GPU tensor a task will allocate, listed from the shapes alone (a target's from its config
 * and checkpoint headers, ./target_memory.ts; a draft step's, ./eagle3_activations.ts) and replayed, in the
 * order the task allocates them, through a {@link SimulatedPool} with the buffer pool's size classes and reuse:
 * the fixed tensors first, then the programs of each batch shape met, the {@link MAX_SHAPES} most recently used
 * kept (as lib/train/step_programs.ts and prepare-hidden-states keep them). The plan's peak is what the pool
 * will hold at most (the tests hold it to the measured peak); its categories are what that peak is made of.
 * SpecForge has none: its users learn that a run does not fit from an out-of-memory error (its issues #61,
 * #112, #326, #466). Training's plan is lib/train/training_plan.ts.
 */
import { SimulatedPool } from "../gpu/buffers.ts";
import type { Gpu } from "../gpu/device.ts";
import { type DeviceMemory, deviceMemory, formatBytes } from "../gpu/device_memory.ts";
import { SafetensorsCheckpoint } from "../io/safetensors.ts";
import { LimitError } from "../gpu/errors.ts";
import { rowBlocks } from "../ops/blocks.ts";
import { DTYPE_BYTES } from "../tensor.ts";
import { resolveWeightNames, type TargetConfig, type TargetWeightNames } from "./config.ts";
import {
  type ForwardOutputs,
  layerBytes,
  layerWeights,
  type PlannedTensor,
  rowBlockSizes,
  type StoredTensor,
  streamProgramCount,
  streamSlotCount,
  targetForwardTensors,
  type TargetParts,
  targetRopePositions,
  type TargetSplits,
  targetWeightTensors,
  uploadDtype,
} from "./target_memory.ts";

/** At most this many batch shapes keep their programs (the least recently used is freed). */
export const MAX_SHAPES = 4;

/** The categories of a plan, in the order they are printed, with the settings that shrink each. */
export const PLAN_CATEGORIES = {
  targetLayers: {
    name: "target weights (decoder layers, final norm, RoPE tables)",
    shrink: "train offline (prepare-hidden-states once; train-offline loads no decoder layer), and for " +
      "prepare-hidden-states --target-memory-budget (layers streamed through a few slots)",
  },
  targetEnds: {
    name: "target embedding and lm_head",
    shrink: "a bf16 target checkpoint, or train-offline with --teacher-format topk features (no lm_head)",
  },
  teacherHead: { name: "teacher head (lm_head rows of the draft vocabulary)", shrink: "--draft-vocab-size" },
  draftEmbedding: { name: "draft embedding (--embedding-key)", shrink: "drop --embedding-key" },
  draftWeights: { name: "draft weights", shrink: "a smaller --draft-model-config or --draft-vocab-size" },
  gradients: { name: "draft gradients", shrink: "a smaller --draft-model-config or --draft-vocab-size" },
  optimizer: {
    name: "optimizer state (AdamW moments; Muon momentum and scratch)",
    shrink: "a smaller --draft-model-config",
  },
  feed: {
    name: "target forward / feature staging (largest batch shape)",
    shrink: "--batch-size, --max-length",
  },
  trainStep: {
    name: "draft step activations, training (largest batch shape)",
    shrink: "--batch-size, --max-length, --ttt-length",
  },
  evalStep: {
    name: "draft step activations, evaluation (largest batch shape)",
    shrink: "--batch-size, --max-length, --eval-batches",
  },
  logits: {
    name: "logits and teacher rows (largest batch shape)",
    shrink:
      "--head-chunk-rows (the draft head in windows of rows), --draft-vocab-size, --batch-size, --max-length",
  },
  otherShapes: {
    name: `other batch shapes kept (up to ${MAX_SHAPES} programs) and parked buffers`,
    shrink: "--max-length, --batch-size",
  },
  // The evaluation's (lib/eval/eval_plan.ts).
  evalDraft: { name: "draft weights (f32)", shrink: "a smaller draft (--draft-model-path)" },
  evalCaches: {
    name: "KV caches (speculative target and draft sessions; plain decoding's, one per cache length)",
    shrink: "--max-prompt-len, --max-new-tokens, and --no-speed with --temperature > 0 (no plain decoding)",
  },
  evalAux: {
    name: "target aux features for the draft [prompt rows, 3H]",
    shrink: "--max-prompt-len",
  },
  evalPasses: {
    name: "speculative passes (prefill at the longest prompt, verify, draft extensions and steps)",
    shrink: "--max-prompt-len, --num-draft-tokens, --topk",
  },
  evalLogits: {
    name: "logits (prefill, verify, plain decoding, draft heads)",
    shrink: "--num-draft-tokens, --topk",
  },
  evalParked: {
    name: "parked buffers (of freed sessions and programs, kept by the pool for reuse)",
    shrink: "--max-prompt-len, --num-samples",
  },
  evalSpec: {
    name: "speculative decoding at evaluations (--eval-spec-samples: sessions, caches, programs)",
    shrink: "--eval-spec-samples, --eval-spec-new-tokens, --max-length",
  },
  evalPlain: {
    name: "plain decoding programs kept (a prefill per prompt length, a pass per decoded position)",
    shrink: "--max-new-tokens, --num-samples, and --no-speed with --temperature > 0 (no plain decoding)",
  },
} as const;

/** A key of {@link PLAN_CATEGORIES}. */
export type PlanCategoryKey = keyof typeof PLAN_CATEGORIES;

/** One category's bytes at the plan's peak. */
export interface PlanCategory {
  /** Its key in {@link PLAN_CATEGORIES}. */
  key: PlanCategoryKey;
  /** What it holds. */
  name: string;
  /** Its bytes at the peak. */
  bytes: number;
  /** The settings that shrink it. */
  shrink: string;
}

/** What a run will hold on its device. */
export interface MemoryPlan {
  /** The non-empty categories, in {@link PLAN_CATEGORIES} order; their bytes sum to {@link peakBytes}. */
  categories: PlanCategory[];
  /** The most bytes the buffer pool will hold at once. */
  peakBytes: number;
  /** The largest single tensor (bytes as asked of the pool). */
  largestTensor: PlannedTensor;
  /** The largest batch shape met (by its feed's and steps' bytes). */
  largestShape: { batch: number; seqLen: number };
  /** Distinct batch shapes met in the run. */
  shapes: number;
  /** What the run allocates beyond the plan, besides split-K partials and the driver's own memory. */
  notCounted?: string[];
  /**
   * Rows of the draft head's windows (lib/models/eagle3_head_loss.ts); null: a batch's rows at once; absent: a
   * plan without a draft head (prepare-hidden-states, evaluation).
   */
  headRows?: number | null;
  /** The first line of the printed plan (default: the batch shapes met). */
  header?: string;
  /**
   * The largest tensor that must fit one storage binding (what no op splits) and its category, where the plan
   * knows it (evaluation's); absent: only the per-tensor maxBufferSize is checked.
   */
  largestBound?: PlannedTensor & { key: PlanCategoryKey };
}

/** What every plan with a target is made from. */
export interface TargetPlanInput {
  /** The target's config. */
  target: TargetConfig;
  /** The target's weight names and each stored tensor's header (no weight is read). */
  weights: { names: TargetWeightNames; stored: (name: string) => StoredTensor };
  /** The device's features and limits that decide dtypes and splits. */
  device: {
    shaderF16: boolean;
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    minStorageBufferOffsetAlignment: number;
  };
}

/** A target's weights as uploaded: the decoder layers (final norm, RoPE tables) and the two ends. */
export function targetWeightCategories(
  i: TargetPlanInput,
  parts: TargetParts,
): Array<[PlanCategoryKey, PlannedTensor[]]> {
  const { target: cfg, weights: w } = i;
  const upload = {
    shaderF16: i.device.shaderF16,
    maxBlockBytes: i.device.maxStorageBufferBindingSize,
    maxPositions: targetRopePositions(cfg),
  };
  const all = targetWeightTensors(cfg, w.names, w.stored, parts, upload);
  const ends = new Set([w.names.embed, w.names.lmHead]);
  const isEnd = (t: PlannedTensor) => ends.has(t.label.replace(/\[\d+:\d+\]$/, ""));
  return [["targetLayers", all.filter((t) => !isEnd(t))], ["targetEnds", all.filter(isEnd)]];
}

/**
 * The layer slots of the target streamed under `budget` bytes of decoder-layer weights (lib/models/
 * target_stream.ts), or null when every layer fits the budget (or there is none): then the target is resident.
 */
export function targetStreamSlots(t: TargetPlanInput, budget: number | null): number | null {
  if (budget === null) return null;
  const perLayer = layerBytes(t.weights.stored, t.weights.names.layers[0], t.device.shaderF16);
  if (perLayer * t.target.numLayers <= budget) return null;
  return streamSlotCount(budget, perLayer, t.target.numLayers);
}

/**
 * The plan of target forwards over batch `shapes` (prepare-hidden-states): the whole target (or, streamed,
 * its ends and `streamSlots` layer slots, lib/models/target_stream.ts), then one forward with `outputs` per
 * shape, the {@link MAX_SHAPES} most recently used kept.
 */
export function planTargetForwards(
  i: TargetPlanInput,
  outputs: ForwardOutputs,
  shapes: Iterable<[number, number]>,
  streamSlots?: number,
): MemoryPlan {
  const replay = new Replay(i.device.maxBufferSize);
  for (const [key, tensors] of targetWeightCategories(i, { layers: true, slots: streamSlots })) {
    replay.allocate(key, null, tensors);
  }
  const layerPrograms = streamSlots ? streamProgramCount(i.target, streamSlots) : 1;
  const splits = { ...targetSplits(i), layerPrograms };
  const cache = new ShapeCache(
    replay,
    (B, T) => targetForwardTensors(i.target, B, T, outputs, splits),
    () => null,
  );
  for (const [batch, seqLen] of shapes) cache.use("train", batch, seqLen);
  return { ...replay.plan(), shapes: cache.distinct.size };
}

/** The row counts of the blocks a [rows, cols] checkpoint matrix of `dtype` loads as (lib/models/target.ts). */
export function blockRowsOf(
  i: TargetPlanInput,
  rows: number,
  cols: number,
  dtype: string,
  name: string,
): number[] {
  const upload = uploadDtype(dtype, i.device.shaderF16);
  return rowBlockSizes(name, rows, cols, upload, i.device.maxStorageBufferBindingSize);
}

/** The blocks a [rows, cols] matrix of `dtypeBytes` takes in a split linear; none when it binds whole. */
export function linearBlockRows(
  i: TargetPlanInput,
  rows: number,
  cols: number,
  dtypeBytes: number[],
): number[] {
  const blocks = rowBlocks(i.device, rows, cols, dtypeBytes);
  return blocks.length > 1 ? blocks.map((b) => b.rows) : [];
}

/** How the target's embedding, lm_head and decoder matrices split on the device. */
export function targetSplits(i: TargetPlanInput): TargetSplits {
  const { names, stored } = i.weights;
  const whole = (name: string) => {
    const t = stored(name);
    return blockRowsOf(i, t.shape[0], t.shape[1], t.dtype, name);
  };
  const matrixBlockRows: number[] = [];
  for (const l of names.layers) {
    // The matrices `linear` binds (a sparse MLP's experts go through the grouped matmul, in whole-expert blocks).
    const linears = layerWeights(stored, l, i.device.shaderF16).filter((w) => w.matrix && !w.experts);
    for (const w of linears.filter((w) => w.shape.length === 2)) {
      matrixBlockRows.push(...linearBlockRows(i, w.shape[0], w.shape[1], [DTYPE_BYTES[w.dtype]]));
    }
  }
  return { embedBlockRows: whole(names.embed), lmHeadBlockRows: whole(names.lmHead), matrixBlockRows };
}

/** A batch shape's feed and its steps by split. */
export type Split = "train" | "eval";

/**
 * The feeds and steps of the batch shapes, kept for the {@link MAX_SHAPES} most recently used: `feedOf` lists
 * a shape's feed (target forward or feature decoder), `stepOf` its step of a split (none for a bare forward).
 */
export class ShapeCache {
  readonly #shapes = new Map<
    string,
    { feed: Allocation; train: Allocation | null; eval: Allocation | null }
  >();
  /** Every shape met. */
  readonly distinct = new Set<string>();

  constructor(
    readonly replay: Replay,
    readonly feedOf: (batch: number, seqLen: number) => PlannedTensor[],
    readonly stepOf: (split: Split, batch: number, seqLen: number) => PlannedTensor[] | null,
  ) {}

  use(split: Split, batch: number, seqLen: number): void {
    const key = `${batch}x${seqLen}`;
    this.distinct.add(key);
    let shape = this.#shapes.get(key);
    if (shape) {
      this.#shapes.delete(key);
    } else {
      if (this.#shapes.size >= MAX_SHAPES) {
        const [oldKey, old] = this.#shapes.entries().next().value!;
        for (const a of [old.feed, old.train, old.eval]) if (a) this.replay.free(a);
        this.#shapes.delete(oldKey);
      }
      shape = {
        feed: this.replay.allocate("feed", key, this.feedOf(batch, seqLen)),
        train: null,
        eval: null,
      };
    }
    this.#shapes.set(key, shape);
    const step = shape[split] ? null : this.stepOf(split, batch, seqLen);
    if (step) shape[split] = this.replay.allocate(split === "train" ? "trainStep" : "evalStep", key, step);
  }
}

/** The tensors of one allocation: each one's category, shape key and pooled size. */
type Allocation = Array<{ key: PlanCategoryKey; shape: string | null; size: number }>;

/** Logits-sized rows: the teacher's and the draft's vocabulary rows, wherever they are allocated. */
const LOGITS = /logits|KL gradient|head rows/;

/** The simulated pool and what is live in it by category and shape, with the breakdown at its peak. */
export class Replay {
  readonly #pool: SimulatedPool;
  readonly #live = new Map<string, number>();
  #atPeak = new Map<string, number>();
  #parkedAtPeak = 0;
  #largest: PlannedTensor = { label: "none", bytes: 0 };

  constructor(maxBufferSize: number) {
    this.#pool = new SimulatedPool(maxBufferSize);
  }

  allocate(key: PlanCategoryKey, shape: string | null, tensors: PlannedTensor[]): Allocation {
    return tensors.map((t) => {
      if (t.bytes > this.#largest.bytes) this.#largest = t;
      const k: PlanCategoryKey = shape !== null && LOGITS.test(t.label) ? "logits" : key;
      const before = this.#pool.peakBytes;
      const size = this.#pool.acquire(t.bytes);
      this.#add(k, shape, size);
      if (this.#pool.peakBytes > before) {
        this.#atPeak = new Map(this.#live);
        this.#parkedAtPeak = this.#pool.freeBytes;
      }
      return { key: k, shape, size };
    });
  }

  free(a: Allocation): void {
    for (const t of a) {
      this.#pool.release(t.size);
      this.#add(t.key, t.shape, -t.size);
    }
  }

  #add(key: PlanCategoryKey, shape: string | null, bytes: number): void {
    const id = `${key}|${shape ?? ""}`;
    this.#live.set(id, (this.#live.get(id) ?? 0) + bytes);
  }

  /** The categories at the peak: the fixed ones, the largest live shape's, and the rest as other shapes. */
  plan(): Omit<MemoryPlan, "shapes"> {
    const byShape = new Map<string, number>();
    for (const [id, bytes] of this.#atPeak) {
      const shape = id.split("|")[1];
      if (shape) byShape.set(shape, (byShape.get(shape) ?? 0) + bytes);
    }
    const largest = [...byShape].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "";
    const sums = new Map<PlanCategoryKey, number>([["otherShapes", this.#parkedAtPeak]]);
    for (const [id, bytes] of this.#atPeak) {
      const [key, shape] = id.split("|") as [PlanCategoryKey, string];
      const k: PlanCategoryKey = shape && shape !== largest ? "otherShapes" : key;
      sums.set(k, (sums.get(k) ?? 0) + bytes);
    }
    const categories = (Object.keys(PLAN_CATEGORIES) as PlanCategoryKey[])
      .filter((k) => (sums.get(k) ?? 0) > 0)
      .map((k) => ({ key: k, ...PLAN_CATEGORIES[k], bytes: sums.get(k)! }));
    const [batch, seqLen] = largest ? largest.split("x").map(Number) : [0, 0];
    return {
      categories,
      peakBytes: this.#pool.peakBytes,
      largestTensor: this.#largest,
      largestShape: { batch, seqLen },
    };
  }
}

/** The device limits a plan is checked against. */
export interface PlanLimits {
  /** The device's largest buffer. */
  maxBufferSize: number;
  /** The device's largest storage binding. */
  maxStorageBufferBindingSize: number;
  /** The device's memory (lib/gpu/device_memory.ts). */
  memory: DeviceMemory;
}

/** The plan as lines for the user: each category, the peak, the largest tensor, and the device's limits. */
export function formatPlan(plan: MemoryPlan, limits: PlanLimits): string[] {
  const width = Math.max(...plan.categories.map((c) => c.name.length));
  const { batch, seqLen } = plan.largestShape;
  return [
    plan.header ??
      `memory plan (${plan.shapes} batch shape${
        plan.shapes === 1 ? "" : "s"
      }, the largest B ${batch} × T ${seqLen}):`,
    ...plan.categories.map((c) => `  ${c.name.padEnd(width)}  ${formatBytes(c.bytes).padStart(10)}`),
    `  ${"peak (GPU storage buffers held at once)".padEnd(width)}  ${
      formatBytes(plan.peakBytes).padStart(10)
    }`,
    `largest tensor: ${plan.largestTensor.label}, ${formatBytes(plan.largestTensor.bytes)} ` +
    `(device: maxBufferSize ${formatBytes(limits.maxBufferSize)}, ` +
    `maxStorageBufferBindingSize ${formatBytes(limits.maxStorageBufferBindingSize)})`,
    ...(plan.largestBound
      ? [
        `largest tensor bound whole: ${plan.largestBound.label}, ${formatBytes(plan.largestBound.bytes)} ` +
        `(maxStorageBufferBindingSize ${formatBytes(limits.maxStorageBufferBindingSize)})`,
      ]
      : []),
    `device memory: ${
      limits.memory.bytes === null ? "" : `${formatBytes(limits.memory.bytes)}, `
    }${limits.memory.source}`,
    ...(plan.headRows === undefined ? [] : [
      `draft head (lm_head, loss, their backward): ${
        plan.headRows ? `windows of ${plan.headRows} rows` : "every row of a batch at once"
      }`,
    ]),
    `not counted: ${
      [
        ...plan.notCounted ?? [],
        "the matmuls' split-K partials",
        "on CPU adapters, the matmul and attention operands packed as textures (one per role and size per program)",
        "the driver's own memory",
      ].join("; ")
    }`,
  ];
}

/**
 * Whether the plan fits: no tensor over maxBufferSize (nor, where the plan knows them, one bound whole over
 * maxStorageBufferBindingSize), the peak within the device's memory (when known).
 */
export function planFits(plan: MemoryPlan, limits: PlanLimits): boolean {
  const memory = limits.memory.bytes;
  return plan.largestTensor.bytes <= limits.maxBufferSize &&
    (plan.largestBound?.bytes ?? 0) <= limits.maxStorageBufferBindingSize &&
    (memory === null || plan.peakBytes <= memory);
}

/**
 * Throws a {@link LimitError} when the plan does not fit (see {@link planFits}); the message names the
 * largest category and the settings that shrink it.
 */
export function checkPlanFits(plan: MemoryPlan, limits: PlanLimits): void {
  const top = [...plan.categories].sort((a, b) => b.bytes - a.bytes)[0];
  const hint = top
    ? `; the largest part is ${top.name}, ${formatBytes(top.bytes)} (shrink it with ${top.shrink})`
    : "";
  if (plan.largestTensor.bytes > limits.maxBufferSize) {
    throw new LimitError(
      `memory plan: tensor ${plan.largestTensor.label} needs ${
        formatBytes(plan.largestTensor.bytes)
      }, over the ` +
        `device's maxBufferSize of ${formatBytes(limits.maxBufferSize)}`,
    );
  }
  const bound = plan.largestBound;
  if (bound && bound.bytes > limits.maxStorageBufferBindingSize) {
    throw new LimitError(
      `memory plan: tensor ${bound.label} needs ${
        formatBytes(bound.bytes)
      } in one binding, over the device's ` +
        `maxStorageBufferBindingSize of ${formatBytes(limits.maxStorageBufferBindingSize)} (shrink it with ` +
        `${PLAN_CATEGORIES[bound.key].shrink})`,
    );
  }
  const memory = limits.memory.bytes;
  if (memory !== null && plan.peakBytes > memory) {
    throw new LimitError(
      `memory plan: the run needs ${formatBytes(plan.peakBytes)} of GPU buffers, the device has ` +
        `${formatBytes(memory)} (${limits.memory.source})${hint}`,
    );
  }
}

/**
 * Runs `f` with the plan input of the target in `dir` (its config `cfg`, the checkpoint's tensor headers,
 * `gpu`'s features and limits) and whether the checkpoint stores a tensor; no weight is read.
 */
export async function withTargetPlanInput<T>(
  gpu: Gpu,
  dir: string,
  cfg: TargetConfig,
  f: (input: TargetPlanInput, has: (name: string) => boolean) => T,
): Promise<T> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    const names = resolveWeightNames(cfg, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, dir);
    const input: TargetPlanInput = {
      target: cfg,
      weights: { names, stored: (n) => ckpt.info(n) },
      device: {
        shaderF16: gpu.features.shaderF16,
        maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
        maxBufferSize: gpu.limits.maxBufferSize,
        minStorageBufferOffsetAlignment: gpu.limits.minStorageBufferOffsetAlignment,
      },
    };
    return f(input, (n) => ckpt.has(n));
  } finally {
    ckpt.close();
  }
}

/** The limits of `gpu`, with `memoryBytes` (a --device-memory) or else the memory lib/gpu/device_memory.ts finds. */
export function planLimitsOf(gpu: Gpu, memoryBytes: number | null): PlanLimits {
  return {
    maxBufferSize: gpu.limits.maxBufferSize,
    maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
    memory: deviceMemory(gpu, memoryBytes),
  };
}
