/**
 * EAGLE-3 speculative decoding on WebGPU, as SGLang's EAGLE worker runs it, to measure a draft without a
 * serving engine: the mean acceptance length tau (tokens per target forward, the bonus token counted), the
 * acceptance at each draft position, and tokens/s with and without speculation.
 *
 * One sequence at a time (batch 1). Each round:
 *   1. draft: level 1 from the draft's last extend row, then draft steps 2..numSteps (lib/eval/draft_infer.ts),
 *      the tree grown and pruned to numDraftTokens − 1 candidates (lib/eval/tree.ts);
 *   2. verify: the target runs the root (the last committed token) and the candidates in one pass with the
 *      tree mask (lib/eval/target_infer.ts), yielding each node's next-token distribution;
 *   3. accept: greedily at temperature 0, by lossless tree rejection sampling otherwise (lib/eval/tree.ts);
 *      the accepted tokens and the bonus token are committed (up to EOS / maxNewTokens);
 *   4. caches: the target's cache rows of the accepted path are compacted onto the committed positions; the
 *      draft extends its cache over the same positions with the target's aux states (rejected rows of both
 *      caches lie beyond the committed length and are overwritten later).
 * Chain drafting is topk = 1 (numDraftTokens = numSteps + 1).
 *
 * Token selection happens on the CPU after a read-back (one per draft step and one per verification),
 * where SGLang keeps top-k and verification on the GPU; on fast GPUs these syncs (about 11 ms each in Deno
 * 2.9.6) dominate small models, which the measured speed-up includes.
 */
import { ShapeError } from "../gpu/errors.ts";
import { mulberry32 } from "../data/random.ts";
import type { TargetModel } from "../models/target.ts";
import type { Eagle3Draft } from "../models/eagle3.ts";
import { argmax, Generator, samplingProbs } from "../models/generate.ts";
import { DraftSession } from "./draft_infer.ts";
import { TargetSession } from "./target_infer.ts";
import {
  DraftTree,
  topkSoftmax,
  type Verdict,
  verifyGreedy,
  verifySampling,
  type VerifyTree,
} from "./tree.ts";

/** How to speculate (SGLang's --speculative-num-steps, --speculative-eagle-topk, --speculative-num-draft-tokens). */
export interface SpeculativeConfig {
  /** Tree depth: draft tokens along one path (≥ 1). */
  numSteps: number;
  /** Branches per level (1: a chain). */
  topk: number;
  /** Tree nodes verified, the root included (default numSteps + 1 for a chain; required for topk > 1). */
  numDraftTokens?: number;
}

/** Sampling and stopping options of a generation. */
export interface SpeculativeGenerateOptions {
  /** Most new tokens to generate (prompt excluded); generation stops earlier at an EOS token. */
  maxNewTokens: number;
  /** 0 (default): greedy. */
  temperature?: number;
  /** Nucleus mass in (0, 1] (default 1). */
  topP?: number;
  /** Seed of the sequence's random stream (default 0). */
  seed?: number;
  /** Tokens that end a sequence (default the target config's eos_token_id; [] never stops early). */
  eosTokenIds?: number[];
}

/** One round: the verified tree, the accepted path and what was committed. */
export interface RoundRecord {
  /** Tree tokens, node 0 the root (already committed). */
  tokens: number[];
  /** Parent of each node (−1 for the root). */
  parents: number[];
  /** Accepted nodes, root first. */
  path: number[];
  /** Accepted draft tokens. */
  accepted: number[];
  /** The target's token after the accepted ones. */
  bonus: number;
  /** Tokens committed this round (accepted + bonus, cut at EOS / maxNewTokens). */
  emitted: number[];
}

/** The result of one speculative generation. */
export interface SpeculativeOutput {
  /** New tokens (prompt excluded), EOS included when reached. */
  tokens: number[];
  /** Every draft-and-verify round, in order. */
  rounds: RoundRecord[];
  /** Seconds from the first new token (after prefill) to the end. */
  decodeSeconds: number;
}

/** The checked, defaulted speculation settings. */
export interface ResolvedSpeculativeConfig {
  /** Tree depth: draft tokens along one path (≥ 1). */
  numSteps: number;
  /** Branches per level (1: a chain). */
  topk: number;
  /** Tree nodes verified per round, the root included (2 ≤ n ≤ 1 + topk + (numSteps − 1)·topk²). */
  numDraftTokens: number;
}

