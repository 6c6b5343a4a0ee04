/**
 * The project's one seeded random generator, deterministic across platforms: {@link mulberry32}. Weight init,
 * data order (eval split, epoch shuffles, via {@link permutation}), sampling, benchmark and self-check inputs
 * and test inputs all draw from it. It is not numpy's PCG64 or torch's generator, so orders and initial
 * weights differ from SpecForge's.
 */

/** A permutation of 0..n-1 (Fisher–Yates, from the end) determined by `seed`. */
export function permutation(n: number, seed: number): Int32Array {
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const rand = mulberry32(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/**
 * A generator of uniform floats in [0, 1) (mulberry32: 32-bit state, period 2³²): the RNG of the draft's
 * weight init (tests/golden/make_eagle3.py mirrors it) and of test inputs.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
