"""Select the top share of the pooled training sets by score and write it in the pool's own format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .formats import Example, write_jsonl
from .store import write_json


def budget(n: int, fraction: float) -> int:
    """How many of n examples a selection of `fraction` takes: round(fraction * n), at least 1."""
    return max(1, int(round(fraction * n)))


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the `budget` highest scores, best first; ties by pool order."""
    k = budget(len(scores), fraction)
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return order[:k]


def round_robin(columns: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the `budget` of N examples, taken in turn from each column of
    [N, K] scores: column 0's best, column 1's best, ..., then each column's next best not yet
    taken, and so on (ties by pool order). Every subtask (or validation pair) gets its share of
    the budget, however the scales of their scores differ; the rule of RDS+ over tasks (Ivison
    et al. 2025) and of the round-robin selection of Nayak et al. (2026), whose turns never go to waste."""
    columns = np.asarray(columns)
    n, k = columns.shape[0], budget(columns.shape[0], fraction)
    rankings = [np.lexsort((np.arange(n), -columns[:, j])) for j in range(columns.shape[1])]
    taken, order, heads = np.zeros(n, dtype=bool), [], [0] * len(rankings)
    while len(order) < k:
        for j, ranking in enumerate(rankings):
            while taken[ranking[heads[j]]]:
                heads[j] += 1
            taken[ranking[heads[j]]] = True
            order.append(ranking[heads[j]])
            if len(order) == k:
                break
    return np.asarray(order, dtype=np.int64)


def source_counts(pool: Sequence[Example], indices: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per pool source: how many examples it has, how many were selected, and its share of the selection."""
    in_pool = Counter(ex.source for ex in pool)
    chosen = Counter(pool[i].source for i in indices)
    return {
        src: {"pool": in_pool[src], "selected": chosen[src], "share": chosen[src] / max(1, len(indices))}
        for src in sorted(in_pool)
    }


def write_selection(out_dir: Path, pool: Sequence[Example], indices: np.ndarray, scores: np.ndarray, method: str) -> dict:
    """Write selected.jsonl (original rows, best first) and selection.json (ids, scores, source counts)."""
    write_jsonl(out_dir / "selected.jsonl", [pool[i].row for i in indices])
    info = {
        "method": method,
        "n_pool": len(pool),
        "n_selected": int(len(indices)),
        "threshold": float(scores[indices].min()),
        "sources": source_counts(pool, indices),
        "selected": [{"id": pool[i].id, "source": pool[i].source, "score": float(scores[i])} for i in indices],
    }
    write_json(out_dir / "selection.json", info)
    return info