/** Validates a {@link SpeculativeConfig} as SGLang would accept it, filling numDraftTokens for a chain. */
export function resolveSpeculativeConfig(c: SpeculativeConfig): ResolvedSpeculativeConfig {
  const { numSteps, topk } = c;
  if (!Number.isInteger(numSteps) || numSteps < 1) {
    throw new ShapeError(`numSteps must be ≥ 1, got ${numSteps}`);
  }
  if (!Number.isInteger(topk) || topk < 1) throw new ShapeError(`topk must be ≥ 1, got ${topk}`);
  const max = 1 + topk + (numSteps - 1) * topk * topk;
  const numDraftTokens = c.numDraftTokens ?? (topk === 1 ? numSteps + 1 : undefined);
  if (numDraftTokens === undefined) throw new ShapeError(`numDraftTokens is required when topk > 1`);
  if (!Number.isInteger(numDraftTokens) || numDraftTokens < 2 || numDraftTokens > max) {
    throw new ShapeError(
      `numDraftTokens must be in 2..${max} (1 + topk + (numSteps − 1)·topk²) for numSteps ${numSteps}, ` +
        `topk ${topk}; got ${numDraftTokens}`,
    );
  }
  return { numSteps, topk, numDraftTokens };
}

/** Cache sizes are rounded up to this many slots so that similar requests share sessions. */
const ROUNDING = 64;

/**
 * The sizes of the sessions a prompt of `promptLen` tokens needs: cache slots `needed` (the prompt, the new
 * tokens and the widest draft tree or step rows) rounded up to `maxLen`, and aux rows `rows` (the prompt, the
 * tree, an extension's rows) rounded up to `auxRows`. A decoder keeps its sessions while they are as large.
 */
export function sessionSizes(
  promptLen: number,
  maxNewTokens: number,
  c: ResolvedSpeculativeConfig,
): { needed: number; maxLen: number; rows: number; auxRows: number } {
  const { numSteps, topk, numDraftTokens: N } = c;
  const needed = promptLen + maxNewTokens + Math.max(N, (numSteps - 1) * topk) + 1;
  const rows = Math.max(promptLen, N, numSteps + 1);
  return {
    needed,
    maxLen: Math.ceil(needed / ROUNDING) * ROUNDING,
    rows,
    auxRows: Math.ceil(rows / ROUNDING) * ROUNDING,
  };
}

/**
 * Speculative decoding with a target and an EAGLE-3 draft. Keeps its sessions (caches and programs) between
 * calls while they are large enough; free them with {@link SpeculativeDecoder.destroy}.
 */
export class SpeculativeDecoder {
  /** The checked speculation settings, numDraftTokens filled in. */
  readonly config: ResolvedSpeculativeConfig;
  #target: TargetSession | null = null;
  #draft: DraftSession | null = null;

  /** `draftToTarget[i]` is the target id of draft vocabulary index i (lib/data/vocab.ts, SGLang's d2t + i). */
  constructor(
    readonly target: TargetModel,
    readonly draft: Eagle3Draft,
    readonly draftToTarget: Int32Array,
    config: SpeculativeConfig,
  ) {
    this.config = resolveSpeculativeConfig(config);
    if (draftToTarget.length !== draft.config.draftVocabSize) {
      throw new ShapeError(
        `speculative: ${draftToTarget.length} vocab map entries for draft_vocab_size ${draft.config.draftVocabSize}`,
      );
    }
    if (this.config.topk > draftToTarget.length) {
      throw new ShapeError(
        `speculative: --topk ${this.config.topk} exceeds the draft's ${draftToTarget.length}-token vocabulary`,
      );
    }
    if (draft.config.vocabSize !== target.config.vocabSize) {
      throw new ShapeError(
        `speculative: draft vocab_size ${draft.config.vocabSize} ≠ target vocab_size ${target.config.vocabSize}`,
      );
    }
  }

