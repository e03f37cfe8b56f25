"""Where per-example gradients go: a projected feature per example, or exact cosines to the target.

Both consume a batch one segment (LoRA weight matrix) at a time, so no more than one segment of
full per-example gradients is alive at once. Segments may come in the model's dtype (bf16 on a
GPU); everything here computes in float32 or wider.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from .adam import AdamMoments, adam_direction
from .project import Projector, SparseProjector

log = logging.getLogger("rose")


class ProjectedFeatures:
    """Per-example gradient segments -> [B, d] unit vectors: Adam direction, projection, L2 norm.

    `adam=None` keeps the plain (SGD) gradient, as for the validation set. `fuse`: on CUDA, run
    the Adam direction and a sparse projection as one Triton kernel (same values up to summation
    order).
    """

    def __init__(self, projector: Projector, adam: AdamMoments | None = None, fuse: bool = True) -> None:
        self.projector = projector
        self.adam = adam.split(projector.segments) if adam is not None else None
        self.fuse = fuse and isinstance(projector, SparseProjector)

    @property
    def out_dim(self) -> int:
        return self.projector.out_dim

    def __call__(self, parts: Iterable[torch.Tensor]) -> torch.Tensor:
        out = None
        for k, g in enumerate(parts):
            p = self._fused(g, k) if self.fuse and g.is_cuda else None
            if p is None:
                if self.adam is not None:
                    g = adam_direction(g, self.adam[k])
                p = self.projector.project(g, k)
            out = p if out is None else out.add_(p)
        return F.normalize(out, dim=1)

    def _fused(self, g: torch.Tensor, k: int) -> torch.Tensor | None:
        """The fused kernel's result, or None (op by op from then on) where it cannot run, e.g. on
        a machine without a working Triton."""
        try:
            from .sketch_triton import adam_sketch

            return adam_sketch(g, *self.projector.table(k, g.device), self.adam[k] if self.adam is not None else None)
        except Exception as e:  # noqa: BLE001 - any Triton failure: the op-by-op path gives the same values
            log.warning("fused Adam direction + sketch unavailable (%s: %s); continuing op by op", type(e).__name__, e)
            self.fuse = False
            return None


class ExactCosines:
    """Per-example gradient segments -> [B, M] cosines with unprojected target directions.

    targets: per segment [M, D_k], together the full target gradients (any scale; they are
    normalised here). With a small target set this scores every example exactly and stores no
    training gradients at all.
    """

    def __init__(self, targets: Sequence[torch.Tensor], adam: AdamMoments | None = None) -> None:
        norms = torch.sqrt(sum(t.double().square().sum(dim=1) for t in targets)).clamp(min=1e-30)
        self.targets = [t.double() / norms[:, None] for t in targets]
        self.adam = adam.split([t.shape[1] for t in targets]) if adam is not None else None

    @property
    def out_dim(self) -> int:
        return self.targets[0].shape[0]

    def __call__(self, parts: Iterable[torch.Tensor]) -> torch.Tensor:
        dots, sq = None, None
        for k, g in enumerate(parts):
            g = adam_direction(g, self.adam[k]) if self.adam is not None else g.to(torch.promote_types(g.dtype, torch.float32))
            d, s = g @ self.targets[k].to(g.device, g.dtype).T, g.square().sum(dim=1)
            dots, sq = (d, s) if dots is None else (dots + d, sq + s)
        return dots / sq.sqrt().clamp(min=1e-30)[:, None]


class RawGradients:
    """Per-example gradient segments -> [B, D] whole gradients, for exact scoring against a few targets."""

    def __init__(self, dim: int) -> None:
        self.out_dim = dim

    def __call__(self, parts: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), dim=1)
