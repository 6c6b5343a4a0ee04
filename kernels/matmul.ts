/**
 * Matmul kernels: C = alpha·op(A)·op(B) (+ C), row-major, f32 accumulation, generated per variant.
 *
 * op(A) is A [M, K] or, with `transA`, Aᵀ for A stored [K, M]; op(B) is B [K, N] or, with `transB`, Bᵀ for B
 * stored [N, K]. A and C are f32; B is f32, f16 or bf16 (pairs packed in u32 words, element 2i in the low half),
 * widened to f32 as it is loaded. The grid's z index runs over `batch·splits`: a batch of independent products
 * (B may be shared) and, for split-K, slices of the K range whose partial products the `splitk_reduce` kernel
 * sums afterwards in a fixed order (no atomics, so results are deterministic).
 *
 * Two kernel families, one per kind of adapter:
 *
 * - `regtile` (CPU adapters: lavapipe, llvmpipe). Mesa's LLVM backend runs one workgroup per CPU thread with
 *   8 invocations in the 8 lanes of a 256-bit SIMD register, and every storage or workgroup load costs a loop
 *   over the lanes, whatever its address: each lane's scalar is inserted into the vector through the stack
 *   (measured about 45 cycles per vec4 per 8 lanes on one host, about 585 on a Zen 3 host, where the insert
 *   stalls store forwarding). Arithmetic is cheap. So the kernel uses no workgroup memory and no barriers, a
 *   workgroup of 8 invocations (one SIMD register), and a large register tile per invocation: TM rows × 4·TN4
 *   columns, the K loop unrolled by 4 with vec4 loads, giving 4·TM·4·TN4 FMAs for TM + 4·TN4 vec4 loads. The
 *   code is generated fully unrolled (named registers, no local arrays) so that LLVM keeps the tile in
 *   registers. Loads from a texture are gathered in registers instead (a sampled fetch about 75 cycles per 8
 *   lanes on the Zen 3 host; an image load from a read-only storage texture less, kernels/texels.ts), so by
 *   default the operands are first packed into rgba32f textures and read from there.
 * - `tiled` (GPUs). The classic 2D block tiling: a workgroup of (BN/4)×(BM/4) invocations owns a BM×BN tile
 *   of C, stages BK-deep slabs of op(A) and op(B) in workgroup memory, both stored k-major so the inner loop
 *   reads vec4 rows, and each invocation accumulates a 4×4 register tile. BM, BN, BK are override constants;
 *   `CHECKED = false` (shapes divide the tiles) drops every bounds test.
 *
 * Both read operands through the element helpers below, so every layout and dtype is one code path.
 */
import { GATE_FUNCTIONS, HALF_SAVED_FUNCTIONS } from "./swiglu.ts";
import { TEXEL_AT, texelBinding, texelLoad } from "./texels.ts";
import { XYZW } from "./unroll.ts";

/** How op(B) is stored. */
export type MatmulBType = "f32" | "f16" | "bf16";

/** Everything that changes the generated WGSL of a matmul kernel. */
export interface MatmulVariant {
  /** op(A) = Aᵀ, A stored [K, M]. */
  transA: boolean;
  /** op(B) = Bᵀ, B stored [N, K]. */
  transB: boolean;
  /** Storage type of B. */
  bType: MatmulBType;
  /** C += result instead of C = result. */
  accumulate: boolean;
  /**
   * C = D + result, D a tensor of C's shape at binding 4 (a residual add fused into the store; `regtile` only,
   * not with `accumulate` or a split K).
   */
  addend?: boolean;
  /** A gated MLP fused into the store (`regtile` only, not with `accumulate`, `addend` or a split K). */
  gated?: GatedEpilogue;
}

