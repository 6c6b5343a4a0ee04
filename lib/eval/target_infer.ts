/**
 * The target model's side of speculative decoding, one sequence at a time, over a KV cache of `maxLen`
 * slots per layer ([maxLen, nkv, hd]; MLA: the compressed cache of k_pe and latents, lib/models/mla.ts):
 *
 * - prefill: the prompt through lib/models/target.ts `recordTrunk` (positions 0..L−1, cache rows 0..L−1),
 *   keeping the aux hidden states of every position and the logits of the last;
 * - verify: the N nodes of a draft tree in one pass. Node n sits at position prefix + depth(n), its keys and
 *   values are written to cache slot prefix + n, and it attends the cached prefix plus its ancestors and
 *   itself (lib/ops/tree_attention.ts); yields the logits [N, V] and aux states [N, 3H] of every node;
 * - compact: after acceptance, the cache rows of the accepted path (nodes path[i] at slots prefix + path[i])
 *   move to slots prefix + i, so the cache again holds exactly the committed sequence; rejected nodes'
 *   rows are left beyond the valid length, where the next pass overwrites them.
 *
 * The layer math is recordTrunk's (Llama/Qwen2/Qwen3/Mistral: biases, q/k norms, GQA), with the cached
 * attention replaced by tree attention and RoPE taking per-row positions; the prefix length and positions
 * are data written before each run, so each program is built once per tree size.
 */
import { LimitError } from "../gpu/errors.ts";
import { Program } from "../gpu/program.ts";
import { ProgramCache } from "../gpu/program_cache.ts";
import { Tensor } from "../tensor.ts";
import { kvRowShapes } from "../models/target_memory.ts";
import { attentionTemperatureForward } from "../ops/attention_temperature.ts";
import {
  layerAttention,
  layerRope,
  layerScratch,
  layerWindow,
  recordDecoderLayer,
  recordEmbedding,
  recordHead,
  recordTrunk,
  type TargetModel,
} from "../models/target.ts";
import { rmsnormForward } from "../ops/rmsnorm.ts";
import { copyStrided } from "../ops/elementwise.ts";
import {
  copyColumnsToBlocks,
  destroyRowSplit,
  emptyRowSplit,
  type RowSplitMatrix,
} from "../ops/row_split.ts";
import { gatherRows, ropeAtPositions, scatterRows, treeAttentionForward } from "../ops/tree_attention.ts";
import type { VerifyTree } from "./tree.ts";

interface PrefillProgram {
  program: Program;
  ids: Tensor;
  logits: Tensor;
}

interface VerifyProgram {
  program: Program;
  ids: Tensor;
  positions: Tensor;
  mask: Tensor;
  logits: Tensor;
}

interface CompactProgram {
  program: Program;
  index: Tensor;
}

/** The target's KV cache and prebuilt passes for speculative decoding of one sequence. */
export class TargetSession {
  readonly k: Tensor[];
  readonly v: Tensor[];
  /**
   * Aux hidden states [auxRows, (aux layers)·H] of the last prefill (rows 0..L−1) or verify (rows 0..N−1), in row blocks
   * that each bind (lib/ops/row_split.ts; one block when the whole binds).
   */
  readonly aux: RowSplitMatrix;
  /** i32 [1]: the cached prefix length of the next verify or compaction. */
  readonly #prefix: Tensor;
  readonly #lengths: Tensor;
  // One prefill per prompt length met: only the last few are kept (each holds its scratch). Tree sizes are few.
  readonly #prefills = new ProgramCache<number, PrefillProgram>(2);
  readonly #verifies = new ProgramCache<number, VerifyProgram>(8);
  readonly #compacts = new ProgramCache<number, CompactProgram>(8);
  /** Split-K scratch tensors returned by the matmuls of the verify programs. */

  /**
   * A session whose cache holds `maxLen` slots and whose aux buffer holds `auxRows` rows (at least the
   * longest prompt and the largest tree).
   */
  constructor(readonly model: TargetModel, readonly maxLen: number, readonly auxRows: number) {
    const { gpu, config: cfg } = model;
    const rows = kvRowShapes(cfg); // MLA: the compressed cache (k_pe and the latent, lib/models/mla.ts)
    const make = (kind: "k" | "v") =>
      model.layers.map((_, l) =>
        Tensor.zeros(gpu, [maxLen, ...rows[kind]], "f32", `spec target ${kind} cache ${l}`)
      );
    this.k = make("k");
    this.v = make("v");
    this.aux = emptyRowSplit(gpu, auxRows, model.auxLayers.length * cfg.hiddenSize, "spec target aux");
    this.#prefix = Tensor.empty(gpu, [1], "i32", "spec target prefix");
    this.#lengths = Tensor.empty(gpu, [1], "i32", "spec target lengths");
  }

