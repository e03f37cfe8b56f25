"""The Adam update direction of a gradient, from the moments saved at a warm-up checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdamMoments:
    """First and second moments (flattened in LoRA-parameter order) and the optimizer's constants."""

    exp_avg: torch.Tensor  # [D]
    exp_avg_sq: torch.Tensor  # [D]
    beta1: float
    beta2: float
    eps: float

    def to(self, device: torch.device) -> AdamMoments:
        return AdamMoments(self.exp_avg.to(device), self.exp_avg_sq.to(device), self.beta1, self.beta2, self.eps)


def adam_direction(grads: torch.Tensor, state: AdamMoments) -> torch.Tensor:
    """[B, D] -> [B, D]: m' / sqrt(v' + eps), m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2.

    This is the step Adam would take on each example alone (no bias correction, as in LESS/ROSE).
    """
    g = grads.float()
    m = state.beta1 * state.exp_avg + (1 - state.beta1) * g
    v = state.beta2 * state.exp_avg_sq + (1 - state.beta2) * g.square()
    return m / torch.sqrt(v + state.eps)
