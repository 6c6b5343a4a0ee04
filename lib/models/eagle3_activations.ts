/**
 * Every tensor an EAGLE-3 training (or evaluation) step of shape (B, T, K) allocates besides its inputs and
 * the draft's parameters and gradients, named in one record ({@link Eagle3Activations}) and laid out by one
 * function ({@link eagle3Activations}) that serves both the allocation (lib/models/eagle3.ts) and the byte
 * count ({@link eagle3ActivationBytes}), so the count is the allocation's by construction.
 *
 * Training keeps one midlayer record per TTT position (the backward reads them all); evaluation keeps one and
 * alternates two output buffers (position k reads k − 1's output). One logits buffer serves every position:
 * the head's backward runs right after each position's loss.
 */
import type { DraftConfig } from "./draft_config.ts";
import {
  type Eagle3FcActivations,
  eagle3FcActivations,
  type Eagle3FcGrads,
  eagle3FcGrads,
  type Eagle3HeadActivations,
  eagle3HeadActivations,
  type Eagle3LayerActivations,
  eagle3LayerActivations,
  type Eagle3LayerGrads,
  eagle3LayerGrads,
  type MakeTensor,
} from "./eagle3_layer.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import {
  type TttAttentionGrads,
  tttAttentionGrads,
  type TttAttentionTensors,
  tttAttentionTensors,
  tttKeysOf,
  type TttShape,
} from "./eagle3_ttt_attention.ts";
import { METRIC_COLS } from "./eagle3_metrics.ts";
import { rmsnormScratchSize } from "../ops/rmsnorm.ts";
import { DTYPE_BYTES, numel, type Tensor } from "../tensor.ts";
import type { LkLossOptions } from "../ops/lk_loss.ts";
import { planned, type PlannedTensor, splitScratchTensors } from "./target_memory.ts";

/** The shape of a step: B sequences of T rows, K TTT positions, training or evaluation only. */
export interface Eagle3StepShape extends TttShape {
  /** Forward + loss + backward (true) or forward and metrics only (false). */
  train: boolean;
  /** The LK loss the step trains with (lib/ops/lk_loss.ts), null or absent for the KL loss. */
  lk?: LkLossOptions | null;
  /** Whether the step measures the expected acceptance α_k (default false). */
  acceptance?: boolean;
  /** γ: the loss of TTT position k is weighted γ^k (default 0.8, SpecForge's). */
  stepDecay?: number;
  /** Rows of the head's windows: the rows of the logits and the KL gradient (default B·T). */
  headRows?: number;
  /** The dtype a training step keeps gate and up in (default f32; evaluation steps keep f32). */
  mlpSaved?: MlpSavedDtype;
}

/** The teacher rows of TTT position k (lib/ops/eagle3_teacher.ts `teacherRows`), each [B·T]. */
export interface TeacherRows<T = Tensor> {
  /** u^k = x_{t+k+1} (0 past the end), i32. */
  ids: T;
  /** Rows whose loss counts: M_{t+k} · t2d[argmax L_{t+k+1}], f32. */
  posMask: T;
  /** M_{t+k}: the rows acc_k counts, f32. */
  lossMask: T;
  /** argmax L_{t+k+1} over the target vocabulary, i32. */
  targetIds: T;
}

/** The backward's tensors (training steps only). */
export interface Eagle3StepGrads<T = Tensor> {
  /** ∂/∂y^k of the head's share, per TTT position [B·T, H]. */
  headOut: T[];
  /** ∂/∂RMSNorm_final(y) [B·T, H] (scratch of the head's backward). */
  headNormed: T;
  /** ∂/∂y^k in total (head share + ∂/∂h^{k+1} carried back) [B·T, H]. */
  out: T;
  /** ∂/∂y^k of the next position's share through the final norm (fed normed state only) [B·T, H]. */
  carried: T | null;
  /** fc's backward scratch with fc_norm. */
  fc: Eagle3FcGrads<T> | null;
  /** The midlayer backward's scratch; its `hidden` carries ∂/∂h^k to position k − 1. */
  layer: Eagle3LayerGrads<T>;
  /** The TTT attention's backward scratch and key/value gradient sums. */
  attention: TttAttentionGrads<T>;
}

/** Everything a step allocates besides its inputs, by name. */
export interface Eagle3Activations<T = Tensor> {
  /** t2d as an index: target id → draft id or −1, i32 [V]. */
  targetToDraft: T;
  /** Metric sums per TTT position, f32 [K, 4] (lib/models/eagle3_metrics.ts). */
  metrics: T;
  /** Teacher rows per TTT position. */
  teacher: TeacherRows<T>[];
  /** What fc saves with fc_norm. */
  fc: Eagle3FcActivations<T> | null;
  /** h⁰ = fc(aux) [B·T, H]. */
  fcOut: T;
  /** The midlayer's saved tensors per TTT position (training), or one record (evaluation). */
  layer: Eagle3LayerActivations<T>[];
  /** Evaluation: the second output buffer (positions alternate between it and layer[0].out). */
  altOut: T | null;
  /** The keys and values the positions share, RoPE tables, log-sum-exps. */
  attention: TttAttentionTensors<T>;
  /**
   * Final norm + lm_head: one record whose normed rows are overwritten by each position, or, when the
   * normed state is fed to the next position, one per position (training) or two alternating (evaluation).
   * All share one logits buffer.
   */
  head: Eagle3HeadActivations<T>[];
  /** Each row's loss [B·T]. */
  rowLoss: T;
  /** Correct and counted rows of the current position [2]. */
  accCounts: T;
  /** The same per row [B·T, 2]. */
  accPerRow: T;
  /** The expected acceptance of the current position: (α, S) per row [B·T, 2] and the masked sums [4]. */
  acceptance: { rows: T; stats: T } | null;
  /** The KL gradient the LK loss mixes in [headRows, Vd] (LK training only; else it goes over the logits). */
  klGrad: T | null;
  /** The backward's tensors (null when evaluating). */
  grads: Eagle3StepGrads<T> | null;
}

