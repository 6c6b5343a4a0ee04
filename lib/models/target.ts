/**
 * The frozen target model (Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma 3) on WebGPU: weights loaded from a Hugging Face
 * checkpoint directory and kept on the GPU in their stored dtype, and a batched forward over right-padded
 * sequences that yields what EAGLE-3 training needs (SpecForge
 * `specforge/modeling/target/eagle3_target_model.py`; SGLang `set_eagle3_layers_to_capture`): the residual
 * stream after three auxiliary layers, the final post-norm hidden state, and logits (all of them, those of a
 * vocabulary subset, or only the full-vocabulary log-sum-exp and argmax, computed chunk by chunk).
 *
 * One decoder layer, as transformers computes it:
 *   h = x + o_proj(attention(rope(q_norm?(q_proj(n))), rope(k_norm?(k_proj(n))), v_proj(n))),  n = rmsnorm(x)
 *   y = h + down_proj(silu(gate_proj(m)) ⊙ up_proj(m)),                                       m = rmsnorm(h)
 * Gemma 3 norms each branch's output before its add (`gemmaLayerRest`), with GELU-tanh in the MLP; DeepSeek-V3's
 * attention is multi-head latent attention (lib/models/mla.ts), and the MoE targets' MLPs are lib/ops/moe.ts.
 */
