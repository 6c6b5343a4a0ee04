/**
 * A target larger than the device: the embedding, lm_head, final norm and RoPE tables stay resident, and the
 * decoder layers take turns in a few weight slots (as many as `budgetBytes` holds, at least one). Each forward
 * writes layer i's weights, read from the safetensors files, into slot i mod K and runs that slot's
 * prebuilt layer program: the same kernels in the same order as the resident forward (lib/models/target.ts
 * `recordTrunk`), so every output is bit for bit the resident one. The queue orders each slot's write after
 * the layer program that last read it, and the host reads layer i + 1 while the GPU runs layer i. The weight
 * traffic (every layer, every forward) is amortised by large batches: what prepare-hidden-states runs.
 */
import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { Tensor } from "../tensor.ts";
import { SafetensorsCheckpoint } from "../io/safetensors.ts";
import { copyColumns } from "../ops/elementwise.ts";
import { rmsnormForward } from "../ops/rmsnorm.ts";
import type { RowSplitMatrix } from "../ops/row_split.ts";
import {
  checkAuxLayers,
  ConfigError,
  defaultAuxLayers,
  fusedRows,
  type LayerWeightNames,
  loadTargetConfig,
  resolveWeightNames,
  type TargetConfig,
} from "./config.ts";
import { checkFiniteWeights, type LoadedWeight } from "./finite_weights.ts";
import {
  cachedSubset,
  checkForwardInput,
  checkTargetPositions,
  ForwardTensors,
  type HeadSource,
  layerScratch,
  normData,
  normOffsetOf,
  recordDecoderLayer,
  recordEmbedding,
  recordHeadOutputs,
  type RopeTables,
  ropeTables,
  type TargetLayerWeights,
  TargetModel,
  type TargetOutputs,
  TargetWeightLoader,
  trunkAttend,
  uploadData,
} from "./target.ts";
import { targetStreamSlots, withTargetPlanInput } from "./memory_plan.ts";
import {
  LAYER_MATRICES,
  LAYER_VECTORS,
  layerBytes,
  layerWeights,
  streamProgramKey,
  streamSlotCount,
  targetRopePositions,
} from "./target_memory.ts";

/** Options of {@link StreamedTarget.load}. */
export interface StreamedTargetOptions {
  /** Bytes of decoder-layer weights kept on the device (the slots); at least one layer's. */
  budgetBytes: number;
  /** The three captured layers (default: the target's default rule). */
  auxLayers?: number[];
  /** Any number (≥ 1) of ascending aux layers instead of three (a DFlash draft's `target_layer_ids`). */
  anyAuxCount?: boolean;
  /** Longest sequence the RoPE tables cover (default: max_position_embeddings). */
  maxPositions?: number;
  /** Notes for the user. */
  onMessage?: (message: string) => void;
}

/** A target whose decoder layers are streamed through weight slots (see the module comment). */
export class StreamedTarget implements HeadSource {
  readonly #subsets = new Map<string, RowSplitMatrix>();
  readonly #checked = new Set<number>();

  private constructor(
    readonly gpu: Gpu,
    readonly config: TargetConfig,
    readonly dir: string,
    readonly auxLayers: number[],
    private readonly layerNames: LayerWeightNames[],
    readonly embed: RowSplitMatrix,
    readonly lmHead: RowSplitMatrix,
    readonly finalNorm: Tensor,
    /** The weight slots, each shaped like one layer. */
    readonly slots: TargetLayerWeights[],
    readonly ropeCos: Tensor,
    readonly ropeSin: Tensor,
    /** Gemma 3's sliding-window layers' RoPE tables, null for the others. */
    readonly ropeLocal: RopeTables | null,
    readonly maxPositions: number,
    readonly ckpt: SafetensorsCheckpoint,
  ) {}

