/**
 * Autoregressive generation with a target model: greedy or sampled (temperature, top-p, seeded), stopping
 * each sequence at an end-of-sequence token, batched, with or without a KV cache.
 *
 * With the cache (the default), a batch runs one prefill pass over its prompts, which writes every layer's
 * keys and values into per-layer caches [B, maxLen, nkv, hd] and yields the logits of each prompt's last
 * position, then one decode pass per new token (Tq = 1, at position offset = current length) that appends
 * its key/value row and attends to everything cached. RoPE positions, the cache row written and the causal
 * offset are uniform values baked into a program, so each (batch, Tq, offset) has its own program; a
 * {@link Generator} builds each once and reuses it across calls.
 *
 * Limitation: positions are shared by every sequence of a pass, so with the cache only prompts of equal
 * length can share a batch. Prompts of different lengths are grouped by length, and each group runs as its
 * own batch, one group after the other. Without the cache (`useCache: false`), every step recomputes the
 * full forward over the right-padded sequences (all prompts in one batch, mixed lengths allowed): slow, but
 * the reference the cached path is tested against.
 *
 * Token selection happens on the CPU, after one read-back of the [B, V] logits per step:
 * - temperature 0: greedy, the lowest index of the largest logit (as torch.argmax);
 * - else logits / temperature, softmax, then top-p (nucleus) filtering as transformers' TopPLogitsWarper
 *   (keep the smallest set of most probable tokens whose probability mass reaches top_p, at least one),
 *   and a draw from the renormalised distribution with {@link mulberry32} (lib/data/random.ts, the
 *   project's one generator). Each prompt has its own stream, seeded from (seed, prompt
 *   index), so a sequence's samples do not depend on how prompts are batched or on the cache. The streams
 *   are not torch's, so sampled text differs from transformers' for the same seed.
 */
import { Program } from "../gpu/program.ts";
import { ProgramCache } from "../gpu/program_cache.ts";
import { ShapeError } from "../gpu/errors.ts";
import { Tensor } from "../tensor.ts";
import { kvRowShapes } from "./target_memory.ts";
import { copyStrided } from "../ops/elementwise.ts";
import { rmsnormForward } from "../ops/rmsnorm.ts";
import { mulberry32 } from "../data/random.ts";
import { recordHead, recordTrunk, type TargetModel } from "./target.ts";

/** Options of {@link generate}. */
export interface GenerateOptions {
  /** New tokens per prompt at most (the end-of-sequence token, when reached, counts as one). */
  maxNewTokens: number;
  /** 0 (default) is greedy; > 0 divides the logits before sampling. */
  temperature?: number;
  /** Nucleus sampling mass in (0, 1] (default 1: no filtering). Ignored when greedy. */
  topP?: number;
  /** Seed of the sampling streams (default 0). */
  seed?: number;
  /** Token ids that end a sequence (default: the config's eos_token_id list; [] never stops early). */
  eosTokenIds?: number[];
  /** Use the KV cache (default true); false recomputes the whole sequence every step. */
  useCache?: boolean;
  /** Called with each new token as it is chosen: the prompt's index and the token id. */
  onToken?: (prompt: number, token: number) => void;
}

/** Bad generation arguments (an empty prompt, an option out of range); token ids outside the vocabulary are a ShapeError. */
export class GenerateError extends Error {
  override name = "GenerateError";
}

/** Token-selection settings of one step (see {@link selectToken}). */
export interface SamplingOptions {
  temperature: number;
  topP: number;
}

/**
 * Generates up to `maxNewTokens` tokens after each prompt and returns them per prompt (prompt ids not
 * included). A sequence stops after the first end-of-sequence token, which is included, as transformers'
 * `generate` does. Builds its programs, runs, and frees them; use a {@link Generator} to keep programs
 * across calls.
 */
export async function generate(
  model: TargetModel,
  prompts: number[][],
  opts: GenerateOptions,
): Promise<number[][]> {
  const g = new Generator(model);
  try {
    return await g.generate(prompts, opts);
  } finally {
    g.destroy();
  }
}

/** One prebuilt cached pass: write ids and lengths, run, read logits [B, V] of each sequence's last query. */
interface StepProgram {
  program: Program;
  ids: Tensor;
  lengths: Tensor;
  logits: Tensor;
}

