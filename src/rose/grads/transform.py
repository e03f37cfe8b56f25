"""What happens to a raw per-example gradient before it is stored: Adam direction, projection, L2 norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adam import AdamMoments, adam_direction
from .project import Projector


@dataclass
class GradientTransform:
    """[B, D] raw LoRA gradients -> [B, d] unit vectors. `adam=None` keeps the plain (SGD) gradient."""

    projector: Projector | None
    adam: AdamMoments | None = None

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        g = adam_direction(grads, self.adam) if self.adam is not None else grads.float()
        if self.projector is not None:
            g = self.projector(g)
        return F.normalize(g, dim=1)

    @property
    def out_dim(self) -> int | None:
        return self.projector.out_dim if self.projector is not None else None
