"""Numerical checks: a stage that produced NaN, inf or all-zero numbers stops with a NumericalError.

Each stage checks what it produces before its manifest is written, so a failed stage is never
marked done and the stages before it keep their results. Without these checks a diverged warm-up
gives NaN features, NaN scores and a "selection" in whatever order NaN sorts, and the fine-tune
trains on data that was never selected. The rules:

- training (warmup, finetune): a non-finite step loss, or non-finite LoRA weights about to be saved
  as a checkpoint, is an error naming the epoch and step, the learning rate and the dtype.
- validation gradient features (val-grads, train-grads with exact cosines, and the score stage that
  reads them): any pair whose features are non-finite or all zero is an error. The pairs are the
  target itself, a few of them, and each one weighs on every score: none is dropped.
- pool gradient features (train-grads, score): a handful of bad examples, at most 1% of the pool
  and at most MAX_DROPPED, are dropped with a warning that names and counts them: their score is
  -inf, so they are never selected. More than that is an error: the checkpoint itself is broken.
- scores (score): a non-finite score of an example that was not dropped is an error.
- select: NaN or +inf scores are refused (an old or hand-made scores.npy); -inf marks a dropped
  example, which is never selected. A selection.json whose selected scores are not finite (made
  from such a file by an older rose) is refused by the stages that read it.

This module imports no torch: the CLI's torch-free paths import the stages that use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import NumericalError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("rose")

MAX_DROPPED = 10  # pool examples with bad gradient features that may be dropped, at most
MAX_DROPPED_SHARE = 0.01  # ... and at most this share of the pool
SHOWN_IDS = 10  # ids named in one message


def _named(labels: Sequence[str]) -> str:
    """The first SHOWN_IDS labels (an id, and what is wrong with it), and how many more."""
    shown = ", ".join(labels[:SHOWN_IDS])
    return shown + (f" and {len(labels) - SHOWN_IDS} more" if len(labels) > SHOWN_IDS else "")


# ----------------------------------------------------------------------------- training


def training_cause(stage: str, lr: float, dtype: str) -> str:
    """The likely causes of a diverged training run, as settings to change."""
    cause = f"the learning rate {stage}.lr={lr:g} is likely too high for this model"
    if dtype in ("float16", "bfloat16"):
        cause += f", or the {dtype} forward pass overflowed (model.dtype=float32 avoids that)"
    return cause


def check_losses(losses: Sequence[float], stage: str, epoch: int, steps_per_epoch: int, lr: float, dtype: str) -> None:
    """Raise at the first non-finite loss of an epoch's steps so far (`losses[i]` is step i + 1 of
    1-based `epoch`): a NaN loss means NaN weights, and every later number derives from them."""
    bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
    if bad is not None:
        raise NumericalError(
            f"{stage}: the training loss is {losses[bad]} at epoch {epoch}, step {bad + 1} of {steps_per_epoch} "
            f"(global step {(epoch - 1) * steps_per_epoch + bad + 1}): training diverged; {training_cause(stage, lr, dtype)}. "
            f"No checkpoint from after it was saved; lower {stage}.lr and rerun")


def check_weights(weights: Mapping[str, torch.Tensor], stage: str, epoch: int, step: int, lr: float, dtype: str) -> None:
    """Raise if a LoRA weight about to be saved is not finite: the last step's update can overflow
    after a loss that was still finite, and a checkpoint is what every later stage starts from."""
    import torch

    bad = [name for name, w in weights.items() if not bool(torch.isfinite(w).all())]
    if bad:
        raise NumericalError(
            f"{stage}: {len(bad)} LoRA weight tensors are not finite after epoch {epoch}, global step {step} "
            f"(e.g. {bad[0]}): training diverged; {training_cause(stage, lr, dtype)}. No checkpoint was saved; "
            f"lower {stage}.lr and rerun")


# ----------------------------------------------------------------------------- gradient features


def bad_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a NaN or inf, rows that are zero everywhere) of a [n, k] block of features.

    Projected features are unit vectors (`F.normalize`), which gives a zero gradient an all-zero
    row; exact cosines are all zero for a zero gradient too. Either way the row carries nothing."""
    block = np.asarray(block)
    finite = np.isfinite(block).all(axis=1)
    zero = finite & ~block.any(axis=1)
    return np.flatnonzero(~finite), np.flatnonzero(zero)


def _problems(blocks: Iterable[np.ndarray]) -> dict[int, str]:
    """{row: 'NaN/inf' or 'all zero'} over row blocks in order (a checkpoint's shards)."""
    out, start = {}, 0
    for block in blocks:
        nonfinite, zero = bad_rows(block)
        out.update({start + int(i): "NaN/inf" for i in nonfinite})
        out.update({start + int(i): "all zero" for i in zero})
        start += len(block)
    return out


