import assert from "node:assert/strict";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { generate } from "../../lib/models/generate.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";
import { Eagle3Draft, initEagle3Weights } from "../../lib/models/eagle3.ts";
import {
  acceptanceStats,
  evaluateAcceptance,
  resolveSpeculativeConfig,
  runSpeculativeEval,
  SpeculativeDecoder,
} from "../../lib/eval/speculative.ts";
import { samplingProbs } from "../../lib/models/generate.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { TargetSession } from "../../lib/eval/target_infer.ts";
import { DraftSession, extendWindows } from "../../lib/eval/draft_infer.ts";

const GOLDEN_LLAMA = new URL("../golden/targets/llama", import.meta.url).pathname;
const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;
const haveTinystories = await Deno.stat(`${TINYSTORIES}/model.safetensors`).then(() => true, () => false);
if (!haveTinystories) console.warn(`skipping the tinystories sampling test: ${TINYSTORIES} is absent`);

/** A draft with random weights over the full target vocabulary (identity map). */
function randomDraft(target: TargetModel, seed: number) {
  const cfg = deriveDraftConfig(target.config, { auxLayers: target.auxLayers });
  const map = Int32Array.from({ length: cfg.draftVocabSize }, (_, i) => i);
  return { draft: Eagle3Draft.create(gpu!, cfg, { seed }), map };
}

/**
 * A draft that always proposes `tokens` in order of preference: its final norm weight is zero, so its
 * logits are all 0 and top-k picks draft indices 0..k−1 (ties to the lower index), which the vocabulary map
 * sends to `tokens`. Built from the target's own frequent greedy tokens it is accepted often.
 */
function constantDraft(target: TargetModel, tokens: number[]) {
  const cfg = deriveDraftConfig(target.config, {
    draftVocabSize: tokens.length,
    auxLayers: target.auxLayers,
  });
  const weights = initEagle3Weights(cfg, 3);
  weights.set("norm.weight", new Float32Array(cfg.hiddenSize));
  return { draft: Eagle3Draft.create(gpu!, cfg, { weights }), map: Int32Array.from(tokens) };
}

/** The target's tokens by frequency in its greedy outputs. */
function frequent(outputs: number[][], n: number): number[] {
  const counts = new Map<number, number>();
  for (const t of outputs.flat()) counts.set(t, (counts.get(t) ?? 0) + 1);
  const ids = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, n).map(([t]) => t);
  // Outputs of fewer than n distinct tokens: filled with the lowest other ids (the widest tree needs 3).
  for (let t = 0; ids.length < n; t++) if (!ids.includes(t)) ids.push(t);
  return ids;
}

const PROMPTS = [[1, 17, 200, 45, 3], [1, 99], [1, 5, 5, 5, 5, 5, 5, 60, 61]];
const SHAPES = [
  { name: "chain", numSteps: 3, topk: 1 },
  { name: "tree", numSteps: 3, topk: 2, numDraftTokens: 6 },
  { name: "wide tree", numSteps: 2, topk: 3, numDraftTokens: 8 },
];

Deno.test("speculative config: chain default, bounds named", () => {
  assert.deepEqual(resolveSpeculativeConfig({ numSteps: 4, topk: 1 }), {
    numSteps: 4,
    topk: 1,
    numDraftTokens: 5,
  });
  assert.throws(() => resolveSpeculativeConfig({ numSteps: 3, topk: 2 }), /numDraftTokens is required/);
  assert.throws(() => resolveSpeculativeConfig({ numSteps: 2, topk: 2, numDraftTokens: 8 }), /2\.\.7/);
});

Deno.test("acceptance statistics: tau counts the bonus token, per-position rates", () => {
  const r = (accepted: number) => ({
    tokens: [],
    parents: [],
    path: [],
    accepted: new Array(accepted).fill(0),
    bonus: 0,
    emitted: [],
  });
  const s = acceptanceStats([r(0), r(2), r(3), r(1)], 3);
  assert.equal(s.tau, (1 + 3 + 4 + 2) / 4);
  assert.deepEqual(s.acceptedAtPosition, [0.75, 0.5, 0.25]);
  assert.deepEqual(s.conditionalAcceptance, [0.75, 2 / 3, 0.5]);
  assert.deepEqual(s.histogram, [1, 1, 1, 1]);
});

