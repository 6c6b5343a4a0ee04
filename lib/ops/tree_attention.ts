/**
 * The ops of speculative decoding's cached passes over one sequence (kernels/tree_attention.ts): attention
 * of new query rows over a KV cache with a tree mask, RoPE at per-row positions, and row gather/scatter for
 * moving keys, values and hidden states between buffers. Offsets (the cache prefix, the row a pass writes
 * at) are read from a small i32 `meta` buffer that the host writes before each run, so that one prebuilt
 * program serves every sequence position.
 *
 * Tree attention (SGLang's verify pass, and EAGLE's multi-step drafting): query row t attends every cached
 * key s < prefix, with prefix = meta[prefixSlot], plus the keys prefix + j (j < Tt, the tree region) for
 * which mask[t, j] ≠ 0, typically its ancestors in the draft tree and itself. With a lower-triangular mask
 * it is causal attention over freshly appended rows.
 *
 * Layouts, row-major: q, out [Tq, nh, hd]; k, v caches [S, nkv, hd]; mask u32 [Tq, Tt]; meta i32 [m].
 * These ops are inference-only: there is no backward.
 */
import * as K from "../../kernels/tree_attention.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { shapeString, type Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/** Tensors of {@link treeAttentionForward}. */
export interface TreeAttentionArgs {
  /** Queries [Tq, nh, hd] (RoPE applied). */
  q: Tensor;
  /** Key cache [S, nkv, hd]. */
  k: Tensor;
  /** Value cache [S, nkv, hd]. */
  v: Tensor;
  /** i32 [m]: meta[prefixSlot] is the number of cached keys every row attends. */
  meta: Tensor;
  /** u32 [Tq, Tt]: row t attends key prefix + j iff mask[t, j] ≠ 0. */
  mask: Tensor;
  /** Written: [Tq, nh, hd]. */
  out: Tensor;
}

/** Options of {@link treeAttentionForward}. */
export interface TreeAttentionOptions {
  /** Which entry of meta holds the prefix length (default 0). */
  prefixSlot?: number;
  /** Multiplies q·k (default 1/sqrt(hd)). */
  scale?: number;
  /**
   * A sliding window: `size` keys back from each row's position (`positions`, i32 [Tq]; prefix key s is at
   * position s, tree key j at row j's position, as in the target's verification pass). Absent: no window.
   */
  window?: { size: number; positions: Tensor };
  /**
   * Llama 4's chunked local attention: a key is kept when its position and the row's lie in the same chunk of
   * `size` positions (positions as for `window`; both may be given). Absent: none.
   */
  chunk?: { size: number; positions: Tensor };
  /** Attention sinks (GPT-OSS), f32 [nh]: a logit per head in every row's softmax, its probability dropped. */
  sinks?: Tensor | null;
}

/** Sizes of a tree attention call. */
export interface TreeAttentionDims {
  /** Tq: query rows. */
  rows: number;
  /** nh. */
  heads: number;
  /** nkv (divides nh). */
  kvHeads: number;
  /** hd. */
  headDim: number;
  /** S: cache rows. */
  cacheLen: number;
  /** Tt: tree-region keys (columns of the mask). */
  treeLen: number;
}

const MAX_HEAD_DIM = 256;

