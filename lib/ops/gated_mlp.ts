/**
 * The gated MLP's input side (Llama's SwiGLU, Gemma's GELU-tanh): act = act_fn(x·W_gateᵀ) ⊙ x·W_upᵀ, and in
 * the backward the down projection's input gradient ∂/∂act = dy·W_down taken straight to ∂/∂gate and ∂/∂up.
 *
 * Where the product runs as one `regtile` kernel (CPU adapters), the activation is fused into the matmul's
 * store (lib/ops/matmul.ts `gatedMatmul`): one kernel instead of two products and an elementwise pass, and the
 * backward never writes ∂/∂act. Elsewhere (GPU tiles, weights over one binding, products split over K) the
 * unfused ops run: `linear`, then lib/ops/swiglu.ts. Both give the same bits, since each output sums its k
 * terms in the same order and applies the same WGSL functions (kernels/swiglu.ts `GATE_FUNCTIONS`).
 */
import type { Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { gatedMatmul, linear, linearBackward, type LinearBackwardOptions, rows2d } from "./matmul.ts";
import { addBias } from "./elementwise.ts";
import { gegluTanhForward, swigluBackward, swigluForward } from "./swiglu.ts";

/** The gate's activation: silu (SwiGLU) or PyTorch's `gelu(approximate="tanh")` (Gemma). */
export type GateActivation = "silu" | "gelu_tanh";

/** Where {@link gatedLinear} writes: act [R, I], and gate and up [R, I] (the unfused ops' scratch). */
export interface GatedOutputs {
  /** act_fn(gate) ⊙ up [R, I]. */
  act: Tensor;
  /** x·W_gateᵀ [R, I]. */
  gate: Tensor;
  /** x·W_upᵀ [R, I]. */
  up: Tensor;
  /**
   * gate and up must hold the two products afterwards (a training forward, for the backward); otherwise
   * they are only scratch, written by the unfused ops.
   */
  keep: boolean;
}

/** The projections' biases [I] of a gated MLP that has them (`mlp_bias`), else null. */
export interface GatedBiases {
  /** gate_proj's bias [I], or null. */
  gate: Tensor | null;
  /** up_proj's bias [I], or null. */
  up: Tensor | null;
}

/**
 * Records act = act_fn(x·W_gateᵀ (+ b_gate)) ⊙ (x·W_upᵀ (+ b_up)) for x [R, H], W_gate and W_up [I, H]
 * (nn.Linear layout, f32, f16 or bf16), keeping the two products in `out.gate` and `out.up` when `out.keep`.
 * Biases (not fused) run the unfused ops.
 */
export async function gatedLinear(
  p: Program,
  x: Tensor,
  wGate: Tensor,
  wUp: Tensor,
  out: GatedOutputs,
  activation: GateActivation,
  biases: GatedBiases = { gate: null, up: null },
): Promise<void> {
  const [act, gate, up] = [out.act, out.gate, out.up].map(rows2d);
  const stored = out.keep ? { gate, up } : {};
  const gated = { kind: "forward" as const, activation, u: wUp, ...stored };
  const unbiased = biases.gate === null && biases.up === null;
  if (unbiased && await gatedMatmul(p, rows2d(x), wGate, act, gated, { transB: true })) return;
  await linear(p, x, wGate, out.gate);
  if (biases.gate) await addBias(p, out.gate, biases.gate);
  await linear(p, x, wUp, out.up);
  if (biases.up) await addBias(p, out.up, biases.up);
  if (activation === "silu") await swigluForward(p, out.gate, out.up, out.act);
  else await gegluTanhForward(p, out.gate, out.up, out.act);
}

/**
 * The backward of the down projection y = act·W_downᵀ followed by the SwiGLU's: from dy [R, H], writes
 * ∂/∂gate and ∂/∂up [R, I] from the forward's `gate` and `up`, and ∂/∂W_down (+)= dyᵀ·act per `opts`
 * (`accumulateDw`, `splitK`). `dAct` [R, I] is the unfused ops' scratch for ∂/∂act.
 */
export async function swigluDownBackward(
  p: Program,
  dy: Tensor,
  forward: { act: Tensor; gate: Tensor; up: Tensor },
  wDown: Tensor,
  grads: { dAct: Tensor; dGate: Tensor; dUp: Tensor; dWDown: Tensor },
  opts: Pick<LinearBackwardOptions, "accumulateDw" | "splitK"> = {},
): Promise<void> {
  const [gate, up, dGate, dUp] = [forward.gate, forward.up, grads.dGate, grads.dUp].map(rows2d);
  const gated = { kind: "backward" as const, gate, up, dUp };
  if (await gatedMatmul(p, rows2d(dy), wDown, dGate, gated)) {
    await linearBackward(p, dy, forward.act, wDown, null, grads.dWDown, opts);
    return;
  }
  await linearBackward(p, dy, forward.act, wDown, grads.dAct, grads.dWDown, opts);
  await swigluBackward(p, grads.dAct, forward.gate, forward.up, grads.dGate, grads.dUp);
}
