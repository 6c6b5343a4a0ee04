/**
 * The EAGLE-3 draft's layers, forward and backward side by side, shared by training (every TTT position of
 * lib/models/eagle3.ts) and by inference (lib/eval/draft_infer.ts). SpecForge's
 * `specforge/modeling/draft/llama3_eagle.py` (`LlamaForCausalLMEagle3`: `fc`, the one `midlayer`
 * `LlamaDecoderLayer`, `norm`, `lm_head`) and SGLang's `python/sglang/srt/models/llama_eagle3.py` compute the
 * same, on R rows (all f32):
 *
 *   fc:        h⁰ = [RMSNorm_i(aux_i)]_i · W_fcᵀ               aux = the target's 3 captured states [R, 3·H_t];
 *              the per-state norms only with EAGLE-3.1's fc_norm (SpecForge `project_hidden_states`)
 *   midlayer:  a = [RMSNorm_in(embed(u)), RMSNorm_hid(h)]     [R, 2H], embedding first
 *              q, k, v = a·W_{q,k,v}ᵀ;  att = attention(RoPE(q), RoPE(k), v)   (the caller's {@link Eagle3Attention})
 *              r = h + att·W_oᵀ;  y = r + down(silu(gate(n)) ⊙ up(n)),  n = RMSNorm_post(r)
 *   head:      z = lm_head(RMSNorm_final(y)) over the draft vocabulary [R, Vd] (lm_head(y) for SpecForge's
 *              norm_output: false); the next position consumes y, or RMSNorm_final(y) with EAGLE-3.1's
 *              norm_output: true as SGLang serves it (DraftConfig.feedNormedHidden)
 *
 * Which keys a row attends and at which position its RoPE is taken is the only thing that differs between
 * training (the TTT prefix + diagonal pattern) and inference (a KV cache with a tree mask), so the layer takes
 * it as an {@link Eagle3Attention}, as the target's decoder layer takes an `Attend` (lib/models/target.ts).
 *
 * Backward functions ADD the weight gradients into the draft's gradients (micro-batches accumulate).
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { linear, linearBackward } from "../ops/matmul.ts";
import { gatedLinear, type MlpSavedDtype, swigluDownBackward } from "../ops/gated_mlp.ts";
import { swigluForward } from "../ops/swiglu.ts";
import { rmsnormBackward, rmsnormForward, rmsnormScratchSize } from "../ops/rmsnorm.ts";
import { embeddingRows, type RowSplitMatrix } from "../ops/row_split.ts";
import { accumulate, copyStrided } from "../ops/elementwise.ts";
import type { DraftConfig } from "./draft_config.ts";
import { type Eagle3Draft, FC_NORM_PARAM_NAMES } from "./eagle3.ts";

/** Makes one named tensor of a layout: a GPU allocation, or (for counting) just its size. */
export type MakeTensor<T> = (shape: number[], dtype: "f32" | "f16" | "i32", label: string) => T;

/**
 * What one pass of the midlayer over R rows computes and its backward reads (the input norms write straight
 * into `attnInput`'s column blocks; the backward re-derives them from `embed`, `hidden` and the rstd).
 */
export interface Eagle3LayerActivations<T = Tensor> {
  /** e = embed(u) [R, H]. */
  embed: T;
  /** 1/rms of each row of e [R]. */
  rstdEmbed: T;
  /** 1/rms of each row of the input hidden h [R]. */
  rstdHidden: T;
  /** a = [RMSNorm_in(e), RMSNorm_hid(h)] [R, 2H]. */
  attnInput: T;
  /** q [R, nh·hd], RoPE applied. */
  q: T;
  /** This pass's keys [R, nkv·hd] (RoPE applied; the attention keeps them). */
  k: T;
  /** This pass's values [R, nkv·hd]. */
  v: T;
  /** Attention output [R, nh·hd]. */
  att: T;
  /** r = h + o_proj(att) [R, H]. */
  residual: T;
  /** 1/rms of each row of r [R]. */
  rstdPost: T;
  /** n = RMSNorm_post(r) [R, H]. */
  postNorm: T;
  /** gate(n) [R, I] (f16 with --mlp-saved-dtype f16). */
  gate: T;
  /** up(n) [R, I] (f16 with --mlp-saved-dtype f16). */
  up: T;
  /**
   * silu(gate) ⊙ up [R, I]: in training one buffer shared by every TTT position, since the backward makes it
   * again from gate and up.
   */
  act: T;
  /** y = r + down(act) [R, H], the layer's output (fed back as the next TTT position's hidden). */
  out: T;
}

