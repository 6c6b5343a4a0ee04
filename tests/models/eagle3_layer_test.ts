/**
 * The EAGLE-3 draft layer shared by training and inference: the activation record's byte count, and the
 * inference session (KV cache, tree attention) against the training layout (TTT attention) on the same rows.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu, randomArray } from "../gpu.ts";
import { Program } from "../../lib/gpu/program.ts";
import { DTYPE_BYTES, Tensor } from "../../lib/tensor.ts";
import { type DraftConfig, parseDraftConfig } from "../../lib/models/draft_config.ts";
import { buildEagle3Step, Eagle3Draft } from "../../lib/models/eagle3.ts";
import { eagle3ActivationBytes, eagle3Activations } from "../../lib/models/eagle3_activations.ts";
import { eagle3FcForward, eagle3HeadForward, eagle3LayerForward } from "../../lib/models/eagle3_layer.ts";
import { TttAttention } from "../../lib/models/eagle3_ttt_attention.ts";
import { ropeTable } from "../../lib/ops/rope.ts";
import { asRowSplit } from "../../lib/ops/row_split.ts";
import { DraftSession } from "../../lib/eval/draft_infer.ts";
import { TINY_DRAFT_JSON } from "./draft_fixtures.ts";
import type { VocabMapping } from "../../lib/data/vocab.ts";

const CFG: DraftConfig = parseDraftConfig(TINY_DRAFT_JSON, "test draft config");

function identityVocab(): VocabMapping {
  const Vd = CFG.draftVocabSize, V = CFG.vocabSize;
  return {
    draftVocabSize: Vd,
    targetVocabSize: V,
    d2t: new BigInt64Array(Vd),
    t2d: Uint8Array.from({ length: V }, (_, i) => i < Vd ? 1 : 0),
    draftToTarget: Int32Array.from({ length: Vd }, (_, i) => i),
  };
}

/** Every distinct tensor reachable in a record. */
function tensorsOf(x: unknown, out = new Set<Tensor>()): Set<Tensor> {
  if (x instanceof Tensor) out.add(x);
  else if (Array.isArray(x)) x.forEach((y) => tensorsOf(y, out));
  else if (x && typeof x === "object") Object.values(x).forEach((y) => tensorsOf(y, out));
  return out;
}

Deno.test(
  { name: "eagle3 step: the activation record holds exactly the counted bytes", ...needsGpu },
  async () => {
    const draft = Eagle3Draft.create(gpu!, CFG, { seed: 1 });
    const embedding = Tensor.zeros(gpu!, [CFG.vocabSize, CFG.hiddenSize], "f32", "embed");
    try {
      for (const [train, mlpSaved] of [[true, "f32"], [false, "f32"], [true, "f16"]] as const) {
        const shape = { batch: 2, seqLen: 12, tttLength: 3, train, mlpSaved };
        const step = await buildEagle3Step(draft, { ...shape, embedding, vocab: identityVocab() });
        try {
          let bytes = 0;
          for (const t of tensorsOf(step.activations)) bytes += t.size * DTYPE_BYTES[t.dtype];
          assert.equal(step.activationBytes, bytes, `train=${train} ${mlpSaved}: counted = allocated`);
          assert.equal(eagle3ActivationBytes(CFG, shape), bytes);
        } finally {
          step.destroy();
        }
      }
      const at = (train: boolean, tttLength: number) =>
        eagle3ActivationBytes(CFG, { batch: 2, seqLen: 12, tttLength, train });
      assert.ok(at(false, 7) < at(true, 7), "evaluation keeps one position's activations");
      assert.ok(at(true, 3) < at(true, 7), "training keeps every position's");
      // f16 gate and up: 2 bytes instead of 4 for each of K positions' two [B·T, I] products.
      const f16 = eagle3ActivationBytes(CFG, {
        batch: 2,
        seqLen: 12,
        tttLength: 7,
        train: true,
        mlpSaved: "f16",
      });
      assert.equal(at(true, 7) - f16, 7 * 2 * 2 * 24 * CFG.intermediateSize);
    } finally {
      embedding.destroy();
      draft.destroy();
    }
  },
);

/** The draft configs whose layer wiring differs: EAGLE-3, EAGLE-3.1 as served, SpecForge's norm_output false. */
const VARIANTS: Array<[string, DraftConfig]> = [
  ["EAGLE-3", CFG],
  ["EAGLE-3.1 (fc_norm, normed state fed back)", { ...CFG, fcNorm: true, feedNormedHidden: true }],
  ["SpecForge norm_output false (logits without the final norm)", { ...CFG, headNorm: false }],
];

