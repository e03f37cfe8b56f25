"""ROSE and LESS: influence of each pool example on the target, from the gradient stages.

score(z) = sum over warm-up checkpoints of lr_c x cos(Adam direction of z's SFT gradient, the
validation gradient), averaged over the validation pairs of each subtask, then the max over
subtasks. ROSE takes each pair's DPO-loss gradient (reward orientation); LESS the SFT gradient of
the chosen response (Xia et al. 2024). Everything but the validation loss is shared.

`rose-paper` is exactly that, with no options. `rose` takes the options of the selection study
(`SelectionOptions`: round-robin selection, other aggregations and checkpoint weights, chosen and
rejected apart, per-token DPO margins, preconditioned validation gradients); its defaults are the
study's choice (docs/results.md): the paper's, but the mean over subtasks instead of the max, so an
example is chosen for helping the whole target rather than its most separable subtask. On a target
with one subtask the two select the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import DPO_OPTIONS, GRADIENT_OPTIONS, Scores, SelectionOptions, Selector, register_selector, similarity_scores

if TYPE_CHECKING:
    import numpy as np

    from ..context import Run


def gradient_similarities(run: Run) -> tuple[np.ndarray, list[int], dict]:
    """([N, M] weighted cosine of every pool example with every validation pair, the pool rows
    dropped for broken features, what to keep in scores.json), from the stored train and
    validation gradients and the method's options. The features are checked as they are read
    (`numerics.py`): a broken validation pair is an error; a few broken pool examples are dropped,
    more are an error (both from the one pass over the pool's shards)."""
    import numpy as np

    from ..influence import pair_weights, similarities, subspace
    from ..numerics import check_validation_features, pool_rows_to_drop
    from ..stages.val_grads import DPO_WEIGHTS, target_kind
    from ..store import open_shards

    options = run.options
    train_sd, val_sd = run.require("train-grads"), run.require("val-grads")
    tm, vm = train_sd.manifest(), val_sd.manifest()
    ckpts, n_pairs = run.checkpoints(), len(vm["ids"])
    apart = target_kind(run.selector, options) == "apart"
    train = [open_shards(train_sd.path / c.path.name, tm["n"], tm["shard_size"]) for c in ckpts]
    if tm["exact"]:  # the shards hold cosines with each target's pairs, target after target
        combine = np.hstack([np.eye(n_pairs), -np.eye(n_pairs)]) if apart else np.eye(n_pairs)
        val = [combine] * len(ckpts)
    else:  # with sides=apart, cos(z, chosen) - cos(z, rejected) = <z, chosen - rejected> for unit vectors
        stored = [{name: np.load(val_sd.path / c.path.name / f"{name}.npy") for name in vm["targets"]} for c in ckpts]
        for ckpt, features in zip(ckpts, stored):
            for part in features.values():
                check_validation_features(part, vm["ids"], "score", ckpt.path.name)
        val = [f["chosen"] - f["rejected"] if apart else f["grads"] for f in stored]
    dpo = [np.load(val_sd.path / c.path.name / DPO_WEIGHTS) for c in ckpts] if options.checkpoint_weights == "lr_dpo" else None
    weights = pair_weights(options.checkpoint_weights, [c.mean_lr() for c in ckpts], n_pairs, dpo)
    bases = [subspace(v, options.gist_rank) for v in val] if options.precondition == "gist" else None
    info = {"checkpoint_weights": weights.mean(axis=1).tolist()}
    if options.checkpoint_weights == "lr_dpo":
        info["pair_weights"] = weights.tolist()
    row_max: list[np.ndarray] = []
    sims = similarities(train, val, weights, run.device, bases, row_max)
    dropped = pool_rows_to_drop({c.path.name: [m[:, None]] for c, m in zip(ckpts, row_max)}, [e.id for e in run.pool.records], "score")
    return sims, dropped, info


def influence_scores(run: Run) -> Scores:
    """Scores from the stored gradients: similarities, then the mean (or max) over each subtask's
    pairs and the max (or mean) over subtasks; dropped pool examples score -inf."""
    from dataclasses import replace

    import numpy as np

    sims, dropped, info = gradient_similarities(run)
    result = similarity_scores(run, sims, info)
    for values in (result.scores, result.per_subtask, result.per_pair):
        values[dropped] = -np.inf
    return replace(result, dropped=dropped)


PAPER = SelectionOptions()
STUDY = SelectionOptions(over_subtasks="mean")  # the selection study's choice (docs/results.md, "Which ROSE")

register_selector(Selector("rose", "ROSE: influence on the DPO loss of the target's preference pairs (Wu et al. 2025), with the "
                                   "selection study's options (default: the paper's, with the mean over subtasks).",
                           influence_scores, validation_loss="dpo", reads_validation=True, options=DPO_OPTIONS, defaults=STUDY))
register_selector(Selector("rose-paper", "ROSE exactly as the paper defines it: lr-weighted cosine with each pair's DPO gradient, "
                                         "mean over shots, max over subtasks, top scores overall.",
                           influence_scores, validation_loss="dpo", reads_validation=True, defaults=PAPER))
register_selector(Selector("less", "LESS: influence on the SFT loss of the target's chosen responses (Xia et al. 2024).",
                           influence_scores, validation_loss="sft", reads_validation=True, options=GRADIENT_OPTIONS, defaults=PAPER))