/** Per-layer key and value caches [B, maxLen, nkv, hd] (MLA: k_pe [.., 1, rope] and latent [.., 1, r]). */
interface KvCache {
  k: Tensor[];
  v: Tensor[];
  maxLen: number;
}

/** Cache lengths are rounded up to this many positions so that nearby request sizes share programs. */
export const PLAIN_CACHE_ROUNDING = 64;

/** Prefill and decode programs a {@link Generator} keeps (a few hundred positions of one request and the next). */
export const STEP_PROGRAMS_KEPT = 256;

/**
 * Generation with a model, keeping KV caches (per batch size and cache length, rounded up to a multiple of
 * 64 positions) and the prefill/decode programs (per batch size, query length and offset, with their scratch
 * tensors) between calls, so repeated requests of similar sizes build nothing. The programs kept are the
 * {@link STEP_PROGRAMS_KEPT} most recently used (one per decoded position: requests of many lengths would
 * otherwise hold one per offset met); the caches stay until {@link Generator.destroy}.
 */
export class Generator {
  readonly #caches = new Map<string, KvCache>();
  readonly #steps = new ProgramCache<string, StepProgram>(STEP_PROGRAMS_KEPT);

  /** A generator for `model`, with no caches or programs yet (they are built by the first calls). */
  constructor(readonly model: TargetModel) {}

  /** As {@link generate}, reusing this generator's programs and caches. */
  async generate(prompts: number[][], opts: GenerateOptions): Promise<number[][]> {
    const o = checkOptions(this.model, prompts, opts);
    const out = prompts.map(() => [] as number[]);
    if (o.maxNewTokens === 0 || prompts.length === 0) return out;
    const streams = prompts.map((_, i) => mulberry32(streamSeed(o.seed, i)));
    const pick = (i: number, row: Float32Array): number => {
      const token = selectToken(row, o, streams[i]);
      out[i].push(token);
      opts.onToken?.(i, token);
      return token;
    };
    const done = (i: number) => out[i].length >= o.maxNewTokens || o.eos.has(out[i][out[i].length - 1]);
    if (o.useCache) {
      for (const group of groupByLength(prompts)) await this.#runCached(prompts, group, o, pick, done);
    } else {
      await this.#runUncached(prompts, pick, done);
    }
    return out;
  }