Deno.test({
  name:
    "greedy speculative decoding equals plain greedy decoding (random and predictive drafts, chain and trees)",
  ...needsGpu,
}, async () => {
  const target = await TargetModel.load(gpu!, GOLDEN_LLAMA);
  const maxNewTokens = 16;
  const plain = await generate(target, PROMPTS, { maxNewTokens, eosTokenIds: [] });
  const drafts = [
    { kind: "random", ...randomDraft(target, 7) },
    { kind: "predictive", ...constantDraft(target, frequent(plain, 4)) },
  ];
  try {
    for (const d of drafts) {
      for (const shape of SHAPES) {
        const dec = new SpeculativeDecoder(target, d.draft, d.map, shape);
        const rounds = [];
        for (const [i, prompt] of PROMPTS.entries()) {
          const out = await dec.generate(prompt, { maxNewTokens, eosTokenIds: [] });
          assert.deepEqual(out.tokens, plain[i], `${d.kind} draft, ${shape.name}, prompt ${i}`);
          rounds.push(...out.rounds);
        }
        dec.destroy();
        const stats = acceptanceStats(rounds, shape.numSteps);
        console.log(
          `${d.kind} draft, ${shape.name}: tau ${stats.tau.toFixed(3)} over ${stats.rounds} rounds`,
        );
        // The predictive draft must exercise multi-token acceptance (and the cache compaction it needs).
        if (d.kind === "predictive") assert.ok(stats.tau > 1.3, `${shape.name}: tau ${stats.tau} too low`);
      }
    }
    // EOS stops both the same way: a greedy token of prompt 0 first generated at index ≥ 2 used as EOS.
    const eos = [plain[0].find((t, i) => i >= 2 && plain[0].indexOf(t) === i)!];
    const want = await generate(target, [PROMPTS[0]], { maxNewTokens, eosTokenIds: eos });
    const got = await evaluateAcceptance(target, drafts[1].draft, [PROMPTS[0]], {
      numSteps: 3,
      topk: 1,
      maxNewTokens,
      eosTokenIds: eos,
      draftToTarget: drafts[1].map,
    });
    assert.ok(got.rounds >= 1);
    const dec = new SpeculativeDecoder(target, drafts[1].draft, drafts[1].map, { numSteps: 3, topk: 1 });
    assert.deepEqual((await dec.generate(PROMPTS[0], { maxNewTokens, eosTokenIds: eos })).tokens, want[0]);
    dec.destroy();
  } finally {
    for (const d of drafts) d.draft.destroy();
    target.destroy();
  }
});

/** χ² statistic of counts against probabilities, pooling categories expected fewer than 5 times. */
function chiSquare(counts: number[], probs: ArrayLike<number>, n: number): { chi2: number; df: number } {
  let chi2 = 0, df = -1, poolE = 0, poolO = 0;
  for (let i = 0; i < counts.length; i++) {
    const e = probs[i] * n;
    if (e < 5) {
      poolE += e;
      poolO += counts[i];
      continue;
    }
    chi2 += (counts[i] - e) ** 2 / e;
    df++;
  }
  if (poolE > 0) {
    chi2 += (poolO - poolE) ** 2 / Math.max(poolE, 1e-9);
    df++;
  }
  return { chi2, df };
}

Deno.test({
  name: "sampled speculative decoding keeps the target's distribution (χ² on tinystories, fixed seed)",
  ...needsGpu,
  ignore: needsGpu.ignore || !haveTinystories,
}, async () => {
  // The first new token t1 is sampled from the prefill's logits; the SECOND comes from tree verification,
  // and its distribution must be Σ_t1 p(t1 | P)·p(· | P, t1) at the same temperature and top-p.
  const target = await TargetModel.load(gpu!, TINYSTORIES);
  const temperature = 0.8, topP = 0.9;
  const prompt = [1, 403, 407, 261, 1154];
  const V = target.config.vocabSize;
  const rowsOf = async (seqs: number[][]) => {
    const T = seqs[0].length;
    const f = await target.forward(seqs.length, T, { logits: true });
    f.run(Int32Array.from(seqs.flat()), seqs.map(() => T));
    const logits = await f.logits!.readFloat();
    f.destroy();
    return seqs.map((_, b) =>
      samplingProbs(logits.subarray(((b + 1) * T - 1) * V, (b + 1) * T * V), temperature, topP)
    );
  };
  const [p1] = await rowsOf([prompt]);
  const support = [...p1.keys()].filter((t) => p1[t] > 0);
  const p2Given = await rowsOf(support.map((t) => [...prompt, t]));
  const expected = new Float64Array(V);
  support.forEach((t, i) => p2Given[i].forEach((q, u) => expected[u] += p1[t] * q));
  // A draft proposing the two most likely second tokens, so both acceptance and rejection happen.
  const likely = [...expected.keys()].sort((a, b) => expected[b] - expected[a]).slice(0, 2);
  const { draft, map } = constantDraft(target, likely);
  const dec = new SpeculativeDecoder(target, draft, map, { numSteps: 2, topk: 2, numDraftTokens: 4 });
  const n = 240;
  const counts = new Array<number>(V).fill(0);
  let accepted = 0;
  const seeds = rng(11);
  for (let i = 0; i < n; i++) {
    const out = await dec.generate(prompt, {
      maxNewTokens: 2,
      temperature,
      topP,
      seed: Math.floor(seeds() * 2 ** 31),
      eosTokenIds: [],
    });
    counts[out.tokens[1]]++;
    accepted += out.rounds[0].accepted.length > 0 ? 1 : 0;
  }
  dec.destroy();
  draft.destroy();
  target.destroy();
  const { chi2, df } = chiSquare(counts, expected, n);
  // Bound: the χ² 0.999 quantile, approximated (Wilson–Hilferty) for df degrees of freedom.
  const z = 3.09;
  const bound = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
  console.log(
    `χ² ${chi2.toFixed(1)} on ${df} df (bound ${bound.toFixed(1)}), ${accepted}/${n} first drafts accepted`,
  );
  assert.ok(accepted > 0 && accepted < n, `acceptance ${accepted}/${n} should be partial`);
  assert.ok(chi2 < bound, `χ² ${chi2} exceeds the 0.999 bound ${bound} (df ${df})`);
});

