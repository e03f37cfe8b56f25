"""score: every pool example's score by the selection method (`select.method`, a registered `Selector`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Stage, register_stage

if TYPE_CHECKING:
    from ..context import Run
    from ..store import StageDir

PER_PAIR = "per_pair.npy"  # [N, M] float32: each pool example's similarity with each validation pair


def score(run: Run, sd: StageDir) -> dict:
    from ..numerics import check_scores
    from ..store import save_array, write_json

    result = run.selector.score(run)
    ids = [e.id for e in run.pool.records]
    check_scores(result.scores, ids, run.selector.name, result.dropped)
    if not run.dist.is_main:  # a sharded model's processes all run a method that runs it (`Stage.on_every_process`)
        return {}
    save_array(sd.path / "scores.npy", result.scores)
    save_array(sd.path / "per_subtask.npy", result.per_subtask)
    if result.per_pair is not None:  # for round-robin selection over validation pairs
        save_array(sd.path / PER_PAIR, result.per_pair.astype("float32"))
    dropped = [ids[i] for i in result.dropped]
    write_json(sd.path / "scores.json", {"method": run.selector.name, "ids": ids, "subtasks": result.subtasks,
                                         "dropped": dropped, **result.info})
    return {"n": len(result.scores), "dropped": dropped}


def _key(k) -> list:
    from dataclasses import asdict

    selector = k.selector
    options = {name: value for name, value in asdict(k.options).items() if name != "balance"}  # balance is select's
    if selector.uses_gradients:
        return [k.stage("train-grads"), k.stage("val-grads"), selector.name, options]
    return [k.pool, selector.name, k.config.select.seed if selector.seeded else None,
            k.validation if selector.reads_validation else None, options if selector.options else None]


register_stage(Stage(
    "score", "scores", "Score every pool example by the selection method (ROSE: lr-weighted influence on the target's DPO loss).",
    score, key=_key, reads=frozenset({"pool"}), for_selector=True, loads_model=False))
