/**
 * Matrix products: `matmul` (out = alpha·op(A)·op(B), optionally + out, batched, B broadcast), the nn.Linear
 * helpers `linear` / `linearBackward` (weights stored [out, in] as in Hugging Face), and their CPU references.
 *
 * The kernel family and tile sizes come from the adapter's kind (CPU drivers get `regtile`, GPUs `tiled`;
 * {@link matmulTileFor}) unless the caller passes a `tile`.
 * Long contractions over few outputs (the weight gradient dW = dyᵀ·x over many rows) are split along K:
 * each slice writes a partial product to a scratch tensor and a reduce kernel sums the slices in order, so
 * results are deterministic (no atomics).
 */
import * as K from "../../kernels/matmul.ts";
import type { MatmulTile, MatmulVariant } from "../../kernels/matmul.ts";
import { cpuKernels, type Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";
import { params, type Program } from "../gpu/program.ts";
import { DTYPE_BYTES, shapeString, type Tensor } from "../tensor.ts";
import { type RowBlock, rowBlocks } from "./blocks.ts";
import { accumulate, copyStrided, fill, type StridedCopy } from "./elementwise.ts";
import { fitsTexture, packTexels } from "./texels.ts";

export type { MatmulTile } from "../../kernels/matmul.ts";

/** Options of {@link matmul}. */
export interface MatmulOptions {
  /** op(A) = Aᵀ: A is stored [K, M] (or [batch, K, M]). */
  transA?: boolean;
  /** op(B) = Bᵀ: B is stored [N, K] (or [batch, N, K]). */
  transB?: boolean;
  /** Scale of the product (default 1). */
  alpha?: number;
  /** Add the product to what `out` holds instead of overwriting it. */
  accumulate?: boolean;
  /**
   * out = addend + alpha·op(A)·op(B): `addend` (f32, out's shape, another tensor) added in the store of a
   * `regtile` product that is not split over K (a residual add fused: the same sum, bit for bit, as the
   * product followed by elementwise `accumulate`, which other tiles and split products run). Not with
   * `accumulate`.
   */
  addend?: Tensor;
  /**
   * Number of K slices (split-K). Default: chosen from the shape (more slices when the output has few tiles
   * and K is long); 1 disables splitting.
   */
  splitK?: number;
  /** Kernel family and tile sizes; default {@link matmulTileFor}(gpu). */
  tile?: MatmulTile;
}

/** Shapes of one matmul, resolved from the tensors. */
interface Dims {
  batch: number;
  M: number;
  N: number;
  K: number;
  /** B has its own batch dimension (else it is shared by the batch). */
  batchedB: boolean;
}

/**
 * The default `regtile` tile: 16 rows × 32 columns per invocation, 48 vec4 loads per 2048 FMAs per 4 k-steps,
 * the operands read from textures. Measured on lavapipe (2 cores, 1024³, machine shared): 15 GFLOP/s against
 * 8-14 for 16×16, with a 3.6 s compile per variant; 32×32 is faster still (18 GFLOP/s) but takes 11 s to
 * compile, so it is not the default (a caller may pass it as `tile`). Texture operands, on a Zen 3 host whose
 * storage loads are far dearer: 25 GFLOP/s against 5.2 from storage buffers, packing included.
 */
export const DEFAULT_CPU_TILE: K.RegtileTile = { kind: "regtile", tm: 16, tn4: 8, textures: true };

/** The default `tiled` tile for GPUs. */
export const DEFAULT_GPU_TILE: MatmulTile = { kind: "tiled", bm: 64, bn: 64, bk: 16 };

/**
 * The tile for this device: {@link DEFAULT_CPU_TILE} with CPU kernels (lib/gpu/device.ts `cpuKernels`), else
 * {@link DEFAULT_GPU_TILE}.
 */
export function matmulTileFor(gpu: Gpu): MatmulTile {
  return cpuKernels(gpu) ? DEFAULT_CPU_TILE : DEFAULT_GPU_TILE;
}

/** A product's shape and layout, as a {@link MatmulTileChooser} sees it. */
export interface MatmulShape {
  /** op(A) = Aᵀ. */
  transA: boolean;
  /** op(B) = Bᵀ. */
  transB: boolean;
  /** B's storage type. */
  bType: K.MatmulBType;
  /** Rows of op(A) and of the output. */
  M: number;
  /** Columns of op(B) and of the output. */
  N: number;
  /** The contraction's length. */
  K: number;
}

/**
 * Picks the kernel tile of a product that passes no `tile` (lib/ops/matmul_autotune.ts installs one), or
 * undefined for the adapter's default. It only changes which register tile runs: the split over K is still
 * decided from the default tile, so every choice sums each output in the same order (bit-identical results).
 */
export type MatmulTileChooser = (shape: MatmulShape) => Promise<MatmulTile | undefined>;

const choosers = new WeakMap<Gpu, MatmulTileChooser>();

/** Installs (or with null removes) the tile chooser of `gpu`'s products. */
export function setMatmulTileChooser(gpu: Gpu, chooser: MatmulTileChooser | null): void {
  if (chooser) choosers.set(gpu, chooser);
  else choosers.delete(gpu);
}

/**
 * K slices the default tile gives a product of `shape` (batch 1): what {@link matmul} uses whatever tile
 * runs, so a tuner timing candidates passes it as `splitK` to time what will run.
 */
export function defaultSplitK(gpu: Gpu, shape: MatmulShape): number {
  const d: Dims = { batch: 1, M: shape.M, N: shape.N, K: shape.K, batchedB: false };
  const tile = fitTile(matmulTileFor(gpu), d.M, d.N);
  const [rows, cols] = tileExtent(tile);
  return chooseSplit(gpu, d, tile, Math.ceil(d.N / cols) * Math.ceil(d.M / rows))[0];
}

/** A short name of a tile, e.g. "regtile 16x16" or "tiled 64x64x16". */
export function tileName(tile: MatmulTile): string {
  return tile.kind === "regtile"
    ? `regtile ${tile.tm}x${4 * tile.tn4}${tile.textures ? " textures" : ""}`
    : `tiled ${tile.bm}x${tile.bn}x${tile.bk}`;
}

/** Throws unless `tile` fits the device's workgroup limits. */
export function checkTile(gpu: Gpu, tile: MatmulTile): void {
  if (tile.kind === "regtile") {
    if (tile.tm < 4 || tile.tm % 4 !== 0 || tile.tn4 < 1 || !Number.isInteger(tile.tn4)) {
      throw new ShapeError(`matmul: bad regtile tile ${JSON.stringify(tile)} (tm a multiple of 4, tn4 >= 1)`);
    }
    return;
  }
  const { bm, bn, bk } = tile;
  const threads = (bm / 4) * (bn / 4);
  const bytes = 4 * bk * (bm + bn);
  if (bm % 4 !== 0 || bn % 4 !== 0 || bk < 1 || (bk * bm) % 4 !== 0 || (bk * bn) % 4 !== 0) {
    throw new ShapeError(`matmul: bad tiled tile ${JSON.stringify(tile)} (bm, bn multiples of 4)`);
  }
  if (threads > gpu.limits.maxComputeInvocationsPerWorkgroup) {
    throw new ShapeError(
      `matmul: tile ${tileName(tile)} needs ${threads} invocations per workgroup, the device allows ` +
        `${gpu.limits.maxComputeInvocationsPerWorkgroup}`,
    );
  }
  if (bytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new ShapeError(
      `matmul: tile ${tileName(tile)} needs ${bytes} bytes of workgroup memory, the device allows ` +
        `${gpu.limits.maxComputeWorkgroupStorageSize}`,
    );
  }
}

function mismatch(a: Tensor, b: Tensor, why: string): ShapeError {
  return new ShapeError(
    `matmul: a (${a.label}) ${shapeString(a.shape)} and b (${b.label}) ${shapeString(b.shape)}: ${why}`,
  );
}

/** Checks shapes and dtypes (before anything is recorded) and resolves the sizes. */
function resolve(gpu: Gpu, a: Tensor, b: Tensor, out: Tensor, opts: MatmulOptions): Dims {
  if (a.dtype !== "f32") throw new ShapeError(`matmul: a (${a.label}) is ${a.dtype}, expected f32`);
  if (out.dtype !== "f32") throw new ShapeError(`matmul: out (${out.label}) is ${out.dtype}, expected f32`);
  if (b.dtype !== "f32" && b.dtype !== "f16" && b.dtype !== "bf16") {
    throw new ShapeError(`matmul: b (${b.label}) is ${b.dtype}, expected f32, f16 or bf16`);
  }
  if (b.dtype === "f16" && !gpu.features.shaderF16) {
    throw new ShapeError(`matmul: b (${b.label}) is f16 but this device lacks shader-f16; use f32 or bf16`);
  }
  if (a.shape.length !== 2 && a.shape.length !== 3) throw mismatch(a, b, "a must be 2-D or 3-D (batched)");
  if (b.shape.length !== 2 && b.shape.length !== 3) throw mismatch(a, b, "b must be 2-D or 3-D (batched)");
  if (b.shape.length === 3 && a.shape.length !== 3) throw mismatch(a, b, "b is batched but a is not");
  const batch = a.shape.length === 3 ? a.shape[0] : 1;
  const batchedB = b.shape.length === 3;
  if (batchedB && b.shape[0] !== batch) {
    throw mismatch(a, b, `batch sizes differ (${batch} vs ${b.shape[0]})`);
  }
  const [a0, a1] = a.shape.slice(-2);
  const [b0, b1] = b.shape.slice(-2);
  const [M, Ka] = opts.transA ? [a1, a0] : [a0, a1];
  const [Kb, N] = opts.transB ? [b1, b0] : [b0, b1];
  if (Ka !== Kb) {
    throw mismatch(
      a,
      b,
      `inner dimensions differ (op(A) is ${M}x${Ka}${opts.transA ? " (transA)" : ""}, op(B) is ${Kb}x${N}${
        opts.transB ? " (transB)" : ""
      })`,
    );
  }
  const expected = a.shape.length === 3 ? [batch, M, N] : [M, N];
  if (out.shape.length !== expected.length || out.shape.some((d, i) => d !== expected[i])) {
    throw new ShapeError(
      `matmul: out (${out.label}) has shape ${shapeString(out.shape)}, expected ${
        shapeString(expected)
      } for a ${shapeString(a.shape)} and b ${shapeString(b.shape)}`,
    );
  }
  return { batch, M, N, K: Ka, batchedB };
}

/** Output rows × columns one workgroup of `tile` computes. */
function tileExtent(tile: MatmulTile): [number, number] {
  return tile.kind === "regtile" ? [tile.tm, 4 * K.REGTILE_WG * tile.tn4] : [tile.bm, tile.bn];
}

/** Shrinks a `regtile` tile for small outputs (fewer idle lanes and rows): the tile that runs for M×N. */
export function fitTile(tile: MatmulTile, M: number, N: number): MatmulTile {
  if (tile.kind !== "regtile") return tile;
  let { tm, tn4 } = tile;
  while (tm > 4 && tm / 2 >= M) tm /= 2;
  tm = Math.max(4, Math.ceil(tm / 4) * 4);
  while (tn4 > 1 && 4 * K.REGTILE_WG * (tn4 / 2) >= N) tn4 = Math.ceil(tn4 / 2);
  return { ...tile, tm, tn4 };
}

/** Workgroups that keep the device busy: a few per CPU thread, or enough to fill a GPU. */
function parallelTarget(tile: MatmulTile): number {
  return tile.kind === "regtile" ? 16 : 256;
}

/** K slices for a product with `tiles` output tiles (1 = no split), as [splits, kChunk]. */
function chooseSplit(
  gpu: Gpu,
  d: Dims,
  tile: MatmulTile,
  tiles: number,
  requested?: number,
): [number, number] {
  const align = tile.kind === "regtile" ? 4 : tile.bk;
  let splits = requested ?? 1;
  if (requested === undefined && d.K >= 1024 && tiles < parallelTarget(tile)) {
    splits = Math.min(Math.ceil(parallelTarget(tile) / tiles), Math.floor(d.K / 256));
  }
  const maxScratch = Math.floor(gpu.limits.maxStorageBufferBindingSize / (4 * d.batch * d.M * d.N));
  splits = Math.max(1, Math.min(splits, maxScratch, Math.ceil(d.K / align)));
  if (splits === 1) return [1, Math.max(d.K, 1)];
  const kChunk = Math.ceil(d.K / splits / align) * align;
  return [Math.ceil(d.K / kChunk), kChunk];
}

/**
 * Records out = alpha·op(A)·op(B) (+ out with `accumulate`) into `p`.
 *
 * Shapes (row-major): op(A) is [M, K] (A stored [M, K], or [K, M] with `transA`), op(B) is [K, N] (B stored
 * [K, N], or [N, K] with `transB`), out is [M, N]. Batched: a and out carry a leading batch dimension and b
 * either the same one or none (one B shared by the batch). A and out are f32; B is f32, f16 (when the device
 * has shader-f16) or bf16. Shape or dtype mismatches throw ShapeError before anything is recorded.
 *
 * A split-K product keeps its partial products in a scratch tensor owned by the program (`p.scratch`).
 */
export async function matmul(
  p: Program,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  opts: MatmulOptions = {},
): Promise<void> {
  const addend = opts.addend;
  if (!addend) {
    await recordProduct(p, a, b, out, opts, false);
    return;
  }
  if (opts.accumulate) throw new ShapeError("matmul: addend and accumulate cannot be combined");
  if (addend.dtype !== "f32" || shapeString(addend.shape) !== shapeString(out.shape)) {
    throw new ShapeError(
      `matmul: addend (${addend.label}) ${addend.dtype} ${shapeString(addend.shape)} must be f32 of out's ` +
        `shape ${shapeString(out.shape)}`,
    );
  }
  if (!await recordProduct(p, a, b, out, opts, true)) await accumulate(p, out, addend);
}

/**
 * Records the product of {@link matmul}; with `fuseAddend`, adds `opts.addend` in the store where the kernel
 * can (a `regtile` product not split over K). Returns whether it did.
 */
async function recordProduct(
  p: Program,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  opts: MatmulOptions,
  fuseAddend: boolean,
): Promise<boolean> {
  const gpu = p.gpu;
  const d = resolve(gpu, a, b, out, opts);
  // The split over K comes from the caller's tile or the default one, never from a chooser's pick.
  const splitTile = opts.tile ?? matmulTileFor(gpu);
  const baseTile = opts.tile ?? await chosenTile(gpu, d, opts, b.dtype as K.MatmulBType) ?? splitTile;
  checkTile(gpu, baseTile);
  if (opts.splitK !== undefined && (!Number.isInteger(opts.splitK) || opts.splitK < 1)) {
    throw new ShapeError(`matmul: splitK must be a positive integer, got ${opts.splitK}`);
  }
  const alpha = opts.alpha ?? 1;
  const accumulate = opts.accumulate ?? false;
  if (out.size === 0) return true;
  if (d.K === 0) {
    // An empty contraction: the product is zero.
    if (!accumulate) await fill(p, out, 0);
    return false;
  }
  const tile = fitTile(baseTile, d.M, d.N);
  const [rows, cols] = tileExtent(tile);
  const gridX = Math.ceil(d.N / cols), gridY = Math.ceil(d.M / rows);
  const [splits, kChunk] = splitFor(gpu, d, fitTile(splitTile, d.M, d.N), opts.splitK);
  const split = splits > 1;
  const scratch = split ? p.transient("split-K partials", [d.batch * splits, d.M, d.N], "f32") : null;
  const variant: MatmulVariant = {
    transA: opts.transA ?? false,
    transB: opts.transB ?? false,
    bType: b.dtype as K.MatmulBType,
    accumulate: accumulate && !split,
    addend: fuseAddend && tile.kind === "regtile" && !split,
  };
  const uniforms = productParams(d, splits, kChunk, split ? 1 : alpha);
  const target = scratch ?? out;
  if (tile.kind === "regtile") {
    const extra = variant.addend ? [opts.addend!] : [];
    await recordRegtile(p, { d, tile, variant, grid: [gridX, gridY, d.batch * splits] }, uniforms, [
      a,
      b,
      target,
    ], extra);
  } else {
    const name = `matmul.${variant.transA ? "T" : "N"}${variant.transB ? "T" : "N"}.${b.dtype}`;
    const fits = d.M % tile.bm === 0 && d.N % tile.bn === 0 && d.K % tile.bk === 0 &&
      kChunk % tile.bk === 0;
    await p.add(
      {
        name: `${name}.${tileName(tile)}`,
        code: K.tiledKernel(variant),
        entryPoint: "main",
        constants: { BM: tile.bm, BN: tile.bn, BK: tile.bk, CHECKED: fits ? 0 : 1 },
        f16: b.dtype === "f16",
      },
      [uniforms, a, b, target],
      [gridX, gridY, d.batch * splits],
      undefined,
      2 * d.batch * d.M * d.N * d.K,
    );
  }
  if (scratch) {
    const total = d.batch * d.M * d.N;
    await p.add(
      { name: "matmul.splitk_reduce", code: K.splitkReduce, entryPoint: "main" },
      [
        params(["u32", d.M * d.N], ["u32", splits], ["u32", total], ["u32", accumulate ? 1 : 0], [
          "f32",
          alpha,
        ]),
        scratch,
        out,
      ],
      Math.ceil(total / K.REDUCE_WG),
    );
  }
  return variant.addend ?? false;
}

/** The uniform block of a product (kernels/matmul.ts `Params`). */
function productParams(d: Dims, splits: number, kChunk: number, alpha: number) {
  return params(
    ["u32", d.M],
    ["u32", d.N],
    ["u32", d.K],
    ["u32", splits],
    ["u32", kChunk],
    ["u32", d.M * d.K],
    ["u32", d.batchedB ? d.K * d.N : 0],
    ["u32", d.M * d.N],
    ["f32", alpha],
  );
}

/** What one `regtile` dispatch computes: its shape, tile, variant and grid. */
interface RegtileLaunch {
  d: Dims;
  tile: K.RegtileTile;
  variant: MatmulVariant;
  grid: [number, number, number];
}

/**
 * Records one `regtile` dispatch of op(A)·op(B) into C, the operands packed into textures where
 * {@link operandTextures} says, then the bindings after C (`extra`: an addend, or a gated store's U and its
 * other tensors, U packed as B is).
 */
async function recordRegtile(
  p: Program,
  launch: RegtileLaunch,
  uniforms: ReturnType<typeof params>,
  [a, b, c]: [Tensor, Tensor, Tensor],
  extra: Tensor[],
): Promise<void> {
  const { d, tile, variant } = launch;
  const vec4 = K.regtileVec4(variant, d.M, d.N, d.K);
  const textures = operandTextures(tile, vec4, a, b, launch.grid[1]);
  const which = textures.a || textures.b ? ` textures ${textures.a ? "A" : ""}${textures.b ? "B" : ""}` : "";
  const gated = variant.gated;
  const epilogue = variant.addend
    ? " +addend"
    : gated
    ? ` +${gated.kind === "forward" ? gated.activation : "swiglu"} ${gated.kind}${gated.half ? " f16" : ""}`
    : "";
  const packedU = gated?.kind === "forward" && textures.b;
  const products = gated?.kind === "forward" ? 2 : 1;
  await p.add(
    {
      name: `matmul.${variant.transA ? "T" : "N"}${variant.transB ? "T" : "N"}.${b.dtype}.${
        tileName({ ...tile, textures: false })
      }${which}${vec4 ? ".vec4" : ""}${epilogue}`,
      code: K.regtileKernel(variant, tile, vec4, textures),
      entryPoint: "main",
      f16: b.dtype === "f16" && !textures.b,
    },
    [
      uniforms,
      textures.a ? await packTexels(p, a, "matmul operand A") : a,
      textures.b ? await packTexels(p, b, "matmul operand B") : b,
      c,
      ...(packedU ? [await packTexels(p, extra[0], "matmul operand U"), ...extra.slice(1)] : extra),
    ],
    launch.grid,
    undefined,
    2 * products * d.batch * d.M * d.N * d.K,
  );
}

/**
 * The tensors of a gated store (kernels/matmul.ts `GatedEpilogue`): for `forward`, `u` the up weight (stored
 * as B is) and, with `store`, the gate and up outputs; for `backward`, the forward's gate and up and the
 * output ∂/∂up. gate and up are f32, or f16 with an even column count: the forward then computes act from
 * their f16 values ({@link savedHalf}).
 */
export type GatedTensors =
  | { kind: "forward"; activation: "silu" | "gelu_tanh"; u: Tensor; gate?: Tensor; up?: Tensor }
  | { kind: "backward"; gate: Tensor; up: Tensor; dUp: Tensor };

/**
 * Records out = act(op(A)·op(B)) ⊙ op(A)·op(U) (forward) or the SwiGLU's input gradients from op(A)·op(B)
 * (backward) as one `regtile` kernel, when the product runs as one (a `regtile` tile, one product, not
 * split over K): the bits of the unfused products followed by kernels/swiglu.ts. Returns false, recording
 * nothing, when it does not; the caller then runs the unfused ops (lib/ops/gated_mlp.ts).
 */
export async function gatedMatmul(
  p: Program,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  gated: GatedTensors,
  opts: { transA?: boolean; transB?: boolean } = {},
): Promise<boolean> {
  const gpu = p.gpu;
  const d = resolve(gpu, a, b, out, opts);
  const saved = [gated.gate, gated.up].filter((t) => t !== undefined);
  const half = savedHalf("gatedMatmul", saved, out);
  for (const t of saved) expectShape("gatedMatmul", t, out, half.half ? "f16" : "f32");
  if (gated.kind === "backward") expectShape("gatedMatmul", gated.dUp, out);
  const others = gated.kind === "forward" ? saved : [...saved, gated.dUp];
  const forward = gated.kind === "forward";
  if (forward) {
    expectShape("gatedMatmul", gated.u, b, b.dtype);
    if ((gated.gate === undefined) !== (gated.up === undefined)) {
      throw new ShapeError("gatedMatmul: gate and up are stored together or not at all");
    }
  }
  // One product in one dispatch, as the unfused product would run (not split over K, W in one binding).
  const splitTile = matmulTileFor(gpu);
  if (splitTile.kind !== "regtile" || d.batch !== 1 || d.K === 0 || out.size === 0) return false;
  if (splitFor(gpu, d, fitTile(splitTile, d.M, d.N))[0] !== 1) return false;
  const weights = forward ? [b, gated.u] : [b];
  if (weights.some((w) => weightBlocks(w, null).length > 1)) return false;
  // A gated forward computes 2N columns: its tile is chosen (and tuned) as a product's of that width.
  const shape = { ...d, N: forward ? 2 * d.N : d.N };
  const base = await chosenTile(gpu, shape, opts, b.dtype as K.MatmulBType) ?? splitTile;
  if (base.kind !== "regtile") return false;
  checkTile(gpu, base);
  const fit = fitTile(base, d.M, shape.N) as K.RegtileTile;
  const tile = forward ? { ...fit, tn4: 2 * Math.ceil(fit.tn4 / 2) } : fit;
  const variant: MatmulVariant = {
    transA: opts.transA ?? false,
    transB: opts.transB ?? false,
    bType: b.dtype as K.MatmulBType,
    accumulate: false,
    gated: forward
      ? { kind: "forward", activation: gated.activation, store: gated.gate !== undefined, ...half }
      : { kind: "backward", ...half },
  };
  const grid: [number, number, number] = [
    Math.ceil(d.N / K.regtileColumns(variant, tile)),
    Math.ceil(d.M / tile.tm),
    1,
  ];
  const extra = forward ? [gated.u, ...others] : others;
  await recordRegtile(p, { d, tile, variant, grid }, productParams(d, 1, d.K, 1), [a, b, out], extra);
  return true;
}

/**
 * Whether the saved gate and up of a gated store are f16 (`{ half: true }`) or f32 (`{}`): both the same dtype,
 * and with f16 an even column count (a u32 word holds two elements, kernels/matmul.ts `GatedEpilogue`).
 */
export function savedHalf(op: string, saved: Tensor[], like: Tensor): { half?: true } {
  if (saved.length === 0 || saved.every((t) => t.dtype === "f32")) return {};
  const cols = like.shape[like.shape.length - 1] ?? 1;
  if (saved.some((t) => t.dtype !== "f16") || cols % 2 !== 0) {
    const what = saved.map((t) => `${t.label} ${t.dtype}`).join(", ");
    throw new ShapeError(
      `${op}: saved gate and up (${what}) must be both f32, or both f16 with an even column count (${cols})`,
    );
  }
  return { half: true };
}

/** Throws unless `t` is f32 (or `dtype`) of `like`'s shape. */
function expectShape(op: string, t: Tensor, like: Tensor, dtype = "f32"): void {
  if (t.dtype !== dtype || shapeString(t.shape) !== shapeString(like.shape)) {
    throw new ShapeError(
      `${op}: ${t.label} is ${t.dtype} ${shapeString(t.shape)}, expected ${dtype} ${shapeString(like.shape)}`,
    );
  }
}

/** The chooser's tile for a product (undefined: none installed, or it keeps the default). */
async function chosenTile(
  gpu: Gpu,
  d: Dims,
  opts: MatmulOptions,
  bType: K.MatmulBType,
): Promise<MatmulTile | undefined> {
  const chooser = choosers.get(gpu);
  if (!chooser) return undefined;
  return await chooser({ transA: opts.transA ?? false, transB: opts.transB ?? false, bType, ...d });
}

/** [splits, kChunk] of a product, from the output tiles of `tile` (the caller's or the default). */
function splitFor(gpu: Gpu, d: Dims, tile: MatmulTile, requested?: number): [number, number] {
  const [rows, cols] = tileExtent(tile);
  const tiles = Math.ceil(d.N / cols) * Math.ceil(d.M / rows) * d.batch;
  return chooseSplit(gpu, d, tile, tiles, requested);
}

/**
 * Which operands a `regtile` product reads from textures: with `tile.textures` and vec4 loads, each operand
 * read more than once that fits a texture. A is: the 8 lanes of a workgroup each load the same rows of it.
 * B is when the grid has several row tiles; read once (a matrix-vector product's weight), it costs as much to
 * pack as to read. Measured on lavapipe, the bench's draft step (B4 T64): 785-972 ms with A always packed,
 * 949-1213 ms with A packed only under several column tiles; decode with the bf16 weight packed took twice
 * as long as from storage.
 */
function operandTextures(
  tile: K.RegtileTile,
  vec4: boolean,
  a: Tensor,
  b: Tensor,
  gridY: number,
): K.OperandTextures {
  const on = vec4 && (tile.textures ?? false);
  return { a: on && fitsTexture(a), b: on && gridY > 1 && fitsTexture(b) };
}

/** Flattens all but the last dimension: [..., n] -> [rows, n]. */
export function rows2d(t: Tensor): Tensor {
  if (t.shape.length === 2) return t;
  if (t.shape.length === 0) throw new ShapeError(`linear: ${t.label} is a scalar`);
  const n = t.shape[t.shape.length - 1];
  return t.reshape([n === 0 ? 0 : t.size / n, n]);
}

/**
 * The scratch kind of a split linear's column block [rows, block rows of W] (one per distinct block size in a
 * program, shared by the forward and backward; {@link Program.transient}).
 */
export const SPLIT_LINEAR_BLOCK = "split linear column block";

/** Options of {@link linear}. */
export interface LinearOptions {
  /** y += x·Wᵀ instead of y = x·Wᵀ. */
  accumulate?: boolean;
  /** y = addend + x·Wᵀ (a residual add; {@link MatmulOptions.addend}). */
  addend?: Tensor;
}

/**
 * nn.Linear without bias: y = x·Wᵀ for x [rows, in] (or [..., in]), W [out, in] (f32, f16 or bf16, as stored
 * by Hugging Face), y [rows, out] (or [..., out]).
 */
export async function linear(
  p: Program,
  x: Tensor,
  w: Tensor,
  y: Tensor,
  opts: LinearOptions = {},
): Promise<void> {
  if (x.shape.length < 1 || y.shape.length !== x.shape.length) {
    throw new ShapeError(
      `linear: x (${x.label}) ${shapeString(x.shape)} and y (${y.label}) ${shapeString(y.shape)} ` +
        `must have the same rank`,
    );
  }
  if (x.shape.slice(0, -1).some((d, i) => d !== y.shape[i])) {
    throw new ShapeError(
      `linear: x (${x.label}) ${shapeString(x.shape)} and y (${y.label}) ${shapeString(y.shape)} ` +
        `must agree on their leading dimensions`,
    );
  }
  const x2 = x.shape.length === 1 ? x.reshape([1, x.shape[0]]) : rows2d(x);
  const y2 = y.shape.length === 1 ? y.reshape([1, y.shape[0]]) : rows2d(y);
  const blocks = weightBlocks(w, null);
  if (opts.addend && opts.accumulate) {
    throw new ShapeError("linear: addend and accumulate cannot be combined");
  }
  const addend = opts.addend &&
    (opts.addend.shape.length === 1 ? opts.addend.reshape(y2.shape) : rows2d(opts.addend));
  if (blocks.length === 1) {
    return await matmul(p, x2, w, y2, { transB: true, accumulate: opts.accumulate, addend });
  }
  // W over one binding: y[:, block] = x·W[block]ᵀ per row block of W, through a scratch column block.
  const R = y2.shape[0], out = y2.shape[1];
  for (const { row0, rows } of blocks) {
    const yb = p.transient(SPLIT_LINEAR_BLOCK, [R, rows], "f32");
    const column: StridedCopy = {
      count: [1, R, rows],
      srcStrides: [0, out, 1],
      srcOffset: row0,
      dstStrides: [0, rows, 1],
    };
    if (opts.accumulate) await copyStrided(p, y2, yb, column);
    await matmul(p, x2, weightRows(w, row0, rows), yb, { transB: true, accumulate: opts.accumulate });
    await copyStrided(p, yb, y2, {
      count: [1, R, rows],
      srcStrides: [0, rows, 1],
      dstStrides: [0, out, 1],
      dstOffset: row0,
    });
  }
  if (addend) await accumulate(p, y2, addend);
}

/** The row blocks of W (and of its gradient dW when given) that each bind (lib/ops/blocks.ts rowBlocks). */
function weightBlocks(w: Tensor, dw: Tensor | null): RowBlock[] {
  const bytes = [DTYPE_BYTES[w.dtype], ...(dw ? [DTYPE_BYTES[dw.dtype]] : [])];
  return rowBlocks(w.gpu.limits, w.shape[0], w.shape[1], bytes);
}

/** Rows [row0, row0 + rows) of a [out, in] matrix, as a view. */
function weightRows(w: Tensor, row0: number, rows: number): Tensor {
  return w.view(row0 * w.shape[1], [rows, w.shape[1]], `${w.label}[${row0}:${row0 + rows}]`);
}

/** Options of {@link linearBackward}. */
export interface LinearBackwardOptions {
  /** dx += dy·W instead of dx = dy·W. */
  accumulateDx?: boolean;
  /** dW += dyᵀ·x instead of dW = dyᵀ·x (gradient accumulation over micro-batches). */
  accumulateDw?: boolean;
  /** K slices for dW (see {@link MatmulOptions.splitK}); default from the shape. */
  splitK?: number;
}

/**
 * Backward of {@link linear}: dx = dy·W ([rows, out]·[out, in]) and dW = dyᵀ·x ([out, rows]·[rows, in], a
 * contraction over all rows, split along K when the rows are many). Either output may be null to skip it.
 * x, dy, dx, dW are f32; W may be f32, f16 or bf16 (frozen weights).
 */
export async function linearBackward(
  p: Program,
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  dx: Tensor | null,
  dw: Tensor | null,
  opts: LinearBackwardOptions = {},
): Promise<void> {
  const dy2 = rows2d(dy.shape.length === 1 ? dy.reshape([1, dy.shape[0]]) : dy);
  const x2 = rows2d(x.shape.length === 1 ? x.reshape([1, x.shape[0]]) : x);
  if (
    dy2.shape[0] !== x2.shape[0] || w.shape.length !== 2 || dy2.shape[1] !== w.shape[0] ||
    x2.shape[1] !== w.shape[1]
  ) {
    throw new ShapeError(
      `linearBackward: dy (${dy.label}) ${shapeString(dy.shape)}, x (${x.label}) ${
        shapeString(x.shape)
      } and ` +
        `w (${w.label}) ${
          shapeString(w.shape)
        } do not match (expected dy [rows, out], x [rows, in], w [out, in])`,
    );
  }
  if (dx && dx.size !== x2.size) {
    throw new ShapeError(
      `linearBackward: dx (${dx.label}) ${shapeString(dx.shape)} must have the shape of x ${
        shapeString(x.shape)
      }`,
    );
  }
  if (dw && (dw.shape.length !== 2 || dw.shape[0] !== w.shape[0] || dw.shape[1] !== w.shape[1])) {
    throw new ShapeError(
      `linearBackward: dw (${dw.label}) ${shapeString(dw.shape)} must have the shape of w ${
        shapeString(w.shape)
      }`,
    );
  }
  const blocks = weightBlocks(w, dw);
  if (blocks.length > 1) return await linearBackwardByRows(p, { dy2, x2, w, dx, dw }, blocks, opts);
  if (dx) await matmul(p, dy2, w, dx.reshape(x2.shape), { accumulate: opts.accumulateDx });
  if (dw) await matmul(p, dy2, x2, dw, { transA: true, accumulate: opts.accumulateDw, splitK: opts.splitK });
}

/**
 * {@link linearBackward} for a W (or dW) over one binding, per row block b of W: dy's column block
 * copied out, dx (+)= dy[:, b]·W[b] (the contraction over `out` then sums block by block, so dx may differ
 * from the unsplit product in the last bits), dW[b] (+)= dy[:, b]ᵀ·x.
 */
async function linearBackwardByRows(
  p: Program,
  t: { dy2: Tensor; x2: Tensor; w: Tensor; dx: Tensor | null; dw: Tensor | null },
  blocks: RowBlock[],
  opts: LinearBackwardOptions,
): Promise<void> {
  const [R, out] = t.dy2.shape;
  for (const [i, { row0, rows }] of blocks.entries()) {
    const dyb = p.transient(SPLIT_LINEAR_BLOCK, [R, rows], "f32");
    await copyStrided(p, t.dy2, dyb, {
      count: [1, R, rows],
      srcStrides: [0, out, 1],
      srcOffset: row0,
      dstStrides: [0, rows, 1],
    });
    if (t.dx) {
      await matmul(p, dyb, weightRows(t.w, row0, rows), t.dx.reshape(t.x2.shape), {
        accumulate: i > 0 || opts.accumulateDx,
      });
    }
    if (t.dw) {
      await matmul(p, dyb, t.x2, weightRows(t.dw, row0, rows), {
        transA: true,
        accumulate: opts.accumulateDw,
        splitK: opts.splitK,
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// CPU references (f64 accumulation).

/** Options of {@link matmulCpu}: as {@link MatmulOptions}, plus what `out` held (for `accumulate`). */
export interface MatmulCpuOptions {
  /** a is stored transposed, [K, M] (or [batch, K, M]), as in {@link MatmulOptions}. */
  transA?: boolean;
  /** b is stored transposed, [N, K] (or [batch, N, K]), as in {@link MatmulOptions}. */
  transB?: boolean;
  /** Scale of the product (default 1). */
  alpha?: number;
  /** Previous contents of out, added to the product (accumulate). */
  out?: Float32Array;
}

/**
 * CPU reference of {@link matmul}: a and b given with their stored shapes (batched or not, as for the GPU
 * op); returns out [batch?, M, N].
 */
export function matmulCpu(
  a: Float32Array,
  aShape: readonly number[],
  b: Float32Array,
  bShape: readonly number[],
  opts: MatmulCpuOptions = {},
): Float32Array {
  const batch = aShape.length === 3 ? aShape[0] : 1;
  const [a0, a1] = aShape.slice(-2);
  const [b0, b1] = bShape.slice(-2);
  const [M, K] = opts.transA ? [a1, a0] : [a0, a1];
  const N = opts.transB ? b0 : b1;
  const bStride = bShape.length === 3 ? K * N : 0;
  const alpha = opts.alpha ?? 1;
  const out = new Float32Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ao = z * M * K, bo = z * bStride;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ao + (opts.transA ? k * M + m : m * K + k)];
          const bv = b[bo + (opts.transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        const i = z * M * N + m * N + n;
        out[i] = alpha * s + (opts.out ? opts.out[i] : 0);
      }
    }
  }
  return out;
}

/** CPU reference of {@link linear}: y = x·Wᵀ for x [rows, inF], W [outF, inF]. */
export function linearCpu(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  inF: number,
  outF: number,
): Float32Array {
  return matmulCpu(x, [rows, inF], w, [outF, inF], { transB: true });
}

/** CPU reference of {@link linearBackward}: [dx = dy·W, dW = dyᵀ·x]. */
export function linearBackwardCpu(
  dy: Float32Array,
  x: Float32Array,
  w: Float32Array,
  rows: number,
  inF: number,
  outF: number,
): [Float32Array, Float32Array] {
  const dx = matmulCpu(dy, [rows, outF], w, [outF, inF]);
  const dw = matmulCpu(dy, [rows, outF], x, [rows, inF], { transA: true });
  return [dx, dw];
}
