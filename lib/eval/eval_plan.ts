/**
 * The memory plan of an evaluation (lib/models/memory_plan.ts), made before anything is allocated: the draft
 * (loaded before the target, or a random one after it) and the target, then each prompt as
 * ./speculative.ts `runSpeculativeEval` meets it, replayed through the buffer pool's size classes and reuse:
 * the speculative sessions (rebuilt when a prompt needs larger caches) and their program caches (./
 * target_infer.ts, ./draft_infer.ts), and plain decoding's caches and programs (lib/models/generate.ts). The
 * tensor lists are ./eval_memory.ts.
 *
 * What the tokens decide is taken at its largest: no EOS before --max-new-tokens, every accept length from 1
 * to num-steps + 1 met (one draft extension program each), the cache compaction of a tree (topk > 1) built.
 */
import type { DraftConfig } from "../models/draft_config.ts";
import { eagle3ParamShapes } from "../models/eagle3.ts";
import {
  linearBlockRows,
  type MemoryPlan,
  PLAN_CATEGORIES,
  type PlanCategoryKey,
  Replay,
  type TargetPlanInput,
  targetSplits,
  targetWeightCategories,
} from "../models/memory_plan.ts";
import { type PlannedTensor, targetRopePositions } from "../models/target_memory.ts";
import { PLAIN_CACHE_ROUNDING, STEP_PROGRAMS_KEPT } from "../models/generate.ts";
import {
  auxBlockRows,
  cachedPassTensors,
  compactTensors,
  draftExtendTensors,
  draftSessionTensors,
  draftStepTensors,
  draftWeightTensors,
  type EvalSplits,
  plainCacheTensors,
  targetSessionTensors,
  verifyTensors,
} from "./eval_memory.ts";
import { type ResolvedSpeculativeConfig, sessionSizes } from "./speculative.ts";

/** What the plan of an evaluation is made from. */
export interface EvalPlanInput extends TargetPlanInput {
  /** The draft's config. */
  draft: DraftConfig;
  /** A random draft ("random"): allocated after the target; else loaded before it. */
  randomDraft: boolean;
  /** The lengths of the prompts this process decodes, in order. */
  promptLengths: number[];
  /** The speculation settings. */
  spec: ResolvedSpeculativeConfig;
  /** New tokens per prompt. */
  maxNewTokens: number;
  /** Whether speeds are measured (each decoding run twice, plain decoding too). */
  measureSpeed: boolean;
  /** 0: greedy (plain decoding runs for the comparison even without speeds). */
  temperature: number;
}

/** Tensors with logits-sized rows, counted as logits. */
const LOGITS = /logits|head rows/;

/** Allocations that can be freed: each tensor's pooled size and category, as {@link Replay} returns them. */
type Allocation = ReturnType<Replay["allocate"]>;

/** Weights: bound in row blocks where they are over one binding (lib/ops/matmul.ts `linear`, row splits). */
const WEIGHTS = new Set<PlanCategoryKey>(["targetLayers", "targetEnds", "evalDraft"]);

/**
 * A replay with the logits split out of every allocation, and the largest tensor bound whole; with `only`, every
 * allocation in that one category (a training run's speculative decoding at its evaluations).
 */
export class EvalReplay {
  largestBound: PlannedTensor & { key: PlanCategoryKey } = { label: "none", bytes: 0, key: "evalPasses" };

  constructor(readonly replay: Replay, readonly only: PlanCategoryKey | null = null) {}

  allocate(key: PlanCategoryKey, tensors: PlannedTensor[]): Allocation {
    if (this.only) return this.replay.allocate(this.only, null, tensors);
    if (!WEIGHTS.has(key)) {
      for (const t of tensors) if (t.bytes > this.largestBound.bytes) this.largestBound = { ...t, key };
    }
    const logits = tensors.filter((t) => LOGITS.test(t.label));
    return [
      ...this.replay.allocate(key, null, tensors.filter((t) => !LOGITS.test(t.label))),
      ...this.replay.allocate("evalLogits", null, logits),
    ];
  }

  free(a: Allocation): void {
    this.replay.free(a);
  }
}

/** lib/gpu/program_cache.ts `ProgramCache` over the replay: the `capacity` most recently used kept. */
class ProgramsKept {
  readonly #entries = new Map<string | number, Allocation>();