import type { Gpu } from "../gpu/device.ts";
import { LimitError, ShapeError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { type DType, DTYPE_BYTES, type HostArray, Tensor } from "../tensor.ts";
import { kvRowShapes, rowsPerBlock, targetRopePositions, uploadDtype } from "./target_memory.ts";
import { moeForward, type MoeScratch, moeScratch, type MoeWeights } from "../ops/moe.ts";
import { loadMoeWeights } from "./moe_weights.ts";
import {
  mlaExpand,
  mlaOutput,
  mlaProject,
  mlaQRowOrder,
  mlaRopeRowOrder,
  type MlaScratch,
  mlaScratch,
  type MlaWeights,
} from "./mla.ts";
import { type RawTensor, SafetensorsCheckpoint, toFloat32 } from "../io/safetensors.ts";
import { checkFiniteWeights, type LoadedWeight } from "./finite_weights.ts";
import {
  checkAuxLayers,
  defaultAuxLayers,
  fusedRows,
  type LayerWeightNames,
  loadTargetConfig,
  moeShapeOf,
  resolveWeightNames,
  type TargetConfig,
} from "./config.ts";
import { linear } from "../ops/matmul.ts";
import { rmsnormForward } from "../ops/rmsnorm.ts";
import { ropeForward, ropeTable } from "../ops/rope.ts";
import { attentionForward } from "../ops/attention.ts";
import { type AttentionTemperature, attentionTemperatureForward } from "../ops/attention_temperature.ts";
import { gatedLinear } from "../ops/gated_mlp.ts";
import { accumulate, addBias, copyColumns, copyStrided, scale } from "../ops/elementwise.ts";
import { vocabStatsMerge } from "../ops/vocab_stats.ts";
import { topkMerge } from "../ops/features.ts";
import { embeddingRows, linearRowBlocks, type RowSplitMatrix } from "../ops/row_split.ts";

export type { RowSplitMatrix };

/** GPU weights of one decoder layer; optional tensors are null when the architecture has none. */
export interface TargetLayerWeights {
  /** RMSNorm weight before attention (`input_layernorm`), f32 [H]. */
  inputNorm: Tensor;
  /**
   * q_proj weight [nh·hd, H], in the stored dtype (f32 or bf16; f16 when the device has shader-f16, else
   * widened to f32).
   */
  q: Tensor;
  /** k_proj weight [nkv·hd, H], in the stored dtype; null with MLA. */
  k: Tensor | null;
  /** v_proj weight [nkv·hd, H], in the stored dtype; null with MLA. */
  v: Tensor | null;
  /** MLA (lib/models/mla.ts; q holds q_b_proj or q_proj): q_a_proj [q_lora_rank, H]; null without a q LoRA. */
  qA: Tensor | null;
  /** MLA: q_a_layernorm, f32 [q_lora_rank]; null without a q LoRA. */
  qANorm: Tensor | null;
  /** MLA: kv_a_proj_with_mqa's latent rows [kv_lora_rank, H]; null for the others. */
  kvA: Tensor | null;
  /** MLA: kv_a_proj_with_mqa's rope rows [qk_rope_head_dim, H] (reordered for rotate-half); null for the others. */
  kPe: Tensor | null;
  /** MLA: kv_a_layernorm, f32 [kv_lora_rank]; null for the others. */
  kvANorm: Tensor | null;
  /** MLA: kv_b_proj [nh·(nope + v), kv_lora_rank]; null for the others. */
  kvB: Tensor | null;
  /** o_proj weight [H, nh·hd], in the stored dtype. */
  o: Tensor;
  /** q_proj bias, f32 [nh·hd] (Qwen2, or `attention_bias`), else null. */
  qBias: Tensor | null;
  /** k_proj bias, f32 [nkv·hd], else null. */
  kBias: Tensor | null;
  /** v_proj bias, f32 [nkv·hd], else null. */
  vBias: Tensor | null;
  /** o_proj bias, f32 [H] (`attention_bias` on Llama/Qwen3), else null. */
  oBias: Tensor | null;
  /** Per-head RMSNorm weight of q before RoPE, f32 [hd] (Qwen3), else null. */
  qNorm: Tensor | null;
  /** Per-head RMSNorm weight of k before RoPE, f32 [hd] (Qwen3), else null. */
  kNorm: Tensor | null;
  /**
   * `post_attention_layernorm`, f32 [H]: the RMSNorm of the MLP input (Llama family) or of the attention output
   * (Gemma 3); Gemma's norm weights are stored with their + 1 applied.
   */
  postAttentionNorm: Tensor;
  /** Gemma 3's RMSNorm of the MLP input (`pre_feedforward_layernorm`), f32 [H]; null for the others. */
  preFeedforwardNorm: Tensor | null;
  /** Gemma 3's RMSNorm of the MLP output (`post_feedforward_layernorm`), f32 [H]; null for the others. */
  postFeedforwardNorm: Tensor | null;
  /** gate_proj weight [I, H] (I = intermediateSize), in the stored dtype; null in a sparse MoE layer. */
  gate: Tensor | null;
  /** up_proj weight [I, H], in the stored dtype; null in a sparse MoE layer. */
  up: Tensor | null;
  /** down_proj weight [H, I], in the stored dtype; null in a sparse MoE layer. */
  down: Tensor | null;
  /** gate_proj bias, f32 [I] (Llama `mlp_bias`), else null. */
  gateBias: Tensor | null;
  /** up_proj bias, f32 [I], else null. */
  upBias: Tensor | null;
  /** down_proj bias, f32 [H], else null. */
  downBias: Tensor | null;
  /** A sparse MoE layer's router and experts (lib/ops/moe.ts); null in a dense layer. */
  moe: MoeWeights | null;
  /** GPT-OSS's attention sinks, f32 [nh]; null for the others. */
  sinks: Tensor | null;
}

/** Every tensor of a layer's weights (the MoE block's included). */
export function layerTensors(w: TargetLayerWeights): Tensor[] {
  const out: Tensor[] = [];
  for (const [key, value] of Object.entries(w)) {
    if (key !== "moe" && value) out.push(value as Tensor);
  }
  const m = w.moe;
  if (m) {
    out.push(m.router, ...(m.routerBias ? [m.routerBias] : []));
    for (const b of [...m.gate, ...m.up, ...(m.gateUp ?? []), ...m.down]) {
      out.push(b.tensor, ...(b.scales ? [b.scales] : []), ...(b.bias ? [b.bias] : []));
    }
    if (m.shared) {
      out.push(m.shared.gate, m.shared.up, m.shared.down, ...(m.shared.gateProj ? [m.shared.gateProj] : []));
    }
  }
  return out;
}

/** Options of {@link TargetModel.load}. */
export interface TargetLoadOptions {
  /** The three layers whose outputs are captured (default: [1, N/2−1, N−4], or a documented choice for N < 7). */
  auxLayers?: number[];
  /** Any number (≥ 1) of ascending aux layers instead of three (a DFlash draft's `target_layer_ids`). */
  anyAuxCount?: boolean;
  /** Longest sequence (positions) the RoPE table covers (default: max_position_embeddings). */
  maxPositions?: number;
  /** Split matrices larger than this many bytes into row blocks (default: the device's binding limit). */
  maxBlockBytes?: number;
  /** Called with notes for the user (e.g. why the aux layers differ from the default). */
  onMessage?: (message: string) => void;
}

/** What a forward produces; everything not asked for is skipped. */
export interface TargetOutputs {
  /** The residual streams after the aux layers, concatenated: [B·T, (aux layers)·H]. */
  aux?: boolean;
  /** The final post-norm hidden state [B·T, H]. */
  finalHidden?: boolean;
  /** Full logits [B·T, V] (small vocabularies, generation). */
  logits?: boolean;
  /** Logits of these vocabulary ids only (ascending target ids, e.g. the draft vocabulary): [B·T, n]. */
  subsetIds?: Int32Array;
  /** Full-vocabulary log-sum-exp and argmax, chunk by chunk, without materialising [B·T, V]. */
  vocabStats?: boolean;
  /** Vocabulary columns per chunk for vocabStats (default 4096). */
  vocabChunk?: number;
  /** With vocabStats: also the k largest logits of each row and their ids, merged chunk by chunk (k ≤ 64). */
  topk?: number;
}

const PLAIN_RMS = (cfg: TargetConfig) => ({ eps: cfg.rmsNormEps });

/** A target model loaded on the GPU. */
export class TargetModel implements HeadSource {
  readonly #subsets = new Map<string, RowSplitMatrix>();

  private constructor(
    readonly gpu: Gpu,
    readonly config: TargetConfig,
    readonly dir: string,
    readonly auxLayers: number[],
    readonly embed: RowSplitMatrix,
    readonly lmHead: RowSplitMatrix,
    readonly finalNorm: Tensor,
    readonly layers: TargetLayerWeights[],
    /** RoPE cos/sin [maxPositions, rotaryDim/2] (of the full-attention layers, for Gemma 3). */
    readonly ropeCos: Tensor,
    readonly ropeSin: Tensor,
    /** Gemma 3's sliding-window layers' RoPE tables, null for the others. */
    readonly ropeLocal: RopeTables | null,
    readonly maxPositions: number,
    readonly maxBlockBytes: number,
  ) {}

  /**
   * Loads config.json and the safetensors weights of a checkpoint directory (single file or sharded). Every
   * expected tensor is checked for presence and shape before anything is uploaded.
   */
  static async load(gpu: Gpu, dir: string, opts: TargetLoadOptions = {}): Promise<TargetModel> {
    const config = await loadTargetConfig(`${dir}/config.json`);
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      const names = resolveWeightNames(
        config,
        (n) => ckpt.has(n),
        (n) => ckpt.info(n).shape,
        dir,
      );
      const n = config.numLayers;
      let auxLayers: number[];
      if (opts.auxLayers) {
        auxLayers = checkAuxLayers(opts.auxLayers, n, opts.anyAuxCount ? null : 3);
      } else {
        const choice = defaultAuxLayers(n);
        auxLayers = choice.layers;
        if (choice.message) opts.onMessage?.(choice.message);
      }
      const maxBlockBytes = Math.min(opts.maxBlockBytes ?? Infinity, gpu.limits.maxStorageBufferBindingSize);
      const load = new TargetWeightLoader(gpu, ckpt, normOffsetOf(config), maxBlockBytes);
      const layers: TargetLayerWeights[] = [];
      for (const l of names.layers) layers.push(await load.layer(l));
      const embed = await load.rowSplit(names.embed, maxBlockBytes);
      const lmHead = names.lmHead === names.embed ? embed : await load.rowSplit(names.lmHead, maxBlockBytes);
      const finalNorm = await load.norm(names.finalNorm);
      await load.checkFinite();
      // LongRoPE switches to its long factors beyond the original context; the tables here cover that context.
      const maxPositions = targetRopePositions(config, opts.maxPositions);
      const { global, local } = ropeTables(gpu, config, maxPositions);
      return new TargetModel(
        gpu,
        config,
        dir,
        auxLayers,
        embed,
        lmHead,
        finalNorm,
        layers,
        global.cos,
        global.sin,
        local,
        maxPositions,
        maxBlockBytes,
      );
    } finally {
      ckpt.close();
    }
  }

  /** Frees every weight. */
  destroy(): void {
    const seen = new Set<Tensor>();
    const free = (t: Tensor | null) => {
      if (t && !seen.has(t)) {
        seen.add(t);
        t.destroy();
      }
    };
    for (const l of this.layers) for (const t of layerTensors(l)) free(t);
    for (const m of [this.embed, this.lmHead, ...this.#subsets.values()]) {
      for (const b of m.blocks) free(b.tensor);
    }
    free(this.finalNorm);
    for (const t of [this.ropeCos, this.ropeSin, this.ropeLocal?.cos ?? null, this.ropeLocal?.sin ?? null]) {
      free(t);
    }
  }

  /**
   * Builds (once) the forward program for `batch` right-padded sequences of `seqLen` tokens. Run it with
   * {@link TargetForward.run}; its outputs are GPU tensors that stay valid until the next run.
   */
  async forward(batch: number, seqLen: number, outputs: TargetOutputs): Promise<TargetForward> {
    const f = new TargetForward(this, batch, seqLen, outputs);
    await f.build();
    return f;
  }

  /** lm_head restricted to `ids` (gathered once per distinct id set and kept). */
  subsetHead(ids: Int32Array): Promise<RowSplitMatrix> {
    return cachedSubset(this.#subsets, this.gpu, this.lmHead, ids, this.maxBlockBytes);
  }

  /** Checks that a sequence of `len` positions starting at `offset` fits the RoPE tables. */
  checkPositions(offset: number, len: number): void {
    checkTargetPositions(this, offset, len);
  }
}

/**
 * Checks that `len` positions from `offset` fit the RoPE tables (`maxPositions`) of the target loaded from
 * `dir` (sliding windows are applied per layer, {@link layerWindow}).
 */
export function checkTargetPositions(
  t: { dir: string; config: TargetConfig; maxPositions: number },
  offset: number,
  len: number,
): void {
  if (offset + len > t.maxPositions) {
    const why = t.config.ropeScaling.type === "longrope"
      ? "the original context of its longrope scaling (the long factors beyond it are not supported yet)"
      : "maxPositions / max_position_embeddings";
    throw new LimitError(
      `target ${t.dir}: positions up to ${offset + len} exceed the ${t.maxPositions} the RoPE table ` +
        `was built for (${why})`,
    );
  }
}

/** The sliding window of decoder layer `layer` (transformers' `sliding_window_overlay`), or null for none. */
export function layerWindow(cfg: TargetConfig, layer: number): number | null {
  if (cfg.slidingWindow === null || (cfg.windowLayers && !cfg.windowLayers[layer])) return null;
  return cfg.slidingWindow;
}

/** RoPE cos/sin tables [maxPositions, rotaryDim/2]. */
export interface RopeTables {
  /** cos(position · frequency). */
  cos: Tensor;
  /** sin(position · frequency). */
  sin: Tensor;
}

/** What a target's layers read their RoPE from. */
export interface TargetRope {
  readonly config: TargetConfig;
  readonly ropeCos: Tensor;
  readonly ropeSin: Tensor;
  readonly ropeLocal: RopeTables | null;
}

/**
 * How layer `layer` attends beyond the common path: with RoPE (all but Llama 4's NoPE layers), within chunks
 * of `chunk` positions (Llama 4's RoPE layers), with its queries scaled by `temperature` (Llama 4's NoPE
 * layers).
 */
export function layerAttention(
  cfg: TargetConfig,
  layer: number,
): { rope: boolean; chunk: number | null; temperature: AttentionTemperature | null } {
  const l4 = cfg.llama4;
  if (!l4) return { rope: true, chunk: null, temperature: null };
  const rope = l4.ropeLayers[layer];
  return { rope, chunk: rope ? l4.chunkSize : null, temperature: rope ? null : l4.temperature };
}

/**
 * The RoPE tables of a target for positions 0..maxPositions−1: its own, and for Gemma 3 also those of its
 * sliding-window layers (their base, unscaled).
 */
export function ropeTables(
  gpu: Gpu,
  cfg: TargetConfig,
  maxPositions: number,
): { global: RopeTables; local: RopeTables | null } {
  const half = cfg.rotaryDim / 2;
  const upload = (c: TargetConfig, label: string): RopeTables => {
    const { cos, sin } = ropeTable(c, c.rotaryDim, maxPositions);
    return {
      cos: Tensor.fromArray(gpu, cos, [maxPositions, half], "f32", `${label} cos`),
      sin: Tensor.fromArray(gpu, sin, [maxPositions, half], "f32", `${label} sin`),
    };
  };
  const local = cfg.gemma
    ? upload(
      { ...cfg, ropeTheta: cfg.gemma.localRope.theta, ropeScaling: cfg.gemma.localRope.scaling },
      "local rope",
    )
    : null;
  return { global: upload(cfg, "rope"), local };
}

/** The RoPE tables decoder layer `layer` reads: Gemma 3's local ones for its sliding-window layers. */
export function layerRope(t: TargetRope, layer: number): RopeTables {
  const local = t.config.gemma?.slidingLayers[layer] && t.ropeLocal;
  return local ? t.ropeLocal! : { cos: t.ropeCos, sin: t.ropeSin };
}

/** The offset added to every RMSNorm weight on load: 1 for Gemma 3's (1 + w) norms, else 0. */
export function normOffsetOf(cfg: TargetConfig): number {
  return cfg.gemma ? 1 : 0;
}

/** Checks a forward's ids [B·T] (each in 0..V−1) and lengths (B values in 1..T). */
export function checkForwardInput(ids: Int32Array, lengths: number[], B: number, T: number, V: number): void {
  if (ids.length !== B * T) throw new ShapeError(`target forward: ${ids.length} ids for batch ${B} × ${T}`);
  if (lengths.length !== B || lengths.some((l) => l < 1 || l > T)) {
    throw new ShapeError(`target forward: lengths [${lengths}] must be ${B} values in 1..${T}`);
  }
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= V) {
      throw new ShapeError(`target forward: token id ${ids[i]} outside 0..${V - 1}`);
    }
  }
}

