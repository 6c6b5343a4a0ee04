/**
 * The head in windows of rows (lib/models/eagle3_head_loss.ts): a step whose logits, teacher p^k and KL
 * gradient hold 64 rows at a time gives the whole-batch step's metrics and gradients, for the KL loss, the
 * lambda LK loss (two passes), an evaluation step, and EAGLE-3.1's fed-forward normed state; and a step that
 * makes the teacher logits window by window (from the target's final hidden states and a split head, or from a
 * stored top-k) gives the step fed the whole teacher tensor bit for bit.
 */
import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray } from "../gpu.ts";
import { Tensor } from "../../lib/tensor.ts";
import { parseDraftConfig } from "../../lib/models/draft_config.ts";
import {
  buildEagle3Step,
  Eagle3Draft,
  eagle3ParamNames,
  type Eagle3Step,
  type Eagle3StepOptions,
  type TeacherSource,
} from "../../lib/models/eagle3.ts";
import { headWindows } from "../../lib/models/eagle3_head_loss.ts";
import { linearRowBlocks, type RowSplitMatrix } from "../../lib/ops/row_split.ts";
import { type Program, runOnce } from "../../lib/gpu/program.ts";
import { headTeacher, topkTeacher } from "../../lib/models/teacher_source.ts";
import { scatterTopkTeacher } from "../../lib/ops/features.ts";
import { targetToDraftMap } from "../../lib/ops/eagle3_teacher.ts";
import { identityVocabMapping } from "../../lib/data/vocab.ts";
import { assertScaled, TINY_DRAFT_JSON } from "./draft_fixtures.ts";

const B = 2, T = 100, K = 3, N = B * T; // windows of 64, 64, 64, 8 rows, crossing the sequence boundary at 100

/** Random step inputs: sequences of 100 and 77 tokens, the loss on most of them, a teacher over the vocabulary. */
function writeInputs(step: Eagle3Step, Vd: number, V: number, H: number, teacher?: Float32Array): void {
  const r = randomArray(N * 4, 5);
  step.aux.write(randomArray(N * 3 * H, 6, 1));
  step.ids.write(Int32Array.from({ length: N }, (_, i) => Math.floor(Math.abs(r[i]) * V) % V));
  step.lengths.write(Int32Array.of(T, 77));
  step.lossMask.write(
    Float32Array.from({ length: N }, (_, i) => (i % T) < (i < T ? T : 77) && r[N + i] > -0.6 ? 1 : 0),
  );
  const logits = teacher ?? randomArray(N * Vd, 7, 3);
  if (!step.teacherSource) step.teacherLogits.write(logits as Float32Array<ArrayBuffer>);
  step.teacherArgmax.write(Int32Array.from({ length: N }, (_, i) => {
    let best = 0;
    for (let v = 1; v < Vd; v++) if (logits[i * Vd + v] > logits[i * Vd + best]) best = v;
    return best;
  }));
  const maxSum = new Float32Array(2 * N);
  for (let i = 0; i < N; i++) {
    let m = -Infinity, s = 0;
    for (let v = 0; v < Vd; v++) m = Math.max(m, logits[i * Vd + v]);
    for (let v = 0; v < Vd; v++) s += Math.exp(logits[i * Vd + v] - m);
    [maxSum[2 * i], maxSum[2 * i + 1]] = [m, s * 1.25]; // mass outside the draft vocabulary too
  }
  step.teacherMaxSum.write(maxSum);
}

const CASES: Array<[string, Partial<Eagle3StepOptions>, boolean]> = [
  ["KL loss", {}, false],
  ["lambda LK loss", { lk: { type: "lambda", klScale: 1, klDecay: 1 } }, false],
  ["evaluation", { train: false, acceptance: true }, false],
  ["EAGLE-3.1, lambda LK loss", { lk: { type: "lambda", klScale: 1, klDecay: 1 } }, true],
];

