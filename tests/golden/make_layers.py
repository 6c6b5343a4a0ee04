"""Golden tensors for the layer ops (RMSNorm, RoPE and its scaling variants, SwiGLU) from PyTorch autograd.

Run with Debian's torch (1.13, no transformers):  /usr/bin/python3 tests/golden/make_layers.py
Writes tests/golden/layers.safetensors. Everything is computed in float64 and stored as f32.

The formulas are transcribed from SpecForge's `specforge/modeling/draft/llama3_eagle.py` (Hugging Face Llama: LlamaRMSNorm,
rotate_half RoPE, the rope_scaling variants of modeling_rope_utils), written here independently of the
TypeScript code they check.
"""
import math
import os

import torch

from st import save

torch.manual_seed(1234)
D = torch.float64
out = {}


def rand(*shape, scale=1.0):
    return (torch.rand(*shape, dtype=D) * 2 - 1) * scale


# ---------------------------------------------------------------- RMSNorm: y = w * x * rsqrt(mean(x^2) + eps)
ROWS, H, EPS = 6, 40, 1e-6
x = rand(ROWS, H, scale=2.0)
x[1] *= 0.01  # a row of small values: eps matters
x = x.requires_grad_()
w = (1 + rand(H, scale=0.5)).requires_grad_()
y = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))
dy = rand(ROWS, H)
y.backward(dy)
out.update({"rmsnorm.x": x, "rmsnorm.w": w, "rmsnorm.y": y, "rmsnorm.dy": dy,
            "rmsnorm.dx": x.grad, "rmsnorm.dw": w.grad})


# ---------------------------------------------------------------- RoPE
HEAD_DIM = 16


def base_inv_freq(base, dim):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=D) / dim))


def inv_freq_for(kind, base, dim, scaling, max_pos, seq_len):
    """(inv_freq, attention factor) of one rope_type."""
    inv = base_inv_freq(base, dim)
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / scaling["factor"], 1.0
    if kind == "dynamic":
        factor = scaling["factor"]
        if seq_len > max_pos:
            base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return base_inv_freq(base, dim), 1.0
    if kind == "llama3":
        factor, lo_f, hi_f = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        orig = scaling["original_max_position_embeddings"]
        lo_wl, hi_wl = orig / lo_f, orig / hi_f
        result = torch.empty_like(inv)
        for i, f in enumerate(inv.tolist()):
            wl = 2 * math.pi / f
            if wl < hi_wl:
                result[i] = f
            elif wl > lo_wl:
                result[i] = f / factor
            else:
                smooth = (orig / wl - lo_f) / (hi_f - lo_f)
                result[i] = (1 - smooth) * f / factor + smooth * f
        return result, 1.0
    if kind == "yarn":
        factor, orig = scaling["factor"], scaling["original_max_position_embeddings"]
        beta_fast, beta_slow = scaling["beta_fast"], scaling["beta_slow"]

        def corr_dim(rot):
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=D) - low) / (high - low)).clamp(0, 1)
        extra = inv
        inter = inv / factor
        result = inter * ramp + extra * (1 - ramp)

        def m(s, mu):
            return 1.0 if s <= 1 else 0.1 * mu * math.log(s) + 1.0

        return result, m(factor, scaling.get("mscale", 1)) / m(factor, scaling.get("mscale_all_dim", 0))
    raise ValueError(kind)


def rope_table(kind, base, dim, scaling, max_pos, positions, seq_len):
    inv, attn = inv_freq_for(kind, base, dim, scaling, max_pos, seq_len)
    freqs = torch.outer(torch.arange(positions, dtype=D), inv)  # [positions, dim/2]
    return inv, freqs.cos() * attn, freqs.sin() * attn


def rotate_half(v):
    half = v.shape[-1] // 2
    return torch.cat([-v[..., half:], v[..., :half]], -1)


# name: (rope_type, rope_theta, rope_scaling, max_position_embeddings, table positions, seq_len)
VARIANTS = {
    "default": ("default", 10000.0, {}, 64, 24, 24),
    "linear": ("linear", 10000.0, {"factor": 2.5}, 64, 24, 24),
    "dynamic": ("dynamic", 10000.0, {"factor": 2.0}, 16, 40, 40),
    "llama3": ("llama3", 500000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}, 131072, 24, 24),
    "yarn": ("yarn", 10000.0, {"factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32.0,
                               "beta_slow": 1.0, "mscale": 1.2, "mscale_all_dim": 0.5}, 128, 24, 24),
    # low == high after clamping (both correction dims below 0): exercises `high += 0.001`
    "yarn_equal": ("yarn", 10000.0, {"factor": 2.0, "original_max_position_embeddings": 4, "beta_fast": 32.0,
                                     "beta_slow": 1.0}, 8, 24, 24),
}

B, T, NH, OFFSET = 2, 5, 3, 3
for name, (kind, base, scaling, max_pos, positions, seq_len) in VARIANTS.items():
    inv, cos, sin = rope_table(kind, base, HEAD_DIM, scaling, max_pos, positions, seq_len)
    xr = rand(B, T, NH, HEAD_DIM).requires_grad_()
    pos = torch.arange(T) + OFFSET
    c = torch.cat([cos[pos], cos[pos]], -1)[None, :, None, :]  # [1, T, 1, hd]
    s = torch.cat([sin[pos], sin[pos]], -1)[None, :, None, :]
    yr = xr * c + rotate_half(xr) * s
    g = rand(B, T, NH, HEAD_DIM)
    yr.backward(g)
    out.update({f"rope.{name}.inv_freq": inv, f"rope.{name}.cos": cos, f"rope.{name}.sin": sin,
                f"rope.{name}.x": xr, f"rope.{name}.y": yr, f"rope.{name}.dy": g,
                f"rope.{name}.dx": xr.grad})

# ---------------------------------------------------------------- SwiGLU: out = silu(gate) * up
ROWS_S, I = 5, 24
gate = rand(ROWS_S, I, scale=6.0).requires_grad_()
up = rand(ROWS_S, I, scale=2.0).requires_grad_()
o = torch.nn.functional.silu(gate) * up
do = rand(ROWS_S, I)
o.backward(do)
out.update({"swiglu.gate": gate, "swiglu.up": up, "swiglu.out": o, "swiglu.dout": do,
            "swiglu.dgate": gate.grad, "swiglu.dup": up.grad})

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layers.safetensors")
save(path, out)
print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")