  /**
   * Loads the ends of the target in `dir` and makes as many layer slots as `budgetBytes` holds (at least
   * one, at most every layer); the layers are read on each forward.
   */
  static async load(gpu: Gpu, dir: string, opts: StreamedTargetOptions): Promise<StreamedTarget> {
    const config = await loadTargetConfig(`${dir}/config.json`);
    if (config.moe) { // DeepSeek-V3's MLA layers too: every DeepseekV3ForCausalLM config has its MoE
      throw new ConfigError(
        `${dir}: --target-memory-budget streams dense targets only; ${config.architecture} (mixture of experts) ` +
          `loads every layer`,
      );
    }
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      const names = resolveWeightNames(config, (n) => ckpt.has(n), (n) => ckpt.info(n).shape, dir);
      const choice = defaultAuxLayers(config.numLayers);
      if (!opts.auxLayers && choice.message) opts.onMessage?.(choice.message);
      const auxLayers = checkAuxLayers(
        opts.auxLayers ?? choice.layers,
        config.numLayers,
        opts.anyAuxCount ? null : 3,
      );
      const load = new TargetWeightLoader(gpu, ckpt, normOffsetOf(config));
      const maxBlockBytes = gpu.limits.maxStorageBufferBindingSize;
      const embed = await load.rowSplit(names.embed, maxBlockBytes);
      const lmHead = names.lmHead === names.embed ? embed : await load.rowSplit(names.lmHead, maxBlockBytes);
      const finalNorm = await load.norm(names.finalNorm);
      await load.checkFinite();
      const perLayer = layerBytes((n) => ckpt.info(n), names.layers[0], gpu.features.shaderF16);
      const count = streamSlotCount(opts.budgetBytes, perLayer, config.numLayers);
      const slots = Array.from({ length: count }, (_, s) => emptySlot(gpu, ckpt, names.layers[0], s));
      const maxPositions = targetRopePositions(config, opts.maxPositions);
      const rope = ropeTables(gpu, config, maxPositions);
      return new StreamedTarget(
        gpu,
        config,
        dir,
        auxLayers,
        names.layers,
        embed,
        lmHead,
        finalNorm,
        slots,
        rope.global.cos,
        rope.global.sin,
        rope.local,
        maxPositions,
        ckpt,
      );
    } catch (e) {
      ckpt.close();
      throw e;
    }
  }

  /** lm_head restricted to `ids` (gathered once per distinct id set and kept). */
  subsetHead(ids: Int32Array): Promise<RowSplitMatrix> {
    return cachedSubset(
      this.#subsets,
      this.gpu,
      this.lmHead,
      ids,
      this.gpu.limits.maxStorageBufferBindingSize,
    );
  }

  /**
   * Writes layer `layer`'s weights into slot `slot` (queued after the work already submitted). The first
   * time a layer is written its weights are checked for NaN and infinite values (one sync).
   */
  async writeLayer(layer: number, slot: number): Promise<void> {
    const w = this.slots[slot], shaderF16 = this.gpu.features.shaderF16;
    const written: LoadedWeight[] = [];
    for (
      const { field, name, matrix } of layerWeights(
        (n) => this.ckpt.info(n),
        this.layerNames[layer],
        shaderF16,
      )
    ) {
      const fused = fusedRows(name);
      const raw = fused
        ? await this.ckpt.readRows(fused.tensor, fused.from, fused.to)
        : await this.ckpt.read(name);
      if (field === "moe") throw new ConfigError(`tensor ${name}: a streamed layer has no MoE weights`);
      const tensor = w[field]!;
      const offset = field.endsWith("Norm") ? normOffsetOf(this.config) : 0;
      tensor.write(matrix ? uploadData(raw, shaderF16, name).data : normData(raw, name, offset));
      written.push({ name, tensor, file: this.ckpt.info(fused ? fused.tensor : name).file });
    }
    if (!this.#checked.has(layer)) {
      await checkFiniteWeights(this.gpu, written, "target");
      this.#checked.add(layer);
    }
  }

  /** Builds the streamed forward for `batch` right-padded sequences of `seqLen` tokens. */
  async forward(batch: number, seqLen: number, outputs: TargetOutputs): Promise<StreamedForward> {
    checkTargetPositions(this, 0, seqLen);
    const f = new StreamedForward(this, batch, seqLen, outputs);
    await f.build();
    return f;
  }

  /** Frees every tensor and closes the checkpoint. */
  destroy(): void {
    const seen = new Set<Tensor>();
    const free = (t: Tensor | null) => {
      if (!t || seen.has(t)) return;
      seen.add(t);
      t.destroy();
    };
    for (const s of this.slots) for (const t of Object.values(s)) free(t);
    for (const m of [this.embed, this.lmHead, ...this.#subsets.values()]) {
      for (const b of m.blocks) free(b.tensor);
    }
    for (const t of [this.finalNorm, this.ropeCos, this.ropeSin, this.ropeLocal?.cos, this.ropeLocal?.sin]) {
      free(t ?? null);
    }
    this.ckpt.close();
  }
}