/** The layout of a step's tensors; `make` allocates (or counts) each one. */
export function eagle3Activations<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  s: Eagle3StepShape,
): Eagle3Activations<T> {
  const N = s.batch * s.seqLen, K = s.tttLength, H = cfg.hiddenSize;
  const slots = s.train ? K : 1;
  const headSlots = cfg.feedNormedHidden ? (s.train ? K : 2) : 1;
  const R = s.headRows ?? N, Vd = cfg.draftVocabSize;
  const logits = make([R, Vd], "f32", "logits");
  const perPosition = <X>(n: number, f: (k: number) => X) => Array.from({ length: n }, (_, k) => f(k));
  const attention = tttAttentionTensors(make, cfg, s, slots);
  // act = silu(gate) ⊙ up: one buffer for every position, since the backward makes it again from the saved
  // gate and up (lib/models/eagle3_layer.ts eagle3LayerBackward) where its weight gradient reads it.
  const act = make([N, cfg.intermediateSize], "f32", "act (every position)");
  const layer = perPosition(slots, (k) =>
    eagle3LayerActivations(
      (shape, dtype, label) => make(shape, dtype, `${label}[${k}]`),
      cfg,
      N,
      { ...tttKeysOf(attention, k), act },
      s.train ? s.mlpSaved : "f32",
    ));
  return {
    targetToDraft: make([cfg.vocabSize], "i32", "target→draft map"),
    metrics: make([K, METRIC_COLS], "f32", "metrics"),
    teacher: perPosition(K, (k) => ({
      ids: make([N], "i32", `ids_k[${k}]`),
      posMask: make([N], "f32", `pos_mask_k[${k}]`),
      lossMask: make([N], "f32", `loss_mask_k[${k}]`),
      targetIds: make([N], "i32", `target_k[${k}]`),
    })),
    fc: eagle3FcActivations(make, cfg, N),
    fcOut: make([N, H], "f32", "fc out"),
    layer,
    altOut: s.train ? null : make([N, H], "f32", "out (alternate)"),
    attention,
    head: perPosition(
      headSlots,
      (k) =>
        eagle3HeadActivations((shape, dtype, label) => make(shape, dtype, `${label}[${k}]`), cfg, N, logits),
    ),
    rowLoss: make([N], "f32", "row loss"),
    accCounts: make([2], "f32", "acc counts"),
    accPerRow: make([N, 2], "f32", "acc per row"),
    acceptance: s.acceptance || s.lk
      ? { rows: make([N, 2], "f32", "acceptance per row"), stats: make([4], "f32", "acceptance sums") }
      : null,
    klGrad: s.lk && s.train ? make([R, Vd], "f32", "KL gradient") : null,
    grads: s.train
      ? {
        headOut: perPosition(K, (k) => make([N, H], "f32", `d out (head)[${k}]`)),
        headNormed: make([N, H], "f32", "d final norm"),
        out: make([N, H], "f32", "d out"),
        carried: cfg.feedNormedHidden ? make([N, H], "f32", "d out (carried)") : null,
        fc: eagle3FcGrads(make, cfg, N),
        layer: eagle3LayerGrads(make, cfg, N, rmsnormScratchSize(N, H)),
        attention: tttAttentionGrads(make, cfg, s),
      }
      : null,
  };
}

/**
 * The bytes of every tensor {@link eagle3Activations} lays out for this shape (what one cached step program
 * holds besides its inputs, the draft's weights and gradients, and the matmuls' split-K partials).
 */
export function eagle3ActivationBytes(cfg: DraftConfig, s: Eagle3StepShape): number {
  let bytes = 0;
  eagle3Activations(
    (shape, dtype) => {
      bytes += numel(shape) * DTYPE_BYTES[dtype];
      return shape;
    },
    cfg,
    s,
  );
  return bytes;
}

/**
 * The tensors a step program of this shape allocates, as planned tensors (lib/train/memory_plan.ts): every
 * tensor of {@link eagle3Activations}, the loss-mask input (which no batch source supplies) and the shared
 * scratch of split weights (`splits`: whether the frozen embedding is in row blocks, and the block row counts
 * of the draft's matrices over one binding). Not counted: the matmuls' split-K partials, small beside these.
 */
export function eagle3StepTensors(
  cfg: DraftConfig,
  s: Eagle3StepShape,
  splits: { embedSplit: boolean; matrixBlockRows: number[] },
): PlannedTensor[] {
  const out: PlannedTensor[] = [];
  eagle3Activations((shape, dtype, label) => out.push(planned(label, shape, dtype)), cfg, s);
  const N = s.batch * s.seqLen;
  out.push(planned("input lossMask", [N], "f32"));
  out.push(...splitScratchTensors(N, cfg.hiddenSize, splits.embedSplit, splits.matrixBlockRows));
  return out;
}
