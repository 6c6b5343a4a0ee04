/** Batching (SpecForge `specforge/data/utils.py` `DataCollatorWithPadding`): right padding with zeros, data-parallel shards, drop_last, resumable positions. */

import assert from "node:assert/strict";
import { collate, DataLoader } from "../../lib/data/loader.ts";
import { TokenizedDatasetBuilder } from "../../lib/data/tokenized.ts";

function dataset(lengths: number[]) {
  const b = new TokenizedDatasetBuilder();
  lengths.forEach((n, i) =>
    b.add(
      `s${i}`,
      Array.from({ length: n }, (_, k) => 100 * (i + 1) + k),
      Array.from({ length: n }, (_, k) => k % 2),
    )
  );
  return b.finish();
}

Deno.test("collate pads on the right with token 0, attention 0, loss 0", () => {
  const ds = dataset([3, 1, 2]);
  const b = collate(ds, [0, 1, 2]);
  assert.equal(b.seqLen, 3);
  assert.deepEqual([...b.inputIds], [100, 101, 102, 200, 0, 0, 300, 301, 0]);
  assert.deepEqual([...b.attentionMask], [1, 1, 1, 1, 0, 0, 1, 1, 0]);
  assert.deepEqual([...b.lossMask], [0, 1, 0, 0, 0, 0, 0, 1, 0]);
  assert.equal(collate(ds, [1, 2], 4).seqLen, 4, "padded length rounded up to a multiple");
});

Deno.test("ranks split each epoch's permutation like DistributedSampler; drop_last; epochs differ", () => {
  const ds = dataset([1, 2, 3, 4, 5, 6, 7]);
  const ranks = [0, 1, 2].map((rank) => new DataLoader(ds, { batchSize: 2, rank, worldSize: 3, seed: 5 }));
  const seen = ranks.flatMap((l) => [...l.epochIndices(0)]);
  assert.equal(seen.length, 9, "7 samples padded to 9 by repeating from the start");
  assert.deepEqual(new Set(seen).size, 7);
  assert.equal(ranks[0].stepsPerEpoch, 1, "3 indices per rank, batch 2, drop_last");
  assert.notDeepEqual([...ranks[0].epochIndices(0)], [...ranks[0].epochIndices(1)]);
  assert.deepEqual([...ranks[0].epochIndices(3)], [
    ...new DataLoader(ds, { batchSize: 2, rank: 0, worldSize: 3, seed: 5 }).epochIndices(3),
  ]);
  const ordered = new DataLoader(ds, { batchSize: 3, shuffle: false });
  assert.deepEqual([...ordered.batches(0)].map((b) => [...b.sampleIndices]), [[0, 1, 2], [3, 4, 5]]);
});

Deno.test("resuming at (epoch, step) yields the same remaining batches", () => {
  const ds = dataset([2, 3, 4, 5, 6, 7, 8, 9]);
  const loader = new DataLoader(ds, { batchSize: 2, seed: 1 });
  const all = [...loader.batches(2)].map((b) => [...b.sampleIndices]);
  const resumed = [...loader.batches(2, 2)].map((b) => [...b.sampleIndices]);
  assert.deepEqual(resumed, all.slice(2));
  assert.deepEqual(loader.next({ epoch: 2, step: 3 }), { epoch: 3, step: 0 });
  assert.deepEqual(loader.next({ epoch: 2, step: 1 }), { epoch: 2, step: 2 });
  assert.throws(() => new DataLoader(ds, { batchSize: 0 }), /batch size must be positive/);
  assert.throws(
    () => new DataLoader(ds, { batchSize: 1, rank: 2, worldSize: 2 }),
    /rank 2 is not within world size 2/,
  );
});
