"""Intervals for compared numbers: mean ± std over seeds, and the paired bootstrap of an accuracy difference.

Every variant of a task is evaluated on the same held-out pairs in the same order, so two methods
can be compared pair by pair: resampling pairs and taking the difference of the two accuracies on
each resample leaves out of the interval what the pairs share (some pairs are easy for every
model), which two separate intervals would count twice. Pure numpy; seeded, so a report rewritten
from the same results shows the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
CHUNK = 256  # resamples drawn at once: [CHUNK, pairs] indices, not [RESAMPLES, pairs]


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for a single run
    n_runs: int


@dataclass(frozen=True)
class Difference:
    difference: float  # accuracy of a minus accuracy of b, on all pairs
    low: float  # percentile interval of the resampled differences
    high: float
    n_pairs: int


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of one number over a method's seeds."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("no values")
    return Spread(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, int(x.size))


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> Difference:
    """Paired bootstrap of accuracy(a) - accuracy(b) over held-out pairs.

    a, b: per-pair correctness (1 right, 0 wrong, 0.5 a tie) of two methods on the same pairs in
    the same order, [pairs] for one run or [seeds, pairs] for several fine-tune (or selection)
    seeds. A method with several seeds is first averaged over its seeds pair by pair, so the
    interval is the sampling uncertainty of the held-out pairs for the seed-averaged method; the
    spread between seeds is reported separately (`spread`). Each resample draws as many pairs as
    there are, with replacement, the same pairs for both methods; the interval is the central
    `level` percentile range of the resampled differences.
    """
    a, b = (np.atleast_2d(np.asarray(x, np.float64)).mean(axis=0) for x in (a, b))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired bootstrap needs the same non-empty set of pairs: {a.size} vs {b.size}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, diff.size, size=(min(CHUNK, resamples - start), diff.size))].mean(axis=1)
                            for start in range(0, resamples, CHUNK)])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Difference(float(diff.mean()), float(low), float(high), int(diff.size))
