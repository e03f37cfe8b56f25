"""Select the top share of the pooled training sets by score and write it in the pool's own format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .formats import Example, write_jsonl
from .store import write_json


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the round(fraction * N) (at least 1) highest scores, best first; ties by pool order."""
    k = max(1, int(round(fraction * len(scores))))
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return order[:k]


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
        "threshold": float(scores[indices[-1]]),
        "sources": source_counts(pool, indices),
        "selected": [{"id": pool[i].id, "source": pool[i].source, "score": float(scores[i])} for i in indices],
    }
    write_json(out_dir / "selection.json", info)
    return info
