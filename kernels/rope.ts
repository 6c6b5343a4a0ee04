/**
 * Rotary position embedding kernels (Hugging Face half-rotation, not interleaved), on f32 x[B, T, nheads, hd]
 * with a table cos/sin[maxPositions, r/2] (scaling variants and yarn's attention factor already folded in),
 * r ≤ hd the rotary width: r = hd, or the first r = partial_rotary_factor·hd columns of each head (Phi-4-mini,
 * transformers' `q_rot, q_pass` split), the other hd − r columns passing through unchanged.
 *
 * For column j < r/2 of a head, the pair (x1, x2) = (x[j], x[j + r/2]) at position pos = t + offset becomes
 *   forward:  (x1·c − x2·s, x2·c + x1·s)        i.e. x·cos + rotate_half(x)·sin, rotate_half(x) = (−x2, x1)
 *   backward: (d1·c + d2·s, d2·c − d1·s)        the transpose: rotation by −angle
 * with c = cos[pos, j], s = sin[pos, j]. One invocation per unit j < hd/2 of a head: a pair to rotate when
 * j < r/2, else two pass-through columns to copy; it reads before writing, so the output may be the input.
 *
 * Two modules with the same entry points `forward` and `backward`: `separate` (input and output in distinct
 * buffers) and `aliased` (input and output in the same buffer, bound once read-write, at element offsets
 * given in the params; WebGPU forbids binding one buffer both read-only and writable in a dispatch).
 */
import { LINEAR_WORKGROUP } from "./common.ts";

/** Invocations per workgroup. */
export const ROPE_WG = 256;

function ropeModule(aliased: boolean, vec4 = false): string {
  const T = vec4 ? "vec4<f32>" : "f32";
  const buffers = aliased
    ? /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> buf: array<${T}>;
@group(0) @binding(2) var<storage, read> cos_table: array<${T}>;
@group(0) @binding(3) var<storage, read> sin_table: array<${T}>;
fn load(k: u32) -> ${T} { return buf[p.in_offset + k]; }
fn store(k: u32, v: ${T}) { buf[p.out_offset + k] = v; }`
    : /* wgsl */ `
@group(0) @binding(1) var<storage, read> src: array<${T}>;
@group(0) @binding(2) var<storage, read_write> dst: array<${T}>;
@group(0) @binding(3) var<storage, read> cos_table: array<${T}>;
@group(0) @binding(4) var<storage, read> sin_table: array<${T}>;
fn load(k: u32) -> ${T} { return src[k]; }
fn store(k: u32, v: ${T}) { dst[k] = v; }`;
  return /* wgsl */ `
// units = B·T·nheads·(hd/2); half = r/2 (the table's width); head_half = hd/2; position of step t: t + pos_offset.
struct Params {
  units: u32, seq: u32, nheads: u32, half: u32, pos_offset: u32, in_offset: u32, out_offset: u32, head_half: u32,
}
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
${buffers}
${ROTATE}
@compute @workgroup_size(${ROPE_WG})
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ROPE_WG}u + lid;
  if (i >= p.units) { return; }
  rotate_pair(i, 1.0);
}

@compute @workgroup_size(${ROPE_WG})
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${ROPE_WG}u + lid;
  if (i >= p.units) { return; }
  rotate_pair(i, -1.0);
}
`;
}

/**
 * One invocation per unit j < hd/2 of a head (the module doc). With `vec4` the same code runs on vec4 units
 * (hd/2, r/2 and the offsets multiples of 4; the op passes units, half, head_half and the offsets divided by
 * 4): unit j is then pairs 4j..4j+3, or pass-through columns 8j..8j+7, with the same products per element.
 */
const ROTATE = /* wgsl */ `
// Rotates pair i by +angle (direction 1) or −angle (direction −1), or copies two pass-through columns.
fn rotate_pair(i: u32, direction: f32) {
  let row = i / p.head_half;        // (b, t, head)
  let j = i % p.head_half;
  let base = row * 2u * p.head_half;
  if (j >= p.half) {
    let e = base + 2u * j;          // columns 2j, 2j + 1 ≥ r: not rotated
    store(e, load(e));
    store(e + 1u, load(e + 1u));
    return;
  }
  let t = (row / p.nheads) % p.seq;
  let k = (t + p.pos_offset) * p.half + j;
  let c = cos_table[k];
  let s = direction * sin_table[k];
  let e = base + j;
  let x1 = load(e);
  let x2 = load(e + p.half);
  store(e, x1 * c - x2 * s);
  store(e + p.half, x2 * c + x1 * s);
}
`;

/** Input and output in distinct buffers: bindings params, src, dst, cos, sin. */
export const separate: string = ropeModule(false);

/** Input and output in one buffer (in place, or two ranges of an arena): bindings params, buf, cos, sin. */
export const aliased: string = ropeModule(true);

/** {@link separate} in vec4 units (see `ROTATE`). */
export const separateVec4: string = ropeModule(false, true);

/** {@link aliased} in vec4 units (see `ROTATE`). */
export const aliasedVec4: string = ropeModule(true, true);
