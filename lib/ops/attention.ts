/**
 * Attention (f32): out = softmax(scale·q·kᵀ + mask)·v per query head, with grouped-query attention (query
 * head h reads kv head h / (nh / nkv)), a key-padding mask (keys s ≥ lengths[b] are masked), an optional
 * causal mask (key s allowed only if s ≤ t + queryOffset), an optional sliding window (and s + window > t +
 * queryOffset) and the EAGLE-3 test-time-training diagonal keys
 * (SpecForge `specforge/modeling/draft/llama3_eagle.py` `LlamaAttention.forward` with `cache_hidden`): at TTT
 * position k, row t also attends its own keys kd[j, b, t], j < S = k, unmasked, in the same softmax. RoPE is
 * applied before this op. Forward and backward are flash-style (kernels/attention.ts): the [B, nh, Tq, Tk]
 * score matrix is never materialised; the forward saves the log-sum-exp of each row, from which the backward
 * recomputes the probabilities.
 *
 * Layouts, all row-major: q, out [B, Tq, nh, hd]; k, v [B, Tk, nkv, hd]; kd, vd [S, B, Tq, nkv, hd] (S ≥ 1,
 * else null, and then Tq = Tk); lse [B, nh, Tq]; lengths i32 [B].
 *
 * A query row with no allowed key (lengths[b] = 0 and S = 0) has out = 0, lse = −∞ and zero gradients.
 */
