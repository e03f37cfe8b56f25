"""ROSE and LESS: influence of each pool example on the target, from the gradient stages.

score(z) = sum over warm-up checkpoints of lr_c x cos(Adam direction of z's SFT gradient, the
validation gradient), averaged over the validation pairs of each subtask, then the max over
subtasks. ROSE takes each pair's DPO-loss gradient (reward orientation); LESS the SFT gradient of
the chosen response (Xia et al. 2024). Everything but the validation loss is shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Scores, Selector, register_selector

if TYPE_CHECKING:
    from ..context import Run


def influence_scores(run: Run) -> Scores:
    """Scores from the stored train and validation gradients, weighted by each checkpoint's mean lr.
    The features are checked as they are read (`numerics.py`): a broken validation pair is an
    error; a few broken pool examples are dropped (score -inf), more are an error."""
    import numpy as np

    from ..influence import checkpoint_weights, influence
    from ..numerics import check_validation_features, pool_rows_to_drop
    from ..store import open_shards

    train_sd, val_sd = run.require("train-grads"), run.require("val-grads")
    tm, vm = train_sd.manifest(), val_sd.manifest()
    ckpts = run.checkpoints()
    weights = checkpoint_weights([c.mean_lr() for c in ckpts])
    train = [open_shards(train_sd.path / c.path.name, tm["n"], tm["shard_size"]) for c in ckpts]
    if tm["exact"]:  # the shards already hold cosines with each validation item
        val = [None] * len(ckpts)
    else:
        val = [np.load(val_sd.path / c.path.name / "grads.npy") for c in ckpts]
        for ckpt, features in zip(ckpts, val):
            check_validation_features(features, vm["ids"], "score", ckpt.path.name)
    dropped = pool_rows_to_drop({c.path.name: blocks for c, blocks in zip(ckpts, train)}, [e.id for e in run.pool.records], "score")
    scores, per_subtask = influence(train, val, weights, vm["subtasks"], run.device)
    scores[dropped], per_subtask[dropped] = -np.inf, -np.inf
    return Scores(scores, per_subtask, list(dict.fromkeys(vm["subtasks"])), {"checkpoint_weights": weights.tolist()}, dropped)


register_selector(Selector("rose", "ROSE: influence on the DPO loss of the target's preference pairs (Wu et al. 2025).",
                           influence_scores, validation_loss="dpo", reads_validation=True))
register_selector(Selector("less", "LESS: influence on the SFT loss of the target's chosen responses (Xia et al. 2024).",
                           influence_scores, validation_loss="sft", reads_validation=True))
