/**
 * The EAGLE-3 draft model (SpecForge's `LlamaForCausalLMEagle3`, `specforge/modeling/draft/llama3_eagle.py`):
 * its parameters ({@link Eagle3Draft}) and its training step over the test-time-training (TTT) unroll
 * ({@link buildEagle3Step}; SpecForge `specforge/core/eagle3.py` `OnlineEagle3Model.forward`), forward and
 * backward on the GPU. The layers themselves (fc, midlayer, head) are lib/models/eagle3_layer.ts, shared with
 * inference; the attention across TTT positions is lib/models/eagle3_ttt_attention.ts; every tensor a step
 * allocates is named in lib/models/eagle3_activations.ts.
 *
 * Math of one training step, per TTT position k = 0..K−1 (rows t of each sequence, all in f32):
 *
 *   h⁰ = fc(aux)                                   aux = the target's 3 captured hidden states [B·T, 3·H_t]
 *   u^k_t = x_{t+k+1} (0 past the end)             teacher-forced tokens; e^k = embed(u^k) (frozen, target's)
 *   y^k = midlayer(e^k, h^k), attention over {K⁰_s, s ≤ t, s < len_b} ∪ {K^j_t, 1 ≤ j ≤ k}, RoPE at t + k
 *   h^{k+1} = y^k (pre-norm, fed back);  z^k = lm_head(RMSNorm_final(y^k)) over the draft vocab [B·T, Vd]
 *   loss_k = Σ_t [pos_mask^k_t ≠ 0] · (−Σ_v p^k_tv · log_softmax(z^k_t)_v) / (B·T)
 *   loss   = Σ_k γ^k · loss_k / accumulationSteps   (γ: stepDecay, SpecForge's fixed 0.8)
 *
 * with the teacher p^k_t = softmax(L_{t+k+1}[t2d]) (uniform 1/Vd past the end), pos_mask^k_t = M_{t+k} ·
 * t2d[argmax L_{t+k+1}] (SpecForge `_compute_target_p` and `specforge/utils.py` `padding`: the one-position
 * shift and the TTT padding folded in, see kernels/eagle3.ts); the loss is SpecForge's `LogSoftmaxLoss`
 * (`specforge/core/loss.py`). acc_k follows SpecForge's current trainer: Σ_t [d2t-mapped argmax z^k_t ==
 * argmax L_{t+k+1}] · M_{t+k} / Σ_t M_{t+k} (the classic scripts instead compared with the draft-vocab argmax
 * of p^k and masked the numerator by pos_mask; both count targets outside the draft vocab as wrong). RoPE
 * positions are t + k (the classic scripts' sdpa path used t).
 *
 * Precision deviation: SpecForge runs the draft in bf16 (weights, activations, RoPE table) with fp32 master
 * weights; Eaglet does everything in f32 (weights, activations, gradients), so it matches SpecForge's math
 * in exact arithmetic and PyTorch f64 to f32 rounding.
 *
 * Backward: the head (final norm + lm_head) is differentiated right after each position's loss, so one
 * logits buffer serves all positions; then positions run in reverse, carrying ∂/∂h^{k+1} into position k (the
 * fed-back hidden chain); the TTT attention accumulates the gradients of K⁰/V⁰ (read by every position) and
 * of each diagonal K^j/V^j (read by positions ≥ j). Gradients are ADDED into {@link Eagle3Draft.grads} so
 * that micro-batches accumulate; zero them after each optimizer update.
 */
