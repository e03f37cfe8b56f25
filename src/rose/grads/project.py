"""Seeded random projections of flattened gradients, [B, D] -> [B, d]. They know nothing of models.

Both are Johnson-Lindenstrauss maps whose matrix depends only on (seed, D, d), so every process
and every run, on CPU or GPU, projects identically and nothing needs to be saved.

- `dense`: a Rademacher matrix (+-1/sqrt(d)) generated block by block from a counter-based hash;
  the reference (what LESS/TRAK use), costly for large D because every entry is touched.
- `sparse`: a balanced CountSketch: each coordinate goes to one bucket with a random sign, every
  bucket receiving the same number of coordinates. One gather and one sum: memory-bound and
  deterministic (no atomics). Inner products have the same variance as the dense map.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 constants as signed int64
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


class Projector(Protocol):
    in_dim: int
    out_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] -> [B, out_dim] float32."""
        ...


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def rademacher_signs(rows: torch.Tensor, cols: int, seed: int) -> torch.Tensor:
    """[len(rows), cols] of +-1.0: entry (i, j) is a hash of (seed, i * cols + j), same on every device."""
    idx = rows.to(torch.int64)[:, None] * cols + torch.arange(cols, device=rows.device, dtype=torch.int64)[None]
    x = idx * _GOLDEN + seed
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    x = x ^ _shr(x, 31)
    return (_shr(x, 40) & 1).float().mul_(2).sub_(1)


class DenseProjector:
    """Dense Rademacher projection, generated in blocks of rows so memory stays bounded."""

    def __init__(self, in_dim: int, out_dim: int, seed: int, block_entries: int = 1 << 24) -> None:
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self.block_rows = max(1, block_entries // out_dim)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.out_dim, device=x.device, dtype=torch.float32)
        for start in range(0, self.in_dim, self.block_rows):
            stop = min(start + self.block_rows, self.in_dim)
            rows = torch.arange(start, stop, device=x.device)
            out.addmm_(x[:, start:stop].float(), rademacher_signs(rows, self.out_dim, self.seed))
        return out.div_(math.sqrt(self.out_dim))


class SparseProjector:
    """Balanced CountSketch: out[:, j] = sum of sign_i * x[:, i] over the coordinates i of bucket j."""

    def __init__(self, in_dim: int, out_dim: int, seed: int) -> None:
        self.in_dim, self.out_dim = in_dim, out_dim
        self.per_bucket = math.ceil(in_dim / out_dim)
        padded = self.per_bucket * out_dim
        gen = torch.Generator().manual_seed(seed)
        # bucket j holds the coordinates order[j * per_bucket : (j + 1) * per_bucket]; ids >= in_dim are padding
        self.order = torch.randperm(padded, generator=gen)
        self.signs = (torch.randint(0, 2, (padded,), generator=gen) * 2 - 1).float()
        self._device: torch.device | None = None

    def _to(self, device: torch.device) -> None:
        if self._device != device:
            self.order, self.signs, self._device = self.order.to(device), self.signs.to(device), device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._to(x.device)
        padded = torch.nn.functional.pad(x.float(), (0, self.order.numel() - self.in_dim))
        picked = padded.index_select(1, self.order).mul_(self.signs)  # [B, padded]
        return picked.view(x.shape[0], self.out_dim, self.per_bucket).sum(dim=2)


def make_projector(kind: str, in_dim: int, out_dim: int, seed: int) -> Projector:
    if kind == "dense":
        return DenseProjector(in_dim, out_dim, seed)
    if kind == "sparse":
        return SparseProjector(in_dim, out_dim, seed)
    raise ValueError(f"unknown projection {kind!r}; expected dense or sparse")