/**
 * The layout of one midlayer pass over `rows` rows; `shared` supplies tensors another pass also uses, `saved`
 * is gate's and up's dtype.
 */
export function eagle3LayerActivations<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  rows: number,
  shared: Partial<Eagle3LayerActivations<T>> = {},
  saved: MlpSavedDtype = "f32",
): Eagle3LayerActivations<T> {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const f = (name: keyof Eagle3LayerActivations, cols: number[], dtype: "f32" | "f16" = "f32") =>
    shared[name] ?? make([rows, ...cols], dtype, name);
  return {
    embed: f("embed", [H]),
    rstdEmbed: shared.rstdEmbed ?? make([rows], "f32", "rstdEmbed"),
    rstdHidden: shared.rstdHidden ?? make([rows], "f32", "rstdHidden"),
    attnInput: f("attnInput", [2 * H]),
    q: f("q", [nh * hd]),
    k: f("k", [nkv * hd]),
    v: f("v", [nkv * hd]),
    att: f("att", [nh * hd]),
    residual: f("residual", [H]),
    rstdPost: shared.rstdPost ?? make([rows], "f32", "rstdPost"),
    postNorm: f("postNorm", [H]),
    gate: f("gate", [I], saved),
    up: f("up", [I], saved),
    act: f("act", [I]),
    out: f("out", [H]),
  };
}

/** Scratch of one midlayer backward over R rows (reused by every pass). */
export interface Eagle3LayerGrads<T = Tensor> {
  /** ∂/∂act [R, I]. */
  act: T;
  /** ∂/∂gate [R, I]. */
  gate: T;
  /** ∂/∂up [R, I]. */
  up: T;
  /** ∂/∂n [R, H]. */
  postNorm: T;
  /** ∂/∂att [R, nh·hd]. */
  att: T;
  /** ∂/∂a [R, 2H]. */
  attnInput: T;
  /** ∂/∂e [R, H] (discarded: the embedding is frozen). */
  embed: T;
  /** ∂/∂h [R, H]: the backward's output, the gradient of the pass's input hidden. */
  hidden: T;
  /** Partials of the RMSNorm weight gradients. */
  normScratch: T;
}

/** The layout of {@link Eagle3LayerGrads} over `rows` rows; `normScratch` has `normScratchSize` floats. */
export function eagle3LayerGrads<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  rows: number,
  normScratchSize: number,
): Eagle3LayerGrads<T> {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, headDim: hd } = cfg;
  const f = (name: string, cols: number) => make([rows, cols], "f32", `d ${name}`);
  return {
    act: f("act", I),
    gate: f("gate", I),
    up: f("up", I),
    postNorm: f("postNorm", H),
    att: f("att", nh * hd),
    attnInput: f("attnInput", 2 * H),
    embed: f("embed", H),
    hidden: f("hidden", H),
    normScratch: make([Math.max(1, normScratchSize)], "f32", "rmsnorm dw partials"),
  };
}

/** The gradients of a pass's q, k, v projections' outputs (before RoPE), from {@link Eagle3Attention.backward}. */
export interface QkvGrads {
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

/**
 * How the rows of a midlayer pass attend: RoPE at the rows' positions, where this pass's keys and values
 * are kept, and the attention itself (training: lib/models/eagle3_ttt_attention.ts; inference: the KV
 * cache of lib/eval/draft_infer.ts).
 */
export interface Eagle3Attention {
  /** RoPE on q [R, nh·hd] and k [R, nkv·hd] in place, keeps k and v, and writes att [R, nh·hd]. */
  forward(p: Program, q: Tensor, k: Tensor, v: Tensor, att: Tensor): Promise<void>;
  /**
   * From ∂/∂att, the complete gradients of this pass's q, k, v projections (through the attention and
   * RoPE's backward); `saved` holds the forward's q (RoPE applied) and att. Training only.
   */
  backward?(p: Program, dAtt: Tensor, saved: { q: Tensor; att: Tensor }): Promise<QkvGrads>;
}

/** What fc saves with EAGLE-3.1's fc_norm (null without): the captured states, each normed, R rows. */
export interface Eagle3FcActivations<T = Tensor> {
  /** Each captured state aux_i as a contiguous copy [R, H_t] (the norm's backward reads it). */
  states: T[];
  /** 1/rms of each row of aux_i [R]. */
  rstd: T[];
  /** RMSNorm_i(aux_i) [R, H_t] (scratch, one at a time). */
  normedState: T;
  /** [RMSNorm_0(aux_0), RMSNorm_1(aux_1), RMSNorm_2(aux_2)] [R, 3·H_t], fc's input. */
  normed: T;
}

/** The layout of {@link Eagle3FcActivations} over `rows` rows; null when the config has no fc_norm. */
export function eagle3FcActivations<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  rows: number,
): Eagle3FcActivations<T> | null {
  if (!cfg.fcNorm) return null;
  const Ht = cfg.targetHiddenSize;
  return {
    states: [0, 1, 2].map((i) => make([rows, Ht], "f32", `fc_norm input ${i}`)),
    rstd: [0, 1, 2].map((i) => make([rows], "f32", `fc_norm rstd ${i}`)),
    normedState: make([rows, Ht], "f32", "fc_norm out"),
    normed: make([rows, 3 * Ht], "f32", "fc input (normed)"),
  };
}