  constructor(readonly r: EvalReplay, readonly capacity: number) {}

  use(key: string | number, category: PlanCategoryKey, tensors: () => PlannedTensor[]): void {
    const found = this.#entries.get(key);
    if (found) {
      this.#entries.delete(key);
      this.#entries.set(key, found);
      return;
    }
    this.#entries.set(key, this.r.allocate(category, tensors()));
    for (const [old, a] of this.#entries) {
      if (this.#entries.size <= this.capacity) break;
      this.#entries.delete(old);
      this.r.free(a);
    }
  }

  destroy(): void {
    for (const a of this.#entries.values()) this.r.free(a);
    this.#entries.clear();
  }
}

/** What the replay of speculative decoding needs: the target and draft, the device, the speculation. */
export type SpeculativeReplayInput = Pick<
  EvalPlanInput,
  "target" | "weights" | "device" | "draft" | "spec" | "maxNewTokens"
>;

/** The speculative decoder's sessions and programs (./speculative.ts `SpeculativeDecoder`). */
export class SpeculativeReplay {
  #session: { maxLen: number; auxRows: number; auxBlocks: number; tensors: Allocation[] } | null = null;
  #prefills!: ProgramsKept;
  #verifies!: ProgramsKept;
  #compacts!: ProgramsKept;
  #extends!: ProgramsKept;
  #step: Allocation | null = null;

  constructor(readonly r: EvalReplay, readonly i: SpeculativeReplayInput, readonly splits: EvalSplits) {}

  /** One `generate` of a prompt of L tokens (see the module comment for what is taken at its largest). */
  generate(L: number): void {
    const { numSteps, topk, numDraftTokens: N } = this.i.spec, target = this.i.target;
    this.#sessions(L);
    this.#prefills.use(L, "evalPasses", () => cachedPassTensors(target, 1, L, this.splits, false));
    const maxNew = this.i.maxNewTokens;
    if (maxNew <= 1) return;
    this.#extend(L);
    if (numSteps > 1 && !this.#step) {
      this.#step = this.r.allocate("evalPasses", draftStepTensors(this.i.draft, topk, numSteps, this.splits));
    }
    this.#verifies.use(N, "evalPasses", () => verifyTensors(target, N, this.splits));
    // An extension follows a round only when tokens remain: accept lengths up to maxNew − 2.
    for (let R = 1; R <= Math.min(numSteps + 1, maxNew - 2); R++) {
      if (topk > 1) this.#compacts.use(N, "evalPasses", () => compactTensors(target, N));
      this.#extend(R);
    }
  }

  #extend(R: number): void {
    const s = this.#session!;
    this.#extends.use(
      R,
      "evalPasses",
      () => draftExtendTensors(this.i.draft, this.i.device, R, s.auxBlocks, this.splits),
    );
  }

