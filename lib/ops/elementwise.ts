/**
 * Elementwise ops on f32 tensors (add, mul and its backward, alpha·a + beta·b, scale, fill), each with a
 * plain-TS CPU reference. The ops record into a {@link Program}; nothing runs until the program does.
 */
import * as K from "../../kernels/elementwise.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { ShapeError } from "../gpu/errors.ts";
import { shapeString } from "../tensor.ts";
import { expectDtype, expectSameShape, expectShape } from "./check.ts";
import { blockElements, flatBlocks } from "./blocks.ts";

function groups(n: number): number {
  return Math.ceil(n / K.ELEMENTWISE_WG);
}

async function binaryOp(
  p: Program,
  op: "add" | "mul" | "axpby",
  a: Tensor,
  b: Tensor,
  out: Tensor,
  alpha = 1,
  beta = 1,
): Promise<void> {
  for (const [name, t] of [["a", a], ["b", b], ["out", out]] as const) expectDtype(op, name, t, "f32");
  expectSameShape(op, "a", a, "b", b);
  expectSameShape(op, "a", a, "out", out);
  await p.add(
    { name: `elementwise.${op}`, code: K.binary, entryPoint: op },
    [params(["u32", a.size], ["f32", alpha], ["f32", beta]), a, b, out],
    groups(a.size),
  );
}

/** out = a + b. Backward: da = dout, db = dout. */
export function add(p: Program, a: Tensor, b: Tensor, out: Tensor): Promise<void> {
  return binaryOp(p, "add", a, b, out);
}

/** out = a ⊙ b. */
export function mul(p: Program, a: Tensor, b: Tensor, out: Tensor): Promise<void> {
  return binaryOp(p, "mul", a, b, out);
}

/** Backward of out = a ⊙ b: da = dout ⊙ b, db = dout ⊙ a. */
export async function mulBackward(
  p: Program,
  dout: Tensor,
  a: Tensor,
  b: Tensor,
  da: Tensor,
  db: Tensor,
): Promise<void> {
  await binaryOp(p, "mul", dout, b, da);
  await binaryOp(p, "mul", dout, a, db);
}

/** out = alpha·a + beta·b (out may alias neither input). */
export function axpby(
  p: Program,
  alpha: number,
  a: Tensor,
  beta: number,
  b: Tensor,
  out: Tensor,
): Promise<void> {
  return binaryOp(p, "axpby", a, b, out, alpha, beta);
}

/** out = alpha·a. */
export async function scale(p: Program, a: Tensor, alpha: number, out: Tensor): Promise<void> {
  expectDtype("scale", "a", a, "f32");
  expectSameShape("scale", "a", a, "out", out);
  await p.add(
    { name: "elementwise.scale", code: K.unary, entryPoint: "scale" },
    [params(["u32", a.size], ["f32", alpha], ["f32", 0]), a, out],
    groups(a.size),
  );
}

/** out[i] = value. */
export async function fill(p: Program, out: Tensor, value: number): Promise<void> {
  expectDtype("fill", "out", out, "f32");
  for (const block of flatBlocks(out, blockElements(out))) {
    await p.add(
      { name: "elementwise.fill", code: K.fill, entryPoint: "main" },
      [params(["u32", block.size], ["f32", value], ["f32", 0]), block],
      groups(block.size),
    );
  }
}

/**
 * x[r, c] += bias[c] in place: a bias broadcast along rows (x is [..., n], bias [n]). In place because the
 * bias always follows a projection whose output nothing else reads yet.
 */
export async function addBias(p: Program, x: Tensor, bias: Tensor): Promise<void> {
  expectDtype("addBias", "x", x, "f32");
  expectDtype("addBias", "bias", bias, "f32");
  const width = x.shape[x.shape.length - 1];
  expectShape("addBias", "bias", bias, [width]);
  await p.add(
    { name: "elementwise.addBias", code: K.addBias, entryPoint: "main" },
    [params(["u32", x.size], ["u32", width]), x, bias],
    groups(x.size),
  );
}

/** x += y in place. */
export async function accumulate(p: Program, x: Tensor, y: Tensor): Promise<void> {
  expectDtype("accumulate", "x", x, "f32");
  expectDtype("accumulate", "y", y, "f32");
  expectSameShape("accumulate", "x", x, "y", y);
  const vec4 = x.size % 4 === 0; // four elements per invocation: the same sums
  await p.add(
    vec4
      ? { name: "elementwise.accumulate.vec4", code: K.accumulateVec4, entryPoint: "main" }
      : { name: "elementwise.accumulate", code: K.accumulate, entryPoint: "main" },
    [params(["u32", x.size]), x, y],
    groups(vec4 ? x.size / 4 : x.size),
  );
}

/** out = ids + delta for i32 token ids (e.g. ids relative to a block of embedding rows). */
export async function shiftIds(p: Program, ids: Tensor, out: Tensor, delta: number): Promise<void> {
  expectDtype("shiftIds", "ids", ids, "i32");
  expectDtype("shiftIds", "out", out, "i32");
  expectSameShape("shiftIds", "ids", ids, "out", out);
  await p.add(
    { name: "elementwise.shiftIds", code: K.shiftIds, entryPoint: "main" },
    [params(["u32", ids.size], ["i32", delta]), ids, out],
    groups(ids.size),
  );
}

/** A 3-D block of a strided copy (see {@link copyStrided}); sizes, strides and offsets in elements. */
export interface StridedCopy {
  /** Block sizes [n2, n1, n0], innermost last. */
  count: [number, number, number];
  /** Source strides [s2, s1, s0]. */
  srcStrides: [number, number, number];
  /** Element index in src where the block starts (default 0). */
  srcOffset?: number;
  /** Destination strides [d2, d1, d0]. */
  dstStrides: [number, number, number];
  /** Element index in dst where the block starts (default 0). */
  dstOffset?: number;
}