/**
 * The store of a gated MLP (Llama's SwiGLU, Gemma's GELU-tanh), in the formulas of kernels/swiglu.ts:
 *
 * - `forward`: two products in one pass over op(A), P = op(A)·op(B) (the gate weight) and Q = op(A)·op(U)
 *   (the up weight, binding 4, stored as B is); C = act(P) ⊙ Q, and with `store` P and Q are written too
 *   (bindings 5 and 6, for the backward). Each product sums its k terms in the order an unfused product
 *   does, so every output has the bits of the products followed by the elementwise kernel.
 * - `backward`: with op(A)·op(B) = ∂/∂act (the down projection's input gradient), C = ∂/∂gate and binding 6
 *   = ∂/∂up, from the forward's gate and up (bindings 4 and 5).
 *
 * With `half`, the saved gate and up are f16 (u32 words of two, kernels/swiglu.ts `HALF_SAVED_FUNCTIONS`): the
 * forward rounds P and Q to f16, stores them, and computes C from the rounded values (so the backward, which
 * reads them, differentiates what the forward computed); the backward reads them. Both need N even, so that a
 * word's two elements belong to one invocation.
 */
export type GatedEpilogue =
  | { kind: "forward"; activation: "silu" | "gelu_tanh"; store: boolean; half?: boolean }
  | { kind: "backward"; half?: boolean };

/** `regtile` register tile: TM rows × 4·TN4 columns per invocation, 8 invocations per workgroup. */
export interface RegtileTile {
  kind: "regtile";
  /** Rows per invocation (a multiple of 4). */
  tm: number;
  /** vec4 column groups per invocation. */
  tn4: number;
  /**
   * Read op(A) and op(B) from rgba32f textures (kernels/texels.ts) instead of storage buffers, where the shape
   * allows vec4 loads and the operand is read more than once (lib/ops/matmul.ts). On Mesa's CPU drivers a
   * storage load walks the 8 lanes one scalar at a time through the stack, a texture load gathers in
   * registers: measured on lavapipe (LLVM 15, Zen 3), a vec4 storage load cost about 585 core cycles per 8
   * lanes, a sampled texel fetch about 75 (the operands are now read-only storage textures, cheaper still).
   */
  textures?: boolean;
}

/** `tiled` workgroup tile: BM×BN outputs, BK-deep slabs, (BN/4)×(BM/4) invocations with 4×4 each. */
export interface TiledTile {
  kind: "tiled";
  bm: number;
  bn: number;
  bk: number;
}

/** A kernel family with its tile sizes. */
export type MatmulTile = RegtileTile | TiledTile;

/** Invocations per `regtile` workgroup: one 8-lane SIMD register on Mesa's CPU drivers. */
export const REGTILE_WG = 8;

/** Workgroup size of the split-K reduce kernel. */
export const REDUCE_WG = 256;

/** The uniform block shared by every matmul kernel (all 4-byte scalars, in this order). */
const PARAMS = /* wgsl */ `
struct Params {
  M: u32, N: u32, K: u32,
  splits: u32,     // K slices per product (1 = no split)
  k_chunk: u32,    // K elements per slice (a multiple of 4)
  stride_a: u32,   // elements between batches of A
  stride_b: u32,   // elements between batches of B (0: B shared by the batch)
  stride_c: u32,   // elements between products of C (batch·splits of them)
  alpha: f32,
}
@group(0) @binding(0) var<uniform> p: Params;
`;

/** Which operands a `regtile` kernel reads from textures packed by kernels/texels.ts `packTexelsKernel`. */
export interface OperandTextures {
  a: boolean;
  b: boolean;
}

/** Binding `binding` as an operand texture `name` and its loader `load_<name>4` (elements e..e+3). */
function textureOperand(name: string, binding: number): string {
  return `${texelBinding(name, binding)}
fn load_${name}4(e: u32) -> vec4<f32> { return ${texelLoad(name, "e >> 2u")}; }`;
}

/**
 * Operand `name` stored as B is (`bType`) at `binding`: `load_<name>1(e)` (one element) or `load_<name>4(e)`
 * (elements e..e+3, e % 4 == 0, with `vec4`), from its packed texture when `texture`.
 */