import type { Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { shapeString, Tensor } from "../tensor.ts";
import type { VocabMapping } from "../data/vocab.ts";
import { mulberry32 } from "../data/random.ts";
import { ropeTable } from "../ops/rope.ts";
import type { LkLossOptions } from "../ops/lk_loss.ts";
import { add, fill } from "../ops/elementwise.ts";
import { targetToDraftMap, teacherRows } from "../ops/eagle3_teacher.ts";
import type { DraftConfig } from "./draft_config.ts";
import { asRowSplit, type RowSplitMatrix } from "../ops/row_split.ts";
import { type Eagle3Metrics, eagle3MetricsFrom, STEP_DECAY } from "./eagle3_metrics.ts";
import {
  eagle3FcBackward,
  eagle3FcForward,
  eagle3FinalNormBackward,
  eagle3LayerBackward,
  eagle3LayerForward,
} from "./eagle3_layer.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import {
  eagle3ActivationBytes,
  type Eagle3Activations,
  eagle3Activations,
  type Eagle3StepShape,
} from "./eagle3_activations.ts";
import { resetTttAttentionGrads, TttAttention, tttKeysOf } from "./eagle3_ttt_attention.ts";
import { eagle3HeadLoss, HEAD_WINDOW_ALIGN } from "./eagle3_head_loss.ts";

/** SpecForge's state-dict keys of the trained draft parameters (`LlamaForCausalLMEagle3`), in a fixed order. */
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

/** EAGLE-3.1's per-state norms before fc (`fc_norm: true`), in capture order. */
export const FC_NORM_PARAM_NAMES = ["fc_norm.0.weight", "fc_norm.1.weight", "fc_norm.2.weight"] as const;

/** A parameter of every draft ({@link EAGLE3_PARAM_NAMES}). */
export type Eagle3CoreParamName = typeof EAGLE3_PARAM_NAMES[number];

/** A parameter of a draft: {@link EAGLE3_PARAM_NAMES}, or one of {@link FC_NORM_PARAM_NAMES} with `fc_norm`. */
export type Eagle3ParamName = Eagle3CoreParamName | typeof FC_NORM_PARAM_NAMES[number];

/** Something per parameter of a draft: every core parameter, the fc_norm ones when the config has them. */
export type PerEagle3Param<X> = Record<Eagle3CoreParamName, X> & Partial<Record<Eagle3ParamName, X>>;

/** The parameter names of a draft with config `cfg`, in a fixed order (fc, its norms, midlayer, head). */
export function eagle3ParamNames(cfg: DraftConfig): Eagle3ParamName[] {
  const [fc, ...rest] = EAGLE3_PARAM_NAMES;
  return cfg.fcNorm ? [fc, ...FC_NORM_PARAM_NAMES, ...rest] : [...EAGLE3_PARAM_NAMES];
}

/**
 * The shape of every parameter of a draft with config `cfg` (all Linear layers without bias), by name: the
 * names of {@link eagle3ParamNames}(cfg) and no other.
 */
