/**
 * The EAGLE-3 draft's inference forward (SGLang's `LlamaForCausalLMEagle3`,
 * `python/sglang/srt/models/llama_eagle3.py`, at serving time), one sequence, with its own KV cache
 * [maxLen, nkv, hd]. The layers are the training step's (lib/models/eagle3_layer.ts: fc, midlayer, head) run on
 * new rows only; what differs is the attention ({@link CachedAttention}): RoPE at each row's position, keys
 * and values written into the cache, attention over the cached rows and the mask's rows.
 *
 * Two passes, matching training's TTT unroll (row t at step k has position t + k, attends the step-0 keys
 * of rows ≤ t and its own keys of steps 1..k):
 * - extend: rows for committed positions, h = fc(aux of the target at that position), token = the NEXT
 *   committed token (row t pairs the target's state at t with x_{t+1}); keys and values written at the
 *   rows' slots (= positions), causal attention. Run after the prefill (rows 0..L−1) and after every
 *   verification (the accepted path and the bonus token), it yields the distribution of the first drafted
 *   token from its last row.
 * - step j ≥ 1: one row per branch of the draft tree, h = the output y of the parent row (fed back, pre-norm),
 *   token = the branch's token, position prefix − 1 + j. Rows are written at slots prefix + (j − 1)·topk + r
 *   (past the committed rows, overwritten by the next extend) and attend the committed prefix plus the
 *   step rows of their ancestors and themselves (the tree mask).
 */