import * as K from "../../kernels/attention.ts";
import type { Gpu } from "../gpu/device.ts";
import { LimitError, ShapeError } from "../gpu/errors.ts";
import { type Binding, params, type Program } from "../gpu/program.ts";
import { shapeString, type Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";
import { kernelVariant } from "./variant.ts";
import { fitsTexture, packTexels } from "./texels.ts";

/** Options of the attention ops. */
export interface AttentionOptions {
  /** Key s is allowed for query row t only if s ≤ t + queryOffset (default false). */
  causal?: boolean;
  /**
   * Absolute position of query row 0 among the keys (KV-cache decoding: the Tq new queries are positions
   * queryOffset .. queryOffset + Tq − 1 of a cache of Tk keys; default 0). Needs queryOffset + Tq ≤ Tk.
   */
  queryOffset?: number;
  /** Multiplies q·k (default 1/sqrt(hd)). */
  scale?: number;
  /**
   * Sliding-window attention: key s is allowed for query row t only if s + window > t + queryOffset (the
   * `window` most recent positions, transformers' `sliding_window_overlay`); 0 or absent: no window.
   */
  window?: number;
  /**
   * Chunked local attention (Llama 4's `attention_chunk_size`): key s is allowed for query row t only if s and
   * t + queryOffset lie in the same chunk of `chunk` positions; 0 or absent: none.
   */
  chunk?: number;
  /**
   * Kernel family: "tiled" (workgroup-memory tiles, for GPUs) or "rows" (each invocation keeps a few rows in
   * registers, no workgroup memory or barriers, for CPU adapters). Default: "rows" on CPU adapters (Mesa
   * lavapipe/llvmpipe), else "tiled". Both compute the same math.
   */
  kernel?: AttentionKernel;
  /**
   * The "rows" kernels read the rows they stream (k and v; q, o and dout for dK/dV) from textures packed
   * first (lib/ops/texels.ts), when hd is a multiple of 4: the same results bit for bit, faster on Mesa's CPU
   * drivers. Default true; false reads them from the storage buffers.
   */
  textures?: boolean;
}

/** The kernel families of the attention ops (see {@link AttentionOptions.kernel}). */
export type AttentionKernel = "tiled" | "rows";

/** Tensors of {@link attentionForward}. */
export interface AttentionForwardArgs {
  /** Queries [B, Tq, nh, hd], f32. */
  q: Tensor;
  /** Keys [B, Tk, nkv, hd], f32. */
  k: Tensor;
  /** Values [B, Tk, nkv, hd], f32. */
  v: Tensor;
  /** Diagonal TTT keys [S, B, Tq, nkv, hd] (S ≥ 1), or null/absent for none. */
  kd?: Tensor | null;
  /** Diagonal TTT values, like kd. */
  vd?: Tensor | null;
  /** Valid keys per sequence, i32 [B]. */
  lengths: Tensor;
  /** Output [B, Tq, nh, hd], written. */
  out: Tensor;
  /** Log-sum-exp of each query row's scaled scores [B, nh, Tq], written (−∞ for a row with no key). */
  lse: Tensor;
  /**
   * Attention sinks (GPT-OSS), f32 [nh]: a logit per head in every row's softmax whose probability is dropped;
   * forward only, on the "rows" kernels. Null or absent: none.
   */
  sinks?: Tensor | null;
}

/** Tensors of {@link attentionBackward}: the forward's inputs and outputs plus gradients. */
export interface AttentionBackwardArgs extends AttentionForwardArgs {
  /** Gradient of the loss with respect to out [B, Tq, nh, hd]. */
  dout: Tensor;
  /** Written: gradient of q [B, Tq, nh, hd]. */
  dq: Tensor;
  /** Written: gradient of k [B, Tk, nkv, hd], summed over the query heads sharing each kv head. */
  dk: Tensor;
  /** Written: gradient of v [B, Tk, nkv, hd], summed likewise. */
  dv: Tensor;
  /** Written: gradient of kd [S, B, Tq, nkv, hd]; required when kd is given. */
  dkd?: Tensor | null;
  /** Written: gradient of vd, like dkd. */
  dvd?: Tensor | null;
}

/** Sizes of an attention call. */
export interface AttentionDims {
  /** B. */
  batch: number;
  /** Tq: query rows per sequence. */
  queryLen: number;
  /** Tk: keys per sequence. */
  keyLen: number;
  /** nh: query heads. */
  heads: number;
  /** nkv: key/value heads (divides nh). */
  kvHeads: number;
  /** hd: head dimension. */
  headDim: number;
  /** S: diagonal TTT keys per row (0 for none). */
  diagSteps: number;
}

/** Tile sizes of one kernel: BQ query rows, BK keys, WG invocations per workgroup. */
interface Tiles {
  BQ: number;
  BK: number;
  WG: number;
}

const WG = 64;

/** Which kernel a tile plan is for, with its workgroup memory in f32 words. */
const KERNELS = {
  forward: {
    words: (hd: number, t: Tiles) => (t.BQ + 2 * t.BK) * (hd + 1) + t.BQ * t.BK,
    // Invocations per query row own hd / (WG / BQ) dims of the output.
    rowsOwned: (t: Tiles) => t.BQ,
    candidates: [[16, 64], [16, 32], [16, 16], [8, 32], [8, 16], [8, 8]],
  },
  backwardKV: {
    words: (hd: number, t: Tiles) => (2 * t.BQ + 2 * t.BK) * (hd + 1) + 2 * t.BQ * t.BK + t.WG,
    rowsOwned: (t: Tiles) => t.BK,
    candidates: [[32, 16], [16, 16], [8, 16], [16, 8], [8, 8]],
  },
  backwardQ: {
    words: (hd: number, t: Tiles) => (2 * t.BQ + 2 * t.BK) * (hd + 1) + t.BQ * t.BK + t.WG,
    rowsOwned: (t: Tiles) => t.BQ,
    candidates: [[16, 32], [16, 16], [8, 32], [8, 16], [16, 8], [8, 8]],
  },
} as const;

/**
 * The largest tiles of `kernel` for head dim `hd` that fit the device's workgroup memory and leave each
 * invocation at most ATTENTION_MAX_DIMS head dims to accumulate.
 */
function planTiles(gpu: Gpu, kernel: keyof typeof KERNELS, hd: number): Tiles {
  const spec = KERNELS[kernel];
  const bytes = gpu.limits.maxComputeWorkgroupStorageSize;
  for (const [BQ, BK] of spec.candidates) {
    const t = { BQ, BK, WG };
    const perRow = WG / spec.rowsOwned(t);
    if (Math.ceil(hd / perRow) > K.ATTENTION_MAX_DIMS) continue;
    if (4 * spec.words(hd, t) <= bytes) return t;
  }
  throw new LimitError(
    `attention: head dim ${hd} does not fit the attention kernels (${kernel}: at most ` +
      `${K.ATTENTION_MAX_DIMS * 8} dims and ${bytes} bytes of workgroup memory)`,
  );
}

/** Checks every tensor of a forward or backward call and returns the sizes. */
function checkArgs(op: string, a: AttentionForwardArgs, opts: AttentionOptions): AttentionDims {
  for (const name of ["q", "k", "v", "out", "lse"] as const) expectDtype(op, name, a[name], "f32");
  expectDtype(op, "lengths", a.lengths, "i32");
  if (a.q.shape.length !== 4) {
    throw new ShapeError(
      `${op}: q (${a.q.label}) has shape ${shapeString(a.q.shape)}, expected [B, Tq, nh, hd]`,
    );
  }
  const [batch, queryLen, heads, headDim] = a.q.shape;
  expectShape(op, "k", a.k, [batch, -1, -1, headDim]);
  const [, keyLen, kvHeads] = a.k.shape;
  expectShape(op, "v", a.v, a.k.shape);
  expectShape(op, "lengths", a.lengths, [batch]);
  expectShape(op, "out", a.out, a.q.shape);
  expectShape(op, "lse", a.lse, [batch, heads, queryLen]);
  if ([batch, queryLen, heads, headDim, keyLen, kvHeads].some((d) => d < 1)) {
    throw new ShapeError(`${op}: empty q ${shapeString(a.q.shape)} or k ${shapeString(a.k.shape)}`);
  }
  if (heads % kvHeads !== 0) {
    throw new ShapeError(
      `${op}: q ${shapeString(a.q.shape)} has ${heads} heads, not a multiple of the ${kvHeads} kv heads of ` +
        `k ${shapeString(a.k.shape)}`,
    );
  }
  if ((a.kd == null) !== (a.vd == null)) {
    throw new ShapeError(`${op}: kd and vd must be given together`);
  }
  let diagSteps = 0;
  if (a.kd && a.vd) {
    expectDtype(op, "kd", a.kd, "f32");
    expectDtype(op, "vd", a.vd, "f32");
    expectShape(op, "kd", a.kd, [-1, batch, queryLen, kvHeads, headDim]);
    expectShape(op, "vd", a.vd, a.kd.shape);
    diagSteps = a.kd.shape[0];
    if (diagSteps < 1) throw new ShapeError(`${op}: kd ${shapeString(a.kd.shape)} is empty; pass null`);
    if (queryLen !== keyLen) {
      throw new ShapeError(
        `${op}: diagonal keys need Tq = Tk, got q ${shapeString(a.q.shape)} and k ${shapeString(a.k.shape)}`,
      );
    }
  }
  const offset = opts.queryOffset ?? 0;
  if (!Number.isInteger(offset) || offset < 0 || offset + queryLen > keyLen) {
    throw new ShapeError(
      `${op}: queryOffset ${offset} must be an integer in [0, Tk − Tq] = [0, ${keyLen - queryLen}] ` +
        `for q ${shapeString(a.q.shape)} and k ${shapeString(a.k.shape)}`,
    );
  }
  return { batch, queryLen, keyLen, heads, kvHeads, headDim, diagSteps };
}

function uniforms(d: AttentionDims, opts: AttentionOptions) {
  return params(
    ["u32", d.batch],
    ["u32", d.queryLen],
    ["u32", d.keyLen],
    ["u32", d.heads],
    ["u32", d.kvHeads],
    ["u32", d.diagSteps],
    ["u32", opts.causal ? 1 : 0],
    ["u32", opts.queryOffset ?? 0],
    ["f32", opts.scale ?? 1 / Math.sqrt(d.headDim)],
    ["u32", opts.window ?? 0],
    ["u32", opts.chunk ?? 0],
    ["u32", 0],
  );
}

function constants(hd: number, t: Tiles): Record<string, number> {
  return { HD: hd, BQ: t.BQ, BK: t.BK, WG: t.WG };
}

/** The kernel family for this call: the requested one, else "rows" on CPU adapters and "tiled" on GPUs. */
function kernelFor(gpu: Gpu, opts: AttentionOptions): AttentionKernel {
  return kernelVariant<AttentionKernel>(gpu, "attention", opts.kernel, { gpu: "tiled", cpu: "rows" });
}

/**
 * Rows per invocation of the register-row kernels: enough that one load of a streamed row feeds several
 * rows' FMAs, few enough that the rows' registers (2–3 rows of hd floats each) stay small (measured on
 * lavapipe at hd 16: 8 rows).
 */
function rowsPerInvocation(hd: number): number {
  const hd4 = Math.ceil(hd / 4);
  return hd4 <= 4 ? 8 : hd4 <= 8 ? 4 : hd4 <= 16 ? 2 : 1;
}

/**
 * The register-row kernels stream one operand's rows once per group of R rows of the other: on Mesa's CPU
 * drivers those streamed rows are read faster from textures (lib/ops/texels.ts). When hd is a multiple of 4
 * (and `opts.textures` is not false), packs the tensors bound at `streamed` (name → binding index), puts
 * their texture views in `bindings` in place, and returns the names to read from textures (none otherwise).
 */
async function streamedTextures(
  p: Program,
  hd: number,
  opts: AttentionOptions,
  bindings: Binding[],
  streamed: Record<string, number>,
): Promise<string[]> {
  const tensors = Object.values(streamed).map((i) => bindings[i] as Tensor);
  if (opts.textures === false || hd % 4 !== 0 || !tensors.every(fitsTexture)) return [];
  for (const [name, i] of Object.entries(streamed)) {
    bindings[i] = await packTexels(p, bindings[i] as Tensor, `attention ${name}`);
  }
  return Object.keys(streamed);
}

/** Workgroups of a register-row kernel over `items` (b, head) pairs of `len` rows each. */
function rowsGrid(items: number, len: number, rows: number): number {
  return Math.ceil(items * Math.ceil(len / rows) / K.ATTENTION_ROWS_WG);
}

/**
 * Records the attention forward: writes `out` and `lse` (see the module comment for the math and layouts).
 * One dispatch of B · nh · ceil(Tq / BQ) workgroups.
 */
export async function attentionForward(
  p: Program,
  a: AttentionForwardArgs,
  opts: AttentionOptions = {},
): Promise<void> {
  const d = checkArgs("attentionForward", a, opts);
  if (a.sinks) {
    expectDtype("attentionForward", "sinks", a.sinks, "f32");
    expectShape("attentionForward", "sinks", a.sinks, [d.heads]);
  }
  const bindings: Binding[] = [
    uniforms(d, opts),
    a.q,
    a.k,
    a.v,
    a.kd ?? a.q,
    a.vd ?? a.q,
    a.lengths,
    a.out,
    a.lse,
    ...(a.sinks ? [a.sinks] : []),
  ];
  // Sinks are in the register-row kernels only (a frozen target's forward).
  if (a.sinks || kernelFor(p.gpu, opts) === "rows") {
    const rows = rowsPerInvocation(d.headDim);
    const textures = await streamedTextures(p, d.headDim, opts, bindings, { k: 2, v: 3 });
    await p.add(
      {
        name: `attention.forward_rows${textures.length ? ".textures" : ""}${a.sinks ? ".sinks" : ""}`,
        code: K.attentionRowsForward(d.headDim, rows, textures, !!a.sinks),
        entryPoint: "main",
        constants: { HD: d.headDim },
      },
      bindings,
      rowsGrid(d.batch * d.heads, d.queryLen, rows),
    );
    return;
  }
  const tiles = planTiles(p.gpu, "forward", d.headDim);
  await p.add(
    {
      name: "attention.forward",
      code: K.attentionForward,
      entryPoint: "main",
      constants: constants(d.headDim, tiles),
    },
    bindings,
    d.batch * d.heads * Math.ceil(d.queryLen / tiles.BQ),
  );
}

/**
 * Records the attention backward (FlashAttention-2 style): writes dq, dk, dv and, with diagonal keys, dkd and
 * dvd (overwritten, not accumulated). Needs the forward's `out` and `lse`. Dispatches: dK/dV over key tiles,
 * dQ over query tiles, and (when S ≥ 1) dKd/dVd over rows. Allocates nothing.
 */
export async function attentionBackward(
  p: Program,
  a: AttentionBackwardArgs,
  opts: AttentionOptions = {},
): Promise<void> {
  const op = "attentionBackward";
  const d = checkArgs(op, a, opts);
  for (const name of ["dout", "dq", "dk", "dv"] as const) expectDtype(op, name, a[name], "f32");
  expectShape(op, "dout", a.dout, a.q.shape);
  expectShape(op, "dq", a.dq, a.q.shape);
  expectShape(op, "dk", a.dk, a.k.shape);
  expectShape(op, "dv", a.dv, a.k.shape);
  if (a.kd) {
    if (!a.dkd || !a.dvd) throw new ShapeError(`${op}: kd is given, so dkd and dvd are required`);
    expectDtype(op, "dkd", a.dkd, "f32");
    expectDtype(op, "dvd", a.dvd, "f32");
    expectShape(op, "dkd", a.dkd, a.kd.shape);
    expectShape(op, "dvd", a.dvd, a.kd.shape);
  } else if (a.dkd || a.dvd) {
    throw new ShapeError(`${op}: dkd/dvd given without diagonal keys kd/vd`);
  }
  const hd = d.headDim;
  const u = uniforms(d, opts);
  const kvBindings: Binding[] = [u, a.q, a.k, a.v, a.out, a.dout, a.lse, a.lengths, a.dk, a.dv];
  const qBindings: Binding[] = [
    u,
    a.q,
    a.k,
    a.v,
    a.kd ?? a.q,
    a.vd ?? a.q,
    a.out,
    a.dout,
    a.lse,
    a.lengths,
    a.dq,
  ];
  if (kernelFor(p.gpu, opts) === "rows") {
    const rows = rowsPerInvocation(hd);
    const kvTextures = await streamedTextures(p, hd, opts, kvBindings, { q: 1, o: 4, dout: 5 });
    await p.add(
      {
        name: `attention.backward_kv_rows${kvTextures.length ? ".textures" : ""}`,
        code: K.attentionRowsBackwardKV(hd, rows, kvTextures),
        entryPoint: "main",
        constants: { HD: hd },
      },
      kvBindings,
      rowsGrid(d.batch * d.kvHeads, d.keyLen, rows),
    );
    const qTextures = await streamedTextures(p, hd, opts, qBindings, { k: 2, v: 3 });
    await p.add(
      {
        name: `attention.backward_q_rows${qTextures.length ? ".textures" : ""}`,
        code: K.attentionRowsBackwardQ(hd, rows, qTextures),
        entryPoint: "main",
        constants: { HD: hd },
      },
      qBindings,
      rowsGrid(d.batch * d.heads, d.queryLen, rows),
    );
  } else {
    await backwardTiled(p, d, kvBindings, qBindings);
  }
  if (d.diagSteps === 0) return;
  const diagBindings: Binding[] = [u, a.q, a.kd!, a.vd!, a.out, a.dout, a.lse, a.dkd!, a.dvd!];
  const diagRows = d.diagSteps * d.batch * d.queryLen * d.kvHeads;
  if (kernelFor(p.gpu, opts) === "rows") {
    // q, o and dout are the textures the dK/dV kernel packed (nothing is packed again).
    const textures = await streamedTextures(p, hd, opts, diagBindings, { q: 1, o: 4, dout: 5 });
    await p.add(
      {
        name: `attention.backward_diag_rows${textures.length ? ".textures" : ""}`,
        code: K.attentionRowsBackwardDiag(hd, textures),
        entryPoint: "main",
        constants: { HD: hd },
      },
      diagBindings,
      Math.ceil(diagRows / K.ATTENTION_ROWS_WG),
    );
  } else {
    await p.add(
      {
        name: "attention.backward_diag",
        code: K.attentionBackwardDiag,
        entryPoint: "main",
        constants: { HD: hd, WG },
      },
      diagBindings,
      Math.ceil(diagRows / WG),
    );
  }
}

/** The tiled dK/dV and dQ dispatches of {@link attentionBackward}. */
async function backwardTiled(
  p: Program,
  d: AttentionDims,
  kvBindings: Binding[],
  qBindings: Binding[],
): Promise<void> {
  const hd = d.headDim;
  const kv = planTiles(p.gpu, "backwardKV", hd);
  await p.add(
    {
      name: "attention.backward_kv",
      code: K.attentionBackwardKV,
      entryPoint: "main",
      constants: constants(hd, kv),
    },
    kvBindings,
    d.batch * d.kvHeads * Math.ceil(d.keyLen / kv.BK),
  );
  const qt = planTiles(p.gpu, "backwardQ", hd);
  await p.add(
    {
      name: "attention.backward_q",
      code: K.attentionBackwardQ,
      entryPoint: "main",
      constants: constants(hd, qt),
    },
    qBindings,
    d.batch * d.heads * Math.ceil(d.queryLen / qt.BQ),
  );
}

// ---------------------------------------------------------------------------------------------------------
// CPU references: the softmax of each row materialised, f64 arithmetic.

/** Host inputs of the CPU references (flat row-major arrays in the layouts above). */
export interface AttentionCpuInputs {
  /** Queries [B, Tq, nh, hd]. */
  q: ArrayLike<number>;
  /** Keys [B, Tk, nkv, hd]. */
  k: ArrayLike<number>;
  /** Values [B, Tk, nkv, hd]. */
  v: ArrayLike<number>;
  /** [S, B, Tq, nkv, hd] when dims.diagSteps ≥ 1. */
  kd?: ArrayLike<number> | null;
  /** Diagonal TTT values [S, B, Tq, nkv, hd] when dims.diagSteps ≥ 1, like kd. */
  vd?: ArrayLike<number> | null;
  /** Valid keys per sequence [B]; keys s ≥ lengths[b] are masked. */
  lengths: ArrayLike<number>;
  /** Attention sinks [nh] (see {@link AttentionForwardArgs.sinks}), absent for none. */
  sinks?: ArrayLike<number> | null;
}

/** Result of {@link attentionCpu}. */
export interface AttentionCpuResult {
  /** [B, Tq, nh, hd]. */
  out: Float64Array;
  /** [B, nh, Tq]; −∞ for a row with no allowed key. */
  lse: Float64Array;
}

/** Result of {@link attentionBackwardCpu}. */
export interface AttentionCpuGrads {
  /** Gradient of q, [B, Tq, nh, hd]. */
  dq: Float64Array;
  /** Gradient of k, [B, Tk, nkv, hd], summed over the query heads sharing each kv head. */
  dk: Float64Array;
  /** Gradient of v, [B, Tk, nkv, hd], summed likewise. */
  dv: Float64Array;
  /** [S, B, Tq, nkv, hd] (empty when S = 0). */
  dkd: Float64Array;
  /** Gradient of vd, [S, B, Tq, nkv, hd] (empty when S = 0). */
  dvd: Float64Array;
}

/** One key a query row attends: where its k and v rows start, in the prefix (k, v) or diagonal (kd, vd). */
interface KeyRef {
  diag: boolean;
  offset: number;
}

/**
 * Calls `visit` for every query row (b, h, t) with the keys it may attend, their softmax probabilities P
 * and the row's log-sum-exp (P empty and lse −∞ when no key is allowed).
 */
function forEachRow(
  x: AttentionCpuInputs,
  dims: AttentionDims,
  opts: AttentionOptions,
  visit: (
    qOffset: number,
    b: number,
    h: number,
    t: number,
    keys: KeyRef[],
    probs: number[],
    lse: number,
  ) => void,
): void {
  const { batch: B, queryLen: Tq, keyLen: Tk, heads: nh, kvHeads: nkv, headDim: hd, diagSteps: S } = dims;
  const scale = opts.scale ?? 1 / Math.sqrt(hd);
  const offset = opts.queryOffset ?? 0;
  const dot = (a: ArrayLike<number>, i: number, c: ArrayLike<number>, j: number) => {
    let s = 0;
    for (let d = 0; d < hd; d++) s += a[i + d] * c[j + d];
    return s;
  };
  for (let b = 0; b < B; b++) {
    const len = Math.min(Math.max(x.lengths[b], 0), Tk);
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / (nh / nkv));
      for (let t = 0; t < Tq; t++) {
        const qo = ((b * Tq + t) * nh + h) * hd;
        const keys: KeyRef[] = [];
        const scores: number[] = [];
        for (let s = 0; s < len; s++) {
          if (opts.causal && s > t + offset) continue;
          if (opts.window && s + opts.window <= t + offset) continue;
          if (opts.chunk && Math.floor(s / opts.chunk) !== Math.floor((t + offset) / opts.chunk)) continue;
          const ko = ((b * Tk + s) * nkv + kvh) * hd;
          keys.push({ diag: false, offset: ko });
          scores.push(scale * dot(x.q, qo, x.k, ko));
        }
        for (let j = 0; j < S; j++) {
          const ko = (((j * B + b) * Tq + t) * nkv + kvh) * hd;
          keys.push({ diag: true, offset: ko });
          scores.push(scale * dot(x.q, qo, x.kd!, ko));
        }
        const sink = x.sinks ? [x.sinks[h]] : [];
        if (keys.length === 0 && !x.sinks) {
          visit(qo, b, h, t, keys, [], -Infinity);
          continue;
        }
        const m = Math.max(...scores, ...sink);
        const e = scores.map((s) => Math.exp(s - m));
        const sum = [...e, ...sink.map((s) => Math.exp(s - m))].reduce((a, c) => a + c, 0);
        visit(qo, b, h, t, keys, e.map((v) => v / sum), m + Math.log(sum));
      }
    }
  }
}