function checkTreeAttention(op: string, a: TreeAttentionArgs, prefixSlot: number): TreeAttentionDims {
  for (const name of ["q", "k", "v", "out"] as const) expectDtype(op, name, a[name], "f32");
  expectDtype(op, "meta", a.meta, "i32");
  expectDtype(op, "mask", a.mask, "u32");
  if (a.q.shape.length !== 3) {
    throw new ShapeError(
      `${op}: q (${a.q.label}) has shape ${shapeString(a.q.shape)}, expected [Tq, nh, hd]`,
    );
  }
  const [rows, heads, headDim] = a.q.shape;
  expectShape(op, "k", a.k, [-1, -1, headDim]);
  const [cacheLen, kvHeads] = a.k.shape;
  expectShape(op, "v", a.v, a.k.shape);
  expectShape(op, "out", a.out, a.q.shape);
  expectShape(op, "mask", a.mask, [rows, -1]);
  expectShape(op, "meta", a.meta, [-1]);
  const treeLen = a.mask.shape[1];
  if ([rows, heads, headDim, cacheLen, kvHeads].some((d) => d < 1) || heads % kvHeads !== 0) {
    throw new ShapeError(
      `${op}: q ${shapeString(a.q.shape)} and cache ${shapeString(a.k.shape)} must be non-empty with nh a ` +
        `multiple of nkv`,
    );
  }
  if (headDim > MAX_HEAD_DIM) throw new ShapeError(`${op}: head dim ${headDim} exceeds ${MAX_HEAD_DIM}`);
  if (!Number.isInteger(prefixSlot) || prefixSlot < 0 || prefixSlot >= a.meta.size) {
    throw new ShapeError(`${op}: prefixSlot ${prefixSlot} outside meta ${shapeString(a.meta.shape)}`);
  }
  return { rows, heads, kvHeads, headDim, cacheLen, treeLen };
}

/** Records tree attention (see the module comment): one invocation per (row, head). */
export async function treeAttentionForward(
  p: Program,
  a: TreeAttentionArgs,
  opts: TreeAttentionOptions = {},
): Promise<void> {
  const prefixSlot = opts.prefixSlot ?? 0;
  const d = checkTreeAttention("treeAttentionForward", a, prefixSlot);
  const w = opts.window ?? (opts.chunk ? { size: 0, positions: opts.chunk.positions } : undefined);
  if (opts.window && opts.chunk && opts.window.positions !== opts.chunk.positions) {
    throw new ShapeError("treeAttentionForward: window and chunk must read the same positions");
  }
  if (w) {
    expectDtype("treeAttentionForward", "positions", w.positions, "i32");
    expectShape("treeAttentionForward", "positions", w.positions, [d.rows]);
    if (d.treeLen > d.rows) {
      throw new ShapeError(
        `treeAttentionForward: a window needs the tree keys to be the rows (${d.treeLen} > ${d.rows})`,
      );
    }
  }
  if (opts.sinks) {
    expectDtype("treeAttentionForward", "sinks", opts.sinks, "f32");
    expectShape("treeAttentionForward", "sinks", opts.sinks, [d.heads]);
  }
  const name = `tree_attention.forward_hd${d.headDim}${w ? "_window" : ""}${opts.sinks ? "_sinks" : ""}`;
  await p.add(
    { name, code: K.treeAttention(d.headDim, !!w, !!opts.sinks), entryPoint: "main" },
    [
      params(
        ["u32", d.rows],
        ["u32", d.heads],
        ["u32", d.kvHeads],
        ["u32", d.treeLen],
        ["u32", d.cacheLen],
        ["u32", prefixSlot],
        ["f32", opts.scale ?? 1 / Math.sqrt(d.headDim)],
        ["u32", w?.size ?? 0],
        ["u32", opts.chunk?.size ?? 0],
        ["u32", 0],
        ["u32", 0],
        ["u32", 0],
      ),
      a.q,
      a.k,
      a.v,
      a.meta,
      a.mask,
      a.out,
      w?.positions ?? null,
      opts.sinks ?? null,
    ],
    Math.ceil(d.rows * d.heads / K.TREE_WG),
  );
}

/**
 * Records RoPE in place on x [R, heads, hd] with row r at position positions[r] (i32 [R]; clamped to the
 * table), cos/sin [maxPositions, r/2] from lib/ops/rope.ts `ropeTable` for a rotary width r ≤ hd: the first r
 * columns of each head rotate (r = hd: all of them).
 */
