/**
 * DFlash speculative decoding (SpecForge `DFlashDraftModel.spec_generate`, specforge/modeling/draft/dflash.py;
 * SGLang's DFLASH worker), one sequence at a time. Each round, with `start` the position of the newest
 * committed token (the anchor, not yet run through the target):
 *   1. draft: one forward of the block [tok[start], MASK × (B − 1)] at positions start..start+B−1 over the
 *      target features of positions 0..start−1 (full layers: all of them and the whole block; sliding
 *      layers: the last W positions and the block's slots up to the query's, as in training); drafts
 *      d_1..d_{B−1} = argmax of the target lm_head over the block's slots 1..B−1;
 *   2. verify: the target runs [tok[start], d_1..d_{B−1}] as a chain in one pass (lib/eval/target_infer.ts);
 *   3. accept greedily (d_j kept while it equals the target's token after slot j−1) or by lossless sampling
 *      (lib/eval/tree.ts), commit the accepted drafts and the bonus token; the verified slots' target features
 *      extend the context.
 * The draft keeps no KV cache: its context keys are recomputed from the stored features each round, which
 * equals cropping a cache at `start` as SpecForge does (the context keys depend only on their features and
 * positions). The draft's context holds up to the session's length.
 */
import { ShapeError } from "../gpu/errors.ts";
import { mulberry32 } from "../data/random.ts";
import type { TargetModel } from "../models/target.ts";
import type { DflashDraft } from "../models/dflash.ts";
import { DflashStep } from "../models/dflash_step.ts";
import { dflashRanges } from "../ops/dflash_attention.ts";
import { ropeTable } from "../ops/rope.ts";
import { argmax, samplingProbs } from "../models/generate.ts";
import { TargetSession } from "./target_infer.ts";
import { treeFromParents } from "./tree.ts";
import {
  checkGenerateInputs,
  drawToken,
  type ResolvedSpeculativeConfig,
  type RoundRecord,
  type SpeculativeGenerateOptions,
  type SpeculativeGenerator,
  type SpeculativeOutput,
  verdictOf,
} from "./speculative.ts";

/** Sessions are sized in multiples of this many positions, so that similar prompts share them. */
const ROUNDING = 64;

/** Speculative decoding with a target and a DFlash draft; free the sessions with {@link destroy}. */
export class DflashDecoder implements SpeculativeGenerator {
  /** A chain of B − 1 drafted tokens and the anchor verified per round. */
  readonly config: ResolvedSpeculativeConfig;
  #session: TargetSession | null = null;
  #step: DflashStep | null = null;
  /** RoPE cos/sin of every block position the session reaches (its length + B), made with the step. */
  #rope: { cos: Float32Array; sin: Float32Array } | null = null;

  /** `target` must capture the draft's `target_layer_ids` (TargetModel.load's auxLayers). */
  constructor(readonly target: TargetModel, readonly draft: DflashDraft) {
    const cfg = draft.config, t = target.config;
    if (cfg.hiddenSize !== t.hiddenSize || cfg.vocabSize !== t.vocabSize) {
      throw new ShapeError(
        `dflash: the draft's hidden_size ${cfg.hiddenSize} / vocab_size ${cfg.vocabSize} are not the target's`,
      );
    }
    const captured = target.auxLayers.join(",");
    if (captured !== cfg.targetLayerIds.join(",")) {
      throw new ShapeError(
        `dflash: the target captures layers [${captured}], the draft reads [${cfg.targetLayerIds}]`,
      );
    }
    this.config = { numSteps: cfg.blockSize - 1, topk: 1, numDraftTokens: cfg.blockSize };
  }