  /** Generates after `prompt` (see the module comment for one round). */
  async generate(prompt: number[], opts: SpeculativeGenerateOptions): Promise<SpeculativeOutput> {
    const { numSteps, topk, numDraftTokens: N } = this.config;
    const V = this.target.config.vocabSize;
    const { temperature, topP } = checkGenerateInputs(prompt, V, opts);
    const eos = new Set(opts.eosTokenIds ?? this.target.config.eosTokenIds);
    const random = mulberry32(opts.seed ?? 0);
    const { target, draft } = this.#sessions(prompt.length, opts.maxNewTokens);
    const out: number[] = [];
    const rounds: RoundRecord[] = [];
    const done = () => out.length >= opts.maxNewTokens || (out.length > 0 && eos.has(out[out.length - 1]));
    if (opts.maxNewTokens <= 0) return { tokens: out, rounds, decodeSeconds: 0 };

    const pick = (logits: Float32Array, row: number): number => {
      const l = logits.subarray(row * V, (row + 1) * V);
      return temperature === 0 ? argmax(l) : drawToken(samplingProbs(l, temperature, topP), random());
    };
    const first = pick(await target.prefill(prompt), 0);
    const t0 = performance.now();
    out.push(first);
    let prefix = prompt.length; // committed tokens in both caches; the last committed token is not cached
    let last = first;
    if (done()) return { tokens: out, rounds, decodeSeconds: 0 };
    let draftLogits = await draft.extend(0, range(prefix), [...prompt.slice(1), first]);
    let extendRows = prefix; // the first draft step continues from the extend's last row

    while (!done()) {
      // 1. Draft.
      const tree = new DraftTree(topk);
      let branches = tree.start(topkSoftmax(draftLogits, topk, this.draftToTarget));
      let parentRows = new Array<number>(topk).fill(extendRows - 1);
      for (let j = 1; j < numSteps; j++) {
        const logits = await draft.step(
          j,
          prefix,
          parentRows,
          branches.map((b) => tree.nodes[b.node].token),
          branches.map((b) => b.slots),
        );
        const Vd = this.draft.config.draftVocabSize;
        const per = branches.map((_, r) =>
          topkSoftmax(logits.subarray(r * Vd, (r + 1) * Vd), topk, this.draftToTarget)
        );
        parentRows = tree.expand(per, j);
        branches = tree.branches;
      }
      const vt = tree.finalize(last, N);
      // 2. Verify.
      const logits = await target.verify(vt, prefix);
      // 3. Accept.
      const verdict = verdictOf(vt, logits, V, { temperature, topP }, random);
      const emitted: number[] = [];
      for (const t of [...verdict.accepted, verdict.bonus]) {
        if (done()) break;
        out.push(t);
        emitted.push(t);
      }
      rounds.push({ tokens: vt.tokens, parents: vt.parents, ...verdict, emitted });
      if (done()) break;
      // 4. Caches: target rows of the path onto prefix.., then the draft over the same positions.
      await target.compact(prefix, verdict.path, N);
      draftLogits = await draft.extend(prefix, verdict.path, emitted);
      prefix += emitted.length;
      extendRows = emitted.length;
      last = emitted[emitted.length - 1];
    }
    return { tokens: out, rounds, decodeSeconds: (performance.now() - t0) / 1000 };
  }

  #sessions(promptLen: number, maxNewTokens: number): { target: TargetSession; draft: DraftSession } {
    const { numSteps, topk } = this.config;
    const { needed, maxLen, rows, auxRows } = sessionSizes(promptLen, maxNewTokens, this.config);
    if (this.#target && this.#draft && this.#target.maxLen >= needed && this.#target.auxRows >= rows) {
      return { target: this.#target, draft: this.#draft };
    }
    this.destroy();
    this.target.checkPositions(0, Math.min(needed, promptLen + maxNewTokens + numSteps));
    const target = new TargetSession(this.target, maxLen, auxRows);
    const draft = new DraftSession(this.draft, this.target.embed, target.aux, {
      maxLen,
      maxExtendRows: auxRows,
      topk,
      numSteps,
    });
    this.#target = target;
    this.#draft = draft;
    return { target, draft };
  }