/** CPU reference of {@link attentionForward}: out and lse in f64. */
export function attentionCpu(
  x: AttentionCpuInputs,
  dims: AttentionDims,
  opts: AttentionOptions = {},
): AttentionCpuResult {
  const { batch: B, queryLen: Tq, heads: nh, headDim: hd } = dims;
  const out = new Float64Array(B * Tq * nh * hd);
  const lse = new Float64Array(B * nh * Tq);
  forEachRow(x, dims, opts, (qo, b, h, t, keys, probs, rowLse) => {
    lse[(b * nh + h) * Tq + t] = rowLse;
    keys.forEach((key, i) => {
      const vals = key.diag ? x.vd! : x.v;
      for (let d = 0; d < hd; d++) out[qo + d] += probs[i] * vals[key.offset + d];
    });
  });
  return { out, lse };
}

/**
 * CPU reference of {@link attentionBackward} given dout (the forward is recomputed): with P the row's
 * probabilities, dP_j = dO·v_j, D = Σ_j P_j·dP_j (= dO·out), dS_j = P_j·(dP_j − D):
 * dq = scale·Σ_j dS_j·k_j, dk_j += scale·dS_j·q, dv_j += P_j·dO (likewise dkd, dvd for diagonal keys).
 */
export function attentionBackwardCpu(
  x: AttentionCpuInputs & { dout: ArrayLike<number> },
  dims: AttentionDims,
  opts: AttentionOptions = {},
): AttentionCpuGrads {
  const { batch: B, queryLen: Tq, keyLen: Tk, heads: nh, kvHeads: nkv, headDim: hd, diagSteps: S } = dims;
  const scale = opts.scale ?? 1 / Math.sqrt(hd);
  const g: AttentionCpuGrads = {
    dq: new Float64Array(B * Tq * nh * hd),
    dk: new Float64Array(B * Tk * nkv * hd),
    dv: new Float64Array(B * Tk * nkv * hd),
    dkd: new Float64Array(S * B * Tq * nkv * hd),
    dvd: new Float64Array(S * B * Tq * nkv * hd),
  };
  forEachRow(x, dims, opts, (qo, _b, _h, _t, keys, probs) => {
    const dp = keys.map((key) => {
      const vals = key.diag ? x.vd! : x.v;
      let s = 0;
      for (let d = 0; d < hd; d++) s += x.dout[qo + d] * vals[key.offset + d];
      return s;
    });
    const rowD = probs.reduce((acc, pj, i) => acc + pj * dp[i], 0);
    keys.forEach((key, i) => {
      const ds = probs[i] * (dp[i] - rowD);
      const [keysIn, dKeys, dVals] = key.diag ? [x.kd!, g.dkd, g.dvd] : [x.k, g.dk, g.dv];
      for (let d = 0; d < hd; d++) {
        g.dq[qo + d] += scale * ds * keysIn[key.offset + d];
        dKeys[key.offset + d] += scale * ds * x.q[qo + d];
        dVals[key.offset + d] += probs[i] * x.dout[qo + d];
      }
    });
  });
  return g;
}
