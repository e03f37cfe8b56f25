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

    def preconditioner(self) -> AdamMoments:
        """The state whose `adam_direction` is g / sqrt(v + eps): Adam's diagonal preconditioner at
        this checkpoint without its momentum (which belongs to the warm-up data, not to the gradient
        at hand), for preconditioning validation gradients (select.precondition=adam)."""
        return AdamMoments(torch.zeros_like(self.exp_avg), self.exp_avg_sq, 0.0, 1.0, self.eps)

    def split(self, segments: list[int]) -> list[AdamMoments]:
        """One AdamMoments per segment of the flat parameter vector."""
        if sum(segments) != self.exp_avg.numel():
            raise ValueError(f"moments hold {self.exp_avg.numel()} values, segments sum to {sum(segments)}")
        return [AdamMoments(m, v, self.beta1, self.beta2, self.eps)
                for m, v in zip(self.exp_avg.split(segments), self.exp_avg_sq.split(segments))]


def adam_direction(grads: torch.Tensor, state: AdamMoments) -> torch.Tensor:
    """[B, D] -> [B, D]: m' / sqrt(v' + eps), m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2.

    This is the step Adam would take on each example alone (no bias correction, as in LESS/ROSE).
    """
    g = grads.to(torch.promote_types(grads.dtype, torch.float32))
    m = state.beta1 * state.exp_avg + (1 - state.beta1) * g
    v = state.beta2 * state.exp_avg_sq + (1 - state.beta2) * g.square()
    return m / torch.sqrt(v + state.eps)