function bOperand(
  name: string,
  binding: number,
  bType: MatmulBType,
  vec4: boolean,
  texture: boolean,
): string {
  const at = `@group(0) @binding(${binding}) var<storage, read> ${name}`;
  if (texture) return textureOperand(name, binding);
  if (bType === "f32") {
    return vec4
      ? `${at}: array<vec4<f32>>;\nfn load_${name}4(e: u32) -> vec4<f32> { return ${name}[e >> 2u]; }`
      : `${at}: array<f32>;\nfn load_${name}1(e: u32) -> f32 { return ${name}[e]; }`;
  }
  if (bType === "f16") {
    return vec4
      ? `${at}: array<vec4<f16>>;\nfn load_${name}4(e: u32) -> vec4<f32> { return vec4<f32>(${name}[e >> 2u]); }`
      : `${at}: array<f16>;\nfn load_${name}1(e: u32) -> f32 { return f32(${name}[e]); }`;
  }
  // bf16: the upper 16 bits of an f32, so widening is a shift (low half) or a mask (high half).
  return vec4
    ? `${at}: array<vec2<u32>>;
fn load_${name}4(e: u32) -> vec4<f32> {
  let w = ${name}[e >> 2u];
  return vec4<f32>(bitcast<f32>(w.x << 16u), bitcast<f32>(w.x & 0xffff0000u),
                   bitcast<f32>(w.y << 16u), bitcast<f32>(w.y & 0xffff0000u));
}`
    : `${at}: array<u32>;
fn load_${name}1(e: u32) -> f32 {
  let w = ${name}[e >> 1u];
  return bitcast<f32>(select(w & 0xffff0000u, w << 16u, (e & 1u) == 0u));
}`;
}

/**
 * Bindings and element loaders: `load_a1(e)`, `load_b1(e)` (one element), `load_a4(e)`, `load_b4(e)` (elements
 * e..e+3, e % 4 == 0); an operand in `textures` is read from its packed texture (vec4 loads only).
 */
function operands(
  bType: MatmulBType,
  vec4: boolean,
  textures: OperandTextures = { a: false, b: false },
): string {
  const a = textures.a
    ? textureOperand("a", 1)
    : vec4
    ? `@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
fn load_a4(e: u32) -> vec4<f32> { return a[e >> 2u]; }`
    : `@group(0) @binding(1) var<storage, read> a: array<f32>;
fn load_a1(e: u32) -> f32 { return a[e]; }`;
  const b = bOperand("b", 2, bType, vec4, textures.b);
  const texels = textures.a || textures.b ? TEXEL_AT : "";
  return `${a}\n${b}\n@group(0) @binding(3) var<storage, read_write> c: array<f32>;\n${texels}`;
}

/**
 * Whether the `regtile` kernel may use vec4 loads: the contiguous dimension of each stored operand and K are
 * multiples of 4 (and M too when A is transposed, since its vec4s then run along M).
 */
export function regtileVec4(v: MatmulVariant, M: number, N: number, K: number): boolean {
  if (K % 4 !== 0) return false;
  if (v.transA && M % 4 !== 0) return false;
  if (!v.transB && N % 4 !== 0) return false;
  return true;
}

/** One vec4 column group of a `regtile` invocation: the operand it reads (B, or U of a gated forward). */
interface ColumnGroup {
  operand: "b" | "u";
  /** Its first column, a WGSL expression. */
  col: string;
}

/**
 * The column groups of a `regtile` invocation: 4 columns at n0 + 32·j for j < TN4, or for a gated forward
 * TN4/2 groups of B (the gate) and the same columns of U (the up projection).
 */
function columnGroups(v: MatmulVariant, tn4: number): ColumnGroup[] {
  const half = v.gated?.kind === "forward" ? tn4 / 2 : tn4;
  return Array.from({ length: tn4 }, (_, j) => ({
    operand: j < half ? "b" : "u",
    col: `n0 + ${4 * REGTILE_WG * (j % half)}u`,
  }));
}

/** Columns of C one `regtile` workgroup covers. */
export function regtileColumns(v: MatmulVariant, tile: RegtileTile): number {
  return 4 * REGTILE_WG * (v.gated?.kind === "forward" ? tile.tn4 / 2 : tile.tn4);
}