  /** Runs the prompt (cache rows 0..L−1, aux rows 0..L−1) and returns the last position's logits [V]. */
  async prefill(prompt: number[]): Promise<Float32Array> {
    const L = prompt.length;
    this.#checkRows(L, "prompt");
    const pre = await this.#prefill(L);
    pre.ids.write(Int32Array.from(prompt));
    this.#lengths.write(Int32Array.from([L]));
    pre.program.run();
    return await pre.logits.readFloat();
  }

  /**
   * Verifies `tree` after `prefix` cached positions (the root at position prefix): writes the nodes' cache
   * rows at prefix.., the aux rows 0..N−1, and returns the logits [N·V] of every node.
   */
  async verify(tree: VerifyTree, prefix: number): Promise<Float32Array> {
    const N = tree.tokens.length;
    this.#checkRows(N, "tree");
    const maxDepth = Math.max(...tree.depths);
    this.model.checkPositions(prefix, maxDepth + 1);
    if (prefix + N > this.maxLen) {
      throw new LimitError(
        `speculative target: tree slots up to ${prefix + N} exceed the cache (${this.maxLen})`,
      );
    }
    const v = await this.#verify(N);
    v.ids.write(Int32Array.from(tree.tokens));
    v.positions.write(Int32Array.from(tree.depths, (d) => prefix + d));
    v.mask.write(tree.mask);
    this.#prefix.write(Int32Array.from([prefix]));
    v.program.run();
    return await v.logits.readFloat();
  }

  /** Moves the cache rows of tree nodes `path` (slots prefix + path[i]) to slots prefix + i (no sync). */
  async compact(prefix: number, path: number[], treeSize: number): Promise<void> {
    if (path.every((n, i) => n === i)) return;
    const c = await this.#compact(treeSize);
    const index = new Int32Array(treeSize).fill(-1);
    path.forEach((n, i) => index[i] = prefix + n);
    c.index.write(index);
    this.#prefix.write(Int32Array.from([prefix]));
    c.program.run();
  }