for (const [name, extra, eagle31] of CASES) {
  Deno.test(
    { name: `eagle3 head in 64-row windows = the whole batch at once: ${name}`, ...needsGpu },
    async () => {
      const cfg = parseDraftConfig({
        ...TINY_DRAFT_JSON,
        draft_vocab_size: 64,
        fc_norm: eagle31,
        norm_output: eagle31,
      }, "draft");
      const g = gpu!, H = cfg.hiddenSize, V = cfg.vocabSize;
      const draft = Eagle3Draft.create(g, cfg, { seed: 3 });
      const embedding = Tensor.fromArray(g, randomArray(V * H, 8, 0.5), [V, H], "f32", "embed");
      const opts = {
        batch: B,
        seqLen: T,
        tttLength: K,
        embedding,
        vocab: identityVocabMapping(V),
        acceptance: true,
        ...extra,
      };
      const steps: Eagle3Step[] = [];
      try {
        const results = [];
        for (const headRows of [null, 64]) {
          const step = await buildEagle3Step(draft, { ...opts, headRows });
          steps.push(step);
          assert.equal(step.activations.head[0].logits.shape[0], headRows ?? N);
          writeInputs(step, cfg.draftVocabSize, V, H);
          await draft.zeroGrads();
          step.run();
          results.push({ metrics: await step.readMetrics(), grads: await draft.getGrads() });
        }
        const [whole, windowed] = results;
        assertScaled(windowed.metrics.ploss, whole.metrics.ploss, "ploss_k", 1e-6);
        assert.deepEqual(windowed.metrics.correct, whole.metrics.correct, "acc_k numerators");
        assert.deepEqual(windowed.metrics.total, whole.metrics.total, "acc_k denominators");
        assertScaled(windowed.metrics.acceptance!, whole.metrics.acceptance!, "α_k", 1e-6);
        assert.ok(whole.metrics.acceptance!.every((a) => a > 0));
        if (opts.train !== false) {
          for (const p of eagle3ParamNames(cfg)) {
            const want = whole.grads.get(p)!;
            assert.ok(want.some((x) => x !== 0), `${p}: a gradient`);
            assertScaled(windowed.grads.get(p)!, want, `grad ${p}`, 2e-6);
          }
        }
      } finally {
        for (const s of steps) s.destroy();
        draft.destroy();
        embedding.destroy();
      }
    },
  );
}

Deno.test(
  { name: "eagle3 head windows: rows in multiples of 64, refused otherwise", ...needsGpu },
  async () => {
    assert.deepEqual(headWindows(200, 64), [[0, 64], [64, 64], [128, 64], [192, 8]]);
    assert.deepEqual(headWindows(200, 256), [[0, 200]]);
    const cfg = parseDraftConfig(TINY_DRAFT_JSON, "draft");
    const draft = Eagle3Draft.create(gpu!, cfg, { seed: 1 });
    const embedding = Tensor.zeros(gpu!, [cfg.vocabSize, cfg.hiddenSize], "f32", "embed");
    try {
      await assert.rejects(
        () =>
          buildEagle3Step(draft, {
            batch: 1,
            seqLen: 8,
            tttLength: 2,
            embedding,
            vocab: identityVocabMapping(64),
            headRows: 48,
          }),
        /headRows must be a positive multiple of 64, got 48/,
      );
    } finally {
      draft.destroy();
      embedding.destroy();
    }
  },
);

/**
 * The step fed the whole teacher tensor (made by `recordWhole` over all N rows) against the step that makes it
 * per window from `source`: metrics and gradients bit for bit.
 */
async function assertSameAsWhole(
  draft: Eagle3Draft,
  opts: Eagle3StepOptions,
  source: TeacherSource,
  recordWhole: (p: Program, out: Tensor) => Promise<void>,
  what: string,
): Promise<void> {
  const cfg = draft.config, g = draft.gpu, Vd = cfg.draftVocabSize;
  const whole = Tensor.empty(g, [N, Vd], "f32", "teacher logits");
  const steps: Eagle3Step[] = [];
  try {
    await runOnce(g, "whole teacher", (p) => recordWhole(p, whole));
    const teacher = await whole.readFloat();
    const results = [];
    for (const teacherSource of [null, source]) {
      const step = await buildEagle3Step(draft, { ...opts, teacherSource });
      steps.push(step);
      // The windowed producer holds a window and the K rows past it, not B·T rows.
      assert.equal(step.teacherLogits.shape[0], teacherSource ? 64 + K : N);
      writeInputs(step, Vd, cfg.vocabSize, cfg.hiddenSize, teacher);
      await draft.zeroGrads();
      step.run();
      results.push({ metrics: await step.readMetrics(), grads: await draft.getGrads() });
    }
    const [given, made] = results;
    assert.ok(given.metrics.total.some((t) => t > 0));
    assert.deepEqual(made.metrics, given.metrics, `${what}: metrics bit for bit`);
    if (opts.train !== false) {
      for (const p of eagle3ParamNames(cfg)) {
        assert.ok(given.grads.get(p)!.some((x) => x !== 0), `${p}: a gradient`);
        assert.deepEqual(made.grads.get(p), given.grads.get(p), `${what}: grad ${p} bit for bit`);
      }
    }
  } finally {
    for (const s of steps) s.destroy();
    whole.destroy();
  }
}