Deno.test({ name: "runSpeculativeEval reports tau, speeds and the greedy match", ...needsGpu }, async () => {
  const target = await TargetModel.load(gpu!, GOLDEN_LLAMA);
  const { draft, map } = randomDraft(target, 1);
  try {
    const r = await runSpeculativeEval(target, draft, PROMPTS.slice(0, 2), {
      numSteps: 2,
      topk: 1,
      maxNewTokens: 8,
      eosTokenIds: [],
      draftToTarget: map,
      measureSpeed: true,
    });
    assert.equal(r.matchesTargetGreedy, true);
    assert.ok(r.stats.tau >= 1 && r.stats.tau <= 3);
    assert.ok(r.targetTokensPerSecond! > 0 && r.speculativeTokensPerSecond! > 0 && r.speedup! > 0);
    assert.equal(r.samples.length, 2);
  } finally {
    draft.destroy();
    target.destroy();
  }
});

// Gemma 3 (window 32), and Gemma 3, Mistral and Qwen2 with windows of 6, 5, 5 tokens that the sequences pass: the
// tree verification applies the windows as the plain forward does; and the MoE targets (each verified token
// routed as in the plain forward; GPT-OSS's sinks, Llama 4's chunks and NoPE temperature in the tree pass;
// DeepSeek-V3's compressed latent cache, expanded for the tree pass and compacted after acceptance).
for (
  const arch of [
    "gemma3",
    "gemma3_window",
    "mistral_window",
    "qwen2_window",
    "qwen3_moe",
    "qwen2_moe",
    "gpt_oss_mxfp4",
    "llama4",
    "deepseek_v3",
  ]
) {
  Deno.test({
    name: `greedy speculative decoding on ${arch} equals its plain greedy decoding (chain and trees)`,
    ...needsGpu,
  }, async () => {
    const target = await TargetModel.load(
      gpu!,
      new URL(`../golden/targets/${arch}`, import.meta.url).pathname,
    );
    const maxNewTokens = 8;
    const plain = await generate(target, PROMPTS, { maxNewTokens, eosTokenIds: [] });
    const drafts = [randomDraft(target, 7), constantDraft(target, frequent(plain, 4))];
    try {
      for (const [k, d] of drafts.entries()) {
        for (const shape of SHAPES) {
          const dec = new SpeculativeDecoder(target, d.draft, d.map, shape);
          for (const [i, prompt] of PROMPTS.entries()) {
            const out = await dec.generate(prompt, { maxNewTokens, eosTokenIds: [] });
            assert.deepEqual(out.tokens, plain[i], `draft ${k}, ${shape.name}, prompt ${i}`);
          }
          dec.destroy();
        }
      }
    } finally {
      for (const d of drafts) d.draft.destroy();
      target.destroy();
    }
  });
}

