"""Golden tensors for DFlash drafts (../shared/reference/draft-variants-spec.md §3, recipes §4.3).

A PyTorch transcription of the spec, differentiated by autograd, in float32 on CPU: the target-layer choice
(§3.2), the anchor sampler (§3.5.1, from a fixed uniform matrix), the full and sliding-window masks (§3.5.4), the
draft forward (§3.3: fc + hidden_norm over the concatenated target features, Qwen3-style layers whose keys and
values are the context's and the block's, non-causal within a block, the final norm), and the training objective
(§3.5-3.6: noise blocks from the frozen target embedding, same-position labels, weights, the frozen lm_head's
cross-entropy, the `dflash` loss with and without the exponential decay, the three D-PACE variants, accuracy)
with the gradient of every draft parameter. Written to tests/golden/dflash.safetensors.

With --specforge PATH (a SpecForge checkout whose `specforge` package imports, e.g. commit a6b6b023), every
golden is also computed with SpecForge's own classes (`create_dflash_sdpa_mask`, `DFlashDraftModel`,
`OnlineDFlashModel` with the anchors fixed, eager attention) and must agree.

  .venv-golden/bin/python tests/golden/make_dflash.py [--specforge /path/to/SpecForge]
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from st import save  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "dflash.safetensors")

# §4.3.4's draft: 2 layers (sliding window 3, then full), H 16, 2 query heads, 1 kv head, head_dim 8, 2 target
# layers' features, block size 3, vocabulary 32 with the mask token 31.
CFG = dict(hidden=16, heads=2, kv_heads=1, head_dim=8, intermediate=32, layers=2, window=3, block=3, vocab=32,
           mask_token=31, target_layers=[1, 2], num_target_layers=4, eps=1e-6, theta=1e4,
           layer_types=["sliding_attention", "full_attention"])
LOSS_TYPES = ["dflash", "dflash_gamma7", "dpace", "dpace-cumulative-confidence-only",
              "dpace-continuation-value-only"]


def target_layer_ids(L, n):
    """§3.2 `build_target_layer_ids`."""
    if n == 1:
        return [L // 2]
    return [round(1 + i * (L - 4) / (n - 1)) for i in range(n)]


def sample_anchors(rand, loss_mask, num_anchors):
    """§3.5.1 from the uniform matrix `rand` [b, S−1] that torch.rand would give: anchors [b, N], keep [b, N]."""
    S = loss_mask.shape[1]
    valid = (loss_mask[:, : S - 1] > 0.5) & (loss_mask[:, 1:] > 0.5)
    counts = valid.sum(1)
    width = min(num_anchors, int(counts.max()))
    r = rand.masked_fill(~valid, 2.0)
    cand = r.argsort(dim=1)[:, :width]
    keep = torch.arange(width).unsqueeze(0) < counts.clamp(max=width).unsqueeze(1)
    anchors = torch.where(keep, cand, torch.full_like(cand, S - 1)).sort(dim=1).values
    keep = anchors < S - 1
    return torch.where(keep, anchors, 0), keep


def dflash_mask(anchors, keep, S, B, window=None):
    """§3.5.4: bool [b, N·B, S + N·B]; query (block n, slot k), key j."""
    b, N = anchors.shape
    q = torch.arange(N * B).view(1, -1, 1)
    kv = torch.arange(S + N * B).view(1, 1, -1)
    qn, qk = q // B, q % B
    a = anchors.repeat_interleave(B, dim=1).view(b, -1, 1)
    ctx = (kv < S) & (kv < a)
    if window is not None:
        ctx = ctx & (kv >= a + qk - (window - 1))
    draft = (kv >= S) & ((kv - S) // B == qn)
    if window is not None:
        draft = draft & ((kv - S) % B <= qk)
    return (ctx | draft) & keep.repeat_interleave(B, dim=1).view(b, -1, 1)


def rms(x, w, eps=CFG["eps"]):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(positions, hd, theta=CFG["theta"]):
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    freqs = positions.to(torch.float32).unsqueeze(-1) * inv
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()  # [b, P, hd]


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def draft_forward(W, noise, ctx, positions, masks):
    """§3.3. noise [b, Q, H], ctx [b, S, K·H], positions [b, S + Q], masks by layer type [b, Q, S + Q]."""
    b, Q, H = noise.shape
    nh, nkv, hd = CFG["heads"], CFG["kv_heads"], CFG["head_dim"]
    c = rms(ctx @ W["fc.weight"].T, W["hidden_norm.weight"])
    cos, sin = rope_tables(positions, hd)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [b, 1, P, hd]
    h = noise
    for j, kind in enumerate(CFG["layer_types"]):
        p = f"layers.{j}."
        x = rms(h, W[p + "input_layernorm.weight"])
        q = rms((x @ W[p + "self_attn.q_proj.weight"].T).view(b, Q, nh, hd), W[p + "self_attn.q_norm.weight"])
        k = torch.cat([c @ W[p + "self_attn.k_proj.weight"].T, x @ W[p + "self_attn.k_proj.weight"].T], 1)
        v = torch.cat([c @ W[p + "self_attn.v_proj.weight"].T, x @ W[p + "self_attn.v_proj.weight"].T], 1)
        k = rms(k.view(b, -1, nkv, hd), W[p + "self_attn.k_norm.weight"])
        v = v.view(b, -1, nkv, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, len, hd]
        q = q * cos[..., -Q:, :] + rotate_half(q) * sin[..., -Q:, :]
        k = k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        m = masks[kind].unsqueeze(1)  # [b, 1, Q, S + Q]
        scores = (q @ k.transpose(-1, -2)) * hd ** -0.5
        scores = scores.masked_fill(~m, float("-inf"))
        probs = torch.softmax(scores, -1).nan_to_num(0.0)  # a fully masked row attends nothing: output 0
        att = (probs @ v).transpose(1, 2).reshape(b, Q, nh * hd)
        o = att @ W[p + "self_attn.o_proj.weight"].T
        h = h + o * m.any(-1).transpose(1, 2).any(-1, keepdim=True)  # (o_proj has no bias: 0 stays 0)
        y = rms(h, W[p + "post_attention_layernorm.weight"])
        act = F.silu(y @ W[p + "mlp.gate_proj.weight"].T) * (y @ W[p + "mlp.up_proj.weight"].T)
        h = h + act @ W[p + "mlp.down_proj.weight"].T
    return rms(h, W["norm.weight"])


def dpace_weight(prob, w, alpha, kind):
    """§3.6: detached D-PACE weights along each block."""
    s = torch.where(w > 0, (1 - alpha) * prob + alpha, torch.ones_like(prob))
    P = torch.cumprod(s, -1)
    if kind == "dpace-cumulative-confidence-only":
        return P
    U = torch.flip(torch.cumsum(torch.flip(P * w, [-1]), -1), [-1])
    if kind == "dpace":
        return U
    return U / P.clamp_min(torch.finfo(P.dtype).tiny)


def objective(W, embed, lm_head, input_ids, hidden, loss_mask, anchors, keep, loss_type, alpha=0.5):
    """§3.5-3.6: (loss, accuracy, loss_num, loss_den, output hidden, logits)."""
    b, S = input_ids.shape
    B, N = CFG["block"], anchors.shape[1]
    noise_ids = torch.full((b, N * B), CFG["mask_token"], dtype=torch.long)
    first = torch.gather(input_ids, 1, anchors.clamp(0, S - 1))
    noise_ids[:, ::B] = torch.where(keep, first, torch.full_like(first, CFG["mask_token"]))
    noise = embed[noise_ids]
    positions = torch.cat([torch.arange(S).expand(b, S), (anchors.unsqueeze(-1) + torch.arange(B)).view(b, -1)], 1)
    masks = {"full_attention": dflash_mask(anchors, keep, S, B),
             "sliding_attention": dflash_mask(anchors, keep, S, B, CFG["window"])}
    out = draft_forward(W, noise, hidden, positions, masks)
    idx = anchors.unsqueeze(-1) + torch.arange(B)
    safe = idx.clamp(max=S - 1)
    labels = torch.gather(input_ids.unsqueeze(1).expand(-1, N, -1), 2, safe)
    w = keep.unsqueeze(-1).float() * (idx < S).float() * (torch.arange(B) > 0).float()
    w = w * torch.gather(loss_mask.unsqueeze(1).expand(-1, N, -1), 2, safe)
    logits = (out @ lm_head.T).view(b, N, B, -1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").view_as(w)
    if loss_type.startswith("dflash"):
        weights = w
        if loss_type == "dflash_gamma7":
            weights = w * torch.exp(-(torch.arange(B) - 1).clamp(min=0).float() / 7.0)
        num, den = (ce * weights).sum(), weights.sum()
    else:
        with torch.no_grad():
            dp = dpace_weight(torch.exp(-ce), w, alpha, loss_type)
        num, den = (ce * w * dp).sum(), torch.tensor(float(b))
    acc = ((logits.argmax(-1) == labels) & (w > 0.5)).sum().float() / w.sum()
    return num / den, acc, num, den, out, logits


def draft_weights(gen):
    H, I, nh, nkv, hd = CFG["hidden"], CFG["intermediate"], CFG["heads"], CFG["kv_heads"], CFG["head_dim"]
    K = len(CFG["target_layers"])
    shapes = {"fc.weight": [H, K * H], "hidden_norm.weight": [H], "norm.weight": [H]}
    for j in range(CFG["layers"]):
        p = f"layers.{j}."
        shapes.update({
            p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
            p + "self_attn.q_proj.weight": [nh * hd, H], p + "self_attn.k_proj.weight": [nkv * hd, H],
            p + "self_attn.v_proj.weight": [nkv * hd, H], p + "self_attn.o_proj.weight": [H, nh * hd],
            p + "self_attn.q_norm.weight": [hd], p + "self_attn.k_norm.weight": [hd],
            p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H], p + "mlp.down_proj.weight": [H, I],
        })
    W = {}
    for n, s in shapes.items():
        if len(s) == 1:  # norms away from 1, so that a missing one shows
            W[n] = (0.7 + 0.6 * torch.rand(s, generator=gen)).requires_grad_()
        else:
            W[n] = (torch.randn(s, generator=gen) * 0.3).requires_grad_()
    return W


def check_worked_vectors():
    """§4.3.1 and §4.3.3's numbers."""
    assert target_layer_ids(36, 5) == [1, 9, 17, 25, 33] and target_layer_ids(64, 5) == [1, 16, 31, 46, 61]
    q = torch.tensor([[0.9, 0.8, 0.6, 0.4]])  # slot 0's value is unused (weight 0)
    w = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    ce = -torch.log(q)
    got = {k: float((ce * w * dpace_weight(q, w, 0.5, k)).sum()) for k in
           ["dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"]}
    want = {"dpace": 1.561018, "dpace-cumulative-confidence-only": 1.030434,
            "dpace-continuation-value-only": 2.311313}
    for k in want:
        assert abs(got[k] - want[k]) < 1e-5, (k, got[k], want[k])
    decay = w * torch.exp(-(torch.arange(4) - 1).clamp(min=0).float() / 7.0)  # `dflash`: Σω·CE / Σω
    assert abs(float((ce * decay).sum() / decay.sum()) - 0.5173243) < 1e-6
    assert abs(float((ce * w).sum() / w.sum()) - 0.5500866) < 1e-6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--specforge", help="a SpecForge checkout to check every golden against")
    args = ap.parse_args()
    check_worked_vectors()
    gen = torch.Generator().manual_seed(0)
    S, b, H, V = 8, 2, CFG["hidden"], CFG["vocab"]
    K = len(CFG["target_layers"])
    t = {}
    # Masks (§4.3.2).
    anchors = torch.tensor([[1, 4], [2, 0]])
    keep = torch.tensor([[True, True], [True, False]])
    t["mask.anchors"], t["mask.keep"] = anchors, keep
    for name, window in [("full", None), ("window3", 3), ("window1", 1)]:
        t[f"mask.{name}"] = dflash_mask(anchors, keep, S, 3, window)
    # The anchor sampler (§3.5.1) on a fixed uniform matrix.
    sampler_mask = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    rand = torch.rand((b, S - 1), generator=gen)
    sa, sk = sample_anchors(rand, sampler_mask, 4)
    t.update({"sampler.loss_mask": sampler_mask, "sampler.rand": rand, "sampler.anchors": sa, "sampler.keep": sk})
    # The draft and the objective (§4.3.4-5).
    W = draft_weights(gen)
    embed = torch.randn((V, H), generator=gen) * 0.5
    lm_head = torch.randn((V, H), generator=gen) * 0.5
    input_ids = torch.randint(0, V - 1, (b, S), generator=gen)
    hidden = torch.randn((b, S, K * H), generator=gen)
    loss_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 1, 1]], dtype=torch.float32)
    obj_anchors = torch.tensor([[1, 3, 5], [2, 6, 0]])
    obj_keep = torch.tensor([[True, True, True], [True, True, False]])
    t.update({"embed": embed, "lm_head": lm_head, "input_ids": input_ids, "hidden": hidden,
              "loss_mask": loss_mask, "anchors": obj_anchors, "keep": obj_keep})
    for n, p in W.items():
        t[f"w.{n}"] = p.detach()
    results = {}
    for lt in LOSS_TYPES:
        for p in W.values():
            p.grad = None
        loss, acc, num, den, out, logits = objective(W, embed, lm_head, input_ids, hidden, loss_mask, obj_anchors,
                                                     obj_keep, lt)
        loss.backward()
        results[lt] = (loss.detach(), acc, num.detach(), den, {n: p.grad.clone() for n, p in W.items()})
        t[f"{lt}.loss"], t[f"{lt}.accuracy"] = loss.detach().reshape(1), acc.reshape(1)
        t[f"{lt}.loss_num"], t[f"{lt}.loss_den"] = num.detach().reshape(1), den.reshape(1)
        for n, g in results[lt][4].items():
            t[f"{lt}.grad.{n}"] = g
        t["out"], t["logits"] = out.detach(), logits.detach()
        print(f"{lt}: loss {loss.item():.6f} acc {acc.item():.4f} num {num.item():.6f} den {den.item():.1f}")
    if args.specforge:
        check_against_specforge(args.specforge, t, W, results)
    save(OUT, t)
    print("->", OUT)


