"""Golden tensors for one whole EAGLE-3 training step (tests/models/eagle3_test.ts).

An independent PyTorch transcription of SpecForge's teacher (`specforge/core/eagle3.py` `_compute_target_p`), draft
(`specforge/modeling/draft/llama3_eagle.py`) and TTT unroll (`OnlineEagle3Model.forward`; TTT
unroll, attention across steps, loss, metrics), differentiated by autograd in float64, then one
clip_grad_norm_(0.5) + torch.optim.AdamW(lr 1e-3) step. Inputs and weights are rounded to f32 first, so the
test feeds the GPU exactly what this script computed with.

Tiny config: B 2, T 16, H 32, nh 4, nkv 2, hd 8, I 48, H_t 32, V 64, Vd 40; sequence 1 is padded (length 11);
the loss mask is partial; the draft vocab is a non-trivial subset (token 0 included, so the zero-filled last
row counts). Run with Debian's torch:  /usr/bin/python3 tests/golden/make_eagle3.py
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from st import save  # noqa: E402

torch.manual_seed(0)
f64 = torch.float64

B, T, H, NH, NKV, HD, I, HT, V, VD = 2, 16, 32, 4, 2, 8, 48, 32, 64, 40
EPS = 1e-5
THETA = 10000.0
LENGTHS = [16, 11]
SEED = 7  # initEagle3Weights seed of the linear layers (mulberry32, as lib/models/eagle3.ts)

NAMES = [
    "fc.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "norm.weight",
    "lm_head.weight",
]
SHAPES = {
    "fc.weight": [H, 3 * HT],
    "midlayer.input_layernorm.weight": [H],
    "midlayer.hidden_norm.weight": [H],
    "midlayer.self_attn.q_proj.weight": [NH * HD, 2 * H],
    "midlayer.self_attn.k_proj.weight": [NKV * HD, 2 * H],
    "midlayer.self_attn.v_proj.weight": [NKV * HD, 2 * H],
    "midlayer.self_attn.o_proj.weight": [H, NH * HD],
    "midlayer.post_attention_layernorm.weight": [H],
    "midlayer.mlp.gate_proj.weight": [I, H],
    "midlayer.mlp.up_proj.weight": [I, H],
    "midlayer.mlp.down_proj.weight": [H, I],
    "norm.weight": [H],
    "lm_head.weight": [VD, H],
}


def mulberry32(seed):
    a = seed & 0xFFFFFFFF
    M = 0xFFFFFFFF

    def nxt():
        nonlocal a
        a = (a + 0x6D2B79F5) & M
        t = a
        t = ((t ^ (t >> 15)) * (t | 1)) & M
        t = (t ^ ((t + (((t ^ (t >> 7)) * (t | 61)) & M)) & M)) & M
        return ((t ^ (t >> 14)) & M) / 4294967296.0

    return nxt


def f32(x):
    return x.float().double()


def init_weights():
    """Linear layers as initEagle3Weights(cfg, SEED); norm weights 1 + U(-0.2, 0.2) (stored, not 1, so that
    a misplaced norm weight shows)."""
    rand = mulberry32(SEED)
    w = {}
    for name in NAMES:
        shape = SHAPES[name]
        if len(shape) == 1:
            w[name] = f32(1 + 0.4 * (torch.rand(shape, dtype=f64) - 0.5))
        else:
            n = shape[0] * shape[1]
            bound = 1 / math.sqrt(shape[1])
            vals = [(2 * rand() - 1) * bound for _ in range(n)]
            w[name] = f32(torch.tensor(vals, dtype=f64).reshape(shape))
    return w


def rmsnorm(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rope(x, pos):
    """HF half-rotation RoPE; x [B, T, heads, hd], pos [T]."""
    inv = 1.0 / (THETA ** (torch.arange(0, HD, 2, dtype=f64) / HD))
    freqs = torch.outer(pos.to(f64), inv)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def shift_left(t):
    """specforge.utils.padding(t, left=False): cat(t[:, 1:], zeros_like(t[:, -1:]))."""
    return torch.cat([t[:, 1:], torch.zeros_like(t[:, -1:])], 1)


def repeat_kv(x):
    return x.repeat_interleave(NH // NKV, dim=2)


def midlayer(w, e, h, cache_k, cache_v, k):
    """One draft decoder pass (LlamaDecoderLayer) with the attention across TTT positions (sdpa cache_hidden path)."""
    a = torch.cat([rmsnorm(e, w["midlayer.input_layernorm.weight"]), rmsnorm(h, w["midlayer.hidden_norm.weight"])], -1)
    q = (a @ w["midlayer.self_attn.q_proj.weight"].T).view(B, T, NH, HD)
    kk = (a @ w["midlayer.self_attn.k_proj.weight"].T).view(B, T, NKV, HD)
    vv = (a @ w["midlayer.self_attn.v_proj.weight"].T).view(B, T, NKV, HD)
    pos = torch.arange(T) + k  # positions t + k ([M]/[H])
    q, kk = rope(q, pos), rope(kk, pos)
    cache_k.append(kk)
    cache_v.append(vv)
    k0, v0 = repeat_kv(cache_k[0]), repeat_kv(cache_v[0])  # [B, T, NH, HD]
    scale = 1 / math.sqrt(HD)
    scores = torch.einsum("bthd,bshd->bhts", q, k0) * scale
    t_idx = torch.arange(T)[:, None]
    s_idx = torch.arange(T)[None, :]
    lens = torch.tensor(LENGTHS)[:, None, None, None]
    allowed = (s_idx <= t_idx)[None, None] & (s_idx[None, None] < lens)
    scores = scores.masked_fill(~allowed, float("-inf"))
    diag = [(q * repeat_kv(cache_k[j])).sum(-1).permute(0, 2, 1)[..., None] * scale for j in range(1, k + 1)]
    probs = torch.softmax(torch.cat([scores] + diag, -1), -1)
    out = torch.einsum("bhts,bshd->bthd", probs[..., :T], v0)
    for j in range(1, k + 1):
        out = out + probs[..., T + j - 1].permute(0, 2, 1)[..., None] * repeat_kv(cache_v[j])
    att = out.reshape(B, T, NH * HD) @ w["midlayer.self_attn.o_proj.weight"].T
    r = h + att
    n = rmsnorm(r, w["midlayer.post_attention_layernorm.weight"])
    mlp = (F.silu(n @ w["midlayer.mlp.gate_proj.weight"].T) * (n @ w["midlayer.mlp.up_proj.weight"].T)) @ w[
        "midlayer.mlp.down_proj.weight"
    ].T
    return r + mlp


def project(w, aux, fc_norm=False):
    """fc(aux); with EAGLE-3.1's fc_norm each captured state aux_i is RMS-normed first (project_hidden_states)."""
    if fc_norm:
        aux = torch.cat([rmsnorm(c, w[f"fc_norm.{i}.weight"]) for i, c in enumerate(aux.split(HT, -1))], -1)
    return aux @ w["fc.weight"].T