  #checkRows(n: number, what: string): void {
    if (n > this.auxRows) {
      throw new LimitError(`speculative target: ${what} of ${n} rows exceeds the session's ${this.auxRows}`);
    }
  }

  #prefill(L: number): Promise<PrefillProgram> {
    return this.#prefills.get(L, () => this.#buildPrefill(L));
  }

  async #buildPrefill(L: number): Promise<PrefillProgram> {
    const model = this.model, cfg = model.config, H = cfg.hiddenSize;
    const p = new Program(model.gpu, `spec target prefill L=${L}`);
    try {
      const ids = p.scratch([L], "i32", "ids");
      const x = await recordTrunk(p, model, {
        batch: 1,
        queryLen: L,
        ids,
        lengths: this.#lengths,
        positionOffset: 0,
        cache: {
          k: this.k.map((t) => t.reshape([1, ...t.shape])),
          v: this.v.map((t) => t.reshape([1, ...t.shape])),
          maxLen: this.maxLen,
        },
        onLayerOutput: (layer, hidden) => captureAux(p, model, layer, hidden, this.aux),
      });
      const last = p.scratch([1, H], "f32", "last hidden");
      await copyStrided(p, x, last, {
        count: [1, 1, H],
        srcStrides: [0, 0, 1],
        srcOffset: (L - 1) * H,
        dstStrides: [0, 0, 1],
      });
      const logits = await finalLogits(p, model, last);
      const pre = { program: p, ids, logits };
      return pre;
    } catch (e) {
      p.destroy();
      throw e;
    }
  }

  #verify(N: number): Promise<VerifyProgram> {
    return this.#verifies.get(N, () => this.#buildVerify(N));
  }

  async #buildVerify(N: number): Promise<VerifyProgram> {
    const model = this.model, cfg = model.config, H = cfg.hiddenSize;
    const p = new Program(model.gpu, `spec target verify N=${N}`);
    try {
      const ids = p.scratch([N], "i32", "ids");
      const positions = p.scratch([N], "i32", "positions");
      const mask = p.scratch([N, N], "u32", "tree mask");
      const x = p.scratch([N, H], "f32", "residual");
      const scratch = layerScratch(p, cfg, [N]);
      await recordEmbedding(p, cfg, model.embed, ids, x, scratch);
      const cacheRows = (t: Tensor) => t.reshape([this.maxLen, t.size / this.maxLen]);
      const windowOf = (l: number) => {
        const size = layerWindow(cfg, l);
        return size === null ? undefined : { size, positions };
      };
      for (let l = 0; l < model.layers.length; l++) {
        const rope = layerRope(model, l), how = layerAttention(cfg, l);
        await recordDecoderLayer(p, cfg, model.layers[l], x, scratch, async (q, k, v, att, expand) => {
          if (how.rope) {
            await ropeAtPositions(p, q, positions, rope.cos, rope.sin);
            await ropeAtPositions(p, k, positions, rope.cos, rope.sin);
          } else if (how.temperature) {
            await attentionTemperatureForward(p, q, how.temperature, { positions }, N);
          }
          await scatterRows(p, k.reshape([N, k.size / N]), cacheRows(this.k[l]), this.#prefix, 0);
          await scatterRows(p, v.reshape([N, v.size / N]), cacheRows(this.v[l]), this.#prefix, 0);
          // MLA: every cached latent expanded into per-head keys and values (lib/models/mla.ts).
          const kv = expand ? await expand(this.k[l], this.v[l]) : { keys: this.k[l], values: this.v[l] };
          await treeAttentionForward(p, {
            q,
            k: kv.keys,
            v: kv.values,
            meta: this.#prefix,
            mask,
            out: att,
          }, {
            scale: cfg.mla?.scale ?? cfg.gemma?.attentionScale,
            window: windowOf(l),
            chunk: how.chunk === null ? undefined : { size: how.chunk, positions },
            sinks: model.layers[l].sinks,
          });
        });
        await captureAux(p, model, l, x, this.aux);
      }
      const logits = await finalLogits(p, model, x);
      const out = { program: p, ids, positions, mask, logits };
      return out;
    } catch (e) {
      p.destroy();
      throw e;
    }
  }

  #compact(N: number): Promise<CompactProgram> {
    return this.#compacts.get(N, () => this.#buildCompact(N));
  }

  async #buildCompact(N: number): Promise<CompactProgram> {
    const p = new Program(this.model.gpu, `spec target compact N=${N}`);
    try {
      const index = p.scratch([N], "i32", "path slots");
      for (const cache of [...this.k, ...this.v]) {
        const W = cache.size / this.maxLen; // nkv·hd (MLA: rope, r)
        const rows = p.transient("path rows", [N, W], "f32");
        const flat = cache.reshape([this.maxLen, W]);
        await gatherRows(p, flat, index, rows);
        await scatterRows(p, rows, flat, this.#prefix, 0);
      }
      const c = { program: p, index };
      return c;
    } catch (e) {
      p.destroy();
      throw e;
    }
  }

  /** Frees the caches and every program (the model stays). */
  destroy(): void {
    for (const cache of [this.#prefills, this.#verifies, this.#compacts]) cache.destroy();
    for (const t of [...this.k, ...this.v, this.#prefix, this.#lengths]) t.destroy();
    destroyRowSplit(this.aux);
  }
}

/** Copies the residual stream [R, H] after `layer` into rows 0..R−1 of every aux slot that names it. */
async function captureAux(
  p: Program,
  model: TargetModel,
  layer: number,
  hidden: Tensor,
  aux: RowSplitMatrix,
) {
  const H = model.config.hiddenSize;
  for (let s = 0; s < model.auxLayers.length; s++) {
    if (model.auxLayers[s] === layer) await copyColumnsToBlocks(p, hidden, aux, s * H);
  }
}

/** Final RMSNorm and lm_head of rows x [R, H] → logits [R, V] (a scratch tensor of p). */
async function finalLogits(p: Program, model: TargetModel, x: Tensor): Promise<Tensor> {
  const cfg = model.config;
  const R = x.shape[0];
  const normed = p.scratch([R, cfg.hiddenSize], "f32", "final hidden");
  await rmsnormForward(p, x, model.finalNorm, normed, p.scratch([R], "f32", "final rstd"), {
    eps: cfg.rmsNormEps,
  });
  const logits = p.scratch([R, cfg.vocabSize], "f32", "logits");
  await recordHead(p, normed, model.lmHead, logits);
  return logits;
}
