"""Golden tensors for the attention op: SpecForge's "cache_hidden" attention across TTT steps, by autograd.

SpecForge's TTT attention (`specforge/modeling/draft/llama3_eagle.py` `LlamaAttention.forward`,
cache_hidden path), transcribed: at step k, row t attends the prefix keys K^0_s (s <= t and s a
real token, additive min-value mask) and its own keys K^j_t of steps j = 1..k (no mask); one softmax over the
concatenated scores, then out = P_prefix @ V^0 + sum_j P_j V^j_t. GQA as repeat_kv (query head h reads kv head
h // (nh / nkv)); scale 1/sqrt(hd). RoPE is left out (q and k are taken as already rotated).

Run with Debian's torch (torch 1.13 CPU):  /usr/bin/python3 tests/golden/make_attention.py
Writes tests/golden/attention.safetensors, in Eaglet's layouts:
  lengths [B]; q{k}, dout{k}, out{k}, dq{k} [B, T, nh, hd]; k{j}, v{j}, dk{j}, dv{j} [B, T, nkv, hd]
  (dk{j}, dv{j}: gradients of the loss summed over all steps, the training graph);
  step{k}_dk, step{k}_dv [B, T, nkv, hd] and step{k}_dkd, step{k}_dvd [k, B, T, nkv, hd]: gradients of step k's
  attention alone with respect to K^0, V^0 and K^1..K^k, V^1..V^k (what one call of the op returns).
The loss is sum_k <out{k}, dout{k}>. Computed in float64, stored as float32.
"""
import math
import os

import torch

from st import save

B, T, NH, NKV, HD = 2, 9, 4, 2, 8
STEPS = 4
LENGTHS = [9, 6]  # the second sequence has 3 padding tokens


def repeat_kv(x):
    """[B, nkv, T, hd] -> [B, nh, T, hd]: query head h reads kv head h // (nh / nkv)."""
    return x.repeat_interleave(NH // NKV, dim=1)


def prefix_mask(dtype):
    """Additive mask [B, 1, T, T]: 0 where key s <= query t and s is a real token, else the dtype's min."""
    t = torch.arange(T)
    allowed = (t[None, :] <= t[:, None])[None, :, :] & (t[None, None, :] < torch.tensor(LENGTHS)[:, None, None])
    mask = torch.zeros(B, 1, T, T, dtype=dtype)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def cache_hidden_attention(q, cache_k, cache_v, mask):
    """One TTT step of LlamaAttention's cache_hidden branch. q [B, nh, T, hd]; caches: lists of [B, nkv, T, hd]."""
    k0, v0 = repeat_kv(cache_k[0]), repeat_kv(cache_v[0])
    scores = q @ k0.transpose(-1, -2) / math.sqrt(HD) + mask  # [B, nh, T, T]
    diag = [(q * repeat_kv(kj)).sum(-1) / math.sqrt(HD) for kj in cache_k[1:]]  # each [B, nh, T]
    weights = torch.cat([scores] + [d[..., None] for d in diag], dim=-1)
    probs = torch.softmax(weights, dim=-1)
    out = probs[..., :T] @ v0
    for j, vj in enumerate(cache_v[1:]):
        out = out + probs[..., T + j, None] * repeat_kv(vj)
    return out


def main():
    torch.manual_seed(1234)
    f64 = torch.float64
    qs = [torch.randn(B, T, NH, HD, dtype=f64, requires_grad=True) for _ in range(STEPS)]
    ks = [torch.randn(B, T, NKV, HD, dtype=f64, requires_grad=True) for _ in range(STEPS)]
    vs = [torch.randn(B, T, NKV, HD, dtype=f64, requires_grad=True) for _ in range(STEPS)]
    douts = [torch.randn(B, T, NH, HD, dtype=f64) for _ in range(STEPS)]
    mask = prefix_mask(f64)

    heads = lambda x: x.transpose(1, 2)  # [B, T, h, hd] <-> [B, h, T, hd]
    tensors = {"lengths": torch.tensor(LENGTHS)}
    cache_k, cache_v = [], []
    outs = []
    for k in range(STEPS):
        cache_k.append(heads(ks[k]))
        cache_v.append(heads(vs[k]))
        out = heads(cache_hidden_attention(heads(qs[k]), cache_k, cache_v, mask))
        outs.append(out)
        step_inputs = [ks[0], vs[0]] + ks[1 : k + 1] + vs[1 : k + 1]
        grads = torch.autograd.grad(out, step_inputs, douts[k], retain_graph=True)
        tensors[f"step{k}_dk"], tensors[f"step{k}_dv"] = grads[0], grads[1]
        if k > 0:
            tensors[f"step{k}_dkd"] = torch.stack(grads[2 : 2 + k])
            tensors[f"step{k}_dvd"] = torch.stack(grads[2 + k :])

    loss = sum((o * d).sum() for o, d in zip(outs, douts))
    loss.backward()
    for k in range(STEPS):
        tensors[f"q{k}"], tensors[f"k{k}"], tensors[f"v{k}"] = qs[k], ks[k], vs[k]
        tensors[f"dout{k}"], tensors[f"out{k}"] = douts[k], outs[k]
        tensors[f"dq{k}"], tensors[f"dk{k}"], tensors[f"dv{k}"] = qs[k].grad, ks[k].grad, vs[k].grad

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attention.safetensors")
    save(path, tensors)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
