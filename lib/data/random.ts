/**
 * Seeded randomness for data order (eval split, epoch shuffles): a Weyl sequence (step 0x9E3779B9) passed
 * through MurmurHash3's 32-bit finalizer, and Fisher–Yates permutations over it. Deterministic across
 * platforms; NOT the same stream as numpy's PCG64 or torch's generator, so orders differ from SpecForge's.
 */

/** A generator of uniform floats in [0, 1) from a 32-bit seed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    z ^= z >>> 16;
    return (z >>> 0) / 4294967296;
  };
}

/** A permutation of 0..n-1 (Fisher–Yates, from the end) determined by `seed`. */
export function permutation(n: number, seed: number): Int32Array {
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const rand = seededRandom(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}