/** Empty tensors shaped like layer `l`'s weights (matrices in their upload dtype, vectors f32). */
function emptySlot(
  gpu: Gpu,
  ckpt: SafetensorsCheckpoint,
  l: LayerWeightNames,
  slot: number,
): TargetLayerWeights {
  const out: Partial<Record<keyof TargetLayerWeights, Tensor | null>> = {};
  // The architecture's absent matrices (MLA's), norms and biases.
  for (const f of [...LAYER_MATRICES, ...LAYER_VECTORS]) out[f] = null;
  for (const w of layerWeights((n) => ckpt.info(n), l, gpu.features.shaderF16)) {
    out[w.field] = Tensor.empty(gpu, w.shape, w.dtype, `slot ${slot} ${w.field}`);
  }
  return out as TargetLayerWeights;
}

/**
 * The forward of a {@link StreamedTarget} for one batch shape: the embedding program, one layer program per
 * slot and RoPE kind, a capture program per aux layer and the head program, sharing the trunk's scratch;
 * its outputs are those of any target forward ({@link ForwardTensors}).
 */
export class StreamedForward extends ForwardTensors {
  /** Token ids, i32 [B·T] (right-padded). */
  readonly ids: Tensor;
  /** Valid tokens per sequence, i32 [B]. */
  readonly lengths: Tensor;
  readonly #embed: Program;
  /** The layer programs by slot, and by RoPE kind (Gemma 3's local or global tables). */
  readonly #layers = new Map<string, Program>();
  readonly #captures = new Map<number, Program>();
  readonly #head: Program;

  /** Use {@link StreamedTarget.forward}. */
  constructor(
    readonly model: StreamedTarget,
    readonly batch: number,
    readonly seqLen: number,
    readonly outputs: TargetOutputs,
  ) {
    super();
    const gpu = model.gpu, label = `streamed target B=${batch} T=${seqLen}`;
    this.#embed = new Program(gpu, `${label} embedding`);
    this.#head = new Program(gpu, `${label} head`);
    this.ids = this.#embed.scratch([batch * seqLen], "i32", "ids");
    this.lengths = this.#embed.scratch([batch], "i32", "lengths");
  }