def _feature_cause(kinds: Iterable[str]) -> str:
    kinds = set(kinds)
    causes = []
    if "NaN/inf" in kinds:
        causes.append("NaN/inf: broken warm-up checkpoint weights (a corrupt file, or a warm-up that diverged; its "
                      "losses are in warmup/epoch-*/state.json) or an overflow in the model's 16-bit arithmetic "
                      "(model.dtype=float32 avoids that)")
    if "all zero" in kinds:
        causes.append("all zero: the loss has no gradient there (a pair whose chosen and rejected responses are "
                      "identical, or weights that no longer respond)")
    return "; ".join(causes)


def check_validation_features(features: np.ndarray, ids: Sequence[str], stage: str, checkpoint: str) -> None:
    """Raise if any validation pair's features at a checkpoint are non-finite or all zero (none is
    dropped: the few pairs are the target, and a NaN one makes every score NaN)."""
    problems = _problems([features])
    if problems:
        rows = sorted(problems)
        raise NumericalError(
            f"{stage}: {len(rows)} of {len(ids)} validation pairs have NaN/inf or all-zero gradient features at "
            f"checkpoint {checkpoint}: {_named([f'{ids[i]!r} ({problems[i]})' for i in rows])}. "
            f"Likely cause: {_feature_cause(problems.values())}")


def droppable(n: int) -> int:
    """How many of n pool examples with bad features may be dropped: at most 1% of them and at most MAX_DROPPED."""
    return min(MAX_DROPPED, int(n * MAX_DROPPED_SHARE))


def pool_rows_to_drop(checkpoints: Mapping[str, Sequence[np.ndarray]], ids: Sequence[str], stage: str) -> list[int]:
    """The pool rows to drop (sorted) for non-finite or all-zero features at any checkpoint:
    `checkpoints` maps each checkpoint's name to its [N, k] row blocks in pool order (the stage's
    shards). A few are dropped with a warning naming them (`droppable`); more raise."""
    found: dict[int, str] = {}
    for name, blocks in checkpoints.items():
        for row, kind in _problems(blocks).items():
            found.setdefault(row, f"{kind} at {name}")
    if not found:
        return []
    rows = sorted(found)
    named = _named([f"{ids[i]!r} ({found[i]})" for i in rows])
    cause = _feature_cause(kind.split(" at ")[0] for kind in found.values())
    if len(rows) > droppable(len(ids)):
        raise NumericalError(
            f"{stage}: {len(rows)} of {len(ids)} pool examples have NaN/inf or all-zero gradient features: {named}; "
            f"at most {droppable(len(ids))} may be dropped (1% of the pool, at most {MAX_DROPPED}). Likely cause: {cause}")
    log.warning("%s: dropping %d of %d pool examples with NaN/inf or all-zero gradient features (never selected): %s",
                stage, len(rows), len(ids), named)
    return rows


# ----------------------------------------------------------------------------- scores and selections


def check_scores(scores: np.ndarray, ids: Sequence[str], method: str, dropped: Iterable[int] = ()) -> None:
    """Raise if a pool example's score is NaN or inf, other than the -inf of a dropped example."""
    bad = np.flatnonzero(~np.isfinite(scores))
    bad = sorted(set(bad.tolist()) - set(dropped))
    if bad:
        raise NumericalError(
            f"score: {len(bad)} of {len(ids)} pool examples have non-finite scores by '{method}': "
            f"{_named([f'{ids[i]!r} ({scores[i]})' for i in bad])}. Likely cause: NaN/inf in what the method "
            "computes from (the model's 16-bit arithmetic overflowing, or a diverged warm-up); nothing was written")


def check_selectable(scores: np.ndarray, ids: Sequence[str], source: object) -> None:
    """Refuse to select from a score file with NaN or +inf (an old one, or one edited by hand), or
    one where every example is dropped (-inf)."""
    bad = np.flatnonzero(np.isnan(scores) | (scores == np.inf))
    if bad.size:
        raise NumericalError(
            f"select: {source} holds NaN or +inf scores for {bad.size} of {len(ids)} pool examples: "
            f"{_named([repr(ids[i]) for i in bad])}; a selection from them would be arbitrary. It was not written by this "
            "version's score stage, which refuses them: delete the scores folder and rerun `rose score`")
    if not np.isfinite(scores).any():
        raise NumericalError(f"select: {source}: every pool example was dropped (score -inf); nothing to select")


def check_selected(rows: Sequence[Mapping], source: object) -> None:
    """Refuse a selection whose selected scores are not finite: it was made from NaN scores (by a
    rose without these checks), so training on it would train on data that was never selected."""
    bad = [row["id"] for row in rows if not math.isfinite(row["score"])]
    if bad:
        raise NumericalError(
            f"{source} selects {len(bad)} examples by non-finite scores: {_named([repr(i) for i in bad])}; the selection is arbitrary. "
            "Delete the selection and scores folders and rerun `rose score` and `rose select`")