function extent(count: number[], strides: number[], offset: number): number {
  return offset + count.reduce((acc, n, i) => acc + (n - 1) * strides[i], 0) + 1;
}

/**
 * dst[dstOffset + i2·d2 + i1·d1 + i0·d0] = src[srcOffset + i2·s2 + i1·s1 + i0·s0] for every (i2, i1, i0) <
 * count. Bounds are checked against both tensors before dispatch.
 */
export async function copyStrided(p: Program, src: Tensor, dst: Tensor, c: StridedCopy): Promise<void> {
  expectDtype("copyStrided", "src", src, "f32");
  expectDtype("copyStrided", "dst", dst, "f32");
  const total = c.count[0] * c.count[1] * c.count[2];
  if (total === 0) return;
  const srcEnd = extent(c.count, c.srcStrides, c.srcOffset ?? 0);
  const dstEnd = extent(c.count, c.dstStrides, c.dstOffset ?? 0);
  if (srcEnd > src.size || dstEnd > dst.size) {
    throw new ShapeError(
      `copyStrided: block [${c.count}] reaches element ${Math.max(srcEnd, dstEnd) - 1} of src ${
        shapeString(src.shape)
      } or dst ${shapeString(dst.shape)}`,
    );
  }
  // Contiguous rows whose every count, stride and offset is a multiple of 4 copy as vec4 units (all ÷ 4).
  const units = [c.count[2], c.srcStrides[0], c.srcStrides[1], c.dstStrides[0], c.dstStrides[1]];
  const vec4 = c.srcStrides[2] === 1 && c.dstStrides[2] === 1 &&
    [...units, c.srcOffset ?? 0, c.dstOffset ?? 0].every((x) => x % 4 === 0);
  const w = vec4 ? 4 : 1;
  const [n2, n1, n0] = c.count;
  const [s2, s1, s0] = c.srcStrides;
  const [d2, d1, d0] = c.dstStrides;
  await p.add(
    vec4
      ? { name: "elementwise.copyStrided.vec4", code: K.copyStridedVec4, entryPoint: "main" }
      : { name: "elementwise.copyStrided", code: K.copyStrided, entryPoint: "main" },
    [
      params(
        ["u32", n0 / w],
        ["u32", n1],
        ["u32", n2],
        ["u32", total / w],
        ["u32", vec4 ? 1 : s0],
        ["u32", s1 / w],
        ["u32", s2 / w],
        ["u32", (c.srcOffset ?? 0) / w],
        ["u32", vec4 ? 1 : d0],
        ["u32", d1 / w],
        ["u32", d2 / w],
        ["u32", (c.dstOffset ?? 0) / w],
      ),
      src,
      dst,
    ],
    groups(total / w),
  );
}

/**
 * Copies src [rows, w] into columns [col0, col0 + w) of dst [rows, W] (the concatenation of feature blocks,
 * e.g. three aux hidden states into [rows, 3H]).
 */
export async function copyColumns(p: Program, src: Tensor, dst: Tensor, col0: number): Promise<void> {
  const w = src.shape[src.shape.length - 1];
  const rows = src.size / w;
  const W = dst.shape[dst.shape.length - 1];
  if (dst.size / W !== rows || col0 + w > W) {
    throw new ShapeError(
      `copyColumns: src ${shapeString(src.shape)} does not fit dst ${
        shapeString(dst.shape)
      } at column ${col0}`,
    );
  }
  await copyStrided(p, src, dst, {
    count: [1, rows, w],
    srcStrides: [0, w, 1],
    dstStrides: [0, W, 1],
    dstOffset: col0,
  });
}

/** CPU reference of {@link copyStrided} (into a copy of dst). */
export function copyStridedCpu(src: Float32Array, dst: Float32Array, c: StridedCopy): Float32Array {
  const out = dst.slice();
  const [n2, n1, n0] = c.count;
  for (let i2 = 0; i2 < n2; i2++) {
    for (let i1 = 0; i1 < n1; i1++) {
      for (let i0 = 0; i0 < n0; i0++) {
        out[(c.dstOffset ?? 0) + i2 * c.dstStrides[0] + i1 * c.dstStrides[1] + i0 * c.dstStrides[2]] =
          src[(c.srcOffset ?? 0) + i2 * c.srcStrides[0] + i1 * c.srcStrides[1] + i0 * c.srcStrides[2]];
      }
    }
  }
  return out;
}

/** CPU reference of {@link addBias} (returns a new array). */
export function addBiasCpu(x: Float32Array, bias: Float32Array): Float32Array {
  return x.map((v, i) => v + bias[i % bias.length]);
}

/** CPU reference: out = alpha·a + beta·b (add is alpha = beta = 1). */
export function axpbyCpu(alpha: number, a: Float32Array, beta: number, b: Float32Array): Float32Array {
  return a.map((x, i) => alpha * x + beta * b[i]);
}

/** CPU reference: out = a ⊙ b. */
export function mulCpu(a: Float32Array, b: Float32Array): Float32Array {
  return a.map((x, i) => x * b[i]);
}

/** CPU reference of the mul backward: [dout ⊙ b, dout ⊙ a]. */
export function mulBackwardCpu(
  dout: Float32Array,
  a: Float32Array,
  b: Float32Array,
): [Float32Array, Float32Array] {
  return [mulCpu(dout, b), mulCpu(dout, a)];
}