def check_against_specforge(path, t, W, results):
    """Every golden against SpecForge's own classes (eager attention, anchors fixed)."""
    sys.path.insert(0, os.path.join(path))
    import torch.nn as nn
    from transformers import Qwen3Config
    from specforge.algorithms.common import dflash_family_model as fam
    from specforge.modeling.draft.dflash import DFlashDraftModel
    for name, window in [("full", None), ("window3", 3), ("window1", 1)]:
        m = fam.create_dflash_sdpa_mask(t["mask.anchors"], t["mask.keep"], 8, 3, "cpu", sliding_window=window)
        assert torch.equal(m[:, 0], t[f"mask.{name}"]), name
    config = Qwen3Config(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         intermediate_size=32, num_hidden_layers=2, layer_types=CFG["layer_types"],
                         sliding_window=3, use_sliding_window=True, num_target_layers=4, block_size=3,
                         vocab_size=32, dflash_config={"target_layer_ids": [1, 2], "mask_token_id": 31},
                         rms_norm_eps=1e-6, rope_theta=1e4)
    config._attn_implementation = "eager"
    draft = DFlashDraftModel(config)
    state = draft.state_dict()
    with torch.no_grad():
        for n, p in W.items():
            assert state[n].shape == p.shape, n
            state[n].copy_(p)
    for lt in LOSS_TYPES:
        emb, head = nn.Embedding(32, 16), nn.Linear(16, 32, bias=False)
        with torch.no_grad():
            emb.weight.copy_(t["embed"])
            head.weight.copy_(t["lm_head"])
        model = fam.OnlineDFlashModel(draft, head, emb, mask_token_id=31, block_size=3, attention_backend="sdpa",
                                      num_anchors=4, loss_decay_gamma=7.0 if lt == "dflash_gamma7" else None,
                                      objective_chunk_blocks=0,
                                      loss_type="dflash" if lt.startswith("dflash") else lt, dpace_alpha=0.5)
        model._sample_anchor_positions = lambda *_a, **_k: (t["anchors"], t["keep"])
        draft.zero_grad()
        loss, acc, metrics = model(t["input_ids"], t["hidden"], t["loss_mask"])
        loss.backward()
        want = results[lt]
        assert abs(float(loss) - float(want[0])) < 1e-5, (lt, float(loss), float(want[0]))
        assert abs(float(acc) - float(want[1])) < 1e-6, (lt, float(acc), float(want[1]))
        for n, p in draft.named_parameters():
            g = want[4][n]
            err = (p.grad - g).abs().max().item()
            assert err < 1e-5 * max(1.0, g.abs().max().item()), (lt, n, err)
        print(f"{lt}: SpecForge agrees (loss {float(loss):.6f})")
    # The sampler: SpecForge's with torch.rand patched to the golden's matrix.
    real_rand = torch.rand
    torch.rand = lambda *a, **k: t["sampler.rand"].clone()
    try:
        a, k = fam.OnlineDFlashModel._sample_anchor_positions(model, 8, t["sampler.loss_mask"], "cpu")
    finally:
        torch.rand = real_rand
    assert torch.equal(a, t["sampler.anchors"]) and torch.equal(k, t["sampler.keep"]), (a, k)
    print("sampler: SpecForge agrees")


if __name__ == "__main__":
    main()
