"""select: the top share of the pooled training sets by score, in the pool's own format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Stage, register_stage

if TYPE_CHECKING:
    from ..context import Run
    from ..store import StageDir


def select(run: Run, sd: StageDir) -> dict:
    """The selection in every form `exports.write_exports` writes (jsonl, parquet, a saved dataset,
    TRL prompt/completion rows) and every pool example's score as a ranked table."""
    import numpy as np

    from ..exports import write_exports
    from ..numerics import check_selectable
    from ..selection import top_fraction

    score_dir = run.require("score").path
    scores = np.load(score_dir / "scores.npy")
    check_selectable(scores, [e.id for e in run.pool.records], score_dir / "scores.npy")
    fraction = 1.0 if run.selector.selects_all else run.config.select.fraction
    chosen = top_fraction(scores, fraction)
    chosen = chosen[np.isfinite(scores[chosen])]  # an example dropped by the score stage (-inf) is never selected
    info = write_exports(sd.path, run.pool.records, chosen, score_dir)
    return {"n_selected": info["n_selected"], "sources": info["sources"]}


def selected_indices(run: Run) -> list[int]:
    """Pool indices of the selection, best first; a selection made from non-finite scores is refused."""
    from ..numerics import check_selected
    from ..store import read_json

    file = run.require("select").path / "selection.json"
    rows = read_json(file)["selected"]
    check_selected(rows, file)
    index = {e.id: i for i, e in enumerate(run.pool.records)}
    return [index[row["id"]] for row in rows]


register_stage(Stage(
    "select", "selection", "Write the top share of the pool (selected.jsonl, in the pool's own format).",
    select, key=lambda k: [k.stage("score"), None if k.selector.selects_all else k.config.select.fraction],
    after=("score",), reads=frozenset({"pool"}), loads_model=False))