  /** Generates after `prompt` (see the module comment for one round). */
  async generate(prompt: number[], opts: SpeculativeGenerateOptions): Promise<SpeculativeOutput> {
    const V = this.target.config.vocabSize, B = this.draft.config.blockSize;
    const { temperature, topP } = checkGenerateInputs(prompt, V, opts);
    const eos = new Set(opts.eosTokenIds ?? this.target.config.eosTokenIds);
    const random = mulberry32(opts.seed ?? 0);
    const out: number[] = [], rounds: RoundRecord[] = [];
    if (opts.maxNewTokens <= 0) return { tokens: out, rounds, decodeSeconds: 0 };
    const { session, step } = await this.#sessions(prompt.length, opts.maxNewTokens);
    const done = () => out.length >= opts.maxNewTokens || (out.length > 0 && eos.has(out[out.length - 1]));
    const pick = (logits: Float32Array, row: number): number => {
      const l = logits.subarray(row * V, (row + 1) * V);
      return temperature === 0 ? argmax(l) : drawToken(samplingProbs(l, temperature, topP), random());
    };
    const first = pick(await session.prefill(prompt), 0);
    const t0 = performance.now();
    out.push(first);
    await this.#storeFeatures(session, 0, prompt.length);
    let start = prompt.length, last = first;
    while (!done()) {
      const drafts = await this.#draftBlock(step, last, start);
      const tree = treeFromParents([last, ...drafts], Array.from({ length: B }, (_, i) => i - 1));
      const logits = await session.verify(tree, start);
      const verdict = verdictOf(tree, logits, V, { temperature, topP }, random);
      const emitted: number[] = [];
      for (const t of [...verdict.accepted, verdict.bonus]) {
        if (done()) break;
        out.push(t);
        emitted.push(t);
      }
      rounds.push({ tokens: tree.tokens, parents: tree.parents, ...verdict, emitted });
      if (done()) break;
      await this.#storeFeatures(session, start, emitted.length);
      start += emitted.length;
      last = emitted[emitted.length - 1];
    }
    return { tokens: out, rounds, decodeSeconds: (performance.now() - t0) / 1000 };
  }

  /** Copies the session's aux rows 0..n−1 (features of positions at..at+n−1) into the draft's context. */
  async #storeFeatures(session: TargetSession, at: number, n: number): Promise<void> {
    const width = session.aux.cols, rows = new Float32Array(n * width);
    for (const { row0, tensor } of session.aux.blocks) {
      if (row0 >= n) break;
      const block = await tensor.readFloat();
      rows.set(block.subarray(0, Math.min(n - row0, tensor.shape[0]) * width), row0 * width);
    }
    const features = this.#step!.inputs.features;
    this.draft.gpu.device.queue.writeBuffer(features.buffer, features.byteOffset + at * width * 4, rows);
  }

  /** One draft forward of the block anchored at `start` with token `anchor`: the B − 1 drafted tokens. */
  async #draftBlock(step: DflashStep, anchor: number, start: number): Promise<number[]> {
    const cfg = this.draft.config, B = cfg.blockSize, S = step.dims.seq, half = cfg.headDim / 2;
    const blocks = {
      batches: 1,
      blocks: 1,
      blockSize: B,
      anchors: Int32Array.of(start),
      keep: Uint8Array.of(1),
    };
    const table = this.#rope!, inp = step.inputs;
    inp.noiseIds.write(Int32Array.from({ length: B }, (_, k) => k === 0 ? anchor : cfg.maskTokenId));
    inp.cos.write(table.cos.slice(start * half, (start + B) * half));
    inp.sin.write(table.sin.slice(start * half, (start + B) * half));
    inp.fullRanges.write(dflashRanges(blocks, S, null, step.dims.blockRow0).table);
    if (cfg.slidingWindow !== null) {
      inp.slidingRanges.write(dflashRanges(blocks, S, cfg.slidingWindow, step.dims.blockRow0).table);
    }
    step.run();
    const logits = await step.logits.readFloat(), V = cfg.vocabSize;
    return Array.from({ length: B - 1 }, (_, k) => argmax(logits.subarray((k + 1) * V, (k + 2) * V)));
  }

  async #sessions(
    promptLen: number,
    maxNewTokens: number,
  ): Promise<{ session: TargetSession; step: DflashStep }> {
    const B = this.draft.config.blockSize;
    const needed = promptLen + maxNewTokens + B + 1;
    if (this.#session && this.#step && this.#session.maxLen >= needed && this.#session.auxRows >= promptLen) {
      return { session: this.#session, step: this.#step };
    }
    this.destroy();
    const maxLen = Math.ceil(needed / ROUNDING) * ROUNDING;
    this.target.checkPositions(0, Math.min(needed, promptLen + maxNewTokens + B));
    this.#session = new TargetSession(
      this.target,
      maxLen,
      Math.ceil(Math.max(promptLen, B) / ROUNDING) * ROUNDING,
    );
    this.#step = await DflashStep.build(this.draft, {
      batches: 1,
      seq: maxLen,
      blocks: 1,
      lossType: "dflash",
      dpaceAlpha: 0,
      embedding: this.target.embed,
      lmHead: this.target.lmHead.blocks[0].tensor,
    }, false);
    this.#rope = ropeTable(this.draft.config, this.draft.config.headDim, maxLen + B);
    this.#step.inputs.features.write(new Float32Array(this.#step.inputs.features.size)); // rows not yet seen: 0
    return { session: this.#session, step: this.#step };
  }

  /** Frees the sessions (the models stay). */
  destroy(): void {
    this.#step?.destroy();
    this.#session?.destroy();
    this.#step = null;
    this.#session = null;
  }
}
