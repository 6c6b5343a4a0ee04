"""Golden target-model outputs from Hugging Face transformers' own model classes.

For each supported architecture a tiny random-weight checkpoint is written to tests/golden/targets/<name>/
(config.json + model.safetensors in the dtype a real checkpoint would use), then the model is reloaded in
float32 from exactly those stored weights and run with eager attention on a right-padded batch. Saved in
tests/golden/targets/<name>/golden.safetensors: input_ids, attention_mask, the residual stream after every
decoder layer (hidden_states[1:], before the final norm), the final post-norm hidden state and the logits, and
for the cases in GREEDY the greedy continuation transformers' generate() gives.

gpt_oss_mxfp4 is written by hand in the published GPT-OSS layout (experts' `*_blocks` and `*_scales` in MXFP4,
quantization_config mxfp4) and loaded by transformers with Mxfp4Config(dequantize=True). llama4_multimodal is
a Llama4ForConditionalGeneration (a tiny vision tower and projector) whose language model holds the llama4 case's
stored weights: its golden is transformers' own output of the wrapper, checked here to equal llama4's.

Run with the venv described in DESIGN.md (torch 2.x, transformers 5.x); name cases to write only those:
  .venv-golden/bin/python tests/golden/make_targets.py [phi3 ...]
"""
import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
from st import save  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "targets")

