/**
 * Feeds stored features (./format.ts) to the draft's training step: for one batch shape (B, T) it owns the
 * upload tensors of the compact stored form and a small program that decodes them on the GPU into exactly
 * the inputs the online target forward produces (lib/models/eagle3.ts {@link Eagle3StepInputs}):
 *
 *   aux [B·T, A·H_t] f32          ← f32 as is, bf16 widened, int8/int4 dequantized (lib/ops/features.ts);
 *                                   a repeated aux layer is stored once and copied into each of its slots
 *                                   (A = 3 for an EAGLE-3 draft; a DFlash draft's target_layer_ids count,
 *                                   whose feeder decodes the aux states only: {@link FeatureFeeder.createAuxOnly})
 *   teacherLogits [B·T, Vd] f32   ← hidden-*: the target's lm_head over the draft vocabulary applied to the
 *                                   stored final hidden (as online); topk: the dense row rebuilt from the
 *                                   top-k log-probabilities plus the evenly spread remaining mass; either
 *                                   left to the step's windows when the draft head runs in windows
 *                                   (`teacherSource`, lib/models/teacher_source.ts)
 *   teacherArgmax [B·T] i32       ← hidden-*: the full-vocabulary argmax of the head; topk: topk_ids[·, 0]
 *   teacherMaxSum [B·T, 2] f32    ← hidden-*: the head's full-vocabulary (max, Σexp); topk: (0, 1), the
 *                                   rebuilt rows being full-vocabulary log-probabilities
 *
 * Samples are right-padded to T with zeros like the online collator (SpecForge `specforge/data/utils.py`
 * `DataCollatorWithPadding`); padding rows decode to finite
 * values that the step masks out. Only host→GPU writes happen here, so feeding batch i+1 overlaps with the
 * GPU work of batch i.
 */

import type { Gpu } from "../gpu/device.ts";
import { Program } from "../gpu/program.ts";
import { ShapeError } from "../gpu/errors.ts";
import type { Tensor } from "../tensor.ts";
import { convert } from "../ops/convert.ts";
import { copyStrided } from "../ops/elementwise.ts";
import { dequantizeGroups, scatterTopkTeacher } from "../ops/features.ts";
import { targetToDraftMap } from "../ops/eagle3_teacher.ts";
import { type HeadSource, recordHeadOutputs } from "../models/target.ts";
import type { Eagle3StepInputs, TeacherSource } from "../models/eagle3.ts";
import { headTeacher, topkTeacher } from "../models/teacher_source.ts";
import { planned, type PlannedTensor } from "../models/target_memory.ts";
import { toFloat32 } from "../io/safetensors.ts";
import { type FeatureSample, type FeaturesManifest, quantBitsOf } from "./format.ts";

/** The smallest log-probability the rebuilt top-k teacher uses (a finite stand-in for log 0). */
const LOG_ZERO = -1e30;

/**
 * log of the mass each token outside a row's top-k gets: (1 − Σ exp(logprobs)) / (V − k), or
 * {@link LOG_ZERO} when the top-k holds all the mass.
 */
export function topkTailLogprob(logprobs: ArrayLike<number>, vocabSize: number): number {
  let mass = 0;
  for (let i = 0; i < logprobs.length; i++) mass += Math.exp(logprobs[i]);
  const rest = 1 - mass, others = vocabSize - logprobs.length;
  return rest > 0 && others > 0 ? Math.max(LOG_ZERO, Math.log(rest / others)) : LOG_ZERO;
}

/**
 * The tensors a {@link FeatureFeeder} of batches B × T allocates (its uploads, the decoded aux states and the
 * teacher rows; for hidden-state teachers the head's outputs as the online forward makes them), for the memory
 * plan (lib/train/memory_plan.ts). `subsetBlockRows`: the row blocks of the lm_head's draft-vocabulary subset;
 * `windowedTeacher`: the teacher logits are left to the steps (no subset logits, no rebuilt rows).
 */
