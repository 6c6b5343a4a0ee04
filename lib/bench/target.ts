/**
 * Speed of the target model: the prefill forward (one sequence of T tokens: aux states and full logits, what
 * online training and generation's prefill run) and cached decoding (one token per sequence per step,
 * including the one logits read-back per step that sampling needs; the prefill is excluded), for tinystories-656K when it is at hand
 * and for a random-weight Llama of hidden 512 and 8 layers (bf16 weights, written to a temporary directory),
 * whose prefill is also timed with its layers streamed through one weight slot, and for a random Qwen3-MoE of the
 * same attention beside a dense Llama whose MLP is as wide as the MoE's active experts.
 */
import type { Gpu } from "../gpu/device.ts";
import { fromFloat32As, type RawTensor, writeSafetensors } from "../io/safetensors.ts";
import { pathExists } from "../io/atomic.ts";
import { mulberry32 } from "../data/random.ts";
import { TargetModel } from "../models/target.ts";
import { StreamedTarget } from "../models/target_stream.ts";
import { Generator } from "../models/generate.ts";
import { type BenchOptions, type BenchRow, timeProgram } from "./types.ts";

/** Where `deno task bench` finds tinystories-656K (relative to the repository, as in the tests). */
const TINYSTORIES = new URL("../../../shared/models/tinystories-656K", import.meta.url).pathname;

/** Dimensions of a random Llama written by {@link writeRandomLlama}. */
export interface RandomLlamaDims {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  vocab: number;
  /** A Qwen3-MoE instead (q/k norms, every MLP sparse): routed experts, experts per token, expert width. */
  moe?: { experts: number; topK: number; expertIntermediate: number };
}

/**
 * Writes config.json and model.safetensors (bf16, seeded uniform weights of scale 1/√fan-in, unit norms) of a
 * LlamaForCausalLM with untied embeddings into `dir` (a Qwen3MoeForCausalLM with `d.moe`).
 */
export async function writeRandomLlama(dir: string, d: RandomLlamaDims, seed = 1): Promise<void> {
  const rand = mulberry32(seed);
  const matrix = (rows: number, cols: number): RawTensor => {
    const a = 1 / Math.sqrt(cols);
    const values = new Float32Array(rows * cols);
    for (let i = 0; i < values.length; i++) values[i] = (2 * rand() - 1) * a;
    return fromFloat32As(values, [rows, cols], "BF16");
  };
  const ones = (n: number) => fromFloat32As(new Float32Array(n).fill(1), [n], "BF16");
  const hd = d.hidden / d.heads;
  const tensors: Array<[string, RawTensor]> = [["model.embed_tokens.weight", matrix(d.vocab, d.hidden)]];
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      [`${p}.input_layernorm.weight`, ones(d.hidden)],
      [`${p}.self_attn.q_proj.weight`, matrix(d.heads * hd, d.hidden)],
      [`${p}.self_attn.k_proj.weight`, matrix(d.kvHeads * hd, d.hidden)],
      [`${p}.self_attn.v_proj.weight`, matrix(d.kvHeads * hd, d.hidden)],
      [`${p}.self_attn.o_proj.weight`, matrix(d.hidden, d.heads * hd)],
      [`${p}.post_attention_layernorm.weight`, ones(d.hidden)],
      ...mlpTensors(`${p}.mlp`, d, matrix),
    );
    if (d.moe) {
      tensors.push([`${p}.self_attn.q_norm.weight`, ones(hd)], [`${p}.self_attn.k_norm.weight`, ones(hd)]);
    }
  }
  tensors.push(["model.norm.weight", ones(d.hidden)], ["lm_head.weight", matrix(d.vocab, d.hidden)]);
  await writeSafetensors(`${dir}/model.safetensors`, tensors, { format: "pt" });
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({
      architectures: [d.moe ? "Qwen3MoeForCausalLM" : "LlamaForCausalLM"],
      model_type: d.moe ? "qwen3_moe" : "llama",
      ...(d.moe
        ? {
          head_dim: hd,
          num_experts: d.moe.experts,
          num_experts_per_tok: d.moe.topK,
          moe_intermediate_size: d.moe.expertIntermediate,
          norm_topk_prob: true,
        }
        : {}),
      hidden_size: d.hidden,
      intermediate_size: d.intermediate,
      num_hidden_layers: d.layers,
      num_attention_heads: d.heads,
      num_key_value_heads: d.kvHeads,
      vocab_size: d.vocab,
      max_position_embeddings: 2048,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
      torch_dtype: "bfloat16",
    }),
  );
}

/** A layer's MLP tensors: the dense SwiGLU, or the router and every expert's. */
function mlpTensors(
  m: string,
  d: RandomLlamaDims,
  matrix: (rows: number, cols: number) => RawTensor,
): Array<[string, RawTensor]> {
  const swiglu = (p: string, inner: number): Array<[string, RawTensor]> => [
    [`${p}.gate_proj.weight`, matrix(inner, d.hidden)],
    [`${p}.up_proj.weight`, matrix(inner, d.hidden)],
    [`${p}.down_proj.weight`, matrix(d.hidden, inner)],
  ];
  if (!d.moe) return swiglu(m, d.intermediate);
  const out: Array<[string, RawTensor]> = [[`${m}.gate.weight`, matrix(d.moe.experts, d.hidden)]];
  for (let e = 0; e < d.moe.experts; e++) out.push(...swiglu(`${m}.experts.${e}`, d.moe.expertIntermediate));
  return out;
}

