/**
 * Realistic vocabularies on a small binding: random-weight targets with Llama-3.1-8B's vocabulary (128,256,
 * untied lm_head) and Qwen3-8B's (151,936, with its q/k norms) at a reduced hidden size, and a 32,000-token
 * draft vocabulary (SpecForge's Llama-3 recipe), train two updates on a device whose storage binding is capped at
 * 6 MiB: the target's embedding and lm_head load as row blocks, the draft's lm_head, its gradient and its Adam
 * moments run block by block, and the run gives the uncapped device's losses and weights (to f32 summation
 * order: a split linear sums ∂x block by block); greedy speculative decoding over the split target equals plain
 * greedy decoding.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpu, needsGpu, rng } from "../gpu.ts";
import { Gpu } from "../../lib/gpu/device.ts";
import { fromFloat32, type RawTensor, toFloat32, writeSafetensors } from "../../lib/io/safetensors.ts";
import { wordLevelTokenizerJson } from "../../lib/data/tokenizer.ts";
import { TargetModel } from "../../lib/models/target.ts";
import { generate } from "../../lib/models/generate.ts";
import { deriveDraftConfig } from "../../lib/models/draft_config.ts";
import { Eagle3Draft } from "../../lib/models/eagle3.ts";
import { SpeculativeDecoder } from "../../lib/eval/speculative.ts";
import { trainSettings } from "../../lib/train/config.ts";
import { trainOnline } from "../../lib/train/trainer.ts";
import { ProgressPrinter } from "../../lib/train/metrics.ts";
import { loadCheckpoint } from "../../lib/train/checkpoint.ts";

const CAP = 6 * 2 ** 20;
const H = 64, I = 128, HEADS = 4, KV = 2, HD = 16;

const TARGETS = [
  { name: "Llama-3.1-8B vocabulary", arch: "LlamaForCausalLM", type: "llama", vocab: 128256, qkNorm: false },
  { name: "Qwen3-8B vocabulary", arch: "Qwen3ForCausalLM", type: "qwen3", vocab: 151936, qkNorm: true },
];

/** A 2-layer random target of `t`'s architecture and vocabulary, hidden 64, with a word-level tokenizer. */
async function writeTarget(dir: string, t: typeof TARGETS[number]): Promise<void> {
  let seed = 1;
  const w = (shape: number[], scale: number): RawTensor => {
    const r = rng(seed++), n = shape.reduce((a, b) => a * b, 1);
    return fromFloat32(Float32Array.from({ length: n }, () => scale * (2 * r() - 1)), shape);
  };
  const tensors = new Map<string, RawTensor>([
    ["model.embed_tokens.weight", w([t.vocab, H], 0.5)],
    ["lm_head.weight", w([t.vocab, H], 0.1)],
    ["model.norm.weight", w([H], 1)],
  ]);
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    for (
      const [name, shape] of Object.entries({
        "input_layernorm.weight": [H],
        "post_attention_layernorm.weight": [H],
        "self_attn.q_proj.weight": [HEADS * HD, H],
        "self_attn.k_proj.weight": [KV * HD, H],
        "self_attn.v_proj.weight": [KV * HD, H],
        "self_attn.o_proj.weight": [H, HEADS * HD],
        "mlp.gate_proj.weight": [I, H],
        "mlp.up_proj.weight": [I, H],
        "mlp.down_proj.weight": [H, I],
        ...(t.qkNorm ? { "self_attn.q_norm.weight": [HD], "self_attn.k_norm.weight": [HD] } : {}),
      })
    ) tensors.set(p + name, w(shape, shape.length === 1 ? 1 : 0.15));
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify({
      architectures: [t.arch],
      model_type: t.type,
      hidden_size: H,
      intermediate_size: I,
      num_hidden_layers: 2,
      num_attention_heads: HEADS,
      num_key_value_heads: KV,
      head_dim: HD,
      vocab_size: t.vocab,
      max_position_embeddings: 64,
      rms_norm_eps: 1e-6,
      rope_theta: 500000,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
    }),
  );
  await Deno.writeTextFile(join(dir, "tokenizer.json"), wordLevelTokenizerJson(t.vocab));
}

