/**
 * Random-weight checkpoints for the target benchmarks (config.json + model.safetensors, seeded): a Llama, a
 * Qwen3-MoE ({@link writeRandomLlama}) and a GPT-OSS ({@link writeRandomGptOss}) of any size, with weights
 * uniform of scale 1/√fan-in and unit norms, so that activations stay of order one through the layers.
 */
import { fromFloat32As, type RawTensor, writeSafetensors } from "../io/safetensors.ts";
import { mulberry32 } from "../data/random.ts";

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

/** Dimensions of a random GPT-OSS written by {@link writeRandomGptOss}. */
export interface RandomGptOssDims {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  /** Routed experts, experts per token, expert width (`intermediate_size`). */
  experts: number;
  topK: number;
  expertIntermediate: number;
  /** The sliding layers' window (`sliding_window`); layers alternate sliding and full, sliding first. */
  slidingWindow: number;
  /** Experts in MXFP4 (`*_blocks`, `*_scales`, as published) instead of bf16. */
  mxfp4: boolean;
}

/**
 * Writes config.json and model.safetensors of a GptOssForCausalLM (transformers `GptOssConfig`, the names and
 * layouts of the published gpt-oss checkpoints) into `dir`: q/k/v/o with biases, attention sinks, the biased
 * router, the experts' fused gate/up ([E, H, 2I] bf16, or MXFP4 blocks [E, 2I, H/32, 16] and scales
 * [E, 2I, H/32]) and down projections with their biases, YaRN RoPE; bf16 elsewhere, untied lm_head.
 */
export async function writeRandomGptOss(dir: string, d: RandomGptOssDims, seed = 1): Promise<void> {
  const rand = mulberry32(seed);
  const uniform = (shape: number[], a: number) => {
    const values = new Float32Array(shape.reduce((x, y) => x * y, 1));
    for (let i = 0; i < values.length; i++) values[i] = (2 * rand() - 1) * a;
    return fromFloat32As(values, shape, "BF16");
  };
  const matrix = (rows: number, cols: number) => uniform([rows, cols], 1 / Math.sqrt(cols));
  const ones = (n: number) => fromFloat32As(new Float32Array(n).fill(1), [n], "BF16");
  const { hidden: h, experts: E, expertIntermediate: I, headDim: hd } = d;
  const tensors: Array<[string, RawTensor]> = [["model.embed_tokens.weight", matrix(d.vocab, h)]];
  for (let l = 0; l < d.layers; l++) {
    const a = `model.layers.${l}.self_attn`, m = `model.layers.${l}.mlp`;
    tensors.push(
      [`model.layers.${l}.input_layernorm.weight`, ones(h)],
      [`model.layers.${l}.post_attention_layernorm.weight`, ones(h)],
      [`${a}.q_proj.weight`, matrix(d.heads * hd, h)],
      [`${a}.q_proj.bias`, uniform([d.heads * hd], 0.02)],
      [`${a}.k_proj.weight`, matrix(d.kvHeads * hd, h)],
      [`${a}.k_proj.bias`, uniform([d.kvHeads * hd], 0.02)],
      [`${a}.v_proj.weight`, matrix(d.kvHeads * hd, h)],
      [`${a}.v_proj.bias`, uniform([d.kvHeads * hd], 0.02)],
      [`${a}.o_proj.weight`, matrix(h, d.heads * hd)],
      [`${a}.o_proj.bias`, uniform([h], 0.02)],
      [`${a}.sinks`, uniform([d.heads], 1)],
      [`${m}.router.weight`, matrix(E, h)],
      [`${m}.router.bias`, uniform([E], 0.02)],
      [`${m}.experts.gate_up_proj_bias`, uniform([E, 2 * I], 0.02)],
      [`${m}.experts.down_proj_bias`, uniform([E, h], 0.02)],
    );
    if (d.mxfp4) {
      tensors.push(
        ...mxfp4Tensors(`${m}.experts.gate_up_proj`, [E, 2 * I, h], rand),
        ...mxfp4Tensors(`${m}.experts.down_proj`, [E, h, I], rand),
      );
    } else {
      tensors.push(
        [`${m}.experts.gate_up_proj`, uniform([E, h, 2 * I], 1 / Math.sqrt(h))],
        [`${m}.experts.down_proj`, uniform([E, I, h], 1 / Math.sqrt(I))],
      );
    }
  }
  tensors.push(["model.norm.weight", ones(h)], ["lm_head.weight", matrix(d.vocab, h)]);
  await writeSafetensors(`${dir}/model.safetensors`, tensors, { format: "pt" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(gptOssConfig(d)));
}

/** The config.json of {@link writeRandomGptOss}'s model (gpt-oss-20b's conventions at the given sizes). */
function gptOssConfig(d: RandomGptOssDims): Record<string, unknown> {
  return {
    architectures: ["GptOssForCausalLM"],
    model_type: "gpt_oss",
    hidden_size: d.hidden,
    intermediate_size: d.expertIntermediate,
    num_hidden_layers: d.layers,
    num_attention_heads: d.heads,
    num_key_value_heads: d.kvHeads,
    head_dim: d.headDim,
    num_local_experts: d.experts,
    num_experts_per_tok: d.topK,
    sliding_window: d.slidingWindow,
    layer_types: Array.from({ length: d.layers }, (_, i) => i % 2 ? "full_attention" : "sliding_attention"),
    attention_bias: true,
    swiglu_limit: 7,
    vocab_size: d.vocab,
    // gpt-oss-20b's YaRN (factor 32, β 32/1, theta 150000) over a shorter original context.
    max_position_embeddings: 4096,
    rope_parameters: {
      rope_type: "yarn",
      rope_theta: 150000,
      factor: 32,
      beta_fast: 32,
      beta_slow: 1,
      original_max_position_embeddings: 128,
      truncate: false,
    },
    rms_norm_eps: 1e-5,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "bfloat16",
    ...(d.mxfp4 ? { quantization_config: { quant_method: "mxfp4" } } : {}),
  };
}

/**
 * A random [E, rows, cols] projection (stored [out, in]) in MXFP4 as the published GPT-OSS checkpoints store
 * it: `name_blocks` u8 [E, rows, cols/32, 16] (two e2m1 codes per byte, uniform over the 16) and `name_scales`
 * u8 [E, rows, cols/32] (e8m0, 127 + the exponent): one exponent for all, which puts the values' RMS near that
 * of a uniform weight of scale 1/√cols (the e2m1 values' RMS is √(68.5/8) ≈ 2.93).
 */
function mxfp4Tensors(
  name: string,
  [E, rows, cols]: number[],
  rand: () => number,
): Array<[string, RawTensor]> {
  const groups = E * rows * cols / 32;
  const blocks = new Uint8Array(groups * 16);
  for (let i = 0; i < blocks.length; i++) blocks[i] = Math.floor(rand() * 256);
  const exponent = Math.round(Math.log2(1 / Math.sqrt(3 * cols) / Math.sqrt(68.5 / 8)));
  const scales = new Uint8Array(groups).fill(127 + exponent);
  return [
    [`${name}_blocks`, { dtype: "U8", shape: [E, rows, cols / 32, 16], bytes: blocks }],
    [`${name}_scales`, { dtype: "U8", shape: [E, rows, cols / 32], bytes: scales }],
  ];
}
