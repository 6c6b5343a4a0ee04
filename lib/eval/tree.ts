/**
 * The host side of EAGLE speculative decoding as SGLang's EAGLE worker runs it (python/sglang/srt/
 * speculative/eagle_worker.py, eagle_utils.py `select_top_k_tokens`, build_eagle_tree.py
 * `build_tree_kernel_efficient`; re-derived, not copied): growing the draft tree step by step, pruning it
 * to the candidates the target verifies, and accepting a path greedily or by lossless rejection sampling.
 *
 * Drafting, for `numSteps` levels with `topk` branches:
 * - level 1: the top-k tokens of softmax(draft logits) of the last accepted position; their scores are
 *   their probabilities; they are the k branches of the next draft step;
 * - level i > 1: each of the k branches proposes its top-k tokens; a child's score is its parent's score
 *   times its probability (the product of draft probabilities along the path, i.e. the cumulative draft
 *   log-probability exponentiated); the k best of these k² children become the next branches.
 * - the verified tree: the root (the last accepted token, whose successors are drafted) plus the
 *   `numDraftTokens − 1` best-scoring nodes over all levels, in the order they were created. A child never
 *   scores above its parent and is created after it, so ranking by (score desc, creation asc) keeps every
 *   selected node's parent selected: the selection is a tree.
 *
 * Verification of the tree's target distributions p_n (one per node n, the target's next-token
 * distribution after the path to n):
 * - greedy (temperature 0): from the root, move to the child whose token is argmax p_cur while there is one;
 *   the accepted tokens are the path, followed by the bonus token argmax p_last;
 * - sampling (temperature > 0), SGLang's `tree_speculative_sampling_target_only`: the drafted tokens were
 *   chosen deterministically (top-k), so the draft distribution of each proposal is taken as one-hot. At
 *   node cur, with residual r = p_cur, the children x are tried in order: accept x with probability
 *   min(1, r(x)/q(x)) = r(x); on rejection r ← normalise((r − q)+), i.e. r(x) ← 0 and renormalise. If every
 *   child is rejected, the bonus token is drawn from r; after a leaf, from p_leaf. The emitted token at
 *   each position is then distributed exactly as p (it is the child x with probability p(x), else a draw
 *   from p restricted to the non-children), so the output distribution is the target's. SGLang draws one
 *   uniform per level and compares it with the running sum of the children's p; drawing a fresh uniform
 *   per child, as here, gives the same distribution.
 */

/** A drafted token. */
export interface DraftNode {
  /** Target vocabulary id. */
  token: number;
  /** Product of the draft probabilities along the path from the root. */
  score: number;
  /** Index of the parent node, −1 for a child of the root. */
  parent: number;
  /** Level: 1 for the root's children. */
  depth: number;
}

/** The candidates of one draft row: top-k target ids and their draft probabilities, best first. */
export interface TopK {
  ids: number[];
  probs: number[];
}

/**
 * The top `k` entries of softmax(logits) (f64), best first, ties to the lower index; `toTarget` maps a
 * draft-vocabulary index to its target id (SGLang's hot_token_id = i + d2t[i]).
 */
export function topkSoftmax(logits: ArrayLike<number>, k: number, toTarget?: ArrayLike<number>): TopK {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const best: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    if (best.length === k && logits[i] <= logits[best[k - 1]]) continue;
    let at = best.length;
    while (at > 0 && logits[best[at - 1]] < logits[i]) at--;
    best.splice(at, 0, i);
    if (best.length > k) best.pop();
  }
  return {
    ids: best.map((i) => toTarget ? toTarget[i] : i),
    probs: best.map((i) => Math.exp(logits[i] - max) / sum),
  };
}

/** A branch being drafted: its node and the draft-step rows of its ancestors and itself. */
export interface Branch {
  node: number;
  score: number;
  /** Draft-step slots (step j, row r → (j − 1)·topk + r) on the path, itself last. */
  slots: number[];
}

/** The tree the target verifies: node 0 is the root (the last accepted token), then the drafted tokens. */
export interface VerifyTree {
  /** Target token ids [N]. */
  tokens: number[];
  /** Parent of each node (−1 for the root), always an earlier node. */
  parents: number[];
  /** Depth of each node (0 for the root): its position is the root's position + depth. */
  depths: number[];
  /** [N, N] 0/1: node t attends node j iff j is t or an ancestor of t. */
  mask: Uint32Array<ArrayBuffer>;
  /** Children of each node, in node order. */
  children: number[][];
}

/** Grows a draft tree as SGLang's EAGLE worker does (see the module comment). */
export class DraftTree {
  readonly nodes: DraftNode[] = [];
  branches: Branch[] = [];

  constructor(readonly topk: number) {}

  /** Level 1 from the draft's distribution at the last accepted position; returns the branches. */
  start(first: TopK): Branch[] {
    this.branches = first.ids.map((token, r) => {
      this.nodes.push({ token, score: first.probs[r], parent: -1, depth: 1 });
      return { node: this.nodes.length - 1, score: first.probs[r], slots: [r] };
    });
    return this.branches;
  }