  /** One batch of equal-length prompts: a prefill pass, then a decode pass per token. */
  async #runCached(
    prompts: number[][],
    group: number[],
    o: CheckedOptions,
    pick: (i: number, row: Float32Array) => number,
    done: (i: number) => boolean,
  ): Promise<void> {
    const B = group.length, L = prompts[group[0]].length, V = this.model.config.vocabSize;
    // Positions fed: the prompt and every new token but the last, 0 .. L + maxNewTokens − 2.
    const needed = L + o.maxNewTokens - 1;
    this.model.checkPositions(0, needed);
    const maxLen = Math.min(
      Math.ceil(needed / PLAIN_CACHE_ROUNDING) * PLAIN_CACHE_ROUNDING,
      this.model.maxPositions,
    );
    const cache = this.#cache(B, maxLen);
    let step = await this.#step(B, L, 0, cache);
    step.ids.write(Int32Array.from(group.flatMap((i) => prompts[i])));
    const feed = new Int32Array(B);
    for (let len = L;; len++) {
      step.lengths.write(new Int32Array(B).fill(len));
      step.program.run();
      const logits = await step.logits.readFloat();
      group.forEach((i, b) => {
        // A finished sequence keeps being fed its last token (the batch shares each pass); its outputs
        // are ignored.
        if (!done(i)) feed[b] = pick(i, logits.subarray(b * V, (b + 1) * V));
      });
      if (group.every(done)) return;
      step = await this.#step(B, 1, len, cache);
      step.ids.write(feed);
    }
  }

  /** Every step recomputes the full forward over all sequences, right-padded to the longest. */
  async #runUncached(
    prompts: number[][],
    pick: (i: number, row: Float32Array) => number,
    done: (i: number) => boolean,
  ): Promise<void> {
    const B = prompts.length, V = this.model.config.vocabSize;
    const seqs = prompts.map((p) => [...p]);
    while (!prompts.every((_, i) => done(i))) {
      const lengths = seqs.map((s) => s.length);
      const T = Math.max(...lengths);
      const ids = new Int32Array(B * T);
      seqs.forEach((s, b) => ids.set(s, b * T));
      const f = await this.model.forward(B, T, { logits: true });
      try {
        f.run(ids, lengths);
        const logits = await f.logits!.readFloat();
        seqs.forEach((s, b) => {
          if (done(b)) return;
          const row = (b * T + s.length - 1) * V;
          s.push(pick(b, logits.subarray(row, row + V)));
        });
      } finally {
        f.destroy();
      }
    }
  }

  #cache(batch: number, maxLen: number): KvCache {
    const key = `${batch}x${maxLen}`;
    let cache = this.#caches.get(key);
    if (!cache) {
      const { gpu, config: cfg, layers } = this.model;
      const rows = kvRowShapes(cfg); // MLA: the compressed cache (k_pe and the latent, lib/models/mla.ts)
      const make = (kind: "k" | "v") =>
        layers.map((_, l) =>
          // Zeroed: rows past a sequence's length are never attended, but MLA expands every row through
          // kv_b_proj, and a recycled buffer's stale bits need not be finite.
          Tensor.zeros(gpu, [batch, maxLen, ...rows[kind]], "f32", `${kind} cache B=${batch} layer ${l}`)
        );
      cache = { k: make("k"), v: make("v"), maxLen };
      this.#caches.set(key, cache);
    }
    return cache;
  }

  /**
   * The program of a cached pass of `queryLen` tokens per sequence at `offset`: trunk (writing the cache),
   * then final norm and lm_head on each sequence's last query row only.
   */
  #step(batch: number, queryLen: number, offset: number, cache: KvCache): Promise<StepProgram> {
    const key = `${batch}:${queryLen}:${offset}:${cache.maxLen}`;
    return this.#steps.get(key, () => this.#buildStep(batch, queryLen, offset, cache));
  }

  async #buildStep(batch: number, queryLen: number, offset: number, cache: KvCache): Promise<StepProgram> {
    const model = this.model, cfg = model.config, H = cfg.hiddenSize;
    const p = new Program(model.gpu, `generate B=${batch} Tq=${queryLen} offset=${offset}`);
    try {
      const ids = p.scratch([batch * queryLen], "i32", "ids");
      const lengths = p.scratch([batch], "i32", "lengths");
      const x = await recordTrunk(p, model, {
        batch,
        queryLen,
        ids,
        lengths,
        positionOffset: offset,
        cache,
      });
      let last = x;
      if (queryLen > 1) {
        last = p.scratch([batch, H], "f32", "last hidden");
        await copyStrided(p, x, last, {
          count: [1, batch, H],
          srcStrides: [0, queryLen * H, 1],
          srcOffset: (queryLen - 1) * H,
          dstStrides: [0, H, 1],
        });
      }
      const normed = p.scratch([batch, H], "f32", "final hidden");
      await rmsnormForward(p, last, model.finalNorm, normed, p.scratch([batch], "f32", "final rstd"), {
        eps: cfg.rmsNormEps,
      });
      const logits = p.scratch([batch, cfg.vocabSize], "f32", "logits");
      await recordHead(p, normed, model.lmHead, logits);
      return { program: p, ids, lengths, logits };
    } catch (e) {
      p.destroy();
      throw e;
    }
  }

  /** Frees every program and cache this generator built (the model stays). */
  destroy(): void {
    this.#steps.destroy();
    for (const c of this.#caches.values()) for (const t of [...c.k, ...c.v]) t.destroy();
    this.#caches.clear();
  }
}

interface CheckedOptions extends SamplingOptions {
  maxNewTokens: number;
  seed: number;
  eos: Set<number>;
  useCache: boolean;
}

