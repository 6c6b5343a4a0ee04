/**
 * The EAGLE-3 draft model (SpecForge's LlamaForCausalLMEagle3, reference/specforge-spec.md §3) and its
 * training step over the test-time-training (TTT) unroll (§4.1–§4.5), forward and backward on the GPU.
 *
 * Math of one training step, per TTT step k = 0..K−1 (rows t of each sequence, all in f32):
 *
 *   h⁰ = fc(aux)                                   aux = the target's 3 captured hidden states [B·T, 3·H_t]
 *   u^k_t = x_{t+k+1} (0 past the end)             teacher-forced tokens; e^k = embed(u^k) (frozen, target's)
 *   a^k = [RMSNorm_in(e^k), RMSNorm_hid(h^k)]      [B·T, 2H], embedding first
 *   q, K^k, V^k = a^k·W_{q,k,v}ᵀ, RoPE on q and K^k at positions t + k
 *   att^k_t = softmax over {K⁰_s, s ≤ t, s < len_b} ∪ {K^j_t, 1 ≤ j ≤ k} (§4.3: prefix + diagonal)
 *   r^k = h^k + att^k·W_oᵀ;  y^k = r^k + down(silu(gate(n)) ⊙ up(n)), n = RMSNorm_post(r^k)
 *   h^{k+1} = y^k (pre-norm, fed back);  z^k = lm_head(RMSNorm_final(y^k)) over the draft vocab [B·T, Vd]
 *   loss_k = Σ_t [pos_mask^k_t ≠ 0] · (−Σ_v p^k_tv · log_softmax(z^k_t)_v) / (B·T)
 *   loss   = Σ_k 0.8^k · loss_k / accumulationSteps
 *
 * with the teacher p^k_t = softmax(L_{t+k+1}[t2d]) (uniform 1/Vd past the end), pos_mask^k_t = M_{t+k} ·
 * t2d[argmax L_{t+k+1}] (§2.2, the one-position shift and the TTT padding folded in, see kernels/eagle3.ts).
 * acc_k follows [H]: Σ_t [d2t-mapped argmax z^k_t == argmax L_{t+k+1}] · M_{t+k} / Σ_t M_{t+k} ([C] instead
 * compares with the draft-vocab argmax of p^k and masks the numerator by pos_mask; both count targets outside
 * the draft vocab as wrong). RoPE positions are t + k ([M]/[H]; [C]'s sdpa path used t).
 *
 * Precision deviation: SpecForge runs the draft in bf16 (weights, activations, RoPE table) with fp32 master
 * weights; Eaglet does everything in f32 (weights, activations, gradients), so it matches SpecForge's math
 * in exact arithmetic and PyTorch f64 to f32 rounding.
 *
 * Backward: the head (final norm + lm_head) is differentiated right after each step's loss, so one logits
 * buffer serves all steps; then steps run in reverse, carrying ∂/∂h^{k+1} into step k (the fed-back hidden
 * chain) and accumulating the attention gradients of K⁰/V⁰ (read by every step) and of each diagonal K^j/V^j
 * (read by steps ≥ j) before step k's projections are differentiated. Gradients are ADDED into
 * {@link Eagle3Draft.grads} so that micro-batches accumulate; zero them after each optimizer step.
 */