/**
 * The outputs of a target forward ({@link TargetForward}, or a streamed one: lib/models/target_stream.ts),
 * null when not asked for; valid until the forward's next run.
 */
export class ForwardTensors {
  /** [B·T, 3H] when asked for. */
  aux: Tensor | null = null;
  /** [B·T, H] when asked for. */
  finalHidden: Tensor | null = null;
  /** [B·T, V] when asked for. */
  logits: Tensor | null = null;
  /** [B·T, n] when subsetIds were given. */
  subsetLogits: Tensor | null = null;
  /** [B·T, 2] running max and Σexp (log-sum-exp = max + log sum) and i32 [B·T] argmax, when asked for. */
  vocabMaxSum: Tensor | null = null;
  /** i32 [B·T]: the full-vocabulary argmax of each row, when vocabStats was asked for. */
  vocabArgmax: Tensor | null = null;
  /** i32 [B·T, k]: the top-k ids (most likely first), when topk was asked for. */
  topkIds: Tensor | null = null;
  /** f32 [B·T, k]: their logits. */
  topkValues: Tensor | null = null;
}

/** A prebuilt forward for a fixed batch size and sequence length. */
export class TargetForward extends ForwardTensors {
  /** Token ids, i32 [B·T] (right-padded). */
  readonly ids: Tensor;
  /** Valid tokens per sequence, i32 [B]. */
  readonly lengths: Tensor;
  /** The recorded dispatches; {@link TargetForward.run} replays them. */
  readonly program: Program;

  /**
   * Checks that seqLen fits the model and allocates the ids and lengths inputs; use
   * {@link TargetModel.forward}, which also records the program.
   */
  constructor(
    readonly model: TargetModel,
    readonly batch: number,
    readonly seqLen: number,
    readonly outputs: TargetOutputs,
  ) {
    super();
    const gpu = model.gpu;
    model.checkPositions(0, seqLen);
    const rows = batch * seqLen;
    this.program = new Program(gpu, `target forward B=${batch} T=${seqLen}`);
    this.ids = this.program.scratch([rows], "i32", "ids");
    this.lengths = this.program.scratch([batch], "i32", "lengths");
  }

  /** Records every dispatch. */
  async build(): Promise<void> {
    const { model, batch, seqLen, outputs, program: p } = this;
    const cfg = model.config;
    const rows = batch * seqLen;
    const H = cfg.hiddenSize;
    const nAux = model.auxLayers.length;
    if (outputs.aux) this.aux = p.scratch([rows, nAux * H], "f32", "aux hidden states");
    const x = await recordTrunk(p, model, {
      batch,
      queryLen: seqLen,
      ids: this.ids,
      lengths: this.lengths,
      positionOffset: 0,
      onLayerOutput: this.aux
        ? async (layer, hidden) => {
          const slot = model.auxLayers.indexOf(layer);
          // A shallow target may repeat a layer id; every slot holding it gets the copy.
          for (let s = slot; s >= 0 && s < nAux; s = model.auxLayers.indexOf(layer, s + 1)) {
            await copyColumns(p, hidden, this.aux!, s * H);
          }
        }
        : undefined,
    });
    const needFinal = outputs.finalHidden || outputs.logits || outputs.subsetIds || outputs.vocabStats;
    if (!needFinal) return;
    const final = p.scratch([rows, H], "f32", "final hidden");
    await rmsnormForward(
      p,
      x,
      model.finalNorm,
      final,
      p.scratch([rows], "f32", "final rstd"),
      PLAIN_RMS(cfg),
    );
    if (outputs.finalHidden) this.finalHidden = final;
    const head = await recordHeadOutputs(p, final, model, outputs);
    this.logits = head.logits;
    this.subsetLogits = head.subsetLogits;
    this.vocabMaxSum = head.vocabMaxSum;
    this.vocabArgmax = head.vocabArgmax;
    this.topkIds = head.topkIds;
    this.topkValues = head.topkValues;
  }