for (const [name, extra, eagle31] of CASES) {
  Deno.test({
    name: `eagle3 teacher logits made per window (head, top-k) = the whole tensor: ${name}`,
    ...needsGpu,
  }, async () => {
    const cfg = parseDraftConfig({
      ...TINY_DRAFT_JSON,
      draft_vocab_size: 64,
      fc_norm: eagle31,
      norm_output: eagle31,
    }, "draft");
    const g = gpu!, H = cfg.hiddenSize, V = cfg.vocabSize, Vd = cfg.draftVocabSize, Ht = cfg.targetHiddenSize;
    const draft = Eagle3Draft.create(g, cfg, { seed: 3 });
    const embedding = Tensor.fromArray(g, randomArray(V * H, 8, 0.5), [V, H], "f32", "embed");
    const hidden = Tensor.fromArray(g, randomArray(N * Ht, 11, 1), [N, Ht], "f32", "final hidden");
    // The lm_head rows of the draft vocabulary in two row blocks (40 + 24 rows), as a large head is split.
    const w = randomArray(Vd * Ht, 12, 0.3);
    const head: RowSplitMatrix = {
      rows: Vd,
      cols: Ht,
      blocks: [[0, 40], [40, 64]].map(([a, b]) => ({
        row0: a,
        tensor: Tensor.fromArray(g, w.slice(a * Ht, b * Ht), [b - a, Ht], "f32", `head ${a}`),
      })),
    };
    // A stored top-5 of every row over the target vocabulary, some of it outside the draft's.
    const k = 5, r = randomArray(N * k * 2 + N, 13, 1);
    const stored = {
      ids: Tensor.fromArray(
        g,
        Int32Array.from({ length: N * k }, (_, i) => Math.floor(Math.abs(r[i]) * 97) % V),
        [N, k],
        "i32",
        "topk ids",
      ),
      logprobs: Tensor.fromArray(
        g,
        Float32Array.from({ length: N * k }, (_, i) => -Math.abs(r[N * k + i]) * 3),
        [N, k],
        "f32",
        "topk logprobs",
      ),
      tail: Tensor.fromArray(
        g,
        Float32Array.from({ length: N }, (_, i) => -8 - Math.abs(r[2 * N * k + i])),
        [N],
        "f32",
        "tail",
      ),
      toDraft: Tensor.fromArray(
        g,
        targetToDraftMap(Int32Array.from({ length: Vd }, (_, i) => (i * 7) % V), V),
        [V],
        "i32",
        "to draft",
      ),
    };
    const opts = {
      batch: B,
      seqLen: T,
      tttLength: K,
      embedding,
      vocab: identityVocabMapping(V),
      acceptance: true,
      headRows: 64,
      ...extra,
    };
    try {
      await assertSameAsWhole(
        draft,
        opts,
        headTeacher(hidden, head),
        (p, out) => linearRowBlocks(p, hidden, head, out),
        "head",
      );
      await assertSameAsWhole(
        draft,
        opts,
        topkTeacher(stored, Vd),
        (p, out) => scatterTopkTeacher(p, { ...stored, out }),
        "top-k",
      );
    } finally {
      const tensors = [embedding, hidden, ...head.blocks.map((b) => b.tensor), ...Object.values(stored)];
      for (const t of tensors) t.destroy();
      draft.destroy();
    }
  });
}
