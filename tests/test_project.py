"""Random projections and sinks: the same matrix everywhere, inner products kept, exact cosines exact."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from rose.grads.adam import AdamMoments, adam_direction
from rose.grads.project import DenseProjector, SparseProjector, rademacher_signs
from rose.grads.sinks import ExactCosines, ProjectedFeatures

SEGMENTS = [1000, 64, 1500, 436]  # uneven, some smaller than the projected dimension


def _unit(rows: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(rows, sum(SEGMENTS), generator=torch.Generator().manual_seed(seed)), dim=1)


def test_dense_signs_depend_only_on_seed_and_index():
    rows = torch.arange(10, 20)
    a = rademacher_signs(rows, 64, seed=3)
    assert torch.equal(a, rademacher_signs(rows, 64, seed=3))
    assert torch.equal(a[2:4], rademacher_signs(torch.arange(12, 14), 64, seed=3))  # blocks agree with the whole
    assert not torch.equal(a, rademacher_signs(rows, 64, seed=4))
    big = rademacher_signs(torch.arange(2000), 512, seed=0)
    assert set(big.unique().tolist()) == {-1.0, 1.0} and abs(big.mean().item()) < 0.01


def test_dense_is_one_matrix_whatever_the_segments_or_blocks():
    x = _unit()
    a = DenseProjector(SEGMENTS, 256, seed=1)(x)
    b = DenseProjector([sum(SEGMENTS)], 256, seed=1, block_entries=256 * 7)(x)
    expected = x @ rademacher_signs(torch.arange(sum(SEGMENTS)), 256, seed=1) / 16
    assert torch.allclose(a, expected, atol=1e-5) and torch.allclose(b, expected, atol=1e-5)


def test_both_projections_preserve_inner_products():
    u = _unit()
    exact = u @ u.T
    for kind in (DenseProjector, SparseProjector):
        p = kind(SEGMENTS, 2048, seed=0)(u)
        assert (p @ p.T - exact).abs().max() < 0.15  # JL error ~ 1/sqrt(2048) per entry


def test_sparse_buckets_are_balanced_signed_and_reproducible():
    proj = SparseProjector(SEGMENTS, 64, seed=5)
    order, _, per_bucket = proj.table(0, torch.device("cpu"))
    assert per_bucket == 16 and sorted(order.tolist()) == list(range(1024))
    # chunk k (coordinates k*64 .. k*64+63) is spread over all 64 buckets: one coordinate each
    assert all(sorted(chunk.tolist()) == list(range(k * 64, k * 64 + 64)) for k, chunk in enumerate(order.view(16, 64)))
    one_hot = torch.eye(sum(SEGMENTS))
    out = proj(one_hot)  # each coordinate lands in exactly one bucket with a +-1 sign
    assert torch.equal(out.abs().sum(dim=1), torch.ones(sum(SEGMENTS))) and set(out.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(SparseProjector(SEGMENTS, 64, seed=5)(one_hot), out)


def test_sparse_projection_is_the_tables_matrix_on_cpu():
    """The CPU path scatters each coordinate into its bucket; the matrix it applies is the one the
    table defines (chunk k sends coordinate order[k*d + j] to bucket j with sign signs[k*d + j]),
    for segments smaller and larger than d."""
    proj, x = SparseProjector(SEGMENTS, 256, seed=3), _unit(6, seed=4).double()
    matrix, first = torch.zeros(sum(SEGMENTS), 256, dtype=torch.float64), 0
    for k, n in enumerate(SEGMENTS):
        order, signs, _ = proj.table(k, torch.device("cpu"))
        for i, (c, s) in enumerate(zip(order.tolist(), signs.tolist())):
            if c < n:
                matrix[first + c, i % 256] = s
        first += n
    assert torch.allclose(proj(x.float()).double(), x @ matrix, atol=1e-6)


def test_projected_features_and_exact_cosines_agree_with_the_definition():
    g, targets = _unit(5, seed=1) * 3, _unit(3, seed=2) * 7
    moments = AdamMoments(torch.randn(sum(SEGMENTS)) * 0.1, torch.rand(sum(SEGMENTS)) * 0.01, 0.9, 0.999, 1e-8)
    direction = adam_direction(g, moments)
    exact = ExactCosines(targets.split(SEGMENTS, dim=1), moments)(g.split(SEGMENTS, dim=1))
    assert torch.allclose(exact, F.normalize(direction, dim=1) @ F.normalize(targets, dim=1).T, atol=1e-6)
    features = ProjectedFeatures(DenseProjector(SEGMENTS, 4096, seed=0), moments)(g.split(SEGMENTS, dim=1))
    assert torch.allclose(features.norm(dim=1), torch.ones(5))
    assert torch.allclose(features, F.normalize(DenseProjector(SEGMENTS, 4096, seed=0)(direction), dim=1), atol=1e-6)


def _run_interpreted(script: str) -> None:
    """Run a script that checks a Triton kernel under Triton's CPU interpreter (set before import)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_gpu_kernel_computes_the_same_matrix():
    """The Triton kernel, run by Triton's CPU interpreter, against the reference hash."""
    script = (
        "import torch\n"
        "from rose.grads.rademacher_triton import rademacher_project\n"
        "from rose.grads.project import rademacher_signs\n"
        "x = torch.randn(20, 777, generator=torch.Generator().manual_seed(0))\n"
        "for row0, n, seed in [(0, 256, 0), (10**8, 384, 7)]:\n"
        "    got = rademacher_project(x, row0, n, seed)\n"
        "    want = x @ rademacher_signs(torch.arange(row0, row0 + 777), n, seed)\n"
        "    assert (got - want).abs().max() < 1e-3 * want.abs().max(), (got - want).abs().max()\n"
        "print('ok')\n"
    )
    _run_interpreted(script)


def test_fused_adam_sketch_kernel_matches_the_op_by_op_path():
    """The Triton kernel ProjectedFeatures uses on a GPU, run by Triton's CPU interpreter, against
    adam_direction + sketch: with and without Adam, bf16 and float32 input, padded chunks, and
    every shape (examples x buckets per program) the GPU may pick, with rows and buckets left over."""
    script = (
        "import torch\n"
        "from rose.grads.adam import AdamMoments, adam_direction\n"
        "from rose.grads.project import SparseProjector\n"
        "from rose.grads.sketch_triton import SHAPES, adam_sketch\n"
        "proj = SparseProjector([3000, 700, 100], 160, seed=1)\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "for k, n, dtype in [(0, 3, torch.bfloat16), (1, 5, torch.float32), (2, 2, torch.float32)]:\n"
        "    D = proj.segments[k]\n"
        "    g = torch.randn(n, D, generator=gen).to(dtype)\n"
        "    state = AdamMoments(torch.randn(D, generator=gen) * 1e-3, torch.rand(D, generator=gen) * 1e-6, 0.9, 0.999, 1e-8)\n"
        "    for moments, x in [(state, adam_direction(g, state)), (None, g)]:\n"
        "        want = proj.project(x, k)\n"
        "        for shape in SHAPES:\n"
        "            got = adam_sketch(g, *proj.table(k, g.device), moments, shape=shape)\n"
        "            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max())), (k, shape, (got - want).abs().max())\n"
        "print('ok')\n"
    )
    _run_interpreted(script)