  /**
   * Writes the token ids (right-padded, [B·T]) and lengths and runs the forward (no sync: read the outputs
   * when needed).
   */
  run(ids: Int32Array<ArrayBuffer>, lengths: number[]): void {
    checkForwardInput(ids, lengths, this.batch, this.seqLen, this.model.config.vocabSize);
    this.ids.write(ids);
    this.lengths.write(Int32Array.from(lengths));
    this.program.run();
  }

  /** Frees the program and its tensors. */
  destroy(): void {
    this.program.destroy();
  }
}

/** The lm_head of a target and its row subsets (a {@link TargetModel} or {@link TargetEnds}). */
export interface HeadSource {
  /** The target's config (vocab_size). */
  readonly config: TargetConfig;
  /** lm_head [V, H] as row blocks. */
  readonly lmHead: RowSplitMatrix;
  /** lm_head restricted to `ids`. */
  subsetHead(ids: Int32Array): Promise<RowSplitMatrix>;
}

/** The head outputs of {@link recordHeadOutputs}; null when not asked for. */
export interface HeadOutputs {
  /** f32 [rows, V]. */
  logits: Tensor | null;
  /** f32 [rows, n] for the subset ids. */
  subsetLogits: Tensor | null;
  /** f32 [rows, 2]: running max and Σexp over the vocabulary. */
  vocabMaxSum: Tensor | null;
  /** i32 [rows]: the full-vocabulary argmax. */
  vocabArgmax: Tensor | null;
  /** i32 [rows, k]: the top-k ids, most likely first (ties: lower id first), when `topk` was asked for. */
  topkIds: Tensor | null;
  /** f32 [rows, k]: their logits. */
  topkValues: Tensor | null;
}

/** Whether `ids` lists every id of a vocabulary of `vocabSize` in order (0, 1, …, vocabSize − 1). */
function isWholeVocabulary(ids: Int32Array, vocabSize: number): boolean {
  return ids.length === vocabSize && ids.every((id, i) => id === i);
}

/**
 * Records what the forward's `outputs` ask of the head from the final post-norm hidden state `final`
 * [rows, H]: full logits, subset logits and the chunked full-vocabulary max/Σexp/argmax (shared by the online
 * forward and by offline training, which re-applies the head to stored hidden states as SpecForge does).
 */
export async function recordHeadOutputs(
  p: Program,
  final: Tensor,
  model: HeadSource,
  outputs: TargetOutputs,
): Promise<HeadOutputs> {
  const cfg = model.config;
  const rows = final.shape[0];
  const out: HeadOutputs = {
    logits: null,
    subsetLogits: null,
    vocabMaxSum: null,
    vocabArgmax: null,
    topkIds: null,
    topkValues: null,
  };
  if (outputs.logits) {
    out.logits = p.scratch([rows, cfg.vocabSize], "f32", "logits");
    await recordHead(p, final, model.lmHead, out.logits);
  }
  if (outputs.subsetIds) {
    const head = await model.subsetHead(outputs.subsetIds);
    out.subsetLogits = p.scratch([rows, outputs.subsetIds.length], "f32", "subset logits");
    await recordHead(p, final, head, out.subsetLogits);
  }
  if (outputs.vocabStats) {
    const maxSum = out.vocabMaxSum = p.scratch([rows, 2], "f32", "vocab max/sum");
    const argmax = out.vocabArgmax = p.scratch([rows], "i32", "vocab argmax");
    const chunk = outputs.vocabChunk ?? 4096;
    const block = p.scratch([rows, Math.min(chunk, cfg.vocabSize)], "f32", "logits chunk");
    const k = outputs.topk ?? 0;
    if (k > 0) {
      out.topkIds = p.scratch([rows, k], "i32", "top-k ids");
      out.topkValues = p.scratch([rows, k], "f32", "top-k logits");
    }
    // A subset that is the whole vocabulary in order (a draft vocabulary as large as the target's, ascending
    // ids) already holds the one chunk's logits: the same product of the same rows, so the same bits. (The
    // chunk's scratch stays allocated, as the memory plans count it.)
    const ids = outputs.subsetIds;
    if (
      ids && isWholeVocabulary(ids, cfg.vocabSize) && model.lmHead.blocks.length === 1 &&
      chunk >= cfg.vocabSize
    ) {
      await vocabStatsMerge(p, out.subsetLogits!, maxSum, argmax, { colOffset: 0, first: true });
      if (k > 0) {
        await topkMerge(p, out.subsetLogits!, out.topkIds!, out.topkValues!, { colOffset: 0, first: true });
      }
      return out;
    }
    let first = true;
    for (const { row0, tensor } of model.lmHead.blocks) {
      const blockRows = tensor.shape[0];
      for (let r = 0; r < blockRows; r += chunk) {
        const n = Math.min(chunk, blockRows - r);
        const w = tensor.view(r * tensor.shape[1], [n, tensor.shape[1]], `lm_head rows ${row0 + r}..`);
        const chunkOut = block.view(0, [rows, n]);
        await linear(p, final, w, chunkOut);
        await vocabStatsMerge(p, chunkOut, maxSum, argmax, { colOffset: row0 + r, first });
        if (k > 0) {
          await topkMerge(p, chunkOut, out.topkIds!, out.topkValues!, { colOffset: row0 + r, first });
        }
        first = false;
      }
    }
  }
  return out;
}

/**
 * The two ends of a target without its layers: the embedding and (optionally) the lm_head, what offline
 * training needs (the draft's frozen embedding; the teacher head for stored final hidden states).
 */
export class TargetEnds implements HeadSource {
  readonly #subsets = new Map<string, RowSplitMatrix>();

  private constructor(
    readonly gpu: Gpu,
    readonly config: TargetConfig,
    readonly embed: RowSplitMatrix,
    readonly lmHeadOrNull: RowSplitMatrix | null,
    readonly maxBlockBytes: number,
    /** The final norm's weight (with the model's norm offset), when loaded. */
    readonly finalNormOrNull: Tensor | null = null,
  ) {}

