"""The control of the [train] learning check: SpecForge's training math in PyTorch on the same data as Eaglet.

A plain PyTorch transcription of SpecForge's teacher (`_compute_target_p`), draft (`llama3_eagle.py`), TTT unroll
(`OnlineEagle3Model.forward`),
attention across steps, 0.8^k loss over B·T, AdamW with clipping 0.5, linear warmup then cosine), trained on the
features Eaglet's prepare-hidden-states wrote in its lossless storage (f32 aux, f32 final hidden; the teacher
logits are the target's lm_head applied to the hidden state, as SpecForge's offline TargetHead does). Each
sample's last token is unsupervised (SpecForge's offline `loss_mask[-1] = 0`, which Eaglet applies too). The
draft is f32 (Eaglet's precision; SpecForge keeps f32 master weights under bf16 compute). Weights are drawn by
torch's RNG (not Eaglet's stream), batches shuffled by torch: the same recipe, not the same random draws.

  deno task prepare-hidden-states --target-model-path ../shared/models/tinystories-656K --data-path <train.jsonl> \
    --output-path <feat>/train --max-length 128 --aux-format f32 --teacher-format hidden-f32   (and eval)
  .venv-golden/bin/python tests/golden/reference_train.py <feat>/train <feat>/eval ../shared/models/tinystories-656K

Prints the held-out acc_k and loss every 250 updates (the run of the [train] issue: batch 4, 10 epochs, lr 1e-3,
ttt 7, full draft vocabulary). An optional 4th argument f (0, 1, ...) pools the two sets and holds out samples
[f·E, (f+1)·E) instead (E = the eval set's size), to see how much the figures move with the held-out split.
Needs torch and safetensors (the .venv-golden of DESIGN.md).
"""
import glob
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

BATCH, EPOCHS, LR, K, WARMUP_RATIO, CLIP, SEED = 4, 10, 1e-3, 7, 0.015, 0.5, 0


def load_features(d):
    m = json.load(open(os.path.join(d, "eaglet_features.json")))
    assert m["storage"]["auxFormat"] == "f32" and m["storage"]["teacherFormat"] == "hidden-f32", "lossless features"
    slots = [m["storedLayers"].index(layer) for layer in m["auxLayers"]]
    ht = m["target"]["hiddenSize"]
    samples = []
    for i in range(m["data"]["numSamples"]):
        g = i // m["fileGroupSize"] * m["fileGroupSize"]
        path = os.path.join(d, f"rows_{g}-{g + m['fileGroupSize']}", f"data_{i}.safetensors")
        if not os.path.exists(path):
            continue
        t = load_file(path)
        aux = t["aux"].float()
        aux = torch.cat([aux[:, s * ht:(s + 1) * ht] for s in slots], -1)
        mask = t["loss_mask"].long().double()
        mask[-1] = 0
        samples.append((t["input_ids"].long(), mask, aux, t["hidden"].float()))
    return samples


