/** Shared fixtures of the train tests. */
import { randomArray } from "../gpu.ts";
import { type DraftExport, draftWeightShapes, type NamedWeight } from "../../lib/io/export.ts";
import { parseDraftConfig } from "../../lib/models/draft_config.ts";
import { countSupervisedTokens, selectDraftVocab } from "../../lib/data/vocab.ts";

const CONFIG = {
  architectures: ["LlamaForCausalLMEagle3"],
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 50,
  draft_vocab_size: 12,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-6,
  eagle_config: { eagle_aux_hidden_state_layer_ids: [0, 1, 1], use_aux_hidden_state: true },
};

/** A tiny draft (hidden 32, vocab 50, draft vocab 12, aux [0, 1, 1]) with seeded random weights. */
export function tinyExport(seed = 1): DraftExport {
  const config = parseDraftConfig(CONFIG, "tiny");
  const weights = new Map<string, NamedWeight>();
  let i = 0;
  for (const [name, shape] of draftWeightShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    weights.set(name, { values: randomArray(n, seed + i++, 0.3), shape });
  }
  const ids = Array.from({ length: 40 }, (_, j) => (j * 7) % 50);
  const mapping = selectDraftVocab(
    countSupervisedTokens([{ inputIds: ids, lossMask: ids.map(() => 1) }]),
    12,
    50,
  );
  return { config, weights, mapping, defaultAuxLayers: [1, 0, -2] };
}
