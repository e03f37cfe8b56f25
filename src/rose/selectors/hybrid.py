"""A hybrid of ROSE and RDS+: the mean of each example's rank under the two.

The two measure different things, the first-order effect of a training step on the target's
preference loss and the closeness of the texts, on scales that cannot be added; their ranks can.
Each level is rank-averaged on its own: the scores, each subtask's column and each validation
pair's column, so every `select.balance` works as it does for either method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import DPO_OPTIONS, Scores, SelectionOptions, Selector, register_selector, similarity_scores

if TYPE_CHECKING:
    from ..context import Run


def rank_fractions(x: np.ndarray) -> np.ndarray:
    """Each value's rank within its column, scaled to [0, 1] (1 = the highest; ties by pool order)."""
    x = np.asarray(x, np.float64)
    flat = x.ndim == 1
    x = x[:, None] if flat else x
    ranks = np.empty_like(x)
    n = x.shape[0]
    for j in range(x.shape[1]):
        order = np.lexsort((-np.arange(n), x[:, j]))  # ascending; of equal values the earlier ranks higher
        ranks[order, j] = np.arange(n) / max(1, n - 1)
    return ranks[:, 0] if flat else ranks


def rank_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (rank_fractions(a) + rank_fractions(b)) / 2


def hybrid_scores(run: Run) -> Scores:
    from .embedding import rds_plus_similarities
    from .gradient import influence_scores

    grads = influence_scores(run)
    rds = similarity_scores(run, rds_plus_similarities(run))
    if grads.subtasks != rds.subtasks:
        raise ValueError(f"subtasks differ between the gradient and RDS+ scores: {grads.subtasks} vs {rds.subtasks}")
    scores = rank_average(grads.scores, rds.scores)
    scores[grads.dropped] = -np.inf  # pool examples whose gradients are broken are never selected
    return Scores(scores, rank_average(grads.per_subtask, rds.per_subtask), grads.subtasks, grads.info,
                  per_pair=rank_average(grads.per_pair, rds.per_pair), dropped=grads.dropped)


register_selector(Selector("hybrid", "Rank average of ROSE's influence and RDS+ similarity (each level on its own: scores, "
                                     "subtasks, validation pairs).", hybrid_scores, validation_loss="dpo",
                           reads_validation=True, needs_model=True, options=DPO_OPTIONS, defaults=SelectionOptions()))
