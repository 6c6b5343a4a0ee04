/** Draft vocabulary (SpecForge `generate_vocab_mapping_file`) on a corpus small enough to check by hand, and its file forms. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseSafetensors } from "../../lib/io/safetensors.ts";
import { DataError } from "../../lib/data/errors.ts";
import {
  countSupervisedTokens,
  identityVocabMapping,
  loadVocabMapping,
  saveVocabMapping,
  selectDraftVocab,
  validateVocabMapping,
} from "../../lib/data/vocab.ts";
import { tempDir } from "./fixtures.ts";

// Supervised tokens: s0 → 3,3,9   s1 → 9,7,2,7   s2 → 4,2.
// Counts 2:2 3:2 7:2 9:2 4:1; first-counted order 3, 9 (s0, ascending), 2, 7 (s1), 4 (s2).
const CORPUS = [
  { inputIds: [5, 3, 3, 9, 1], lossMask: [0, 1, 1, 1, 0] },
  { inputIds: [9, 7, 2, 7], lossMask: [1, 1, 1, 1] },
  { inputIds: [4, 2, 8], lossMask: [1, 1, 0] },
];

Deno.test("counts only supervised tokens, in first-counted order (ascending within a sample)", () => {
  const c = countSupervisedTokens(CORPUS);
  assert.deepEqual(c.order, [3, 9, 2, 7, 4]);
  assert.deepEqual([2, 3, 4, 5, 7, 8, 9].map((t) => c.count(t)), [2, 2, 1, 0, 2, 0, 2]);
});

Deno.test("selection, d2t offsets and t2d by hand; ties go to the first counted", () => {
  const c = countSupervisedTokens(CORPUS);
  // Four tokens tie at count 2; the first three counted (3, 9, 2) win; ascending target order.
  let m = selectDraftVocab(c, 3, 12);
  assert.deepEqual([...m.draftToTarget], [2, 3, 9]);
  assert.deepEqual([...m.d2t], [2n, 2n, 7n]);
  assert.deepEqual([...m.t2d], [0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0]);
  m = selectDraftVocab(c, 4, 12);
  assert.deepEqual([...m.draftToTarget], [2, 3, 7, 9]);
  assert.deepEqual([...m.d2t], [2n, 2n, 5n, 6n]);
  // Another data order changes the tie-break, as in SpecForge.
  const reordered = countSupervisedTokens([CORPUS[1], CORPUS[0], CORPUS[2]]);
  assert.deepEqual([...selectDraftVocab(reordered, 3, 12).draftToTarget], [2, 7, 9]);
  // Fewer distinct tokens than slots: padded with unseen ids 0, 1, ... (count 0, ranked last).
  m = selectDraftVocab(c, 7, 12);
  assert.deepEqual([...m.draftToTarget], [0, 1, 2, 3, 4, 7, 9]);
  assert.deepEqual([...m.d2t], [0n, 0n, 0n, 0n, 0n, 2n, 3n]);
  for (const k of [3, 4, 7]) validateVocabMapping(selectDraftVocab(c, k, 12));
  // Same size as the target: identity.
  m = selectDraftVocab(c, 12, 12);
  assert.deepEqual([...m.d2t], new Array(12).fill(0n));
  assert.ok(m.t2d.every((x) => x === 1));
  assert.throws(() => selectDraftVocab(c, 13, 12), /draft_vocab_size 13 exceeds the target vocab_size 12/);
  assert.throws(() => selectDraftVocab(c, 3, 9), /supervised token id 9 is outside the target vocab_size 9/);
  assert.throws(() => selectDraftVocab(c, 0, 12), DataError);
});

Deno.test("safetensors and JSON mapping files: round trip, dtypes, consistency checks", async () => {
  const dir = await tempDir();
  const m = selectDraftVocab(countSupervisedTokens(CORPUS), 4, 12);
  const path = join(dir, "vocab_mapping.safetensors");
  await saveVocabMapping(path, m);
  const { tensors } = parseSafetensors(await Deno.readFile(path), path);
  assert.equal(tensors.get("d2t")!.dtype, "I64");
  assert.deepEqual(tensors.get("d2t")!.shape, [4]);
  assert.equal(tensors.get("t2d")!.dtype, "BOOL");
  assert.deepEqual(tensors.get("t2d")!.shape, [12]);
  const back = await loadVocabMapping(path, { draftVocabSize: 4, targetVocabSize: 12 });
  assert.deepEqual(back, m);
  await assert.rejects(
    () => loadVocabMapping(path, { targetVocabSize: 13 }),
    /target vocab size 12, expected 13/,
  );
  const json = join(dir, "m.json");
  await Deno.writeTextFile(
    json,
    JSON.stringify({ d2t: [2, 2, 5, 6], t2d: [0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0].map(Boolean) }),
  );
  assert.deepEqual(await loadVocabMapping(json), m);
  await Deno.writeTextFile(
    json,
    JSON.stringify({ d2t: [2, 2, 5, 5], t2d: [0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0] }),
  );
  await assert.rejects(() => loadVocabMapping(json), /draft 3 maps to 8 by d2t but t2d's 3-th token is 9/);
  await assert.rejects(() => loadVocabMapping(join(dir, "x.pt")), /vocab mapping file not found/);
  await Deno.writeFile(join(dir, "x.pt"), new Uint8Array(4));
  await assert.rejects(() => loadVocabMapping(join(dir, "x.pt")), /PyTorch pickles are not read; convert it/);
  validateVocabMapping(identityVocabMapping(5));
});
