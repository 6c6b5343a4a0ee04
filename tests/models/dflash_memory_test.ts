/**
 * The DFlash step's planned tensors (lib/models/dflash_memory.ts `dflashStepTensors`, the memory plan's "draft
 * step activations" and "logits" categories) against the buffer pool: the bytes a built step
 * (lib/models/dflash_step.ts) takes from an empty pool equal the planned tensors' pooled sizes, training and
 * evaluation, every row at once, in 64-row head windows, and with the embedding and lm_head as row blocks
 * (a device whose storage bindings are capped below them). A tensor listed with a wrong shape fails here.
 */
import assert from "node:assert/strict";
import { gpu, needsGpu, randomArray } from "../gpu.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { SimulatedPool } from "../../lib/gpu/buffers.ts";
import { Tensor } from "../../lib/tensor.ts";
import type { RowSplitMatrix } from "../../lib/ops/row_split.ts";
import { parseDflashConfig } from "../../lib/models/dflash_config.ts";
import { DflashDraft } from "../../lib/models/dflash.ts";
import { DflashStep } from "../../lib/models/dflash_step.ts";
import { dflashStepTensors } from "../../lib/models/dflash_memory.ts";

// H 128, V 256: the lm_head and embedding (128 KiB each) split in two on a 64 KiB binding; R = 2·16·4 = 128.
const CONFIG = parseDflashConfig({
  architectures: ["DFlashDraftModel"],
  hidden_size: 128,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  intermediate_size: 96,
  num_hidden_layers: 2,
  layer_types: ["sliding_attention", "full_attention"],
  sliding_window: 5,
  use_sliding_window: true,
  num_target_layers: 4,
  block_size: 4,
  vocab_size: 256,
  dflash_config: { target_layer_ids: [1, 2], mask_token_id: 255 },
  rms_norm_eps: 1e-6,
  rope_theta: 1e4,
}, "test config");
const NB = 2, S = 24, N = 16, V = 256, H = 128, CAP = 64 * 1024;

/** A [V, H] matrix as row blocks of at most `cap` bytes (one block without a cap). */
function blocksOf(device: Gpu, seed: number, cap: number | null): RowSplitMatrix {
  const rows = cap === null ? V : Math.floor(cap / (4 * H)), blocks = [];
  for (let row0 = 0; row0 < V; row0 += rows) {
    const n = Math.min(rows, V - row0);
    blocks.push({
      row0,
      tensor: Tensor.fromArray(device, randomArray(n * H, seed + row0), [n, H], "f32", "m"),
    });
  }
  return { rows: V, cols: H, blocks };
}

/** Bytes a step of these settings takes from an empty pool, and the plan's pooled bytes of its tensors. */
async function measure(device: Gpu, train: boolean, headRows: number | null, cap: number | null) {
  const draft = DflashDraft.create(device, CONFIG, { seed: 1 });
  const embedding = blocksOf(device, 1, cap), lmHead = blocksOf(device, 2, cap);
  const K = CONFIG.targetLayerIds.length;
  const features = Tensor.fromArray(device, randomArray(NB * S * K * H, 3), [NB * S, K * H], "f32", "f");
  device.pool.clear();
  device.pool.resetPeak();
  const before = device.pool.peakBytes;
  const step = await DflashStep.build(draft, {
    batches: NB,
    seq: S,
    blocks: N,
    lossType: "dflash",
    dpaceAlpha: 0.5,
    embedding,
    lmHead,
    headRows,
    features,
  }, train);
  const measured = device.pool.peakBytes - before;
  step.destroy();
  draft.destroy();
  features.destroy();
  for (const m of [embedding, lmHead]) m.blocks.forEach((b) => b.tensor.destroy());
  const pool = new SimulatedPool(device.limits.maxBufferSize);
  const tensors = dflashStepTensors(CONFIG, {
    batches: NB,
    seq: S,
    blocks: N,
    train,
    headRows,
    embedBlockRows: embedding.blocks.map((b) => b.tensor.shape[0]),
    lmHeadBlockRows: lmHead.blocks.map((b) => b.tensor.shape[0]),
    alignment: device.limits.minStorageBufferOffsetAlignment,
    binding: device.limits.maxStorageBufferBindingSize,
  });
  for (const t of tensors) pool.acquire(t.bytes);
  return { measured, planned: pool.peakBytes };
}

Deno.test(
  { name: "dflash step tensors: the planned tensors are the built step's, byte for byte", ...needsGpu },
  async () => {
    const capped = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
    try {
      for (const train of [true, false]) {
        for (
          const [what, headRows, device, cap] of [
            ["every row", null, gpu!, null],
            ["64-row windows", 64, gpu!, null],
            ["split embedding and lm_head", 64, capped, CAP],
          ] as const
        ) {
          const { measured, planned } = await measure(device, train, headRows, cap);
          assert.equal(
            planned,
            measured,
            `${train ? "train" : "eval"}, ${what}: planned ${planned}, measured ${measured}`,
          );
        }
      }
    } finally {
      capped.destroy();
    }
  },
);