  /**
   * Loads config.json, the embedding and, when `lmHead` is set, the lm_head of checkpoint `dir`; with
   * `finalNorm`, the final norm's weight too (a DFlash draft's norm starts from it).
   */
  static async load(
    gpu: Gpu,
    dir: string,
    opts: { lmHead: boolean; finalNorm?: boolean },
  ): Promise<TargetEnds> {
    const config = await loadTargetConfig(`${dir}/config.json`);
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      const names = resolveWeightNames(config, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, dir);
      const maxBlockBytes = gpu.limits.maxStorageBufferBindingSize;
      const load = new TargetWeightLoader(gpu, ckpt, normOffsetOf(config));
      const embed = await load.rowSplit(names.embed, maxBlockBytes);
      const head = !opts.lmHead
        ? null
        : names.lmHead === names.embed
        ? embed
        : await load.rowSplit(names.lmHead, maxBlockBytes);
      const finalNorm = opts.finalNorm ? await load.norm(names.finalNorm) : null;
      await load.checkFinite();
      return new TargetEnds(gpu, config, embed, head, maxBlockBytes, finalNorm);
    } finally {
      ckpt.close();
    }
  }

  /** The lm_head (an error when it was not loaded). */
  get lmHead(): RowSplitMatrix {
    if (!this.lmHeadOrNull) throw new Error("TargetEnds: loaded without the lm_head");
    return this.lmHeadOrNull;
  }

  /** lm_head restricted to `ids` (gathered once per distinct id set and kept). */
  subsetHead(ids: Int32Array): Promise<RowSplitMatrix> {
    return cachedSubset(this.#subsets, this.gpu, this.lmHead, ids, this.maxBlockBytes);
  }

  /** Frees every weight. */
  destroy(): void {
    const seen = new Set<Tensor>();
    for (const m of [this.embed, this.lmHeadOrNull, ...this.#subsets.values()]) {
      for (const b of m?.blocks ?? []) {
        if (!seen.has(b.tensor)) b.tensor.destroy();
        seen.add(b.tensor);
      }
    }
    this.finalNormOrNull?.destroy();
  }
}

/** How {@link recordTrunk} runs: a whole padded batch, or new tokens appended to a KV cache. */
export interface TrunkArgs {
  batch: number;
  /** Tokens per sequence in this pass (Tq). */
  queryLen: number;
  /** i32 [B·Tq]. */
  ids: Tensor;
  /** i32 [B]: valid keys per sequence (with a cache: positions filled after this pass). */
  lengths: Tensor;
  /** Position of this pass's first token. */
  positionOffset: number;
  /** Per layer K and V caches [B, maxLen, nkv, hd]; the pass writes rows positionOffset.. and attends all. */
  cache?: { k: Tensor[]; v: Tensor[]; maxLen: number };
  /** Called after each decoder layer with the residual stream [B·Tq, H]. */
  onLayerOutput?: (layer: number, hidden: Tensor) => Promise<void>;
}

/**
 * Records the embedding and every decoder layer into `p`; returns the residual stream [B·Tq, H] after the
 * last layer (before the final norm). Scratch tensors belong to `p`.
 */
export async function recordTrunk(p: Program, model: TargetModel, a: TrunkArgs): Promise<Tensor> {
  const cfg = model.config;
  const { batch: B, queryLen: T } = a;
  const H = cfg.hiddenSize, nh = cfg.numHeads;
  model.checkPositions(a.positionOffset, T);
  const x = p.scratch([B * T, H], "f32", "residual");
  const s = layerScratch(p, cfg, [B, T]);
  await recordEmbedding(p, cfg, model.embed, a.ids, x, s);
  const lse = p.scratch([B, nh, T], "f32", "attention lse");
  for (let i = 0; i < model.layers.length; i++) {
    await recordDecoderLayer(
      p,
      cfg,
      model.layers[i],
      x,
      s,
      trunkAttend(p, model, a, i, lse, model.layers[i].sinks),
    );
    await a.onLayerOutput?.(i, x);
  }
  return x;
}

/**
 * The embedding rows of `ids` into the residual stream x; Gemma 3 scales them by √H
 * (`Gemma3TextScaledWordEmbedding`), through the layer scratch's branch rows.
 */
export async function recordEmbedding(
  p: Program,
  cfg: TargetConfig,
  embed: RowSplitMatrix,
  ids: Tensor,
  x: Tensor,
  s: LayerScratch,
): Promise<void> {
  if (!cfg.gemma) return await embeddingRows(p, embed, ids, x);
  await embeddingRows(p, embed, ids, s.branch!);
  await scale(p, s.branch!, cfg.gemma.embedScale, x);
}

/**
 * The attention of decoder layer `layer` in a trunk pass `a`: q and k rotated at their positions (from
 * `a.positionOffset`), k and v stored in the layer's KV cache when the pass has one, then causal attention over
 * the valid keys (`a.lengths`); `lse` [B, nh, Tq] receives the log-sum-exps.
 */
export function trunkAttend(
  p: Program,
  model: TargetRope,
  a: TrunkArgs,
  layer: number,
  lse: Tensor,
  sinks: Tensor | null = null,
): Attend {
  const rope = layerRope(model, layer), how = layerAttention(model.config, layer);
  return async (q, k, v, att, expand) => {
    const { batch: B, queryLen: T } = a;
    const positions = { positionOffset: a.positionOffset };
    if (how.rope) {
      await ropeForward(p, q, q, rope.cos, rope.sin, positions);
      await ropeForward(p, k, k, rope.cos, rope.sin, positions);
    } else if (how.temperature) {
      await attentionTemperatureForward(
        p,
        q,
        how.temperature,
        { offset: a.positionOffset, seqLen: T },
        B * T,
      );
    }
    let keys = k, values = v, queryOffset = 0;
    if (a.cache) {
      const { maxLen } = a.cache;
      const copy = (t: Tensor, cache: Tensor) => {
        const row = t.size / (B * T); // nkv·hd (MLA: rope, r)
        return copyStrided(p, t, cache, {
          count: [B, T, row],
          srcStrides: [T * row, row, 1],
          dstStrides: [maxLen * row, row, 1],
          dstOffset: a.positionOffset * row,
        });
      };
      await copy(k, a.cache.k[layer]);
      await copy(v, a.cache.v[layer]);
      keys = a.cache.k[layer];
      values = a.cache.v[layer];
      queryOffset = a.positionOffset;
    }
    if (expand) ({ keys, values } = await expand(keys, values));
    const hd = model.config.headDim;
    await attentionForward(p, {
      q,
      k: keys.reshape([B, keys.size / (B * model.config.numKvHeads * hd), model.config.numKvHeads, hd]),
      v: values.reshape([B, values.size / (B * model.config.numKvHeads * hd), model.config.numKvHeads, hd]),
      lengths: a.lengths,
      out: att,
      lse,
      sinks,
    }, {
      causal: true,
      queryOffset,
      scale: model.config.mla?.scale ?? model.config.gemma?.attentionScale,
      window: layerWindow(model.config, layer) ?? undefined,
      chunk: how.chunk ?? undefined,
    });
  };
}

/** Per-pass scratch of the decoder layers for tokens laid out as `lead` (e.g. [B, T]). */
export interface LayerScratch {
  normed: Tensor;
  rstd: Tensor;
  /** [...lead, nh, hd] */
  q: Tensor;
  /** [...lead, nkv, hd]; MLA: k_pe [...lead, 1, rope] and the latent c [...lead, 1, r] ({@link Attend}). */
  k: Tensor;
  v: Tensor;
  /** Qwen3's per-head normed q and k, and their rstd; null for other architectures. */
  qNormed: Tensor | null;
  kNormed: Tensor | null;
  headRstd: Tensor | null;
  /** [...lead, nh, hd] */
  att: Tensor;
  gate: Tensor;
  up: Tensor;
  act: Tensor;
  /** Gemma 3: a branch's output before its norm and residual add, and after the norm [rows, H]; else null. */
  branch: Tensor | null;
  branchNormed: Tensor | null;
  /** The sparse MoE MLP's scratch (MoE targets), else null. */
  moe: MoeScratch | null;
  /** MLA's projections' scratch (DeepSeek-V3), else null. */
  mla: MlaScratch | null;
}

/** Scratch for {@link recordDecoderLayer}, owned by `p`. */
export function layerScratch(p: Program, cfg: TargetConfig, lead: number[]): LayerScratch {
  const rows = lead.reduce((a, b) => a * b, 1);
  const { hiddenSize: H, headDim: hd, numHeads: nh, numKvHeads: nkv, intermediateSize: I } = cfg;
  return {
    normed: p.scratch([rows, H], "f32", "normed"),
    rstd: p.scratch([rows], "f32", "rstd"),
    q: p.scratch([...lead, nh, hd], "f32", "q"),
    k: p.scratch([...lead, ...kvRowShapes(cfg).k], "f32", "k"),
    v: p.scratch([...lead, ...kvRowShapes(cfg).v], "f32", "v"),
    qNormed: cfg.qkNorm ? p.scratch([...lead, nh, hd], "f32", "q normed") : null,
    kNormed: cfg.qkNorm ? p.scratch([...lead, nkv, hd], "f32", "k normed") : null,
    headRstd: cfg.qkNorm ? p.scratch([rows * nh], "f32", "head rstd") : null,
    att: p.scratch([...lead, nh, hd], "f32", "attention out"),
    gate: p.scratch([rows, I], "f32", "gate"),
    up: p.scratch([rows, I], "f32", "up"),
    act: p.scratch([rows, I], "f32", "swiglu"),
    branch: cfg.gemma ? p.scratch([rows, H], "f32", "branch") : null,
    branchNormed: cfg.gemma ? p.scratch([rows, H], "f32", "branch normed") : null,
    moe: cfg.moe ? moeScratch(p, rows, H, moeShapeOf(cfg.moe), cfg.moe.sharedIntermediate) : null,
    mla: cfg.mla ? mlaScratch(p, cfg, rows) : null,
  };
}

/**
 * Records how attention is done for one layer: rotate q and k (in place) at their positions, store k and v
 * where later passes need them, and write the attention output into `att`. With MLA (`expand` given) k is
 * k_pe [.., 1, rope] and v the latent c [.., 1, r]: they are rotated and stored as k and v are, and `expand`
 * turns the stored ones into per-head keys and values (lib/models/mla.ts) to attend.
 */
export type Attend = (q: Tensor, k: Tensor, v: Tensor, att: Tensor, expand?: MlaExpand) => Promise<void>;

/** MLA's keys and values [R, nh, hd] of R positions from their k_pe [R, 1, rope] and latents [R, 1, r]. */
export type MlaExpand = (kPe: Tensor, latent: Tensor) => Promise<{ keys: Tensor; values: Tensor }>;

/**
 * Records a decoder layer of weights `w` on the residual stream x [rows, H] (updated in place): the norms,
 * projections (with biases), Qwen3's q/k norms, o_proj, and the SwiGLU MLP; `attend` supplies RoPE, caching
 * and the attention pattern (causal over a KV cache, or a draft tree's mask).
 */
export async function recordDecoderLayer(
  p: Program,
  cfg: TargetConfig,
  w: TargetLayerWeights,
  x: Tensor,
  s: LayerScratch,
  attend: Attend,
): Promise<void> {
  const rows = x.shape[0];
  const flat = (t: Tensor) => t.reshape([rows, t.size / rows]);
  await rmsnormForward(p, x, w.inputNorm, s.normed, s.rstd, PLAIN_RMS(cfg));
  if (cfg.mla) {
    const m = mlaWeightsOf(w);
    await mlaProject(p, m, s.mla!, s.normed, { q: s.q, latent: s.v, kPe: s.k, rstd: s.rstd });
    await attend(s.q, s.k, s.v, s.att, (kPe, latent) => mlaExpand(p, cfg, m.kvB, latent, kPe));
    await mlaOutput(p, cfg, m, s.mla!, s.att, x);
  } else {
    await qkvAttention(p, cfg, w, s, attend);
    if (cfg.gemma) return await gemmaLayerRest(p, cfg, w, x, s);
    await linear(p, flat(s.att), w.o, x, { accumulate: true });
    if (w.oBias) await addBias(p, x, w.oBias);
  }
  await rmsnormForward(p, x, w.postAttentionNorm, s.normed, s.rstd, PLAIN_RMS(cfg));
  if (w.moe) return await moeForward(p, moeShapeOf(cfg.moe!), w.moe, s.normed, x, s.moe!);
  const mlp = { act: s.act, gate: s.gate, up: s.up, keep: false };
  await gatedLinear(p, s.normed, w.gate!, w.up!, mlp, "silu", { gate: w.gateBias, up: w.upBias });
  await linear(p, s.act, w.down!, x, { accumulate: true });
  if (w.downBias) await addBias(p, x, w.downBias);
}

/** A layer's MLA weights (an MLA target's layer, lib/models/mla.ts). */
function mlaWeightsOf(w: TargetLayerWeights): MlaWeights {
  return {
    q: w.q,
    qA: w.qA,
    qANorm: w.qANorm,
    kvA: w.kvA!,
    kPe: w.kPe!,
    kvANorm: w.kvANorm!,
    kvB: w.kvB!,
    o: w.o,
  };
}

/**
 * The q, k, v projections of the normed input s.normed (with biases, Qwen3's q/k norms) and `attend` into s.att.
 */
async function qkvAttention(
  p: Program,
  cfg: TargetConfig,
  w: TargetLayerWeights,
  s: LayerScratch,
  attend: Attend,
): Promise<void> {
  const rows = s.normed.shape[0];
  const { headDim: hd, numHeads: nh, numKvHeads: nkv } = cfg;
  const flat = (t: Tensor) => t.reshape([rows, t.size / rows]);
  await projection(p, s.normed, w.q, w.qBias, flat(s.q));
  await projection(p, s.normed, w.k!, w.kBias, flat(s.k));
  await projection(p, s.normed, w.v!, w.vBias, flat(s.v));
  let q = s.q, k = s.k;
  if (w.qNorm && w.kNorm && s.qNormed && s.kNormed && s.headRstd) {
    // Qwen3: RMSNorm over each head's hd values, before RoPE.
    const perHead = (t: Tensor, heads: number) => t.reshape([rows * heads, hd]);
    await rmsnormForward(p, perHead(s.q, nh), w.qNorm, perHead(s.qNormed, nh), s.headRstd, PLAIN_RMS(cfg));
    await rmsnormForward(
      p,
      perHead(s.k, nkv),
      w.kNorm,
      perHead(s.kNormed, nkv),
      s.headRstd.view(0, [rows * nkv]),
      PLAIN_RMS(cfg),
    );
    q = s.qNormed;
    k = s.kNormed;
  }
  await attend(q, k, s.v, s.att);
}

/**
 * Gemma 3's layer after attention (transformers `Gemma3DecoderLayer.forward`): x += norm(o_proj(att)) with
 * `post_attention_layernorm`; m = `pre_feedforward_layernorm`(x); x += `post_feedforward_layernorm`(
 * down(gelu_tanh(gate(m)) ⊙ up(m))).
 */
async function gemmaLayerRest(
  p: Program,
  cfg: TargetConfig,
  w: TargetLayerWeights,
  x: Tensor,
  s: LayerScratch,
): Promise<void> {
  const rows = x.shape[0], branch = s.branch!, normed = s.branchNormed!;
  const eps = PLAIN_RMS(cfg);
  await linear(p, s.att.reshape([rows, s.att.size / rows]), w.o, branch);
  await rmsnormForward(p, branch, w.postAttentionNorm, normed, s.rstd, eps);
  await accumulate(p, x, normed);
  await rmsnormForward(p, x, w.preFeedforwardNorm!, s.normed, s.rstd, eps);
  const mlp = { act: s.act, gate: s.gate, up: s.up, keep: false };
  await gatedLinear(p, s.normed, w.gate!, w.up!, mlp, "gelu_tanh");
  await linear(p, s.act, w.down!, branch);
  await rmsnormForward(p, branch, w.postFeedforwardNorm!, normed, s.rstd, eps);
  await accumulate(p, x, normed);
}

async function projection(p: Program, x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor): Promise<void> {
  await linear(p, x, w, out);
  if (bias) await addBias(p, out, bias);
}

/**
 * Records logits = x · headᵀ ([rows, H] → [rows, V]) for a row-split head: each row block writes its columns
 * of `logits` (used by the forward and by generation's last-position head).
 */
export function recordHead(p: Program, x: Tensor, head: RowSplitMatrix, logits: Tensor): Promise<void> {
  return linearRowBlocks(p, x, head, logits);
}

/**
 * Uploads checkpoint tensors: projection matrices and embeddings keep their stored dtype (f32, bf16; f16 when
 * the device has shader-f16, else widened to f32), vectors (norms, biases) become f32.
 */
export class TargetWeightLoader {
  /** Every tensor uploaded, for the finite-weight check. */
  readonly loaded: LoadedWeight[] = [];
  readonly #ones = new Map<number, Tensor>();

  /**
   * `normOffset` is added to every RMSNorm weight ({@link normOffsetOf}: 1 for Gemma 3); a sparse MLP's experts
   * are stacked in blocks of at most `maxBlockBytes` (the binding limit).
   */
  constructor(
    readonly gpu: Gpu,
    readonly ckpt: SafetensorsCheckpoint,
    readonly normOffset = 0,
    readonly maxBlockBytes = gpu.limits.maxStorageBufferBindingSize,
  ) {}

  /** An RMSNorm weight, f32, with the norm offset added (transformers computes 1 + w in f32 too). */
  async norm(name: string): Promise<Tensor> {
    const raw = await this.ckpt.read(name);
    return this.#keep(
      name,
      Tensor.fromArray(this.gpu, normData(raw, name, this.normOffset), raw.shape, "f32", name),
    );
  }

  async optionalNorm(name: string | null): Promise<Tensor | null> {
    return name ? await this.norm(name) : null;
  }

  /** A projection matrix, whole, or rows of a fused one (Phi-3's qkv_proj / gate_up_proj, `fusedRows`). */
  async matrix(name: string): Promise<Tensor> {
    const fused = fusedRows(name);
    if (!fused) return this.upload(name, await this.ckpt.read(name));
    const rows = await this.ckpt.readRows(fused.tensor, fused.from, fused.to);
    return this.upload(fused.tensor, rows, `${fused.tensor}[${fused.from}:${fused.to}]`);
  }

  async vector(name: string): Promise<Tensor> {
    return this.vectorOf(name, await this.ckpt.read(name), name);
  }

  /** `raw` (checkpoint tensor `name`, or rows of it named by `label`) as a flat f32 vector. */
  vectorOf(name: string, raw: RawTensor, label: string): Tensor {
    const data = toFloat32(raw, label);
    return this.#keep(name, Tensor.fromArray(this.gpu, data, [data.length], "f32", label));
  }

  /** Checks every uploaded tensor is finite ({@link checkFiniteWeights}); the error names file and tensor. */
  checkFinite(): Promise<void> {
    return checkFiniteWeights(this.gpu, this.loaded, "target");
  }

  async optionalVector(name: string | null): Promise<Tensor | null> {
    return name ? await this.vector(name) : null;
  }

  async layer(l: LayerWeightNames): Promise<TargetLayerWeights> {
    return {
      inputNorm: await this.norm(l.inputNorm),
      q: l.llama4
        ? await this.pairsFirst(l.q, l.llama4.headDim)
        : l.mlaRows
        ? await this.rowsInOrder(l.q, mlaQRowOrder(l.mlaRows), "rope rows first")
        : await this.matrix(l.q),
      k: !l.k ? null : l.llama4 ? await this.pairsFirst(l.k, l.llama4.headDim) : await this.matrix(l.k),
      v: await this.optionalMatrix(l.v),
      qA: await this.optionalMatrix(l.qA),
      qANorm: await this.optionalNorm(l.qANorm),
      kvA: await this.optionalMatrix(l.kvA),
      kPe: l.kPe && l.mlaRows
        ? await this.rowsInOrder(l.kPe, mlaRopeRowOrder(l.mlaRows.rope, l.mlaRows.interleave), "rope rows")
        : null,
      kvANorm: await this.optionalNorm(l.kvANorm),
      kvB: await this.optionalMatrix(l.kvB),
      o: await this.matrix(l.o),
      qBias: await this.optionalVector(l.qBias),
      kBias: await this.optionalVector(l.kBias),
      vBias: await this.optionalVector(l.vBias),
      oBias: await this.optionalVector(l.oBias),
      qNorm: l.llama4?.l2QkNorm ? this.ones(l.llama4.headDim) : await this.optionalNorm(l.qNorm),
      kNorm: l.llama4?.l2QkNorm ? this.ones(l.llama4.headDim) : await this.optionalNorm(l.kNorm),
      postAttentionNorm: await this.norm(l.postAttentionNorm),
      preFeedforwardNorm: await this.optionalNorm(l.preFeedforwardNorm),
      postFeedforwardNorm: await this.optionalNorm(l.postFeedforwardNorm),
      gate: await this.optionalMatrix(l.gate),
      up: await this.optionalMatrix(l.up),
      down: await this.optionalMatrix(l.down),
      gateBias: await this.optionalVector(l.gateBias),
      upBias: await this.optionalVector(l.upBias),
      downBias: await this.optionalVector(l.downBias),
      moe: l.moe ? await loadMoeWeights(this, l.moe) : null,
      sinks: await this.optionalVector(l.sinks),
    };
  }

  /**
   * A q/k projection [heads·hd, H] with each head's rows reordered even dims first, then odd (Llama 4's
   * interleaved RoPE pairs (2i, 2i + 1) become the rotate-half pairs (i, i + hd/2); q·k is unchanged).
   */
  pairsFirst(name: string, hd: number): Promise<Tensor> {
    const rows = this.ckpt.info(name).shape[0], pairs = mlaRopeRowOrder(hd, true);
    const order = Array.from({ length: rows }, (_, r) => Math.floor(r / hd) * hd + pairs[r % hd]);
    return this.rowsInOrder(name, order, "RoPE pairs first");
  }

  /**
   * A matrix (whole, or rows of a fused one, `fusedRows`) with its rows reordered: row r is stored row
   * `order[r]`; `why` goes into its label.
   */
  async rowsInOrder(name: string, order: number[], why: string): Promise<Tensor> {
    const fused = fusedRows(name);
    const tensor = fused ? fused.tensor : name;
    const raw = fused ? await this.ckpt.readRows(tensor, fused.from, fused.to) : await this.ckpt.read(name);
    const [rows, cols] = raw.shape, rowBytes = raw.bytes.byteLength / rows;
    const bytes = new Uint8Array(raw.bytes.byteLength);
    order.forEach((from, r) =>
      bytes.set(raw.bytes.subarray(from * rowBytes, (from + 1) * rowBytes), r * rowBytes)
    );
    const label = fused ? `${tensor}[${fused.from}:${fused.to}]` : name;
    return this.upload(tensor, { dtype: raw.dtype, shape: [rows, cols], bytes }, `${label} (${why})`);
  }

  /** A weightless norm's weight: ones [n] (Llama 4's L2 q/k norm), one tensor per size for every layer. */
  ones(n: number): Tensor {
    let t = this.#ones.get(n);
    if (!t) {
      this.#ones.set(n, t = Tensor.fromArray(this.gpu, new Float32Array(n).fill(1), [n], "f32", "ones"));
    }
    return t;
  }

  async optionalMatrix(name: string | null): Promise<Tensor | null> {
    return name ? await this.matrix(name) : null;
  }

  /** A [rows, cols] matrix as row blocks (separate tensors) of at most `maxBytes` each. */
  async rowSplit(name: string, maxBytes: number): Promise<RowSplitMatrix> {
    const [rows, cols] = this.ckpt.info(name).shape;
    const bytesPerRow = cols * this.elementBytes(this.ckpt.info(name).dtype);
    const blockRows = rowsPerBlock(rows, bytesPerRow, maxBytes, name);
    const blocks: RowSplitMatrix["blocks"] = [];
    for (let row0 = 0; row0 < rows; row0 += blockRows) {
      const end = Math.min(rows, row0 + blockRows);
      const raw = blockRows >= rows ? await this.ckpt.read(name) : await this.ckpt.readRows(name, row0, end);
      blocks.push({ row0, tensor: this.upload(name, raw, `${name}[${row0}:${end}]`) });
    }
    return { rows, cols, blocks };
  }

  /** Bytes per element of a stored dtype once uploaded. */
  elementBytes(dtype: string): number {
    return DTYPE_BYTES[uploadDtype(dtype, this.gpu.features.shaderF16)];
  }

  /** Records `tensor`, the upload of checkpoint tensor `name` (all of it, or the rows its label says). */
  #keep(name: string, tensor: Tensor): Tensor {
    this.loaded.push({ name: tensor.label, tensor, file: this.ckpt.info(name).file });
    return tensor;
  }

  /** Uploads `raw`, checkpoint tensor `name` (or rows of it, named by `label`), as bf16, f16 or f32. */
  upload(name: string, raw: RawTensor, label = name): Tensor {
    const { dtype, data } = uploadData(raw, this.gpu.features.shaderF16, label);
    return this.#keep(name, Tensor.fromArray(this.gpu, data, raw.shape, dtype, label));
  }
}

