/**
 * Elementwise ops on f32 tensors (add, mul and its backward, alpha·a + beta·b, scale, fill), each with a
 * plain-TS CPU reference. The ops record into a {@link Program}; nothing runs until the program does.
 */
import * as K from "../../kernels/elementwise.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectSameShape } from "./check.ts";

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
  await p.add(
    { name: "elementwise.fill", code: K.fill, entryPoint: "main" },
    [params(["u32", out.size], ["f32", value], ["f32", 0]), out],
    groups(out.size),
  );
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