export function featureFeederTensors(
  manifest: FeaturesManifest,
  B: number,
  T: number,
  draftVocabSize: number,
  subsetBlockRows: number[],
  windowedTeacher = false,
  teacherless = manifest.storage.teacherFormat === "none",
): PlannedTensor[] {
  const s = manifest.storage, N = B * T, Ht = manifest.target.hiddenSize, V = manifest.target.vocabSize;
  const cols = manifest.storedLayers.length * Ht, A = manifest.auxLayers.length;
  const identity = storedInSlotOrder(manifest);
  const out = [
    planned("aux hidden states", [N, A * Ht], "f32"),
    planned("ids", [N], "i32"),
    planned("lengths", [B], "i32"),
  ];
  if (!identity) out.push(planned("aux distinct layers", [N, cols], "f32"));
  const bits = quantBitsOf(s.auxFormat);
  if (bits) {
    out.push(
      planned("stored aux", [N * cols * bits / 32], "u32"),
      planned("stored aux_scale", [N, cols / s.groupSize], "f32"),
    );
  } else if (s.auxFormat === "bf16") out.push(planned("stored aux", [N, cols], "bf16"));
  else if (!identity) out.push(planned("stored aux", [N, cols], "f32"));
  if (teacherless) return out;
  if (s.teacherFormat === "topk") {
    const k = s.topk;
    if (!windowedTeacher) out.push(planned("teacher logits (rebuilt)", [N, draftVocabSize], "f32"));
    out.push(
      planned("stored argmax", [N], "i32"),
      planned("target→draft map", [V], "i32"),
      planned("stored topk_ids", [N, k], "i32"),
      planned("stored topk_logprobs", [N, k], "f32"),
      planned("stored tail", [N], "f32"),
      planned("teacher max/sum (log-probabilities)", [N, 2], "f32"),
    );
    return out;
  }
  out.push(planned("final hidden", [N, Ht], "f32"));
  if (s.teacherFormat !== "hidden-f32") out.push(planned("stored hidden", [N, Ht], "bf16"));
  if (!windowedTeacher) {
    out.push(planned("subset logits", [N, draftVocabSize], "f32"));
    for (const n of subsetBlockRows.length > 1 ? new Set(subsetBlockRows) : []) {
      out.push(planned("head rows", [N, n], "f32"));
    }
  }
  out.push(
    planned("vocab max/sum", [N, 2], "f32"),
    planned("vocab argmax", [N], "i32"),
    planned("logits chunk", [N, Math.min(4096, V)], "f32"),
  );
  return out;
}

/** Whether the distinct stored layers are the captured ones in slot order (decoded straight into the aux input). */
function storedInSlotOrder(m: FeaturesManifest): boolean {
  return m.storedLayers.length === m.auxLayers.length && m.storedLayers.every((l, i) => l === m.auxLayers[i]);
}

/** Decodes stored features of batches of shape (B, T) into the draft step's inputs. */
export class FeatureFeeder {
  readonly #program: Program;
  readonly #upload: Map<string, Tensor> = new Map();
  readonly #rows: number;
  readonly #aux: Tensor;
  readonly #ids: Tensor;
  readonly #lengths: Tensor;
  #teacherLogits: Tensor | null = null;
  #teacherArgmax: Tensor | null = null;
  #teacherMaxSum: Tensor | null = null;

  private constructor(
    readonly manifest: FeaturesManifest,
    readonly batch: number,
    readonly seqLen: number,
    gpu: Gpu,
    readonly teacher = true,
  ) {
    this.#program = new Program(gpu, `offline features B=${batch} T=${seqLen}`);
    this.#rows = batch * seqLen;
    const p = this.#program, N = this.#rows, A = manifest.auxLayers.length;
    this.#aux = p.scratch([N, A * manifest.target.hiddenSize], "f32", "aux hidden states");
    this.#ids = p.scratch([N], "i32", "ids");
    this.#lengths = p.scratch([batch], "i32", "lengths");
  }

