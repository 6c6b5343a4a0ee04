"""Golden tensors for EAGLE-3.1 training steps (tests/models/eagle3_1_test.ts).

The same independent PyTorch transcription as make_eagle3.py (SpecForge's `OnlineEagle3Model.forward`, the
draft of `specforge/modeling/draft/llama3_eagle.py`, `LogSoftmaxLoss`), with EAGLE-3.1's switches
(arXiv 2605.09992; SpecForge `project_hidden_states` and `compute_logits`; SGLang `llama_eagle3.py`):
  "served":   fc_norm (one RMSNorm per captured state before fc) and norm_output: true as SGLang and vLLM read
              it: the next TTT position consumes RMSNorm_final(y), the logits come from it too;
  "specforge_no_norm": SpecForge's norm_output: false at a6b6b023: logits lm_head(y), y fed back.
Autograd in float64 from f32-rounded inputs, K = 3. Run with the project's venv (torch 2.x) or Debian's torch:
  .venv-golden/bin/python tests/golden/make_eagle3_1.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import make_eagle3 as m  # noqa: E402
from st import save  # noqa: E402

VARIANTS = {
    "served": dict(fc_norm=True, feed_normed=True, head_norm=True),
    "specforge_no_norm": dict(fc_norm=False, feed_normed=False, head_norm=False),
}
K = 3
FC_NORM = [f"fc_norm.{i}.weight" for i in range(3)]


def main():
    torch.manual_seed(31)
    w = m.init_weights()
    for name in FC_NORM:
        w[name] = m.f32(1 + 0.4 * (torch.rand(m.HT, dtype=m.f64) - 0.5))
    used = sorted([0] + torch.randperm(m.V - 1)[: m.VD - 1].add(1).tolist())
    t2d = torch.zeros(m.V, dtype=torch.bool)
    t2d[used] = True
    d2t = torch.tensor([used[i] - i for i in range(m.VD)], dtype=torch.int64)
    ids = torch.randint(1, m.V, (m.B, m.T))
    ids[1, m.LENGTHS[1]:] = 0
    loss_mask = torch.zeros(m.B, m.T, dtype=m.f64)
    loss_mask[0, 3:] = 1
    loss_mask[1, 2:m.LENGTHS[1]] = 1
    inp = {
        "ids": ids,
        "loss_mask": loss_mask,
        "aux": m.f32(torch.randn(m.B, m.T, 3 * m.HT, dtype=m.f64) * 3),  # not unit scale: fc_norm matters
        "embed": m.f32(torch.randn(m.V, m.H, dtype=m.f64) * 0.5),
        "t2d": t2d,
        "d2t": d2t,
        "logits": m.f32(torch.randn(m.B, m.T, m.V, dtype=m.f64) * 2),
    }
    out = {
        "ids": ids.to(torch.int64),
        "lengths": torch.tensor(m.LENGTHS, dtype=torch.int64),
        "loss_mask": loss_mask,
        "aux": inp["aux"],
        "embed": inp["embed"],
        "t2d": t2d,
        "d2t": d2t,
        "teacher_logits": inp["logits"][..., t2d],
        "teacher_argmax": inp["logits"].argmax(-1),
    }
    names = m.NAMES[:1] + FC_NORM + m.NAMES[1:]
    for n in names:
        out[f"weight.{n}"] = w[n]
    for variant, flags in VARIANTS.items():
        used_names = names if flags["fc_norm"] else m.NAMES
        params = {n: w[n].clone().requires_grad_(True) for n in used_names}
        loss, plosses, corrects, totals = m.train_step(params, inp, K, **flags)
        loss.backward()
        out[f"{variant}.loss"] = loss.detach().reshape(1)
        out[f"{variant}.ploss"] = torch.stack(plosses).detach()
        out[f"{variant}.correct"] = torch.stack(corrects)
        out[f"{variant}.total"] = torch.stack(totals)
        for n in used_names:
            grad = params[n].grad  # None for norm.weight when the logits skip the final norm
            out[f"{variant}.grad.{n}"] = grad.clone() if grad is not None else torch.zeros_like(params[n])
        print(f"{variant}: loss {loss.item():.6f} acc {[f'{c:.0f}/{t:.0f}' for c, t in zip(corrects, totals)]}")
    print(f"smallest top-2 logit margin on counted rows: {m.train_step.min_margin:.3e}")
    path = os.path.join(os.path.dirname(__file__), "eagle3_1.safetensors")
    save(path, out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
