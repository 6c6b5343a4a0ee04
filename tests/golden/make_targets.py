"""Golden target-model outputs from Hugging Face transformers' own model classes.

For each supported architecture a tiny random-weight checkpoint is written to tests/golden/targets/<name>/
(config.json + model.safetensors in the dtype a real checkpoint would use), then the model is reloaded in
float32 from exactly those stored weights and run with eager attention on a right-padded batch. Saved in
tests/golden/targets/<name>/golden.safetensors: input_ids, attention_mask, the residual stream after every
decoder layer (hidden_states[1:], before the final norm), the final post-norm hidden state and the logits, and
for the cases in GREEDY the greedy continuation transformers' generate() gives.

Run with the venv described in DESIGN.md (torch 2.x, transformers 5.x); name cases to write only those:
  .venv-golden/bin/python tests/golden/make_targets.py [phi3 ...]
"""
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
}


# Cases whose golden also holds transformers' greedy continuation (added with them; the older cases' files
# predate it).
GREEDY = {"gemma3", "gemma3_window", "mistral_window", "qwen2_window", "qwen3_moe", "qwen3_moe_unnormed", "qwen2_moe"}


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
        config = config_cls(**COMMON, **extra)
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for p in model.parameters():  # larger than the default init so that layers matter
                p.normal_(0.0, 0.08)
            for n, p in model.named_parameters():
                if n.endswith("norm.weight") or "layernorm" in n:
                    p.uniform_(0.7, 1.3)
        path = os.path.join(OUT, name)
        os.makedirs(path, exist_ok=True)
        model.to(dtype).save_pretrained(path, safe_serialization=True)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager"
        )
        reloaded.eval()
        with torch.no_grad():
            out = reloaded(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states[1:], 0)  # [L, B, T, H]; the last one is post-norm in HF
        layer_outputs = []
        captured = {}

        def hook(i):
            def f(_module, _inputs, output):
                captured[i] = output[0] if isinstance(output, tuple) else output
            return f

        handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(reloaded.model.layers)]
        with torch.no_grad():
            reloaded(input_ids=ids, attention_mask=mask)
        for h in handles:
            h.remove()
        layer_outputs = torch.stack([captured[i] for i in range(config.num_hidden_layers)], 0)
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
        print(name, dtype, "->", path)


if __name__ == "__main__":
    main()
