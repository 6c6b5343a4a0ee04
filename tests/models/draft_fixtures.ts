/** Shared fixtures of the draft tests: the tiny draft config of the goldens, and golden inputs and vocabularies. */
import { assertClose } from "../gpu.ts";
import type { Golden } from "../golden.ts";
import type { VocabMapping } from "../../lib/data/vocab.ts";
import type { Eagle3Step } from "../../lib/models/eagle3.ts";

/** The draft config.json of tests/golden/make_eagle3*.py (H 32, I 48, heads 4/2, hd 8, V 64, Vd 40). */
export const TINY_DRAFT_JSON = {
  architectures: ["LlamaForCausalLMEagle3"],
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 8,
  vocab_size: 64,
  draft_vocab_size: 40,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 64,
};

/** The draft ↔ target mapping stored in a golden file (d2t offsets, t2d flags). */
export function goldenVocab(gold: Golden): VocabMapping {
  const d2t = gold.ints("d2t"), t2d = gold.ints("t2d");
  return {
    draftVocabSize: d2t.length,
    targetVocabSize: t2d.length,
    d2t: BigInt64Array.from(d2t, (x) => BigInt(x)),
    t2d: Uint8Array.from(t2d),
    draftToTarget: Int32Array.from(d2t, (o, i) => i + o),
  };
}

/** Writes a golden file's step inputs into `step` (the target's max/Σexp too when the file has it). */
export function writeGoldenInputs(step: Eagle3Step, gold: Golden, withMaxSum = false): void {
  step.aux.write(gold.f32("aux"));
  step.ids.write(Int32Array.from(gold.ints("ids")));
  step.lengths.write(Int32Array.from(gold.ints("lengths")));
  step.lossMask.write(gold.f32("loss_mask"));
  step.teacherLogits.write(gold.f32("teacher_logits"));
  step.teacherArgmax.write(Int32Array.from(gold.ints("teacher_argmax")));
  if (withMaxSum) step.teacherMaxSum.write(gold.f32("teacher_max_sum"));
}

/** |a − e| ≤ tol·max|e| elementwise (a tolerance on the tensor's scale); returns the worst ratio. */
export function assertScaled(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  label: string,
  tol: number,
): number {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  assertClose(actual, expected, label, { atol: tol * Math.max(scale, 1e-30), rtol: 0 });
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / scale);
  }
  return scale === 0 ? 0 : worst;
}
