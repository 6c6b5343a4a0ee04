/**
 * AdamW with global grad-norm clipping, as SpecForge updates its fp32 master weights (SpecForge
 * `specforge/optimizer.py` `BF16Optimizer.step`: torch.nn.utils.clip_grad_norm_(max_norm) then
 * torch.optim.AdamW, bias-corrected, decoupled weight decay), with a plain-TS CPU reference. Formulas in
 * kernels/adamw.ts.
 *
 * The optimizer's program records, once: `globalNormSquared` (./reduce.ts) over all gradients into normSq,
 * then one {@link adamwStep} per parameter tensor. Before each replay (one update) the host writes the
 * per-update scalars with `state.write(adamwState(step, lr, maxNorm))`, so nothing is rebuilt and nothing
 * is read back.
 */
import * as K from "../../kernels/adamw.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectSameShape, expectShape } from "./check.ts";
import { expectDisjoint } from "./check.ts";
import { blockElements, flatBlocks } from "./blocks.ts";

/** AdamW hyper-parameters fixed for a run. */
export interface AdamWOptions {
  /** Decay of the first moment (default 0.9). */
  beta1: number;
  /** Decay of the second moment (default 0.999). */
  beta2: number;
  /** Added to the bias-corrected sqrt(v) (default 1e-8). */
  eps: number;
  /** Decoupled weight decay: w ← w·(1 − lr·weightDecay) before the update (default 0, SpecForge's). */
  weightDecay: number;
}

/** SpecForge's AdamW settings: betas (0.9, 0.999), eps 1e-8, no weight decay. */
export const ADAMW_DEFAULTS: Readonly<AdamWOptions> = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };

/** Length of the per-update state: lr, 1 − β1^t, 1 − β2^t, max_norm. */
export const ADAMW_STATE_SIZE = 4;

/**
 * The per-update state of update number `step` (1-based; torch's optimizer `step` count): [lr,
 * 1 − β1^step, 1 − β2^step, maxNorm]. maxNorm ≤ 0 turns clipping off (Infinity does too). Write it into the
 * state tensor before the update's program runs.
 */
export function adamwState(
  step: number,
  lr: number,
  maxNorm: number,
  { beta1, beta2 }: Pick<AdamWOptions, "beta1" | "beta2"> = ADAMW_DEFAULTS,
): Float32Array<ArrayBuffer> {
  if (!Number.isInteger(step) || step < 1) {
    throw new RangeError(`adamwState: step ${step} must be an integer ≥ 1`);
  }
  return Float32Array.of(lr, 1 - beta1 ** step, 1 - beta2 ** step, maxNorm);
}

/** Tensors of {@link adamwStep}; param, grad, m and v are f32 of one shape and must not overlap. */
export interface AdamWTensors {
  /** The fp32 master weights, updated in place. */
  param: Tensor;
  /** Its gradient (read only: the clipped gradient is not written back). */
  grad: Tensor;
  /** First moment, updated in place (zeros before update 1). */
  m: Tensor;
  /** Second moment, updated in place (zeros before update 1). */
  v: Tensor;
  /** f32 [1]: Σ g² over every gradient of the model (`globalNormSquared`), for the clip coefficient. */
  normSq: Tensor;
  /** f32 [ADAMW_STATE_SIZE]: {@link adamwState} of this update. */
  state: Tensor;
}

/** Records one clipped AdamW update of one parameter tensor (one invocation per element). */
export async function adamwStep(
  p: Program,
  t: AdamWTensors,
  options: Partial<AdamWOptions> = {},
): Promise<void> {
  const op = "adamwStep";
  const { beta1, beta2, eps, weightDecay } = { ...ADAMW_DEFAULTS, ...options };
  for (const [name, x] of Object.entries(t)) expectDtype(op, name, x, "f32");
  expectSameShape(op, "param", t.param, "grad", t.grad);
  expectSameShape(op, "param", t.param, "m", t.m);
  expectSameShape(op, "param", t.param, "v", t.v);
  expectShape(op, "normSq", t.normSq, [1]);
  expectShape(op, "state", t.state, [ADAMW_STATE_SIZE]);
  const all = Object.entries(t);
  for (const [i, [nameA, a]] of all.entries()) {
    for (const [nameB, b] of all.slice(i + 1)) {
      const bothRead = ["grad", "normSq", "state"].includes(nameA) &&
        ["grad", "normSq", "state"].includes(nameB);
      if (!bothRead) expectDisjoint(op, nameA, a, nameB, b);
    }
  }
  if (t.param.size === 0) return;
  // A tensor over the binding size goes block by block (the update is element-wise: bit-identical).
  const per = blockElements(t.param);
  const [params_, grads, ms, vs] = [t.param, t.grad, t.m, t.v].map((x) => flatBlocks(x, per));
  for (const [i, param] of params_.entries()) {
    await p.add(
      { name: "adamw.step", code: K.adamw, entryPoint: "main" },
      [
        params(
          ["u32", param.size],
          ["f32", beta1],
          ["f32", 1 - beta1],
          ["f32", beta2],
          ["f32", 1 - beta2],
          ["f32", eps],
          ["f32", weightDecay],
        ),
        param,
        grads[i],
        ms[i],
        vs[i],
        t.normSq,
        t.state,
      ],
      Math.ceil(param.size / K.ADAMW_WG),
      `adamw.step (${param.label})`,
    );
  }
}

/** Host arrays of one parameter tensor for {@link adamwStepCpu}. */
export interface AdamWHostTensors {
  /** The f32 master weights before the step. */
  param: ArrayLike<number>;
  /** Their gradient, before clipping. */
  grad: ArrayLike<number>;
  /** First moment before the step (zeros before step 1). */
  m: ArrayLike<number>;
  /** Second moment before the step (zeros before step 1). */
  v: ArrayLike<number>;
}

/**
 * CPU reference of {@link adamwStep}: the updated param, m and v, each element computed in f64 from the f32
 * inputs and rounded to f32 as the GPU stores them. `state` is {@link adamwState}'s array.
 */
export function adamwStepCpu(
  t: AdamWHostTensors,
  normSq: number,
  state: ArrayLike<number>,
  options: Partial<AdamWOptions> = {},
): { param: Float32Array; m: Float32Array; v: Float32Array } {
  const { beta1, beta2, eps, weightDecay } = { ...ADAMW_DEFAULTS, ...options };
  const [lr, bc1, bc2, maxNorm] = Array.from(state);
  const coef = maxNorm > 0 ? Math.min(1, maxNorm / (Math.sqrt(normSq) + 1e-6)) : 1;
  const n = t.param.length;
  const param = new Float32Array(n), m = new Float32Array(n), v = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const g = t.grad[i] * coef;
    m[i] = beta1 * t.m[i] + (1 - beta1) * g;
    v[i] = beta2 * t.v[i] + (1 - beta2) * g * g;
    const w = t.param[i] * (1 - lr * weightDecay);
    param[i] = w - (lr / bc1) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps);
  }
  return { param, m, v };
}