/**
 * The bindings after C: the addend, or a gated store's operand U and its extra outputs and inputs. A gated
 * backward with vec4 loads (N % 4 = 0) reads gate and up and writes ∂/∂up as vec4s: a column group's four
 * elements are adjacent, and one vec4 load costs a CPU driver about what one scalar load does.
 */
function epilogueBindings(v: MatmulVariant, vec4: boolean, textures: OperandTextures): string {
  const at = (binding: number, access: string, name: string, type = "f32") =>
    `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<${type}>;`;
  if (v.addend) return at(4, "read", "d");
  const g = v.gated;
  if (!g) return "";
  const functions = g.half ? [GATE_FUNCTIONS, HALF_SAVED_FUNCTIONS] : [GATE_FUNCTIONS];
  const saved = g.half ? "u32" : "f32";
  if (g.kind === "backward") {
    const type = vec4 ? "vec4<f32>" : "f32";
    const io = [
      at(4, "read", "gate", g.half ? saved : type),
      at(5, "read", "up", g.half ? saved : type),
      at(6, "read_write", "dup", type),
    ];
    return [...functions, ...io].join("\n");
  }
  const stores = g.store
    ? [at(5, "read_write", "gate_out", saved), at(6, "read_write", "up_out", saved)]
    : [];
  return [...functions, bOperand("u", 4, v.bType, vec4, textures.b), ...stores].join("\n");
}

/**
 * The `regtile` kernel for one variant and tile; `vec4` selects vec4 loads (see {@link regtileVec4}), otherwise
 * scalar loads handle any shape. The operands in `textures` (vec4 only) are read from textures packed by
 * kernels/texels.ts `packTexelsKernel` (U of a gated forward as B is); the arithmetic, and so the result, is
 * the same bit for bit.
 * Invocation `l` of workgroup (x, y, z) computes rows m0..m0+TM-1 and, for j < TN4, the 4 columns starting at
 * n0 + 4·l + 32·j: the 8 lanes of a SIMD register cover 32 adjacent columns ({@link columnGroups}). Row and
 * column indices are clamped into range once, before the K loop, so the loop has no bounds tests; clamped
 * rows and columns compute duplicates that are never stored.
 */
export function regtileKernel(
  v: MatmulVariant,
  tile: RegtileTile,
  vec4: boolean,
  textures: OperandTextures = { a: false, b: false },
): string {
  const { tm, tn4 } = tile;
  if ((textures.a || textures.b) && !vec4) throw new Error("regtileKernel: texture operands need vec4 loads");
  if (v.gated?.kind === "forward" && tn4 % 2 !== 0) {
    throw new Error("regtileKernel: a gated forward needs TN4 even");
  }
  const groups = columnGroups(v, tn4);
  const epilogue = epilogueBindings(v, vec4, textures);
  const L: string[] = [PARAMS + operands(v.bType, vec4, textures), ...(epilogue ? [epilogue] : [])];
  L.push(`@compute @workgroup_size(${REGTILE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let z = wg.z;
  let batch = z / p.splits;
  let k_begin = (z % p.splits) * p.k_chunk;
  let k_end = min(p.K, k_begin + p.k_chunk);
  let a0 = batch * p.stride_a;
  let b0 = batch * p.stride_b;
  let m0 = wg.y * ${tm}u;
  let n0 = wg.x * ${regtileColumns(v, tile)}u + 4u * l;`);
  L.push(...regtileBases(v, tm, groups, vec4));
  for (let r = 0; r < tm; r++) for (let j = 0; j < tn4; j++) L.push(`  var acc${r}_${j} = vec4<f32>(0.0);`);
  L.push(`  let k_end4 = k_begin + ((k_end - k_begin) & ~3u);
  for (var kb = k_begin; kb < k_end4; kb += 4u) {`);
  L.push(...regtileStep(v, tm, groups, vec4, 4, "    "));
  L.push(`  }`);
  if (!vec4) {
    L.push(`  for (var kb = k_end4; kb < k_end; kb += 1u) {`);
    L.push(...regtileStep(v, tm, groups, vec4, 1, "    "));
    L.push(`  }`);
  }
  L.push(...regtileStore(v, tm, groups, vec4), `}`);
  return L.join("\n");
}