def train_step(w, inp, K, fc_norm=False, feed_normed=False, head_norm=True, lk=None):
    """OnlineEagle3Model.forward + the 0.8^k-weighted loss (LogSoftmaxLoss) and the current trainer's metrics.

    EAGLE-3.1 switches: fc_norm (per-state norms before fc); feed_normed (the next TTT position consumes
    RMSNorm_final(y), SGLang's norm_output: true); head_norm False (logits from y, SpecForge's norm_output:
    false at a6b6b023). The defaults are EAGLE-3. lk = (type, kl_scale, kl_decay) trains with an LK loss
    (specforge/core/lk_loss.py compute_lk_loss; arXiv 2602.23881) instead of the KL one; plosses stay the KL
    losses and train_step.acceptance gets (Σ m·α, Σ m) per position.
    """
    t2d, d2t = inp["t2d"], inp["d2t"]
    # _compute_target_p teacher (no grad), from the target logits shifted by one.
    target = shift_left(inp["logits"])
    tgt_ids = target.argmax(-1)
    loss_mask = inp["loss_mask"]
    pos_mask = t2d[tgt_ids].to(f64) * loss_mask
    p = torch.softmax(target[..., t2d], -1)
    p_pad = F.pad(p, (0, 0, 0, K), value=1.0 / VD)
    p_on_pad = F.pad(torch.exp(target[..., t2d] - torch.logsumexp(target, -1, keepdim=True)), (0, 0, 0, K))
    lk_losses = []
    train_step.acceptance = []
    ids_pad = F.pad(tgt_ids, (0, K), value=0)
    input_ids = shift_left(inp["ids"])
    h = project(w, inp["aux"], fc_norm)
    cache_k, cache_v = [], []
    plosses, corrects, totals = [], [], []
    for k in range(K):
        e = inp["embed"][input_ids]
        y = midlayer(w, e, h, cache_k, cache_v, k)
        normed = rmsnorm(y, w["norm.weight"])
        z = (normed if head_norm else y) @ w["lm_head.weight"].T
        h = normed if feed_normed else y
        p_k = p_pad[:, k: k + T]
        ids_k = ids_pad[:, k: k + T]
        am = z.argmax(-1)
        corrects.append((((am + d2t[am]) == ids_k).to(f64) * loss_mask).sum())
        totals.append(loss_mask.sum())
        row = -(p_k * torch.log_softmax(z, -1)).sum(-1)
        plosses.append((row * (pos_mask != 0).to(f64)).sum() / (B * T))
        if lk:
            m = (pos_mask != 0).to(f64)
            alpha = torch.minimum(p_on_pad[:, k: k + T], torch.softmax(z, -1)).sum(-1)
            total = m.sum().clamp(min=1e-8)
            mean_alpha = (m * alpha).sum() / total
            train_step.acceptance.append(torch.stack([(m * alpha).sum(), m.sum()]).detach())
            if lk[0] == "alpha":
                log_alpha = torch.where(alpha > 0, torch.log(torch.where(alpha > 0, alpha, torch.ones_like(alpha))), 0 * alpha)
                lk_losses.append(-(m * log_alpha).sum() / total)
            else:
                lam = lk[1] * torch.exp(-lk[2] * mean_alpha.detach())
                lk_losses.append(lam * plosses[-1] + (1 - lam) * (1 - mean_alpha))
        # Logit margins (argmax stability between f32 and f64), rows that count only.
        top2 = z.detach().topk(2, -1).values
        margin = (top2[..., 0] - top2[..., 1])[loss_mask != 0]
        train_step.min_margin = min(train_step.min_margin, margin.min().item())
        if k < K - 1:
            input_ids, pos_mask, loss_mask = shift_left(input_ids), shift_left(pos_mask), shift_left(loss_mask)
    loss = sum(0.8 ** k * (lk_losses if lk else plosses)[k] for k in range(K))
    return loss, plosses, corrects, totals


