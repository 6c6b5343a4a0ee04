/**
 * Embedding kernels. Forward: out[i, h] = table[ids[i], h] (0 when ids[i] is outside [0, V)), from an f32,
 * f16 or bf16 table (16-bit tables packed in u32 words, element 2k in the low half; decoded with integer
 * operations, so f16 tables need no `shader-f16`). Backward without atomics: one invocation per (row v,
 * column h) of dtable sums dout over the positions where token v occurs, in order, read from a CSR index
 * (offsets[V + 1], positions[n]) built on the host.
 */
import { LINEAR_WORKGROUP } from "./common.ts";
import { type FloatDType, HALF_BITS } from "./convert.ts";

/** Invocations per workgroup. */
export const EMBEDDING_WG = 256;

function tableAccess(dtype: FloatDType): string {
  switch (dtype) {
    case "f32":
      return /* wgsl */ `
@group(0) @binding(2) var<storage, read> table: array<f32>;
fn table_at(e: u32) -> f32 { return table[e]; }`;
    case "f16":
      return /* wgsl */ `
@group(0) @binding(2) var<storage, read> table: array<u32>;
fn table_at(e: u32) -> f32 { return bitcast<f32>(f16_to_f32_bits(half_of(table[e >> 1u], e))); }`;
    case "bf16":
      return /* wgsl */ `
@group(0) @binding(2) var<storage, read> table: array<u32>;
fn table_at(e: u32) -> f32 { return bitcast<f32>(half_of(table[e >> 1u], e) << 16u); }`;
  }
}

/** The forward module for a table of `dtype`, entry point `forward`. Bindings: params, ids, table, out. */
export function forwardModule(dtype: FloatDType): string {
  return /* wgsl */ `
struct Params { n: u32, hidden: u32, vocab: u32, _pad: u32 }
${LINEAR_WORKGROUP}
${HALF_BITS}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
${tableAccess(dtype)}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${EMBEDDING_WG})
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${EMBEDDING_WG}u + lid;
  if (i >= p.n * p.hidden) { return; }
  let row = i / p.hidden;
  let col = i % p.hidden;
  let id = ids[row];
  var v = 0.0;
  if (id >= 0 && u32(id) < p.vocab) { v = table_at(u32(id) * p.hidden + col); }
  out[i] = v;
}
`;
}

/**
 * dtable[v, h] = Σ_{k in offsets[v]..offsets[v+1]} dout[positions[k], h] (plus dtable[v, h] with
 * `accumulate`). Bindings: params, offsets, positions, dout, dtable.
 */
export const backward = /* wgsl */ `
struct Params { vocab: u32, hidden: u32, accumulate: u32, _pad: u32 }
${LINEAR_WORKGROUP}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> offsets: array<i32>;
@group(0) @binding(2) var<storage, read> positions: array<i32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> dtable: array<f32>;

@compute @workgroup_size(${EMBEDDING_WG})
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = linear_workgroup(wg, nwg) * ${EMBEDDING_WG}u + lid;
  if (i >= p.vocab * p.hidden) { return; }
  let v = i / p.hidden;
  let col = i % p.hidden;
  var sum = 0.0;
  for (var k = offsets[v]; k < offsets[v + 1u]; k++) {
    sum += dout[u32(positions[k]) * p.hidden + col];
  }
  if (p.accumulate != 0u) { dtable[i] += sum; } else { dtable[i] = sum; }
}
`;