/** Scratch of fc's backward with fc_norm (null without). */
export interface Eagle3FcGrads<T = Tensor> {
  /** ∂/∂(fc's input) [R, 3·H_t]. */
  normed: T;
  /** ∂/∂RMSNorm_i(aux_i) [R, H_t]. */
  normedState: T;
  /** ∂/∂aux_i [R, H_t] (discarded: the target's states are frozen). */
  state: T;
  /** Partials of the fc_norm weight gradients. */
  normScratch: T;
}

/** The layout of {@link Eagle3FcGrads}; null when the config has no fc_norm. */
export function eagle3FcGrads<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  rows: number,
): Eagle3FcGrads<T> | null {
  if (!cfg.fcNorm) return null;
  const Ht = cfg.targetHiddenSize;
  return {
    normed: make([rows, 3 * Ht], "f32", "d fc input"),
    normedState: make([rows, Ht], "f32", "d fc_norm out"),
    state: make([rows, Ht], "f32", "d fc_norm input (discarded)"),
    normScratch: make([Math.max(1, rmsnormScratchSize(rows, Ht))], "f32", "fc_norm dw partials"),
  };
}

/** Copies column block i (width H_t) of x [R, 3·H_t] into `block` [R, H_t] ("out"), or back ("into"). */
function stateBlock(p: Program, x: Tensor, block: Tensor, i: number, dir: "out" | "into"): Promise<void> {
  const [rows, Ht] = block.shape;
  const wide = { strides: [0, 3 * Ht, 1] as [number, number, number], offset: i * Ht };
  const narrow: [number, number, number] = [0, Ht, 1];
  return dir === "out"
    ? copyStrided(p, x, block, {
      count: [1, rows, Ht],
      srcStrides: wide.strides,
      srcOffset: wide.offset,
      dstStrides: narrow,
    })
    : copyStrided(p, block, x, {
      count: [1, rows, Ht],
      srcStrides: narrow,
      dstStrides: wide.strides,
      dstOffset: wide.offset,
    });
}

/**
 * h⁰ = fc(aux): the projection of the target's captured states [R, 3·H_t] to the draft's width [R, H], each
 * state RMS-normed first with EAGLE-3.1's fc_norm (`f` holds what that saves).
 */
export async function eagle3FcForward(
  p: Program,
  draft: Eagle3Draft,
  aux: Tensor,
  hidden: Tensor,
  f: Eagle3FcActivations | null,
): Promise<void> {
  if (!f) return await linear(p, aux, draft.params["fc.weight"], hidden);
  const eps = { eps: draft.config.rmsNormEps };
  for (const [i, name] of FC_NORM_PARAM_NAMES.entries()) {
    await stateBlock(p, aux, f.states[i], i, "out");
    await rmsnormForward(p, f.states[i], draft.params[name]!, f.normedState, f.rstd[i], eps);
    await stateBlock(p, f.normed, f.normedState, i, "into");
  }
  await linear(p, f.normed, draft.params["fc.weight"], hidden);
}

/** Adds ∂/∂W_fc (and the fc_norm weights') of {@link eagle3FcForward} for ∂/∂h⁰ = `dHidden` (aux is frozen). */
export async function eagle3FcBackward(
  p: Program,
  draft: Eagle3Draft,
  aux: Tensor,
  dHidden: Tensor,
  f: Eagle3FcActivations | null,
  g: Eagle3FcGrads | null,
): Promise<void> {
  const W = draft.params, G = draft.grads, acc = { accumulateDw: true };
  if (!f || !g) return await linearBackward(p, dHidden, aux, W["fc.weight"], null, G["fc.weight"], acc);
  await linearBackward(p, dHidden, f.normed, W["fc.weight"], g.normed, G["fc.weight"], acc);
  for (const [i, name] of FC_NORM_PARAM_NAMES.entries()) {
    await stateBlock(p, g.normed, g.normedState, i, "out");
    await rmsnormBackward(p, g.normedState, f.states[i], W[name]!, f.rstd[i], g.state, G[name]!, {
      accumulateDw: true,
      scratch: g.normScratch,
    });
  }
}