  /** Frees the sessions (target and draft models stay). */
  destroy(): void {
    this.#draft?.destroy();
    this.#target?.destroy();
    this.#draft = null;
    this.#target = null;
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Inverse-CDF draw from a normalised distribution. */
/**
 * Checks a generation's prompt (ids in 0..V−1, at least one) and sampling options; returns the temperature
 * (default 0: greedy) and the nucleus mass (default 1).
 */
export function checkGenerateInputs(
  prompt: number[],
  V: number,
  opts: SpeculativeGenerateOptions,
): { temperature: number; topP: number } {
  const temperature = opts.temperature ?? 0, topP = opts.topP ?? 1;
  if (!(temperature >= 0 && Number.isFinite(temperature))) {
    throw new ShapeError(`bad temperature ${temperature}`);
  }
  if (!(topP > 0 && topP <= 1)) throw new ShapeError(`topP must be in (0, 1], got ${topP}`);
  if (prompt.length === 0) throw new ShapeError("speculative: empty prompt (give at least a BOS token)");
  const bad = prompt.find((t) => !Number.isInteger(t) || t < 0 || t >= V);
  if (bad !== undefined) throw new ShapeError(`speculative: prompt token ${bad} outside 0..${V - 1}`);
  return { temperature, topP };
}

/**
 * What the target's logits [N·V] over the nodes of `tree` accept: greedily at temperature 0, else by lossless
 * tree rejection sampling with `random` (each node's sampling distribution computed once).
 */
export function verdictOf(
  tree: VerifyTree,
  logits: Float32Array,
  V: number,
  { temperature, topP }: { temperature: number; topP: number },
  random: () => number,
): Verdict {
  if (temperature === 0) {
    return verifyGreedy(tree, tree.tokens.map((_, n) => argmax(logits.subarray(n * V, (n + 1) * V))));
  }
  const probs = new Map<number, Float64Array>();
  const at = (n: number) => {
    let p = probs.get(n);
    if (!p) probs.set(n, p = samplingProbs(logits.subarray(n * V, (n + 1) * V), temperature, topP));
    return p;
  };
  return verifySampling(tree, at, random);
}

/** The index whose cumulative probability (over the positive entries) first exceeds u. */
export function drawToken(p: Float64Array, u: number): number {
  let acc = 0, last = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] <= 0) continue;
    acc += p[i];
    last = i;
    if (u < acc) return i;
  }
  return last;
}

// ---------------------------------------------------------------------------------------------------------
// Acceptance statistics and the evaluation loop.

/** Acceptance statistics over many rounds. */
export interface AcceptanceStats {
  /** Verification rounds (target forwards after the prefill). */
  rounds: number;
  /** Mean tokens per round: accepted draft tokens + 1 (the bonus token), SGLang's accept length. */
  tau: number;
  /** Fraction of rounds whose first i+1 draft tokens were all accepted (i = 0..numSteps−1). */
  acceptedAtPosition: number[];
  /** P(position i accepted | position i−1 accepted), the analogue of training's acc_i. */
  conditionalAcceptance: number[];
  /** Rounds by accept length 1..numSteps+1 (index 0 is length 1). */
  histogram: number[];
}

/** Statistics of the rounds of many generations (`numSteps` sets the depth of the per-position arrays). */
export function acceptanceStats(rounds: RoundRecord[], numSteps: number): AcceptanceStats {
  const histogram = new Array<number>(numSteps + 1).fill(0);
  let total = 0;
  for (const r of rounds) {
    const len = r.accepted.length + 1;
    histogram[Math.min(len, numSteps + 1) - 1]++;
    total += len;
  }
  const n = rounds.length;
  const reached = range(numSteps).map((i) => rounds.filter((r) => r.accepted.length >= i + 1).length);
  return {
    rounds: n,
    tau: n ? total / n : 0,
    acceptedAtPosition: reached.map((c) => n ? c / n : 0),
    conditionalAcceptance: reached.map((c, i) => {
      const prev = i === 0 ? n : reached[i - 1];
      return prev ? c / prev : 0;
    }),
    histogram,
  };
}

/** Options of {@link evaluateAcceptance}. */
export interface EvaluateAcceptanceOptions extends SpeculativeConfig, SpeculativeGenerateOptions {
  /** Target id of each draft index (VocabMapping.draftToTarget). */
  draftToTarget: Int32Array;
}