for (const [variant, cfg] of VARIANTS) {
  Deno.test({
    name:
      `eagle3 inference (KV cache, tree attention) equals the training layout at TTT positions 0 and 1: ${variant}`,
    ...needsGpu,
  }, async () => {
    const g = gpu!, R = 6, H = cfg.hiddenSize, Ht = cfg.targetHiddenSize, Vd = cfg.draftVocabSize;
    const draft = Eagle3Draft.create(g, cfg, { seed: 3 });
    // Norm weights away from 1, so that a norm applied to the wrong tensor shows.
    for (const [name, t] of draft.entries()) {
      if (t.shape.length === 1) {
        t.write(Float32Array.from(randomArray(t.size, t.size + name.length), (x) => 1 + 0.3 * x));
      }
    }
    const embedding = Tensor.fromArray(
      g,
      randomArray(cfg.vocabSize * H, 5),
      [cfg.vocabSize, H],
      "f32",
      "embed",
    );
    const aux = Tensor.fromArray(g, randomArray(R * 3 * Ht, 6), [R, 3 * Ht], "f32", "aux");
    const ids0 = Int32Array.from({ length: R }, (_, i) => (7 * i + 3) % cfg.vocabSize);
    const ids1 = Int32Array.from({ length: R }, (_, i) => (5 * i + 11) % cfg.vocabSize);
    // Training layout: one sequence of R rows, TTT positions 0 and 1, logits of each position.
    const shape = { batch: 1, seqLen: R, tttLength: 2, train: false };
    const p = new Program(g, "ttt positions 0 and 1");
    const session = new DraftSession(draft, embedding, aux, {
      maxLen: 16,
      maxExtendRows: R,
      topk: 1,
      numSteps: 2,
    });
    try {
      const act = eagle3Activations((s, dtype, label) => p.scratch(s, dtype, label), cfg, shape);
      const table = ropeTable(cfg, cfg.headDim, R + 1);
      act.attention.cos.write(table.cos);
      act.attention.sin.write(table.sin);
      const lengths = p.scratch([1], "i32", "lengths");
      lengths.write(Int32Array.from([R]));
      const logits: Tensor[] = [];
      await eagle3FcForward(p, draft, aux, act.fcOut, act.fc);
      let hidden = act.fcOut;
      for (const [k, ids] of [ids0, ids1].entries()) {
        const idsK = p.scratch([R], "i32", `ids ${k}`);
        idsK.write(ids);
        const keys = k === 0 ? {} : { k: act.attention.kStep, v: act.attention.vStep };
        const layer = { ...act.layer[0], ...keys, out: k === 0 ? act.layer[0].out : act.altOut! };
        const attention = new TttAttention(cfg, shape, act.attention, lengths, k, 0);
        await eagle3LayerForward(
          p,
          draft,
          { ids: idsK, embedding: asRowSplit(embedding), hidden },
          layer,
          attention,
        );
        const head = { ...act.head[k % act.head.length], logits: p.scratch([R, Vd], "f32", `logits ${k}`) };
        await eagle3HeadForward(p, draft, layer.out, head);
        logits.push(head.logits);
        hidden = cfg.feedNormedHidden ? head.normed : layer.out;
      }
      p.run();
      const want0 = await logits[0].readFloat(), want1 = await logits[1].readFloat();
      const row = (x: Float32Array, r: number) => x.subarray(r * Vd, (r + 1) * Vd);
      // Inference: committed rows one at a time (each extend returns its row's logits), then draft step 1.
      for (let r = 0; r < R; r++) {
        const got = await session.extend(r, [r], [ids0[r]]);
        assertClose(got, row(want0, r), `position 0, row ${r}`, { atol: 1e-5, rtol: 1e-4 });
      }
      const got1 = await session.step(1, R, [0], [ids1[R - 1]], [[0]]);
      assertClose(got1, row(want1, R - 1), "position 1, last row", { atol: 1e-5, rtol: 1e-4 });
    } finally {
      session.destroy();
      p.destroy();
      for (const t of [embedding, aux]) t.destroy();
      draft.destroy();
    }
  });
}

Deno.test({
  name:
    "eagle3 step: an embedding in row blocks gives the one-tensor step's metrics and gradients bit for bit",
  ...needsGpu,
}, async () => {
  const g = gpu!, V = CFG.vocabSize, H = CFG.hiddenSize, B = 2, T = 8, N = B * T;
  const values = randomArray(V * H, 21, 0.5);
  const whole = Tensor.fromArray(g, values, [V, H], "f32", "embed");
  const cuts = [0, 20, 21, V]; // uneven blocks, one of a single row
  const blocks = cuts.slice(0, -1).map((row0, i) => ({
    row0,
    tensor: Tensor.fromArray(
      g,
      values.slice(row0 * H, cuts[i + 1] * H),
      [cuts[i + 1] - row0, H],
      "f32",
      `block ${i}`,
    ),
  }));
  const split = { rows: V, cols: H, blocks };
  const run = async (embedding: Tensor | typeof split) => {
    const draft = Eagle3Draft.create(g, CFG, { seed: 9 });
    const step = await buildEagle3Step(draft, {
      batch: B,
      seqLen: T,
      tttLength: 3,
      embedding,
      vocab: identityVocab(),
    });
    try {
      step.aux.write(randomArray(N * 3 * CFG.targetHiddenSize, 22));
      step.ids.write(Int32Array.from({ length: N }, (_, i) => (i * 13 + 5) % V));
      step.lengths.write(Int32Array.from([T, T - 3]));
      step.lossMask.write(Float32Array.from({ length: N }, (_, i) => i % T > 1 ? 1 : 0));
      step.teacherLogits.write(randomArray(N * CFG.draftVocabSize, 23, 3));
      step.teacherArgmax.write(Int32Array.from({ length: N }, (_, i) => (i * 7) % CFG.draftVocabSize));
      step.run();
      return { metrics: await step.readMetrics(), grads: await draft.getGrads() };
    } finally {
      step.destroy();
      draft.destroy();
    }
  };
  try {
    const a = await run(whole), b = await run(split);
    assert.deepEqual(b.metrics, a.metrics);
    for (const [name, grad] of a.grads) assert.deepEqual(b.grads.get(name), grad, name);
  } finally {
    whole.destroy();
    for (const { tensor } of blocks) tensor.destroy();
  }
});