/** An RMSNorm weight as uploaded: f32, plus `offset` (Gemma 3's 1 + w), rounded to f32 as PyTorch adds. */
export function normData(raw: RawTensor, label: string, offset: number): Float32Array<ArrayBuffer> {
  const w = toFloat32(raw, label);
  if (offset !== 0) { for (let i = 0; i < w.length; i++) w[i] = Math.fround(offset + w[i]); }
  return w;
}

/**
 * A checkpoint tensor as it is uploaded: bf16 (and f16 with shader-f16) as its raw 16-bit patterns, anything
 * else widened to f32 (`uploadDtype`); `label` names it in conversion errors.
 */
export function uploadData(
  raw: RawTensor,
  shaderF16: boolean,
  label: string,
): { dtype: DType; data: HostArray } {
  const dtype = uploadDtype(raw.dtype, shaderF16);
  if (dtype === "bf16" || dtype === "f16") {
    const n = raw.shape.reduce((a, b) => a * b, 1);
    return { dtype, data: new Uint16Array(raw.bytes.buffer as ArrayBuffer, raw.bytes.byteOffset, n) };
  }
  return { dtype: "f32", data: toFloat32(raw, label) };
}

/** The rows `ids` of `m`, gathered once per distinct id set and kept in `cache`. */
export async function cachedSubset(
  cache: Map<string, RowSplitMatrix>,
  gpu: Gpu,
  m: RowSplitMatrix,
  ids: Int32Array,
  maxBytes: number,
): Promise<RowSplitMatrix> {
  const key = `${ids.length}:${hashIds(ids)}`;
  let subset = cache.get(key);
  if (!subset) {
    subset = await gatherRows(gpu, m, ids, maxBytes);
    cache.set(key, subset);
  }
  return subset;
}

