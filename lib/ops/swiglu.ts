/**
 * SwiGLU, the gated MLP activation of Llama: out = silu(gate) ⊙ up, silu(g) = g·σ(g), on tensors of one
 * shape (gate_proj and up_proj outputs, [rows, I]); gate and up f32, or both f16 (a training step's saved
 * products with --mlp-saved-dtype f16: the f16 values, widened exactly, give the bits of the f32 kernels).
 * Backward: dup = dout ⊙ silu(gate), dgate = dout ⊙ up ⊙ σ(g)·(1 + g·(1 − σ(g))). Also Gemma's GELU-tanh
 * gated MLP, forward only.
 */
import * as K from "../../kernels/swiglu.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { ShapeError } from "../gpu/errors.ts";
import { expectDtype, expectSameShape } from "./check.ts";

function checkAll(op: string, tensors: Array<[string, Tensor]>): void {
  for (const [name, t] of tensors) expectDtype(op, name, t, "f32");
  const [firstName, first] = tensors[0];
  for (const [name, t] of tensors.slice(1)) expectSameShape(op, firstName, first, name, t);
}

/**
 * Checks that gate and up are both f32 or both f16 (then with an even count: words of two) and the rest f32,
 * all of one shape; returns whether they are f16.
 */
function checkSaved(op: string, gate: Tensor, up: Tensor, others: Array<[string, Tensor]>): boolean {
  const half = gate.dtype === "f16";
  expectDtype(op, "gate", gate, "f32", "f16");
  expectDtype(op, "up", up, gate.dtype);
  for (const [name, t] of others) expectDtype(op, name, t, "f32");
  for (const [name, t] of [["up", up] as [string, Tensor], ...others]) {
    expectSameShape(op, "gate", gate, name, t);
  }
  if (half && gate.size % 2 !== 0) {
    throw new ShapeError(`${op}: f16 gate (${gate.label}) needs an even element count, got ${gate.size}`);
  }
  return half;
}

/** Records out = silu(gate) ⊙ up (all the same shape; gate and up f32 or both f16, out f32). */
export async function swigluForward(p: Program, gate: Tensor, up: Tensor, out: Tensor): Promise<void> {
  if (checkSaved("swigluForward", gate, up, [["out", out]])) {
    return await p.add(
      { name: "swiglu.forward.f16", code: K.forwardHalf, entryPoint: "forward" },
      [params(["u32", gate.size]), gate, up, out],
      Math.ceil(gate.size / 2 / K.SWIGLU_WG),
    );
  }
  const vec4 = gate.size % 4 === 0;
  await p.add(
    vec4
      ? { name: "swiglu.forward.vec4", code: K.forwardVec4, entryPoint: "forward" }
      : { name: "swiglu.forward", code: K.forward, entryPoint: "forward" },
    [params(["u32", gate.size]), gate, up, out],
    Math.ceil(gate.size / (vec4 ? 4 : 1) / K.SWIGLU_WG),
  );
}

/**
 * Records out = gelu_tanh(gate) ⊙ up, Gemma's gated MLP (transformers `GELUTanh`, PyTorch
 * `gelu(approximate="tanh")`); forward only (frozen targets).
 */
export async function gegluTanhForward(p: Program, gate: Tensor, up: Tensor, out: Tensor): Promise<void> {
  checkAll("gegluTanhForward", [["gate", gate], ["up", up], ["out", out]]);
  await p.add(
    { name: "swiglu.forward_gelu_tanh", code: K.forwardGeluTanh, entryPoint: "forward_gelu_tanh" },
    [params(["u32", gate.size]), gate, up, out],
    Math.ceil(gate.size / K.SWIGLU_WG),
  );
}

/**
 * Records the backward pass of {@link swigluForward}: dgate and dup (f32) from dout (f32), gate and up (f32,
 * or both f16).
 */
export async function swigluBackward(
  p: Program,
  dout: Tensor,
  gate: Tensor,
  up: Tensor,
  dgate: Tensor,
  dup: Tensor,
): Promise<void> {
  const half = checkSaved("swigluBackward", gate, up, [["dout", dout], ["dgate", dgate], ["dup", dup]]);
  await p.add(
    half
      ? { name: "swiglu.backward.f16", code: K.backwardHalf, entryPoint: "backward" }
      : { name: "swiglu.backward", code: K.backward, entryPoint: "backward" },
    [params(["u32", gate.size]), dout, gate, up, dgate, dup],
    Math.ceil(gate.size / (half ? 2 : 1) / K.SWIGLU_WG),
  );
}

function sigmoid(g: number): number {
  return 1 / (1 + Math.exp(-g));
}

/** CPU reference of the forward pass (f64): silu(gate)·up. */
export function swigluCpu(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < out.length; i++) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
  return out;
}

/** CPU reference of the backward pass (f64): { dgate, dup }. */
export function swigluBackwardCpu(
  dout: ArrayLike<number>,
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
): { dgate: Float64Array; dup: Float64Array } {
  const dgate = new Float64Array(gate.length);
  const dup = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const s = sigmoid(gate[i]);
    dgate[i] = dout[i] * up[i] * s * (1 + gate[i] * (1 - s));
    dup[i] = dout[i] * gate[i] * s;
  }
  return { dgate, dup };
}

/** CPU reference of {@link gegluTanhForward} (f64): ½g·(1 + tanh(√(2/π)·(g + 0.044715g³)))·up. */
export function gegluTanhCpu(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < out.length; i++) {
    const g = gate[i];
    out[i] = 0.5 * g * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (g + 0.044715 * g ** 3))) * up[i];
  }
  return out;
}