/**
 * Clamped row bases of A (element offset of A(m, 0) for NN; of A(0, m) column group for TN) and column bases
 * of each group's operand (vec4 group start for NN; one stored row per column for NT).
 */
function regtileBases(v: MatmulVariant, tm: number, groups: ColumnGroup[], vec4: boolean): string[] {
  const L: string[] = [];
  if (!v.transA) {
    for (let r = 0; r < tm; r++) L.push(`  let ra${r} = a0 + min(m0 + ${r}u, p.M - 1u) * p.K;`);
  } else if (vec4) {
    for (let q = 0; q < tm / 4; q++) L.push(`  let ca${q} = a0 + min(m0 + ${4 * q}u, p.M - 4u);`);
  } else {
    for (let r = 0; r < tm; r++) L.push(`  let ca${r} = a0 + min(m0 + ${r}u, p.M - 1u);`);
  }
  for (const [j, { col }] of groups.entries()) {
    if (!v.transB) {
      if (vec4) L.push(`  let cb${j} = b0 + min(${col}, p.N - 4u);`);
      else for (let c = 0; c < 4; c++) L.push(`  let cb${j}_${c} = b0 + min(${col} + ${c}u, p.N - 1u);`);
    } else {
      for (let c = 0; c < 4; c++) L.push(`  let rb${j}_${c} = b0 + min(${col} + ${c}u, p.N - 1u) * p.K;`);
    }
  }
  return L;
}

/** One step of `ks` k values (4 in the main loop, 1 in the scalar tail) starting at k = kb. */
function regtileStep(
  v: MatmulVariant,
  tm: number,
  groups: ColumnGroup[],
  vec4: boolean,
  ks: number,
  indent: string,
): string[] {
  const L: string[] = [];
  const push = (s: string) => L.push(indent + s);
  const aval: string[][] = Array.from({ length: tm }, () => []);
  const bval: string[][] = groups.map(() => []);
  if (!v.transA) {
    for (let r = 0; r < tm; r++) {
      if (vec4) {
        push(`let a${r} = load_a4(ra${r} + kb);`);
        for (let kk = 0; kk < ks; kk++) aval[r][kk] = `a${r}.${XYZW[kk]}`;
      } else {
        for (let kk = 0; kk < ks; kk++) {
          push(`let a${r}_${kk} = load_a1(ra${r} + kb + ${kk}u);`);
          aval[r][kk] = `a${r}_${kk}`;
        }
      }
    }
  } else {
    for (let kk = 0; kk < ks; kk++) {
      if (vec4) {
        for (let q = 0; q < tm / 4; q++) {
          push(`let a${kk}_${q} = load_a4(ca${q} + (kb + ${kk}u) * p.M);`);
          for (let i = 0; i < 4; i++) aval[4 * q + i][kk] = `a${kk}_${q}.${XYZW[i]}`;
        }
      } else {
        for (let r = 0; r < tm; r++) {
          push(`let a${r}_${kk} = load_a1(ca${r} + (kb + ${kk}u) * p.M);`);
          aval[r][kk] = `a${r}_${kk}`;
        }
      }
    }
  }
  for (const [j, { operand: o }] of groups.entries()) {
    if (!v.transB) {
      for (let kk = 0; kk < ks; kk++) {
        const row = `(kb + ${kk}u) * p.N`;
        if (vec4) push(`let b${j}_${kk} = load_${o}4(cb${j} + ${row});`);
        else {
          const parts = [0, 1, 2, 3].map((c) => `load_${o}1(cb${j}_${c} + ${row})`);
          push(`let b${j}_${kk} = vec4<f32>(${parts.join(", ")});`);
        }
        bval[j][kk] = `b${j}_${kk}`;
      }
    } else if (vec4) {
      for (let c = 0; c < 4; c++) push(`let bt${j}_${c} = load_${o}4(rb${j}_${c} + kb);`);
      for (let kk = 0; kk < ks; kk++) {
        bval[j][kk] = `vec4<f32>(${[0, 1, 2, 3].map((c) => `bt${j}_${c}.${XYZW[kk]}`).join(", ")})`;
      }
    } else {
      for (let kk = 0; kk < ks; kk++) {
        const parts = [0, 1, 2, 3].map((c) => `load_${o}1(rb${j}_${c} + kb + ${kk}u)`);
        push(`let b${j}_${kk} = vec4<f32>(${parts.join(", ")});`);
        bval[j][kk] = `b${j}_${kk}`;
      }
    }
  }
  for (let r = 0; r < tm; r++) {
    for (let j = 0; j < groups.length; j++) {
      for (let kk = 0; kk < ks; kk++) {
        push(`acc${r}_${j} = fma(vec4<f32>(${aval[r][kk]}), ${bval[j][kk]}, acc${r}_${j});`);
      }
    }
  }
  return L;
}