/**
 * Prefill forward and KV-cache decode tokens/s of tinystories-656K, of a random hidden-512 Llama, and of a random
 * Qwen3-MoE (64 experts, top-8, Qwen3-30B-A3B's proportions at hidden 512) beside a dense Llama of the same
 * active MLP width (8 × 192 = 1536).
 */
export async function benchTarget(gpu: Gpu, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const quick = opts.quick ?? false;
  const seqLen = quick ? 64 : 256;
  const reps = quick ? 2 : 5;
  const promptLen = 16, newTokens = quick ? 8 : 32;
  const rows: BenchRow[] = [];

  const measure = async (label: string, dir: string) => {
    const model = await TargetModel.load(gpu, dir, { onMessage: () => {} });
    const c = model.config;
    const dims = `H${c.hiddenSize} L${c.numLayers} V${c.vocabSize}`;
    try {
      const f = await model.forward(1, seqLen, { aux: true, logits: true });
      try {
        f.run(Int32Array.from({ length: seqLen }, (_, i) => 3 + (i * 7) % (c.vocabSize - 3)), [seqLen]);
        const ms = await timeProgram(gpu, f.program, reps);
        rows.push({
          group: "target",
          name: `${label} prefill forward`,
          shape: `B1 T${seqLen} ${dims}`,
          ms,
          tokensPerSec: seqLen / ms * 1000,
          note: "aux states + full logits",
        });
      } finally {
        f.destroy();
      }
      const g = new Generator(model);
      try {
        for (const batch of [1, 4]) {
          const prompts = Array.from(
            { length: batch },
            (_, b) => Array.from({ length: promptLen }, (_, i) => 3 + (b * 31 + i * 7) % (c.vocabSize - 3)),
          );
          const run = async (n: number) => {
            const t0 = performance.now();
            await g.generate(prompts, { maxNewTokens: n, eosTokenIds: [] });
            return performance.now() - t0;
          };
          await run(newTokens); // builds and caches every program
          // The prefill and first token cost the same in both runs: the difference is newTokens − 1 steps.
          const stepMs = ((await run(newTokens)) - (await run(1))) / (newTokens - 1);
          rows.push({
            group: "target",
            name: `${label} decode (KV cache)`,
            shape: `B${batch} prompt ${promptLen} +${newTokens} ${dims}`,
            ms: stepMs,
            tokensPerSec: batch / stepMs * 1000,
            note: "ms per decode step (all sequences), one logits read-back per step included",
          });
        }
      } finally {
        g.destroy();
      }
    } finally {
      model.destroy();
    }
  };

  if (await pathExists(`${TINYSTORIES}/model.safetensors`)) {
    await measure("tinystories-656K", TINYSTORIES);
  } else {
    rows.push({
      group: "target",
      name: "tinystories-656K",
      shape: "-",
      ms: 0,
      note: `skipped: ${TINYSTORIES} is absent`,
    });
  }

  const tmp = await Deno.makeTempDir({ prefix: "eaglet-bench-target-" });
  try {
    const dims = {
      hidden: 512,
      layers: quick ? 2 : 8,
      heads: 8,
      kvHeads: 4,
      intermediate: 1408,
      vocab: 4096,
    };
    await writeRandomLlama(tmp, dims);
    await measure(`random Llama (bf16, ${dims.heads}/${dims.kvHeads} heads)`, tmp);
    rows.push(await benchStreamed(gpu, tmp, seqLen, reps));
    const moe = { experts: 64, topK: 8, expertIntermediate: 192 };
    await writeRandomLlama(tmp, { ...dims, moe });
    await measure(`random Qwen3-MoE (bf16, E${moe.experts} top-${moe.topK} I${moe.expertIntermediate})`, tmp);
    await writeRandomLlama(tmp, { ...dims, intermediate: moe.topK * moe.expertIntermediate });
    await measure(`random Llama, the MoE's active width (I${moe.topK * moe.expertIntermediate})`, tmp);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return rows;
}

/**
 * The prefill forward (aux states, full-vocabulary statistics and top-16: what prepare-hidden-states runs) of
 * the target in `dir` with its decoder layers streamed through one weight slot (lib/models/target_stream.ts),
 * wall clock per forward including the layer reads from the file, beside the resident forward timed the same way.
 */
async function benchStreamed(gpu: Gpu, dir: string, seqLen: number, reps: number): Promise<BenchRow> {
  const outputs = { aux: true, vocabStats: true, topk: 16 };
  const time = async (run: () => Promise<void> | void) => {
    await run();
    await gpu.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await run();
    await gpu.sync();
    return (performance.now() - t0) / reps;
  };
  const resident = await TargetModel.load(gpu, dir, { onMessage: () => {} });
  const c = resident.config;
  const ids = Int32Array.from({ length: seqLen }, (_, i) => 3 + (i * 7) % (c.vocabSize - 3));
  let residentMs: number;
  try {
    const f = await resident.forward(1, seqLen, outputs);
    residentMs = await time(() => f.run(ids, [seqLen]));
    f.destroy();
  } finally {
    resident.destroy();
  }
  const streamed = await StreamedTarget.load(gpu, dir, { budgetBytes: 1 });
  try {
    const f = await streamed.forward(1, seqLen, outputs);
    const ms = await time(() => f.run(ids, [seqLen]));
    f.destroy();
    return {
      group: "target",
      name: "random Llama prefill, layers streamed through 1 slot",
      shape: `B1 T${seqLen} H${c.hiddenSize} L${c.numLayers} V${c.vocabSize}`,
      ms,
      tokensPerSec: seqLen / ms * 1000,
      note: `resident: ${residentMs.toFixed(1)} ms (wall clock, layer reads from the file included)`,
    };
  } finally {
    streamed.destroy();
  }
}
