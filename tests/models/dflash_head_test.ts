/**
 * The DFlash head in windows of rows (lib/models/dflash_head.ts): a step whose logits exist 64 rows at a time
 * equals the whole step bit for bit (row stats, per-slot sums, every gradient) for every loss type, and an
 * lm_head over several storage bindings (a device whose maxStorageBufferBindingSize is capped below it) gives
 * the uncapped step's results within float rounding: ∂/∂hidden then sums the vocabulary blocks' products one
 * after another instead of in one contraction.
 */
import assert from "node:assert/strict";
import { assertClose, gpu, needsGpu } from "../gpu.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { Tensor } from "../../lib/tensor.ts";
import { mulberry32 } from "../../lib/data/random.ts";
import { dflashRanges } from "../../lib/ops/dflash_attention.ts";
import { DFLASH_LOSS_TYPES, type DflashLossType } from "../../lib/ops/dflash_loss.ts";
import type { RowSplitMatrix } from "../../lib/ops/row_split.ts";
import { parseDflashConfig } from "../../lib/models/dflash_config.ts";
import { DflashDraft, type DflashWeights } from "../../lib/models/dflash.ts";
import {
  dflashBlockInputs,
  dflashDecayedWeights,
  sampleDflashAnchors,
} from "../../lib/models/dflash_blocks.ts";
import { DflashStep } from "../../lib/models/dflash_step.ts";
import { dflashBindingRows, dflashWindowGranule, dflashWindowRows } from "../../lib/models/dflash_head.ts";

// H 128 and V 256: the lm_head (128 KiB) is the one tensor over a 64 KiB binding; nb·N·B = 2·16·4 = 128 rows.
const CONFIG = parseDflashConfig({
  architectures: ["DFlashDraftModel"],
  hidden_size: 128,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  intermediate_size: 128,
  num_hidden_layers: 2,
  layer_types: ["sliding_attention", "full_attention"],
  sliding_window: 5,
  use_sliding_window: true,
  num_target_layers: 4,
  block_size: 4,
  vocab_size: 256,
  dflash_config: { target_layer_ids: [2], mask_token_id: 255 },
  rms_norm_eps: 1e-6,
  rope_theta: 1e4,
}, "test config");
const NB = 2, S = 32, N = 16, V = 256, H = 128, CAP = 64 * 1024;

/** Seeded host data of one micro-batch: weights, target parts, inputs. */
function hostData() {
  const rand = mulberry32(7);
  const randn = (n: number, scale: number) =>
    Float32Array.from({ length: n }, () => (rand() * 2 - 1) * scale);
  const ids = Int32Array.from({ length: NB * S }, () => Math.floor(rand() * 250));
  const mask = Float32Array.from({ length: NB * S }, (_, i) => (i % S) > 3 ? 1 : 0);
  const blocks = sampleDflashAnchors(randn(NB * (S - 1), 0.5).map(Math.abs), mask, NB, S, N, 4, N)!;
  return {
    embed: randn(V * H, 1),
    head: randn(V * H, 0.2),
    features: randn(NB * S * H, 1),
    blocks,
    inputs: dflashBlockInputs(CONFIG, blocks, ids, mask, S),
  };
}

type Host = ReturnType<typeof hostData>;

/** The lm_head as row blocks of at most `cap` bytes each (one block without a cap). */
function headOf(device: Gpu, data: Float32Array<ArrayBuffer>, cap: number | null): RowSplitMatrix {
  const rows = cap === null ? V : Math.floor(cap / (4 * H));
  const blocks = [];
  for (let row0 = 0; row0 < V; row0 += rows) {
    const n = Math.min(rows, V - row0);
    blocks.push({
      row0,
      tensor: Tensor.fromArray(device, data.slice(row0 * H, (row0 + n) * H), [n, H], "f32", `head[${row0}]`),
    });
  }
  return { rows: V, cols: H, blocks };
}