/**
 * The store, guarding rows and columns: alpha scales the product; `accumulate` adds what C held, an addend
 * D's element; a gated store writes act(P) ⊙ Q (and P, Q) or the SwiGLU's two input gradients.
 */
function regtileStore(v: MatmulVariant, tm: number, groups: ColumnGroup[], vec4: boolean): string[] {
  const L = [`  let c0 = z * p.stride_c;`];
  const g = v.gated;
  const stored = groups.filter((x) => x.operand === "b").length;
  const prior = (col: string) => v.accumulate ? `c[cr + ${col}] + ` : v.addend ? `d[cr + ${col}] + ` : "";
  const act = g?.kind === "forward" && g.activation === "gelu_tanh" ? "gelu_tanh_gate" : "silu_gate";
  const value = (r: number, j: number, c: number) => `p.alpha * acc${r}_${j}.${XYZW[c]}`;
  for (let r = 0; r < tm; r++) {
    L.push(`  if (m0 + ${r}u < p.M) {`);
    L.push(`    let cr = c0 + (m0 + ${r}u) * p.N;`);
    for (let j = 0; j < stored; j++) {
      if (g?.half) {
        L.push(
          ...halfSavedGroup(
            g,
            act,
            vec4,
            groups[j].col,
            (c) => value(r, j, c),
            (c) => value(r, j + stored, c),
          ),
        );
        continue;
      }
      if (g?.kind === "backward" && vec4) {
        L.push(...gatedBackwardGroup(groups[j].col, (c) => value(r, j, c)));
        continue;
      }
      for (let c = 0; c < 4; c++) {
        const col = `n0 + ${4 * REGTILE_WG * j + c}u`; // the stored groups are the first: j < TN4 (or TN4/2)
        const val = value(r, j, c);
        if (!g) {
          L.push(`    if (${col} < p.N) { c[cr + ${col}] = ${prior(col)}${val}; }`);
        } else if (g.kind === "forward") {
          const keep = g.store ? ` gate_out[i] = g; up_out[i] = u;` : "";
          L.push(
            `    if (${col} < p.N) { let i = cr + ${col}; let g = ${val}; let u = ${
              value(r, j + stored, c)
            }; c[i] = ${act}(g) * u;${keep} }`,
          );
        } else {
          L.push(
            `    if (${col} < p.N) { let i = cr + ${col}; let d = swiglu_grads(${val}, gate[i], up[i]); c[i] = d.x; dup[i] = d.y; }`,
          );
        }
      }
    }
    L.push(`  }`);
  }
  return L;
}

/**
 * A gated store with f16 saved tensors, one vec4 column group starting at `col`, a word (two columns) at a time:
 * N is even, so a word's two columns are both in range or both out. The forward rounds gate (`value`) and up
 * (`upValue`) to f16, stores their words and computes act from the rounded values; the backward reads the words
 * and writes ∂/∂gate into C and ∂/∂up into `dup` (a vec4 with `vec4` loads: the four columns are then all in
 * range or all out).
 */