import type { Gpu } from "../gpu/device.ts";
import { LimitError, ShapeError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { ProgramCache } from "../gpu/program_cache.ts";
import { Tensor } from "../tensor.ts";
import { checkEmbedding, type Eagle3Draft } from "../models/eagle3.ts";
import { asRowSplit, gatherRowBlocks, type RowSplitMatrix } from "../ops/row_split.ts";
import {
  type Eagle3Attention,
  type Eagle3FcActivations,
  eagle3FcActivations,
  eagle3FcForward,
  eagle3FinalNorm,
  eagle3HeadActivations,
  eagle3HeadForward,
  eagle3LayerActivations,
  eagle3LayerForward,
  eagle3LmHead,
  type MakeTensor,
} from "../models/eagle3_layer.ts";
import { ropeTable } from "../ops/rope.ts";
import { copyStrided } from "../ops/elementwise.ts";
import { gatherRows, ropeAtPositions, scatterRows, treeAttentionForward } from "../ops/tree_attention.ts";

/** Sizes of a {@link DraftSession}. */
export interface DraftSessionOptions {
  /** Cache slots (committed rows plus the draft steps' rows). */
  maxLen: number;
  /** Most rows of one extend (the longest prompt, and numSteps + 1). */
  maxExtendRows: number;
  /** Branches per draft step. */
  topk: number;
  /** Tree levels (draft steps are 1..numSteps − 1). */
  numSteps: number;
}

interface PassProgram {
  program: Program;
  /** Extend: aux row index [R]; step: parent row index [topk]. */
  index: Tensor;
  ids: Tensor;
  positions: Tensor;
  mask: Tensor;
  logits: Tensor;
}

/** The draft's KV cache and prebuilt passes for one sequence. */
export class DraftSession {
  readonly gpu: Gpu;
  readonly k: Tensor;
  readonly v: Tensor;
  /**
   * The states the next draft step consumes, of the last pass's rows: y, or RMSNorm_final(y) for a draft
   * with DraftConfig.feedNormedHidden [max(maxExtendRows, topk), H].
   */
  readonly hidden: Tensor;
  /** i32 [2]: committed prefix length, slot where the pass writes its rows. */
  readonly meta: Tensor;
  /** RoPE tables of positions 0..maxLen−1 [maxLen, hd/2]. */
  readonly ropeCos: Tensor;
  readonly ropeSin: Tensor;
  // One extension per row count met (a prompt's length, then each round's accepted tokens): the last few kept.
  readonly #extends = new ProgramCache<number, PassProgram>(8);
  #step: PassProgram | null = null;

  /**
   * A session of `draft` reading the target's aux states from `targetAux` [rows, 3·H_t] and token embeddings
   * from `embedding` [V, H] (the target's).
   */
  constructor(
    readonly draft: Eagle3Draft,
    readonly embedding: Tensor | RowSplitMatrix,
    readonly targetAux: Tensor | RowSplitMatrix,
    readonly opts: DraftSessionOptions,
  ) {
    const gpu = this.gpu = draft.gpu;
    const cfg = draft.config;
    checkEmbedding("draft session", embedding, cfg);
    const aux = asRowSplit(targetAux);
    if (aux.cols !== 3 * cfg.targetHiddenSize) {
      throw new ShapeError(
        `draft session: target aux [${aux.rows}, ${aux.cols}] is not 3 × target_hidden_size ${cfg.targetHiddenSize}`,
      );
    }
    const shape = [opts.maxLen, cfg.numKvHeads, cfg.headDim];
    this.k = Tensor.zeros(gpu, shape, "f32", "spec draft k cache");
    this.v = Tensor.zeros(gpu, shape, "f32", "spec draft v cache");
    this.hidden = Tensor.empty(
      gpu,
      [Math.max(opts.maxExtendRows, opts.topk), cfg.hiddenSize],
      "f32",
      "draft y",
    );
    this.meta = Tensor.empty(gpu, [2], "i32", "spec draft meta");
    const table = ropeTable(cfg, cfg.headDim, opts.maxLen);
    this.ropeCos = Tensor.fromArray(gpu, table.cos, [opts.maxLen, cfg.headDim / 2], "f32", "draft rope cos");
    this.ropeSin = Tensor.fromArray(gpu, table.sin, [opts.maxLen, cfg.headDim / 2], "f32", "draft rope sin");
  }

  /**
   * Extends the cache with committed rows prefix..prefix+R−1: row i pairs target aux row `auxRows[i]` with
   * token `tokens[i]` (the token after that position). Returns the draft logits [Vd] of the last row.
   */
  async extend(prefix: number, auxRows: number[], tokens: number[]): Promise<Float32Array> {
    const R = tokens.length;
    if (auxRows.length !== R || R < 1) {
      throw new ShapeError(`draft extend: ${auxRows.length} aux rows, ${R} tokens`);
    }
    if (R > this.opts.maxExtendRows) {
      throw new LimitError(`draft extend: ${R} rows exceed the session's ${this.opts.maxExtendRows}`);
    }
    this.#checkSlots(prefix + R);
    const pass = await this.#extend(R);
    pass.index.write(Int32Array.from(auxRows));
    pass.ids.write(Int32Array.from(tokens));
    pass.positions.write(Int32Array.from({ length: R }, (_, i) => prefix + i));
    this.meta.write(Int32Array.from([prefix, prefix]));
    pass.program.run();
    return await pass.logits.readFloat();
  }

  /**
   * Draft step `j` ≥ 1 after `prefix` committed rows: branch r continues from row `parentRows[r]` of the
   * previous pass's outputs with token `tokens[r]`, attending the step slots `slots[r]` (its ancestors'
   * and its own, (j' − 1)·topk + r'). Returns the logits [topk·Vd].
   */
  async step(j: number, prefix: number, parentRows: number[], tokens: number[], slots: number[][]) {
    const { topk, numSteps } = this.opts;
    if (!(j >= 1 && j < numSteps) || tokens.length !== topk || parentRows.length !== topk) {
      throw new ShapeError(`draft step ${j}: expected ${topk} branches and 1 ≤ j < ${numSteps}`);
    }
    const treeLen = (numSteps - 1) * topk;
    this.#checkSlots(prefix + treeLen);
    const pass = await this.#stepProgram();
    const mask = new Uint32Array(topk * treeLen);
    slots.forEach((s, r) => s.forEach((slot) => mask[r * treeLen + slot] = 1));
    pass.index.write(Int32Array.from(parentRows));
    pass.ids.write(Int32Array.from(tokens));
    pass.positions.write(new Int32Array(topk).fill(prefix - 1 + j));
    pass.mask.write(mask);
    this.meta.write(Int32Array.from([prefix, prefix + (j - 1) * topk]));
    pass.program.run();
    return await pass.logits.readFloat();
  }

  #checkSlots(end: number): void {
    if (end > this.opts.maxLen) {
      throw new LimitError(`draft session: slots up to ${end} exceed the cache (${this.opts.maxLen})`);
    }
  }

  #extend(R: number): Promise<PassProgram> {
    return this.#extends.get(R, () => this.#buildExtend(R));
  }

  async #buildExtend(R: number): Promise<PassProgram> {
    const cfg = this.draft.config;
    const p = new Program(this.gpu, `spec draft extend R=${R}`);
    try {
      const index = p.scratch([R], "i32", "aux rows");
      const h = p.scratch([R, cfg.hiddenSize], "f32", "fc out");
      await this.#fc(p, index, h);
      const pass = await this.#layer(p, R, R, index, h, (R - 1) * cfg.hiddenSize, 1);
      // Causal mask over the new rows, fixed for this program.
      pass.mask.write(Uint32Array.from({ length: R * R }, (_, i) => (i % R <= Math.floor(i / R) ? 1 : 0)));
      return pass;
    } catch (e) {
      p.destroy();
      throw e;
    }
  }

  /**
   * h = fc(aux rows `index`) [R, H], in windows of rows whose gathered aux [rows, 3·H_t] binds
   * ({@link extendWindows}): fc and fc_norm act on each row alone, so the windows give the whole pass's rows.
   */
  async #fc(p: Program, index: Tensor, h: Tensor): Promise<void> {
    const cfg = this.draft.config, H = cfg.hiddenSize, R = index.shape[0];
    const make: MakeTensor<Tensor> = (shape, dtype, label) => p.scratch(shape, dtype, label);
    const windows = extendWindows(this.gpu.limits, R, cfg.targetHiddenSize);
    const scratch = new Map<number, { aux: Tensor; fc: Eagle3FcActivations | null }>();
    for (const [row0, rows] of windows) {
      let s = scratch.get(rows);
      if (!s) {
        const aux = p.scratch([rows, 3 * cfg.targetHiddenSize], "f32", "aux");
        scratch.set(rows, s = { aux, fc: eagle3FcActivations(make, cfg, rows) });
      }
      const whole = windows.length === 1;
      const indexW = whole ? index : index.view(row0, [rows]), hW = whole ? h : h.view(row0 * H, [rows, H]);
      await gatherRowBlocks(p, asRowSplit(this.targetAux), indexW, s.aux);
      await eagle3FcForward(p, this.draft, s.aux, hW, s.fc);
    }
  }

  async #stepProgram(): Promise<PassProgram> {
    if (this.#step) return this.#step;
    const cfg = this.draft.config;
    const { topk, numSteps } = this.opts;
    const p = new Program(this.gpu, `spec draft step topk=${topk}`);
    try {
      const index = p.scratch([topk], "i32", "parent rows");
      const h = p.scratch([topk, cfg.hiddenSize], "f32", "fed-back hidden");
      await gatherRows(p, this.hidden, index, h);
      this.#step = await this.#layer(p, topk, (numSteps - 1) * topk, index, h, 0, topk);
      return this.#step;
    } catch (e) {
      p.destroy();
      throw e;
    }
  }

  /**
   * Records the midlayer over R rows with input hidden h [R, H] (outputs y into `hidden` rows 0..R−1), and
   * the head over `headRows` rows of y starting at element `headOffset`.
   */
  async #layer(
    p: Program,
    R: number,
    treeLen: number,
    index: Tensor,
    h: Tensor,
    headOffset: number,
    headRows: number,
  ): Promise<PassProgram> {
    const cfg = this.draft.config, H = cfg.hiddenSize;
    const make: MakeTensor<Tensor> = (shape, dtype, label) => p.scratch(shape, dtype, label);
    const ids = p.scratch([R], "i32", "ids");
    const positions = p.scratch([R], "i32", "positions");
    const mask = p.scratch([R, treeLen], "u32", "mask");
    // The state the next draft step consumes goes to `hidden`: y, or RMSNorm_final(y) (feedNormedHidden).
    const fed = this.hidden.view(0, [R, H]), feedNormed = cfg.feedNormedHidden;
    const act = eagle3LayerActivations(make, cfg, R, feedNormed ? {} : { out: fed });
    const attention = new CachedAttention(this, positions, mask);
    const embedding = asRowSplit(this.embedding);
    await eagle3LayerForward(p, this.draft, { ids, embedding, hidden: h }, act, attention);
    const head = eagle3HeadActivations(make, cfg, headRows);
    if (feedNormed) {
      await eagle3FinalNorm(p, this.draft, act.out, { ...head, normed: fed, rstd: make([R], "f32", "rstd") });
    }
    // The head's rows of `hidden` (a copy: a view at an arbitrary row may break the binding offset alignment).
    const rows = make([headRows, H], "f32", "head rows");
    await copyStrided(p, this.hidden, rows, {
      count: [1, 1, headRows * H],
      srcStrides: [0, 0, 1],
      srcOffset: headOffset,
      dstStrides: [0, 0, 1],
    });
    if (feedNormed) await eagle3LmHead(p, this.draft, rows, head.logits);
    else await eagle3HeadForward(p, this.draft, rows, head);
    return { program: p, index, ids, positions, mask, logits: head.logits };
  }

  /** Frees the cache and every program (the draft stays). */
  destroy(): void {
    this.#extends.destroy();
    this.#step?.program.destroy();
    this.#step = null;
    for (const t of [this.k, this.v, this.hidden, this.meta, this.ropeCos, this.ropeSin]) {
      t.destroy();
    }
  }
}

