"""Mean ± std over seeds and the paired bootstrap, against hand-computed numbers and plain numpy resampling."""

from __future__ import annotations

import numpy as np
import pytest

from rose.stats import paired_difference, spread

A = np.array([1, 0, 1, 1, 0.5, 0, 1])  # 4.5 / 7 right
B = np.array([0, 0, 1, 0, 1, 0, 0])  # 2 / 7 right


def test_spread_is_the_mean_and_sample_std():
    s = spread([0.5, 0.6, 0.8])
    # mean 19/30; squared deviations (4/30)^2, (1/30)^2, (5/30)^2 sum to 42/900, / (3 - 1)
    assert s.mean == pytest.approx(19 / 30, abs=1e-12) and s.std == pytest.approx((21 / 900) ** 0.5, abs=1e-12)
    assert s.n_runs == 3
    assert spread([0.7]).std is None and spread([0.7]).mean == 0.7


def test_identical_variants_differ_by_exactly_zero():
    d = paired_difference(A, A.copy())
    assert (d.difference, d.low, d.high, d.n_pairs) == (0.0, 0.0, 0.0, 7)


def test_right_on_every_pair_against_wrong_on_every_pair_is_exactly_one():
    d = paired_difference(np.ones(5), np.zeros(5))
    assert (d.difference, d.low, d.high) == (1.0, 1.0, 1.0)


def test_interval_is_the_percentile_range_of_plain_numpy_resampling():
    d = paired_difference(A, B, resamples=1000, seed=3)  # 1000 is not a multiple of the chunk: the last one is short
    rng = np.random.default_rng(3)
    resampled = (A - B)[rng.integers(0, 7, size=(1000, 7))].mean(axis=1)  # 1000 resamples of the 7 pairs, all at once
    assert d.difference == pytest.approx(2.5 / 7, abs=1e-15)
    assert (d.low, d.high) == pytest.approx(tuple(np.percentile(resampled, [2.5, 97.5])), abs=1e-15)
    assert d.low < d.difference < d.high


def test_several_seeds_are_averaged_pair_by_pair_first():
    seeds = np.array([[1, 0, 1, 1, 1, 0, 1], [1, 0, 1, 1, 0, 0, 1]])  # pair 4 right in one seed of two: 0.5, as in A
    assert paired_difference(seeds, B, resamples=500) == paired_difference(A, B, resamples=500)
    assert paired_difference(seeds, B).difference == pytest.approx(np.mean(seeds) - np.mean(B), abs=1e-15)


def test_interval_shrinks_as_pairs_grow():
    widths = []
    for copies in (1, 4, 16):
        d = paired_difference(np.tile(A, copies), np.tile(B, copies), resamples=2000)
        assert d.difference == pytest.approx(2.5 / 7, abs=1e-12) and d.n_pairs == 7 * copies
        widths.append(d.high - d.low)
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2] > 0  # about 1/sqrt(n): half as wide for 4x the pairs


def test_different_pairs_are_refused():
    with pytest.raises(ValueError, match="same non-empty set of pairs"):
        paired_difference(A, B[:6])