function halfSavedGroup(
  g: GatedEpilogue,
  act: string,
  vec4: boolean,
  col: string,
  value: (c: number) => string,
  upValue: (c: number) => string,
): string[] {
  const L: string[] = [];
  if (g.kind === "backward" && vec4) {
    L.push(`    if (${col} < p.N) {`, `      let i = cr + ${col};`);
    const d = [0, 1, 2, 3].map((c) => `d${c}`);
    for (const w of [0, 1]) {
      L.push(
        `      let g${w} = half_pair(gate[(i >> 1u) + ${w}u]);`,
        `      let u${w} = half_pair(up[(i >> 1u) + ${w}u]);`,
      );
      L.push(`      let d${2 * w} = swiglu_grads(${value(2 * w)}, g${w}.x, u${w}.x);`);
      L.push(`      let d${2 * w + 1} = swiglu_grads(${value(2 * w + 1)}, g${w}.y, u${w}.y);`);
    }
    L.push(...d.map((x, c) => `      c[i + ${c}u] = ${x}.x;`));
    L.push(`      dup[i >> 2u] = vec4<f32>(${d.map((x) => `${x}.y`).join(", ")});`, `    }`);
    return L;
  }
  for (const c of [0, 2]) {
    L.push(`    if (${col} + ${c}u < p.N) {`, `      let i = cr + ${col} + ${c}u;`);
    if (g.kind === "forward") {
      L.push(`      let gw = to_half_pair(${value(c)}, ${value(c + 1)});`);
      L.push(`      let uw = to_half_pair(${upValue(c)}, ${upValue(c + 1)});`);
      L.push(`      let g = half_pair(gw);`, `      let u = half_pair(uw);`);
      L.push(`      c[i] = ${act}(g.x) * u.x;`, `      c[i + 1u] = ${act}(g.y) * u.y;`);
      if (g.store) L.push(`      gate_out[i >> 1u] = gw;`, `      up_out[i >> 1u] = uw;`);
    } else {
      L.push(`      let g = half_pair(gate[i >> 1u]);`, `      let u = half_pair(up[i >> 1u]);`);
      L.push(`      let d0 = swiglu_grads(${value(c)}, g.x, u.x);`);
      L.push(`      let d1 = swiglu_grads(${value(c + 1)}, g.y, u.y);`);
      L.push(
        `      c[i] = d0.x;`,
        `      c[i + 1u] = d1.x;`,
        `      dup[i] = d0.y;`,
        `      dup[i + 1u] = d1.y;`,
      );
    }
    L.push(`    }`);
  }
  return L;
}

/** A gated backward's store of one vec4 column group starting at `col` (N % 4 = 0: all four or none). */
function gatedBackwardGroup(col: string, value: (c: number) => string): string[] {
  const grads = [0, 1, 2, 3].map((c) => `swiglu_grads(${value(c)}, g.${XYZW[c]}, u.${XYZW[c]})`);
  return [
    `    if (${col} < p.N) {`,
    `      let i = cr + ${col};`,
    `      let g = gate[i >> 2u];`,
    `      let u = up[i >> 2u];`,
    ...grads.map((e, c) => `      let d${c} = ${e};`),
    ...[0, 1, 2, 3].map((c) => `      c[i + ${c}u] = d${c}.x;`),
    `      dup[i >> 2u] = vec4<f32>(d0.y, d1.y, d2.y, d3.y);`,
    `    }`,
  ];
}

/**
 * The `tiled` kernel for one variant: override constants BM, BN, BK (BM, BN multiples of 4) and CHECKED.
 * Invocation (tx, ty) owns rows ty·4.. and columns tx·4.. of the workgroup's BM×BN tile. Slabs are loaded with
 * one element per invocation per pass, consecutive invocations walking the operand's contiguous dimension
 * (coalesced), and stored k-major: sa[k][m], sb[k][n].
 */