/**
 * The midlayer's attention at inference: RoPE at each row's position, the rows' keys and values written into
 * the session's cache at the pass's slot, attention over the committed prefix and the mask's rows.
 */
class CachedAttention implements Eagle3Attention {
  constructor(readonly session: DraftSession, readonly positions: Tensor, readonly mask: Tensor) {}

  async forward(p: Program, q: Tensor, k: Tensor, v: Tensor, att: Tensor): Promise<void> {
    const s = this.session, cfg = s.draft.config, rows = q.shape[0];
    const { numHeads: nh, numKvHeads: nkv, headDim: hd } = cfg;
    const q3 = q.reshape([rows, nh, hd]), k3 = k.reshape([rows, nkv, hd]);
    await ropeAtPositions(p, q3, this.positions, s.ropeCos, s.ropeSin);
    await ropeAtPositions(p, k3, this.positions, s.ropeCos, s.ropeSin);
    const cache = (t: Tensor) => t.reshape([s.opts.maxLen, nkv * hd]);
    await scatterRows(p, k, cache(s.k), s.meta, 1);
    await scatterRows(p, v, cache(s.v), s.meta, 1);
    await treeAttentionForward(p, {
      q: q3,
      k: s.k,
      v: s.v,
      meta: s.meta,
      mask: this.mask,
      out: att.reshape([rows, nh, hd]),
    });
  }
}