class Draft(torch.nn.Module):
    """LlamaForCausalLMEagle3 with the target's frozen embedding; full draft vocabulary."""

    def __init__(self, cfg, embed):
        super().__init__()
        h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
        self.nh, self.nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd, self.eps, self.theta = h // self.nh, cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
        lin = lambda o, n: torch.nn.Linear(n, o, bias=False)  # noqa: E731  kaiming-uniform(a=√5) as [C]
        self.fc, self.q, self.k, self.v = lin(h, 3 * h), lin(self.nh * self.hd, 2 * h), lin(self.nkv * self.hd, 2 * h), lin(self.nkv * self.hd, 2 * h)
        self.o, self.gate, self.up, self.down = lin(h, self.nh * self.hd), lin(i, h), lin(i, h), lin(h, i)
        self.lm_head = lin(v, h)
        self.norms = torch.nn.ParameterDict({n: torch.nn.Parameter(torch.ones(h)) for n in ["inp", "hid", "post", "final"]})
        self.register_buffer("embed", embed)

    def rms(self, x, name):
        return self.norms[name] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope(self, x, pos):
        inv = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2).float() / self.hd))
        emb = torch.cat([torch.outer(pos.float(), inv)] * 2, -1)
        cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
        x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def step(self, e, h, cache_k, cache_v, k, lengths):
        B, T, _ = e.shape
        a = torch.cat([self.rms(e, "inp"), self.rms(h, "hid")], -1)
        q = self.q(a).view(B, T, self.nh, self.hd)
        kk, vv = self.k(a).view(B, T, self.nkv, self.hd), self.v(a).view(B, T, self.nkv, self.hd)
        pos = torch.arange(T) + k
        q, kk = self.rope(q, pos), self.rope(kk, pos)
        cache_k.append(kk)
        cache_v.append(vv)
        rep = lambda x: x.repeat_interleave(self.nh // self.nkv, dim=2)  # noqa: E731
        scale = 1 / math.sqrt(self.hd)
        scores = torch.einsum("bthd,bshd->bhts", q, rep(cache_k[0])) * scale
        t_idx, s_idx = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = (s_idx <= t_idx)[None, None] & (s_idx[None, None] < lengths[:, None, None, None])
        scores = scores.masked_fill(~allowed, float("-inf"))
        diag = [(q * rep(cache_k[j])).sum(-1).permute(0, 2, 1)[..., None] * scale for j in range(1, k + 1)]
        probs = torch.softmax(torch.cat([scores] + diag, -1), -1)
        out = torch.einsum("bhts,bshd->bthd", probs[..., :T], rep(cache_v[0]))
        for j in range(1, k + 1):
            out = out + probs[..., T + j - 1].permute(0, 2, 1)[..., None] * rep(cache_v[j])
        r = h + self.o(out.reshape(B, T, -1))
        n = self.rms(r, "post")
        return r + self.down(F.silu(self.gate(n)) * self.up(n))


def shift_left(t):
    return torch.cat([t[:, 1:], torch.zeros_like(t[:, -1:])], 1)


def run_batch(model, lm_head, batch):
    """Loss (LogSoftmaxLoss) and per-position (correct, total) of one batch (the current trainer's acc)."""
    T = max(len(s[0]) for s in batch)
    pad = lambda x, fill=0: torch.stack([F.pad(s, (0, 0, 0, T - len(s)) if s.dim() == 2 else (0, T - len(s)), value=fill) for s in x])  # noqa: E731
    ids = pad([s[0] for s in batch])
    mask = pad([s[1] for s in batch]).float()
    aux = pad([s[2] for s in batch])
    logits = pad([s[3] for s in batch]) @ lm_head.T
    lengths = torch.tensor([len(s[0]) for s in batch])
    B, V = len(batch), logits.shape[-1]
    with torch.no_grad():
        target = shift_left(logits)
        tgt_ids = target.argmax(-1)
        p = torch.softmax(target, -1)
        p_pad = F.pad(p, (0, 0, 0, K), value=1.0 / V)
        ids_pad = F.pad(tgt_ids, (0, K), value=0)
    input_ids = shift_left(ids)
    pos_mask = mask.clone()  # full vocabulary: t2d[argmax] is always 1
    h = model.fc(aux)
    cache_k, cache_v, loss, stats = [], [], 0.0, []
    for k in range(K):
        h = model.step(model.embed[input_ids], h, cache_k, cache_v, k, lengths)
        z = model.lm_head(model.rms(h, "final"))
        row = -(p_pad[:, k:k + T] * torch.log_softmax(z, -1)).sum(-1)
        loss = loss + 0.8 ** k * (row * (pos_mask != 0)).sum() / (B * T)
        stats.append((((z.argmax(-1) == ids_pad[:, k:k + T]).float() * mask).sum().item(), mask.sum().item()))
        if k < K - 1:
            input_ids, pos_mask, mask = shift_left(input_ids), shift_left(pos_mask), shift_left(mask)
    return loss, stats


def evaluate(model, lm_head, data):
    correct, total, losses = [0.0] * K, [0.0] * K, []
    with torch.no_grad():
        for i in range(0, len(data), BATCH):
            loss, stats = run_batch(model, lm_head, data[i:i + BATCH])
            losses.append(loss.item())
            for k, (c, t) in enumerate(stats):
                correct[k] += c
                total[k] += t
    acc = [c / max(t, 1e-6) for c, t in zip(correct, total)]
    return sum(losses) / len(losses), acc


def main():
    train_dir, eval_dir, target_dir = sys.argv[1:4]
    torch.set_num_threads(1)  # the tiny draft's ops are too small to gain from threads; they only contend
    torch.manual_seed(SEED)
    cfg = json.load(open(os.path.join(target_dir, "config.json")))
    weights = load_file(glob.glob(os.path.join(target_dir, "*.safetensors"))[0])
    lm_head = weights["lm_head.weight"].float()
    embed = weights.get("model.embed_tokens.weight", lm_head).float()
    train, held_out = load_features(train_dir), load_features(eval_dir)
    if len(sys.argv) > 4:
        fold, pool, n = int(sys.argv[4]), train + held_out, len(held_out)
        held_out, train = pool[fold * n:(fold + 1) * n], pool[:fold * n] + pool[(fold + 1) * n:]
    model = Draft(cfg, embed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = len(train) // BATCH
    total = EPOCHS * steps_per_epoch
    warmup = int(WARMUP_RATIO * total)
    lr_at = lambda n: LR * n / warmup if n <= warmup else LR * 0.5 * (1 + math.cos(math.pi * (n - 1 - warmup) / (total - warmup)))  # noqa: E731
    step = 0
    for epoch in range(EPOCHS):
        order = torch.randperm(len(train))
        for b in range(steps_per_epoch):
            step += 1
            loss, stats = run_batch(model, lm_head, [train[i] for i in order[b * BATCH:(b + 1) * BATCH]])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.step()
            if step % 50 == 0:
                print(f"update {step}: train loss {loss.item():.4f} acc_0 {stats[0][0] / max(stats[0][1], 1):.3f}", flush=True)
            if step % 250 == 0 or step == total:
                l, acc = evaluate(model, lm_head, held_out)
                prod, length = 1.0, 0.0
                for a in acc:
                    prod *= a
                    length += prod
                print(f"eval @ {step}: loss {l:.4f} acc {' '.join(f'{a:.3f}' for a in acc)} simulated acc len {length:.3f}", flush=True)


if __name__ == "__main__":
    main()