  #sessions(L: number): void {
    const { numSteps, topk, numDraftTokens: N } = this.i.spec;
    const size = sessionSizes(L, this.i.maxNewTokens, { numSteps, topk, numDraftTokens: N });
    const s = this.#session;
    if (s && s.maxLen >= size.needed && s.auxRows >= size.rows) return;
    this.destroy();
    const t = targetSessionTensors(this.i.target, this.i.device, size.maxLen, size.auxRows);
    const d = draftSessionTensors(this.i.draft, { maxLen: size.maxLen, maxExtendRows: size.auxRows, topk });
    this.#session = {
      maxLen: size.maxLen,
      auxRows: size.auxRows,
      auxBlocks: auxBlockRows(this.i.device, size.auxRows, this.i.target.hiddenSize).length,
      tensors: [
        this.r.allocate("evalCaches", t.caches),
        this.r.allocate("evalAux", t.aux),
        this.r.allocate("evalPasses", t.rest),
        this.r.allocate("evalCaches", d.caches),
        this.r.allocate("evalPasses", d.rest),
      ],
    };
    this.#prefills = new ProgramsKept(this.r, 2);
    this.#verifies = new ProgramsKept(this.r, 8);
    this.#compacts = new ProgramsKept(this.r, 8);
    this.#extends = new ProgramsKept(this.r, 8);
    this.#step = null;
  }

  /** Frees the sessions, as the decoder does before it makes larger ones (the step program's tensors too). */
  destroy(): void {
    if (!this.#session) return;
    for (const c of [this.#extends, this.#prefills, this.#verifies, this.#compacts]) c.destroy();
    if (this.#step) this.r.free(this.#step);
    for (const a of this.#session.tensors) this.r.free(a);
    this.#session = null;
  }
}

/** Plain decoding (lib/models/generate.ts `Generator`): a KV cache per cache length, the programs kept. */
class PlainReplay {
  readonly #caches = new Set<number>();
  readonly #steps: ProgramsKept;

  constructor(readonly r: EvalReplay, readonly i: EvalPlanInput, readonly splits: EvalSplits) {
    this.#steps = new ProgramsKept(r, STEP_PROGRAMS_KEPT);
  }

  /** A prompt of L tokens: its prefill, then a decode pass per new token but the last (no EOS). */
  generate(L: number): void {
    const cfg = this.i.target, maxNew = this.i.maxNewTokens;
    const needed = L + maxNew - 1;
    const maxLen = Math.min(
      Math.ceil(needed / PLAIN_CACHE_ROUNDING) * PLAIN_CACHE_ROUNDING,
      targetRopePositions(cfg),
    );
    if (!this.#caches.has(maxLen)) {
      this.#caches.add(maxLen);
      this.r.allocate("evalCaches", plainCacheTensors(cfg, 1, maxLen));
    }
    this.#steps.use(`1:${L}:0:${maxLen}`, "evalPlain", () => cachedPassTensors(cfg, 1, L, this.splits, true));
    for (let len = L; len <= L + maxNew - 2; len++) {
      this.#steps.use(
        `1:1:${len}:${maxLen}`,
        "evalPlain",
        () => cachedPassTensors(cfg, 1, 1, this.splits, true),
      );
    }
  }
}

/** How the target's and the draft's matrices split on the device (lib/ops/matmul.ts `linear` over row blocks). */
export function evalSplits(i: TargetPlanInput & { draft: DraftConfig }): EvalSplits {
  const shapes = eagle3ParamShapes(i.draft);
  const blocks = (name: string) => linearBlockRows(i, shapes[name][0], shapes[name][1], [4]);
  const layer = Object.keys(shapes).filter((n) => n.startsWith("midlayer.") && shapes[n].length === 2);
  return {
    ...targetSplits(i),
    draftMatrices: {
      fc: blocks("fc.weight"),
      layer: layer.flatMap(blocks),
      lmHead: blocks("lm_head.weight"),
    },
  };
}

/** The plan of an evaluation (see the module comment). */
export function planEval(i: EvalPlanInput): MemoryPlan {
  const r = new EvalReplay(new Replay(i.device.maxBufferSize));
  if (!i.randomDraft) r.allocate("evalDraft", draftWeightTensors(i.draft));
  for (const [key, tensors] of targetWeightCategories(i, { layers: true })) r.allocate(key, tensors);
  if (i.randomDraft) r.allocate("evalDraft", draftWeightTensors(i.draft));
  const splits = evalSplits(i);
  const spec = new SpeculativeReplay(r, i, splits), plain = new PlainReplay(r, i, splits);
  const runs = i.measureSpeed ? 2 : 1;
  for (const L of i.promptLengths) {
    for (let k = 0; k < runs; k++) spec.generate(L);
    if (i.measureSpeed || i.temperature === 0) { for (let k = 0; k < runs; k++) plain.generate(L); }
  }
  const replayed = r.replay.plan();
  // The replay's parked buffers are freed sessions and programs here, not other batch shapes.
  const order = Object.keys(PLAN_CATEGORIES);
  const categories = replayed.categories.map((c) =>
    c.key === "otherShapes" ? { ...c, key: "evalParked" as const, ...PLAN_CATEGORIES.evalParked } : c
  ).sort((a, b) => order.indexOf(a.key) - order.indexOf(b.key));
  return {
    ...replayed,
    categories,
    largestShape: { batch: 1, seqLen: Math.max(...i.promptLengths) },
    shapes: new Set(i.promptLengths).size,
    largestBound: r.largestBound,
    header: `memory plan of the evaluation (${i.promptLengths.length} prompts, the longest ${
      Math.max(...i.promptLengths)
    } tokens, ${i.maxNewTokens} new tokens each):`,
  };
}