/**
 * One midlayer pass: tokens `ids` [R] (looked up in the frozen `embedding` [V, H], row blocks) and input hidden
 * `hidden` [R, H] → `a.out` [R, H], saving what the backward reads in `a`.
 */
export async function eagle3LayerForward(
  p: Program,
  draft: Eagle3Draft,
  x: { ids: Tensor; embedding: RowSplitMatrix; hidden: Tensor },
  a: Eagle3LayerActivations,
  attention: Eagle3Attention,
): Promise<void> {
  const W = draft.params, H = draft.config.hiddenSize;
  const eps = { eps: draft.config.rmsNormEps };
  await embeddingRows(p, x.embedding, x.ids, a.embed);
  // a = [RMSNorm_in(e), RMSNorm_hid(h)]: each norm writes its column block of a (no copy).
  const inNorm = W["midlayer.input_layernorm.weight"];
  await rmsnormForward(p, a.embed, inNorm, { matrix: a.attnInput, col0: 0 }, a.rstdEmbed, eps);
  await rmsnormForward(
    p,
    x.hidden,
    W["midlayer.hidden_norm.weight"],
    { matrix: a.attnInput, col0: H },
    a.rstdHidden,
    eps,
  );
  await linear(p, a.attnInput, W["midlayer.self_attn.q_proj.weight"], a.q);
  await linear(p, a.attnInput, W["midlayer.self_attn.k_proj.weight"], a.k);
  await linear(p, a.attnInput, W["midlayer.self_attn.v_proj.weight"], a.v);
  await attention.forward(p, a.q, a.k, a.v, a.att);
  // r = h + o_proj(att), y = r + mlp(r): the residual adds fused into the projections' stores.
  await linear(p, a.att, W["midlayer.self_attn.o_proj.weight"], a.residual, { addend: x.hidden });
  const post = W["midlayer.post_attention_layernorm.weight"];
  await rmsnormForward(p, a.residual, post, a.postNorm, a.rstdPost, eps);
  const mlp = { act: a.act, gate: a.gate, up: a.up, keep: true };
  await gatedLinear(
    p,
    a.postNorm,
    W["midlayer.mlp.gate_proj.weight"],
    W["midlayer.mlp.up_proj.weight"],
    mlp,
    "silu",
  );
  await linear(p, a.act, W["midlayer.mlp.down_proj.weight"], a.out, { addend: a.residual });
}

/**
 * The backward of {@link eagle3LayerForward}: from ∂/∂y = `dOut`, adds every midlayer weight gradient and
 * writes ∂/∂h (the input hidden `hidden`'s gradient) into `g.hidden`. `dOut` is overwritten (with ∂/∂r).
 */
export async function eagle3LayerBackward(
  p: Program,
  draft: Eagle3Draft,
  hidden: Tensor,
  a: Eagle3LayerActivations,
  dOut: Tensor,
  g: Eagle3LayerGrads,
  attention: Eagle3Attention,
): Promise<void> {
  const W = draft.params, G = draft.grads, H = draft.config.hiddenSize;
  const acc = { accumulateDw: true }, accBoth = { accumulateDx: true, accumulateDw: true };
  const norm = { accumulateDw: true, scratch: g.normScratch };
  const down = "midlayer.mlp.down_proj.weight", gate = "midlayer.mlp.gate_proj.weight";
  const up = "midlayer.mlp.up_proj.weight", post = "midlayer.post_attention_layernorm.weight";
  // act again from the saved gate and up (the bits of the forward's: kernels/swiglu.ts GATE_FUNCTIONS), for
  // down_proj's weight gradient: the positions share one act buffer instead of keeping one each.
  await swigluForward(p, a.gate, a.up, a.act);
  await swigluDownBackward(
    p,
    dOut,
    a,
    W[down],
    { dAct: g.act, dGate: g.gate, dUp: g.up, dWDown: G[down] },
    acc,
  );
  await linearBackward(p, g.gate, a.postNorm, W[gate], g.postNorm, G[gate], acc);
  await linearBackward(p, g.up, a.postNorm, W[up], g.postNorm, G[up], accBoth);
  // y = r + mlp(r): ∂/∂r = ∂/∂y + the norm's share, added into dOut in place (dOut + share, the same sum as
  // share + dOut bit for bit) rather than written apart and accumulated by a second pass.
  await rmsnormBackward(p, g.postNorm, a.residual, W[post], a.rstdPost, dOut, G[post], {
    ...norm,
    accumulateDx: true,
  });
  const dResidual = dOut;
  const o = "midlayer.self_attn.o_proj.weight";
  await linearBackward(p, dResidual, a.att, W[o], g.att, G[o], acc);
  const d = await attention.backward!(p, g.att, a);
  const [q, k, v] = (["q", "k", "v"] as const).map((x) => `midlayer.self_attn.${x}_proj.weight` as const);
  await linearBackward(p, d.q, a.attnInput, W[q], g.attnInput, G[q], acc);
  await linearBackward(p, d.k, a.attnInput, W[k], g.attnInput, G[k], accBoth);
  await linearBackward(p, d.v, a.attnInput, W[v], g.attnInput, G[v], accBoth);
  // The two input norms read their column blocks of ∂/∂a (the embedding's gradient is dropped: it is frozen).
  const inNorm = "midlayer.input_layernorm.weight", hidNorm = "midlayer.hidden_norm.weight";
  const block = (col0: number) => ({ matrix: g.attnInput, col0 });
  await rmsnormBackward(p, block(0), a.embed, W[inNorm], a.rstdEmbed, g.embed, G[inNorm], norm);
  await rmsnormBackward(p, block(H), hidden, W[hidNorm], a.rstdHidden, g.hidden, G[hidNorm], norm);
  // r = h + o_proj(att). Not summed in the norm's store: Mesa's NIR may then fold the sum into the norm's
  // last fma (a reassociation it is allowed for inexact float ops), which changed the last bit in a test.
  await accumulate(p, g.hidden, dResidual);
}

