/**
 * The DFlash draft's trainable parameters and gradients on the GPU (f32), under the names SpecForge's
 * `DFlashDraftModel` saves and SGLang's and vLLM's DFlash loaders read: `fc.weight` [H, K·H],
 * `hidden_norm.weight`, `norm.weight`, and per layer `layers.j.self_attn.{q,k,v,o}_proj.weight`,
 * `layers.j.self_attn.{q,k}_norm.weight` [hd], `layers.j.mlp.{gate,up,down}_proj.weight`,
 * `layers.j.{input,post_attention}_layernorm.weight`. No embedding or lm_head: the target's are used, frozen.
 */
import type { Gpu } from "../gpu/device.ts";
import { ShapeError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { shapeString, Tensor } from "../tensor.ts";
import { mulberry32 } from "../data/random.ts";
import { fill } from "../ops/elementwise.ts";
import type { DflashConfig } from "./dflash_config.ts";

/** Host weights by name. */
export type DflashWeights = Map<string, Float32Array>;

/** The names of one layer's parameters, by role. */
export interface DflashLayerNames {
  inputNorm: string;
  q: string;
  k: string;
  v: string;
  o: string;
  qNorm: string;
  kNorm: string;
  postNorm: string;
  gate: string;
  up: string;
  down: string;
}

/** Layer j's parameter names. */
export function dflashLayerNames(j: number): DflashLayerNames {
  const p = `layers.${j}.`;
  return {
    inputNorm: `${p}input_layernorm.weight`,
    q: `${p}self_attn.q_proj.weight`,
    k: `${p}self_attn.k_proj.weight`,
    v: `${p}self_attn.v_proj.weight`,
    o: `${p}self_attn.o_proj.weight`,
    qNorm: `${p}self_attn.q_norm.weight`,
    kNorm: `${p}self_attn.k_norm.weight`,
    postNorm: `${p}post_attention_layernorm.weight`,
    gate: `${p}mlp.gate_proj.weight`,
    up: `${p}mlp.up_proj.weight`,
    down: `${p}mlp.down_proj.weight`,
  };
}

/** Every parameter's shape, in save order. */
export function dflashParamShapes(cfg: DflashConfig): Map<string, number[]> {
  const { hiddenSize: H, intermediateSize: I, numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
  const shapes = new Map<string, number[]>([
    ["fc.weight", [H, cfg.targetLayerIds.length * H]],
    ["hidden_norm.weight", [H]],
  ]);
  for (let j = 0; j < cfg.numLayers; j++) {
    const n = dflashLayerNames(j);
    for (
      const [name, shape] of [
        [n.inputNorm, [H]],
        [n.q, [nh * hd, H]],
        [n.k, [nkv * hd, H]],
        [n.v, [nkv * hd, H]],
        [n.o, [H, nh * hd]],
        [n.qNorm, [hd]],
        [n.kNorm, [hd]],
        [n.postNorm, [H]],
        [n.gate, [I, H]],
        [n.up, [I, H]],
        [n.down, [H, I]],
      ] as const
    ) shapes.set(name, [...shape]);
  }
  shapes.set("norm.weight", [H]);
  return shapes;
}

/**
 * SpecForge's initialisation (`DFlashDraftModel` calls `post_init`, so transformers' Qwen3 `_init_weights`
 * applies): every Linear weight ~ N(0, 0.02²), every RMSNorm weight 1; Box–Muller over one
 * {@link mulberry32} stream seeded with `seed`, parameter after parameter in save order (not torch's RNG).
 */
export function initDflashWeights(cfg: DflashConfig, seed: number): DflashWeights {
  const rand = mulberry32(seed);
  const out: DflashWeights = new Map();
  for (const [name, shape] of dflashParamShapes(cfg)) {
    const w = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (shape.length === 1) w.fill(1);
    else {
      for (let i = 0; i < w.length; i++) {
        w[i] = 0.02 * Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
      }
    }
    out.set(name, w);
  }
  return out;
}

/** The draft's parameters and gradients (training steps ADD into the gradients). */
export class DflashDraft {
  /** Parameters by name. */
  readonly params: Map<string, Tensor> = new Map();
  /** Gradients by name. */
  readonly grads: Map<string, Tensor> = new Map();
  #zero: Program | null = null;

  private constructor(readonly gpu: Gpu, readonly config: DflashConfig) {
    for (const [name, shape] of dflashParamShapes(config)) {
      this.params.set(name, Tensor.empty(gpu, shape, "f32", `dflash ${name}`));
      this.grads.set(name, Tensor.zeros(gpu, shape, "f32", `dflash grad ${name}`));
    }
  }

  /** A draft with `weights` (every name, checked) or {@link initDflashWeights}(config, seed). */
  static create(
    gpu: Gpu,
    config: DflashConfig,
    opts: { seed?: number; weights?: DflashWeights } = {},
  ): DflashDraft {
    const d = new DflashDraft(gpu, config);
    d.setWeights(opts.weights ?? initDflashWeights(config, opts.seed ?? 0));
    return d;
  }

  /** The parameter `name` (an error naming it when absent). */
  param(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new ShapeError(`dflash draft: no parameter ${name}`);
    return t;
  }

  /** The gradient of `name`. */
  grad(name: string): Tensor {
    const t = this.grads.get(name);
    if (!t) throw new ShapeError(`dflash draft: no parameter ${name}`);
    return t;
  }

  /** [name, parameter, gradient] in save order. */
  entries(): Array<[string, Tensor, Tensor]> {
    return [...this.params].map(([n, t]) => [n, t, this.grads.get(n)!]);
  }

  /** Copies host weights into the parameters: every name present with its exact size, no other. */
  setWeights(weights: DflashWeights): void {
    for (const [name, t] of this.params) {
      const w = weights.get(name);
      if (!w) throw new ShapeError(`dflash weights: ${name} is missing`);
      if (w.length !== t.size) {
        throw new ShapeError(
          `dflash weights: ${name} has ${w.length} values, expected ${shapeString(t.shape)}`,
        );
      }
      t.write(w as Float32Array<ArrayBuffer>);
    }
    for (const key of weights.keys()) {
      if (!this.params.has(key)) throw new ShapeError(`dflash weights: unexpected key ${key}`);
    }
  }

  /** Reads every parameter (one sync per tensor). */
  async getWeights(): Promise<DflashWeights> {
    const out: DflashWeights = new Map();
    for (const [name, t] of this.params) out.set(name, await t.readFloat());
    return out;
  }

  /** Reads every gradient (one sync per tensor). */
  async getGrads(): Promise<DflashWeights> {
    const out: DflashWeights = new Map();
    for (const [name, g] of this.grads) out.set(name, await g.readFloat());
    return out;
  }

  /** Submits a program (built once) that zeroes every gradient. */
  async zeroGrads(): Promise<void> {
    if (!this.#zero) {
      const p = new Program(this.gpu, "dflash zero grads");
      for (const g of this.grads.values()) await fill(p, g, 0);
      this.#zero = p;
    }
    this.#zero.run();
  }

  /** Frees parameters, gradients and the zeroing program. */
  destroy(): void {
    this.#zero?.destroy();
    for (const [, t, g] of this.entries()) {
      t.destroy();
      g.destroy();
    }
  }
}