import type { Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { shapeString, Tensor } from "../tensor.ts";
import type { VocabMapping } from "../data/vocab.ts";
import type { DraftConfig } from "./draft_config.ts";
import type { RowSplitMatrix } from "./target.ts";
import { linear, linearBackward } from "../ops/matmul.ts";
import { rmsnormBackward, rmsnormForward, rmsnormScratchSize } from "../ops/rmsnorm.ts";
import { ropeBackward, ropeForward, ropeTable } from "../ops/rope.ts";
import { attentionBackward, attentionForward } from "../ops/attention.ts";
import { swigluBackward, swigluForward } from "../ops/swiglu.ts";
import { embeddingForward } from "../ops/embedding.ts";
import { argmaxAgreement, softCrossEntropy } from "../ops/loss.ts";
import { mulberry32 } from "../data/random.ts";
import { accumulate, add, copyColumns, copyStrided, fill } from "../ops/elementwise.ts";
import { metricsAdd, targetToDraftMap, teacherProbs, teacherRows } from "../ops/eagle3_teacher.ts";
import { METRIC_COLS } from "../../kernels/eagle3.ts";

/** SpecForge's state-dict keys of the trained draft parameters (§3.2), in a fixed order. */
export const EAGLE3_PARAM_NAMES = [
  "fc.weight",
  "midlayer.input_layernorm.weight",
  "midlayer.hidden_norm.weight",
  "midlayer.self_attn.q_proj.weight",
  "midlayer.self_attn.k_proj.weight",
  "midlayer.self_attn.v_proj.weight",
  "midlayer.self_attn.o_proj.weight",
  "midlayer.post_attention_layernorm.weight",
  "midlayer.mlp.gate_proj.weight",
  "midlayer.mlp.up_proj.weight",
  "midlayer.mlp.down_proj.weight",
  "norm.weight",
  "lm_head.weight",
] as const;

/** One of {@link EAGLE3_PARAM_NAMES}. */
export type Eagle3ParamName = typeof EAGLE3_PARAM_NAMES[number];

/** The loss weight of TTT step k is STEP_DECAY^k (SpecForge's fixed 0.8). */
export const STEP_DECAY = 0.8;

/** The shape of every parameter of a draft with config `cfg` (§3.2). */
export function eagle3ParamShapes(cfg: DraftConfig): Record<Eagle3ParamName, number[]> {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  return {
    "fc.weight": [H, 3 * cfg.targetHiddenSize],
    "midlayer.input_layernorm.weight": [H],
    "midlayer.hidden_norm.weight": [H],
    "midlayer.self_attn.q_proj.weight": [nh * hd, 2 * H],
    "midlayer.self_attn.k_proj.weight": [nkv * hd, 2 * H],
    "midlayer.self_attn.v_proj.weight": [nkv * hd, 2 * H],
    "midlayer.self_attn.o_proj.weight": [H, nh * hd],
    "midlayer.post_attention_layernorm.weight": [H],
    "midlayer.mlp.gate_proj.weight": [I, H],
    "midlayer.mlp.up_proj.weight": [I, H],
    "midlayer.mlp.down_proj.weight": [H, I],
    "norm.weight": [H],
    "lm_head.weight": [cfg.draftVocabSize, H],
  };
}

/** Host weights by state-dict key. */
export type Eagle3Weights = Map<string, Float32Array>;

/**
 * SpecForge [C]'s initialisation (§3.2; it does not call post_init, so PyTorch's defaults apply): every
 * Linear weight [out, in] ~ U(−1/√in, 1/√in) (nn.Linear's kaiming_uniform(a=√5)), every RMSNorm weight 1.
 * The values come from one {@link mulberry32} stream seeded with `seed`, drawn parameter after parameter in
 * {@link EAGLE3_PARAM_NAMES} order, row-major, w = (2u − 1)/√in, rounded to f32 (not bit-equal to torch's
 * RNG; the distribution is the same).
 */
export function initEagle3Weights(cfg: DraftConfig, seed: number): Eagle3Weights {
  const rand = mulberry32(seed);
  const shapes = eagle3ParamShapes(cfg);
  const out: Eagle3Weights = new Map();
  for (const name of EAGLE3_PARAM_NAMES) {
    const shape = shapes[name];
    const n = shape.reduce((a, b) => a * b, 1);
    const w = new Float32Array(n);
    if (shape.length === 1) {
      w.fill(1);
    } else {
      const bound = 1 / Math.sqrt(shape[1]);
      for (let i = 0; i < n; i++) w[i] = (2 * rand() - 1) * bound;
    }
    out.set(name, w);
  }
  return out;
}

/**
 * The frozen embedding the draft shares with the target (§3.5), as one tensor [V, H]: the target model's
 * `embed` matrix. Throws when it is row-split into several blocks (vocabularies whose embedding exceeds
 * the device's binding limit are not supported by the draft step yet).
 */
export function draftEmbedding(embed: RowSplitMatrix): Tensor {
  if (embed.blocks.length !== 1) {
    throw new ShapeError(
      `eagle3: the target embedding [${embed.rows}, ${embed.cols}] is split into ${embed.blocks.length} blocks ` +
        `(larger than the device's maxStorageBufferBindingSize); the draft step needs it as one tensor`,
    );
  }
  return embed.blocks[0].tensor;
}

/**
 * The draft's trainable parameters and their gradients, on the GPU, f32, under SpecForge's key names. The
 * frozen embedding and the vocab mapping are not parameters: they are given to {@link buildEagle3Step}.
 */
export class Eagle3Draft {
  /** Parameters by key (f32, shapes of {@link eagle3ParamShapes}). */
  readonly params: Record<Eagle3ParamName, Tensor>;
  /** Gradients by key, same shapes; training steps ADD into them. */
  readonly grads: Record<Eagle3ParamName, Tensor>;
  #zero: Program | null = null;

  private constructor(readonly gpu: Gpu, readonly config: DraftConfig) {
    const shapes = eagle3ParamShapes(config);
    const params = {} as Record<Eagle3ParamName, Tensor>;
    const grads = {} as Record<Eagle3ParamName, Tensor>;
    for (const name of EAGLE3_PARAM_NAMES) {
      params[name] = Tensor.empty(gpu, shapes[name], "f32", `draft ${name}`);
      grads[name] = Tensor.zeros(gpu, shapes[name], "f32", `draft grad ${name}`);
    }
    this.params = params;
    this.grads = grads;
  }

  /**
   * A draft with weights from {@link initEagle3Weights}(config, seed) (default seed 0) or from `weights`
   * (every key of {@link EAGLE3_PARAM_NAMES}, checked), and zero gradients.
   */
  static create(
    gpu: Gpu,
    config: DraftConfig,
    opts: { seed?: number; weights?: Eagle3Weights } = {},
  ): Eagle3Draft {
    const d = new Eagle3Draft(gpu, config);
    d.setWeights(opts.weights ?? initEagle3Weights(config, opts.seed ?? 0));
    return d;
  }

  /** [name, parameter, gradient] for every parameter, in {@link EAGLE3_PARAM_NAMES} order. */
  entries(): Array<[Eagle3ParamName, Tensor, Tensor]> {
    return EAGLE3_PARAM_NAMES.map((n) => [n, this.params[n], this.grads[n]]);
  }

  /** Copies host weights into the parameters; every key must be present with its exact element count. */
  setWeights(weights: Eagle3Weights): void {
    for (const name of EAGLE3_PARAM_NAMES) {
      const w = weights.get(name);
      const t = this.params[name];
      if (!w) throw new ShapeError(`eagle3 weights: ${name} is missing`);
      if (w.length !== t.size) {
        throw new ShapeError(
          `eagle3 weights: ${name} has ${w.length} values, expected ${shapeString(t.shape)} (${t.size})`,
        );
      }
      t.write(w as Float32Array<ArrayBuffer>);
    }
    for (const key of weights.keys()) {
      if (!(EAGLE3_PARAM_NAMES as readonly string[]).includes(key)) {
        throw new ShapeError(`eagle3 weights: unexpected key ${key}`);
      }
    }
  }

  /** Reads every parameter to the host (one sync per tensor). */
  async getWeights(): Promise<Eagle3Weights> {
    const out: Eagle3Weights = new Map();
    for (const name of EAGLE3_PARAM_NAMES) out.set(name, await this.params[name].readFloat());
    return out;
  }

  /** Reads every gradient to the host (one sync per tensor). */
  async getGrads(): Promise<Eagle3Weights> {
    const out: Eagle3Weights = new Map();
    for (const name of EAGLE3_PARAM_NAMES) out.set(name, await this.grads[name].readFloat());
    return out;
  }

  /** A program that sets every gradient to 0 (built once; append it to the optimizer's program or run it). */
  async zeroGradsProgram(): Promise<Program> {
    if (!this.#zero) {
      const p = new Program(this.gpu, "eagle3 zero grads");
      for (const name of EAGLE3_PARAM_NAMES) await fill(p, this.grads[name], 0);
      this.#zero = p;
    }
    return this.#zero;
  }

  /** Submits {@link zeroGradsProgram} (no sync). */
  async zeroGrads(): Promise<void> {
    (await this.zeroGradsProgram()).run();
  }

  /** Frees parameters, gradients and the zeroing program. */
  destroy(): void {
    this.#zero?.destroy();
    for (const name of EAGLE3_PARAM_NAMES) {
      this.params[name].destroy();
      this.grads[name].destroy();
    }
  }
}

/** Options of {@link buildEagle3Step}. */
export interface Eagle3StepOptions {
  /** B: sequences per micro-batch. */
  batch: number;
  /** T: padded sequence length. */
  seqLen: number;
  /** K: TTT steps (SpecForge's ttt_length, default 7). */
  tttLength: number;
  /** The target's frozen embedding [V, H] (f32, f16 or bf16), e.g. {@link draftEmbedding}(target.embed). */
  embedding: Tensor;
  /** The draft ↔ target vocabulary mapping (d2t, t2d; lib/data/vocab.ts). */
  vocab: VocabMapping;
  /** Forward + loss + backward (default true); false = forward and metrics only (evaluation). */
  train?: boolean;
  /** The gradient is of loss / accumulationSteps (default 1). The metrics are not scaled. */
  accumulationSteps?: number;
  /**
   * Input tensors to use instead of allocating them (e.g. the TargetForward's `aux`, `subsetLogits`,
   * `vocabArgmax`, `ids`, `lengths`), so that nothing is copied; shapes and dtypes are checked.
   */
  inputs?: Partial<Eagle3StepInputs>;
}

/** The GPU inputs of a step, rows = B·T (right-padded, row r = b·T + t). */
export interface Eagle3StepInputs {
  /** Concatenated aux hidden states of the target, f32 [B·T, 3·H_t]. */
  aux: Tensor;
  /** Token ids x_0..x_{T−1}, i32 [B·T], UNshifted (the step shifts). */
  ids: Tensor;
  /** Valid tokens per sequence, i32 [B] (key padding of the attention). */
  lengths: Tensor;
  /** Loss mask M (1 on assistant tokens), f32 [B·T], UNshifted (as SpecForge: never shifted). */
  lossMask: Tensor;
  /** Target logits restricted to the draft vocab (t2d ids ascending), f32 [B·T, Vd], UNshifted. */
  teacherLogits: Tensor;
  /** Full-vocabulary argmax of the target logits, i32 [B·T], UNshifted. */
  teacherArgmax: Tensor;
}

/** Metrics accumulated since the last reset, per TTT step k (§4.5). */
export interface Eagle3Metrics {
  /** Micro-batches run since the reset. */
  microBatches: number;
  /** ploss_k = Σ loss_k·B·T / Σ B·T (unweighted, not divided by the accumulation steps). */
  ploss: number[];
  /** acc_k = correct_k / max(total_k, 1e-6). */
  acc: number[];
  /** The numerator of acc_k. */
  correct: number[];
  /** The denominator of acc_k (supervised rows of step k). */
  total: number[];
  /** Σ_k 0.8^k · ploss_k (the loss before the 1/accumulationSteps scaling). */
  loss: number;
  /** Simulated acceptance length Σ_k Π_{j≤k} acc_j (SpecForge [H] `simulated_acc_len`). */
  simulatedAcceptLength: number;
}

/** Metrics of a raw metrics array [K, 4] (columns Σ loss·BT, correct, total, Σ BT). */
export function eagle3MetricsFrom(
  raw: ArrayLike<number>,
  tttLength: number,
  microBatches: number,
): Eagle3Metrics {
  const ploss: number[] = [], acc: number[] = [], correct: number[] = [], total: number[] = [];
  let loss = 0, accLen = 0, prod = 1;
  for (let k = 0; k < tttLength; k++) {
    const o = k * METRIC_COLS;
    const tokens = raw[o + 3];
    ploss.push(tokens > 0 ? raw[o] / tokens : 0);
    correct.push(raw[o + 1]);
    total.push(raw[o + 2]);
    acc.push(raw[o + 1] / Math.max(raw[o + 2], 1e-6));
    loss += STEP_DECAY ** k * ploss[k];
    prod *= acc[k];
    accLen += prod;
  }
  return { microBatches, ploss, acc, correct, total, loss, simulatedAcceptLength: accLen };
}

/**
 * A prebuilt training (or evaluation) step of fixed shape (B, T, K) for one draft: the trainer writes or
 * binds the {@link Eagle3StepInputs}, then {@link Eagle3Step.run} submits the whole step (teacher, K-step
 * forward, losses, backward adding into the draft's gradients, metric accumulation) with no host sync.
 */
export class Eagle3Step implements Eagle3StepInputs {
  // The inputs (see Eagle3StepInputs): tensors the step owns, or the ones bound through `opts.inputs`.
  aux!: Tensor;
  ids!: Tensor;
  lengths!: Tensor;
  lossMask!: Tensor;
  teacherLogits!: Tensor;
  teacherArgmax!: Tensor;
  /** Metric sums f32 [K, 4] (see {@link eagle3MetricsFrom}); zero after {@link Eagle3Step.resetMetrics}. */
  readonly metrics: Tensor;
  /** The recorded step; {@link Eagle3Step.run} submits it (or encode it into a larger submission). */
  readonly program: Program;
  #runs = 0;

  /** Use {@link buildEagle3Step}. */
  constructor(
    readonly draft: Eagle3Draft,
    readonly batch: number,
    readonly seqLen: number,
    readonly tttLength: number,
    readonly train: boolean,
  ) {
    this.program = new Program(
      draft.gpu,
      `eagle3 ${train ? "train" : "eval"} step B${batch} T${seqLen} K${tttLength}`,
    );
    this.metrics = this.program.scratch([tttLength, METRIC_COLS], "f32", "metrics");
    this.metrics.write(new Float32Array(tttLength * METRIC_COLS));
  }

  /** Submits the step (no sync). Metrics accumulate across runs until {@link Eagle3Step.resetMetrics}. */
  run(): void {
    this.program.run();
    this.#runs++;
  }

  /** Zeroes the metric sums (ordered with the submissions). */
  resetMetrics(): void {
    this.metrics.write(new Float32Array(this.tttLength * METRIC_COLS));
    this.#runs = 0;
  }

  /** Reads the metrics accumulated since the last reset (one sync). */
  async readMetrics(): Promise<Eagle3Metrics> {
    return eagle3MetricsFrom(await this.metrics.readFloat(), this.tttLength, this.#runs);
  }

  /** Frees the program, its scratch and the tensors the step allocated (not bound inputs). */
  destroy(): void {
    this.program.destroy();
  }
}

function checkInput(name: string, t: Tensor, shape: number[], dtype: "f32" | "i32"): void {
  if (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new ShapeError(
      `eagle3 step: input ${name} (${t.label}) is ${t.dtype} ${shapeString(t.shape)}, expected ${dtype} ${
        shapeString(shape)
      }`,
    );
  }
}

/**
 * Builds the step program for `draft` (see the module comment for the math). Allocates the inputs not given in
 * `opts.inputs`, the saved activations of all K steps (about B·T·(8H + 3I + 4·nh·hd)·K floats, plus one
 * [B·T, Vd] logits and one teacher buffer) and the RoPE table for positions 0..T+K−2.
 */
export async function buildEagle3Step(draft: Eagle3Draft, opts: Eagle3StepOptions): Promise<Eagle3Step> {
  const cfg = draft.config;
  const { batch: B, seqLen: T, tttLength: K } = opts;
  const train = opts.train ?? true;
  const accum = opts.accumulationSteps ?? 1;
  for (const [name, v] of [["batch", B], ["seqLen", T], ["tttLength", K]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new ShapeError(`eagle3 step: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (!(accum >= 1 && Number.isInteger(accum))) {
    throw new ShapeError(`eagle3 step: accumulationSteps must be a positive integer, got ${accum}`);
  }
  const H = cfg.hiddenSize,
    I = cfg.intermediateSize,
    nh = cfg.numHeads,
    nkv = cfg.numKvHeads,
    hd = cfg.headDim;
  const Vd = cfg.draftVocabSize, V = cfg.vocabSize, Ht = cfg.targetHiddenSize;
  const N = B * T, Q = nh * hd, KV = nkv * hd;
  const emb = opts.embedding;
  if (emb.shape.length !== 2 || emb.shape[0] !== V || emb.shape[1] !== H) {
    throw new ShapeError(
      `eagle3 step: embedding (${emb.label}) ${shapeString(emb.shape)} does not match the draft config's ` +
        `vocab_size ${V} × hidden_size ${H}`,
    );
  }
  const vocab = opts.vocab;
  if (vocab.draftVocabSize !== Vd || vocab.targetVocabSize !== V) {
    throw new ShapeError(
      `eagle3 step: vocab mapping ${vocab.draftVocabSize} → ${vocab.targetVocabSize} does not match the draft ` +
        `config's draft_vocab_size ${Vd} and vocab_size ${V}`,
    );
  }

  const step = new Eagle3Step(draft, B, T, K, train);
  const p = step.program;
  const S = (shape: number[], dtype: "f32" | "i32", label: string) => p.scratch(shape, dtype, label);

  // Inputs: bound or owned.
  const shapes: Record<keyof Eagle3StepInputs, [number[], "f32" | "i32"]> = {
    aux: [[N, 3 * Ht], "f32"],
    ids: [[N], "i32"],
    lengths: [[B], "i32"],
    lossMask: [[N], "f32"],
    teacherLogits: [[N, Vd], "f32"],
    teacherArgmax: [[N], "i32"],
  };
  for (const name of Object.keys(shapes) as Array<keyof Eagle3StepInputs>) {
    const [shape, dtype] = shapes[name];
    const given = opts.inputs?.[name];
    if (given) checkInput(name, given, shape, dtype);
    step[name] = given ?? S(shape, dtype, `input ${name}`);
  }

  const W = draft.params, G = draft.grads;
  const toDraft = S([V], "i32", "target→draft map");
  toDraft.write(targetToDraftMap(vocab.draftToTarget, V));
  const maxPos = T + K - 1;
  const table = ropeTable(
    {
      ropeTheta: cfg.ropeTheta,
      ropeScaling: cfg.ropeScaling,
      maxPositionEmbeddings: cfg.maxPositionEmbeddings,
    },
    hd,
    maxPos,
  );
  const cos = S([maxPos, hd / 2], "f32", "rope cos");
  const sin = S([maxPos, hd / 2], "f32", "rope sin");
  cos.write(table.cos);
  sin.write(table.sin);

  // Saved activations: slot k per step when training; evaluation reuses slot 0 (y alternates 0/1).
  const slots = train ? K : 1;
  const perStep = (shape: number[], dtype: "f32" | "i32", label: string, n = slots) =>
    Array.from({ length: n }, (_, k) => S(shape, dtype, `${label}[${k}]`));
  const at = <X>(arr: X[], k: number) => arr[train ? k : 0];
  const idsK = perStep([N], "i32", "ids_k", K);
  const posMaskK = perStep([N], "f32", "pos_mask_k", K);
  const lossMaskK = perStep([N], "f32", "loss_mask_k", K);
  const targetK = perStep([N], "i32", "target_k", K);
  const e = perStep([N, H], "f32", "embed");
  const rstdIn = perStep([N], "f32", "rstd input_layernorm");
  const rstdHid = perStep([N], "f32", "rstd hidden_norm");
  const a = perStep([N, 2 * H], "f32", "attention input");
  const q = perStep([N, Q], "f32", "q");
  const att = perStep([N, Q], "f32", "attention out");
  const lse = perStep([B, nh, T], "f32", "attention lse");
  const r = perStep([N, H], "f32", "residual");
  const rstdPost = perStep([N], "f32", "rstd post_attention_layernorm");
  const n = perStep([N, H], "f32", "post norm");
  const gate = perStep([N, I], "f32", "gate");
  const up = perStep([N, I], "f32", "up");
  const act = perStep([N, I], "f32", "swiglu");
  const y = perStep([N, H], "f32", "layer out", train ? K : 2);
  const dyHead = train ? perStep([N, H], "f32", "d layer out (head)") : [];
  const h0 = S([N, H], "f32", "fc out");
  const normE = S([N, H], "f32", "normed embed");
  const normH = S([N, H], "f32", "normed hidden");
  const k0 = S([N, KV], "f32", "K prefix");
  const v0 = S([N, KV], "f32", "V prefix");
  const kd = K > 1 ? S([K - 1, N * KV], "f32", "K diagonal") : null;
  const vd = K > 1 ? S([K - 1, N * KV], "f32", "V diagonal") : null;
  const kTmp = S([N, KV], "f32", "k step");
  const vTmp = S([N, KV], "f32", "v step");
  const fn = S([N, H], "f32", "final norm");
  const rstdFin = S([N], "f32", "rstd norm");
  const logits = S([N, Vd], "f32", "logits");
  const target = S([N, Vd], "f32", "teacher p_k");
  const rowLoss = S([N], "f32", "row loss");
  const counts = S([2], "f32", "acc counts");
  const perRow = S([N, 2], "f32", "acc per row");
  const normScratch = S([Math.max(1, rmsnormScratchSize(N, H))], "f32", "rmsnorm dw partials");
  const dFn = train ? S([N, H], "f32", "d final norm") : null;

  const eps = cfg.rmsNormEps;
  const heads4 = (t: Tensor, heads: number) => t.reshape([B, T, heads, hd]);
  const diag = (t: Tensor | null, k: number) => t && k > 0 ? t.view(0, [k, B, T, nkv, hd]) : null;
  const stepSize = N * KV;
  const copyInto = (src: Tensor, dst: Tensor, dstOffset: number) =>
    copyStrided(p, src, dst, {
      count: [1, 1, src.size],
      srcStrides: [0, 0, 1],
      dstStrides: [0, 0, 1],
      dstOffset,
    });
  const copyOut = (src: Tensor, srcOffset: number, dst: Tensor) =>
    copyStrided(p, src, dst, {
      count: [1, 1, dst.size],
      srcStrides: [0, 0, 1],
      srcOffset,
      dstStrides: [0, 0, 1],
    });

  // ---------------- forward (+ loss and head backward per step) ----------------
  await linear(p, step.aux, W["fc.weight"], h0);
  for (let k = 0; k < K; k++) {
    await teacherRows(p, {
      ids: step.ids,
      argmax: step.teacherArgmax,
      lossMask: step.lossMask,
      toDraft,
      idsK: idsK[k],
      posMaskK: posMaskK[k],
      lossMaskK: lossMaskK[k],
      targetK: targetK[k],
    }, { seqLen: T, step: k });
    const hIn = k === 0 ? h0 : (train ? y[k - 1] : y[(k - 1) % 2]);
    const yk = train ? y[k] : y[k % 2];
    const ek = at(e, k), ak = at(a, k), qk = at(q, k), attk = at(att, k), rk = at(r, k), nk = at(n, k);
    await embeddingForward(p, idsK[k], emb, ek);
    await rmsnormForward(p, ek, W["midlayer.input_layernorm.weight"], normE, at(rstdIn, k), { eps });
    await copyColumns(p, normE, ak, 0);
    await rmsnormForward(p, hIn, W["midlayer.hidden_norm.weight"], normH, at(rstdHid, k), { eps });
    await copyColumns(p, normH, ak, H);
    await linear(p, ak, W["midlayer.self_attn.q_proj.weight"], qk);
    await ropeForward(p, heads4(qk, nh), heads4(qk, nh), cos, sin, { positionOffset: k });
    const kk = k === 0 ? k0 : kTmp, vk = k === 0 ? v0 : vTmp;
    await linear(p, ak, W["midlayer.self_attn.k_proj.weight"], kk);
    await ropeForward(p, heads4(kk, nkv), heads4(kk, nkv), cos, sin, { positionOffset: k });
    await linear(p, ak, W["midlayer.self_attn.v_proj.weight"], vk);
    if (k > 0) {
      await copyInto(kTmp, kd!, (k - 1) * stepSize);
      await copyInto(vTmp, vd!, (k - 1) * stepSize);
    }
    await attentionForward(p, {
      q: heads4(qk, nh),
      k: heads4(k0, nkv),
      v: heads4(v0, nkv),
      kd: diag(kd, k),
      vd: diag(vd, k),
      lengths: step.lengths,
      out: heads4(attk, nh),
      lse: at(lse, k),
    }, { causal: true });
    await linear(p, attk, W["midlayer.self_attn.o_proj.weight"], rk);
    await accumulate(p, rk, hIn);
    await rmsnormForward(p, rk, W["midlayer.post_attention_layernorm.weight"], nk, at(rstdPost, k), { eps });
    await linear(p, nk, W["midlayer.mlp.gate_proj.weight"], at(gate, k));
    await linear(p, nk, W["midlayer.mlp.up_proj.weight"], at(up, k));
    await swigluForward(p, at(gate, k), at(up, k), at(act, k));
    await linear(p, at(act, k), W["midlayer.mlp.down_proj.weight"], yk);
    await accumulate(p, yk, rk);
    await rmsnormForward(p, yk, W["norm.weight"], fn, rstdFin, { eps });
    await linear(p, fn, W["lm_head.weight"], logits);

    // Loss and metrics of step k. The agreement reads the logits before the loss overwrites them with ∂/∂z.
    await teacherProbs(p, step.teacherLogits, target, { seqLen: T, step: k });
    await argmaxAgreement(p, { logits, targetIds: targetK[k], mask: lossMaskK[k], counts, perRow });
    await softCrossEntropy(p, { logits, target, mask: posMaskK[k], rowLoss, grad: logits }, {
      denominator: N,
      gradScale: STEP_DECAY ** k / accum,
    });
    await metricsAdd(p, rowLoss, counts, step.metrics, { step: k, tokens: N });
    if (!train) continue;
    // Head backward now, so the logits buffer is free for step k + 1.
    await linearBackward(p, logits, fn, W["lm_head.weight"], dFn, G["lm_head.weight"], {
      accumulateDw: true,
    });
    await rmsnormBackward(p, dFn!, yk, W["norm.weight"], rstdFin, dyHead[k], G["norm.weight"], {
      accumulateDw: true,
      scratch: normScratch,
    });
  }
  if (!train) return step;

  // ---------------- backward through the TTT steps, last to first ----------------
  const dY = S([N, H], "f32", "dY");
  const dAct = S([N, I], "f32", "d swiglu"),
    dGate = S([N, I], "f32", "d gate"),
    dUp = S([N, I], "f32", "d up");
  const dN = S([N, H], "f32", "d post norm"), dR = S([N, H], "f32", "d residual");
  const dAtt = S([N, Q], "f32", "d attention out"), dQ = S([N, Q], "f32", "dq");
  const dK0 = S([N, KV], "f32", "dK prefix (step)"), dV0 = S([N, KV], "f32", "dV prefix (step)");
  const dK0Acc = S([N, KV], "f32", "dK prefix"), dV0Acc = S([N, KV], "f32", "dV prefix");
  const dKdPart = K > 1 ? S([K - 1, N * KV], "f32", "dK diagonal (step)") : null;
  const dVdPart = K > 1 ? S([K - 1, N * KV], "f32", "dV diagonal (step)") : null;
  const dKdAcc = K > 1 ? S([K - 1, N * KV], "f32", "dK diagonal") : null;
  const dVdAcc = K > 1 ? S([K - 1, N * KV], "f32", "dV diagonal") : null;
  const dKTmp = S([N, KV], "f32", "dk step"), dVTmp = S([N, KV], "f32", "dv step");
  const dA = S([N, 2 * H], "f32", "d attention input");
  const dNormE = S([N, H], "f32", "d normed embed"), dNormH = S([N, H], "f32", "d normed hidden");
  const dE = S([N, H], "f32", "d embed (discarded: frozen)");
  const dH = S([N, H], "f32", "d hidden");
  for (const t of [dK0Acc, dV0Acc, dKdAcc, dVdAcc]) if (t) await fill(p, t, 0);
  const accDw = { accumulateDw: true };
  const splitColumns = (src: Tensor, col0: number, dst: Tensor) =>
    copyStrided(p, src, dst, {
      count: [1, N, H],
      srcStrides: [0, 2 * H, 1],
      srcOffset: col0,
      dstStrides: [0, H, 1],
    });

  for (let k = K - 1; k >= 0; k--) {
    const hIn = k === 0 ? h0 : y[k - 1];
    // ∂/∂y^k = head part + ∂/∂h^{k+1} carried from step k + 1.
    const dYk = k === K - 1 ? dyHead[k] : dY;
    if (k < K - 1) await add(p, dyHead[k], dH, dY);
    // MLP and post-attention norm.
    await linearBackward(
      p,
      dYk,
      act[k],
      W["midlayer.mlp.down_proj.weight"],
      dAct,
      G["midlayer.mlp.down_proj.weight"],
      accDw,
    );
    await swigluBackward(p, dAct, gate[k], up[k], dGate, dUp);
    await linearBackward(
      p,
      dGate,
      n[k],
      W["midlayer.mlp.gate_proj.weight"],
      dN,
      G["midlayer.mlp.gate_proj.weight"],
      accDw,
    );
    await linearBackward(
      p,
      dUp,
      n[k],
      W["midlayer.mlp.up_proj.weight"],
      dN,
      G["midlayer.mlp.up_proj.weight"],
      {
        accumulateDx: true,
        accumulateDw: true,
      },
    );
    await rmsnormBackward(
      p,
      dN,
      r[k],
      W["midlayer.post_attention_layernorm.weight"],
      rstdPost[k],
      dR,
      G["midlayer.post_attention_layernorm.weight"],
      { accumulateDw: true, scratch: normScratch },
    );
    await accumulate(p, dR, dYk); // y = r + mlp(r)
    // Attention output projection and attention.
    await linearBackward(
      p,
      dR,
      att[k],
      W["midlayer.self_attn.o_proj.weight"],
      dAtt,
      G["midlayer.self_attn.o_proj.weight"],
      accDw,
    );
    await attentionBackward(p, {
      q: heads4(q[k], nh),
      k: heads4(k0, nkv),
      v: heads4(v0, nkv),
      kd: diag(kd, k),
      vd: diag(vd, k),
      lengths: step.lengths,
      out: heads4(att[k], nh),
      lse: lse[k],
      dout: heads4(dAtt, nh),
      dq: heads4(dQ, nh),
      dk: heads4(dK0, nkv),
      dv: heads4(dV0, nkv),
      dkd: diag(dKdPart, k),
      dvd: diag(dVdPart, k),
    }, { causal: true });
    await accumulate(p, dK0Acc, dK0);
    await accumulate(p, dV0Acc, dV0);
    if (k > 0) {
      await accumulate(p, dKdAcc!.view(0, [k * N * KV]), dKdPart!.view(0, [k * N * KV]));
      await accumulate(p, dVdAcc!.view(0, [k * N * KV]), dVdPart!.view(0, [k * N * KV]));
    }
    // Every step ≥ k has added its share to K^k, V^k: their gradients are complete.
    let dKk = dK0Acc, dVk = dV0Acc;
    if (k > 0) {
      await copyOut(dKdAcc!, (k - 1) * stepSize, dKTmp);
      await copyOut(dVdAcc!, (k - 1) * stepSize, dVTmp);
      dKk = dKTmp;
      dVk = dVTmp;
    }
    await ropeBackward(p, heads4(dQ, nh), heads4(dQ, nh), cos, sin, { positionOffset: k });
    await ropeBackward(p, heads4(dKk, nkv), heads4(dKk, nkv), cos, sin, { positionOffset: k });
    await linearBackward(
      p,
      dQ,
      a[k],
      W["midlayer.self_attn.q_proj.weight"],
      dA,
      G["midlayer.self_attn.q_proj.weight"],
      accDw,
    );
    await linearBackward(
      p,
      dKk,
      a[k],
      W["midlayer.self_attn.k_proj.weight"],
      dA,
      G["midlayer.self_attn.k_proj.weight"],
      {
        accumulateDx: true,
        accumulateDw: true,
      },
    );
    await linearBackward(
      p,
      dVk,
      a[k],
      W["midlayer.self_attn.v_proj.weight"],
      dA,
      G["midlayer.self_attn.v_proj.weight"],
      {
        accumulateDx: true,
        accumulateDw: true,
      },
    );
    // The two input norms (the embedding's gradient is dropped: it is frozen).
    await splitColumns(dA, 0, dNormE);
    await splitColumns(dA, H, dNormH);
    await rmsnormBackward(
      p,
      dNormE,
      e[k],
      W["midlayer.input_layernorm.weight"],
      rstdIn[k],
      dE,
      G["midlayer.input_layernorm.weight"],
      { accumulateDw: true, scratch: normScratch },
    );
    await rmsnormBackward(
      p,
      dNormH,
      hIn,
      W["midlayer.hidden_norm.weight"],
      rstdHid[k],
      dH,
      G["midlayer.hidden_norm.weight"],
      { accumulateDw: true, scratch: normScratch },
    );
    await accumulate(p, dH, dR); // r = h + o_proj(att): dH = ∂/∂h^k
  }
  await linearBackward(p, dH, step.aux, W["fc.weight"], null, G["fc.weight"], accDw);
  return step;
}