/** What the head (final norm + lm_head) of R rows computes: the normed rows, their rstd and the logits. */
export interface Eagle3HeadActivations<T = Tensor> {
  /** RMSNorm_final(y) [R, H] (also the next position's input with DraftConfig.feedNormedHidden). */
  normed: T;
  /** 1/rms of each row of y [R]. */
  rstd: T;
  /** z [R, Vd]; the loss overwrites it with ∂/∂z in training. */
  logits: T;
}

/** The layout of {@link Eagle3HeadActivations} over `rows` rows; `logits` may be shared. */
export function eagle3HeadActivations<T>(
  make: MakeTensor<T>,
  cfg: DraftConfig,
  rows: number,
  logits?: T,
): Eagle3HeadActivations<T> {
  return {
    normed: make([rows, cfg.hiddenSize], "f32", "final norm"),
    rstd: make([rows], "f32", "rstd final norm"),
    logits: logits ?? make([rows, cfg.draftVocabSize], "f32", "logits"),
  };
}

/** RMSNorm_final(y) of rows y [R, H] into `h.normed` (and `h.rstd`). */
export async function eagle3FinalNorm(
  p: Program,
  draft: Eagle3Draft,
  y: Tensor,
  h: Eagle3HeadActivations,
): Promise<void> {
  await rmsnormForward(p, y, draft.params["norm.weight"], h.normed, h.rstd, { eps: draft.config.rmsNormEps });
}

/**
 * z = lm_head(RMSNorm_final(y)) of rows y [R, H] into `h.logits` [R, Vd]; z = lm_head(y) when the config's
 * logits skip the final norm (SpecForge's norm_output: false).
 */
export async function eagle3HeadForward(
  p: Program,
  draft: Eagle3Draft,
  y: Tensor,
  h: Eagle3HeadActivations,
): Promise<void> {
  if (!draft.config.headNorm) return await eagle3LmHead(p, draft, y, h.logits);
  await eagle3FinalNorm(p, draft, y, h);
  await eagle3LmHead(p, draft, h.normed, h.logits);
}

/** z = lm_head(x) of rows x [R, H] into `logits` [R, Vd] (x already through the final norm, or not). */
export async function eagle3LmHead(p: Program, draft: Eagle3Draft, x: Tensor, logits: Tensor): Promise<void> {
  await linear(p, x, draft.params["lm_head.weight"], logits);
}

/** The backward of {@link eagle3FinalNorm}: ∂/∂y into `dY` from ∂/∂RMSNorm_final(y) = `dNormed`; adds ∂/∂w. */
export async function eagle3FinalNormBackward(
  p: Program,
  draft: Eagle3Draft,
  y: Tensor,
  h: Eagle3HeadActivations,
  dNormed: Tensor,
  dY: Tensor,
  normScratch: Tensor,
): Promise<void> {
  await rmsnormBackward(p, dNormed, y, draft.params["norm.weight"], h.rstd, dY, draft.grads["norm.weight"], {
    accumulateDw: true,
    scratch: normScratch,
  });
}