function checkOptions(model: TargetModel, prompts: number[][], opts: GenerateOptions): CheckedOptions {
  const V = model.config.vocabSize;
  const { maxNewTokens, temperature = 0, topP = 1, seed = 0, useCache = true } = opts;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new GenerateError(`generate: maxNewTokens must be an integer >= 0, got ${maxNewTokens}`);
  }
  if (!(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new GenerateError(`generate: temperature must be a finite number >= 0, got ${temperature}`);
  }
  if (!(topP > 0 && topP <= 1)) throw new GenerateError(`generate: topP must be in (0, 1], got ${topP}`);
  if (!Number.isInteger(seed)) throw new GenerateError(`generate: seed must be an integer, got ${seed}`);
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new GenerateError(`generate: prompt ${i} is empty (give at least a BOS token)`);
    const bad = p.find((t) => !Number.isInteger(t) || t < 0 || t >= V);
    if (bad !== undefined) {
      throw new ShapeError(`generate: prompt ${i} has token id ${bad} outside the vocabulary 0..${V - 1}`);
    }
  });
  const eos = opts.eosTokenIds ?? model.config.eosTokenIds;
  return { maxNewTokens, temperature, topP, seed, eos: new Set(eos), useCache };
}

/** Prompt indices grouped by prompt length, groups in order of first appearance. */
export function groupByLength(prompts: number[][]): number[][] {
  const groups = new Map<number, number[]>();
  prompts.forEach((p, i) => {
    const g = groups.get(p.length);
    if (g) g.push(i);
    else groups.set(p.length, [i]);
  });
  return [...groups.values()];
}

/** The seed of prompt `index`'s sampling stream: MurmurHash3's finaliser over (seed, index). */
function streamSeed(seed: number, index: number): number {
  let h = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca77)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The index of the largest value; the lowest such index on ties (torch.argmax). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** The top-p nucleus of softmax(logits / temperature), as {@link nucleus} returns it. */
interface Nucleus {
  /** Unnormalised probabilities exp((logits − max) / temperature) of every token. */
  weights: Float64Array;
  /** Token ids, most probable first (ties to the lower id); in id order when topP ≥ 1. */
  order: ArrayLike<number>;
  /** The nucleus is `order[0 .. kept)`. */
  kept: number;
  /** The nucleus's total weight. */
  mass: number;
}

/**
 * The top-p nucleus of softmax(logits / temperature) (temperature > 0): the smallest set of most probable
 * tokens (ties broken by lower id) whose probabilities sum to at least topP, always at least one token; this
 * keeps what transformers' TopPLogitsWarper keeps (it drops the tokens whose ascending cumulative probability
 * is ≤ 1 − topP). With topP ≥ 1 every token is kept, in id order.
 */
function nucleus(logits: ArrayLike<number>, temperature: number, topP: number): Nucleus {
  const n = logits.length;
  const max = logits[argmax(logits)];
  const weights = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    weights[i] = Math.exp((logits[i] - max) / temperature);
    sum += weights[i];
  }
  if (topP >= 1) return { weights, order: Int32Array.from({ length: n }, (_, i) => i), kept: n, mass: sum };
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => weights[b] - weights[a] || a - b);
  let kept = 0, mass = 0;
  while (kept < n && (kept === 0 || mass < topP * sum)) mass += weights[order[kept++]];
  return { weights, order, kept, mass };
}

/**
 * The next token from one row of logits: greedy when temperature is 0, else an inverse-CDF draw (with
 * `random`, uniform in [0, 1)) over the top-p {@link nucleus} of softmax(logits / temperature), most probable
 * token first, renormalised by the nucleus's mass.
 */
export function selectToken(logits: ArrayLike<number>, opts: SamplingOptions, random: () => number): number {
  if (opts.temperature === 0) return argmax(logits);
  const { weights, order, kept, mass } = nucleus(logits, opts.temperature, opts.topP);
  const u = random() * mass;
  let acc = 0;
  for (let r = 0; r < kept; r++) {
    acc += weights[order[r]];
    if (u < acc) return order[r];
  }
  return order[kept - 1];
}

/**
 * The sampling distribution {@link selectToken} draws from, as probabilities over the whole vocabulary:
 * softmax(logits / temperature) restricted to the top-p nucleus and renormalised (zero outside it).
 * temperature must be > 0. Speculative decoding verifies drafts against it (lib/eval/tree.ts).
 */
export function samplingProbs(logits: ArrayLike<number>, temperature: number, topP = 1): Float64Array {
  const { weights, order, kept, mass } = nucleus(logits, temperature, topP);
  for (let r = kept; r < order.length; r++) weights[order[r]] = 0;
  for (let i = 0; i < weights.length; i++) weights[i] /= mass;
  return weights;
}
