/**
 * One DFlash training micro-batch of a fixed shape (nb samples of S tokens, N blocks of B each), forward and
 * backward, as SpecForge's `OnlineDFlashModel.forward` (specforge/algorithms/common/dflash_family_model.py)
 * over `DFlashDraftModel` (specforge/modeling/draft/dflash.py), on R = nb·N·B block rows and C = nb·S
 * context rows:
 *
 *   c = RMSNorm_hid(features · W_fcᵀ)                                   [C, H], once for every layer
 *   h⁰ = embed(block tokens)                                             [R, H], the frozen target embedding
 *   layer j:  x = RMSNorm_in(h);  q = RoPE(RMSNorm_q(x·W_qᵀ))  per head, at the block positions
 *             k = RoPE(RMSNorm_k([c; x]·W_kᵀ)),  v = [c; x]·W_vᵀ          context rows at 0..S−1, block rows
 *             r = h + attention(q, k, v)·W_oᵀ                            (lib/ops/dflash_attention.ts masks)
 *             h' = r + down(silu(gate(n)) ⊙ up(n)),  n = RMSNorm_post(r)
 *   z = RMSNorm_final(h_L) · lm_headᵀ                                    the frozen target head, [R, V]
 *   loss numerator Σ ω·CE(z, y)  (lib/ops/dflash_loss.ts), its gradient scaled by the caller's `gradScale`
 *
 * z exists for a window of `headRows` rows at a time (./dflash_head.ts), the lm_head as row blocks when it
 * does not bind whole.
 *
 * The backward ADDS every parameter's gradient into the draft's (micro-batches accumulate); the embedding,
 * lm_head and the target features get none. All tensors belong to the step's program.
 */
import { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { linear, linearBackward } from "../ops/matmul.ts";
import { rmsnormBackward, rmsnormForward, rmsnormScratchSize } from "../ops/rmsnorm.ts";
import { ropeBackward, ropeForward, ropeTable } from "../ops/rope.ts";
import { gatedLinear, swigluDownBackward } from "../ops/gated_mlp.ts";
import { swigluForward } from "../ops/swiglu.ts";
import { accumulate } from "../ops/elementwise.ts";
import { asRowSplit, embeddingRows, type RowSplitMatrix } from "../ops/row_split.ts";
import {
  dflashAttentionBackward,
  type DflashAttentionDims,
  dflashAttentionForward,
  dflashBlockRow0,
} from "../ops/dflash_attention.ts";
import { type DflashLossType, SLOT_SUM_COLS } from "../ops/dflash_loss.ts";
import { dflashHeadObjective, dflashWindowRows } from "./dflash_head.ts";
import type { MlpSavedDtype } from "../ops/gated_mlp.ts";
import { type DflashDraft, dflashLayerNames } from "./dflash.ts";

/** The shape and settings of a {@link DflashStep}. */
export interface DflashStepOptions {
  /** nb: samples per micro-batch. */
  batches: number;
  /** S: tokens per sample (the context rows). */
  seq: number;
  /** N: blocks per sample. */
  blocks: number;
  /** The objective. */
  lossType: DflashLossType;
  /** α of the D-PACE weights (SpecForge `dpace_alpha`, default 0.5). */
  dpaceAlpha: number;
  /** The frozen target embedding [V, H]. */
  embedding: Tensor | RowSplitMatrix;
  /** The frozen target lm_head [V, H] (row blocks when it does not bind whole). */
  lmHead: Tensor | RowSplitMatrix;
  /**
   * Rows of the head's window (--head-chunk-rows; rounded down to whole blocks at multiples of 64 rows,
   * ./dflash_head.ts `dflashWindowRows`); absent or null: every row at once.
   */
  headRows?: number | null;
  /** The captured target features [C, K·H] to read (the target forward's output); absent: the step's own. */
  features?: Tensor;
  /**
   * The dtype a training step keeps each layer's MLP gate and up in (--mlp-saved-dtype; default f32; evaluation
   * steps keep f32): f16 halves their bytes, and act is then computed from the f16 values.
   */
  mlpSaved?: MlpSavedDtype;
}

/** One layer's saved activations. */
interface LayerActs {
  /** The layer's input h [R, H] (the previous layer's output, or the block embeddings). */
  input: Tensor;
  rstdX: Tensor;
  x: Tensor;
  qRaw: Tensor;
  rstdQ: Tensor;
  q: Tensor;
  kRaw: Tensor;
  rstdK: Tensor;
  k: Tensor;
  v: Tensor;
  att: Tensor;
  stats: Tensor;
  resid: Tensor;
  rstdPost: Tensor;
  postNorm: Tensor;
  /** gate(n) [R, I], f32 or f16 (--mlp-saved-dtype). */
  gate: Tensor;
  /** up(n) [R, I], as gate. */
  up: Tensor;
  /** silu(gate) ⊙ up: one buffer every layer shares (the backward makes it again from gate and up). */
  act: Tensor;
  out: Tensor;
}

/** The tensors the host writes before each run (see {@link DflashStep.write}). */
export interface DflashStepInputs {
  /** The captured target features [C, K·H]. */
  features: Tensor;
  /** Block tokens [R] (i32). */
  noiseIds: Tensor;
  /** Labels [R] (i32). */
  labels: Tensor;
  /** w [R]. */
  weights: Tensor;
  /** ω = w·d_k [R] for `dflash` (the host writes it; D-PACE computes its own). */
  omega: Tensor;
  /** s [1]: the loss gradient is that of s·Σ ω·CE (1/Σ den over the optimizer window). */
  gradScale: Tensor;
  /** RoPE rows of the block positions [R, hd/2]. */
  cos: Tensor;
  /** As cos. */
  sin: Tensor;
  /** The attention ranges of the full layers (u32). */
  fullRanges: Tensor;
  /** The attention ranges of the sliding layers (u32). */
  slidingRanges: Tensor;
}

/** A built micro-batch step; see the module comment. */
export class DflashStep {
  /** Inputs to write before {@link run}. */
  readonly inputs: DflashStepInputs;
  /** Per row: lse, CE, [argmax = label] [R, 3], after a run. */
  readonly rowStats: Tensor;
  /** Per block slot: Σ w·ce, Σ w, Σ correct·[w > 0.5], Σ ω·ce [B, 4], accumulated over runs until reset. */
  readonly sums: Tensor;
  /** Runs since the last {@link resetSums}. */
  runs = 0;
  /** RMSNorm_final(h_L) [R, H], after a run. */
  readonly hidden: Tensor;
  /**
   * The logits of the last window [W, V] (W = R with one window) until the backward overwrites them with
   * their gradient.
   */
  readonly logits: Tensor;
  /** R: the block rows. */
  readonly rows: number;
  /** The attention shapes. */
  readonly dims: DflashAttentionDims;

  private constructor(
    readonly program: Program,
    readonly draft: DflashDraft,
    readonly opts: DflashStepOptions,
  ) {
    const cfg = draft.config, { batches: nb, seq: S, blocks: N } = opts;
    const R = nb * N * cfg.blockSize, C = nb * S;
    const kvw = cfg.numKvHeads * cfg.headDim;
    const R0 = dflashBlockRow0(C, kvw, program.gpu.limits.minStorageBufferOffsetAlignment);
    this.dims = {
      batches: nb,
      seq: S,
      queries: N * cfg.blockSize,
      heads: cfg.numHeads,
      kvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      blockRow0: R0,
    };
    const f32 = (shape: number[], label: string) => program.scratch(shape, "f32", label);
    const tableLength = R * 4 + (R0 + R) * 2;
    this.inputs = {
      features: opts.features ?? f32([C, cfg.targetLayerIds.length * cfg.hiddenSize], "features"),
      noiseIds: program.scratch([R], "i32", "noise ids"),
      labels: program.scratch([R], "i32", "labels"),
      weights: f32([R], "weights"),
      omega: f32([R], "omega"),
      gradScale: f32([1], "gradient scale"),
      cos: f32([R, cfg.headDim / 2], "block cos"),
      sin: f32([R, cfg.headDim / 2], "block sin"),
      fullRanges: program.scratch([tableLength], "u32", "full ranges"),
      slidingRanges: program.scratch([tableLength], "u32", "sliding ranges"),
    };
    this.rowStats = f32([R, 3], "row stats");
    this.sums = f32([cfg.blockSize, SLOT_SUM_COLS], "slot sums");
    this.sums.write(new Float32Array(this.sums.size));
    this.hidden = f32([R, cfg.hiddenSize], "final hidden");
    this.rows = R;
    this.logits = f32([dflashWindowRows(R, opts.headRows ?? null, cfg.blockSize), cfg.vocabSize], "logits");
  }

  /** Builds the step's program for `draft` (forward, loss, and with `train` the backward). */
  static async build(draft: DflashDraft, opts: DflashStepOptions, train = true): Promise<DflashStep> {
    const step = new DflashStep(new Program(draft.gpu, "dflash step"), draft, opts);
    await step.#record(train);
    return step;
  }

  /** Submits the program (no sync). */
  run(): void {
    this.program.run();
    this.runs++;
  }

  /** Zeroes {@link sums}. */
  resetSums(): void {
    this.sums.write(new Float32Array(this.sums.size));
    this.runs = 0;
  }

  /** Frees every tensor of the step. */
  destroy(): void {
    this.program.destroy();
  }

  async #record(train: boolean): Promise<void> {
    const p = this.program, cfg = this.draft.config, { seq: S } = this.opts;
    const f32 = (shape: number[], label: string) => p.scratch(shape, "f32", label);
    const { batches: nb } = this.opts, R = this.rows, C = nb * S, H = cfg.hiddenSize;
    const ctxTable = ropeTable(cfg, cfg.headDim, S);
    const ctxRope = {
      cos: f32([S, cfg.headDim / 2], "context cos"),
      sin: f32([S, cfg.headDim / 2], "context sin"),
    };
    ctxRope.cos.write(ctxTable.cos);
    ctxRope.sin.write(ctxTable.sin);
    const fcOut = f32([C, H], "fc out"), rstdC = f32([C], "rstd c"), c = f32([C, H], "c");
    await linear(p, this.inputs.features, this.draft.param("fc.weight"), fcOut);
    await rmsnormForward(p, fcOut, this.draft.param("hidden_norm.weight"), c, rstdC, { eps: cfg.rmsNormEps });
    const noise = f32([R, H], "noise");
    await embeddingRows(p, asRowSplit(this.opts.embedding), this.inputs.noiseIds, noise);
    // act = silu(gate) ⊙ up: one buffer for every layer, since the backward makes it again from the saved gate
    // and up where down_proj's weight gradient reads it (#layerBackward).
    const act = f32([R, cfg.intermediateSize], "act (every layer)");
    const layers: LayerActs[] = [];
    let h = noise;
    for (let j = 0; j < cfg.numLayers; j++) {
      const acts = this.#layerActs(h, j, act, train ? this.opts.mlpSaved ?? "f32" : "f32");
      await this.#layerForward(acts, j, c, ctxRope);
      layers.push(acts);
      h = acts.out;
    }
    const rstdF = f32([R], "rstd final");
    await rmsnormForward(p, h, this.draft.param("norm.weight"), this.hidden, rstdF, { eps: cfg.rmsNormEps });
    const dh = train ? f32([R, H], "d hidden") : null;
    await this.#objective(dh);
    if (!dh) return;
    const dhL = f32([R, H], "d h");
    const scratch = f32([Math.max(1, this.#normScratch())], "norm scratch");
    await rmsnormBackward(
      p,
      dh,
      h,
      this.draft.param("norm.weight"),
      rstdF,
      dhL,
      this.draft.grad("norm.weight"),
      {
        accumulateDw: true,
        scratch,
      },
    );
    const dc = f32([C, H], "d c");
    for (let j = cfg.numLayers - 1; j >= 0; j--) {
      await this.#layerBackward(layers[j], j, {
        dh: dhL,
        dc,
        first: j === cfg.numLayers - 1,
        scratch,
        c,
        ctxRope,
      });
    }
    const dfc = f32([C, H], "d fc out");
    await rmsnormBackward(
      p,
      dc,
      fcOut,
      this.draft.param("hidden_norm.weight"),
      rstdC,
      dfc,
      this.draft.grad("hidden_norm.weight"),
      {
        accumulateDw: true,
        scratch,
      },
    );
    await linearBackward(
      p,
      dfc,
      this.inputs.features,
      this.draft.param("fc.weight"),
      null,
      this.draft.grad("fc.weight"),
      {
        accumulateDw: true,
      },
    );
  }

  /** Floats of the shared RMSNorm weight-gradient scratch: the largest norm of the step. */
  #normScratch(): number {
    const cfg = this.draft.config, R = this.rows, kr = this.dims.blockRow0 + R;
    return Math.max(
      rmsnormScratchSize(R, cfg.hiddenSize),
      rmsnormScratchSize(this.opts.batches * this.opts.seq, cfg.hiddenSize),
      rmsnormScratchSize(R * cfg.numHeads, cfg.headDim),
      rmsnormScratchSize(kr * cfg.numKvHeads, cfg.headDim),
    );
  }

  #layerActs(input: Tensor, j: number, act: Tensor, saved: MlpSavedDtype): LayerActs {
    const cfg = this.draft.config, R = this.rows, KR = this.dims.blockRow0 + R;
    const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
    const f32 = (shape: number[], label: string) => this.program.scratch(shape, "f32", `layer ${j} ${label}`);
    // The padding key rows between the context and block rows are never written: zero, so their norm is finite.
    const zeros = (shape: number[], label: string) => {
      const t = f32(shape, label);
      t.write(new Float32Array(t.size));
      return t;
    };
    return {
      input,
      rstdX: f32([R], "rstd x"),
      x: f32([R, H], "x"),
      qRaw: f32([R, nh * hd], "q raw"),
      rstdQ: f32([R * nh], "rstd q"),
      q: f32([R, nh * hd], "q"),
      kRaw: zeros([KR, nkv * hd], "k raw"),
      rstdK: f32([KR * nkv], "rstd k"),
      k: zeros([KR, nkv * hd], "k"),
      v: zeros([KR, nkv * hd], "v"),
      att: f32([R, nh * hd], "att"),
      stats: f32([R * nh, 2], "attention stats"),
      resid: f32([R, H], "residual"),
      rstdPost: f32([R], "rstd post"),
      postNorm: f32([R, H], "post norm"),
      gate: this.program.scratch([R, I], saved, `layer ${j} gate`),
      up: this.program.scratch([R, I], saved, `layer ${j} up`),
      act,
      out: f32([R, H], "out"),
    };
  }

  /** The context rows [0, C) and the block rows [R0, R0 + R) of a key/value tensor. */
  #keyParts(t: Tensor): { ctx: Tensor; block: Tensor } {
    const C = this.opts.batches * this.opts.seq, R = this.rows, w = t.shape[1];
    return { ctx: t.view(0, [C, w]), block: t.view(this.dims.blockRow0 * w, [R, w]) };
  }

  async #rope(
    t: Tensor,
    heads: number,
    backward: boolean,
    ctxRope: { cos: Tensor; sin: Tensor },
  ): Promise<void> {
    const p = this.program, hd = this.draft.config.headDim, { batches: nb, seq: S } = this.opts;
    const apply = backward ? ropeBackward : ropeForward;
    if (t.shape[0] === this.rows) {
      const x = t.reshape([1, t.shape[0], heads, hd]);
      return await apply(p, x, x, this.inputs.cos, this.inputs.sin);
    }
    const { ctx, block } = this.#keyParts(t);
    const xc = ctx.reshape([nb, S, heads, hd]), xb = block.reshape([1, block.shape[0], heads, hd]);
    await apply(p, xc, xc, ctxRope.cos, ctxRope.sin);
    await apply(p, xb, xb, this.inputs.cos, this.inputs.sin);
  }

  async #layerForward(
    a: LayerActs,
    j: number,
    c: Tensor,
    ctxRope: { cos: Tensor; sin: Tensor },
  ): Promise<void> {
    const p = this.program,
      cfg = this.draft.config,
      n = dflashLayerNames(j),
      W = (s: string) => this.draft.param(s);
    const eps = { eps: cfg.rmsNormEps }, hd = cfg.headDim, R = a.x.shape[0], KR = a.k.shape[0];
    await rmsnormForward(p, a.input, W(n.inputNorm), a.x, a.rstdX, eps);
    await linear(p, a.x, W(n.q), a.qRaw);
    await rmsnormForward(
      p,
      a.qRaw.reshape([R * cfg.numHeads, hd]),
      W(n.qNorm),
      a.q.reshape([R * cfg.numHeads, hd]),
      a.rstdQ,
      eps,
    );
    await this.#rope(a.q, cfg.numHeads, false, ctxRope);
    for (const [w, out] of [[n.k, a.kRaw], [n.v, a.v]] as const) {
      const parts = this.#keyParts(out);
      await linear(p, c, W(w), parts.ctx);
      await linear(p, a.x, W(w), parts.block);
    }
    await rmsnormForward(
      p,
      a.kRaw.reshape([KR * cfg.numKvHeads, hd]),
      W(n.kNorm),
      a.k.reshape([KR * cfg.numKvHeads, hd]),
      a.rstdK,
      eps,
    );
    await this.#rope(a.k, cfg.numKvHeads, false, ctxRope);
    const ranges = cfg.layerTypes[j] === "sliding_attention"
      ? this.inputs.slidingRanges
      : this.inputs.fullRanges;
    await dflashAttentionForward(
      p,
      { q: a.q, k: a.k, v: a.v, ranges, out: a.att, stats: a.stats },
      this.dims,
    );
    await linear(p, a.att, W(n.o), a.resid);
    await accumulate(p, a.resid, a.input);
    await rmsnormForward(p, a.resid, W(n.postNorm), a.postNorm, a.rstdPost, eps);
    await gatedLinear(
      p,
      a.postNorm,
      W(n.gate),
      W(n.up),
      { act: a.act, gate: a.gate, up: a.up, keep: true },
      "silu",
    );
    await linear(p, a.act, W(n.down), a.out);
    await accumulate(p, a.out, a.resid);
  }

  /**
   * The layer's backward. `dh` holds ∂/∂(the layer's output) and becomes ∂/∂(its input); ∂/∂c is added to
   * `dc` (overwritten by the `first` layer visited).
   */
  async #layerBackward(
    a: LayerActs,
    j: number,
    s: {
      dh: Tensor;
      dc: Tensor;
      first: boolean;
      scratch: Tensor;
      c: Tensor;
      ctxRope: { cos: Tensor; sin: Tensor };
    },
  ): Promise<void> {
    const p = this.program, cfg = this.draft.config, n = dflashLayerNames(j);
    const W = (x: string) => this.draft.param(x), G = (x: string) => this.draft.grad(x);
    const R = a.x.shape[0], KR = a.k.shape[0], hd = cfg.headDim, H = cfg.hiddenSize;
    const t = (shape: number[], label: string) => p.transient(`dflash ${label}`, shape, "f32");
    const acc = { accumulateDw: true };
    // MLP: h' = r + down(act), act made again from the saved gate and up (the forward's bits: kernels/swiglu.ts
    // GATE_FUNCTIONS) into the buffer every layer shares.
    await swigluForward(p, a.gate, a.up, a.act);
    const dAct = t([R, cfg.intermediateSize], "d act"), dGate = t([R, cfg.intermediateSize], "d gate");
    const dUp = t([R, cfg.intermediateSize], "d up"), dPost = t([R, H], "d post");
    await swigluDownBackward(p, s.dh, a, W(n.down), { dAct, dGate, dUp, dWDown: G(n.down) }, acc);
    await linearBackward(p, dGate, a.postNorm, W(n.gate), dPost, G(n.gate), acc);
    await linearBackward(p, dUp, a.postNorm, W(n.up), dPost, G(n.up), { ...acc, accumulateDx: true });
    await rmsnormBackward(p, dPost, a.resid, W(n.postNorm), a.rstdPost, s.dh, G(n.postNorm), {
      ...acc,
      accumulateDx: true,
      scratch: s.scratch,
    });
    // Attention: r = h + o_proj(att)
    const dAtt = t([R, cfg.numHeads * hd], "d att");
    await linearBackward(p, s.dh, a.att, W(n.o), dAtt, G(n.o), acc);
    const dq = t([R, cfg.numHeads * hd], "d q"), dk = t([KR, cfg.numKvHeads * hd], "d k");
    const dv = t([KR, cfg.numKvHeads * hd], "d v");
    const ranges = cfg.layerTypes[j] === "sliding_attention"
      ? this.inputs.slidingRanges
      : this.inputs.fullRanges;
    await dflashAttentionBackward(p, { q: a.q, k: a.k, v: a.v, ranges, out: a.att, stats: a.stats }, {
      dout: dAtt,
      dq,
      dk,
      dv,
    }, this.dims);
    const dx = t([R, H], "d x");
    // q = RoPE(RMSNorm_q(x·W_qᵀ))
    await this.#rope(dq, cfg.numHeads, true, s.ctxRope);
    const dqRaw = t([R, cfg.numHeads * hd], "d q raw");
    await rmsnormBackward(
      p,
      dq.reshape([R * cfg.numHeads, hd]),
      a.qRaw.reshape([R * cfg.numHeads, hd]),
      W(n.qNorm),
      a.rstdQ,
      dqRaw.reshape([R * cfg.numHeads, hd]),
      G(n.qNorm),
      { ...acc, scratch: s.scratch },
    );
    await linearBackward(p, dqRaw, a.x, W(n.q), dx, G(n.q), acc);
    // k = RoPE(RMSNorm_k([c; x]·W_kᵀ)), v = [c; x]·W_vᵀ
    await this.#rope(dk, cfg.numKvHeads, true, s.ctxRope);
    const dkRaw = t([KR, cfg.numKvHeads * hd], "d k raw");
    await rmsnormBackward(
      p,
      dk.reshape([KR * cfg.numKvHeads, hd]),
      a.kRaw.reshape([KR * cfg.numKvHeads, hd]),
      W(n.kNorm),
      a.rstdK,
      dkRaw.reshape([KR * cfg.numKvHeads, hd]),
      G(n.kNorm),
      { ...acc, scratch: s.scratch },
    );
    for (const [w, grad] of [[n.k, dkRaw], [n.v, dv]] as const) {
      const g = this.#keyParts(grad), first = s.first && w === n.k;
      await linearBackward(p, g.ctx, s.c, W(w), s.dc, G(w), { ...acc, accumulateDx: !first });
      await linearBackward(p, g.block, a.x, W(w), dx, G(w), { ...acc, accumulateDx: true });
    }
    // x = RMSNorm_in(h); the residual's gradient is already in dh
    await rmsnormBackward(p, dx, a.input, W(n.inputNorm), a.rstdX, s.dh, G(n.inputNorm), {
      ...acc,
      accumulateDx: true,
      scratch: s.scratch,
    });
  }

  /**
   * CE statistics per row, the D-PACE weights, and (training, `dh`) the gradient of the numerator Σ ω·CE in
   * place of the logits and ∂/∂hidden into `dh`, window by window (./dflash_head.ts). The denominator is the
   * caller's: SpecForge back-propagates the numerator and divides the accumulated gradients by Σ den over the
   * optimizer window (specforge/training/controller.py).
   */
  async #objective(dh: Tensor | null): Promise<void> {
    const { lossType, dpaceAlpha } = this.opts, inp = this.inputs;
    await dflashHeadObjective(this.program, {
      hidden: this.hidden,
      dHidden: dh,
      logits: this.logits,
      lmHead: asRowSplit(this.opts.lmHead),
      stats: this.rowStats,
      labels: inp.labels,
      w: inp.weights,
      omega: inp.omega,
      scale: inp.gradScale,
      sums: this.sums,
    }, { lossType, dpaceAlpha, blockSize: this.draft.config.blockSize });
  }
}