/** Runs one training step of `lossType` on `device`; returns stats, sums and every gradient. */
async function runStep(
  device: Gpu,
  host: Host,
  weights: DflashWeights,
  opts: { lossType: DflashLossType; headRows: number | null; cap: number | null },
): Promise<Map<string, Float32Array>> {
  const draft = DflashDraft.create(device, CONFIG, { weights });
  const embedding = headOf(device, host.embed, opts.cap), lmHead = headOf(device, host.head, opts.cap);
  const step = await DflashStep.build(draft, {
    batches: NB,
    seq: S,
    blocks: N,
    lossType: opts.lossType,
    dpaceAlpha: 0.5,
    embedding,
    lmHead,
    headRows: opts.headRows,
  });
  const inp = step.inputs, R0 = step.dims.blockRow0, h = host.inputs;
  const omega = dflashDecayedWeights(h.weights, 4, opts.lossType === "dflash" ? 3 : null);
  inp.features.write(host.features);
  inp.noiseIds.write(h.noiseIds);
  inp.labels.write(h.labels);
  inp.weights.write(h.weights);
  inp.omega.write(omega);
  inp.gradScale.write(Float32Array.of(0.01));
  inp.cos.write(h.cos);
  inp.sin.write(h.sin);
  inp.fullRanges.write(dflashRanges(host.blocks, S, null, R0).table);
  inp.slidingRanges.write(dflashRanges(host.blocks, S, 5, R0).table);
  await draft.zeroGrads();
  step.run();
  const out = new Map<string, Float32Array>([
    ["row stats", await step.rowStats.readFloat()],
    ["slot sums", await step.sums.readFloat()],
    ["omega", await inp.omega.readFloat()],
    ...await draft.getGrads(),
  ]);
  assert.equal(step.logits.shape[0], dflashWindowRows(NB * N * 4, opts.headRows, 4));
  step.destroy();
  draft.destroy();
  for (const m of [embedding, lmHead]) m.blocks.forEach((b) => b.tensor.destroy());
  return out;
}

Deno.test("dflash head windows: whole blocks at multiples of 64 rows", () => {
  assert.equal(dflashWindowGranule(4), 64);
  assert.equal(dflashWindowGranule(16), 64);
  assert.equal(dflashWindowGranule(3), 192);
  assert.equal(dflashWindowRows(128, null, 4), 128);
  assert.equal(dflashWindowRows(128, 200, 4), 128);
  assert.equal(dflashWindowRows(1000, 100, 3), 192);
  assert.equal(dflashWindowRows(1000, 500, 3), 384);
  // 4 × 256 floats per row: 64 KiB binds 64 rows.
  assert.equal(dflashBindingRows(128, 256, 4, 64 * 1024), 64);
  assert.equal(dflashBindingRows(128, 256, 4, 1 << 20), 128);
});

Deno.test(
  {
    name: "dflash head windows: a windowed step equals the whole step bit for bit (every loss type)",
    ...needsGpu,
  },
  async () => {
    const host = hostData(), weights = DflashDraft.create(gpu!, CONFIG, { seed: 3 });
    const w = await weights.getWeights();
    weights.destroy();
    for (const lossType of DFLASH_LOSS_TYPES) {
      const whole = await runStep(gpu!, host, w, { lossType, headRows: null, cap: null });
      const windowed = await runStep(gpu!, host, w, { lossType, headRows: 64, cap: null });
      for (const [name, want] of whole) assert.deepEqual(windowed.get(name), want, `${lossType}: ${name}`);
      assert.ok(whole.get("layers.0.self_attn.q_proj.weight")!.some((x) => x !== 0), "gradients flow");
    }
  },
);

Deno.test(
  { name: "dflash head windows: an lm_head over several bindings equals the whole one", ...needsGpu },
  async () => {
    const host = hostData(), weights = DflashDraft.create(gpu!, CONFIG, { seed: 3 });
    const w = await weights.getWeights();
    weights.destroy();
    const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
    try {
      for (const lossType of ["dflash", "dpace"] as const) {
        const full = await runStep(gpu!, host, w, { lossType, headRows: null, cap: null });
        const rows = dflashBindingRows(NB * N * 4, V, 4, CAP);
        const capped = await runStep(small, host, w, { lossType, headRows: rows, cap: CAP });
        for (const [name, want] of full) {
          const scale = Math.max(1e-30, ...want.map(Math.abs));
          assertClose(capped.get(name)!, want, `${lossType}: ${name}`, { atol: 1e-5 * scale, rtol: 1e-5 });
        }
      }
    } finally {
      small.destroy();
    }
  },
);