train_step.min_margin = float("inf")


def draft_step0_argmax(w, inp):
    """argmax of z^0 (used only to build a teacher that the draft partly agrees with)."""
    h = inp["aux"] @ w["fc.weight"].T
    e = inp["embed"][shift_left(inp["ids"])]
    h = midlayer(w, e, h, [], [], 0)
    return (rmsnorm(h, w["norm.weight"]) @ w["lm_head.weight"].T).argmax(-1)


def main():
    w = init_weights()
    used = sorted([0] + torch.randperm(V - 1)[: VD - 1].add(1).tolist())
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[used] = True
    d2t = torch.tensor([used[i] - i for i in range(VD)], dtype=torch.int64)
    ids = torch.randint(1, V, (B, T))
    ids[1, LENGTHS[1]:] = 0  # right padding with token 0, as the collator
    loss_mask = torch.zeros(B, T, dtype=f64)
    loss_mask[0, 4:] = 1  # includes the last row T-1 (online mode keeps it)
    loss_mask[1, 3:LENGTHS[1]] = 1
    loss_mask[1, 6] = 0
    inp = {
        "ids": ids,
        "loss_mask": loss_mask,
        "aux": f32(torch.randn(B, T, 3 * HT, dtype=f64)),
        "embed": f32(torch.randn(V, H, dtype=f64) * 0.5),
        "t2d": t2d,
        "d2t": d2t,
    }
    # Target logits: random, with the step-0 draft's choice boosted on some rows so that acc_k > 0, and a few rows
    # whose argmax lies outside the draft vocabulary (no loss there).
    logits = torch.randn(B, T, V, dtype=f64) * 2
    inp["logits"] = logits
    am0 = draft_step0_argmax(w, inp)
    for b in range(B):
        for t in range(T - 1):
            if (t + b) % 2 == 0:
                logits[b, t + 1, used[am0[b, t]]] += 8  # the draft's step-0 guess becomes the target's argmax
    outside = [v for v in range(V) if not t2d[v]]
    logits[0, 9, outside[0]] += 12
    logits[1, 5, outside[1]] += 12
    inp["logits"] = f32(logits)

    out = {
        "ids": ids.to(torch.int64),
        "lengths": torch.tensor(LENGTHS, dtype=torch.int64),
        "loss_mask": loss_mask,
        "aux": inp["aux"],
        "embed": inp["embed"],
        "t2d": t2d,
        "d2t": d2t,
        "teacher_logits": inp["logits"][..., t2d],
        "teacher_argmax": inp["logits"].argmax(-1),
    }
    for name in NAMES:
        if len(SHAPES[name]) == 1:
            out[f"weight.{name}"] = w[name]
    for K in (3, 7):
        params = {n: w[n].clone().requires_grad_(True) for n in NAMES}
        loss, plosses, corrects, totals = train_step(params, inp, K)
        loss.backward()
        out[f"k{K}.loss"] = loss.detach().reshape(1)
        out[f"k{K}.ploss"] = torch.stack(plosses).detach()
        out[f"k{K}.correct"] = torch.stack(corrects)
        out[f"k{K}.total"] = torch.stack(totals)
        for n in NAMES:
            out[f"k{K}.grad.{n}"] = params[n].grad.clone()  # before clip_grad_norm_ rescales it in place
        if K == 7:
            plist = [params[n] for n in NAMES]
            gnorm = torch.nn.utils.clip_grad_norm_(plist, 0.5)
            opt = torch.optim.AdamW(plist, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
            opt.step()
            out["k7.grad_norm"] = gnorm.reshape(1)
            for n in NAMES:
                out[f"k7.adamw.{n}"] = params[n].detach()
            mags = torch.cat([p.grad.abs().flatten() for p in plist])
            print(f"K=7 grad norm {gnorm.item():.5f}, smallest |grad| {mags.min().item():.3e}")
        print(f"K={K}: loss {loss.item():.6f} acc {[f'{c:.0f}/{t:.0f}' for c, t in zip(corrects, totals)]}")
    print(f"smallest top-2 logit margin on counted rows: {train_step.min_margin:.3e}")
    path = os.path.join(os.path.dirname(__file__), "eagle3.safetensors")
    save(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