export async function ropeAtPositions(
  p: Program,
  x: Tensor,
  positions: Tensor,
  cos: Tensor,
  sin: Tensor,
): Promise<void> {
  const op = "ropeAtPositions";
  expectDtype(op, "x", x, "f32");
  expectDtype(op, "positions", positions, "i32");
  expectDtype(op, "cos", cos, "f32");
  expectDtype(op, "sin", sin, "f32");
  if (x.shape.length !== 3 || x.shape[2] % 2 !== 0) {
    throw new ShapeError(
      `${op}: x (${x.label}) has shape ${shapeString(x.shape)}, expected [R, heads, even hd]`,
    );
  }
  const [rows, heads, hd] = x.shape;
  expectShape(op, "positions", positions, [rows]);
  const half = cos.shape[1];
  if (cos.shape.length !== 2 || !(half >= 1 && half <= hd / 2)) {
    throw new ShapeError(
      `${op}: cos has shape ${shapeString(cos.shape)}, expected [positions, 1..${hd / 2}]`,
    );
  }
  expectShape(op, "sin", sin, cos.shape);
  const pairs = rows * heads * half;
  if (pairs === 0) return;
  await p.add(
    { name: "tree_attention.rope_at_positions", code: K.ropeAtPositions, entryPoint: "main" },
    [
      params(["u32", pairs], ["u32", heads], ["u32", half], ["u32", cos.shape[0]], ["u32", hd / 2]),
      x,
      positions,
      cos,
      sin,
    ],
    Math.ceil(pairs / K.TREE_WG),
  );
}

/** Records dst[r] = src[index[r]] for src [S, W], index i32 [R], dst [R, W]; bad indices give zero rows. */
export async function gatherRows(p: Program, src: Tensor, index: Tensor, dst: Tensor): Promise<void> {
  const op = "gatherRows";
  expectDtype(op, "src", src, "f32");
  expectDtype(op, "index", index, "i32");
  expectDtype(op, "dst", dst, "f32");
  expectShape(op, "src", src, [-1, -1]);
  expectShape(op, "index", index, [-1]);
  expectShape(op, "dst", dst, [index.shape[0], src.shape[1]]);
  const [srcRows, width] = src.shape;
  const n = dst.size;
  if (n === 0) return;
  await p.add(
    { name: "tree_attention.gather_rows", code: K.gatherRows, entryPoint: "main" },
    [params(["u32", index.shape[0]], ["u32", width], ["u32", srcRows], ["u32", 0]), src, index, dst],
    Math.ceil(n / K.TREE_WG),
  );
}

/**
 * Records dst[meta[slot] + r] = src[r] for src [R, W], dst [S, W] (rows past S are dropped; nothing is
 * written when meta[slot] < 0). src and dst must be distinct buffers.
 */
export async function scatterRows(
  p: Program,
  src: Tensor,
  dst: Tensor,
  meta: Tensor,
  slot: number,
): Promise<void> {
  const op = "scatterRows";
  expectDtype(op, "src", src, "f32");
  expectDtype(op, "dst", dst, "f32");
  expectDtype(op, "meta", meta, "i32");
  expectShape(op, "src", src, [-1, -1]);
  expectShape(op, "dst", dst, [-1, src.shape[1]]);
  expectShape(op, "meta", meta, [-1]);
  if (!Number.isInteger(slot) || slot < 0 || slot >= meta.size) {
    throw new ShapeError(`${op}: slot ${slot} outside meta ${shapeString(meta.shape)}`);
  }
  if (src.buffer === dst.buffer) throw new ShapeError(`${op}: src (${src.label}) and dst share a buffer`);
  const [rows, width] = src.shape;
  if (rows * width === 0) return;
  await p.add(
    { name: "tree_attention.scatter_rows", code: K.scatterRows, entryPoint: "main" },
    [params(["u32", rows], ["u32", width], ["u32", dst.shape[0]], ["u32", slot]), src, meta, dst],
    Math.ceil(rows * width / K.TREE_WG),
  );
}

// ---------------------------------------------------------------------------------------------------------
// CPU references (f64 arithmetic).

/** Host inputs of {@link treeAttentionCpu}: flat arrays in the layouts of the module comment. */
export interface TreeAttentionCpuInputs {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  mask: ArrayLike<number>;
  /** Cached keys every row attends. */
  prefix: number;
  /** A sliding window of `size` keys from the rows' `positions` (see {@link TreeAttentionOptions.window}). */
  window?: { size: number; positions: ArrayLike<number> };
  /** Attention sinks [nh], absent for none. */
  sinks?: ArrayLike<number>;
  /** Chunks of `size` positions (see {@link TreeAttentionOptions.chunk}). */
  chunk?: { size: number; positions: ArrayLike<number> };
}