  /** Records every program. */
  async build(): Promise<void> {
    const { model, batch: B, seqLen: T, outputs } = this;
    const cfg = model.config, H = cfg.hiddenSize, p = this.#embed;
    if (outputs.aux) {
      this.aux = p.scratch([B * T, this.model.auxLayers.length * H], "f32", "aux hidden states");
    }
    const x = p.scratch([B * T, H], "f32", "residual");
    const s = layerScratch(p, cfg, [B, T]);
    await recordEmbedding(p, cfg, model.embed, this.ids, x, s);
    const lse = p.scratch([B, cfg.numHeads, T], "f32", "attention lse");
    const pass = { batch: B, queryLen: T, ids: this.ids, lengths: this.lengths, positionOffset: 0 };
    for (let i = 0; i < cfg.numLayers; i++) {
      const key = this.#layerKey(i);
      if (this.#layers.has(key)) continue;
      const layer = new Program(model.gpu, `${p.label} layers ${key}`);
      await recordDecoderLayer(
        layer,
        cfg,
        model.slots[i % model.slots.length],
        x,
        s,
        trunkAttend(layer, model, pass, i, lse, model.slots[i % model.slots.length].sinks),
      );
      this.#layers.set(key, layer);
    }
    for (const [slot, l] of model.auxLayers.entries()) {
      if (!this.aux) break;
      const capture = this.#captures.get(l) ?? new Program(model.gpu, `${p.label} capture ${l}`);
      await copyColumns(capture, x, this.aux, slot * H);
      this.#captures.set(l, capture);
    }
    await this.#recordHead(x);
  }

  async #recordHead(x: Tensor): Promise<void> {
    const { outputs, model } = this, p = this.#head, rows = x.shape[0];
    if (!(outputs.finalHidden || outputs.logits || outputs.subsetIds || outputs.vocabStats)) return;
    const final = p.scratch([rows, model.config.hiddenSize], "f32", "final hidden");
    const rstd = p.scratch([rows], "f32", "final rstd");
    await rmsnormForward(p, x, model.finalNorm, final, rstd, { eps: model.config.rmsNormEps });
    if (outputs.finalHidden) this.finalHidden = final;
    Object.assign(this, await recordHeadOutputs(p, final, model, outputs));
  }

  /** The program of layer i: its slot's, with the RoPE tables of its kind. */
  #layerKey(i: number): string {
    return streamProgramKey(this.model.config, this.model.slots.length, i);
  }

  /** Writes the ids and lengths and runs the forward, streaming every layer through the slots. */
  async run(ids: Int32Array<ArrayBuffer>, lengths: number[]): Promise<void> {
    checkForwardInput(ids, lengths, this.batch, this.seqLen, this.model.config.vocabSize);
    this.ids.write(ids);
    this.lengths.write(Int32Array.from(lengths));
    this.#embed.run();
    const K = this.model.slots.length;
    for (let i = 0; i < this.model.config.numLayers; i++) {
      await this.model.writeLayer(i, i % K);
      this.#layers.get(this.#layerKey(i))!.run();
      this.#captures.get(i)?.run();
    }
    this.#head.run();
  }

  /** Frees the programs and their tensors. */
  destroy(): void {
    for (const p of [this.#embed, ...this.#layers.values(), ...this.#captures.values(), this.#head]) {
      p.destroy();
    }
  }
}

/** Options of {@link loadTargetWithin}. */
export interface TargetWithinOptions {
  /** The captured layers: three, or with `anyAuxCount` one or more (a DFlash draft's target_layer_ids). */
  auxLayers: number[];
  /** Any number (≥ 1) of ascending aux layers instead of three. */
  anyAuxCount?: boolean;
  /** Bytes of decoder-layer weights the device may hold (null: no limit). */
  budgetBytes: number | null;
  /** Notes for the user (says when the target is streamed). */
  onMessage: (message: string) => void;
}

/**
 * The target in `dir` (config `cfg`) within a budget: resident when its decoder layers fit `budgetBytes` (or
 * there is no budget), else streamed through as many layer slots as the budget holds.
 */
export async function loadTargetWithin(
  gpu: Gpu,
  dir: string,
  cfg: TargetConfig,
  o: TargetWithinOptions,
): Promise<TargetModel | StreamedTarget> {
  const slots = await withTargetPlanInput(gpu, dir, cfg, (t) => targetStreamSlots(t, o.budgetBytes));
  if (slots === null) {
    return await TargetModel.load(gpu, dir, { auxLayers: o.auxLayers, anyAuxCount: o.anyAuxCount });
  }
  o.onMessage(
    `--target-memory-budget: the target's ${cfg.numLayers} decoder layers stream through ${slots} slot` +
      `${slots === 1 ? "" : "s"}, read from ${dir} on every batch`,
  );
  return await StreamedTarget.load(gpu, dir, {
    budgetBytes: o.budgetBytes!,
    auxLayers: o.auxLayers,
    anyAuxCount: o.anyAuxCount,
  });
}