COMMON = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CASES = {
    # Llama 3.1-style: llama3 rope scaling, untied head, bf16 storage.
    "llama": (
        transformers.LlamaConfig,
        dict(
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
            tie_word_embeddings=False,
        ),
        torch.bfloat16,
    ),
    # Qwen2: q/k/v biases, tied embeddings, f32 storage.
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1000000.0, tie_word_embeddings=True), torch.float32),
    # Qwen3: q_norm/k_norm, explicit head_dim different from hidden/heads, bf16 storage.
    "qwen3": (
        transformers.Qwen3Config,
        dict(head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False),
        torch.bfloat16,
    ),
    # Mistral: f16 storage, linear rope scaling is not Mistral's, plain rope.
    "mistral": (transformers.MistralConfig, dict(rope_theta=10000.0, sliding_window=None), torch.float16),
    # Phi-3: fused qkv_proj and gate_up_proj, whole-head RoPE, no scaling, bf16 storage.
    "phi3": (
        transformers.Phi3Config,
        dict(rope_theta=10000.0, partial_rotary_factor=1.0, rope_scaling=None, sliding_window=None,
             tie_word_embeddings=False),
        torch.bfloat16,
    ),
    # Phi-4-mini-style partial RoPE: the first 0.75 of each head rotates (6 of 8 columns), f32 storage.
    "phi3_partial": (
        transformers.Phi3Config,
        dict(rope_theta=10000.0, partial_rotary_factor=0.75, rope_scaling=None, sliding_window=None,
             tie_word_embeddings=True),
        torch.float32,
    ),
    # Phi-3-128k-style LongRoPE within its original context (16 here: the golden batch is 11 tokens), short
    # factors and the attention factor √(1 + ln(128/16)/ln 16), bf16 storage.
    "phi3_longrope": (
        transformers.Phi3Config,
        dict(rope_theta=10000.0, partial_rotary_factor=1.0, sliding_window=None, tie_word_embeddings=False,
             original_max_position_embeddings=16,
             rope_scaling=dict(type="longrope", short_factor=[1.0, 1.3, 2.1, 3.7], long_factor=[2.0, 4.0, 8.0, 16.0])),
        torch.bfloat16,
    ),
    # Gemma 3 (text): (1 + w) norms with the sandwich norms, GELU-tanh MLP, √H embedding scale, q/k norms,
    # query_pre_attn_scalar 24 (not head_dim), sliding and full layers with their own RoPE (the full layers'
    # with linear scaling), tied embeddings, bf16 storage. The window (32) exceeds the golden batch's 11 tokens and
    # the speculative-decoding test's sequences.
    "gemma3": (
        transformers.Gemma3TextConfig,
        dict(
            head_dim=16, query_pre_attn_scalar=24, sliding_window=32, tie_word_embeddings=True,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2
            + ["sliding_attention", "full_attention"],
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                full_attention=dict(rope_type="linear", factor=2.0, rope_theta=1000000.0),
            ),
        ),
        torch.bfloat16,
    ),
    # Sliding windows shorter than the golden batch (11 tokens) and than the greedy continuation (15): Gemma 3's
    # on its sliding layers only, Mistral's on every layer.
    "gemma3_window": (
        transformers.Gemma3TextConfig,
        dict(
            head_dim=16, query_pre_attn_scalar=16, sliding_window=6, tie_word_embeddings=True,
            layer_types=["sliding_attention", "full_attention"] * 4,
        ),
        torch.float32,
    ),
    "mistral_window": (transformers.MistralConfig, dict(rope_theta=10000.0, sliding_window=5), torch.float32),
    # Qwen2's use_sliding_window: the window (5) on the layers from max_window_layers (4) on.
    "qwen2_window": (
        transformers.Qwen2Config,
        dict(rope_theta=10000.0, use_sliding_window=True, sliding_window=5, max_window_layers=4),
        torch.float32,
    ),
    # Qwen3-MoE: 8 experts, top-2 renormalised (norm_topk_prob), q/k norms; layer 1 dense (mlp_only_layers) and
    # every other layer's MLP dense by decoder_sparse_step 2 is not Qwen3-30B's (step 1): both rules exercised.
    "qwen3_moe": (
        transformers.Qwen3MoeConfig,
        dict(head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
             moe_intermediate_size=24, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1]),
        torch.bfloat16,
    ),
    # Qwen3-MoE without the renormalisation, top-3 of 6, a sparse layer every second layer.
    "qwen3_moe_unnormed": (
        transformers.Qwen3MoeConfig,
        dict(head_dim=16, rope_theta=1000000.0, tie_word_embeddings=True, num_experts=6, num_experts_per_tok=3,
             moe_intermediate_size=20, norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[]),
        torch.float32,
    ),
    # Qwen2-MoE: q/k/v biases, 8 experts top-2 (not renormalised), the shared expert behind its sigmoid gate.
    "qwen2_moe": (
        transformers.Qwen2MoeConfig,
        dict(rope_theta=1000000.0, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
             moe_intermediate_size=24, shared_expert_intermediate_size=48, norm_topk_prob=False,
             decoder_sparse_step=1, mlp_only_layers=[]),
        torch.bfloat16,
    ),
    # GPT-OSS (bf16, as the published BF16 conversions store it: experts' gate_up_proj [E, H, 2I] interleaving gate
    # and up, down_proj [E, I, H], with biases): router with bias, top-k then softmax over the k, the clamped
    # SwiGLU (limit 7, alpha 1.702), attention sinks, q/k/v/o biases, alternating sliding (window 4) and full
    # layers, YaRN RoPE. gpt_oss_mxfp4 below stores the same model's experts in MXFP4.
    "gpt_oss": (
        transformers.GptOssConfig,
        dict(head_dim=16, intermediate_size=24, num_local_experts=8, num_experts_per_tok=2, sliding_window=4,
             layer_types=["sliding_attention", "full_attention"] * 4, attention_bias=True,
             tie_word_embeddings=False,
             rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0, beta_slow=1.0,
                                  original_max_position_embeddings=32, truncate=False)),
        torch.bfloat16,
    ),
    # Llama 4 text: MoE layers every second layer (interleave_moe_layer_step 2) with a top-1 sigmoid router that
    # scales the expert's input, plus the shared expert; dense layers of intermediate_size_mlp; NoPE every 4th
    # layer with attention temperature tuning (floor_scale 4 so that it varies within the batch); chunked local
    # attention (4 tokens) on the RoPE layers; the weightless L2 q/k norm; llama3 RoPE scaling.
    "llama4": (
        transformers.Llama4TextConfig,
        dict(head_dim=8, intermediate_size=24, intermediate_size_mlp=72, num_local_experts=4, num_experts_per_tok=1,
             interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=4,
             attn_temperature_tuning=True, floor_scale=4, attn_scale=0.1, use_qk_norm=True,
             tie_word_embeddings=False,
             rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=16)),
        torch.bfloat16,
    ),
    # DeepSeek-V3 (also Kimi-K2): multi-head latent attention (q LoRA 16, kv LoRA 12, nope/rope head dims 8/4, v 8,
    # interleaved RoPE), YaRN with mscale, MoE after the first dense layer: sigmoid scores, grouped top-k (4 groups,
    # best 2) with the correction bias, renormalised, × routed_scaling_factor, plus the shared expert.
    "deepseek_v3": (
        transformers.DeepseekV3Config,
        dict(num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=8,
             v_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
             moe_intermediate_size=16, first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
             rope_interleave=True, tie_word_embeddings=False,
             rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                                  beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)),
        torch.bfloat16,
    ),
    # DeepSeek-V3's other paths: a plain q_proj (q_lora_rank null), rotate-half RoPE (rope_interleave false), v as
    # wide as q/k (no padding), YaRN with mscale ≠ mscale_all_dim (attention factor ≠ 1, mscale² of 0.5), routing
    # without renormalisation in 2 groups keeping 1, two dense layers first, two shared experts; f32 storage.
    "deepseek_v3_plain": (
        transformers.DeepseekV3Config,
        dict(num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=10, qk_rope_head_dim=6, qk_nope_head_dim=6,
             v_head_dim=12, n_routed_experts=6, n_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1,
             moe_intermediate_size=8, first_k_dense_replace=2, routed_scaling_factor=1.5, norm_topk_prob=False,
             rope_interleave=False, tie_word_embeddings=False,
             rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                                  beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.5)),
        torch.float32,
    ),
}