/** CPU reference of {@link treeAttentionForward}: the softmax of each row materialised. */
export function treeAttentionCpu(
  x: TreeAttentionCpuInputs,
  d: TreeAttentionDims,
  scale = 1 / Math.sqrt(d.headDim),
): Float64Array {
  const { rows, heads: nh, kvHeads: nkv, headDim: hd, cacheLen, treeLen } = d;
  const out = new Float64Array(rows * nh * hd);
  for (let t = 0; t < rows; t++) {
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / (nh / nkv));
      const qo = (t * nh + h) * hd;
      const keys: number[] = [];
      const chunkOf = (pos: number) => Math.floor(pos / x.chunk!.size);
      const inWindow = (keyPos: number) =>
        (!x.window || keyPos + x.window.size > x.window.positions[t]) &&
        (!x.chunk || chunkOf(keyPos) === chunkOf(x.chunk.positions[t]));
      for (let s = 0; s < Math.min(x.prefix, cacheLen); s++) if (inWindow(s)) keys.push(s);
      for (let j = 0; j < treeLen; j++) {
        const keep = x.mask[t * treeLen + j] !== 0 && x.prefix + j < cacheLen;
        const pos = (x.window ?? x.chunk)?.positions[j] ?? 0;
        if (keep && inWindow(pos)) keys.push(x.prefix + j);
      }
      if (keys.length === 0) continue;
      const scores = keys.map((s) => {
        let acc = 0;
        for (let e = 0; e < hd; e++) acc += x.q[qo + e] * x.k[(s * nkv + kvh) * hd + e];
        return scale * acc;
      });
      const sink = x.sinks ? [x.sinks[h]] : [];
      const m = Math.max(...scores, ...sink);
      const w = scores.map((s) => Math.exp(s - m));
      const sum = [...w, ...sink.map((s) => Math.exp(s - m))].reduce((a, b) => a + b, 0);
      keys.forEach((s, i) => {
        for (let e = 0; e < hd; e++) out[qo + e] += (w[i] / sum) * x.v[(s * nkv + kvh) * hd + e];
      });
    }
  }
  return out;
}

/** CPU reference of {@link ropeAtPositions} for x [R, heads, hd] and a rotary width r (default hd). */
export function ropeAtPositionsCpu(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  [rows, heads, hd]: [number, number, number],
  rotary = hd,
): Float64Array {
  const half = rotary / 2;
  const out = Float64Array.from(x);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const e = (r * heads + h) * hd;
      for (let j = 0; j < half; j++) {
        const c = cos[positions[r] * half + j], s = sin[positions[r] * half + j];
        const x1 = x[e + j], x2 = x[e + j + half];
        out[e + j] = x1 * c - x2 * s;
        out[e + j + half] = x2 * c + x1 * s;
      }
    }
  }
  return out;
}

/** CPU reference of {@link gatherRows}. */
export function gatherRowsCpu(src: ArrayLike<number>, width: number, index: ArrayLike<number>): Float32Array {
  const srcRows = src.length / width;
  const out = new Float32Array(index.length * width);
  for (let r = 0; r < index.length; r++) {
    const s = index[r];
    if (s < 0 || s >= srcRows) continue;
    for (let c = 0; c < width; c++) out[r * width + c] = src[s * width + c];
  }
  return out;
}

/** CPU reference of {@link scatterRows} (into a copy of dst). */
export function scatterRowsCpu(
  src: ArrayLike<number>,
  dst: ArrayLike<number>,
  width: number,
  start: number,
): Float32Array {
  const out = Float32Array.from(dst);
  if (start < 0) return out;
  const rows = src.length / width, dstRows = dst.length / width;
  for (let r = 0; r < rows && start + r < dstRows; r++) {
    for (let c = 0; c < width; c++) out[(start + r) * width + c] = src[r * width + c];
  }
  return out;
}