  /**
   * The step inputs this feeder fills (bind them with buildEagle3Step's `inputs`): every one but the loss
   * mask, and but the teacher logits when the steps make them per window ({@link FeatureFeeder.teacherSource}).
   */
  get inputs(): Omit<Eagle3StepInputs, "lossMask" | "teacherLogits"> & { teacherLogits?: Tensor } {
    return {
      aux: this.#aux,
      ids: this.#ids,
      lengths: this.#lengths,
      ...(this.teacherSource ? {} : { teacherLogits: this.#teacherLogits! }),
      teacherArgmax: this.#teacherArgmax!,
      teacherMaxSum: this.#teacherMaxSum!,
    };
  }

  /** The decoded aux states [B·T, A·H_t] (A captured layers, in the manifest's auxLayers order). */
  get aux(): Tensor {
    return this.#aux;
  }

  /**
   * Built `windowedTeacher`: what the steps make the teacher logits from, window by window (buildEagle3Step's
   * `teacherSource`: the decoded final hidden states and the lm_head rows of the draft vocabulary, or the
   * stored top-k); else null.
   */
  teacherSource: TeacherSource | null = null;

  /**
   * Builds the decode program for batches of `batch` × `seqLen`. `draftToTarget` is the draft vocabulary
   * (ascending target ids); `head` is the target's lm_head, needed for hidden-* teachers only; with
   * `windowedTeacher` the teacher logits are left to the steps ({@link FeatureFeeder.teacherSource}).
   */
  static async create(
    gpu: Gpu,
    manifest: FeaturesManifest,
    batch: number,
    seqLen: number,
    draftToTarget: Int32Array,
    head: HeadSource | null,
    windowedTeacher = false,
  ): Promise<FeatureFeeder> {
    const f = new FeatureFeeder(manifest, batch, seqLen, gpu);
    await f.#build(draftToTarget, head, windowedTeacher);
    return f;
  }

  /**
   * A feeder of the aux states alone (a DFlash draft's target features, {@link FeatureFeeder.aux}): any stored
   * teacher is neither uploaded nor decoded.
   */
  static async createAuxOnly(
    gpu: Gpu,
    manifest: FeaturesManifest,
    batch: number,
    seqLen: number,
  ): Promise<FeatureFeeder> {
    const f = new FeatureFeeder(manifest, batch, seqLen, gpu, false);
    await f.#build(new Int32Array(0), null, false);
    return f;
  }

  async #build(draftToTarget: Int32Array, head: HeadSource | null, windowedTeacher: boolean): Promise<void> {
    const m = this.manifest, p = this.#program, N = this.#rows;
    const s = m.storage, Ht = m.target.hiddenSize;
    const U = m.storedLayers.length, cols = U * Ht;
    const up = (name: string, shape: number[], dtype: "f32" | "i32" | "u32" | "bf16") => {
      const t = p.scratch(shape, dtype, `stored ${name}`);
      this.#upload.set(name, t);
      return t;
    };

    // aux: decode the distinct layers, then place them in the A slots.
    // Distinct ascending layers are stored in slot order: decode straight into the step's input.
    const identity = storedInSlotOrder(m), A = m.auxLayers.length;
    const unique = identity ? this.#aux : p.scratch([N, cols], "f32", "aux distinct layers");
    const bits = quantBitsOf(s.auxFormat);
    if (bits) {
      const codes = up("aux", [N * cols * bits / 32], "u32");
      const scales = up("aux_scale", [N, cols / s.groupSize], "f32");
      await dequantizeGroups(p, codes, scales, unique, { bits, groupSize: s.groupSize });
    } else if (s.auxFormat === "bf16") {
      await convert(p, up("aux", [N, cols], "bf16"), unique);
    } else if (identity) {
      this.#upload.set("aux", unique); // f32 is the step's own format: written in place
    } else {
      await convert(p, up("aux", [N, cols], "f32"), unique);
    }
    if (!identity) {
      for (let slot = 0; slot < A; slot++) {
        const u = m.storedLayers.indexOf(m.auxLayers[slot]);
        await copyStrided(p, unique, this.#aux, {
          count: [1, N, Ht],
          srcStrides: [0, cols, 1],
          srcOffset: u * Ht,
          dstStrides: [0, A * Ht, 1],
          dstOffset: slot * Ht,
        });
      }
    }

    if (this.teacher) await this.#buildTeacher(draftToTarget, head, windowedTeacher, up);
  }