/**
 * Speculative decoding of every prompt with `draft` (e.g. during training, on prompts of the eval set):
 * acceptance statistics only, no speed measurement. Prompt i uses seed opts.seed + i.
 */
export async function evaluateAcceptance(
  target: TargetModel,
  draft: Eagle3Draft,
  prompts: number[][],
  opts: EvaluateAcceptanceOptions,
): Promise<AcceptanceStats> {
  const dec = new SpeculativeDecoder(target, draft, opts.draftToTarget, opts);
  try {
    const rounds: RoundRecord[] = [];
    for (const [i, prompt] of prompts.entries()) {
      rounds.push(...(await dec.generate(prompt, { ...opts, seed: (opts.seed ?? 0) + i })).rounds);
    }
    return acceptanceStats(rounds, dec.config.numSteps);
  } finally {
    dec.destroy();
  }
}

/**
 * Prompts from tokenized training samples: each sample's ids before its first supervised (loss-mask) token,
 * i.e. the conversation up to the first assistant reply, cut to at most `maxPromptLen` tokens (the last
 * ones); samples without a supervised token are skipped.
 */
export function promptsFromSamples(
  samples: Array<{ inputIds: ArrayLike<number>; lossMask: ArrayLike<number> }>,
  maxPromptLen: number,
): number[][] {
  const out: number[][] = [];
  for (const s of samples) {
    let first = -1;
    for (let i = 0; i < s.lossMask.length; i++) {
      if (s.lossMask[i]) {
        first = i;
        break;
      }
    }
    if (first < 1) continue;
    out.push(Array.from(s.inputIds).slice(Math.max(0, first - maxPromptLen), first));
  }
  return out;
}

/** Options of {@link runSpeculativeEval}. */
export interface SpeculativeEvalOptions extends SpeculativeConfig, SpeculativeGenerateOptions {
  /** Target id of each draft vocabulary index, int32 [Vd] (as in {@link SpeculativeDecoder}). */
  draftToTarget: Int32Array;
  /** Also time target-only decoding and speculative decoding (each run once untimed first); default true. */
  measureSpeed?: boolean;
  /** Called after each prompt with its index. */
  onSample?: (index: number, result: SampleResult) => void;
  /**
   * The index of each prompt in the whole evaluation set (default 0, 1, …): prompt i's seed is seed + its
   * index, so that a data-parallel rank evaluating a share of the prompts draws what one process would.
   */
  promptIndices?: number[];
}

/** One prompt's outcome. */
export interface SampleResult {
  /** The prompt's token ids. */
  prompt: number[];
  /** The speculative generation of this prompt. */
  output: SpeculativeOutput;
  /** The target's own greedy output (only computed at temperature 0 or when speed is measured). */
  targetTokens: number[] | null;
  /** Seconds the target-only decode took after its first token, null when it was not run. */
  targetDecodeSeconds: number | null;
}

/** What {@link runSpeculativeEval} measured. */
export interface SpeculativeEvalResult {
  /** The speculation settings used. */
  config: ResolvedSpeculativeConfig;
  /** Sampling temperature used (0: greedy). */
  temperature: number;
  /** Acceptance statistics over every round of every prompt. */
  stats: AcceptanceStats;
  /** New tokens per second after prefill with the target alone (null when not measured). */
  targetTokensPerSecond: number | null;
  /** New tokens per second after prefill with speculation (null when not measured). */
  speculativeTokensPerSecond: number | null;
  /** speculativeTokensPerSecond / targetTokensPerSecond (null when not measured). */
  speedup: number | null;
  /** At temperature 0: whether every speculative output equals the target's greedy output. */
  matchesTargetGreedy: boolean | null;
  /** Per-prompt results, in prompt order. */
  samples: SampleResult[];
}

/**
 * The measurement of `deno task eval`: speculative decoding of every prompt (acceptance statistics), and
 * optionally target-only decoding of the same prompts with lib/models/generate.ts for tokens/s and, at
 * temperature 0, an exact comparison of the outputs. Speeds count new tokens after the first (which the
 * prefill yields in both methods) over the decode time, with every program built by an untimed run first.
 */
