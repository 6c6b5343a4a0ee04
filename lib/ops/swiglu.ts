/**
 * SwiGLU, the gated MLP activation of Llama: out = silu(gate) ⊙ up, silu(g) = g·σ(g), on f32 tensors of
 * one shape (gate_proj and up_proj outputs, [rows, I]).
 * Backward: dup = dout ⊙ silu(gate), dgate = dout ⊙ up ⊙ σ(g)·(1 + g·(1 − σ(g))). Also Gemma's GELU-tanh
 * gated MLP, forward only.
 */
import * as K from "../../kernels/swiglu.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectSameShape } from "./check.ts";

function checkAll(op: string, tensors: Array<[string, Tensor]>): void {
  for (const [name, t] of tensors) expectDtype(op, name, t, "f32");
  const [firstName, first] = tensors[0];
  for (const [name, t] of tensors.slice(1)) expectSameShape(op, firstName, first, name, t);
}

/** Records out = silu(gate) ⊙ up (all the same shape). */
export async function swigluForward(p: Program, gate: Tensor, up: Tensor, out: Tensor): Promise<void> {
  checkAll("swigluForward", [["gate", gate], ["up", up], ["out", out]]);
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

/** Records the backward pass of {@link swigluForward}: dgate and dup from dout, gate and up. */
export async function swigluBackward(
  p: Program,
  dout: Tensor,
  gate: Tensor,
  up: Tensor,
  dgate: Tensor,
  dup: Tensor,
): Promise<void> {
  checkAll("swigluBackward", [["dout", dout], ["gate", gate], ["up", up], ["dgate", dgate], ["dup", dup]]);
  await p.add(
    { name: "swiglu.backward", code: K.backward, entryPoint: "backward" },
    [params(["u32", gate.size]), dout, gate, up, dgate, dup],
    Math.ceil(gate.size / K.SWIGLU_WG),
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
