"""Seeded random projections of gradients, [B, D] -> [B, d]. They know nothing of models.

The gradient space is a list of segments (one per LoRA weight matrix, in parameter order), so a
projection can consume a batch of per-example gradients one segment at a time and never hold the
whole [B, D] block. The matrix depends only on (seed, segment sizes, d): every process and every
run, on CPU or GPU, projects identically, and nothing needs to be saved.

- `dense`: a Rademacher matrix (+-1/sqrt(d)) whose entry (i, j) is a counter-based hash of
  (seed, i * d + j): the reference (what LESS/TRAK use). On CPU it is generated block by block;
  on GPU a Triton kernel hashes each tile in registers (`rademacher_triton.py`). Costly for
  large D all the same, since every one of its D x d entries is computed for every batch.
- `sparse`: a CountSketch, balanced inside each segment: every coordinate goes to one bucket with
  a random sign. The segment is cut into chunks of d coordinates and each chunk is spread over
  the d buckets by its own random permutation, so every bucket gets one coordinate per chunk and
  two coordinates of one chunk never share a bucket. One gather and one sum per segment:
  memory-bound and deterministic (no atomics); on a GPU one Triton kernel fuses it with the Adam
  direction (`sketch_triton.py`), reading each chunk from cache. Inner products keep (at most)
  the variance they have under the dense map.

`MAP_VERSION` names the maps' definitions: stage keys include it, so features stored under an
older definition are never scored against new ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 constants as signed int64
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
MAP_VERSION = 2  # 2: sparse buckets permuted chunk by chunk (1: one permutation of the whole segment)


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


class Projector:
    """Base: a linear map of the concatenated segments, applied segment by segment."""

    def __init__(self, segments: Sequence[int], out_dim: int, seed: int) -> None:
        self.segments, self.out_dim, self.seed = list(segments), out_dim, seed
        self.offsets = [0]
        for size in self.segments:
            self.offsets.append(self.offsets[-1] + size)
        self.in_dim = self.offsets[-1]

    def project(self, part: torch.Tensor, segment: int) -> torch.Tensor:
        """[B, segments[segment]] -> [B, d]: this segment's contribution to the projection."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, d] float32."""
        out = torch.zeros(x.shape[0], self.out_dim, device=x.device, dtype=torch.float32)
        for k, part in enumerate(torch.split(x, self.segments, dim=1)):
            out += self.project(part, k)
        return out


class DenseProjector(Projector):
    """Dense Rademacher projection, generated in blocks of rows so memory stays bounded."""

    def __init__(self, segments: Sequence[int], out_dim: int, seed: int, block_entries: int = 1 << 24) -> None:
        super().__init__(segments, out_dim, seed)
        self.block_rows = max(1, block_entries // out_dim)

    def project(self, part: torch.Tensor, segment: int) -> torch.Tensor:
        first = self.offsets[segment]
        if part.is_cuda:  # the same matrix, hashed inside one fused kernel instead of written out
            from .rademacher_triton import rademacher_project

            return rademacher_project(part, first, self.out_dim, self.seed).div_(math.sqrt(self.out_dim))
        out = torch.zeros(part.shape[0], self.out_dim, device=part.device, dtype=torch.float32)
        for start in range(0, part.shape[1], self.block_rows):
            stop = min(start + self.block_rows, part.shape[1])
            rows = torch.arange(first + start, first + stop, device=part.device)
            out.addmm_(part[:, start:stop].float(), rademacher_signs(rows, self.out_dim, self.seed))
        return out.div_(math.sqrt(self.out_dim))


class SparseProjector(Projector):
    """Balanced CountSketch: out[:, j] = sum over chunks k of sign * x[:, order[k * d + j]]."""

    def __init__(self, segments: Sequence[int], out_dim: int, seed: int) -> None:
        super().__init__(segments, out_dim, seed)
        self._tables: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._buckets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def table(self, segment: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(coordinate order, signs, coordinates per bucket) of one segment, built once per device."""
        key = (segment, device)
        if key not in self._tables:
            d = self.out_dim
            per_bucket = math.ceil(self.segments[segment] / d)  # = chunks of d coordinates
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + segment)
            # chunk k sends coordinate order[k * d + j] to bucket j; ids past the segment are padding
            order = torch.cat([self.chunk_order(d, gen) + k * d for k in range(per_bucket)])
            signs = (torch.randint(0, 2, (order.numel(),), generator=gen) * 2 - 1).float()
            self._tables[key] = (order.to(device), signs.to(device), per_bucket)
        return self._tables[key]

    @staticmethod
    def chunk_order(d: int, gen: torch.Generator) -> torch.Tensor:
        """Which of a chunk's d coordinates goes to each bucket: a random permutation."""
        return torch.randperm(d, generator=gen)

    def buckets(self, segment: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The table inverted, on the CPU: each coordinate's bucket and sign, for projecting by scatter-add."""
        if segment not in self._buckets:
            order, signs, _ = self.table(segment, torch.device("cpu"))
            position = torch.empty_like(order)
            position[order] = torch.arange(order.numel())  # where each coordinate sits in the table
            position = position[: self.segments[segment]]  # the padding ids past the segment are never read
            self._buckets[segment] = (position % self.out_dim, signs[position])
        return self._buckets[segment]

    def project(self, part: torch.Tensor, segment: int) -> torch.Tensor:
        """On an accelerator a gather and a sum over chunks (deterministic; on CUDA the fused Triton
        kernel normally runs instead); on a CPU a scatter-add of each coordinate into its bucket, which skips the
        padding of segments smaller than d (most LoRA matrices): 48x faster for SmolLM2 at r=8 on 2 cores."""
        if part.device.type != "cpu":
            order, signs, per_bucket = self.table(segment, part.device)
            padded = torch.nn.functional.pad(part.float(), (0, order.numel() - part.shape[1]))
            picked = padded.index_select(1, order) * signs  # [B, per_bucket * d]
            return picked.view(part.shape[0], per_bucket, self.out_dim).sum(dim=1)
        bucket, sign = self.buckets(segment)
        out = torch.zeros(part.shape[0], self.out_dim, dtype=torch.float32, device=part.device)
        return out.index_add_(1, bucket, part.float() * sign)


PROJECTIONS = {"dense": DenseProjector, "sparse": SparseProjector}


def make_projector(kind: str, segments: Sequence[int], out_dim: int, seed: int) -> Projector:
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; expected one of {', '.join(PROJECTIONS)}")
    return PROJECTIONS[kind](segments, out_dim, seed)