export function eagle3ParamShapes(cfg: DraftConfig): Record<Eagle3CoreParamName | string, number[]> {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const shapes: Record<Eagle3CoreParamName | string, number[]> = {
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
  if (cfg.fcNorm) { for (const name of FC_NORM_PARAM_NAMES) shapes[name] = [cfg.targetHiddenSize]; }
  return shapes;
}

/** Host weights by state-dict key. */
export type Eagle3Weights = Map<string, Float32Array>;

/**
 * The initialisation of SpecForge's classic scripts (`LlamaForCausalLMEagle3` does not call post_init, so
 * PyTorch's defaults apply): every Linear weight [out, in] ~ U(−1/√in, 1/√in) (nn.Linear's
 * kaiming_uniform(a=√5)), every RMSNorm weight 1.
 * The values come from one {@link mulberry32} stream seeded with `seed`, drawn parameter after parameter in
 * {@link EAGLE3_PARAM_NAMES} order, row-major, w = (2u − 1)/√in, rounded to f32 (not bit-equal to torch's
 * RNG; the distribution is the same).
 */
export function initEagle3Weights(cfg: DraftConfig, seed: number): Eagle3Weights {
  const rand = mulberry32(seed);
  const shapes = eagle3ParamShapes(cfg);
  const out: Eagle3Weights = new Map();
  for (const name of eagle3ParamNames(cfg)) {
    const shape = shapes[name]!;
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
 * The draft's trainable parameters and their gradients, on the GPU, f32, under SpecForge's key names. The
 * frozen embedding and the vocab mapping are not parameters: they are given to {@link buildEagle3Step}.
 */
export class Eagle3Draft {
  /** Parameters by key (f32, shapes of {@link eagle3ParamShapes}). */
  readonly params: PerEagle3Param<Tensor>;
  #grads: PerEagle3Param<Tensor> | null = null;
  /** The parameter names of this draft ({@link eagle3ParamNames}). */
  readonly names: readonly Eagle3ParamName[];
  #zero: Program | null = null;

  private constructor(readonly gpu: Gpu, readonly config: DraftConfig) {
    this.names = eagle3ParamNames(config);
    this.params = this.#make(false, "draft");
  }

  #make(zero: boolean, prefix: string): PerEagle3Param<Tensor> {
    const shapes = eagle3ParamShapes(this.config), gpu = this.gpu;
    const out: Partial<Record<Eagle3ParamName, Tensor>> = {};
    for (const name of this.names) {
      const shape = shapes[name]!, label = `${prefix} ${name}`;
      out[name] = zero ? Tensor.zeros(gpu, shape, "f32", label) : Tensor.empty(gpu, shape, "f32", label);
    }
    return out as PerEagle3Param<Tensor>; // every core name is in this.names
  }

  /**
   * Gradients by key, same shapes, zero when made; training steps ADD into them. Made on first use, so that a
   * draft only evaluated (lib/eval) holds none.
   */
  get grads(): PerEagle3Param<Tensor> {
    return this.#grads ??= this.#make(true, "draft grad");
  }

  /**
   * A draft with weights from {@link initEagle3Weights}(config, seed) (default seed 0) or from `weights`
   * (every key of {@link eagle3ParamNames}, checked), and zero gradients.
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

  /** [name, parameter, gradient] for every parameter, in {@link Eagle3Draft.names} order. */
  entries(): Array<[Eagle3ParamName, Tensor, Tensor]> {
    return this.names.map((n) => [n, this.params[n]!, this.grads[n]!]);
  }

  /** Copies host weights into the parameters; every key must be present with its exact element count. */
  setWeights(weights: Eagle3Weights): void {
    for (const name of this.names) {
      const t = this.params[name]!;
      const w = weights.get(name);
      if (!w) throw new ShapeError(`eagle3 weights: ${name} is missing`);
      if (w.length !== t.size) {
        throw new ShapeError(
          `eagle3 weights: ${name} has ${w.length} values, expected ${shapeString(t.shape)} (${t.size})`,
        );
      }
      t.write(w as Float32Array<ArrayBuffer>);
    }
    for (const key of weights.keys()) {
      if (!(this.names as readonly string[]).includes(key)) {
        throw new ShapeError(`eagle3 weights: unexpected key ${key}`);
      }
    }
  }

  /** Reads every parameter to the host (one sync per tensor). */
  async getWeights(): Promise<Eagle3Weights> {
    const out: Eagle3Weights = new Map();
    for (const name of this.names) out.set(name, await this.params[name]!.readFloat());
    return out;
  }

  /** Reads every gradient to the host (one sync per tensor). */
  async getGrads(): Promise<Eagle3Weights> {
    const out: Eagle3Weights = new Map();
    for (const [name, , g] of this.entries()) out.set(name, await g.readFloat());
    return out;
  }

  /** A program that sets every gradient to 0 (built once; append it to the optimizer's program or run it). */
  async zeroGradsProgram(): Promise<Program> {
    if (!this.#zero) {
      const p = new Program(this.gpu, "eagle3 zero grads");
      for (const [, , g] of this.entries()) await fill(p, g, 0);
      this.#zero = p;
    }
    return this.#zero;
  }

  /** Submits {@link zeroGradsProgram} (no sync). */
  async zeroGrads(): Promise<void> {
    (await this.zeroGradsProgram()).run();
  }

  /** Frees parameters, gradients (when made) and the zeroing program. */
  destroy(): void {
    this.#zero?.destroy();
    for (const name of this.names) {
      this.params[name]!.destroy();
      this.#grads?.[name]?.destroy();
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
  /**
   * The frozen embedding the draft shares with the target [V, H] (f32, f16 or bf16; SpecForge
   * `load_embedding` + `freeze_embedding`): the target's `embed`, one tensor or row blocks.
   */
  embedding: Tensor | RowSplitMatrix;
  /** The draft ↔ target vocabulary mapping (d2t, t2d; lib/data/vocab.ts). */
  vocab: VocabMapping;
  /** Forward + loss + backward (default true); false = forward and metrics only (evaluation). */
  train?: boolean;
  /** The gradient is of loss / accumulationSteps (default 1). The metrics are not scaled. */
  accumulationSteps?: number;
  /** γ: TTT position k's loss is weighted γ^k (default {@link STEP_DECAY}, SpecForge's 0.8). */
  stepDecay?: number;
  /**
   * Rows of the head's windows (lib/models/eagle3_head_loss.ts): the logits, teacher probabilities and KL
   * gradient hold this many rows, not B·T. A multiple of 64; default null: one window of B·T rows.
   */
  headRows?: number | null;
  /**
   * Train with an acceptance-targeted LK loss (lib/ops/lk_loss.ts) instead of the KL loss (default null: the
   * KL loss, as SpecForge). Needs the `teacherMaxSum` input.
   */
  lk?: LkLossOptions | null;
  /**
   * The dtype a training step keeps the MLP's gate and up in for the backward (default f32): f16 halves their
   * bytes, and the layer then computes act from their f16 values (lib/ops/gated_mlp.ts). Needs an even
   * intermediate_size.
   */
  mlpSaved?: MlpSavedDtype;
  /**
   * Measure the expected acceptance α_k (metrics' `acceptance`; needs `teacherMaxSum`). Default: when `lk` is
   * set or `inputs.teacherMaxSum` is bound.
   */
  acceptance?: boolean;
  /**
   * Input tensors to use instead of allocating them (e.g. the TargetForward's `aux`, `subsetLogits`,
   * `vocabArgmax`, `vocabMaxSum`, `ids`, `lengths`), so that nothing is copied; shapes and dtypes are checked.
   */
  inputs?: Partial<Eagle3StepInputs>;
  /**
   * The teacher logits' producer instead of the `teacherLogits` input (default null): each head window
   * records its teacher rows from it (lib/models/eagle3_head_loss.ts), so the [B·T, Vd] tensor never exists.
   */
  teacherSource?: TeacherSource | null;
}

/**
 * What makes the teacher logits of the draft vocabulary a window of rows at a time (lib/models/
 * teacher_source.ts: the target's final hidden states times its lm_head rows, or stored top-k rows rebuilt).
 */
export interface TeacherSource {
  /** Rows it covers (B·T). */
  readonly rows: number;
  /** Its columns: the draft vocabulary. */
  readonly vocab: number;
  /** Records rows [row0, row0 + out.shape[0]) of the teacher logits into `out` f32 [rows, vocab] (row0 % 64 = 0). */
  record(p: Program, row0: number, out: Tensor): Promise<void>;
}

/** Rows of the teacher logits a step holds with a {@link TeacherSource}: a head window and the K rows past it. */
export function teacherWindowRows(
  s: { batch: number; seqLen: number; tttLength: number; headRows?: number },
): number {
  const N = s.batch * s.seqLen;
  return Math.min(N, (s.headRows ?? N) + s.tttLength);
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
  /**
   * The target logits' full-vocabulary running (max, Σ exp(x − max)), f32 [B·T, 2], UNshifted: their
   * log-sum-exp is max + log Σ (read only for the expected acceptance and the LK losses).
   */
  teacherMaxSum: Tensor;
}

/**
 * A prebuilt training (or evaluation) step of fixed shape (B, T, K) for one draft: the trainer writes or
 * binds the {@link Eagle3StepInputs}, then {@link Eagle3Step.run} submits the whole step (teacher, K-position
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
  teacherMaxSum!: Tensor;
  /** The teacher logits' producer; with it, `teacherLogits` holds one window's rows ({@link teacherWindowRows}). */
  teacherSource: TeacherSource | null = null;
  /** Every tensor the step allocated besides its inputs, by name (lib/models/eagle3_activations.ts). */
  readonly activations: Eagle3Activations;
  /** The bytes of {@link Eagle3Step.activations} ({@link eagle3ActivationBytes} of this shape). */
  readonly activationBytes: number;
  /** The recorded step; {@link Eagle3Step.run} submits it (or encode it into a larger submission). */
  readonly program: Program;
  #runs = 0;

  /** Use {@link buildEagle3Step}. */
  constructor(readonly draft: Eagle3Draft, readonly shape: Eagle3StepShape) {
    const { batch, seqLen, tttLength, train } = shape;
    this.program = new Program(
      draft.gpu,
      `eagle3 ${train ? "train" : "eval"} step B${batch} T${seqLen} K${tttLength}`,
    );
    const p = this.program;
    this.activations = eagle3Activations(
      (sh, dtype, label) => p.scratch(sh, dtype, label),
      draft.config,
      shape,
    );
    this.activationBytes = eagle3ActivationBytes(draft.config, shape);
    this.resetMetrics();
  }

  /** Metric sums f32 [K, 4] (see {@link eagle3MetricsFrom}); zero after {@link Eagle3Step.resetMetrics}. */
  get metrics(): Tensor {
    return this.activations.metrics;
  }

  /** Micro-batches run since the last {@link Eagle3Step.resetMetrics} (their metrics are in the sums). */
  get runs(): number {
    return this.#runs;
  }

  /** Submits the step (no sync). Metrics accumulate across runs until {@link Eagle3Step.resetMetrics}. */
  run(): void {
    this.program.run();
    this.#runs++;
  }

  /** Zeroes the metric sums (ordered with the submissions). */
  resetMetrics(): void {
    this.metrics.write(new Float32Array(this.metrics.size));
    this.#runs = 0;
  }

  /** Reads the metrics accumulated since the last reset (one sync). */
  async readMetrics(): Promise<Eagle3Metrics> {
    const { tttLength, stepDecay } = this.shape;
    return eagle3MetricsFrom(await this.metrics.readFloat(), tttLength, this.#runs, stepDecay);
  }

  /** Frees the program, its scratch and the tensors the step allocated (not bound inputs). */
  destroy(): void {
    this.program.destroy();
  }
}

/**
 * Builds the step program for `draft` (the math is in the module comment): the inputs not given in
 * `opts.inputs`, the {@link Eagle3Activations} of the shape, then the forward over the K TTT positions (each
 * followed by its loss and the head's backward, so one logits buffer serves them all) and the backward from
 * the last position to the first.
 */
export async function buildEagle3Step(draft: Eagle3Draft, opts: Eagle3StepOptions): Promise<Eagle3Step> {
  const shape = checkStepOptions(draft.config, opts);
  const step = new Eagle3Step(draft, shape);
  const p = step.program, act = step.activations, K = shape.tttLength;
  // Only the optimizer writes the weights: each is packed once per run where read from a texture.
  p.readOnly(...draft.names.map((n) => draft.params[n]!));
  step.teacherSource = opts.teacherSource ?? null;
  bindInputs(step, opts.inputs ?? {});
  writeConstants(draft.config, opts.vocab, shape, act);
  const attentionAt = (k: number) =>
    new TttAttention(
      draft.config,
      shape,
      act.attention,
      step.lengths,
      k,
      shape.train ? k : 0,
      act.grads?.attention,
    );
  // Evaluation reuses one record: its output alternates, its keys are the position's (tttKeysOf).
  const layerAt = (k: number) =>
    shape.train ? act.layer[k] : {
      ...act.layer[0],
      ...tttKeysOf(act.attention, k),
      out: k % 2 === 0 ? act.layer[0].out : act.altOut!,
    };
  // The hidden state position k consumes: h⁰, else the previous position's output (or its normed form).
  const headAt = (k: number) => act.head[k % act.head.length];
  const hiddenIn = (k: number) =>
    k === 0 ? act.fcOut : draft.config.feedNormedHidden ? headAt(k - 1).normed : layerAt(k - 1).out;

  await eagle3FcForward(p, draft, step.aux, act.fcOut, act.fc);
  for (let k = 0; k < K; k++) {
    const teacher = act.teacher[k];
    await teacherRows(p, {
      ids: step.ids,
      argmax: step.teacherArgmax,
      lossMask: step.lossMask,
      toDraft: act.targetToDraft,
      idsK: teacher.ids,
      posMaskK: teacher.posMask,
      lossMaskK: teacher.lossMask,
      targetK: teacher.targetIds,
    }, { seqLen: shape.seqLen, position: k });
    const x = { ids: teacher.ids, embedding: asRowSplit(opts.embedding), hidden: hiddenIn(k) };
    await eagle3LayerForward(p, draft, x, layerAt(k), attentionAt(k));
    const g = act.grads;
    const headGrads = g && { dY: g.headOut[k], dNormed: g.headNormed, normScratch: g.layer.normScratch };
    const scale = (step.shape.stepDecay ?? STEP_DECAY) ** k / (opts.accumulationSteps ?? 1);
    await eagle3HeadLoss(step, k, layerAt(k).out, headAt(k), headGrads, scale);
  }
  const g = act.grads;
  if (!g) return step;

  await resetTttAttentionGrads(p, g.attention);
  for (let k = K - 1; k >= 0; k--) {
    // ∂/∂y^k = the head's share + ∂/∂h^{k+1} carried from position k + 1 (through the final norm when the
    // normed state was fed).
    let dOut = g.headOut[k];
    if (k < K - 1) {
      let carried = g.layer.hidden;
      if (g.carried) {
        await eagle3FinalNormBackward(
          p,
          draft,
          act.layer[k].out,
          headAt(k),
          carried,
          g.carried,
          g.layer.normScratch,
        );
        carried = g.carried;
      }
      await add(p, g.headOut[k], carried, g.out);
      dOut = g.out;
    }
    await eagle3LayerBackward(p, draft, hiddenIn(k), act.layer[k], dOut, g.layer, attentionAt(k));
  }
  await eagle3FcBackward(p, draft, step.aux, g.layer.hidden, act.fc, g.fc);
  return step;
}

/** Throws unless `embedding` is [vocab_size, hidden_size] of `cfg`; `where` starts the message. */
export function checkEmbedding(where: string, embedding: Tensor | RowSplitMatrix, cfg: DraftConfig): void {
  const m = asRowSplit(embedding), V = cfg.vocabSize, H = cfg.hiddenSize;
  const is2d = "blocks" in embedding || embedding.shape.length === 2;
  if (!is2d || m.rows !== V || m.cols !== H) {
    const what = "blocks" in embedding
      ? `[${m.rows}, ${m.cols}] in ${m.blocks.length} blocks`
      : `(${embedding.label}) ${shapeString(embedding.shape)}`;
    throw new ShapeError(
      `${where}: embedding ${what} does not match the draft config's vocab_size ${V} × hidden_size ${H}`,
    );
  }
}

/** Checks the options against the draft config; returns the step's shape. */
function checkStepOptions(cfg: DraftConfig, opts: Eagle3StepOptions): Eagle3StepShape {
  const { batch, seqLen, tttLength } = opts;
  for (const [name, v] of [["batch", batch], ["seqLen", seqLen], ["tttLength", tttLength]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new ShapeError(`eagle3 step: ${name} must be a positive integer, got ${v}`);
    }
  }
  const accum = opts.accumulationSteps ?? 1;
  if (!(accum >= 1 && Number.isInteger(accum))) {
    throw new ShapeError(`eagle3 step: accumulationSteps must be a positive integer, got ${accum}`);
  }
  const headRows = opts.headRows ?? null;
  if (
    headRows !== null && !(Number.isInteger(headRows) && headRows > 0 && headRows % HEAD_WINDOW_ALIGN === 0)
  ) {
    throw new ShapeError(
      `eagle3 step: headRows must be a positive multiple of ${HEAD_WINDOW_ALIGN}, got ${headRows}`,
    );
  }
  const decay = opts.stepDecay ?? STEP_DECAY;
  if (!(decay >= 0 && Number.isFinite(decay))) {
    throw new ShapeError(`eagle3 step: stepDecay must be a finite number ≥ 0, got ${decay}`);
  }
  checkEmbedding("eagle3 step", opts.embedding, cfg);
  const vocab = opts.vocab;
  if (vocab.draftVocabSize !== cfg.draftVocabSize || vocab.targetVocabSize !== cfg.vocabSize) {
    throw new ShapeError(
      `eagle3 step: vocab mapping ${vocab.draftVocabSize} → ${vocab.targetVocabSize} does not match the draft ` +
        `config's draft_vocab_size ${cfg.draftVocabSize} and vocab_size ${cfg.vocabSize}`,
    );
  }
  const lk = opts.lk ?? null;
  const acceptance = opts.acceptance ?? (lk !== null || opts.inputs?.teacherMaxSum !== undefined);
  if (lk && !acceptance) throw new ShapeError("eagle3 step: an LK loss needs the acceptance measured");
  const rows = Math.min(batch * seqLen, headRows ?? Infinity);
  const mlpSaved = opts.mlpSaved ?? "f32";
  if (mlpSaved !== "f32" && mlpSaved !== "f16") {
    throw new ShapeError(`eagle3 step: mlpSaved must be f32 or f16, got ${mlpSaved}`);
  }
  if (mlpSaved === "f16" && cfg.intermediateSize % 2 !== 0) {
    throw new ShapeError(
      `eagle3 step: f16 saved gate and up need an even intermediate_size, got ${cfg.intermediateSize}`,
    );
  }
  return {
    batch,
    seqLen,
    tttLength,
    train: opts.train ?? true,
    lk,
    acceptance,
    stepDecay: decay,
    headRows: rows,
    mlpSaved,
  };
}

/** Binds the given inputs (shapes and dtypes checked) and allocates the others in the step's program. */
function bindInputs(step: Eagle3Step, given: Partial<Eagle3StepInputs>): void {
  const cfg = step.draft.config, { batch: B, seqLen: T } = step.shape, N = B * T;
  const shapes: Record<keyof Eagle3StepInputs, [number[], "f32" | "i32"]> = {
    aux: [[N, 3 * cfg.targetHiddenSize], "f32"],
    ids: [[N], "i32"],
    lengths: [[B], "i32"],
    lossMask: [[N], "f32"],
    teacherLogits: [[N, cfg.draftVocabSize], "f32"],
    teacherArgmax: [[N], "i32"],
    teacherMaxSum: [[N, 2], "f32"],
  };
  const source = step.teacherSource;
  if (source) {
    if (source.rows !== N || source.vocab !== cfg.draftVocabSize) {
      throw new ShapeError(
        `eagle3 step: a teacher source of [${source.rows}, ${source.vocab}] for [${N}, ${cfg.draftVocabSize}]`,
      );
    }
    if (given.teacherLogits) throw new ShapeError("eagle3 step: teacherLogits given with a teacherSource");
    step.teacherLogits = step.program.scratch(
      [teacherWindowRows(step.shape), cfg.draftVocabSize],
      "f32",
      "teacher logits window",
    );
  }
  for (const name of Object.keys(shapes) as Array<keyof Eagle3StepInputs>) {
    if (name === "teacherLogits" && source) continue;
    const [shape, dtype] = shapes[name];
    const t = given[name];
    if (
      t && (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    ) {
      throw new ShapeError(
        `eagle3 step: input ${name} (${t.label}) is ${t.dtype} ${shapeString(t.shape)}, expected ${dtype} ${
          shapeString(shape)
        }`,
      );
    }
    step[name] = t ?? step.program.scratch(shape, dtype, `input ${name}`);
  }
}

/** Uploads the constant tensors: the target → draft index and the RoPE table of positions 0..T+K−2. */
function writeConstants(
  cfg: DraftConfig,
  vocab: VocabMapping,
  s: Eagle3StepShape,
  act: Eagle3Activations,
): void {
  act.targetToDraft.write(targetToDraftMap(vocab.draftToTarget, cfg.vocabSize));
  const table = ropeTable(cfg, cfg.headDim, s.seqLen + s.tttLength - 1);
  act.attention.cos.write(table.cos);
  act.attention.sin.write(table.sin);
}