# Cases whose golden also holds transformers' greedy continuation (added with them; the older cases' files
# predate it).
GREEDY = {"gemma3", "gemma3_window", "mistral_window", "qwen2_window", "qwen3_moe", "qwen3_moe_unnormed", "qwen2_moe",
          "gpt_oss", "gpt_oss_mxfp4", "llama4", "llama4_multimodal", "deepseek_v3", "deepseek_v3_plain"}


FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def quantize_mxfp4(w):
    """MXFP4 of w [..., rows, cols] (cols a multiple of 32), as the published GPT-OSS checkpoints store it:
    blocks uint8 [..., rows, cols/32, 16] (two e2m1 codes per byte, the even element in the low nibble) and
    scales uint8 [..., rows, cols/32] (e8m0: the power of two + 127); also the dequantized values."""
    *lead, rows, cols = w.shape
    g = w.reshape(*lead, rows, cols // 32, 32).to(torch.float32)
    amax = g.abs().amax(-1, keepdim=True).clamp_min(2.0 ** -126)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    lut = torch.tensor(FP4_VALUES)
    scaled = g / torch.pow(2.0, exp)
    codes = (scaled.unsqueeze(-1) - lut).abs().argmin(-1)  # nearest code (ties: the lower code)
    deq = (lut[codes] * torch.pow(2.0, exp)).reshape(*lead, rows, cols)
    codes = codes.to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exp.squeeze(-1) + 127).to(torch.uint8).contiguous(), deq


def make_gpt_oss_mxfp4(ids, mask):
    """gpt_oss_mxfp4: a GPT-OSS whose experts are stored in MXFP4 (`*_blocks`, `*_scales`, quantization_config
    mxfp4), the other tensors in bf16; transformers loads it dequantized (Mxfp4Config(dequantize=True)) and its
    outputs are the golden, checked first against the same model with the dequantized values set in bf16."""
    import safetensors.torch
    name, dtype = "gpt_oss_mxfp4", torch.bfloat16
    extra = dict(CASES["gpt_oss"][1], intermediate_size=32)  # MXFP4 groups of 32 along both projections' inputs
    config = transformers.GptOssConfig(**{**COMMON, **extra})
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config)
    tensors = {}
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.7, 1.3)
        model.to(dtype)
        for i, layer in enumerate(model.model.layers):
            e = layer.mlp.experts
            for proj in ("gate_up_proj", "down_proj"):
                w = getattr(e, proj)  # [E, in, out]: stored transposed, [E, out, in]
                blocks, scales, deq = quantize_mxfp4(w.transpose(1, 2))
                w.copy_(deq.transpose(1, 2).to(dtype))
                tensors[f"model.layers.{i}.mlp.experts.{proj}_blocks"] = blocks
                tensors[f"model.layers.{i}.mlp.experts.{proj}_scales"] = scales
        for n, p in model.state_dict().items():
            if ".mlp.experts.gate_up_proj" in n and not n.endswith("bias") or ".mlp.experts.down_proj" in n and not n.endswith("bias"):
                continue
            tensors[n] = p.detach().to(dtype).contiguous()
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    safetensors.torch.save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                   "lm_head"],
    }
    cfg["dtype"] = "bfloat16"
    cfg["architectures"] = ["GptOssForCausalLM"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager",
        quantization_config=transformers.Mxfp4Config(dequantize=True),
    )
    reloaded = reloaded.to(torch.float32).eval()  # dequantized to bf16 values; computed in f32 as the others
    model = model.to(torch.float32).eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    return path, reloaded, want


