/**
 * Reliability: a draft trained for another target is named as such (not "aux layers must be strictly
 * ascending"): its aux layers repeat a layer, as only targets of fewer than three layers need, or name a layer
 * the target does not have.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadTargetConfig } from "../../lib/models/config.ts";
import { checkDraftFitsTarget, parseDraftConfig } from "../../lib/models/draft_config.ts";
import { TARGET } from "../train/fixtures.ts";

const draftJson = (aux: number[]) => ({
  architectures: ["LlamaForCausalLMEagle3"],
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 256,
  draft_vocab_size: 12,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-6,
  eagle_config: { eagle_aux_hidden_state_layer_ids: aux, use_aux_hidden_state: true },
});

Deno.test("a draft of a 2-layer target on an 8-layer one, or of a deeper one: named as another target's", async () => {
  const target = await loadTargetConfig(join(TARGET, "config.json"));
  assert.equal(target.numLayers, 8);
  checkDraftFitsTarget(parseDraftConfig(draftJson([1, 3, 4]), "ok"), target);
  assert.throws(
    () => checkDraftFitsTarget(parseDraftConfig(draftJson([0, 1, 1]), "shallow"), target),
    /eagle_aux_hidden_state_layer_ids: aux layers \[0,1,1\] must be strictly ascending for this 8-layer target: a draft trained for another target\?/,
  );
  assert.throws(
    () => checkDraftFitsTarget(parseDraftConfig(draftJson([1, 15, 28]), "deep"), target),
    /names layer 15, but the target has 8 layers \(0\.\.7\): a draft trained for another target\?/,
  );
});