/** Extend windows start at multiples of this many rows: an i32 or f32 row view then meets a 256-byte alignment. */
export const EXTEND_WINDOW_ALIGN = 64;

/**
 * The [row0, rows] windows of an extend of `R` rows whose gathered aux [rows, 3·targetHidden] f32 binds: one
 * window when the whole does, else windows of the most multiples of {@link EXTEND_WINDOW_ALIGN} rows that bind.
 */
export function extendWindows(
  limits: { maxStorageBufferBindingSize: number },
  R: number,
  targetHidden: number,
): Array<[number, number]> {
  const rowBytes = 3 * targetHidden * 4;
  if (R * rowBytes <= limits.maxStorageBufferBindingSize) return [[0, R]];
  const per = Math.floor(limits.maxStorageBufferBindingSize / rowBytes / EXTEND_WINDOW_ALIGN) *
    EXTEND_WINDOW_ALIGN;
  if (per === 0) {
    throw new LimitError(
      `draft extend: ${EXTEND_WINDOW_ALIGN} rows of target aux (${
        EXTEND_WINDOW_ALIGN * rowBytes
      } bytes) exceed ` +
        `the device's maxStorageBufferBindingSize of ${limits.maxStorageBufferBindingSize} bytes`,
    );
  }
  const out: Array<[number, number]> = [];
  for (let row0 = 0; row0 < R; row0 += per) out.push([row0, Math.min(per, R - row0)]);
  return out;
}
