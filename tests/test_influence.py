"""Influence aggregation, checked against a plain loop over the definition."""

from __future__ import annotations

import numpy as np
import pytest

from rose.influence import aggregate, checkpoint_weights, pair_weights, similarities, subtask_index


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_influence_matches_the_definition():
    rng = np.random.default_rng(0)
    n, m, d, c = 37, 6, 16, 3
    train = [_unit(rng, n, d) for _ in range(c)]
    val = [_unit(rng, m, d) for _ in range(c)]
    subtasks = ["zeta", "alpha", "zeta", "mid", "alpha", "zeta"]  # first-seen order zeta, alpha, mid: not alphabetical
    names, index = subtask_index(subtasks)
    assert names == ["zeta", "alpha", "mid"] and index.tolist() == [0, 1, 0, 2, 1, 0]
    weights = checkpoint_weights([2e-5, 1e-5, 1e-5])
    blocks = [[t[:10], t[10:20], t[20:]] for t in train]  # shards of 10 rows
    scores, per_subtask = aggregate(similarities(blocks, val, pair_weights("lr", [2e-5, 1e-5, 1e-5], m)), subtasks)
    for i in range(n):
        by_task = {}
        for j, s in enumerate(subtasks):
            cos = sum(weights[k] * float(train[k][i] @ val[k][j]) for k in range(c))
            by_task.setdefault(s, []).append(cos)
        means = [np.mean(by_task[s]) for s in ("zeta", "alpha", "mid")]  # column k: the mean over subtask k's pairs
        assert per_subtask[i] == pytest.approx(means, abs=1e-6)  # products in float32
        assert scores[i] == pytest.approx(max(means), abs=1e-6)


def test_checkpoint_weights_normalise_mean_learning_rates():
    assert checkpoint_weights([3.0, 1.0]).tolist() == [0.75, 0.25]
    with pytest.raises(ValueError):
        checkpoint_weights([0.0, 0.0])