  /**
   * The teacher's inputs of the step: rows rebuilt from the stored top-k, or the head's outputs over the stored
   * final hidden states; with `windowedTeacher`, the teacher logits are left to the steps' windows
   * ({@link FeatureFeeder.teacherSource}).
   */
  async #buildTeacher(
    draftToTarget: Int32Array,
    head: HeadSource | null,
    windowedTeacher: boolean,
    up: (name: string, shape: number[], dtype: "f32" | "i32" | "u32" | "bf16") => Tensor,
  ): Promise<void> {
    const p = this.#program, N = this.#rows, s = this.manifest.storage;
    const Ht = this.manifest.target.hiddenSize, V = this.manifest.target.vocabSize, Vd = draftToTarget.length;
    if (s.teacherFormat === "none") {
      throw new ShapeError(
        "offline features: stored without a teacher (--teacher-format none), for DFlash only",
      );
    }
    if (s.teacherFormat === "topk") {
      const k = s.topk;
      if (!windowedTeacher) this.#teacherLogits = p.scratch([N, Vd], "f32", "teacher logits (rebuilt)");
      this.#teacherArgmax = up("argmax", [N], "i32");
      const toDraft = p.scratch([V], "i32", "target→draft map");
      toDraft.write(targetToDraftMap(draftToTarget, V));
      const stored = {
        ids: up("topk_ids", [N, k], "i32"),
        logprobs: up("topk_logprobs", [N, k], "f32"),
        tail: up("tail", [N], "f32"),
        toDraft,
      };
      if (windowedTeacher) this.teacherSource = topkTeacher(stored, Vd);
      else await scatterTopkTeacher(p, { ...stored, out: this.#teacherLogits! });
      // The rebuilt rows are full-vocabulary log-probabilities: their log-sum-exp is 0 = max 0 + log Σ 1.
      this.#teacherMaxSum = p.scratch([N, 2], "f32", "teacher max/sum (log-probabilities)");
      this.#teacherMaxSum.write(Float32Array.from({ length: 2 * N }, (_, i) => i % 2));
      return;
    }
    if (!head) throw new ShapeError("offline features: a hidden-state teacher needs the target's lm_head");
    const final = p.scratch([N, Ht], "f32", "final hidden");
    if (s.teacherFormat === "hidden-f32") this.#upload.set("hidden", final); // written in place
    else await convert(p, up("hidden", [N, Ht], "bf16"), final);
    if (windowedTeacher) this.teacherSource = headTeacher(final, await head.subsetHead(draftToTarget));
    const subsetIds = windowedTeacher ? undefined : draftToTarget;
    const out = await recordHeadOutputs(p, final, head, { subsetIds, vocabStats: true });
    this.#teacherLogits = out.subsetLogits;
    this.#teacherArgmax = out.vocabArgmax!;
    this.#teacherMaxSum = out.vocabMaxSum!;
  }

  /**
   * Writes B `samples` (rows past each sample's tokens stay padding) into the upload tensors and runs the
   * decode program (no sync). Returns the samples' lengths (cut to T).
   */
  feed(samples: FeatureSample[]): number[] {
    const m = this.manifest, s = m.storage, T = this.seqLen, N = this.#rows;
    const cols = m.storedLayers.length * m.target.hiddenSize;
    if (samples.length !== this.batch) {
      throw new ShapeError(`offline features: ${samples.length} samples for a batch of ${this.batch}`);
    }
    // A sample longer than T (the batch's padded length) is cut to T (right truncation at --max-length).
    const lengths = samples.map((x) => Math.min(x.inputIds.length, T));
    const ids = new Int32Array(N);
    samples.forEach((x, b) => ids.set(x.inputIds.subarray(0, lengths[b]), b * T));
    this.#ids.write(ids);
    this.#lengths.write(Int32Array.from(lengths));
    /** Rows 0..len−1 of sample b go to rows b·T.. of a [N, rowBytes] upload; the padding rows stay zero. */
    const place = (dst: Uint8Array, src: Uint8Array, b: number, rowBytes: number) =>
      dst.set(src.subarray(0, lengths[b] * rowBytes), b * T * rowBytes);

    const bits = quantBitsOf(s.auxFormat);
    const auxRow = bits ? cols * bits / 8 : cols * (s.auxFormat === "f32" ? 4 : 2);
    const aux = new Uint8Array(N * auxRow);
    samples.forEach((x, b) => place(aux, x.aux.bytes, b, auxRow));
    this.#write("aux", aux);
    if (bits) {
      const perRow = cols / s.groupSize;
      const scales = new Float32Array(N * perRow);
      samples.forEach((x, b) =>
        scales.set(toFloat32(x.auxScale!).subarray(0, lengths[b] * perRow), b * T * perRow)
      );
      this.#write("aux_scale", scales);
    }

    if (this.teacher) this.#feedTeacher(samples, lengths);
    this.#program.run();
    return lengths;
  }

  /** Writes the samples' stored teacher (top-k or final hidden states) into its upload tensors. */
  #feedTeacher(samples: FeatureSample[], lengths: number[]): void {
    const m = this.manifest, s = m.storage, T = this.seqLen, N = this.#rows;
    const Ht = m.target.hiddenSize, V = m.target.vocabSize;
    const place = (dst: Uint8Array, src: Uint8Array, b: number, rowBytes: number) =>
      dst.set(src.subarray(0, lengths[b] * rowBytes), b * T * rowBytes);
    if (s.teacherFormat === "topk") {
      const k = s.topk;
      const topIds = new Int32Array(N * k).fill(-1), logprobs = new Float32Array(N * k);
      const tail = new Float32Array(N), argmax = new Int32Array(N);
      samples.forEach((x, b) => {
        const S = lengths[b], r0 = b * T;
        topIds.set(x.topkIds!.subarray(0, S * k), r0 * k);
        logprobs.set(x.topkLogprobs!.subarray(0, S * k), r0 * k);
        for (let t = 0; t < S; t++) {
          argmax[r0 + t] = x.topkIds![t * k];
          tail[r0 + t] = topkTailLogprob(x.topkLogprobs!.subarray(t * k, (t + 1) * k), V);
        }
      });
      this.#write("topk_ids", topIds);
      this.#write("topk_logprobs", logprobs);
      this.#write("tail", tail);
      this.#write("argmax", argmax);
    } else {
      const row = Ht * (s.teacherFormat === "hidden-f32" ? 4 : 2);
      const hidden = new Uint8Array(N * row);
      samples.forEach((x, b) => place(hidden, x.hidden!.bytes, b, row));
      this.#write("hidden", hidden);
    }
  }

  #write(
    name: string,
    data: Uint8Array<ArrayBuffer> | Float32Array<ArrayBuffer> | Int32Array<ArrayBuffer>,
  ): void {
    const t = this.#upload.get(name)!;
    t.gpu.write(t.buffer, t.byteOffset, data); // pads a byte count that is not a multiple of 4
  }

  /** Frees the program and its tensors. */
  destroy(): void {
    this.#program.destroy();
  }
}