Deno.test({
  name:
    "speculative decoding over prompts of many lengths keeps a bounded set of programs (and equals greedy)",
  ...needsGpu,
}, async () => {
  const target = await TargetModel.load(gpu!, GOLDEN_LLAMA);
  const { draft, map } = randomDraft(target, 5);
  const dec = new SpeculativeDecoder(target, draft, map, { numSteps: 3, topk: 1 });
  try {
    // The longest first (the sessions' caches are sized once), then eleven other lengths.
    const lengths = [40, ...Array.from({ length: 11 }, (_, i) => 8 + i)];
    const prompts = lengths.map((n, i) => Array.from({ length: n }, (_, j) => 1 + (j * 37 + i) % 200));
    const plain = await generate(target, prompts, { maxNewTokens: 8, eosTokenIds: [] });
    const held: number[] = [];
    for (const [i, prompt] of prompts.entries()) {
      const out = await dec.generate(prompt, { maxNewTokens: 8, eosTokenIds: [] });
      assert.deepEqual(out.tokens, plain[i], `prompt ${i}`);
      held.push(gpu!.pool.liveBytes);
    }
    // Every prompt length builds a prefill and a draft extension; only the last few stay alive.
    // The programs kept grow a little with the lengths (8 → 18 tokens); keeping every one grew 56 % here.
    assert.ok(held[11] <= 1.2 * held[4], `live bytes after 5 prompts ${held[4]}, after 12 ${held[11]}`);
  } finally {
    dec.destroy();
    draft.destroy();
    target.destroy();
  }
});

Deno.test({
  name: "speculative decoding with the target's aux features over the binding size equals plain greedy",
  ...needsGpu,
}, async () => {
  // A 32 KiB binding: the aux buffer of a 90-token prompt ([128, 3·32] f32, 48 KiB) is two row blocks (84 + 44
  // rows) and its draft extension gathers and runs fc in two windows (64 + 26 rows); an 85-token prompt's
  // one window reads both blocks. The other tensors bind whole.
  const CAP = 32 * 1024;
  const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
  const target = await TargetModel.load(small, GOLDEN_LLAMA);
  const full = await TargetModel.load(gpu!, GOLDEN_LLAMA);
  const session = new TargetSession(target, 128, 128);
  const long = Array.from({ length: 90 }, (_, j) => 1 + (j * 37) % 200);
  const prompts = [long, PROMPTS[0], long.slice(5)];
  const cfg = deriveDraftConfig(target.config, { auxLayers: target.auxLayers });
  const weights = initEagle3Weights(cfg, 11);
  const drafts = [
    Eagle3Draft.create(small, cfg, { weights }),
    Eagle3Draft.create(
      small,
      deriveDraftConfig(target.config, { auxLayers: target.auxLayers, eagle31: true }),
      {
        seed: 4,
      },
    ),
  ];
  const map = Int32Array.from({ length: cfg.draftVocabSize }, (_, i) => i);
  try {
    assert.deepEqual(session.aux.blocks.map((b) => b.tensor.shape[0]), [84, 44], "the aux buffer is split");
    assert.deepEqual(extendWindows(small.limits, 85, target.config.hiddenSize), [[0, 85]]);
    assert.deepEqual(extendWindows(small.limits, 90, target.config.hiddenSize), [[0, 64], [64, 26]]);
    const maxNewTokens = 12;
    const plain = await generate(full, prompts, { maxNewTokens, eosTokenIds: [] });
    assert.deepEqual(await generate(target, prompts, { maxNewTokens, eosTokenIds: [] }), plain);
    for (const [k, draft] of drafts.entries()) {
      for (const shape of SHAPES.slice(0, 2)) {
        const dec = new SpeculativeDecoder(target, draft, map, shape);
        for (const [i, prompt] of prompts.entries()) {
          const out = await dec.generate(prompt, { maxNewTokens, eosTokenIds: [] });
          assert.deepEqual(out.tokens, plain[i], `draft ${k}, ${shape.name}, prompt ${i}`);
        }
        dec.destroy();
      }
    }
    // The capped draft's first distribution after the long prompt equals the uncapped one's bit for bit.
    const logitsOf = async (device: Gpu, model: TargetModel) => {
      const d = Eagle3Draft.create(device, cfg, { weights });
      const t = new TargetSession(model, 128, 128);
      const s = new DraftSession(d, model.embed, t.aux, {
        maxLen: 128,
        maxExtendRows: 128,
        topk: 1,
        numSteps: 2,
      });
      try {
        await t.prefill(long);
        return await s.extend(0, long.map((_, j) => j), [...long.slice(1), 5]);
      } finally {
        s.destroy();
        t.destroy();
        d.destroy();
      }
    };
    assert.deepEqual(await logitsOf(small, target), await logitsOf(gpu!, full));
  } finally {
    session.destroy();
    for (const d of drafts) d.destroy();
    target.destroy();
    full.destroy();
    small.destroy();
  }
});