export function runSpeculativeEval(
  target: TargetModel,
  draft: Eagle3Draft,
  prompts: number[][],
  opts: SpeculativeEvalOptions,
): Promise<SpeculativeEvalResult> {
  return runDecoderEval(
    target,
    new SpeculativeDecoder(target, draft, opts.draftToTarget, opts),
    prompts,
    opts,
  );
}

/** What generates speculatively for {@link runDecoderEval}: an EAGLE-3 or a DFlash decoder. */
export interface SpeculativeGenerator {
  /** The speculation settings (DFlash: a chain of block size − 1 drafts). */
  readonly config: ResolvedSpeculativeConfig;
  /** One sequence after `prompt`. */
  generate(prompt: number[], opts: SpeculativeGenerateOptions): Promise<SpeculativeOutput>;
  /** Frees the decoder's sessions. */
  destroy(): void;
}

/** {@link runSpeculativeEval} with any {@link SpeculativeGenerator} (which it destroys at the end). */
export async function runDecoderEval(
  target: TargetModel,
  dec: SpeculativeGenerator,
  prompts: number[][],
  opts: Omit<SpeculativeEvalOptions, "draftToTarget" | "numSteps" | "topk">,
): Promise<SpeculativeEvalResult> {
  const measure = opts.measureSpeed ?? true;
  const temperature = opts.temperature ?? 0;
  const gen = new Generator(target);
  const samples: SampleResult[] = [];
  try {
    for (const [i, prompt] of prompts.entries()) {
      const index = opts.promptIndices?.[i] ?? i;
      const g = { ...opts, seed: (opts.seed ?? 0) + index };
      if (measure) await dec.generate(prompt, g);
      const output = await dec.generate(prompt, g);
      let plain: number[] | null = null, plainSeconds: number | null = null;
      if (measure || temperature === 0) {
        const runPlain = async () => {
          let t0 = 0;
          const tokens = (await gen.generate([prompt], {
            maxNewTokens: opts.maxNewTokens,
            temperature,
            topP: opts.topP,
            seed: g.seed,
            eosTokenIds: opts.eosTokenIds,
            onToken: () => t0 ||= performance.now(),
          }))[0];
          return { tokens, seconds: t0 ? (performance.now() - t0) / 1000 : 0 };
        };
        if (measure) await runPlain();
        const r = await runPlain();
        plain = r.tokens;
        plainSeconds = r.seconds;
      }
      const result = { prompt, output, targetTokens: plain, targetDecodeSeconds: plainSeconds };
      samples.push(result);
      opts.onSample?.(index, result);
    }
    return summarizeSpeculativeEval(samples, dec.config, temperature, measure);
  } finally {
    dec.destroy();
    gen.destroy();
  }
}

/**
 * The {@link SpeculativeEvalResult} of per-prompt results (in prompt order): acceptance statistics over every
 * round; speeds (when `measured`) as new tokens after the first over the summed decode seconds, for
 * speculation and for the target alone; at temperature 0, whether every output is the target's own.
 */
export function summarizeSpeculativeEval(
  samples: SampleResult[],
  config: ResolvedSpeculativeConfig,
  temperature: number,
  measured: boolean,
): SpeculativeEvalResult {
  let specTokens = 0, specTime = 0, targetTokens = 0, targetTime = 0;
  for (const s of samples) {
    specTokens += Math.max(0, s.output.tokens.length - 1);
    specTime += s.output.decodeSeconds;
    targetTokens += Math.max(0, (s.targetTokens?.length ?? 1) - 1);
    targetTime += s.targetDecodeSeconds ?? 0;
  }
  const targetTps = measured && targetTime > 0 ? targetTokens / targetTime : null;
  const specTps = measured && specTime > 0 ? specTokens / specTime : null;
  return {
    config,
    temperature,
    stats: acceptanceStats(samples.flatMap((s) => s.output.rounds), config.numSteps),
    targetTokensPerSecond: targetTps,
    speculativeTokensPerSecond: specTps,
    speedup: targetTps && specTps ? specTps / targetTps : null,
    matchesTargetGreedy: temperature === 0
      ? samples.every((s) => s.targetTokens !== null && sameTokens(s.targetTokens, s.output.tokens))
      : null,
    samples,
  };
}

function sameTokens(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}
