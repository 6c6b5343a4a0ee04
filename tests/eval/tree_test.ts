import assert from "node:assert/strict";
import { rng } from "../gpu.ts";
import {
  DraftTree,
  topkSoftmax,
  treeFromParents,
  verifyGreedy,
  verifySampling,
} from "../../lib/eval/tree.ts";
import { samplingProbs } from "../../lib/models/generate.ts";

Deno.test("topkSoftmax: best first, ties to the lower index, mapped to target ids", () => {
  const t = topkSoftmax([0, 2, 2, 1], 3, [10, 11, 12, 13]);
  assert.deepEqual(t.ids, [11, 12, 13]);
  const z = Math.exp(0) + 2 * Math.exp(2) + Math.exp(1);
  assert.ok(Math.abs(t.probs[0] - Math.exp(2) / z) < 1e-12);
});

Deno.test("draft tree: SGLang's expansion, pruning by cumulative score, ancestor masks", () => {
  const tree = new DraftTree(2);
  tree.start({ ids: [7, 8], probs: [0.6, 0.3] });
  // Step 1: branch 0 (token 7) proposes 9 (0.5), 10 (0.4); branch 1 (token 8) proposes 11 (0.9), 12 (0.1).
  const parents = tree.expand([{ ids: [9, 10], probs: [0.5, 0.4] }, { ids: [11, 12], probs: [0.9, 0.1] }], 1);
  // Children scores: 0.30, 0.24, 0.27, 0.03 → branches 9 (from row 0) and 11 (from row 1).
  assert.deepEqual(parents, [0, 1]);
  assert.deepEqual(tree.branches.map((b) => tree.nodes[b.node].token), [9, 11]);
  assert.deepEqual(tree.branches.map((b) => b.slots), [[0, 2], [1, 3]]);
  // 4 draft tokens + root: 7 (0.6), 8 (0.3), 9 (0.3), 11 (0.27), in creation order.
  const vt = tree.finalize(5, 5);
  assert.deepEqual(vt.tokens, [5, 7, 8, 9, 11]);
  assert.deepEqual(vt.parents, [-1, 0, 0, 1, 2]);
  assert.deepEqual(vt.depths, [0, 1, 1, 2, 2]);
  assert.deepEqual(Array.from(vt.mask.subarray(4 * 5, 5 * 5)), [1, 0, 1, 0, 1]);
  assert.deepEqual(verifyGreedy(vt, [8, 0, 11, 0, 3]), { path: [0, 2, 4], accepted: [8, 11], bonus: 3 });
  assert.deepEqual(verifyGreedy(vt, [6, 0, 0, 0, 0]), { path: [0], accepted: [], bonus: 6 });
});

Deno.test("tree rejection sampling emits exactly the target distribution at every level (fixed-seed Monte Carlo)", () => {
  // Root with children tokens 0 and 2; node 1 (token 0) has child token 1. Target distributions per node.
  const vt = treeFromParents([9, 0, 2, 1], [-1, 0, 0, 1]);
  const p = [[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.1, 0.2], [0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]];
  // Monte Carlo with a fixed seed: the first emitted token must follow p[0]; given first = 0, the second
  // must follow p[1]. Bound: 4.5 standard errors per cell.
  const r = rng(3);
  const n = 40000;
  const first = [0, 0, 0, 0], second = [0, 0, 0, 0];
  let given = 0;
  for (let i = 0; i < n; i++) {
    const v = verifySampling(vt, (node) => p[node], r);
    const emitted = [...v.accepted, v.bonus];
    first[emitted[0]]++;
    if (emitted[0] === 0) {
      given++;
      second[emitted[1]]++;
    }
  }
  const check = (counts: number[], probs: number[], total: number, what: string) =>
    counts.forEach((c, t) => {
      const se = Math.sqrt(probs[t] * (1 - probs[t]) / total);
      assert.ok(Math.abs(c / total - probs[t]) < 4.5 * se, `${what}: token ${t} ${c / total} vs ${probs[t]}`);
    });
  check(first, p[0], n, "first token");
  check(second, p[1], given, "second token after 0");
  // A target that puts all its mass on one drafted child always accepts it.
  const sure = verifySampling(vt, (node) => node === 0 ? [0, 0, 1, 0] : p[node], r);
  assert.deepEqual(sure.path, [0, 2]);
});

Deno.test("samplingProbs: temperature and top-p nucleus, renormalised", () => {
  const p = samplingProbs([0.3, 0.05, 0.5, 0.15].map(Math.log), 1, 0.75);
  assert.deepEqual(Array.from(p, (x) => Number(x.toFixed(6))), [0.375, 0, 0.625, 0]);
});