def make_llama4_multimodal():
    """llama4_multimodal: Llama4ForConditionalGeneration, as Llama 4 Scout/Maverick are published, around the llama4
    case's language model (its stored bf16 weights copied into `language_model`) with a tiny random vision tower
    and projector; saved by save_pretrained (weights `language_model.model.…`, `language_model.lm_head.weight`,
    `vision_model.…`, `multi_modal_projector.…`) and reloaded in float32."""
    import safetensors.torch
    text_dir = os.path.join(OUT, "llama4")
    with open(os.path.join(text_dir, "config.json")) as f:
        text = {k: v for k, v in json.load(f).items() if k not in ("architectures", "transformers_version", "dtype")}
    vision = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=28,
                  patch_size=14, vision_output_dim=16, projector_input_dim=16, projector_output_dim=16)
    config = transformers.Llama4Config(text_config=text, vision_config=vision, tie_word_embeddings=False)
    model = transformers.Llama4ForConditionalGeneration(config)
    stored = safetensors.torch.load_file(os.path.join(text_dir, "model.safetensors"))
    missing, unexpected = model.language_model.load_state_dict(stored, strict=True)
    assert not missing and not unexpected
    path = os.path.join(OUT, "llama4_multimodal")
    os.makedirs(path, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    reloaded = transformers.Llama4ForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return path, reloaded.eval()


def decoder_layers(model):
    """The decoder layers of a causal LM, or of a multimodal wrapper's language model."""
    return getattr(model, "language_model", model).model.layers


def write_golden(name, path, reloaded, ids, mask):
    """Runs `reloaded` (float32, eager) on the batch and writes golden.safetensors into `path`."""
    with torch.no_grad():
        out = reloaded(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = torch.stack(out.hidden_states[1:], 0)  # [L, B, T, H]; the last one is post-norm in HF
    captured = {}

    def hook(i):
        def f(_module, _inputs, output):
            captured[i] = output[0] if isinstance(output, tuple) else output
        return f

    layers = decoder_layers(reloaded)
    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        reloaded(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    layer_outputs = torch.stack([captured[i] for i in range(len(layers))], 0)
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "layer_outputs": layer_outputs,  # residual stream after each decoder layer, pre-norm
        "final_hidden": hidden[-1],  # after the final RMSNorm
        "logits": out.logits,
    }
    if name in GREEDY:
        # transformers' own greedy decoding (its KV cache) of the first sequence's 7 tokens, 8 new tokens
        with torch.no_grad():
            gen = reloaded.generate(ids[:1, :7], max_new_tokens=8, do_sample=False, eos_token_id=None,
                                    pad_token_id=COMMON["pad_token_id"])
        tensors["greedy_ids"] = gen[0, 7:]
    save(os.path.join(path, "golden.safetensors"), tensors)
    return out.logits


def main():
    torch.manual_seed(0)
    ids = torch.randint(3, COMMON["vocab_size"], (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = COMMON["pad_token_id"]
    only = set(sys.argv[1:])
    for name, (config_cls, extra, dtype) in CASES.items():
        if only and name not in only:
            continue
        config = config_cls(**{**COMMON, **extra})
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for p in model.parameters():  # larger than the default init so that layers matter
                p.normal_(0.0, 0.08)
            for n, p in model.named_parameters():
                if n.endswith("norm.weight") or "layernorm" in n:
                    p.uniform_(0.7, 1.3)
            for n, b in model.named_buffers():
                if n.endswith("e_score_correction_bias"):  # DeepSeek-V3's routing bias: a buffer, zero at init
                    b.normal_(0.0, 0.05)
        path = os.path.join(OUT, name)
        os.makedirs(path, exist_ok=True)
        model.to(dtype).save_pretrained(path, safe_serialization=True)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager"
        )
        reloaded.eval()
        write_golden(name, path, reloaded, ids, mask)
        print(name, dtype, "->", path)
    if not only or "gpt_oss_mxfp4" in only:
        path, reloaded, want = make_gpt_oss_mxfp4(ids, mask)
        got = write_golden("gpt_oss_mxfp4", path, reloaded, ids, mask)
        diff = (got - want).abs().max().item()
        assert diff < 1e-4, f"transformers' MXFP4 dequantization differs from the values set: {diff}"
        print("gpt_oss_mxfp4 (MXFP4 experts, bf16 rest) ->", path, f"(max |Δ| vs the bf16 model {diff:.2e})")
    if not only or "llama4_multimodal" in only:
        path, reloaded = make_llama4_multimodal()
        got = write_golden("llama4_multimodal", path, reloaded, ids, mask)
        import safetensors.torch
        want = safetensors.torch.load_file(os.path.join(OUT, "llama4", "golden.safetensors"))["logits"]
        diff = (got - want).abs().max().item()
        assert diff < 1e-5, f"the wrapper's logits differ from Llama4ForCausalLM's on the same weights: {diff}"
        print("llama4_multimodal (Llama4ForConditionalGeneration) ->", path, f"(max |Δ| vs llama4 {diff:.2e})")


if __name__ == "__main__":
    main()
