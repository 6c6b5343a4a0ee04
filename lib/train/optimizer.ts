/**
 * The draft's optimizer (SpecForge `specforge/optimizer.py` `BF16Optimizer`): global grad-norm clipping then
 * AdamW on f32 master weights, all on the GPU in one prebuilt program per update:
 *
 *   normSq = Σ_params Σ g²                                    (lib/ops/reduce.ts globalNormSquared)
 *   for each param: clipped AdamW update with coef = min(1, maxNorm / (sqrt(normSq) + 1e-6))
 *                                                              (lib/ops/adamw.ts adamwStep)
 *   for each grad: g ← 0                                       (ready for the next accumulation window)
 *
 * With `muon`, the hidden matrices (lib/ops/muon.ts `isMuonMatrix`: not the norms, not lm_head) take a
 * clipped Muon update instead (lib/ops/muon.ts muonStep), as vLLM's speculators splits a draft's parameters
 * (`speculators/train/optimizers.py`); its learning rate is AdamW's scheduled one times a fixed ratio.
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
import {
  destroyMuonScratchPool,
  isMuonMatrix,
  type MuonOptions,
  type MuonScratch,
  muonScratch,
  type MuonScratchPool,
  muonScratchPool,
  muonStep,
} from "../ops/muon.ts";
import { fromFloat32, type RawTensor, toFloat32 } from "../io/safetensors.ts";

/** One trainable tensor: its f32 master weights and the f32 gradient the training step writes. */
export interface NamedParameter {
  /** State-dict name (e.g. "midlayer.self_attn.q_proj.weight"). */
  name: string;
  param: Tensor;
  grad: Tensor;
}

/** Muon's settings in a {@link DraftOptimizer}: its hyper-parameters and its learning rate over AdamW's. */
export type MuonSettings = MuonOptions & { lrRatio: number };

/** Options of {@link DraftOptimizer.create}: AdamW's constants, the clipping threshold, Muon or not. */
export interface OptimizerOptions extends Partial<AdamWOptions> {
  /** Global grad-norm threshold (SpecForge's default 0.5); 0 or less turns clipping off. */
  maxGradNorm: number;
  /** Muon for the hidden matrices (default null: AdamW for every parameter). */
  muon?: MuonSettings | null;
}

/** Suffixes of the saved moment tensors, as torch names them in an AdamW state dict. */
export const MOMENT_SUFFIXES = { m: "exp_avg", v: "exp_avg_sq" } as const;

/** Suffix of a Muon parameter's saved momentum, as torch.optim.Muon names it in its state dict. */
export const MUON_MOMENTUM_SUFFIX = "momentum_buffer";

/** The state one parameter keeps: AdamW's two moments, or Muon's momentum with its views of the shared scratch. */
type ParamState = { kind: "adamw"; m: Tensor; v: Tensor } | {
  kind: "muon";
  buf: Tensor;
  scratch: MuonScratch;
};

/**
 * AdamW (or Muon for the hidden matrices) with global-norm clipping over a fixed list of parameters, one
 * prebuilt GPU program per update.
 */
export class DraftOptimizer {
  /** The f32 squared global gradient norm of the last update, before clipping (read for logging). */
  readonly normSq: Tensor;
  readonly #states: ParamState[];
  readonly #muonScratch: MuonScratchPool;
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
    const isMuon = (p: NamedParameter) => !!options.muon && isMuonMatrix(p.name, p.param.shape);
    this.#muonScratch = muonScratchPool(gpu, params.filter(isMuon).map((p) => p.param.shape));
    this.#states = params.map((p): ParamState => {
      const zeros = (suffix: string) => Tensor.zeros(gpu, p.param.shape, "f32", `${p.name}.${suffix}`);
      if (!isMuon(p)) return { kind: "adamw", m: zeros(MOMENT_SUFFIXES.m), v: zeros(MOMENT_SUFFIXES.v) };
      const [rows, cols] = p.param.shape;
      return {
        kind: "muon",
        buf: zeros(MUON_MOMENTUM_SUFFIX),
        scratch: muonScratch(this.#muonScratch, rows, cols),
      };
    });
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
  ): Promise<DraftOptimizer> {
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
    const full: Required<OptimizerOptions> = { ...ADAMW_DEFAULTS, muon: null, ...options };
    const opt = new DraftOptimizer(gpu, params, full);
    await opt.#record();
    return opt;
  }

  async #record(): Promise<void> {
    const { beta1, beta2, eps, weightDecay } = this.options;
    const u = this.#update;
    await globalNormSquared(u, this.params.map((p) => p.grad), this.#partials, this.normSq);
    for (const [i, p] of this.params.entries()) {
      const st = this.#states[i],
        common = { param: p.param, grad: p.grad, normSq: this.normSq, state: this.#state };
      if (st.kind === "muon") await muonStep(u, { ...common, buf: st.buf }, st.scratch, this.options.muon!);
      else await adamwStep(u, { ...common, m: st.m, v: st.v }, { beta1, beta2, eps, weightDecay });
    }
    for (const p of this.params) await fill(this.#zero, p.grad, 0);
    u.append(this.#zero);
  }

  /** The update program (clip, AdamW or Muon, zero the gradients), for profiling; {@link update} runs it. */
  get program(): Program {
    return this.#update;
  }

  /** Updates done so far (the next update is number steps + 1, as torch counts). */
  get steps(): number {
    return this.#steps;
  }

  /**
   * Queues one update at learning rate `lr` (AdamW's; Muon's is `lr` · its ratio): clip, update, zero the
   * gradients (no sync). Call it after the
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

  /** The state tensors of parameter i by saved name: its two AdamW moments, or its Muon momentum. */
  #stateOf(i: number): [string, Tensor][] {
    const st = this.#states[i], name = this.params[i].name;
    return st.kind === "muon" ? [[`${name}.${MUON_MOMENTUM_SUFFIX}`, st.buf]] : [
      [`${name}.${MOMENT_SUFFIXES.m}`, st.m],
      [`${name}.${MOMENT_SUFFIXES.v}`, st.v],
    ];
  }

  /**
   * The optimizer state as named f32 tensors: `<param>.exp_avg` and `<param>.exp_avg_sq` for every AdamW
   * parameter, `<param>.momentum_buffer` for every Muon one. The update count is {@link steps} (saved by the
   * caller with the rest of the run state).
   */
  async stateTensors(): Promise<Map<string, RawTensor>> {
    const out = new Map<string, RawTensor>();
    for (const [i, p] of this.params.entries()) {
      for (const [name, t] of this.#stateOf(i)) {
        out.set(name, fromFloat32(await t.readFloat(), [...p.param.shape]));
      }
    }
    return out;
  }

  /**
   * Restores what {@link stateTensors} saved, and the update count. Every state tensor must be present with
   * the parameter's shape and dtype F32; `source` names the file in errors.
   */
  loadState(tensors: Map<string, RawTensor>, steps: number, source: string): void {
    if (!(Number.isInteger(steps) && steps >= 0)) {
      throw new ShapeError(`${source}: optimizer step count ${steps} is not a non-negative integer`);
    }
    for (const [i, p] of this.params.entries()) {
      for (const [name, target] of this.#stateOf(i)) {
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

  /** Frees the optimizer state, scratch and programs (not the parameters or gradients). */
  destroy(): void {
    this.#update.destroy();
    this.#zero.destroy();
    for (const [i] of this.params.entries()) for (const [, t] of this.#stateOf(i)) t.destroy();
    destroyMuonScratchPool(this.#muonScratch);
    for (const t of [this.normSq, this.#state, this.#partials]) t.destroy();
  }
}
