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
import { ShapeError } from "../gpu/errors.ts";
import {
  gatedMatmul,
  linear,
  linearBackward,
  type LinearBackwardOptions,
  rows2d,
  savedHalf,
} from "./matmul.ts";
import { convert } from "./convert.ts";
import { addBias } from "./elementwise.ts";
import { gegluTanhForward, swigluBackward, swigluForward } from "./swiglu.ts";

/**
 * The dtype a training step keeps the MLP's gate and up products in for the backward (--mlp-saved-dtype): f32,
 * or f16 (half their bytes; act is then computed from the f16 values, {@link GatedOutputs}).
 */
export type MlpSavedDtype = "f32" | "f16";

/** The gate's activation: silu (SwiGLU) or PyTorch's `gelu(approximate="tanh")` (Gemma). */
export type GateActivation = "silu" | "gelu_tanh";

/**
 * Where {@link gatedLinear} writes: act [R, I], and gate and up [R, I] (the unfused ops' scratch). gate and up
 * are f32, or both f16 (a training step's saved products, --mlp-saved-dtype f16; SwiGLU only, I even): the
 * products are then rounded to f16 and act is computed from the rounded values, so that the backward, which
 * reads them, differentiates what the forward computed.
 */
export interface GatedOutputs {
  /** act_fn(gate) ⊙ up [R, I], f32. */
  act: Tensor;
  /** x·W_gateᵀ [R, I]. */
  gate: Tensor;
  /** x·W_upᵀ [R, I]. */
  up: Tensor;
  /**
   * gate and up must hold the two products afterwards (a training forward, for the backward); otherwise
   * they are only scratch, written by the unfused ops. f16 ones are always kept.
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
  const half = savedHalf("gatedLinear", [out.gate, out.up], out.act).half ?? false;
  if (half && activation !== "silu") {
    throw new ShapeError(
      `gatedLinear: f16 gate and up (${out.gate.label}) are for SwiGLU, not ${activation}`,
    );
  }
  const stored = out.keep || half ? { gate, up } : {};
  const gated = { kind: "forward" as const, activation, u: wUp, ...stored };
  const unbiased = biases.gate === null && biases.up === null;
  if (unbiased && await gatedMatmul(p, rows2d(x), wGate, act, gated, { transB: true })) return;
  if (half) return await unfusedHalf(p, x, [wGate, wUp], out, biases);
  await linear(p, x, wGate, out.gate);
  if (biases.gate) await addBias(p, out.gate, biases.gate);
  await linear(p, x, wUp, out.up);
  if (biases.up) await addBias(p, out.up, biases.up);
  if (activation === "silu") await swigluForward(p, out.gate, out.up, out.act);
  else await gegluTanhForward(p, out.gate, out.up, out.act);
}

/**
 * The unfused forward with f16 gate and up: each product goes through act (f32) and is rounded into its f16
 * tensor by lib/ops/convert.ts, whose rounding (nearest even) is the fused store's; then act from the f16
 * values.
 */
async function unfusedHalf(
  p: Program,
  x: Tensor,
  [wGate, wUp]: [Tensor, Tensor],
  out: GatedOutputs,
  biases: GatedBiases,
): Promise<void> {
  for (const [w, bias, saved] of [[wGate, biases.gate, out.gate], [wUp, biases.up, out.up]] as const) {
    await linear(p, x, w, out.act);
    if (bias) await addBias(p, out.act, bias);
    await convert(p, out.act, saved);
  }
  await swigluForward(p, out.gate, out.up, out.act);
}

/**
 * The backward of the down projection y = act·W_downᵀ followed by the SwiGLU's: from dy [R, H], writes
 * ∂/∂gate and ∂/∂up [R, I] (f32) from the forward's `gate` and `up` (f32, or both f16), and ∂/∂W_down (+)= dyᵀ·act per `opts`
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
