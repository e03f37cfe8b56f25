"""The Adam direction from saved moments equals the step torch's Adam takes (up to its bias correction)."""

from __future__ import annotations

import torch

from rose.grads.adam import AdamMoments, adam_direction


def test_direction_matches_torch_adam_step_without_bias_correction():
    torch.manual_seed(0)
    m, v = torch.randn(50) * 1e-3, torch.rand(50) * 1e-6
    g = torch.randn(3, 50) * 1e-3
    b1, b2, eps = 0.9, 0.999, 1e-8
    direction = adam_direction(g, AdamMoments(m, v, b1, b2, eps))
    for row in range(3):
        p = torch.nn.Parameter(torch.zeros(50))
        opt = torch.optim.Adam([p], lr=1.0, betas=(b1, b2), eps=eps)
        # a huge step count makes torch's bias corrections 1, so its update is m'/(sqrt(v')+eps)
        opt.state[p] = {"step": torch.tensor(1e9), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = g[row].clone()
        opt.step()
        m2, v2 = b1 * m + (1 - b1) * g[row], b2 * v + (1 - b2) * g[row] ** 2
        # ROSE puts eps inside the square root; correct torch's update for that difference
        expected = -p.detach() * (v2.sqrt() + eps) / (v2 + eps).sqrt()
        assert torch.allclose(direction[row], expected, rtol=1e-4)
        assert torch.allclose(direction[row], m2 / (v2 + eps).sqrt())
