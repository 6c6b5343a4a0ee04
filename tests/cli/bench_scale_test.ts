/**
 * `deno task bench --only scale`'s rows, run through the same code on a small random target: the whole
 * train-online trainer at one length, then prepare-hidden-states resident and streamed; the buffer pool's peak of
 * each training run lies within 10 % of its memory plan, and the streamed prepare holds less than the resident one.
 * Without `--only`, a CPU adapter skips the group.
 */
import assert from "node:assert/strict";
import { gpu, needsGpu } from "../gpu.ts";
import { isCpuAdapter } from "../../lib/gpu/device.ts";
import { benchScale, LLAMA_8B_2_LAYERS, scaleRows } from "../../lib/bench/scale.ts";

const SMALL = {
  ...LLAMA_8B_2_LAYERS,
  hidden_size: 128,
  intermediate_size: 256,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 3000,
};

Deno.test({ name: "bench scale: trainer and prepare rows, peak against the plan", ...needsGpu }, async () => {
  const rows = await scaleRows(gpu!, {
    target: SMALL,
    trainLengths: [48],
    timedUpdates: 2,
    prepare: { seqLen: 40, samples: 4, batch: 2 },
    draftVocabSize: 512,
  });
  assert.deepEqual(rows.map((r) => r.name), [
    "train-online update, derived draft (EAGLE-3.1, Vd 512)",
    "prepare-hidden-states, every layer resident",
    "prepare-hidden-states, layers streamed through 1 slot",
  ]);
  for (const r of rows) {
    assert.equal(r.group, "scale");
    assert.ok(Number.isFinite(r.ms) && r.ms > 0 && r.tokensPerSec! > 0, r.name);
    assert.ok(r.peakBytes! > 0, r.name);
  }
  const train = rows[0];
  assert.match(train.shape, /^bf16 target H128 L2 V3000, B1 T48 ttt7$/);
  assert.ok(Math.abs(train.peakBytes! - train.plannedPeakBytes!) <= 0.1 * train.plannedPeakBytes!);
  assert.ok(rows[2].peakBytes! < rows[1].peakBytes!, "one layer slot holds less than every layer");
});

Deno.test({ name: "bench scale: skipped on a CPU adapter unless --only names it", ...needsGpu }, async () => {
  if (!isCpuAdapter(gpu!)) return;
  assert.deepEqual(await benchScale(gpu!, {}), []);
});
