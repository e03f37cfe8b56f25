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
    from ..selection import top_fraction

    score_dir = run.require("score").path
    fraction = 1.0 if run.selector.selects_all else run.config.select.fraction
    info = write_exports(sd.path, run.pool.records, top_fraction(np.load(score_dir / "scores.npy"), fraction), score_dir)
    return {"n_selected": info["n_selected"], "sources": info["sources"]}


def selected_indices(run: Run) -> list[int]:
    """Pool indices of the selection, best first."""
    from ..store import read_json

    index = {e.id: i for i, e in enumerate(run.pool.records)}
    return [index[row["id"]] for row in read_json(run.require("select").path / "selection.json")["selected"]]


register_stage(Stage(
    "select", "selection", "Write the top share of the pool (selected.jsonl, in the pool's own format).",
    select, key=lambda k: [k.stage("score"), None if k.selector.selects_all else k.config.select.fraction],
    after=("score",), reads=frozenset({"pool"}), loads_model=False))
