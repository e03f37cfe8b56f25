"""Random projections: the same matrix everywhere, inner products preserved, balanced sparse buckets."""

from __future__ import annotations

import torch

from rose.grads.project import DenseProjector, SparseProjector, rademacher_signs


def _pairs(dim: int = 3000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, dim, generator=g)
    return x, torch.nn.functional.normalize(x, dim=1)


def test_dense_signs_depend_only_on_seed_and_index():
    rows = torch.arange(10, 20)
    a = rademacher_signs(rows, 64, seed=3)
    assert torch.equal(a, rademacher_signs(rows, 64, seed=3))
    assert torch.equal(a[2:4], rademacher_signs(torch.arange(12, 14), 64, seed=3))  # blocks agree with the whole
    assert not torch.equal(a, rademacher_signs(rows, 64, seed=4))
    big = rademacher_signs(torch.arange(2000), 512, seed=0)
    assert set(big.unique().tolist()) == {-1.0, 1.0} and abs(big.mean().item()) < 0.01


def test_dense_block_size_does_not_change_the_result():
    x, _ = _pairs()
    a = DenseProjector(3000, 256, seed=1)(x)
    b = DenseProjector(3000, 256, seed=1, block_entries=256 * 7)(x)
    assert torch.allclose(a, b, atol=1e-4)


def test_both_projections_preserve_inner_products():
    _, u = _pairs()
    exact = u @ u.T
    for proj in (DenseProjector(3000, 2048, seed=0), SparseProjector(3000, 2048, seed=0)):
        p = proj(u)
        assert (p @ p.T - exact).abs().max() < 0.15  # JL error ~ 1/sqrt(2048) per entry


def test_sparse_buckets_are_balanced_and_signed():
    proj = SparseProjector(1000, 64, seed=5)
    assert proj.order.numel() == 64 * 16 and sorted(proj.order.tolist()) == list(range(1024))
    one_hot = torch.eye(1000)
    out = proj(one_hot)  # each coordinate lands in exactly one bucket with a +-1 sign
    assert torch.equal(out.abs().sum(dim=1), torch.ones(1000)) and set(out.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(SparseProjector(1000, 64, seed=5)(one_hot), out)
