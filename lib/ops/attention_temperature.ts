/**
 * Llama 4's attention temperature tuning: q *= log1p(⌊(pos + 1)/floorScale⌋)·attnScale + 1 per query row, on
 * its NoPE layers (kernels/attention_temperature.ts). Forward only (a frozen target's).
 */
import * as K from "../../kernels/attention_temperature.ts";
import { params, type Program } from "../gpu/program.ts";
import type { Tensor } from "../tensor.ts";
import { expectDtype, expectShape } from "./check.ts";

/** The temperature's constants (`floor_scale`, `attn_scale`). */
export interface AttentionTemperature {
  floorScale: number;
  attnScale: number;
}

/** Where the query rows sit: offset + (row mod seqLen), or each row's position (i32 [rows]). */
export type RowPositions = { offset: number; seqLen: number } | { positions: Tensor };

/** Records q [rows, ...] (f32, rows = q.shape[0]·q.shape[1] for [B, T, nh, hd]) scaled in place. */
export async function attentionTemperatureForward(
  p: Program,
  q: Tensor,
  t: AttentionTemperature,
  at: RowPositions,
  rows: number,
): Promise<void> {
  expectDtype("attentionTemperature", "q", q, "f32");
  const width = q.size / rows;
  const positions = "positions" in at ? at.positions : null;
  if (positions) {
    expectDtype("attentionTemperature", "positions", positions, "i32");
    expectShape("attentionTemperature", "positions", positions, [rows]);
  }
  const { offset, seqLen } = "positions" in at ? { offset: 0, seqLen: 1 } : at;
  await p.add(
    {
      name: `attention_temperature${positions ? ".positions" : ""}`,
      code: K.attentionTemperature(!!positions),
      entryPoint: "main",
    },
    [
      params(["u32", q.size], ["u32", width], ["u32", seqLen], ["u32", offset], ["f32", t.floorScale], [
        "f32",
        t.attnScale,
      ]),
      q,
      positions,
    ],
    Math.ceil(q.size / K.TEMPERATURE_WG),
  );
}

/** CPU reference: the factor of position `pos`. */
export function attentionTemperatureCpu(pos: number, t: AttentionTemperature): number {
  return Math.log1p(Math.floor((pos + 1) / t.floorScale)) * t.attnScale + 1;
}
