"""Selectors that need no gradients or model: random, the full pool, and BM25.

BM25 scores every pool example (all its turns) against each validation item (prompt + chosen),
and the same aggregation as ROSE applies (mean over shots, max over subtasks, unless its options say otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import SIMILARITY_OPTIONS, Scores, Selector, register_selector, similarity_scores

if TYPE_CHECKING:
    from ..context import Run
    from ..formats import Example, PreferencePair


def random_scores(n: int, seed: int) -> np.ndarray:
    """[N] uniform scores: the top share of them is a uniform random subset."""
    return np.random.default_rng(seed).random(n)


def _random(run: Run) -> Scores:
    scores = random_scores(len(run.pool.records), run.config.select.seed)
    return Scores(scores, scores[:, None], ["all"])


def pool_text(ex: Example) -> str:
    return "\n".join(m["content"] for m in ex.messages)


def target_text(pair: PreferencePair) -> str:
    return "\n".join([*(m["content"] for m in pair.prompt), pair.chosen])


def bm25_similarities(pool: Sequence[Example], targets: Sequence[PreferencePair]) -> np.ndarray:
    """[N, M] BM25 score of each pool example (all its turns) for each target (prompt + chosen)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([pool_text(e) for e in pool], stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([target_text(p) for p in targets], stopwords="en", return_ids=False, show_progress=False)
    return np.stack([retriever.get_scores(q) for q in queries], axis=1)


def _bm25(run: Run) -> Scores:
    return similarity_scores(run, bm25_similarities(run.pool.records, run.validation.records))


register_selector(Selector("random", "A uniform random subset (select.seed).", _random, seeded=True))
# the whole pool: its order (random) does not matter, since training shuffles it
register_selector(Selector("full", "The whole pool (select.fraction is ignored).", _random, selects_all=True))
register_selector(Selector("bm25", "BM25 similarity of each pool example to the validation prompts + chosen responses.",
                           _bm25, reads_validation=True, options=SIMILARITY_OPTIONS))
