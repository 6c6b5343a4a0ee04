/**
 * The draft's optimizer (SpecForge `specforge/optimizer.py` `BF16Optimizer`): global grad-norm clipping then
 * AdamW on f32 master weights, all on the GPU in one prebuilt program per update:
 *
 *   normSq = Σ_params Σ g²                                    (lib/ops/reduce.ts globalNormSquared)
 *   for each param: clipped AdamW update with coef = min(1, maxNorm / (sqrt(normSq) + 1e-6))
 *                                                              (lib/ops/adamw.ts adamwStep)
 *   for each grad: g ← 0                                       (ready for the next accumulation window)
 *
 * The per-update scalars (lr, bias corrections, max norm) live in a 4-float GPU tensor the host rewrites
 * with `tensor.write` before each replay; nothing is rebuilt, nothing is read back. Gradients are whatever
 * the training step accumulated: SpecForge divides the loss by the accumulation steps before backward, and
 * the draft's step does the same, so the optimizer sees the mean gradient of the window.
 *
 * State (first and second moments, the update count) can be saved as named f32 tensors and loaded back
 * bit for bit, which is what makes resumed runs identical to straight ones.
 */
import type { Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { shapeString, Tensor } from "../tensor.ts";
import { ADAMW_DEFAULTS, ADAMW_STATE_SIZE, type AdamWOptions, adamwState, adamwStep } from "../ops/adamw.ts";
import { globalNormPartialsSize, globalNormSquared } from "../ops/reduce.ts";
import { fill } from "../ops/elementwise.ts";
import { fromFloat32, type RawTensor, toFloat32 } from "../io/safetensors.ts";

/** One trainable tensor: its f32 master weights and the f32 gradient the training step writes. */
export interface NamedParameter {
  /** State-dict name (e.g. "midlayer.self_attn.q_proj.weight"). */
  name: string;
  param: Tensor;
  grad: Tensor;
}

/** Options of {@link AdamWOptimizer.create}: AdamW's constants and the clipping threshold. */
export interface OptimizerOptions extends Partial<AdamWOptions> {
  /** Global grad-norm threshold (SpecForge's default 0.5); 0 or less turns clipping off. */
  maxGradNorm: number;
}

/** Suffixes of the saved moment tensors, as torch names them in an AdamW state dict. */
export const MOMENT_SUFFIXES = { m: "exp_avg", v: "exp_avg_sq" } as const;

/** AdamW with global-norm clipping over a fixed list of parameters, one prebuilt GPU program per update. */
export class AdamWOptimizer {
  /** The f32 squared global gradient norm of the last update, before clipping (read for logging). */
  readonly normSq: Tensor;
  readonly #m: Tensor[];
  readonly #v: Tensor[];
  readonly #state: Tensor;
  readonly #partials: Tensor;
  readonly #update: Program;
  readonly #zero: Program;
  #steps = 0;

  private constructor(
    readonly gpu: Gpu,
    readonly params: readonly NamedParameter[],
    readonly options: Readonly<Required<OptimizerOptions>>,
  ) {
    this.#m = params.map((p) => Tensor.zeros(gpu, p.param.shape, "f32", `${p.name}.${MOMENT_SUFFIXES.m}`));
    this.#v = params.map((p) => Tensor.zeros(gpu, p.param.shape, "f32", `${p.name}.${MOMENT_SUFFIXES.v}`));
    this.normSq = Tensor.zeros(gpu, [1], "f32", "optimizer grad norm²");
    this.#state = Tensor.zeros(gpu, [ADAMW_STATE_SIZE], "f32", "optimizer step state");
    const grads = params.map((p) => p.grad);
    this.#partials = Tensor.empty(
      gpu,
      [Math.max(1, globalNormPartialsSize(grads))],
      "f32",
      "grad norm partials",
    );
    this.#update = new Program(gpu, "optimizer update");
    this.#zero = new Program(gpu, "zero gradients");
  }

  /**
   * Allocates the moments (zeros) and records the update program. Parameters and gradients must be f32,
   * of equal shapes, with distinct names.
   */
  static async create(
    gpu: Gpu,
    params: readonly NamedParameter[],
    options: OptimizerOptions,
  ): Promise<AdamWOptimizer> {
    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) throw new ShapeError(`optimizer: parameter ${p.name} is listed twice`);
      names.add(p.name);
      if (p.param.dtype !== "f32" || p.grad.dtype !== "f32") {
        throw new ShapeError(
          `optimizer: ${p.name} must be f32 (param ${p.param.dtype}, grad ${p.grad.dtype})`,
        );
      }
      if (shapeString(p.param.shape) !== shapeString(p.grad.shape)) {
        throw new ShapeError(
          `optimizer: ${p.name} param ${shapeString(p.param.shape)} and grad ${
            shapeString(p.grad.shape)
          } differ`,
        );
      }
    }
    const full: Required<OptimizerOptions> = { ...ADAMW_DEFAULTS, ...options };
    const opt = new AdamWOptimizer(gpu, params, full);
    await opt.#record();
    return opt;
  }

  async #record(): Promise<void> {
    const { beta1, beta2, eps, weightDecay } = this.options;
    const u = this.#update;
    await globalNormSquared(u, this.params.map((p) => p.grad), this.#partials, this.normSq);
    for (const [i, p] of this.params.entries()) {
      await adamwStep(u, {
        param: p.param,
        grad: p.grad,
        m: this.#m[i],
        v: this.#v[i],
        normSq: this.normSq,
        state: this.#state,
      }, { beta1, beta2, eps, weightDecay });
    }
    for (const p of this.params) await fill(this.#zero, p.grad, 0);
    u.append(this.#zero);
  }

  /** The update program (clip, AdamW, zero the gradients), for profiling; {@link update} runs it. */
  get program(): Program {
    return this.#update;
  }

  /** Updates done so far (the next update is number steps + 1, as torch counts). */
  get steps(): number {
    return this.#steps;
  }

  /**
   * Queues one update at learning rate `lr`: clip, AdamW, zero the gradients (no sync). Call it after the
   * last micro-batch of an accumulation window.
   */
  update(lr: number): void {
    if (!Number.isFinite(lr) || lr < 0) throw new RangeError(`optimizer: learning rate ${lr} is not ≥ 0`);
    this.#steps++;
    this.#state.write(adamwState(this.#steps, lr, this.options.maxGradNorm, this.options));
    this.#update.run();
  }

  /** Queues gradient zeroing alone (at the start of a run, or to drop a partial window). */
  zeroGrads(): void {
    this.#zero.run();
  }

  /** The global gradient norm seen by the last update, before clipping (one GPU sync). */
  async lastGradNorm(): Promise<number> {
    return Math.sqrt((await this.normSq.readFloat())[0]);
  }

  /**
   * The optimizer state as named f32 tensors: `<param>.exp_avg` and `<param>.exp_avg_sq` for every
   * parameter. The update count is {@link steps} (saved by the caller with the rest of the run state).
   */
  async stateTensors(): Promise<Map<string, RawTensor>> {
    const out = new Map<string, RawTensor>();
    for (const [i, p] of this.params.entries()) {
      const shape = [...p.param.shape];
      out.set(`${p.name}.${MOMENT_SUFFIXES.m}`, fromFloat32(await this.#m[i].readFloat(), shape));
      out.set(`${p.name}.${MOMENT_SUFFIXES.v}`, fromFloat32(await this.#v[i].readFloat(), shape));
    }
    return out;
  }

  /**
   * Restores what {@link stateTensors} saved, and the update count. Every moment must be present with the
   * parameter's shape and dtype F32; `source` names the file in errors.
   */
  loadState(tensors: Map<string, RawTensor>, steps: number, source: string): void {
    if (!(Number.isInteger(steps) && steps >= 0)) {
      throw new ShapeError(`${source}: optimizer step count ${steps} is not a non-negative integer`);
    }
    for (const [i, p] of this.params.entries()) {
      for (const [key, target] of [["m", this.#m[i]], ["v", this.#v[i]]] as const) {
        const name = `${p.name}.${MOMENT_SUFFIXES[key]}`;
        const t = tensors.get(name);
        if (!t) throw new ShapeError(`${source}: optimizer state has no tensor ${name}`);
        if (t.dtype !== "F32" || shapeString(t.shape) !== shapeString(p.param.shape)) {
          throw new ShapeError(
            `${source}: ${name} is ${t.dtype} ${shapeString(t.shape)}, expected F32 ${
              shapeString(p.param.shape)
            }`,
          );
        }
        target.write(toFloat32(t, name));
      }
    }
    this.#steps = steps;
  }

  /** Frees the moments, scratch and programs (not the parameters or gradients). */
  destroy(): void {
    this.#update.destroy();
    this.#zero.destroy();
    for (const t of [...this.#m, ...this.#v, this.normSq, this.#state, this.#partials]) t.destroy();
  }
}
