/**
 * Helpers that write WGSL with the loops over a small dimension known when generating (a head dim) unrolled:
 * every element a named value with literal indices (`acc0`, `acc1`, …) instead of a private array indexed in
 * a loop. Such an array stays an array in Mesa's compiler, and each access becomes a loop over the SIMD lanes
 * on its CPU drivers (lavapipe, llvmpipe); named values stay in registers. Each sum is written term by term in
 * the loop's order, so the unrolled code computes the same bits.
 */

/** `f(0) … f(n − 1)` joined by newlines: generated code with literal indices in place of a loop. */
export function rep(n: number, f: (i: number) => string): string {
  return Array.from({ length: n }, (_, i) => f(i)).join("\n");
}

/** The components of a vec4, by index. */
export const XYZW = ["x", "y", "z", "w"];

/** WGSL of the dot product of two rows of n vec4s, summed in order: ((0 + a₀·b₀) + a₁·b₁) + …. */
export function dotRow(n: number, a: (c: number) => string, b: (c: number) => string): string {
  let s = "0.0";
  for (let c = 0; c < n; c++) s = `(${s} + dot(${a(c)}, ${b(c)}))`;
  return s;
}

/** WGSL of Σ_d a[d]·b[d] over the first `hd` elements of two rows of vec4s, one term at a time, d ascending. */
export function dotElements(hd: number, a: (c: number) => string, b: (c: number) => string): string {
  let s = "0.0";
  for (let d = 0; d < hd; d++) {
    const [c, x] = [Math.floor(d / 4), XYZW[d % 4]];
    s = `(${s} + ${a(c)}.${x} * ${b(c)}.${x})`;
  }
  return s;
}

/**
 * Largest head dim whose rows {@link HeadRows} unrolls. Past it the unrolled code is slower on lavapipe than
 * the loops (DFlash and tree attention, one invocation per row: hd ≤ 64 took 0.6–0.9× the loops' time, hd 128
 * 1.0–1.9×, hd 256 2.6×), so wider rows stay private arrays.
 */
export const UNROLL_MAX_HD = 64;

/**
 * The private f32 rows of `hd` elements of one invocation and the loops over them, written either unrolled
 * (row `acc` as the scalars acc0 … acc`hd − 1`, one statement per element, d ascending) or, past
 * {@link UNROLL_MAX_HD}, as `var acc: array<f32, HD>` and a WGSL loop `for (var d = 0u; d < HD; d++)` (the
 * kernel declares the constant HD = hd). Both run the same statements in the same order: the same bits.
 */
export class HeadRows {
  constructor(readonly hd: number, readonly unrolled = hd <= UNROLL_MAX_HD) {}

  /**
   * Declares row `name` with element d = `value(d)` (`d` as in {@link each}), each line starting with
   * `indent`; unrolled, its elements are `let` values unless `mutable`.
   */
  row(name: string, value: (d: string) => string, indent: string, mutable = false): string {
    if (!this.unrolled) {
      return `${indent}var ${name}: array<f32, HD>;\n` +
        `${indent}for (var d = 0u; d < HD; d++) { ${name}[d] = ${value("d")}; }`;
    }
    return rep(this.hd, (d) => `${indent}${mutable ? "var" : "let"} ${name}${d} = ${value(`${d}u`)};`);
  }

  /**
   * `body(at, d)` for every d < hd, ascending, where `at(name)` is element d of row `name` and `d` the WGSL
   * index (a u32 literal when unrolled, the loop variable otherwise), each line starting with `indent`.
   */
  each(body: (at: (name: string) => string, d: string) => string, indent: string): string {
    if (!this.unrolled) return `${indent}for (var d = 0u; d < HD; d++) { ${body((n) => `${n}[d]`, "d")} }`;
    return rep(this.hd, (d) => `${indent}${body((n) => `${n}${d}`, `${d}u`)}`);
  }
}