export function tiledKernel(v: MatmulVariant): string {
  const aAt = v.transA ? "a0 + k * p.M + m" : "a0 + m * p.K + k";
  const bAt = v.transB ? "b0 + n * p.K + k" : "b0 + k * p.N + n";
  // Which slab coordinate runs fastest across invocations: the stored operand's contiguous one.
  const aSlab = v.transA ? "let k = t / BM; let m = t % BM;" : "let m = t / BK; let k = t % BK;";
  const bSlab = v.transB ? "let n = t / BK; let k = t % BK;" : "let k = t / BN; let n = t % BN;";
  return /* wgsl */ `
${PARAMS}
${operands(v.bType, false)}
override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
override CHECKED: bool = true;
override WG_X: u32 = BN / 4u;
var<workgroup> sa: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> sb: array<vec4<f32>, BK * BN / 4u>;

@compute @workgroup_size(BN / 4u, BM / 4u)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let z = wg.z;
  let batch = z / p.splits;
  let k_begin = (z % p.splits) * p.k_chunk;
  let k_end = min(p.K, k_begin + p.k_chunk);
  let a0 = batch * p.stride_a;
  let b0 = batch * p.stride_b;
  let tile_m = wg.y * BM;
  let tile_n = wg.x * BN;
  let flat = lid.y * WG_X + lid.x;
  let threads = WG_X * (BM / 4u);
  var acc: array<vec4<f32>, 4>;
  for (var i = 0u; i < 4u; i += 1u) { acc[i] = vec4<f32>(0.0); }
  for (var kt = k_begin; kt < k_end; kt += BK) {
    for (var t = flat; t < BM * BK; t += threads) {
      ${aSlab}
      let gm = tile_m + m; let gk = kt + k;
      var x = 0.0;
      if (!CHECKED || (gm < p.M && gk < k_end)) { let m = gm; let k = gk; x = load_a1(${aAt}); }
      sa[(k * BM + m) / 4u][m % 4u] = x;
    }
    for (var t = flat; t < BN * BK; t += threads) {
      ${bSlab}
      let gn = tile_n + n; let gk = kt + k;
      var x = 0.0;
      if (!CHECKED || (gn < p.N && gk < k_end)) { let n = gn; let k = gk; x = load_b1(${bAt}); }
      sb[(k * BN + n) / 4u][n % 4u] = x;
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k += 1u) {
      let av = sa[k * (BM / 4u) + lid.y];
      let bv = sb[k * (BN / 4u) + lid.x];
      acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
      acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
      acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
      acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
    }
    workgroupBarrier();
  }
  let c0 = z * p.stride_c;
  for (var i = 0u; i < 4u; i += 1u) {
    let m = tile_m + lid.y * 4u + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < 4u; j += 1u) {
      let n = tile_n + lid.x * 4u + j;
      if (n < p.N) {
        let idx = c0 + m * p.N + n;
        ${v.accumulate ? "c[idx] = c[idx] + p.alpha * acc[i][j];" : "c[idx] = p.alpha * acc[i][j];"}
      }
    }
  }
}
`;
}

/**
 * Split-K reduce: out[b][i] = alpha·Σ_s part[b·splits + s][i] (+ out[b][i]), summing s in order. `i` runs over
 * one product's `size` = M·N elements; the grid is folded (see `linear_workgroup`).
 */
export const splitkReduce = /* wgsl */ `
struct Params { size: u32, splits: u32, total: u32, accumulate: u32, alpha: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = (wg.x + wg.y * nwg.x) * ${REDUCE_WG}u + lid;
  if (g >= p.total) { return; }
  let batch = g / p.size;
  let i = g % p.size;
  var s = 0.0;
  for (var k = 0u; k < p.splits; k += 1u) {
    s += part[((batch * p.splits) + k) * p.size + i];
  }
  var r = p.alpha * s;
  if (p.accumulate != 0u) { r += out[g]; }
  out[g] = r;
}
`;
