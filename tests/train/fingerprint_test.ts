/** The resume contract: which differences between a checkpoint's run and the resumed one are refused. */
import assert from "node:assert/strict";
import { runChanges } from "../../lib/train/fingerprint.ts";

Deno.test("resume contract: a setting a checkpoint predates compares as the value the code had then", () => {
  const old = { ttt_length: 7, lk_loss_type: "none" }; // saved before the settings below existed
  const now = {
    ...old,
    ttt_loss_decay: 0.8,
    optimizer: "adamw",
    muon_lr: null,
    muon_momentum: 0.95,
    muon_weight_decay: 0.1,
    draft_type: "eagle3",
    block_size: 16,
    num_draft_layers: 1,
    target_layer_ids: null,
    mask_token_id: null,
    sliding_window: null,
    num_anchors: 512,
    loss_type: "dflash",
    loss_decay_gamma: null,
    dpace_alpha: 0.5,
    mlp_saved_dtype: "f32",
  };
  const changed = (settings: Record<string, unknown>) =>
    runChanges(old, settings, null, {}).map((c) => [c.name, c.saved, c.now]);
  assert.deepEqual(changed(now), []);
  assert.deepEqual(changed({ ...now, ttt_loss_decay: 1 }), [["ttt_loss_decay", "0.8", "1"]]);
  assert.deepEqual(changed({ ...now, optimizer: "muon" }), [["optimizer", '"adamw"', '"muon"']]);
  assert.deepEqual(changed({ ...now, lk_loss_type: "lambda" }), [["lk_loss_type", '"none"', '"lambda"']]);
  assert.deepEqual(changed({ ...now, num_anchors: 64 }), [["num_anchors", "512", "64"]]);
  assert.deepEqual(changed({ ...now, mlp_saved_dtype: "f16" }), [["mlp_saved_dtype", '"f32"', '"f16"']]);
});
