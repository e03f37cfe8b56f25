"""select: the top share of the pooled training sets by score (or round-robin over subtasks or
validation pairs, select.balance), in the pool's own format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Stage, register_stage

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from ..context import Run
    from ..store import StageDir


def select(run: Run, sd: StageDir) -> dict:
    """The selection in every form `exports.write_exports` writes (jsonl, parquet, a saved dataset,
    TRL prompt/completion rows) and every pool example's score as a ranked table."""
    import numpy as np

    from ..exports import write_exports
    from ..numerics import check_selectable

    score_dir = run.require("score").path
    scores = np.load(score_dir / "scores.npy")
    check_selectable(scores, [e.id for e in run.pool.records], score_dir / "scores.npy")
    chosen = selected_order(score_dir, run.options.balance, 1.0 if run.selector.selects_all else run.config.select.fraction)
    chosen = chosen[np.isfinite(scores[chosen])]  # an example dropped by the score stage (-inf) is never selected
    info = write_exports(sd.path, run.pool.records, chosen, score_dir)
    return {"n_selected": info["n_selected"], "sources": info["sources"]}


def selected_order(score_dir: Path, balance: str, fraction: float) -> np.ndarray:
    """The selection's pool indices in the order taken: the top scores (balance none), or
    round-robin over the subtasks' or the validation pairs' scores."""
    import numpy as np

    from ..errors import RunDirError
    from ..selection import round_robin, top_fraction
    from .score import PER_PAIR

    if balance == "none":
        return top_fraction(np.load(score_dir / "scores.npy"), fraction)
    columns = score_dir / ("per_subtask.npy" if balance == "subtasks" else PER_PAIR)
    if not columns.is_file():
        raise RunDirError(f"{columns}: select.balance={balance} needs the method's per-pair similarities, which it does not have")
    return round_robin(np.load(columns), fraction)


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
    select, key=lambda k: [k.stage("score"), None if k.selector.selects_all else k.config.select.fraction,
                           None if k.options.balance == "none" else k.options.balance],
    after=("score",), reads=frozenset({"pool"}), loads_model=False))