  /**
   * The next level from each current branch's top-k (`perBranch[r]` for branch r, computed at draft step
   * `step` ≥ 1): adds the k² children as nodes and keeps the k best as the new branches, returning for each
   * new branch the row of its parent branch (whose output hidden state it continues from).
   */
  expand(perBranch: TopK[], step: number): number[] {
    const k = this.topk;
    if (perBranch.length !== this.branches.length) {
      throw new Error(
        `draft tree: ${perBranch.length} rows of candidates for ${this.branches.length} branches`,
      );
    }
    const children: Array<{ node: number; score: number; row: number }> = [];
    perBranch.forEach((c, row) => {
      const b = this.branches[row];
      c.ids.forEach((token, i) => {
        const score = b.score * c.probs[i];
        this.nodes.push({ token, score, parent: b.node, depth: this.nodes[b.node].depth + 1 });
        children.push({ node: this.nodes.length - 1, score, row });
      });
    });
    const chosen = [...children].sort((a, b) => b.score - a.score || a.node - b.node).slice(0, k);
    const parents = chosen.map((c) => c.row);
    this.branches = chosen.map((c, r) => ({
      node: c.node,
      score: c.score,
      slots: [...this.branches[c.row].slots, step * k + r],
    }));
    return parents;
  }

  /** The verified tree: `root` then the numDraftTokens − 1 best nodes (see the module comment). */
  finalize(root: number, numDraftTokens: number): VerifyTree {
    const keep = this.nodes.map((n, i) => ({ i, score: n.score }))
      .sort((a, b) => b.score - a.score || a.i - b.i)
      .slice(0, numDraftTokens - 1)
      .map((x) => x.i)
      .sort((a, b) => a - b);
    const where = new Map<number, number>(keep.map((n, j) => [n, j + 1]));
    const tokens = [root], parents = [-1], depths = [0];
    for (const n of keep) {
      const node = this.nodes[n];
      const parent = node.parent < 0 ? 0 : where.get(node.parent);
      if (parent === undefined) {
        throw new Error(`draft tree: node ${n} kept without its parent ${node.parent}`);
      }
      tokens.push(node.token);
      parents.push(parent);
      depths.push(node.depth);
    }
    return treeFromParents(tokens, parents);
  }
}

/** A {@link VerifyTree} from tokens and parent indices (each parent earlier than its child). */
export function treeFromParents(tokens: number[], parents: number[]): VerifyTree {
  const N = tokens.length;
  const depths = new Array<number>(N).fill(0);
  const mask = new Uint32Array(N * N);
  const children: number[][] = tokens.map(() => []);
  for (let t = 0; t < N; t++) {
    if (t > 0 && !(parents[t] >= 0 && parents[t] < t)) {
      throw new Error(`verify tree: node ${t} has parent ${parents[t]}, expected an earlier node`);
    }
    if (t > 0) {
      depths[t] = depths[parents[t]] + 1;
      children[parents[t]].push(t);
    }
    for (let a = t; a >= 0; a = a === 0 ? -1 : parents[a]) mask[t * N + a] = 1;
  }
  return { tokens, parents, depths, mask, children };
}

/** Result of verifying a tree: the accepted nodes (root first) and the token that follows them. */
export interface Verdict {
  /** Tree nodes on the accepted path, starting with the root (0). */
  path: number[];
  /** The accepted draft tokens (tokens of path[1..]). */
  accepted: number[];
  /** The target's token after the path (the bonus token). */
  bonus: number;
}

/** Greedy verification: follow the children equal to the target's argmax (`argmaxAt[n]` at node n). */
export function verifyGreedy(tree: VerifyTree, argmaxAt: ArrayLike<number>): Verdict {
  const path = [0];
  let cur = 0;
  for (;;) {
    const next = tree.children[cur].find((c) => tree.tokens[c] === argmaxAt[cur]);
    if (next === undefined) break;
    path.push(next);
    cur = next;
  }
  return { path, accepted: path.slice(1).map((n) => tree.tokens[n]), bonus: argmaxAt[cur] };
}

/**
 * Lossless tree rejection sampling with one-hot draft distributions (see the module comment). `probsAt(n)`
 * is the target's next-token distribution at node n (normalised; it is not modified), `random` uniform in
 * [0, 1).
 */
export function verifySampling(
  tree: VerifyTree,
  probsAt: (node: number) => ArrayLike<number>,
  random: () => number,
): Verdict {
  const path = [0];
  let cur = 0;
  for (;;) {
    const p = probsAt(cur);
    let residual: Float64Array | null = null; // r = p until a child is rejected
    let mass = 1;
    let next = -1;
    for (const c of tree.children[cur]) {
      const x = tree.tokens[c];
      const rx = (residual ? residual[x] : p[x]) / mass;
      if (random() < rx) {
        next = c;
        break;
      }
      residual ??= Float64Array.from(p);
      // (r − onehot(x)·r(x))+ renormalised: drop x and keep the rest's relative weights.
      mass -= residual[x];
      residual[x] = 0;
    }
    if (next >= 0) {
      path.push(next);
      cur = next;
      continue;
    }
    const bonus = residual && mass > 1e-12 ? drawFrom(residual, mass, random()) : drawFrom(p, 1, random());
    return { path, accepted: path.slice(1).map((n) => tree.tokens[n]), bonus };
  }
}

/** Inverse-CDF draw from unnormalised weights w of total `mass` with uniform u. */
function drawFrom(w: ArrayLike<number>, mass: number, u: number): number {
  const target = u * mass;
  let acc = 0, last = 0;
  for (let i = 0; i < w.length; i++) {
    if (w[i] <= 0) continue;
    acc += w[i];
    last = i;
    if (target < acc) return i;
  }
  return last;
}