/** Two updates of train-online on `device` into `out`; the logged losses and the final master weights. */
async function twoUpdates(device: Gpu, root: string, out: string) {
  const r = await trainOnline(device, {
    settings: trainSettings({
      targetModelPath: join(root, "target"),
      trainDataPath: join(root, "train.jsonl"),
      outputDir: join(root, out),
      cacheDir: join(root, "cache"),
      chatTemplate: "llama3",
      draftVocabSize: 32000,
      batchSize: 2,
      numEpochs: 1,
      tttLength: 2,
      learningRate: 1e-3,
      logInterval: 1,
      evalInterval: 0,
      saveInterval: 0,
    }),
    hub: { cacheDir: join(root, "hub"), offline: true },
    progress: new ProgressPrinter(() => {}, false),
  });
  const state = await loadCheckpoint(r.checkpoint!);
  const losses = (await Deno.readTextFile(join(root, out, "metrics.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l).loss as number);
  return { losses, weights: state.weights, peak: r.peakBytes, planned: r.plannedPeakBytes };
}

/** Greedy speculative decoding on `small` (embedding and lm_head in row blocks) equals plain greedy decoding. */
async function assertSpeculativeMatchesGreedy(small: Gpu, dir: string): Promise<void> {
  const [plainTarget, splitTarget] = [await TargetModel.load(gpu!, dir), await TargetModel.load(small, dir)];
  const cfg = deriveDraftConfig(splitTarget.config, {
    draftVocabSize: 1024,
    auxLayers: splitTarget.auxLayers,
  });
  const draft = Eagle3Draft.create(small, cfg, { seed: 2 });
  const dec = new SpeculativeDecoder(splitTarget, draft, Int32Array.from({ length: 1024 }, (_, i) => i), {
    numSteps: 3,
    topk: 1,
  });
  try {
    const prompts = [[1, 500, 70000, 9], [1, 3]];
    const plain = await generate(plainTarget, prompts, { maxNewTokens: 6, eosTokenIds: [] });
    for (const [i, prompt] of prompts.entries()) {
      const out = await dec.generate(prompt, { maxNewTokens: 6, eosTokenIds: [] });
      assert.deepEqual(out.tokens, plain[i], `speculative decoding, prompt ${i}`);
    }
  } finally {
    dec.destroy();
    draft.destroy();
    splitTarget.destroy();
    plainTarget.destroy();
  }
}

for (const t of TARGETS) {
  Deno.test(
    { name: `realistic shapes: ${t.name}, draft vocab 32,000, on a 6 MiB binding`, ...needsGpu },
    async () => {
      const root = await Deno.makeTempDir({ prefix: "eaglet-shapes-" });
      const small = await Gpu.create({ capLimits: { maxStorageBufferBindingSize: CAP } });
      try {
        await Deno.mkdir(join(root, "target"));
        await writeTarget(join(root, "target"), t);
        const r = rng(7);
        const rows = Array.from({ length: 4 }, (_, i) => {
          const ids = Array.from({ length: 16 }, () => 3 + Math.floor(r() * (t.vocab - 3)));
          return JSON.stringify({
            id: `s${i}`,
            input_ids: ids,
            loss_mask: ids.map((_, j) => (j >= 2 ? 1 : 0)),
          });
        });
        await Deno.writeTextFile(join(root, "train.jsonl"), rows.join("\n") + "\n");

        const model = await TargetModel.load(small, join(root, "target"));
        assert.ok(model.embed.blocks.length >= 5, `embedding in ${model.embed.blocks.length} blocks`);
        assert.ok(model.lmHead.blocks.length >= 5, `lm_head in ${model.lmHead.blocks.length} blocks`);
        model.destroy();

        const whole = await twoUpdates(gpu!, root, "whole");
        const split = await twoUpdates(small, root, "split");
        // The pool's peak holds at least the target's embedding and lm_head (2 × V × 64 f32) and the draft's
        // lm_head with its gradient and Adam moments (4 × 32,000 × 64 f32), and not much more at these shapes.
        const floor = (2 * t.vocab * H + 4 * 32000 * H) * 4;
        assert.ok(split.peak >= floor && split.peak <= 1.5 * floor, `peak ${split.peak} vs ${floor}`);
        // The memory plan, made before anything was loaded, foresaw that peak (lib/train/memory_plan.ts).
        assert.ok(
          Math.abs(split.planned - split.peak) <= 0.1 * split.peak,
          `planned ${split.planned}, peak ${split.peak}`,
        );
        assert.equal(whole.losses.length, 2);
        whole.losses.forEach((l, i) =>
          assert.ok(Math.abs(l - split.losses[i]) <= 1e-5 * Math.abs(l), `${l} vs ${split.losses[i]}`)
        );
        for (const [name, a] of whole.weights) {
          const [u, v] = [toFloat32(a), toFloat32(split.weights.get(name)!)];
          const scale = u.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
          const worst = u.reduce((m, x, i) => Math.max(m, Math.abs(x - v[i])), 0);
          // Adam divides by √v: a gradient that differs in its last bits can move a small weight by a visible
          // fraction of the learning rate, hence 1e-3 of the tensor's scale (measured: ≤ 1.2e-4).
          assert.ok(worst <= 1e-3 * scale, `${name}: worst difference ${worst} of scale ${scale}`);
        }
        await assertSpeculativeMatchesGreedy(small, join(root, "target"));
      } finally {
        small.destroy();
        await Deno.remove(root, { recursive: true });
      }
    },
  );
}
