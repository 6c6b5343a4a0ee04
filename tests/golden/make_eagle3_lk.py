"""Golden tensors for EAGLE-3 training steps with the LK losses (tests/models/eagle3_lk_test.ts).

make_eagle3.py's PyTorch transcription with SpecForge's `compute_lk_loss` (`specforge/core/lk_loss.py`,
arXiv 2602.23881) in place of the KL loss: "alpha" (−mean log α) and "lambda" (λ·KL + (1 − λ)(1 − Ā),
λ = kl_scale·exp(−kl_decay·sg(Ā))), α = Σ_v min(p_v, q_v) with p the target's probability NOT renormalised
to the draft vocabulary. The loss mask leaves each sequence's last row out (as Eaglet's training does).
Also stored: the target's full-vocabulary (max, Σexp) per row, the step's input for p. K = 3, float64.
  .venv-golden/bin/python tests/golden/make_eagle3_lk.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import make_eagle3 as m  # noqa: E402
from st import save  # noqa: E402

K = 3
VARIANTS = {"alpha": ("alpha", 1.0, 1.0), "lambda": ("lambda", 1.0, 3.0)}


def main():
    torch.manual_seed(47)
    w = m.init_weights()
    used = sorted([0] + torch.randperm(m.V - 1)[: m.VD - 1].add(1).tolist())
    t2d = torch.zeros(m.V, dtype=torch.bool)
    t2d[used] = True
    d2t = torch.tensor([used[i] - i for i in range(m.VD)], dtype=torch.int64)
    ids = torch.randint(1, m.V, (m.B, m.T))
    ids[1, m.LENGTHS[1]:] = 0
    loss_mask = torch.zeros(m.B, m.T, dtype=m.f64)
    loss_mask[0, 3: m.T - 1] = 1
    loss_mask[1, 2: m.LENGTHS[1] - 1] = 1
    # Target logits peaked enough that the draft's q and the target's p overlap unevenly.
    logits = torch.randn(m.B, m.T, m.V, dtype=m.f64) * 3
    inp = {
        "ids": ids,
        "loss_mask": loss_mask,
        "aux": m.f32(torch.randn(m.B, m.T, 3 * m.HT, dtype=m.f64)),
        "embed": m.f32(torch.randn(m.V, m.H, dtype=m.f64) * 0.5),
        "t2d": t2d,
        "d2t": d2t,
        "logits": m.f32(logits),
    }
    full = inp["logits"]
    mx = full.max(-1).values
    out = {
        "ids": ids.to(torch.int64),
        "lengths": torch.tensor(m.LENGTHS, dtype=torch.int64),
        "loss_mask": loss_mask,
        "aux": inp["aux"],
        "embed": inp["embed"],
        "t2d": t2d,
        "d2t": d2t,
        "teacher_logits": full[..., t2d],
        "teacher_argmax": full.argmax(-1),
        "teacher_max_sum": torch.stack([mx, torch.exp(full - mx[..., None]).sum(-1)], -1),
    }
    for n in m.NAMES:
        out[f"weight.{n}"] = w[n]
    for variant, lk in VARIANTS.items():
        params = {n: w[n].clone().requires_grad_(True) for n in m.NAMES}
        loss, plosses, corrects, totals = m.train_step(params, inp, K, lk=lk)
        loss.backward()
        out[f"{variant}.loss"] = loss.detach().reshape(1)
        out[f"{variant}.ploss"] = torch.stack(plosses).detach()
        out[f"{variant}.acceptance"] = torch.stack(m.train_step.acceptance)
        for n in m.NAMES:
            out[f"{variant}.grad.{n}"] = params[n].grad.clone()
        acc = [f"{a:.3f}/{t:.0f}" for a, t in m.train_step.acceptance]
        print(f"{variant}: loss {loss.item():.6f} Σα/Σm {acc}")
    path = os.path.join(os.path.dirname(__file__), "eagle3_lk.safetensors")
    save(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