/** The rows `ids` of a row-split matrix, gathered into a new row-split matrix (same dtype). */
async function gatherRows(
  gpu: Gpu,
  m: RowSplitMatrix,
  ids: Int32Array,
  maxBytes: number,
): Promise<RowSplitMatrix> {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= m.rows) {
      throw new ShapeError(`subset id ${ids[i]} outside the vocabulary 0..${m.rows - 1}`);
    }
  }
  const dtype = m.blocks[0].tensor.dtype;
  const hosts = await Promise.all(m.blocks.map(async (b) => ({ row0: b.row0, data: await b.tensor.read() })));
  const wide = dtype === "f32";
  const bytesPerRow = m.cols * (wide ? 4 : 2);
  const blockRows = rowsPerBlock(ids.length, bytesPerRow, maxBytes, "lm_head subset");
  const blocks: RowSplitMatrix["blocks"] = [];
  for (let r0 = 0; r0 < ids.length; r0 += blockRows) {
    const n = Math.min(blockRows, ids.length - r0);
    const out = new Float32Array(n * m.cols);
    for (let r = 0; r < n; r++) {
      const id = ids[r0 + r];
      const src = hosts.findLast((h) => h.row0 <= id)!;
      out.set(
        src.data.subarray((id - src.row0) * m.cols, (id - src.row0 + 1) * m.cols) as Float32Array,
        r * m.cols,
      );
    }
    // f16/bf16 rows were widened exactly on read; storing them back in their dtype is lossless.
    blocks.push({
      row0: r0,
      tensor: Tensor.fromArray(gpu, out, [n, m.cols], dtype, `lm_head subset ${r0}..`),
    });
  }
  return { rows: ids.length, cols: m.cols, blocks };
}

function hashIds(ids: Int32Array): number {
  let h = 2166136261;
  for (let i = 0; i < ids.length; i++) h = Math.imul(h ^ ids[i], 16777619);
  return h >>> 0;
}
