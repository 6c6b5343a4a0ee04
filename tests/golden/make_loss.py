"""Golden tensors for the softmax, loss and AdamW ops, from PyTorch autograd (torch 1.13, Debian's python3).

Run: /usr/bin/python3 tests/golden/make_loss.py  -> tests/golden/loss.safetensors

Everything is computed in float64 from inputs first rounded to float32 (so the f32 inputs the tests read are
exactly the ones used here), then stored as f32. The loss is a transcription of SpecForge's `specforge/core/loss.py` `_compute_loss` and its acc metric,
the optimizer step is torch.nn.utils.clip_grad_norm_ followed by torch.optim.AdamW (SpecForge `specforge/optimizer.py` `BF16Optimizer`).
"""
import os

import torch

from st import save

torch.manual_seed(0)
f64 = torch.float64


def rand(*shape, scale=1.0):
    """Standard normal values times scale, rounded to f32 and widened back to f64."""
    return (torch.randn(*shape, dtype=f64) * scale).float().double()


out = {}

# --- softmax / log_softmax forward and backward over the last dim ([3, 7]) ---
x = rand(3, 7, scale=2.0).requires_grad_()
dy = rand(3, 7)
y = torch.softmax(x, -1)
(dx,) = torch.autograd.grad(y, x, dy)
out.update({"softmax.x": x, "softmax.dy": dy, "softmax.y": y, "softmax.dx": dx})
log_y = torch.log_softmax(x, -1)
(log_dx,) = torch.autograd.grad(log_y, x, dy)
out.update({"log_softmax.y": log_y, "log_softmax.dx": log_dx})

# --- the EAGLE-3 soft cross-entropy of one TTT step (B 2, T 5, draft vocab 11) ---
B, T, V = 2, 5, 11
target_logits = rand(B, T, V, scale=2.0)
z = (0.7 * target_logits + rand(B, T, V)).float().double()  # correlated, so that some argmaxes agree
# Argmax ties (the lowest index wins): in a target row and the same draft row (they agree), and in one draft row.
target_logits[0, 1, 3] = target_logits[0, 1].max() + 1.0
target_logits[0, 1, 7] = target_logits[0, 1, 3]
z[0, 1, 3] = z[0, 1].max() + 0.5
z[0, 1, 7] = z[0, 1, 3]
z[1, 2, 4] = z[1, 2].max() + 0.5
z[1, 2, 9] = z[1, 2, 4]
z.requires_grad_()
p = torch.softmax(target_logits, -1)
mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 0]], dtype=f64)
grad_scale = 0.8  # the 0.8^k weight of step k = 1 (accumulation steps 1)
row_loss = (mask != 0) * -(p * torch.log_softmax(z, -1)).sum(-1) / (B * T)
loss = row_loss.sum()
(dz,) = torch.autograd.grad(grad_scale * loss, z)
out.update({
    "loss.z": z, "loss.target": p, "loss.mask": mask, "loss.row_loss": row_loss, "loss.loss": loss.reshape(1),
    "loss.dz": dz,
})
# acc metric (OnlineEagle3Model.forward): argmax agreement on rows with mask != 0; torch.argmax returns the first maximal index.
agree = (z.argmax(-1) == p.argmax(-1)) & (mask != 0)
out.update({
    "loss.target_ids": p.argmax(-1),
    "loss.counts": torch.stack([agree.sum().double(), (mask != 0).sum().double()]),
})

# --- two AdamW steps with global grad-norm clipping (0.5; active on step 1, inactive on step 2) ---
w1 = rand(13).requires_grad_()
w2 = rand(2, 3).requires_grad_()
out.update({"adamw.w1": w1.detach().clone(), "adamw.w2": w2.detach().clone()})
opt = torch.optim.AdamW([w1, w2], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
grads = [(rand(13), rand(2, 3)), (rand(13, scale=0.05), rand(2, 3, scale=0.05))]
for step, (g1, g2) in enumerate(grads, start=1):
    w1.grad, w2.grad = g1.clone(), g2.clone()
    norm = torch.nn.utils.clip_grad_norm_([w1, w2], 0.5)
    opt.step()
    # Parameters and moments are updated in place by later steps: store copies.
    snapshot = {
        f"adamw.step{step}.g1": g1, f"adamw.step{step}.g2": g2, f"adamw.step{step}.norm": norm.reshape(1),
        f"adamw.step{step}.w1": w1, f"adamw.step{step}.w2": w2,
        f"adamw.step{step}.m1": opt.state[w1]["exp_avg"], f"adamw.step{step}.v1": opt.state[w1]["exp_avg_sq"],
        f"adamw.step{step}.m2": opt.state[w2]["exp_avg"], f"adamw.step{step}.v2": opt.state[w2]["exp_avg_sq"],
    }
    out.update({name: t.detach().clone() for name, t in snapshot.items()})

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "loss.safetensors"), out)
print(f"wrote {len(out)} tensors; loss {loss.item():.6f}, counts {out['loss.counts'].tolist()}, "
      f"norms {out['adamw.step1.norm'].item():.4f} {out['adamw.step2.norm'].item():.4f}")
